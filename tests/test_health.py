"""/healthz: 200 "ok" only while the database and the journal writer both answer."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from aljex_sync.store.database import normalize_url

from .conftest import MY_SERVER, PG_SERVER
from .support import (
    TEST_PASSWORD,
    RunningService,
    full_disk,
    make_settings,
    post_note,
    sftp_upload,
)


def health(running: RunningService) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{running.service.http_port}/healthz", timeout=30)


def health_until(running: RunningService, status: int) -> httpx.Response:
    """Ask until the answer has ``status`` (a part going down is noticed asynchronously)."""
    for _ in range(100):
        response = health(running)
        if response.status_code == status:
            return response
        time.sleep(0.1)
    return response


def test_health_is_ok_while_the_database_and_the_writer_answer(service):
    response = health(service)
    assert response.status_code == 200
    assert response.text == "ok\n"


def test_health_is_503_once_the_writer_is_killed_and_ok_when_a_request_restarts_it(
    tmp_path, sqlite_url
):
    with RunningService(make_settings(sqlite_url, tmp_path)) as running:
        assert health(running).status_code == 200
        pid = running.service.journal.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        response = health_until(running, 503)
        assert response.status_code == 503
        assert response.text.startswith("the journal writer is not running")
        assert len(response.text.splitlines()) == 1
        assert post_note(running, "1") == 200  # which starts a new writer
        assert health(running).status_code == 200


def test_health_is_503_while_the_sqlite_database_is_locked(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, database={"timeout": 0.3})
    with RunningService(settings) as running:
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            response = health(running)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert response.status_code == 503
        assert response.text.startswith("database unavailable: database is locked")
        assert health(running).status_code == 200


@pytest.fixture(params=["postgresql", "mariadb"])
def doomed_database(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    """A database of its own on the server (the test drops it), the server, and the SQL."""
    server = PG_SERVER if request.param == "postgresql" else MY_SERVER
    name = f"aljex_doomed_{uuid.uuid4().hex[:8]}"
    if request.param == "postgresql":
        create, drop = f'CREATE DATABASE "{name}"', f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    else:
        create, drop = f"CREATE DATABASE `{name}`", f"DROP DATABASE IF EXISTS `{name}`"
    admin = create_engine(normalize_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(create))
    try:
        url = normalize_url(server).set(database=name)
        yield url.render_as_string(hide_password=False), server, drop
    finally:
        with admin.connect() as conn:
            conn.execute(text(drop))
        admin.dispose()


def test_health_is_503_once_the_database_is_dropped(tmp_path, doomed_database):
    url, server, drop = doomed_database
    with RunningService(make_settings(url, tmp_path, database={"timeout": 2})) as running:
        assert health(running).status_code == 200
        admin = create_engine(normalize_url(server), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(drop))
        admin.dispose()
        response = health_until(running, 503)
        assert response.status_code == 503
        assert response.text.startswith("database unavailable: ")
        assert len(response.text.splitlines()) == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_health_is_503_while_the_database_refuses_every_write_it_can_still_read(
    tmp_path, database_url
):
    """A full disk: reads work, every write fails. The probe only reads; the failed
    request itself must turn /healthz to 503, until a request lands again."""
    with RunningService(make_settings(database_url, tmp_path)) as running:
        engine = running.engine()
        with full_disk(engine):
            assert post_note(running, "1") == 503
            response = health(running)
        engine.dispose()
        assert response.status_code == 503
        assert response.text.startswith("database unavailable: the last request was not stored")
        assert "No space left on device" in response.text
        assert post_note(running, "2") == 200
        assert health(running).status_code == 200


def test_a_morning_load_holding_sqlite_busy_is_no_reason_to_restart(tmp_path, sqlite_url):
    """A big file on SQLite is merged in one transaction: live writes wait for it, and may
    get 503. /healthz stays 200 (a monitor restarting the service would start the load over)
    and says why; the 503 says the database is busy, not down."""
    settings = make_settings(sqlite_url, tmp_path, database={"timeout": 5.0})
    with RunningService(settings) as running:
        assert running.service.sftp is not None
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # as the load's merge holds it
        try:
            local = tmp_path / "Customers.csv"
            local.write_text("id,name\nC1,Acme\n")
            upload = sftp_upload(running.service.sftp.port, [f"put {local}"], tmp_path / "client")
            assert upload.returncode == 0, upload.stderr
            deadline = time.monotonic() + 3
            while "database busy" not in (answer := health(running)).text:
                assert time.monotonic() < deadline, answer.text
            assert answer.status_code == 200
            assert "database busy: a morning load holds the write lock" in answer.text.splitlines()
            reply = httpx.post(
                running.url,
                content="web_sync_table_name=notes&web_sync_action=create&id=1",
                auth=("aljex", TEST_PASSWORD),
                timeout=30,
            )
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert reply.status_code == 503
        assert reply.text == (
            "database busy: a morning load holds the write lock; nothing was stored, send again\n"
        )
        assert post_note(running, "2") == 200


def test_a_load_by_hand_holding_sqlite_busy_is_no_reason_to_restart_either(tmp_path, sqlite_url):
    """`aljex-sync load` run beside serve: the same "database busy", not a database down."""
    settings = make_settings(sqlite_url, tmp_path, database={"timeout": 5.0})
    config = tmp_path / "hand.toml"
    config.write_text(
        f'[database]\nurl = "{sqlite_url}"\ntimeout = 8\n[live]\npassword = "x"\n'
        f'[morning]\npassword = "x"\ninbox = "{tmp_path / "hand-inbox"}"\n'
    )
    csv = tmp_path / "Customers.csv"
    csv.write_text("id,name\nC1,Acme\n")
    with RunningService(settings) as running:
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # as a long merge holds it
        load = subprocess.Popen(
            [sys.executable, "-m", "aljex_sync.cli", "-c", str(config), "load", str(csv)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 6
            while "database busy" not in (answer := health(running)).text:
                assert time.monotonic() < deadline, answer.text
                time.sleep(0.1)
            assert answer.status_code == 200
            busy = (
                "database busy: a morning load run by hand (aljex-sync load) holds the write lock"
            )
            assert busy in answer.text.splitlines()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
            assert load.wait(30) == 0
        deadline = time.monotonic() + 3  # looked at once a second at most
        while "database busy" in health(running).text:
            assert time.monotonic() < deadline
            time.sleep(0.2)
