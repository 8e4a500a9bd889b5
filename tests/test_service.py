"""The service as a whole: what `serve` starts for each choice of feeds."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import Engine, text

from aljex_sync.clock import utcnow
from aljex_sync.inbox import Arrival
from aljex_sync.store.database import normalize_url, open_engine

from .support import RunningService, make_settings


def test_live_only_runs_no_sftp_server(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, morning={"enabled": False})
    with RunningService(settings) as running:
        assert running.service.http_port is not None
        assert running.service.sftp is None and running.service.loads is None


def test_morning_only_runs_no_http_endpoint(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, live={"enabled": False})
    with RunningService(settings) as running:
        assert running.service.http_port is None
        assert running.service.sftp is not None and running.service.sftp.port > 0


def test_folder_watch_mode_runs_no_sftp_server(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, morning={"sftp": False})
    with RunningService(settings) as running:
        assert running.service.sftp is None and running.service.watch is not None


SESSION_ID = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
SESSION_ALIVE = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid = :id",
    "mysql": "SELECT count(*) FROM information_schema.processlist WHERE id = :id",
}
SLEEP = {"postgresql": "SELECT pg_sleep(0.5)", "mysql": "SELECT SLEEP(0.5)"}


def test_a_stop_waits_for_a_database_call_still_running_and_closes_its_session(
    tmp_path, server_url
):
    """A chore or a view refresh whose task is cancelled at stop goes on in its thread;
    its connection is closed once it is back, not left open for the garbage collector."""
    backend = normalize_url(server_url).get_backend_name()
    borrowed: dict[str, int] = {}
    began = threading.Event()

    def long_call(engine: Engine) -> None:
        with engine.connect() as conn:
            borrowed["id"] = int(conn.execute(text(SESSION_ID[backend])).scalar_one())
            began.set()
            conn.execute(text(SLEEP[backend]))

    with RunningService(make_settings(server_url, tmp_path)) as running:
        thread = threading.Thread(target=long_call, args=(running.service.engine,))
        thread.start()
        assert began.wait(10)
    thread.join(10)  # the stop above waited for it
    assert not thread.is_alive()
    watcher = open_engine(server_url)
    try:
        assert _gone(watcher, SESSION_ALIVE[backend], borrowed["id"])
    finally:
        watcher.dispose()


def _gone(engine: Engine, alive: str, session: int, within: float = 5.0) -> bool:
    """Whether the server ended ``session`` (it notices a closed socket in a moment)."""
    deadline = time.monotonic() + within
    while True:
        with engine.connect() as conn:
            if conn.execute(text(alive), {"id": session}).scalar_one() == 0:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# -- the SFTP host key ------------------------------------------------------------------------


def key_lines(caplog) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == "aljex_sync.sftp" and "generated" in r.getMessage()
    ]


def test_a_host_key_made_on_a_first_start_is_logged_at_info_with_its_fingerprint(
    tmp_path, sqlite_url, caplog
):
    caplog.set_level(logging.INFO, "aljex_sync.sftp")
    with RunningService(make_settings(sqlite_url, tmp_path)) as running:
        fingerprint = running.service.sftp.fingerprint
    assert key_lines(caplog) == [
        (
            "INFO",
            f"generated SSH host key {tmp_path / 'host_key'}, fingerprint {fingerprint}:"
            " give it to Aljex",
        )
    ]


@pytest.mark.parametrize("used", ["inbox", "file log"])
def test_a_host_key_serve_makes_where_files_came_before_is_a_warning_of_a_changed_key(
    tmp_path, sqlite_url, caplog, used
):
    """A mistyped [morning] host_key makes a new key: Aljex, which pinned the old one, will
    refuse it, and the log says so with the new fingerprint."""
    settings = make_settings(sqlite_url, tmp_path)
    with RunningService(settings) as running:  # the first start: its key is given to Aljex
        loads = running.service.loads
        (settings.morning.inbox / "Employees.csv").write_text("id,name\nE1,Ann\n")
        loads.put(Arrival(settings.morning.inbox / "Employees.csv", utcnow(), None))
        assert loads.wait_idle(30)
    caplog.set_level(logging.INFO, "aljex_sync.sftp")
    caplog.clear()
    moved = {"host_key": str(tmp_path / "typo" / "host_key")}
    if used == "file log":  # a new inbox too: only the database remembers the files
        moved["inbox"] = str(tmp_path / "inbox2")
    with RunningService(make_settings(sqlite_url, tmp_path, morning=moved)) as running:
        fingerprint = running.service.sftp.fingerprint
    ((level, message),) = key_lines(caplog)
    assert level == "WARNING"
    assert message.startswith(
        f"generated a new SSH host key {tmp_path / 'typo' / 'host_key'}, fingerprint"
        f" {fingerprint}, though this receiver has taken morning files before: Aljex will see a"
        " changed host key"
    )


def test_files_left_in_the_inbox_at_a_stop_load_at_the_start_and_it_says_so(
    tmp_path, sqlite_url, caplog
):
    """A load can take a while: the start says what it is busy with."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "Customers.csv").write_text("id,name\nC1,Acme\n")
    caplog.set_level(logging.INFO, "aljex_sync.service")
    with RunningService(make_settings(sqlite_url, tmp_path)) as running:
        loads = running.service.loads
        assert loads is not None and loads.wait_idle(30)
        engine = running.engine()
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT id FROM customers")).scalars().all() == ["C1"]
        finally:
            engine.dispose()
    said = [r.getMessage() for r in caplog.records if r.name == "aljex_sync.service"]
    assert "loading 1 file(s) left in the inbox at the last stop: Customers.csv" in said
