"""Tombstones: kept `[journal] tombstone_days`, then pruned, and still no morning file older
than a live delete brings the record back.

Real service on loopback, real SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import csv
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, text, update

from aljex_sync import retention
from aljex_sync.clock import utcnow
from aljex_sync.errors import ConfigError
from aljex_sync.file_report import FileReport
from aljex_sync.morning import MorningLoader
from aljex_sync.store import locks
from aljex_sync.store.database import open_engine, reading
from aljex_sync.store.schema import DELETED_AT, SYNCED_AT, Schema, tombstones

from .support import RunningService, make_settings
from .test_live import post, record, rows
from .test_operations import run, write_config


@pytest.fixture
def engine(database_url: str):
    made = open_engine(database_url)
    Schema(made).install()  # the bookkeeping tables, as once serve has run
    yield made
    made.dispose()


def bury(engine: Engine, days_ago: float, *keys: tuple[str, str]) -> None:
    """Tombstones of deletes ``days_ago`` days ago, as live sync leaves them."""
    deleted_at = utcnow() - timedelta(days=days_ago)
    with engine.begin() as conn:
        conn.execute(
            insert(tombstones),
            [{"table_name": t, "record_key": k, "deleted_at": deleted_at} for t, k in keys],
        )


def buried(engine: Engine) -> list[tuple[str, str]]:
    with reading(engine) as conn:  # not in the way of a writer, nor waiting for one
        query = select(tombstones.c.table_name, tombstones.c.record_key)
        return sorted((str(t), str(k)) for t, k in conn.execute(query))


def age_delete(engine: Engine, table: str, key: str, days: float) -> None:
    """Move a live delete ``days`` back: its tombstone, and a soft-deleted row's times."""
    then = utcnow() - timedelta(days=days)
    with engine.begin() as conn:
        conn.execute(
            update(tombstones)
            .where(tombstones.c.table_name == table, tombstones.c.record_key == key)
            .values(deleted_at=then)
        )
    quoted = engine.dialect.identifier_preparer.quote(table)
    with engine.begin() as conn:  # a hard-deleted row is not there: this changes nothing
        conn.execute(
            text(f"UPDATE {quoted} SET {SYNCED_AT} = :then, {DELETED_AT} = :then WHERE id = :key"),
            {"then": then, "key": key},
        )


def quotes_file(tmp_path: Path, name: str, *keys: str) -> Path:
    path = tmp_path / name
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["id", "amount"], *([k, "5"] for k in keys)])
    return path


def alive_quotes(engine: Engine) -> list[str]:
    found = rows(engine, f"SELECT id FROM quotes WHERE {DELETED_AT} IS NULL ORDER BY id")
    return [r["id"] for r in found]


def load(running: RunningService, path: Path, days_ago: float, **options: bool) -> FileReport:
    """Load a file as if its upload began ``days_ago`` days ago (its snapshot is 30 min before)."""
    service = running.service
    loader = MorningLoader(service.engine, running.settings, service.schema)
    return loader.load(path, started_at=utcnow() - timedelta(days=days_ago), **options)


def live(running: RunningService, action: str, *keys: str) -> None:
    for key in keys:
        assert post(running, record("quotes", action, id=key)).status_code == 200


# -- the prune ---------------------------------------------------------------------------


def test_prune_removes_tombstones_past_tombstone_days_in_batches_and_keeps_recent_ones(engine):
    old = [("loads", f"L{i}") for i in range(5)] + [("quotes", "Q1"), ("payable", '["A","B"]')]
    recent = [("loads", "L9"), ("quotes", "Q2")]
    bury(engine, 31, *old)
    bury(engine, 29, *recent)
    with engine.connect() as conn:
        assert retention.forgotten_before(conn) is None  # nothing pruned yet
    assert retention.prune_tombstones(engine, 30, dry_run=True).removed == 7
    assert len(buried(engine)) == 9
    report = retention.prune_tombstones(engine, 30, batch=2)
    assert report.removed == 7
    assert buried(engine) == sorted(recent)
    with engine.connect() as conn:
        assert retention.forgotten_before(conn) == report.cutoff
    assert retention.prune_tombstones(engine, 30).removed == 0
    # A prune with a later cutoff moves the mark up; one with an earlier one never back.
    later = retention.prune_tombstones(engine, 28)
    assert later.removed == 2 and buried(engine) == []
    bury(engine, 31, ("loads", "L10"))
    assert retention.prune_tombstones(engine, 30).removed == 1
    with engine.connect() as conn:
        assert retention.forgotten_before(conn) == later.cutoff


