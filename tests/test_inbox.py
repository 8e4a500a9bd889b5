"""The load queue: a file the database refused is tried again, not left until a restart."""

from __future__ import annotations

import logging
import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from aljex_sync.clock import utcnow
from aljex_sync.inbox import Arrival, LoadQueue, left_over
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


def installed(sqlite_url: str, tmp_path: Path, **engine_options: float) -> tuple[Any, Any, Journal]:
    """Settings, an engine and a journal with its tables made: what a load queue runs on."""
    settings = make_settings(sqlite_url, tmp_path)
    engine = open_engine(settings.database.url, **engine_options)
    journal = Journal(engine, settings)
    journal.install()
    return settings, engine, journal


def one_file_queue(
    sqlite_url: str, tmp_path: Path, retry_seconds: float
) -> tuple[Any, LoadQueue, Path]:
    """A queue over an inbox holding one employees file (returned), on an engine that waits
    0.2 s for a lock."""
    _, engine, journal = installed(sqlite_url, tmp_path, timeout=0.2)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    csv = inbox / "Employees.csv"
    csv.write_text("id,name\nE1,Ann\n")
    loads = LoadQueue(MorningLoader(engine, journal.settings, journal.schema), inbox)
    loads.retry_seconds = retry_seconds
    return engine, loads, csv


def test_a_file_the_database_refused_is_loaded_once_the_database_is_back(
    tmp_path: Path, sqlite_url: str, caplog
) -> None:
    engine, loads, csv = one_file_queue(sqlite_url, tmp_path, retry_seconds=0.5)
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
    assert [a.path.name for a in left_over(csv.parent)] == ["Employees.csv"]  # not failed
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
    engine, loads, csv = one_file_queue(sqlite_url, tmp_path, retry_seconds=60)
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
    assert loads.reports == []
    assert [a.path.name for a in left_over(csv.parent)] == ["Employees.csv"]  # for the next start
    engine.dispose()


def test_an_inbox_that_cannot_be_made_is_one_error_line_without_a_traceback(
    tmp_path: Path, sqlite_url: str, caplog
) -> None:
    settings, engine, journal = installed(sqlite_url, tmp_path)
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


