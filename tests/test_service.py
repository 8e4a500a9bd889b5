"""The service as a whole: what `serve` starts for each choice of feeds."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, text

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
