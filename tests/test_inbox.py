"""The load queue: a file the database refused is tried again, not left until a restart."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import select

from aljex_sync.clock import utcnow
from aljex_sync.inbox import Arrival, LoadQueue
from aljex_sync.journal import Journal
from aljex_sync.morning import MorningLoader
from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import files

from .support import make_settings


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_file_the_database_refused_is_loaded_once_the_database_is_back(
    tmp_path: Path, sqlite_url: str, caplog
) -> None:
    settings = make_settings(sqlite_url, tmp_path)
    engine = open_engine(settings.database.url, timeout=0.2)
    journal = Journal(engine, settings)
    journal.install()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    csv = inbox / "Employees.csv"
    csv.write_text("id,name\nE1,Ann\n")
    loads = LoadQueue(MorningLoader(engine, settings, journal.schema), inbox)
    loads.retry_seconds = 0.5
    loads.start()
    assert loads.wait_idle(30)
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        loads.put(Arrival(csv, utcnow(), None))
        wait_for(lambda: any("database unavailable" in r.getMessage() for r in caplog.records))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert csv.exists()  # still in the inbox, not failed
    wait_for(lambda: [r.status for r in loads.reports] == ["loaded"])
    loads.close()
    with engine.connect() as conn:
        assert conn.execute(select(files.c.name, files.c.status)).all() == [
            ("Employees.csv", "loaded")
        ]
    refused = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    assert refused[0].levelname == "ERROR" and "trying again in 0.5 s" in refused[0].getMessage()
    engine.dispose()


def test_closing_the_queue_cancels_a_pending_retry(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, tmp_path)
    engine = open_engine(settings.database.url, timeout=0.2)
    journal = Journal(engine, settings)
    journal.install()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    csv = inbox / "Employees.csv"
    csv.write_text("id,name\nE1,Ann\n")
    loads = LoadQueue(MorningLoader(engine, settings, journal.schema), inbox)
    loads.retry_seconds = 60
    loads.start()
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        loads.put(Arrival(csv, utcnow(), None))
        assert loads.wait_idle(30)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    started = time.monotonic()
    loads.close()
    assert time.monotonic() - started < 5
    assert loads.reports == [] and csv.exists()  # left for the next start
    engine.dispose()


def test_an_inbox_that_cannot_be_made_is_one_error_line_without_a_traceback(
    tmp_path: Path, sqlite_url: str, caplog
) -> None:
    settings = make_settings(sqlite_url, tmp_path)
    engine = open_engine(settings.database.url)
    journal = Journal(engine, settings)
    journal.install()
    (tmp_path / "not-a-folder").write_text("a file where the inbox's parent should be\n")
    inbox = tmp_path / "not-a-folder" / "inbox"
    loads = LoadQueue(MorningLoader(engine, settings, journal.schema), inbox)
    loads.start()
    assert loads.wait_idle(30)
    loads.close()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert errors[0].getMessage().startswith(f"cannot make the inbox's folders in {inbox}: ")
    assert "uploads cannot be loaded until it is fixed" in errors[0].getMessage()
    engine.dispose()
