"""Failed Live Sync logins: counted per address and user name tried, shown by `status`.

A password changed on one side only stops every record; the log says so per request, and
`status` says so at a glance, without journaling what was never authenticated.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta

import httpx
from click.testing import CliRunner

from aljex_sync import config, login_failures
from aljex_sync.cli import main
from aljex_sync.clock import utcnow
from aljex_sync.journal import Journal
from aljex_sync.login_failures import FailedLogins
from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import events
from aljex_sync.store.schema import login_failures as table

from .receivers_support import write_config
from .support import RunningService, make_settings, post_note


def _status(path: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["-c", path, "status", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_status_lists_failed_logins_by_address_and_name_tried(tmp_path, database_url):
    path = write_config(tmp_path, database_url)
    settings = config.load(path)
    with RunningService(settings) as running:
        for _ in range(3):
            refused = httpx.post(running.url, content=b"a=1", auth=("aljex", "old password"))
            assert refused.status_code == 401
        assert httpx.post(running.url, content=b"a=1").status_code == 401  # no credentials
        assert post_note(running) == 200  # Aljex, with the right password: not listed
    # The service wrote what it counted when it stopped (else every 10 seconds).
    out = _status(str(path))
    assert "Failed Live Sync logins (last 24 h)" in out
    assert "127.0.0.1" in out and "aljex" in out and "(none)" in out
    found = json.loads(_status(str(path), "--json"))["failed_logins"]
    counts = {f["username"]: f["failures"] for f in found}
    assert counts == {"aljex": 3, "": 1}
    engine = open_engine(settings.database.url)
    try:
        with engine.connect() as conn:  # nothing refused at the door was journaled
            assert conn.execute(events.select()).all() != []
            assert all(row.status != "rejected" for row in conn.execute(events.select()))
    finally:
        engine.dispose()


def _installed(tmp_path):
    url = f"sqlite:///{tmp_path / 'logins.db'}"
    settings = make_settings(url, tmp_path)
    journal = Journal(open_engine(url), settings)
    journal.install()
    return journal.engine


def test_counts_add_up_across_writes_and_a_name_is_kept_printable(tmp_path):
    engine = _installed(tmp_path)
    recorder = FailedLogins(engine)
    recorder.note("10.0.0.9", "admin\x1b[2J")
    asyncio.run(recorder.flush())
    recorder.note("10.0.0.9", "admin\x1b[2J")
    recorder.note("10.0.0.9", "admin\x1b[2J")
    asyncio.run(recorder.flush())
    (only,) = login_failures.recent(engine)
    assert (only.address, only.username, only.failures) == ("10.0.0.9", "admin?[2J", 3)
    assert only.first_at <= only.last_at
    engine.dispose()


def test_a_flood_writes_at_most_a_hundred_pairs_at_a_time_and_says_so(tmp_path, caplog):
    engine = _installed(tmp_path)
    recorder = FailedLogins(engine)
    for n in range(150):
        for _ in range(1 + (n < 10)):  # ten addresses fail twice: they are written first
            recorder.note(f"10.1.{n // 256}.{n % 256}", "guess")
    with caplog.at_level(logging.WARNING, logger="aljex_sync.live"):
        asyncio.run(recorder.flush())
    with engine.connect() as conn:
        rows = conn.execute(table.select()).all()
    assert len(rows) == login_failures.MOST_PER_FLUSH
    assert {f"10.1.0.{n}" for n in range(10)} <= {r.address for r in rows}
    assert "failed logins from 50 more address and user name pairs were not recorded" in (
        caplog.text
    )
    engine.dispose()


def test_rows_older_than_a_week_are_pruned_and_status_shows_only_the_last_day(tmp_path):
    engine = _installed(tmp_path)
    long_ago, yesterday = utcnow() - timedelta(days=8), utcnow() - timedelta(hours=30)
    with engine.begin() as conn:
        for address, at in (("10.0.0.1", long_ago), ("10.0.0.2", yesterday)):
            conn.execute(
                table.insert().values(
                    address=address, username="x", failures=1, first_at=at, last_at=at
                )
            )
    recorder = FailedLogins(engine)
    recorder.note("10.0.0.3", "x")
    asyncio.run(recorder.flush())
    with engine.connect() as conn:
        kept = {r.address for r in conn.execute(table.select())}
    assert kept == {"10.0.0.2", "10.0.0.3"}
    assert [f.address for f in login_failures.recent(engine)] == ["10.0.0.3"]
    engine.dispose()
