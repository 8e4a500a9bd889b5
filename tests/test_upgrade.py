"""Upgrades: a newer aljex-sync brings an older database's bookkeeping tables up to date at
start, keeping every row, and refuses a database a newer aljex-sync has upgraded.

Version 1 is the database aljex-sync 0.1.0 made: its DDL is frozen, per backend, in
tests/fixtures/schema_v1/. The upgraded database must have exactly the shape a fresh one
gets, so a column added to a bookkeeping table without its migration step fails here.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Column, Engine, MetaData, String, Table, inspect, select, text

from aljex_sync.errors import DatabaseTooNew
from aljex_sync.store import migrations
from aljex_sync.store.database import open_engine
from aljex_sync.store.migrations import LATEST, Step, add_column
from aljex_sync.store.schema import ROW_HASH, SYSTEM, Schema, SyncedTable, events
from aljex_sync.store.statuses import count_by_status, status_in

from .support import TEST_PASSWORD, RunningService, make_settings
from .test_serve import assert_one_error_line, serving

FIXTURES = Path(__file__).parent / "fixtures" / "schema_v1"
THEN = datetime(2026, 1, 5, 8, 30)


def backend_of(engine: Engine) -> str:
    name = engine.dialect.name
    return "mariadb" if name in ("mysql", "mariadb") else name


def make_version_1(engine: Engine) -> None:
    """The bookkeeping tables 0.1.0 made, with a synced table and a journaled request."""
    ddl = (FIXTURES / f"{backend_of(engine)}.sql").read_text()
    statements = [s for s in ddl.split(";") if s.strip()]
    with engine.begin() as conn:
        for statement in statements:
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            conn.exec_driver_sql("\n".join(lines))
        # A synced table as 0.1.0 made it: today's shape less the row hash (version 3).
        today = SyncedTable("loads", ("id",), ("id",), {"id": "id", "status": "status"}).table
        then = [c for c in today.columns if c.name != ROW_HASH]
        Table(
            "loads",
            MetaData(),
            *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in then),
        ).create(conn)
        tables = MetaData()
        tables.reflect(conn)
        conn.execute(tables.tables["loads"].insert(), {"id": "1001", "status": "OPEN"})
        conn.execute(
            tables.tables["_aljex_tables"].insert(),
            {
                "table_name": "loads",
                "key_fields": json.dumps(["id"]),
                "key_columns": json.dumps(["id"]),
                "created_at": THEN,
            },
        )
        for field in ("id", "status"):
            conn.execute(
                tables.tables["_aljex_columns"].insert(),
                {
                    "table_name": "loads",
                    "column_name": field,
                    "field_name": field,
                    "first_seen_at": THEN,
                },
            )
        conn.execute(
            tables.tables["_aljex_events"].insert(),
            {
                "received_at": THEN,
                "source": "live",
                "remote_addr": "203.0.113.10",
                "table_name": "loads",
                "action": "create",
                "status": "applied",
                "body": b"web_sync_table_name=loads&web_sync_action=create&id=1001&status=OPEN",
                "applied_at": THEN,
            },
        )


def version(engine: Engine) -> int | None:
    found, _ = migrations.current(engine)
    return found


@pytest.fixture
def engine(database_url: str):
    made = open_engine(database_url)
    yield made
    made.dispose()


def test_a_database_made_by_0_1_0_reads_as_version_1(engine):
    make_version_1(engine)
    assert version(engine) == 1


def test_a_fresh_database_gets_the_latest_version(engine):
    assert version(engine) is None
    Schema(engine).install()
    assert version(engine) == LATEST


def test_serve_upgrades_a_0_1_0_database_and_keeps_its_rows(engine, database_url, tmp_path):
    make_version_1(engine)
    # keep_days 0: serve's start-up prune would otherwise take the fixture's old event.
    settings = make_settings(database_url, tmp_path, journal={"keep_days": 0})
    with RunningService(settings) as running:
        reply = httpx.post(
            running.url,
            data={"web_sync_table_name": "loads", "web_sync_action": "update", "id": "1001"}
            | {"status": "DELIVERED"},
            auth=("aljex", TEST_PASSWORD),
        )
        assert reply.status_code == 200, reply.text
    assert version(engine) == LATEST
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM loads WHERE id = '1001'")).scalar() == (
            "DELIVERED"
        )
        journal = conn.execute(select(events.c.status, events.c.remote_addr).order_by(events.c.id))
        assert [tuple(row) for row in journal] == [
            ("applied", "203.0.113.10"),
            ("applied", "127.0.0.1"),
        ]


def test_an_upgrade_adds_the_row_hash_to_synced_tables(engine):
    make_version_1(engine)
    assert ROW_HASH not in {c["name"] for c in inspect(engine).get_columns("loads")}
    Schema(engine).install()
    assert ROW_HASH in {c["name"] for c in inspect(engine).get_columns("loads")}


def indexes_made(table: Table, backend: str) -> set[str]:
    """The indexes a fresh database of this backend has on a bookkeeping table."""
    only_mariadb = {"ix_aljex_events_table_name"}
    return {i.name for i in table.indexes if backend == "mariadb" or i.name not in only_mariadb}


def test_an_upgraded_database_has_the_shape_of_a_fresh_one(engine):
    make_version_1(engine)
    Schema(engine).install()
    found = inspect(engine)
    for table in [*SYSTEM.tables.values(), migrations.meta]:
        columns = {c["name"] for c in found.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
        indexes = {i["name"] for i in found.get_indexes(table.name)}
        assert indexes >= indexes_made(table, backend_of(engine)), table.name


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "upgraded"])
def test_the_journal_indexes_only_the_events_not_applied(engine, fresh):
    """SQLite and PostgreSQL: applied events (nearly all) touch no index but the primary
    key; MariaDB, which has no partial indexes, keeps the two indexes 0.1.0 made."""
    if not fresh:
        make_version_1(engine)
    Schema(engine).install()
    indexes = {i["name"]: i for i in inspect(engine).get_indexes(events.name)}
    if backend_of(engine) == "mariadb":
        assert set(indexes) >= {"ix_aljex_events_status", "ix_aljex_events_table_name"}
        return
    assert set(indexes) == {"ix_aljex_events_status"}
    where = indexes["ix_aljex_events_status"]["dialect_options"][f"{backend_of(engine)}_where"]
    assert "applied" in str(where)


def test_a_database_of_a_newer_aljex_sync_is_refused(engine):
    Schema(engine).install()
    with engine.begin() as conn:
        conn.execute(migrations.meta.update().values(value=str(LATEST + 1)))
    with pytest.raises(DatabaseTooNew, match=f"schema version {LATEST + 1}, newer than"):
        Schema(engine).install()
    assert version(engine) == LATEST + 1


def test_serve_refuses_a_newer_database_in_one_line(tmp_path):
    engine = open_engine(f"sqlite:///{tmp_path / 'aljex.db'}")
    Schema(engine).install()
    with engine.begin() as conn:
        conn.execute(migrations.meta.update().values(value="99"))
    engine.dispose()
    config = tmp_path / "aljex-sync.toml"
    config.write_text(
        '[database]\nurl = "sqlite:///aljex.db"\n[live]\nlisten = "127.0.0.1:0"\n'
        'password = "p"\n[morning]\nlisten = "127.0.0.1:0"\npassword = "p"\n'
    )
    with serving(config) as serve:
        code, lines, _ = serve.finish()
    assert code == 1
    assert_one_error_line(lines, "schema version 99", "upgrade aljex-sync")


def test_the_next_step_is_one_function_and_runs_once(engine):
    Schema(engine).install()
    row_hash = Column("row_hash", String(64))
    ran: list[int] = []

    def add_row_hash(conn):
        ran.append(1)
        add_column(conn, events, row_hash)

    steps = (*migrations.STEPS, Step(LATEST + 1, "a row hash on each event", add_row_hash))
    assert migrations.upgrade(engine, SYSTEM, steps) == LATEST
    assert migrations.upgrade(engine, SYSTEM, steps) == LATEST + 1
    assert ran == [1]
    assert "row_hash" in {c["name"] for c in inspect(engine).get_columns("_aljex_events")}
    assert version(engine) == LATEST + 1


def test_a_failing_step_leaves_the_version_where_it_was_and_can_run_again(engine):
    """One transaction on SQLite and PostgreSQL: the column is gone with the failure.
    MariaDB commits the DDL at once: the version stays, and the idempotent step resumes."""
    Schema(engine).install()
    row_hash = Column("row_hash", String(64))

    def half_done(conn):
        add_column(conn, events, row_hash)
        raise RuntimeError("the step failed after its DDL")

    failing = (*migrations.STEPS, Step(LATEST + 1, "a row hash", half_done))
    with pytest.raises(RuntimeError):
        migrations.upgrade(engine, SYSTEM, failing)
    assert version(engine) == LATEST
    columns = {c["name"] for c in inspect(engine).get_columns("_aljex_events")}
    assert ("row_hash" in columns) == (backend_of(engine) == "mariadb")

    fixed = (
        *migrations.STEPS,
        Step(LATEST + 1, "a row hash", lambda c: add_column(c, events, row_hash)),
    )
    migrations.upgrade(engine, SYSTEM, fixed)
    assert version(engine) == LATEST + 1
    assert "row_hash" in {c["name"] for c in inspect(engine).get_columns("_aljex_events")}


@pytest.mark.parametrize("statuses", [("held",), ("held", "rejected"), ("superseded",)])
def test_sqlite_finds_events_not_applied_by_the_partial_index(sqlite_url, statuses):
    """SQLite takes a partial index only when the query carries its condition word for word:
    ``status_in`` adds it (``status = 'held'`` alone scans the journal)."""
    engine = open_engine(sqlite_url)
    Schema(engine).install()
    query = select(events.c.id).where(status_in(*statuses)).order_by(events.c.id)
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    engine.dispose()
    assert "ix_aljex_events_status" in plan, plan


def test_events_are_counted_by_status_as_a_group_by_counts_them(engine):
    Schema(engine).install()
    with engine.connect() as conn:
        assert count_by_status(conn) == {}
    statuses = ["applied"] * 5 + ["held"] * 2 + ["rejected", "superseded"]
    row = {"received_at": THEN, "source": "live", "remote_addr": "-", "body": b"x"}
    with engine.begin() as conn:
        conn.execute(events.insert(), [{**row, "status": s} for s in statuses])
    with engine.connect() as conn:
        counts = count_by_status(conn)
    assert counts == {"applied": 5, "held": 2, "rejected": 1, "superseded": 1}
    assert list(counts) == sorted(counts)
