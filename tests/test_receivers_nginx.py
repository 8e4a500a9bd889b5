"""Three receivers behind nginx on one database, one of them SIGKILLed under load.

Sixteen emulator senders post through nginx, which sends a request a dead receiver failed
to the next one. Afterwards `emulate verify` finds the database as the feed says it must
be, and the crash harness's check (bench/crash.py) finds every acknowledged record stored
with its values (or a later change's) and journaled.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from datetime import date

import pytest
from bench.crash import Probe, SeedResult, _check

from aljex_sync.emulate.sender import LiveOptions, LiveReport, LiveTarget, run_live
from aljex_sync.emulate.state import load_state
from aljex_sync.emulate.verify import verify

from .receivers_support import Lines, Nginx, aljex_sync, kill_group, write_config
from .support import TEST_PASSWORD

RECORDS = 3000
SENDERS = 16


def _nginx_or_skip() -> None:
    if shutil.which("nginx") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (CI=true: .ci/run installs Debian's nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx)")


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
def test_three_receivers_behind_nginx_lose_nothing_when_one_is_killed(database_url, tmp_path):
    _nginx_or_skip()
    receivers = [
        Lines(aljex_sync(write_config(tmp_path, database_url, f"r{n}.toml"), "serve"))
        for n in range(3)
    ]
    nginx = None
    try:
        ports = [
            int(r.wait_for(r"live sync listening on http://127\.0\.0\.1:(\d+)").group(1))
            for r in receivers
        ]
        nginx = Nginx(tmp_path / "nginx", ports)
        url = f"http://127.0.0.1:{nginx.port}/aljex/sync"
        state = load_state(tmp_path / "emulator.json", seed=3, today=date(2026, 11, 27))
        victim = receivers[1]
        killed = threading.Event()

        def kill_midway(report: LiveReport) -> None:
            if report.delivered >= RECORDS // 2 and not killed.is_set():
                killed.set()
                kill_group(victim.process)  # the host is gone: serve and its children

        report = run_live(
            state,
            LiveTarget(url, "aljex", TEST_PASSWORD, timeout=60),
            LiveOptions(count=RECORDS, concurrency=SENDERS, retries=1000, backoff=0.05),
            progress=kill_midway,
        )
        assert killed.is_set()
        assert (report.delivered, report.failed, report.abandoned) == (RECORDS, 0, 0)
        for receiver in (receivers[0], receivers[2]):
            assert receiver.stop() == 0

        checked = verify(database_url, state)
        assert checked.differences == 0, checked.examples
        acks = SeedResult("aljex-sync", "nginx", 3)
        _check(database_url, state, Probe(url, 3), acks, [], [], 0.0)
        assert acks.acknowledged >= RECORDS
        assert (acks.lost, acks.not_journaled) == (0, 0), acks.losses
    finally:
        if nginx is not None:
            nginx.close()
        for receiver in receivers:
            receiver.close()
        for receiver in receivers:
            if receiver.process.returncode not in (0, -signal.SIGKILL):
                print("\n".join(receiver.seen[-30:]))
