"""Several receivers on one database: `serve --workers N`, and `serve` processes on several
hosts (here: several ports) sharing one PostgreSQL or MariaDB.

Nothing is lost or applied out of order: a change never overwrites one received after it
(the rule in docs/database.md), a morning file is loaded by one process only, and the
bookkeeping tables are made once however many processes start at the same moment.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import text

from aljex_sync.errors import DatabaseUnavailable
from aljex_sync.journal import Journal
from aljex_sync.messages import Outcome, Received
from aljex_sync.store.database import open_engine

from .receivers_support import Lines, aljex_sync, write_config
from .support import TEST_PASSWORD, make_settings

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
        assert late.status == "applied"  # journaled as received; the row keeps the later one
        stored = row(database_url, "1")
        assert stored is not None
        # Only a field the row never had is filled in from it.
        assert (stored["status"], stored["note"]) == ("DELIVERED", "x")
        # An older delete does not take away a row changed after it.
        write(second, [Received(body("delete", id="1"), "b", T0 + timedelta(seconds=1))])
        assert row(database_url, "1") is not None
        # A newer one does.
        write(second, [Received(body("delete", id="1"), "b", later + timedelta(seconds=1))])
        assert row(database_url, "1") is None
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
        statuses = conn.execute(
            text("SELECT status, COUNT(*) FROM _aljex_events GROUP BY status")
        ).all()
    engine.dispose()
    assert dict(statuses) == {"applied": 201}  # each change journaled exactly once


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


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_serve_workers_share_one_port_and_a_dead_worker_is_started_again(database_url, tmp_path):
    serve = Lines(aljex_sync(write_config(tmp_path, database_url), "serve", "--workers", "2"))
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