class UploadDuringLoad(MorningLoader):
    """The real loader; as it starts on the first file, a new upload of the same name lands
    in the inbox, as the SFTP server would put it there (a temporary file renamed)."""

    def __init__(self, *args, loads: list[LoadQueue], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loads = loads
        self.uploaded = False

    def load(self, path, **options):
        if not self.uploaded:
            self.uploaded = True
            inbox = self.loads[0].inbox
            temp = inbox / ".upload-1234-Employees.csv"
            temp.write_text("id,name\nE1,Second\nE2,Bob\n")
            temp.replace(inbox / "Employees.csv")
            self.loads[0].put(Arrival(inbox / "Employees.csv", utcnow(), None))
        return super().load(path, **options)


def test_a_file_uploaded_again_while_the_first_loads_is_loaded_too(tmp_path, sqlite_url):
    settings, engine, journal = installed(sqlite_url, tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    first = inbox / "Employees.csv"
    first.write_text("id,name\nE1,First\n")
    queues: list[LoadQueue] = []
    loader = UploadDuringLoad(engine, settings, journal.schema, loads=queues)
    loads = LoadQueue(loader, inbox)
    queues.append(loads)
    loads.start()
    loads.put(Arrival(first, utcnow(), None))
    wait_for(lambda: len(loads.reports) == 2)
    loads.close()
    assert [(r.name, r.status) for r in loads.reports] == [
        ("Employees.csv", "loaded"),
        ("Employees.csv", "loaded"),
    ]
    with engine.connect() as conn:
        names = conn.execute(text("SELECT name FROM employees ORDER BY id")).scalars().all()
    assert names == ["Second", "Bob"]
    archived = sorted(p.read_text() for p in (inbox / "archive").rglob("*.csv"))
    assert archived == ["id,name\nE1,First\n", "id,name\nE1,Second\nE2,Bob\n"]
    assert [p.name for p in inbox.iterdir() if p.is_file()] == []
    engine.dispose()


def inbox_records(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "aljex_sync.inbox"]


def test_an_upload_a_newer_one_of_its_name_replaced_is_info_and_the_newer_one_loads(
    tmp_path, sqlite_url, caplog
):
    """Aljex uploads payable.csv twice in quick succession: the second is renamed over the
    first before the queue gets to it. Nothing is wrong, so nothing is a WARNING."""
    caplog.set_level(logging.INFO, "aljex_sync.inbox")
    settings, engine, journal = installed(sqlite_url, tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "Payable.csv"
    path.write_text("id,amount\nP1,10\n")
    first = Arrival(path, utcnow(), None)
    temp = inbox / ".upload-1234-Payable.csv"
    temp.write_text("id,amount\nP1,10\nP2,20\n")
    temp.replace(path)  # as an SFTP server of your own does, in folder-watch mode
    second = Arrival(path, utcnow(), None)
    loads = LoadQueue(MorningLoader(engine, settings, journal.schema), inbox)
    loads.put(first)
    loads.put(second)
    loads.start()
    assert loads.wait_idle(30)
    loads.close()
    assert [(r.name, r.status, r.rows_read) for r in loads.reports] == [
        ("Payable.csv", "loaded", 2)
    ]
    assert [level for level, _ in inbox_records(caplog)] == ["INFO"]
    assert inbox_records(caplog)[0][1] == (
        "Payable.csv: replaced by a newer upload of the same name before it was loaded;"
        " the newer one loads next"
    )
    engine.dispose()


class ReplacedWhileTaken(MorningLoader):
    """The real loader; the upload that replaced the file it loads is queued only once the
    file was taken, as when its rename lands just before the take."""

    def __init__(self, *args, loads: list[LoadQueue], newer: Arrival, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loads, self.newer = loads, newer

    def load(self, path, **options):
        if self.newer is not None:
            self.loads[0].put(self.newer)
            self.newer = None
        return super().load(path, **options)


def test_an_upload_loaded_in_place_of_the_one_it_replaced_is_info_not_a_warning(
    tmp_path, sqlite_url, caplog
):
    caplog.set_level(logging.INFO, "aljex_sync.inbox")
    settings, engine, journal = installed(sqlite_url, tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "Payable.csv"
    started = utcnow()  # the newer upload began before the take
    path.write_text("id,amount\nP1,10\nP2,20\n")
    queues: list[LoadQueue] = []
    loader = ReplacedWhileTaken(
        engine, settings, journal.schema, loads=queues, newer=Arrival(path, started, None)
    )
    loads = LoadQueue(loader, inbox)
    queues.append(loads)
    loads.put(Arrival(path, started - timedelta(seconds=5), None))
    loads.start()
    wait_for(lambda: len(loads.reports) == 1 and loads.wait_idle(0))
    loads.close()
    assert [r.status for r in loads.reports] == ["loaded"]
    ((level, message),) = inbox_records(caplog)
    assert level == "INFO"
    assert message.startswith("Payable.csv: loaded already: it replaced an earlier upload")
    engine.dispose()


def test_a_queued_file_gone_without_a_newer_upload_is_a_warning(tmp_path, sqlite_url, caplog):
    settings, engine, journal = installed(sqlite_url, tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "Payable.csv"
    path.write_text("id,amount\nP1,10\n")
    arrival = Arrival(path, utcnow(), None)
    path.unlink()  # removed by hand before the queue got to it
    loads = LoadQueue(MorningLoader(engine, settings, journal.schema), inbox)
    loads.put(arrival)
    loads.start()
    assert loads.wait_idle(30)
    loads.close()
    assert loads.reports == []
    assert inbox_records(caplog) == [
        ("WARNING", "Payable.csv: no longer in the inbox, nothing to load")
    ]
    engine.dispose()
