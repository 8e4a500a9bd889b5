"""Several receivers on one database: `serve --workers N`, and `serve` processes on several
hosts (here: several ports) sharing one PostgreSQL or MariaDB.

Nothing is lost or applied out of order: a change never overwrites one received after it
(the rule in docs/database.md), a morning file is loaded by one process only, and the
bookkeeping tables are made once however many processes start at the same moment.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import text

from aljex_sync.clock import utcnow
from aljex_sync.config import Settings
from aljex_sync.dashboard import read_overview
from aljex_sync.errors import DatabaseUnavailable, NotReplayable
from aljex_sync.journal import Journal
from aljex_sync.messages import Outcome, Received
from aljex_sync.notify import sink_states
from aljex_sync.store.database import open_engine

from .notify_support import SECRET, WebhookReceiver, wait_until
from .receivers_support import Lines, aljex_sync, write_config
from .support import TEST_PASSWORD, RunningService, make_settings
from .test_notify import FAST, post

SERVERS = ["postgresql", "mariadb"]
T0 = datetime(2026, 11, 27, 9, 0, 0)


def body(action: str, **fields: str) -> bytes:
    pairs = [("web_sync_table_name", "loads"), ("web_sync_action", action), *fields.items()]
    return urlencode(pairs).encode()


def journal(url: str, tmp_path: Path) -> Journal:
    """A journal writer of its own, as each receiver process has."""
    writer = Journal(open_engine(url), make_settings(url, tmp_path))
    writer.start()
    return writer


def write(writer: Journal, received: list[Received]) -> list[Outcome]:
    """Write a group; a group the database could not take now (a deadlock between two
    receivers' groups) is sent again, as Aljex sends again after a 503."""
    while True:
        results = writer.write_group(received)
        if not any(isinstance(r, DatabaseUnavailable) for r in results):
            assert all(isinstance(r, Outcome) for r in results), results
            return [r for r in results if isinstance(r, Outcome)]


def row(url: str, key: str) -> dict[str, object] | None:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT * FROM loads WHERE id = :k"), {"k": key}).first()
            return dict(found._mapping) if found is not None else None
    finally:
        engine.dispose()


def journaled(url: str) -> list[tuple[str, str | None, bool]]:
    """Each event's status, reason, and whether it has an applied time, in journal order."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            query = text("SELECT status, error, applied_at FROM _aljex_events ORDER BY id")
            return [(s, e, a is not None) for s, e, a in conn.execute(query)]
    finally:
        engine.dispose()


@pytest.mark.backend
def test_a_change_received_earlier_never_overwrites_one_received_later(database_url, tmp_path):
    first, second = journal(database_url, tmp_path), journal(database_url, tmp_path)
    try:
        write(first, [Received(body("create", id="1", status="NEW"), "a", T0)])
        later = T0 + timedelta(seconds=2)
        write(first, [Received(body("update", id="1", status="DELIVERED"), "a", later)])
        # Received before the update by another receiver, committed after it.
        (late,) = write(
            second, [Received(body("update", id="1", status="OPEN", note="x"), "b", T0)]
        )
        # Journaled as superseded, with the reason; the row keeps the later change.
        assert late.status == "superseded"
        assert late.reason == "the row already holds a later change, from 2026-11-27 09:00:02"
        stored = row(database_url, "1")
        assert stored is not None
        # Only a field the row never had is filled in from it.
        assert (stored["status"], stored["note"]) == ("DELIVERED", "x")
        # An older delete does not take away a row changed after it, and says so.
        (older_delete,) = write(
            second, [Received(body("delete", id="1"), "b", T0 + timedelta(seconds=1))]
        )
        assert older_delete.status == "superseded"
        assert row(database_url, "1") is not None
        # A newer one does.
        (deleted,) = write(
            second, [Received(body("delete", id="1"), "b", later + timedelta(seconds=1))]
        )
        assert deleted.status == "applied"
        assert row(database_url, "1") is None
        assert journaled(database_url) == [
            ("applied", None, True),
            ("applied", None, True),
            ("superseded", late.reason, False),
            ("superseded", older_delete.reason, False),
            ("applied", None, True),
        ]
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("database_url", SERVERS, indirect=True)
def test_concurrent_writers_on_one_key_never_interleave_and_the_latest_wins(database_url, tmp_path):
    """Four receivers write changes to one key at once, in groups, in shuffled order."""
    writers = [journal(database_url, tmp_path) for _ in range(4)]
    write(writers[0], [Received(body("create", id="7", a="start", b="start"), "0", T0)])
    moments = list(range(1, 201))
    random.Random(12).shuffle(moments)
    shares = [moments[i::4] for i in range(4)]
    errors: list[BaseException] = []

    def run(writer: Journal, share: list[int]) -> None:
        try:
            pending = list(share)
            while pending:
                group, pending = pending[:3], pending[3:]
                received = [
                    Received(
                        body("update", id="7", a=f"v{n}", b=f"v{n}"),
                        "r",
                        T0 + timedelta(milliseconds=n),
                    )
                    for n in group
                ]
                write(writer, received)
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=run, args=pair) for pair in zip(writers, shares, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for writer in writers:
        writer.close()
    assert not errors
    stored = row(database_url, "7")
    assert stored is not None
    assert (stored["a"], stored["b"]) == ("v200", "v200")
    engine = open_engine(database_url)
    with engine.connect() as conn:
        status = dict(conn.execute(text("SELECT id, status FROM _aljex_events")).all())
        # The row's versions, in the order the row took them (its lock orders them).
        taken = conn.execute(
            text(
                "SELECT _aljex_event_id, _aljex_valid_from FROM loads__history"
                " WHERE id = '7' ORDER BY _aljex_version"
            )
        ).all()
    engine.dispose()
    assert len(status) == 201  # each change journaled exactly once
    # Applied or superseded, truthfully: the changes the row took are the applied ones,
    # each newer than the one before it; the others, older than the row, are superseded.
    assert sorted(event for event, _ in taken) == sorted(
        event for event, s in status.items() if s == "applied"
    )
    assert all(a[1] < b[1] for a, b in itertools.pairwise(taken))
    assert taken[-1][1] == T0 + timedelta(milliseconds=200)
    superseded = [event for event, s in status.items() if s == "superseded"]
    assert superseded and len(superseded) + len(taken) == 201


@contextmanager
def notified(
    database_url: str, tmp_path: Path
) -> Iterator[tuple[WebhookReceiver, RunningService, Settings]]:
    """The service sending each change to a webhook, once its notifier holds its cursor."""
    with WebhookReceiver() as hook:
        notify = {"webhook": hook.url, "secret": SECRET, **FAST}
        settings = make_settings(database_url, tmp_path, notify=notify)
        with RunningService(settings) as running:
            engine = running.engine()
            try:
                wait_until("the notifier's cursor", lambda: bool(sink_states(engine)))
            finally:
                engine.dispose()
            yield hook, running, settings


def supersede(
    running: RunningService, hook: WebhookReceiver, tmp_path: Path, later: bytes, status: str
) -> datetime:
    """Post key 1, have another receiver journal ``later`` (a body) for it an hour ahead,
    then post an older update of key 1 to ``status``: answered 200, journaled superseded as
    event 3. Then post key 2 and wait for three notices. Returns ``later``'s time."""
    url = running.settings.database.url
    assert post(running, "loads", "create", id="1", status="OPEN").status_code == 200
    other = journal(url, tmp_path)
    try:
        at = utcnow() + timedelta(hours=1)
        write(other, [Received(later, "b", at)])
    finally:
        other.close()
    reply = post(running, "loads", "update", id="1", status=status)
    # Aljex must not send it again: 200, and the journal says what became of it.
    assert (reply.status_code, reply.text) == (200, "superseded as event 3\n")
    assert post(running, "loads", "create", id="2").status_code == 200
    wait_until("three notices", lambda: len(hook.received) >= 3)
    return at


@pytest.mark.backend
def test_an_older_change_is_answered_200_journaled_superseded_and_not_notified(
    database_url, tmp_path
):
    with notified(database_url, tmp_path) as (hook, running, settings):
        later = supersede(
            running, hook, tmp_path, body("update", id="1", status="DELIVERED"), "OPEN"
        )
        engine = running.engine()
        overview = read_overview(engine)
        engine.dispose()
        # Named for a replay, it is refused before anything is written, and changes nothing.
        replayer = Journal(open_engine(database_url), settings)
        try:
            with pytest.raises(NotReplayable, match=r"^event 3 is superseded$"):
                list(replayer.replay(event_ids=[3]))
        finally:
            replayer.close()
    assert [(p["event_id"], p["action"], p["key"]) for p in hook.payloads()] == [
        (1, "create", "1"),
        (2, "update", "1"),
        (4, "create", "2"),
    ]
    assert overview.events_by_status == {"applied": 3, "superseded": 1}
    reason = f"the row already holds a later change, from {later:%Y-%m-%d %H:%M:%S}"
    assert journaled(database_url)[2] == ("superseded", reason, False)
    stored = row(database_url, "1")
    assert stored is not None and stored["status"] == "DELIVERED"


# -- separate processes ----------------------------------------------------------------------


def test_serve_refuses_several_workers_on_sqlite(tmp_path):
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'aljex.db'}")
    result = subprocess.run(
        [sys.executable, "-m", "aljex_sync.cli", "-c", str(config), "serve", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --workers 2: SQLite"), lines


def with_inbox(tmp_path: Path, url: str, name: str, inbox: str) -> Path:
    """A receiver's config with the SFTP inbox ``inbox``, on a port of its own."""
    return write_config(
        tmp_path,
        url,
        f"{name}.toml",
        listen="127.0.0.1:0",
        password=TEST_PASSWORD,
        inbox=inbox,
        host_key=f"{name}.key",
    )


@pytest.mark.parametrize("database_url", SERVERS, indirect=True)
def test_receivers_share_a_database_but_each_needs_an_inbox_of_its_own(database_url, tmp_path):
    receivers: list[Lines] = []

    def receiver(name: str, inbox: str) -> Lines:
        receivers.append(
            Lines(aljex_sync(with_inbox(tmp_path, database_url, name, inbox), "serve"))
        )
        return receivers[-1]

    try:
        first = receiver("a", "inbox-a")
        first.wait_for("SFTP inbox")
        second = receiver("b", "inbox-b")
        second.wait_for("SFTP inbox")
        third = receiver("c", "inbox-a")
        assert third.process.wait(60) == 1
        third.wait_for(
            f"error: another aljex-sync serve \\(pid {first.process.pid}\\) is already using the"
            f" inbox {re.escape(str(tmp_path / 'inbox-a'))}; stop it first$"
        )
        assert [first.stop(), second.stop()] == [0, 0]
    finally:
        for running in receivers:
            running.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_serve_workers_share_one_port_and_a_dead_worker_is_started_again(database_url, tmp_path):
    # With an inbox: only the main process locks it, and the workers start all the same.
    config = with_inbox(tmp_path, database_url, "workers", "inbox")
    serve = Lines(aljex_sync(config, "serve", "--workers", "2"))
    try:
        port = int(serve.wait_for(r"live sync: 2 workers on 127\.0\.0\.1:(\d+)").group(1))
        pids = {n: int(serve.wait_for(rf"worker {n} ready \(pid (\d+)\)").group(1)) for n in (1, 2)}
        url = f"http://127.0.0.1:{port}/aljex/sync"

        def post(n: int) -> int:
            data = body("create", id=str(n), status="OPEN")
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            reply = httpx.post(url, content=data, headers=headers, auth=("aljex", TEST_PASSWORD))
            return reply.status_code

        assert [post(n) for n in range(1, 21)] == [200] * 20
        killed_at = serve.mark()
        os.kill(pids[1], signal.SIGKILL)
        serve.wait_for(rf"worker 1 \(pid {pids[1]}\) exited with status -9; starting a new one")
        again = int(serve.wait_for(r"worker 1 ready \(pid (\d+)\)", after=killed_at).group(1))
        assert again != pids[1]
        assert [post(n) for n in range(21, 41)] == [200] * 20
        assert serve.stop() == 0
        assert row(database_url, "40") is not None
    finally:
        serve.close()


@pytest.mark.parametrize("database_url", SERVERS, indirect=True)
def test_four_receivers_starting_at_once_on_a_fresh_database_make_the_tables_once(
    database_url, tmp_path
):
    receivers = [
        Lines(aljex_sync(write_config(tmp_path, database_url, f"r{n}.toml"), "serve"))
        for n in range(4)
    ]
    try:
        for receiver in receivers:
            receiver.wait_for("live sync listening")
        assert [receiver.stop() for receiver in receivers] == [0] * 4
        made = sum(receiver.count("bookkeeping tables created") for receiver in receivers)
        assert made == 1, [receiver.seen for receiver in receivers]
    finally:
        for receiver in receivers:
            receiver.close()


@pytest.mark.parametrize("database_url", SERVERS, indirect=True)
def test_a_morning_file_given_to_two_receivers_is_loaded_once(database_url, tmp_path):
    rows = "".join(f"{n},Customer {n},Chicago\n" for n in range(20000))
    path = tmp_path / "Customers.csv"
    path.write_text("id,name,city\n" + rows)
    config = write_config(tmp_path, database_url)
    loads = [aljex_sync(config, "load", str(path)) for _ in range(2)]
    outputs = [load.communicate(timeout=120)[0] for load in loads]
    assert [load.returncode for load in loads] == [0, 0], outputs
    engine = open_engine(database_url)
    with engine.connect() as conn:
        files = conn.execute(text("SELECT status FROM _aljex_files ORDER BY id")).scalars().all()
        count = conn.execute(text("SELECT COUNT(*) FROM customers")).scalar()
    engine.dispose()
    assert sorted(files) == ["duplicate", "loaded"], outputs
    assert count == 20000
