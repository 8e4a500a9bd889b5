"""The journal's writer process: requests cross to it and back, and losing it loses nothing
that was acknowledged. Real server, real child process, real databases."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from aljex_sync.clock import utcnow
from aljex_sync.errors import UnknownAction
from aljex_sync.journal import Journal
from aljex_sync.messages import Outcome, Received
from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import Schema

from .support import RunningService, make_settings
from .test_live import journal, post, record, rows


def writer_pid(running: RunningService) -> int:
    pid = running.service.journal.pid
    assert pid is not None
    return pid


def wait_for_exit(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            with open(f"/proc/{pid}/stat") as f:  # a zombie until its parent reaps it
                if f.read().split(") ")[1].startswith("Z"):
                    return
        except OSError:  # reaped between the two looks
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not exit")


def test_the_writer_is_a_process_of_its_own(service):
    assert writer_pid(service) != os.getpid()
    response = post(service, record("notes", "create", id="1"))
    assert (response.status_code, response.text) == (200, "applied as event 1\n")
    engine = service.engine()
    assert [(e["id"], e["status"]) for e in journal(engine)] == [(1, "applied")]
    engine.dispose()


def test_a_killed_writer_is_replaced_and_the_next_request_lands(tmp_path, sqlite_url):
    with RunningService(make_settings(sqlite_url, tmp_path)) as running:
        assert post(running, record("notes", "create", id="1")).status_code == 200
        first = writer_pid(running)
        os.kill(first, signal.SIGKILL)
        wait_for_exit(first)
        statuses = [post(running, record("notes", "create", id="2")).status_code]
        if statuses[0] != 200:  # sent before the loss was noticed: refused, not lost
            assert statuses[0] == 503
            statuses.append(post(running, record("notes", "create", id="2")).status_code)
        assert statuses[-1] == 200
        assert writer_pid(running) != first
        engine = running.engine()
        assert [r["id"] for r in rows(engine, "SELECT id FROM notes ORDER BY id")] == ["1", "2"]
        engine.dispose()


def test_a_request_in_flight_when_the_writer_dies_is_written_by_the_next_one(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, database={"timeout": 20})
    with RunningService(settings) as running:
        assert post(running, record("notes", "create", id="1")).status_code == 200
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # the writer now waits for the lock
        replies: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: replies.append(post(running, record("notes", "create", id="2")))
        )
        sender.start()
        time.sleep(0.5)
        first = writer_pid(running)
        os.kill(first, signal.SIGKILL)
        wait_for_exit(first)
        time.sleep(0.5)
        blocker.execute("ROLLBACK")
        blocker.close()
        sender.join(timeout=30)
        assert replies and replies[0].status_code == 200, replies[0].text
        assert post(running, record("notes", "create", id="3")).status_code == 200
        engine = running.engine()
        assert [r["id"] for r in rows(engine, "SELECT id FROM notes ORDER BY id")] == [
            "1",
            "2",
            "3",
        ]
        assert [e["record_key"] for e in journal(engine)] == ["1", "2", "3"]
        engine.dispose()


def test_a_request_committed_before_its_writer_died_is_answered_from_the_journal(database_url):
    """The writer can die between COMMIT and its answer: the resent request is not written
    twice, and gets the outcome it had."""
    settings = make_settings(database_url, Path("."))
    journal_ = Journal(open_engine(settings.database.url), settings)
    journal_.install()
    body = urlencode(record("notes", "create", id="1", text="once")).encode()
    received = Received(body, "203.0.113.9", utcnow())
    [first] = journal_.write_group([received])
    bad = Received(b"web_sync_table_name=notes&web_sync_action=merge&id=2", "x", utcnow())
    [refused] = journal_.write_group([bad])
    [again, refused_again, new] = journal_.write_group(
        [
            replace(received, resent=True),
            replace(bad, resent=True),
            Received(body, "203.0.113.9", utcnow(), resent=True),  # another request
        ]
    )
    assert isinstance(first, Outcome) and isinstance(again, Outcome)
    assert (again.event_id, again.status, again.key) == (first.event_id, "applied", "1")
    assert isinstance(refused_again, Outcome) and isinstance(refused, Outcome)
    assert refused_again.event_id == refused.event_id
    assert isinstance(refused_again.rejection, UnknownAction)
    assert isinstance(new, Outcome) and new.event_id not in (first.event_id, refused.event_id)
    assert [e["record_key"] for e in journal(journal_.engine)] == ["1", None, "1"]
    journal_.close()


def test_the_writers_log_lines_reach_the_service_log(tmp_path, sqlite_url, caplog):
    settings = make_settings(sqlite_url, tmp_path, database={"timeout": 0.3})
    with caplog.at_level("INFO"), RunningService(settings) as running:
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        assert post(running, record("notes", "create", id="1")).status_code == 503
        blocker.execute("ROLLBACK")
        blocker.close()
    lines = [r for r in caplog.records if r.name == "aljex_sync.journal"]
    assert any(  # a lock not free in time is the database busy, not down
        r.levelname == "WARNING"
        and "database busy, 1 request(s) not acknowledged" in r.getMessage()
        for r in lines
    )


def test_stopping_the_service_stops_the_writer(tmp_path, sqlite_url):
    with RunningService(make_settings(sqlite_url, tmp_path)) as running:
        pid = writer_pid(running)
        assert post(running, record("notes", "create", id="1")).status_code == 200
    wait_for_exit(pid)


def test_a_database_that_cannot_open_stops_start_up_with_the_reason(tmp_path):
    url = f"sqlite:///{tmp_path / 'missing-folder' / 'aljex.db'}"
    with pytest.raises(Exception, match="cannot open the database"):
        RunningService(make_settings(url, tmp_path)).__enter__()


def test_schemas_in_two_processes_catch_up_with_each_other(database_url):
    """The writer process and the morning loads grow the same tables from separate copies."""
    ours, theirs = Schema(open_engine(database_url)), Schema(open_engine(database_url))
    ours.install()
    theirs.install()
    ours.ensure("loads", ["id"], ["id", "status"])
    # theirs has not seen the table: creating it adopts ours and adds its own field
    made = theirs.ensure("loads", ["id"], ["id", "status", "weight"])
    assert made.columns == {"id": "id", "status": "status", "weight": "weight"}
    # ours has not seen "weight": adding the same field again, or another, catches up
    grown = ours.ensure("loads", ["id"], ["id", "weight", "miles"])
    assert grown.columns == {"id": "id", "status": "status", "weight": "weight", "miles": "miles"}
    assert theirs.ensure("loads", ["id"], ["miles"]).columns == grown.columns
    for schema in (ours, theirs):
        schema.engine.dispose()


def drop_other_connections(url: str) -> int:
    """Have the server end every connection to this database but the caller's own."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                query = (
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                return len(conn.exec_driver_sql(query).all())
            ids = conn.exec_driver_sql(
                "SELECT id FROM information_schema.processlist"
                " WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            ).scalars()
            killed = 0
            for connection_id in ids:
                conn.exec_driver_sql(f"KILL CONNECTION {int(connection_id)}")
                killed += 1
            return killed
    finally:
        engine.dispose()


def test_a_connection_the_server_dropped_is_replaced_without_a_503(tmp_path, server_url):
    with RunningService(make_settings(server_url, tmp_path)) as running:
        assert post(running, record("notes", "create", id="1")).status_code == 200
        assert drop_other_connections(server_url) >= 1
        # Within a second of its last use the writer trusts its connection, finds it
        # gone at the first statement, and writes the group again on a new one.
        response = post(running, record("notes", "create", id="2"))
        assert response.status_code == 200, response.text
        engine = running.engine()
        assert [r["id"] for r in rows(engine, "SELECT id FROM notes ORDER BY id")] == ["1", "2"]
        assert [e["record_key"] for e in journal(engine)] == ["1", "2"]
        engine.dispose()


def test_without_a_fork_server_the_writer_is_spawned(tmp_path, sqlite_url, monkeypatch):
    """Windows has no fork server: the writer then starts in a fresh interpreter."""
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with RunningService(make_settings(sqlite_url, tmp_path)) as running:
        with open(f"/proc/{writer_pid(running)}/cmdline", "rb") as f:
            assert b"spawn_main" in f.read()
        response = post(running, record("notes", "create", id="1"))
        assert (response.status_code, response.text) == (200, "applied as event 1\n")
        engine = running.engine()
        assert [(e["id"], e["status"]) for e in journal(engine)] == [(1, "applied")]
        engine.dispose()


def test_a_malformed_body_while_the_database_is_down_gets_503_until_it_can_be_journaled(
    tmp_path, sqlite_url
):
    """The writer parses and journals every body before it answers, a refusal included."""
    settings = make_settings(sqlite_url, tmp_path, database={"timeout": 0.3})
    bad = record("notes", "frobnicate", id="1")
    with RunningService(settings) as running:
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        assert post(running, bad).status_code == 503
        blocker.execute("ROLLBACK")
        blocker.close()
        assert post(running, bad).status_code == 422
        engine = running.engine()
        assert [(e["status"], e["raw_action"]) for e in journal(engine)] == [
            ("rejected", "frobnicate")
        ]
        engine.dispose()
