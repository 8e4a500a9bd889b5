"""The whole protocol for real: the emulator plays Aljex against `serve`, then verifies.

Morning files over SFTP and live posts over HTTP, interleaved, on every database; the
emulator's oracle must then find zero differences.
"""

from __future__ import annotations

from datetime import date

from aljex_sync.emulate.morning import SftpTarget, upload_morning
from aljex_sync.emulate.sender import LiveOptions, LiveTarget, run_live
from aljex_sync.emulate.state import load_state
from aljex_sync.emulate.verify import verify

from .support import TEST_PASSWORD, RunningService, make_settings


def test_morning_and_live_interleaved_leave_the_database_equal_to_aljex(database_url, tmp_path):
    with RunningService(make_settings(database_url, tmp_path)) as running:
        state = load_state(tmp_path / "state.json", seed=11, today=date(2026, 11, 27), size="tiny")
        live = LiveTarget(running.url, "aljex", TEST_PASSWORD)
        sftp = SftpTarget("127.0.0.1", running.service.sftp.port, "aljex", TEST_PASSWORD)
        loads = running.service.loads

        first = upload_morning(state, sftp)
        assert len(first.files) >= 10
        assert loads.wait_idle(60)
        assert run_live(state, live, LiveOptions(count=120)).ok
        upload_morning(state, sftp)
        assert loads.wait_idle(60)
        assert run_live(state, live, LiveOptions(count=80, concurrency=4)).ok

        # An unchanged file (no salesrep changed overnight) is skipped as a duplicate.
        statuses = [(r.name, r.status) for r in loads.reports]
        assert {s for _, s in statuses} <= {"loaded", "duplicate"}, statuses
        assert sum(s == "loaded" for _, s in statuses) >= 15
        report = verify(running.settings.database.url, state)
        assert report.ok, report.examples
        assert sum(t.expected_rows for t in report.tables) > 100
