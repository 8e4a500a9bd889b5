"""Tables grown by many columns at once: on SQLite, in one change of the schema, with every
row, the column map and the history kept as one ALTER per column would keep them.

Real SQLite files; the live case through the running service over HTTP.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text

from aljex_sync.store import ddl
from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import Schema

from .support import RunningService, make_settings
from .test_live import journal, post, record, rows


def schema_version(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA schema_version").scalar_one())


def statements(engine: Engine) -> dict[str, str]:
    """Each table's and index's CREATE statement, as SQLite keeps it."""
    found = rows(engine, "SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index')")
    return {r["name"]: r["sql"] for r in found}


def test_columns_added_in_bulk_keep_every_row_the_column_map_and_the_history(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, live={"max_fields": 2000})
    wide = {f"Field {i}": f"v{i}" for i in range(600)}  # mapped names: field_<hash>
    with RunningService(settings) as running:
        engine = running.engine()
        for body in (
            record("loads", "create", id="1", status="OPEN"),
            record("loads", "create", id="2", status="COVERED"),
        ):
            assert post(running, body).status_code == 200
        before = schema_version(engine)
        response = post(running, record("loads", "update", id="2", **wide))
        assert response.status_code == 200 and "held" not in response.text, response.text
        # A few changes of the schema (the table, its history, its typed view), not 1,200.
        assert schema_version(engine) - before < 12
        assert post(running, record("loads", "update", id="1", late="yes")).status_code == 200
        mapped = {
            r["field_name"]: r["column_name"]
            for r in rows(engine, "SELECT field_name, column_name FROM _aljex_columns")
        }
        assert set(wide) | {"id", "status", "late"} == set(mapped)
        by_id = {r["id"]: r for r in rows(engine, "SELECT * FROM loads")}
        assert by_id["1"]["status"] == "OPEN" and by_id["1"]["late"] == "yes"
        assert by_id["1"][mapped["Field 7"]] is None
        assert by_id["2"]["status"] == "COVERED"
        assert {f: by_id["2"][c] for f, c in mapped.items() if f in wide} == wide
        history = {c["name"] for c in inspect(engine).get_columns("loads__history")}
        assert set(mapped.values()) <= history
        [latest] = rows(
            engine,
            "SELECT * FROM loads__history WHERE id = '2' AND _aljex_valid_to IS NULL",
        )
        assert latest[mapped["Field 599"]] == "v599" and latest["status"] == "COVERED"
        assert rows(engine, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
        assert {e["status"] for e in journal(engine)} == {"applied"}
        engine.dispose()


def grow(url: str, batches: list[list[str]]) -> Engine:
    """A table with its history, grown by each batch of fields in turn, and a row each."""
    engine = open_engine(url)
    schema = Schema(engine)
    schema.install()
    schema.keeps_history = lambda name: True
    schema.ensure("notes", ["id"], ["id", "text"])
    for n, fields in enumerate(batches):
        schema.ensure("notes", ["id"], ["id", *fields])
        synced = schema.tables["notes"]
        values: dict[str, Any] = {synced.columns[f]: f"{n}:{f}" for f in fields}
        with engine.begin() as conn:
            conn.execute(synced.table.insert(), {"id": str(n), **values})
    return engine


def test_the_bulk_leaves_the_schema_as_one_alter_per_column_would(tmp_path, monkeypatch):
    """Same CREATE statements, byte for byte, and the same rows: the bulk is only faster."""
    batches = [[f"a{i}" for i in range(40)], ["b0", "b1"], [f"Pro #{i}" for i in range(30)]]
    bulk = grow(f"sqlite:///{tmp_path / 'bulk.db'}", batches)
    monkeypatch.setattr(ddl, "SQLITE_BULK_FROM", 10**6)
    one_by_one = grow(f"sqlite:///{tmp_path / 'one_by_one.db'}", batches)
    assert schema_version(one_by_one) - schema_version(bulk) > 100  # 2 x 70 ALTERs, 2 x 4
    assert statements(bulk) == statements(one_by_one)
    query = "SELECT * FROM notes ORDER BY id"
    assert rows(bulk, query) == rows(one_by_one, query)
    for engine in (bulk, one_by_one):
        engine.dispose()


def test_a_bulk_the_statement_cannot_take_falls_back_to_one_alter_per_column(tmp_path):
    """A hand-made table whose statement holds the first new column's definition twice
    (here in a CHECK): the columns are all added all the same, one ALTER each."""
    url = f"sqlite:///{tmp_path / 'aljex.db'}"
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE notes (id VARCHAR(255) NOT NULL PRIMARY KEY,"
                " memo TEXT CHECK (memo <> 'a0 TEXT'))"
            )
        )
    schema = Schema(engine)
    schema.install()
    before = schema_version(engine)
    schema.ensure("notes", ["id"], ["id", "memo", *(f"a{i}" for i in range(10))])
    names = [c["name"] for c in inspect(engine).get_columns("notes")]
    assert names[:2] == ["id", "memo"] and {f"a{i}" for i in range(10)} <= set(names)
    assert schema_version(engine) - before >= 10
    engine.dispose()


@pytest.mark.parametrize("fields", [3, 4])
def test_a_few_columns_on_either_side_of_the_bulk_threshold_are_added(sqlite_url, fields):
    assert ddl.SQLITE_BULK_FROM == 4
    engine = grow(sqlite_url, [[f"f{i}" for i in range(fields)]])
    assert rows(engine, "SELECT f0 FROM notes WHERE id = '0'") == [{"f0": "0:f0"}]
    engine.dispose()
