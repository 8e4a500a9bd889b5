"""Morning Sync merges that count on a second connection while rewriting (PostgreSQL), and
the shared stages that makes possible: held files roll back, orphaned stages are swept."""

from __future__ import annotations

import pytest
from sqlalchemy import exc, text

from aljex_sync.store import overlap
from aljex_sync.store.stage import STAGE_PREFIX, Stage

from .conftest import _empty
from .test_morning import Receiver, customers, table_rows, write_csv


def _stages(receiver: Receiver) -> list[str]:
    sql = (
        f"SELECT relname FROM pg_class WHERE relkind = 'r' AND left(relname, 13) = '{STAGE_PREFIX}'"
    )
    return [row["relname"] for row in table_rows(receiver.engine, sql)]


@pytest.fixture
def pg_receiver(server_databases, tmp_path):
    """A receiver on PostgreSQL, whose stages are tables other connections can read."""
    url = server_databases.url("postgresql")
    _empty(url)
    r = Receiver(url, tmp_path)
    yield r
    r.engine.dispose()


def test_a_held_file_leaves_the_rows_it_would_change_as_they_were(database_url, tmp_path):
    # On PostgreSQL the rows are rewritten before the guard judges the counts.
    r = Receiver(database_url, tmp_path, morning={"max_drop_fraction": 1.0})
    header = ["id", "name", "city"]
    r.load(write_csv(tmp_path / "Customers.csv", header, customers(150)))
    report = r.load(write_csv(tmp_path / "Customers.csv", header, customers(10, "Camden")))
    assert report.status == "held" and "would delete 140 of 150 rows" in report.error
    rows = table_rows(r.engine, "SELECT city, COUNT(*) AS n FROM customers GROUP BY city")
    assert rows == [{"city": "Newark", "n": 150}]
    r.engine.dispose()


def test_the_counts_match_what_the_merge_wrote(database_url, tmp_path):
    r = Receiver(database_url, tmp_path)
    header = ["id", "name", "city"]
    r.load(write_csv(tmp_path / "Customers.csv", header, customers(300)))
    changed = customers(300)
    for row in changed[::3]:
        row[2] = "Camden"
    changed += [["N1", "New 1", "Edison"], ["N2", "New 2", "Edison"]]
    c = r.load(write_csv(tmp_path / "Customers.csv", header, changed[5:])).counts
    assert (c.inserted, c.updated, c.deleted, c.differing) == (2, 295, 5, 98)
    assert (c.missing_in_db, c.extra_in_db, c.existing) == (2, 5, 300)
    rows = table_rows(r.engine, "SELECT city, COUNT(*) AS n FROM customers GROUP BY city")
    assert {row["city"]: row["n"] for row in rows} == {"Newark": 197, "Camden": 98, "Edison": 2}
    r.engine.dispose()


def test_a_postgresql_stage_is_unlogged_and_dropped_after_the_load(pg_receiver, tmp_path):
    header = ["id", "name", "city"]
    seen: list[list[str]] = []
    path = write_csv(tmp_path / "Customers.csv", header, customers(1500))
    report = pg_receiver.load(path, progress=lambda *_: seen.append(_stages(pg_receiver)))
    assert report.status == "loaded" and report.counts.inserted == 1500
    assert seen and all(len(names) == 1 for names in seen)
    assert _stages(pg_receiver) == []  # dropped


def test_a_stage_whose_process_is_gone_is_swept_by_the_next(pg_receiver):
    orphan = f"{STAGE_PREFIX}1_{'ab' * 6}"  # process 1 is never a server process
    with pg_receiver.engine.begin() as conn:
        conn.execute(text(f'CREATE UNLOGGED TABLE "{orphan}" (id text)'))
    with pg_receiver.engine.connect() as conn:
        live = Stage(conn, ["id"], ["id", "name"])
        assert live.shared and live.table.name.startswith(STAGE_PREFIX)
        sql = f"SELECT relpersistence, reloptions FROM pg_class WHERE relname = '{live.table.name}'"
        [row] = table_rows(pg_receiver.engine, sql)
        assert row["relpersistence"] == "u" and "autovacuum_enabled=false" in row["reloptions"]
        # The live stage is left alone by another stage's sweep.
        with pg_receiver.engine.connect() as other:
            second = Stage(other, ["id"], ["id", "name"])
            assert sorted(_stages(pg_receiver)) == sorted([live.table.name, second.table.name])
            second.drop()
        live.drop()
    assert _stages(pg_receiver) == []


def test_without_a_second_connection_the_merge_surveys_first(pg_receiver, tmp_path, monkeypatch):
    header = ["id", "name", "city"]
    pg_receiver.load(write_csv(tmp_path / "Customers.csv", header, customers(20)))

    def refused(conn):
        raise exc.OperationalError("connect", {}, Exception("too many clients already"))

    monkeypatch.setattr(overlap, "_second_connection", refused)
    changed = customers(18, "Camden")
    report = pg_receiver.load(write_csv(tmp_path / "Customers.csv", header, changed))
    c = report.counts
    assert report.status == "loaded"
    assert (c.updated, c.deleted, c.differing, c.extra_in_db) == (18, 2, 18, 2)
    rows = table_rows(pg_receiver.engine, "SELECT city, COUNT(*) AS n FROM customers GROUP BY city")
    assert rows == [{"city": "Camden", "n": 18}]
