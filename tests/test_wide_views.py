"""Typed views of wide tables: every table the store accepts gets its view, on each database.

A table grows to its database's column limit at most (SQLite 2000, PostgreSQL 1600,
MariaDB 1017, ``store/schema.py``), so its view stays within the limits on a SELECT
(SQLite 2000 result columns, PostgreSQL 1664 target entries); what the view is built from
is kept in ``_aljex_views``, whose description of 1,000 columns is over MariaDB's 64 KiB
TEXT.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Column, MetaData, String, Table, Text, inspect, text

from aljex_sync.cli import main
from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import MAX_COLUMNS, Timestamp
from aljex_sync.store.views import TypedViews

from .support import TEST_PASSWORD, RunningService, make_settings

VALUES = ["12.50", "2026-01-05", "9:05", "some text"]  # money, date, time, text


def post_fields(running: RunningService, key: str, names: list[str], values: list[str]) -> None:
    """Create record ``key`` of table ``wide`` with a value in each of ``names``."""
    fields = [("web_sync_table_name", "wide"), ("web_sync_action", "create"), ("id", key)]
    fields += [(name, values[i % len(values)]) for i, name in enumerate(names)]
    reply = httpx.post(
        running.url,
        content=urlencode(fields),
        auth=("aljex", TEST_PASSWORD),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=120,
    )
    assert reply.status_code == 200 and "applied" in reply.text, reply.text


def status(database_url: str, tmp_path: Path, *options: str) -> str:
    config = tmp_path / "status.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n[live]\npassword = "x"\n[morning]\npassword = "x"\n'
    )
    result = CliRunner().invoke(main, ["-c", str(config), "status", *options])
    assert result.exit_code == 0, result.output
    return result.output


def view_width(database_url: str) -> int:
    engine = open_engine(database_url)
    try:
        with engine.connect() as conn:
            return len(conn.execute(text("SELECT * FROM wide_typed")).keys())
    finally:
        engine.dispose()


def test_a_record_of_990_fields_gets_its_typed_view_and_keeps_it_over_a_restart(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(database_url, tmp_path)
    names = [f"field_{i:03d}" for i in range(989)]  # and id: 990 fields
    with RunningService(settings) as running:
        assert running.service.views.ready.wait(60)
        post_fields(running, "W1", names, VALUES)
    with RunningService(settings) as running:  # the restart refreshes every view
        assert running.service.views.ready.wait(120)
        assert running.service.views.wait_idle(120)
    assert view_width(database_url) >= 990
    assert "Typed views not refreshed" not in status(database_url, tmp_path)
    typed = "Typed views: 742 typed columns, 0 with values that do not fit."  # 3 in 4 of 989
    assert typed in status(database_url, tmp_path, "--types")
    assert json.loads(status(database_url, tmp_path, "--json"))["views_not_refreshed"] == []
    assert [
        r.getMessage()
        for r in caplog.records
        if r.name == "aljex_sync.views" and r.levelno >= logging.WARNING
    ] == []
    assert max(len(r.getMessage()) for r in caplog.records) < 2000


def test_the_widest_table_each_database_allows_gets_its_typed_view(
    database_url: str, tmp_path: Path
) -> None:
    """Every value a date, the longest guarded cast: SQLite's view of 2000 columns is
    4 MB of SQL, PostgreSQL's 1600 stay under its 1664 target entries."""
    settings = make_settings(database_url, tmp_path)
    engine = open_engine(database_url)
    limit = MAX_COLUMNS[engine.dialect.name]
    try:
        with RunningService(settings) as running:
            post_fields(running, "W0", [], VALUES)
            with engine.connect() as conn:
                room = limit - len(inspect(conn).get_columns("wide"))
            names = [f"date_{i:04d}" for i in range(room)]
            # 500 a record: a row of 990 such values is over PostgreSQL's and InnoDB's 8 KB.
            for start in range(0, room, 500):
                post_fields(running, f"W{start + 1}", names[start : start + 500], ["2026-01-05"])
        with engine.connect() as conn:
            assert len(inspect(conn).get_columns("wide")) == limit
        views = TypedViews(engine)
        views.refresh_all()
        assert views.errors() == []
    finally:
        engine.dispose()
    assert view_width(database_url) == limit


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
def test_a_views_table_made_with_a_64_kib_text_column_is_widened(
    database_url: str, tmp_path: Path
) -> None:
    """``_aljex_views`` as earlier versions made it on MariaDB: TEXT, 64 KiB at most."""
    engine = open_engine(database_url)
    earlier = Table(
        "_aljex_views",
        MetaData(),
        Column("table_name", String(64), primary_key=True),
        Column("view_name", String(64), nullable=False),
        Column("signature", String(64), nullable=False),
        Column("columns", Text, nullable=False),
        Column("built_at", Timestamp, nullable=False),
    )
    try:
        earlier.create(engine)
        settings = make_settings(database_url, tmp_path)
        with RunningService(settings) as running:
            post_fields(running, "W1", [f"field_{i:03d}" for i in range(989)], VALUES)
            assert running.service.views.ready.wait(60)
            assert running.service.views.wait_idle(60)
        views = TypedViews(engine)
        assert views.errors() == []
        with engine.connect() as conn:
            kind = {c["name"]: c["type"] for c in inspect(conn).get_columns("_aljex_views")}
        assert type(kind["columns"]).__name__ == "MEDIUMTEXT"
    finally:
        engine.dispose()
