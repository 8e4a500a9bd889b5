"""The crash harness (`make crash-test`, bench/crash.py), run briefly: one seed, SQLite.

The whole campaign takes minutes and is not part of the suite; this keeps the harness
itself honest in CI. It must find nothing lost on the real server, and it must find the
losses of a receiver that answers 200 before it commits, and exit non-zero for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def crash_test(results: Path, *args: str) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALJEX_SYNC_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.crash",
            "--backends",
            "sqlite",
            "--seeds",
            "1",
            "--results",
            str(results),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert (results / "crash.json").exists(), done.stdout + done.stderr
    return done.returncode, json.loads((results / "crash.json").read_text())


@pytest.mark.timeout(110)
def test_sigkill_under_load_loses_no_acknowledged_record(tmp_path: Path):
    status, report = crash_test(tmp_path, "--kills", "3", "--control-kills", "0")
    (run,) = report["runs"]
    assert run["error"] == ""
    assert run["kills"] == 3
    assert run["acknowledged"] > 0
    assert run["lost"] == 0
    assert run["not_journaled"] == 0
    assert run["integrity"] == "ok"
    assert len(run["restart_seconds"]) >= 1
    assert status == 0


@pytest.mark.timeout(110)
def test_harness_catches_a_receiver_that_acknowledges_before_it_commits(tmp_path: Path):
    status, report = crash_test(tmp_path, "--receiver", "ack-before-commit", "--kills", "2")
    (run,) = report["runs"]
    assert run["error"] == ""
    assert run["lost"] > 0
    assert run["losses"][0]["kind"] in ("missing", "stale", "delete undone", "not journaled")
    assert status == 1
