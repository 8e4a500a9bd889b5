"""One notifier among several receivers: only the process holding the notifier's lock sends
`[notify]`'s notices; when it dies, another takes over and goes on from the cursor.

Real receivers (`serve`, and `serve --workers 2`) sharing one PostgreSQL or MariaDB
database, a webhook on loopback, SIGKILL: each change reaches the webhook at least once and
in journal order, and exactly once while nothing is killed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from aljex_sync import notifier
from aljex_sync.notifier import Notifier, read_holder
from aljex_sync.store.database import open_engine
from aljex_sync.store.locks import KeptLock

from .notify_support import SECRET, WebhookReceiver, applied_event_ids, wait_until
from .receivers_support import Lines, aljex_sync, kill_group
from .support import TEST_PASSWORD, make_settings
from .test_receivers import body

SENDS = r"notifications are sent by this process \([^)]* pid (\d+)\)"


def config(tmp_path: Path, url: str, hook: str, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""[database]
url = "{url}"
[live]
listen = "127.0.0.1:0"
password = "{TEST_PASSWORD}"
[morning]
enabled = false
[notify]
webhook = "{hook}"
secret = "{SECRET}"
poll_seconds = 0.05
max_backoff_seconds = 0.5
"""
    )
    return path


def post(port: int, n: int) -> None:
    data = body("create" if n % 3 == 0 else "update", id=str(n % 7), seq=str(n))
    reply = httpx.post(
        f"http://127.0.0.1:{port}/aljex/sync",
        content=data,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=("aljex", TEST_PASSWORD),
        timeout=30,
    )
    assert reply.status_code == 200, reply.text


def first_arrivals(ids: list[int]) -> list[int]:
    seen: set[int] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
def test_one_receiver_sends_each_change_and_another_takes_over_when_it_is_killed(
    database_url, tmp_path
):
    """On a database server: one serve per SQLite database (a second is refused), and
    tests/test_notify_restart.py restarts it after a SIGKILL."""
    with WebhookReceiver() as hook:
        # The first receiver runs workers, which must not send either.
        first = Lines(
            aljex_sync(config(tmp_path, database_url, hook.url, "a"), "serve", "--workers", "2")
        )
        second: Lines | None = None
        try:
            holder = int(first.wait_for(SENDS).group(1))
            assert holder == first.process.pid  # the main process, not a worker
            first_port = int(first.wait_for(r"(?:listening on http://|workers on )[\d.]+:(\d+)")[1])
            second = Lines(aljex_sync(config(tmp_path, database_url, hook.url, "b"), "serve"))
            second.wait_for(
                rf"notifications are sent by \S+ pid {holder}; this process \(.*\) takes over"
            )
            second_port = int(second.wait_for(r"listening on http://[\d.]+:(\d+)")[1])
            for n in range(30):
                post(first_port if n % 2 else second_port, n)
            wanted = applied_event_ids(database_url)
            wait_until("every change at the webhook", lambda: len(hook.received) >= len(wanted))
            time.sleep(1)  # a second sender would have sent its copies by now
            # Exactly once, in journal order, by one process.
            assert [p["event_id"] for p in hook.payloads()] == wanted
            assert first.count("notifications are sent by this process") == 1
            assert first.count("takes over if it stops") == 0  # its workers do not even try
            assert second.count("notifications are sent by this process") == 0

            killed_at = time.monotonic()
            kill_group(first.process)
            second.wait_for(SENDS)
            took_over = time.monotonic() - killed_at
            for n in range(30, 50):
                post(second_port, n)
            wanted = applied_event_ids(database_url)
            wait_until(
                "every change at the webhook after the takeover",
                lambda: set(wanted) <= {p["event_id"] for p in hook.payloads()},
            )
            assert second.stop() == 0
        finally:
            first.close()
            if second is not None:
                second.close()
    delivered = [p["event_id"] for p in hook.payloads()]
    assert set(delivered) == set(wanted) and len(wanted) == 50
    assert first_arrivals(delivered) == wanted  # in journal order; repeats allowed
    assert took_over < notifier.TRY_EVERY + 10
    engine = open_engine(database_url)
    holder_note = read_holder(engine)
    engine.dispose()
    assert holder_note is not None and holder_note.stopped  # the second stopped cleanly


@pytest.mark.backend
def test_a_kept_lock_is_one_holder_s_until_it_lets_go_or_its_connection_ends(database_url):
    engine, other_engine = open_engine(database_url), open_engine(database_url)
    first, second = KeptLock(engine, "notifier"), KeptLock(other_engine, "notifier")
    try:
        assert first.take() and first.held()
        assert not second.take() and not second.held()
        first.release()
        assert not first.held()
        assert second.take() and second.held()
        assert not first.take()
        if engine.dialect.name != "sqlite":
            # The holder's session ends (a database restart, a dropped connection): the
            # holder finds out at its next check, and another process can take the lock.
            end_session(engine, second)
            assert not second.held()
            assert first.take() and first.held()
    finally:
        first.release()
        second.release()
        engine.dispose()
        other_engine.dispose()


def end_session(engine, lock: KeptLock) -> None:
    """End the lock's database session from another one, as a database restart would."""
    held = lock._conn
    assert held is not None
    postgresql = engine.dialect.name == "postgresql"
    session = held.execute(
        text("SELECT pg_backend_pid()" if postgresql else "SELECT CONNECTION_ID()")
    )
    number = int(session.scalar())
    held.commit()
    with engine.connect() as conn:
        if postgresql:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": number})
        else:
            conn.execute(text(f"KILL {number}"))


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
def test_a_holder_that_shows_no_sign_of_life_is_warned_about(
    database_url, tmp_path, monkeypatch, caplog
):
    """A lock held by a session whose process no longer notes itself (a host that vanished
    without closing its connection): the waiting receiver warns that notifications stall."""
    monkeypatch.setattr(notifier, "STALLED_AFTER", 0.5)
    settings = make_settings(
        database_url, tmp_path, notify={"webhook": "http://127.0.0.1:9/x", "secret": SECRET}
    )
    engine = open_engine(database_url)
    frozen = KeptLock(engine, notifier.LOCK)
    assert frozen.take()
    waiting = Notifier(settings, engine, every=0.1)

    async def wait_a_while() -> None:
        waiting.start()
        await asyncio.sleep(1.5)
        assert not waiting.deliveries
        await waiting.close()

    try:
        with caplog.at_level(logging.INFO, logger="aljex_sync.notify"):
            asyncio.run(wait_a_while())
    finally:
        frozen.release()
        engine.dispose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert re.match(
        r"notifications stalled: the notifier's lock has been held for \d+ s", warnings[0]
    )
    assert f"this process ({socket.gethostname()} pid {os.getpid()})" in warnings[0]