def test_a_prune_takes_its_turn_after_a_load_of_the_same_table(engine):
    """So that a load never reads a tombstone, then finds it gone yet the mark not moved."""
    bury(engine, 40, ("quotes", "Q1"))
    with engine.connect() as loading, ThreadPoolExecutor(1) as pool:
        transaction = loading.begin()
        with locks.for_transaction(loading, locks.morning_load("quotes"), wait=5):
            pruning = pool.submit(retention.prune_tombstones, engine, 30)
            time.sleep(0.5)
            assert not pruning.done()
            assert buried(engine) == [("quotes", "Q1")]
            transaction.commit()
        assert pruning.result(timeout=30).removed == 1
    assert buried(engine) == []


def test_prune_command_says_how_many_tombstones_went(engine, database_url, tmp_path):
    bury(engine, 40, ("loads", "L1"), ("loads", "L2"), ("quotes", "Q1"))
    bury(engine, 1, ("loads", "L3"))
    config = write_config(tmp_path, database_url)
    code, out = run("-c", str(config), "prune", "--dry-run")
    assert code == 0, out
    events, tombs = out.splitlines()
    assert events.startswith("Would remove 0 applied events")
    assert tombs.startswith("Would remove 3 tombstones of deletes before")
    assert tombs.endswith(" UTC (30 days kept).")
    code, out = run("-c", str(config), "prune", "--tombstone-days", "1")
    assert code == 1
    assert "--tombstone-days must be 0 (keep forever) or at least 2 days" in out
    code, out = run("-c", str(config), "prune")
    assert code == 0 and out.splitlines()[1].startswith("Removed 3 tombstones of deletes")
    assert buried(engine) == [("loads", "L3")]
    code, out = run("-c", str(config), "prune", "--tombstone-days", "2", "--keep-days", "5")
    events, tombs = out.splitlines()
    assert events.endswith("(5 days kept).")
    assert tombs.startswith("Removed 0 tombstones") and tombs.endswith("(2 days kept).")


def test_prune_command_refuses_when_everything_is_kept_forever(engine, database_url, tmp_path):
    bury(engine, 400, ("loads", "L1"))
    forever = "[journal]\nkeep_days = 0\ntombstone_days = 0\n"
    code, out = run("-c", str(write_config(tmp_path, database_url, forever)), "prune")
    assert code == 1
    assert out == (
        "error: nothing to prune: [journal] keep_days = 0 and [journal] tombstone_days = 0"
        " keep everything; give --keep-days N or --tombstone-days N\n"
    )
    only_tombstones = "[journal]\nkeep_days = 0\n"
    code, out = run("-c", str(write_config(tmp_path, database_url, only_tombstones)), "prune")
    assert code == 0, out
    events, tombs = out.splitlines()
    assert events == "Applied events are kept forever ([journal] keep_days = 0)."
    assert tombs.startswith("Removed 1 tombstone of deletes before")
    assert buried(engine) == []


def test_prune_command_takes_0_days_as_keep_forever_as_the_config_does(
    engine, database_url, tmp_path
):
    bury(engine, 400, ("loads", "L1"))
    config = write_config(tmp_path, database_url)
    code, out = run("-c", str(config), "prune", "--tombstone-days", "0")
    assert code == 0, out
    assert out.splitlines()[1] == "Tombstones are kept forever (--tombstone-days 0)."
    assert buried(engine) == [("loads", "L1")]
    code, out = run("-c", str(config), "prune", "--keep-days", "0", "--tombstone-days", "0")
    assert (code, out) == (
        1,
        "error: nothing to prune: --keep-days 0 and --tombstone-days 0 keep everything;"
        " give --keep-days N or --tombstone-days N\n",
    )
    code, out = run("-c", str(config), "prune", "--keep-days", "0")
    assert code == 0, out
    assert out.splitlines()[0] == "Applied events are kept forever (--keep-days 0)."
    assert buried(engine) == []


def pruned(records: list[logging.LogRecord]) -> list[str]:
    """The prune's lines about tombstones (the test's own paths name tombstones too)."""
    lines = [r.getMessage() for r in records if r.name == "aljex_sync.retention"]
    return [line for line in lines if "tombstone" in line]


def test_serve_prunes_tombstones_at_start_and_logs_how_many(database_url, tmp_path, caplog):
    settings = make_settings(database_url, tmp_path)
    with RunningService(settings) as running:
        live(running, "create", "Q1", "Q2", "Q3")
        live(running, "delete", "Q1", "Q2", "Q3")
    engine = open_engine(database_url)
    try:
        age_delete(engine, "quotes", "Q1", 31)
        age_delete(engine, "quotes", "Q2", 45)
        caplog.clear()
        with caplog.at_level(logging.INFO, "aljex_sync.retention"), RunningService(settings):
            deadline = time.monotonic() + 60
            while not pruned(caplog.records):
                assert time.monotonic() < deadline, "no tombstone prune logged"
                time.sleep(0.05)
        (line,) = pruned(caplog.records)
        assert line.startswith("journal: pruned 2 tombstones of deletes before")
        assert line.endswith("(tombstone_days = 30)")
        assert buried(engine) == [("quotes", "Q3")]
    finally:
        engine.dispose()


