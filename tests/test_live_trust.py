"""Live Sync under hostile and odd input: one bad record never costs the others, limits
every database can hold, names the databases keep, tombstones that need no table.

Real service on loopback, real HTTP, real SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import csv
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import Engine, inspect, text

from aljex_sync.clock import utcnow
from aljex_sync.journal import Journal
from aljex_sync.morning import MorningLoader
from aljex_sync.store.database import open_engine

from .support import RunningService, make_settings
from .test_live import journal, post, record, rows


def hand_made_picky_table(url: str) -> None:
    """A table made by hand with a CHECK the live feed does not know about: the database
    then refuses one record for its own sake, on every backend."""
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE picky (id VARCHAR(255) NOT NULL PRIMARY KEY, "
                "amount VARCHAR(20) CHECK (amount <> 'bad'))"
            )
        )
    engine.dispose()


@pytest.fixture
def trusting_service(database_url: str, tmp_path: Path):
    """The service behind a proxy on loopback, so X-Forwarded-For is believed."""
    settings = make_settings(
        database_url,
        tmp_path,
        live={"trusted_proxies": ["127.0.0.1/32"], "max_fields": 2000},
    )
    hand_made_picky_table(settings.database.url)
    with RunningService(settings) as running:
        yield running


def test_bad_records_sent_with_good_ones_cost_the_good_ones_nothing(trusting_service):
    """Each trigger of issue 9 alongside good records: no 503, the good ones all land."""
    service = trusting_service
    wide = record("wide", "create", id="W1", **{f"f{i:04d}": "v" for i in range(1998)})
    bad: dict[str, tuple[list[tuple[str, str]], dict[str, str]]] = {
        "long-action": (record("notes", "x" * 100, id="A"), {}),
        "long-forwarded-for": (
            record("notes", "create", id="XFF", text="kept"),
            {"X-Forwarded-For": "h" * 100},
        ),
        "check-refused": (record("picky", "create", id="P-bad", amount="bad"), {}),
        "too-wide": (wide, {}),
    }
    good = [record("notes", "create", id=f"N{i}", text=f"note {i}") for i in range(40)]
    good += [record("picky", "create", id=f"P{i}", amount=str(i)) for i in range(10)]

    def send(item: tuple[list[tuple[str, str]], dict[str, str]]) -> httpx.Response:
        body, headers = item
        return post(service, body, headers=headers)

    sends = [(g, {}) for g in good]
    for i, item in enumerate(bad.values()):  # spread among the good ones
        sends.insert(5 + 10 * i, item)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(send, sends))
    by_body = {urlencode(body): reply for (body, _), reply in zip(sends, replies, strict=True)}
    statuses = Counter(r.status_code for r in replies)
    assert statuses[503] == 0, [r.text for r in replies if r.status_code == 503]
    assert all(by_body[urlencode(g)].status_code == 200 for g in good)

    assert by_body[urlencode(bad["long-action"][0])].status_code == 422
    assert by_body[urlencode(bad["long-forwarded-for"][0])].status_code == 200
    refused = by_body[urlencode(bad["check-refused"][0])]
    assert refused.status_code == 200 and refused.text.startswith("held")
    too_wide = by_body[urlencode(wide)]
    assert too_wide.status_code == 200 and "over the limit" in too_wide.text

    engine = service.engine()
    notes = {r["id"] for r in rows(engine, "SELECT id FROM notes")}
    assert notes == {f"N{i}" for i in range(40)} | {"XFF"}
    assert {r["id"] for r in rows(engine, "SELECT id FROM picky")} == {f"P{i}" for i in range(10)}
    events = journal(engine)
    assert len(events) == len(sends)  # one event each: nothing written twice, nothing lost
    by_key = {e["record_key"]: e for e in events if e["record_key"]}
    # A hop that is not an address is never the source: the trusted proxy's own address is.
    assert by_key["XFF"]["remote_addr"] == "127.0.0.1" and by_key["XFF"]["status"] == "applied"
    assert by_key["P-bad"]["status"] == "held" and "refused" in by_key["P-bad"]["error"]
    assert by_key["W1"]["status"] == "held"
    [rejected] = [e for e in events if e["status"] == "rejected"]
    assert rejected["raw_action"] == "x" * 64 and rejected["body"].endswith(b"id=A")
    assert not inspect_has(engine, "wide")
    engine.dispose()


def inspect_has(engine: Engine, table: str) -> bool:
    return inspect(engine).has_table(table)


# -- limits every backend can hold -------------------------------------------------------


def test_a_record_of_the_default_max_fields_lands_on_every_database(service):
    width = service.settings.live.max_fields
    fields = {f"field_{i:04d}": f"v{i}" for i in range(width - 1)}
    response = post(service, record("broad", "create", id="1", **fields))
    assert response.status_code == 200 and response.text.startswith("applied"), response.text
    engine = service.engine()
    [row] = rows(engine, "SELECT * FROM broad")
    assert row["field_0000"] == "v0" and row[f"field_{width - 2:04d}"] == f"v{width - 2}"
    engine.dispose()


def test_a_table_grown_past_the_column_limit_is_held_before_any_ddl(database_url, tmp_path):
    settings = make_settings(database_url, tmp_path, live={"max_fields": 2000})
    with RunningService(settings) as running:
        first = {f"a{i:04d}": "x" for i in range(900)}
        assert post(running, record("growing", "create", id="1", **first)).status_code == 200
        more = {f"b{i:04d}": "y" for i in range(1200)}  # 2100 columns in all: over every limit
        response = post(running, record("growing", "update", id="1", **more))
        assert response.status_code == 200 and "over the limit" in response.text
        # the writer goes on at once
        assert post(running, record("growing", "update", id="1", a0000="z")).status_code == 200
        engine = running.engine()
        [row] = rows(engine, "SELECT * FROM growing")
        assert row["a0000"] == "z" and "b0000" not in row
        engine.dispose()


def test_tables_outside_accept_tables_get_403_and_are_journaled(sqlite_url, tmp_path):
    settings = make_settings(sqlite_url, tmp_path, live={"accept_tables": ["Loads"]})
    with RunningService(settings) as running:
        assert post(running, record("loads", "create", id="1")).status_code == 200
        response = post(running, record("spam", "create", id="1"))
        assert response.status_code == 403 and "accept_tables" in response.text
        engine = running.engine()
        assert not inspect_has(engine, "spam")
        assert [(e["table_name"], e["status"]) for e in journal(engine)] == [
            ("loads", "applied"),
            ("spam", "rejected"),
        ]
        engine.dispose()


def test_live_sync_creates_no_more_than_max_tables(database_url, tmp_path):
    settings = make_settings(database_url, tmp_path, live={"max_tables": 2})
    with RunningService(settings) as running:
        assert post(running, record("one", "create", id="1")).status_code == 200
        assert post(running, record("two", "create", id="1")).status_code == 200
        response = post(running, record("three", "create", id="1"))
        assert response.status_code == 403 and "max_tables" in response.text
        assert post(running, record("one", "update", id="2")).status_code == 200
        engine = running.engine()
        assert not inspect_has(engine, "three")
        assert journal(engine)[2]["status"] == "rejected"
        engine.dispose()


# -- names the databases keep ------------------------------------------------------------


@pytest.mark.parametrize("table", ["pg_class", "pg_anything", "PG_Namespace"])
def test_tables_named_like_postgresql_catalogs_get_400_everywhere(service, table):
    response = post(service, record(table, "create", id="1"))
    assert response.status_code == 400 and "reserved" in response.text


def test_a_table_named_like_a_typed_view_gets_400_not_an_endless_503(service):
    """``notes_typed`` is the typed view of ``notes``: a table cannot take its name, and a
    503 would have Aljex retry it forever."""
    assert post(service, record("notes", "create", id="1")).status_code == 200
    for table in ("notes_typed", "Other_Typed"):
        response = post(service, record(table, "create", id="1"))
        assert response.status_code == 400 and "reserved" in response.text, response.text


@pytest.mark.parametrize("table", ["information_schema", "mysql", "sqlite", "performance_schema"])
def test_tables_named_like_system_schemas_are_ordinary_tables(service, table):
    assert post(service, record(table, "create", id="1", name="a")).status_code == 200
    assert post(service, record(table, "update", id="1", name="b")).status_code == 200
    engine = service.engine()
    quoted = engine.dialect.identifier_preparer.quote(table)
    assert rows(engine, f"SELECT id, name FROM {quoted}") == [{"id": "1", "name": "b"}]
    engine.dispose()


# -- tombstones --------------------------------------------------------------------------


def test_a_live_delete_before_its_table_exists_keeps_the_record_out_of_a_snapshot(
    service, tmp_path
):
    response = post(service, record("quotes", "delete", id="Q1"))
    assert response.status_code == 200
    path = tmp_path / "Quotes.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["id", "amount"], ["Q1", "5"], ["Q2", "6"]])
    running = service.service
    loader = MorningLoader(running.engine, service.settings, running.schema)
    report = loader.load(path, started_at=utcnow() - timedelta(hours=1))
    assert report.counts.skipped_newer == 1
    engine = service.engine()
    assert rows(engine, "SELECT id FROM quotes") == [{"id": "Q2"}]
    engine.dispose()


# -- replay against rows a morning file confirmed -------------------------------------------


def test_a_replayed_change_older_than_a_file_that_confirmed_its_row_is_superseded(
    database_url, tmp_path
):
    """A file leaves an unchanged row alone, yet confirms it as of its export time."""
    settings = make_settings(
        database_url,
        tmp_path,
        live={"accept_tables": ["customers"]},
        morning={"snapshot_margin": 0.0},
    )
    with RunningService(settings) as running:
        loader = MorningLoader(running.service.engine, settings, running.service.schema)

        def morning_file(name: str, *rows_: list[str]) -> None:
            path = tmp_path / name
            with path.open("w", newline="") as f:
                csv.writer(f).writerows([["id", "status"], *rows_])
            assert loader.load(path, started_at=utcnow()).status == "loaded"

        morning_file("Loads.csv", ["L1", "OPEN"])
        # Refused (loads is not accepted yet) and journaled, to be replayed later.
        assert (
            post(running, record("loads", "update", id="L1", status="COVERED")).status_code == 403
        )
        # The next export still says OPEN: the change was undone in Aljex before it.
        morning_file("Loads_2.csv", ["L1", "OPEN"], ["L2", "OPEN"])
    settings = make_settings(database_url, tmp_path, morning={"snapshot_margin": 0.0})
    engine = open_engine(database_url)
    try:
        journal_ = Journal(engine, settings)
        try:
            (outcome,) = list(journal_.replay(include_rejected=True))
        finally:
            journal_.close()
        assert outcome.status == "superseded"
        assert rows(engine, "SELECT id, status FROM loads ORDER BY id") == [
            {"id": "L1", "status": "OPEN"},
            {"id": "L2", "status": "OPEN"},
        ]
    finally:
        engine.dispose()
