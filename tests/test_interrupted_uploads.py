"""OpenSSH's sftp interrupted mid-upload, by Ctrl-C (SIGINT) and by SIGKILL: nothing cut applies.

On SIGINT, OpenSSH's ``sftp`` stops sending, still closes the file cleanly and exits, so
the server sees a complete-looking upload of a cut file; on SIGKILL the connection drops.
Either way the table must hold exactly one whole version of the file, never part of one.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select, text

from aljex_sync.service import INBOX_LOCK
from aljex_sync.store.schema import files

from .support import RunningService, make_settings, sftp_upload

ROWS = 20_000
OFFSETS = 20
TARGET = "aljex@127.0.0.1"
RATE_KBIT = "40000"  # sftp -l: 5 MB/s, so the growing upload can be watched


def version(tag: str) -> bytes:
    """A full Customers file of about 2 MB; every row carries the version's tag.

    The last field is the longest, so most cuts land in a value, as in the cut files that
    were once loaded: a row of the right width whose last value is cut short.
    """
    notes = b"called on Monday about the invoice; will pay by the end of the month"
    rows = b"".join(
        b"C%06d,%s,Customer %d,Newark,%s\r\n" % (i, tag.encode(), i, notes) for i in range(ROWS)
    )
    return b"id,tag,name,city,notes\r\n" + rows


def upload_until(port: int, local: Path, work: Path, offset: int, signum: int) -> None:
    """Upload ``local`` with OpenSSH's sftp; signal it once the server has ``offset`` bytes."""
    sftp_upload(port, ["pwd"], work)  # writes the askpass script
    (work / "batch").write_text(f'put "{local}" Customers.csv\n')
    env = {
        **os.environ,
        "SSH_ASKPASS": str(work / "askpass.sh"),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": ":0",
    }
    options = ["-F", "/dev/null", "-o", "BatchMode=no", "-o", "StrictHostKeyChecking=no"]
    options += ["-o", "UserKnownHostsFile=/dev/null", "-o", "PreferredAuthentications=password"]
    process = subprocess.Popen(
        ["sftp", *options, "-l", RATE_KBIT, "-P", str(port), "-b", str(work / "batch"), TARGET],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C signals
    )
    inbox = local.parent.parent / "inbox"
    try:
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            if any(p.stat().st_size >= offset for p in _temp_files(inbox)):
                # OpenSSH's sftp makes its ssh child ignore SIGINT, as Ctrl-C reaches both.
                os.killpg(process.pid, signum)
                break
            time.sleep(0.001)
        process.wait(30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _temp_files(inbox: Path) -> list[Path]:
    found = []
    for path in inbox.glob(".upload-*"):
        try:
            path.stat()
        except FileNotFoundError:
            continue
        found.append(path)
    return found


def settled(running: RunningService, inbox: Path) -> None:
    """Wait until the upload is gone from the inbox root and every load is done."""
    deadline = time.monotonic() + 60
    # Temp files and uploads alike; not serve's lock, which stays while it runs.
    while any(p.is_file() and p.name != INBOX_LOCK for p in inbox.iterdir()):
        assert time.monotonic() < deadline, sorted(p.name for p in inbox.iterdir())
        time.sleep(0.02)
    loads = running.service.loads
    assert loads is not None and loads.wait_idle(60)


def test_an_interrupted_openssh_upload_is_never_applied(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, tables={"customers": {"max_drop_fraction": 0.0}})
    local = tmp_path / "out" / "Customers.csv"
    local.parent.mkdir()
    whole: set[str] = set()
    outcomes: Counter[str] = Counter()
    with RunningService(settings) as running:
        port = running.service.sftp.port  # type: ignore[union-attr]
        inbox = settings.morning.inbox
        engine = running.engine()

        def tags() -> Counter[str]:
            with engine.connect() as conn:
                counted = conn.execute(text("SELECT tag, COUNT(*) FROM customers GROUP BY tag"))
                return Counter(dict(counted.all()))

        data = version("v0")
        local.write_bytes(data)
        whole.add(hashlib.sha256(data).hexdigest())
        assert sftp_upload(port, [f'put "{local}"'], tmp_path / "client").returncode == 0
        settled(running, inbox)
        assert tags() == {"v0": ROWS}
        current = "v0"

        trial = 0
        for signum in (signal.SIGINT, signal.SIGKILL):
            for k in range(OFFSETS):
                trial += 1
                tag = f"v{trial}"
                data = version(tag)
                local.write_bytes(data)
                whole.add(hashlib.sha256(data).hexdigest())
                offset = len(data) * (2 * k + 1) // (2 * OFFSETS)
                upload_until(port, local, tmp_path / "client", offset, signum)
                settled(running, inbox)
                now = tags()
                # Untouched, or the whole new file: never part of one.
                assert now in ({current: ROWS}, {tag: ROWS}), (signum, offset, now)
                applied = now == {tag: ROWS}
                outcomes[f"{signal.Signals(signum).name} {'applied' if applied else 'not'}"] += 1
                current = tag if applied else current

        with engine.connect() as conn:
            logged = conn.execute(select(files.c.status, files.c.sha256, files.c.error)).all()
        engine.dispose()
    loaded = [row.sha256 for row in logged if row.status == "loaded"]
    assert set(loaded) <= whole  # 0 truncated files applied
    held = [row.error for row in logged if row.status == "held"]
    assert held and all(error.startswith("possibly truncated") for error in held)
    assert {row.status for row in logged} <= {"loaded", "held"}
    # SIGINT delivers a cut file (held); SIGKILL drops the connection (nothing delivered).
    assert outcomes["SIGINT not"] + outcomes["SIGINT applied"] == OFFSETS
    assert len(held) >= 1


pytestmark = pytest.mark.timeout(300)


def test_an_upload_of_a_name_still_waiting_to_load_is_a_file_of_its_own(tmp_path, sqlite_url):
    """The attacker's trial: Employees.csv uploaded twice while the queue was busy with
    another file. The second replaced the first in the inbox, which was never loaded nor
    recorded. Now each is loaded, in the order they came, and each is in the file log."""
    settings = make_settings(sqlite_url, tmp_path, database={"timeout": 20.0})
    inbox = tmp_path / "inbox"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("id,name\nE1,Ann\n")
    second.write_text("id,name\nE1,Ann\nE2,Bob\n")
    customers = tmp_path / "Customers.csv"
    customers.write_text("id,name\nC1,Acme\n")
    with RunningService(settings) as running:
        assert running.service.sftp is not None
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # the queue waits on the first file's load
        try:
            result = sftp_upload(
                running.service.sftp.port,
                [f"put {customers}", f"put {first} Employees.csv", f"put {second} Employees.csv"],
                tmp_path / "client",
            )
            assert result.returncode == 0, result.stderr
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        settled(running, inbox)
        engine = running.engine()
        try:
            with engine.connect() as conn:
                logged = conn.execute(
                    select(files.c.name, files.c.status, files.c.rows_read).order_by(files.c.id)
                ).all()
                names = conn.execute(text("SELECT id FROM employees ORDER BY id")).scalars()
                assert list(names) == ["E1", "E2"]
        finally:
            engine.dispose()
    assert [tuple(row) for row in logged] == [
        ("Customers.csv", "loaded", 1),
        ("Employees.csv", "loaded", 1),
        ("Employees.csv", "loaded", 2),
    ]
