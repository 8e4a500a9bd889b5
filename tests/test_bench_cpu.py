"""The live benchmark's CPU accounting: who spends the cores, per request."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from bench import cpu

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_process_cpu_time_grows_with_its_work() -> None:
    before = cpu.process_seconds(os.getpid())
    _spin(0.1)
    after = cpu.process_seconds(os.getpid())
    assert before is not None and after is not None
    assert 0.05 <= after - before <= 1.0


def test_a_gone_process_has_no_figure() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert cpu.process_seconds(child.pid) is None


def test_descendants_include_a_child_and_its_child() -> None:
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'input()'])"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            below = cpu.descendants(os.getpid())
            if len(below) >= 2:
                break
            time.sleep(0.05)
        assert child.pid in below
        assert len(below) >= 2  # the grandchild, waiting on its input
    finally:
        child.communicate(b"\n", timeout=10)


def test_per_request_divides_the_cpu_spent_by_the_requests() -> None:
    before = cpu.Snapshot(server=1.0, loop=0.5, machine=(10.0, 20.0))
    after = cpu.Snapshot(server=1.5, loop=0.8, machine=(13.0, 24.0))
    figures = cpu.per_request(before, after, requests=1000)
    assert figures["server_cpu_us"] == pytest.approx(500.0)
    assert figures["loop_cpu_us"] == pytest.approx(300.0)
    assert figures["machine_busy"] == pytest.approx(0.75)


def test_a_server_that_could_not_be_read_gives_no_figure() -> None:
    before = cpu.Snapshot.take([os.getpid(), 2**22 + 12345])  # no such process
    assert before.server is None
    assert cpu.per_request(before, before, 10)["server_cpu_us"] is None