# -- what a morning file may still do ------------------------------------------------------


@pytest.mark.parametrize("delete", ["hard", "soft"])
def test_a_file_older_than_a_kept_tombstone_still_does_not_bring_the_record_back(
    database_url, tmp_path, delete
):
    settings = make_settings(database_url, tmp_path, tables={"quotes": {"delete": delete}})
    with RunningService(settings) as running:
        live(running, "create", "Q1", "Q2", "Q3")
        live(running, "delete", "Q1", "Q2")
        engine = running.engine()
        try:
            age_delete(engine, "quotes", "Q1", 40)  # Q2's delete is today's
            assert retention.prune_tombstones(engine, 30).removed == 1
            assert buried(engine) == [("quotes", "Q2")]
            # Taken two hours ago, before Q2's delete: its tombstone keeps Q2 out.
            report = load(running, quotes_file(tmp_path, "Quotes.csv", "Q2", "Q3", "Q4"), 2 / 24)
            assert report.status == "loaded", report.error
            assert report.counts.skipped_newer == 2  # Q2, and Q3 (changed live since)
            assert alive_quotes(engine) == ["Q3", "Q4"]
        finally:
            engine.dispose()


def test_a_file_older_than_the_pruned_tombstones_is_held_if_it_would_insert_rows(
    database_url, tmp_path
):
    """The one case a prune changes: the file might hold a record whose tombstone went."""
    with RunningService(make_settings(database_url, tmp_path)) as running:
        live(running, "create", "Q1", "Q2")
        live(running, "delete", "Q1")
        engine = running.engine()
        try:
            age_delete(engine, "quotes", "Q1", 40)
            assert retention.prune_tombstones(engine, 30).removed == 1
            path = quotes_file(tmp_path, "Quotes.csv", "Q1", "Q2")
            report = load(running, path, 45)
            assert report.status == "held"
            assert "1 of its rows are not in the table" in (report.error or "")
            assert "tombstone_days" in (report.error or "")
            assert alive_quotes(engine) == ["Q2"]
            # A file as old that inserts nothing is no risk: it loads.
            only_q2 = load(running, quotes_file(tmp_path, "Quotes_2.csv", "Q2"), 45)
            assert only_q2.status == "loaded" and only_q2.counts.skipped_newer == 1
            # --force is the operator's call: the record comes back.
            forced = load(running, path, 45, force=True)
            assert forced.status == "loaded"
            assert alive_quotes(engine) == ["Q1", "Q2"]
        finally:
            engine.dispose()


def test_a_soft_deleted_row_outlives_its_pruned_tombstone(database_url, tmp_path):
    """With delete = "soft" the row itself, newer than an older file, keeps it deleted."""
    settings = make_settings(database_url, tmp_path, tables={"quotes": {"delete": "soft"}})
    with RunningService(settings) as running:
        live(running, "create", "Q1", "Q2")
        live(running, "delete", "Q1")
        engine = running.engine()
        try:
            age_delete(engine, "quotes", "Q1", 40)
            assert retention.prune_tombstones(engine, 30).removed == 1
            report = load(running, quotes_file(tmp_path, "Quotes.csv", "Q1", "Q2"), 45)
            assert report.status == "loaded", report.error
            assert report.counts.skipped_newer == 2
            assert alive_quotes(engine) == ["Q2"]
        finally:
            engine.dispose()


# -- the setting ---------------------------------------------------------------------------


def test_tombstone_days_is_0_or_more_than_a_day_plus_the_snapshot_margin(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    assert make_settings(url, tmp_path).journal.tombstone_days == 30
    assert make_settings(url, tmp_path, journal={"tombstone_days": 0}).journal.tombstone_days == 0
    assert make_settings(url, tmp_path, journal={"tombstone_days": 2}).journal.tombstone_days == 2
    for days in (1, -1):
        with pytest.raises(ConfigError, match="at least 2 days"):
            make_settings(url, tmp_path, journal={"tombstone_days": days})
    # A margin of a day and more pushes the least up: 2 days no longer outlive a file.
    margin = {"snapshot_margin": 1500.0}
    with pytest.raises(ConfigError, match=r"^journal\.tombstone_days: .* at least 3 days"):
        make_settings(url, tmp_path, journal={"tombstone_days": 2}, morning=margin)
    assert make_settings(url, tmp_path, journal={"tombstone_days": 3}, morning=margin)
