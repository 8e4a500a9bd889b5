"""deploy/aljex-sync.service: a systemd unit that systemd itself accepts, running aljex-sync
unprivileged and sandboxed.

systemd-analyze checks the unit offline: `verify` (every key known, the command there) and
`security` (the sandbox's exposure score). The shipped unit names the binary where
docs/deploy.md installs it; the test points a copy at this checkout's, which exists.
Under CI=true a missing systemd-analyze fails (.ci/run installs it); elsewhere it skips.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "deploy" / "aljex-sync.service"
SHIPPED_BINARY = "/opt/aljex-sync/.venv/bin/aljex-sync"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is not installed (CI=true: .ci/run installs systemd)")
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return found


def unit_here(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart is this checkout's aljex-sync."""
    binary = Path(sys.executable).parent / "aljex-sync"
    assert binary.exists(), binary
    copy = tmp_path / "aljex-sync.service"
    copy.write_text(UNIT.read_text().replace(SHIPPED_BINARY, str(binary)))
    return copy


def service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_systemd_analyze_verify_accepts_the_unit_without_a_word(tmp_path):
    done = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).strip() == ""  # an unknown key is only a warning


def test_the_sandbox_scores_ok_in_systemd_analyze_security(tmp_path):
    done = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=yes",
            "--threshold=20",
            str(unit_here(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "Overall exposure level" in done.stdout


def test_the_unit_runs_unprivileged_in_its_own_folder_and_restarts_on_failure():
    service = service_section()
    assert service["User"] == "aljex-sync"
    assert service["StateDirectory"] == "aljex-sync"
    assert service["WorkingDirectory"] == "/var/lib/aljex-sync"
    assert service["ReadWritePaths"] == "/var/lib/aljex-sync"
    assert service["Environment"] == "ALJEX_SYNC_CONFIG=/var/lib/aljex-sync/aljex-sync.toml"
    assert service["ExecStart"] == f"{SHIPPED_BINARY} serve"
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["CapabilityBoundingSet"] == ""


def test_the_unit_gives_serve_time_to_stop_cleanly():
    from aljex_sync.service import STOP_TIMEOUT

    assert float(service_section()["TimeoutStopSec"]) > STOP_TIMEOUT
