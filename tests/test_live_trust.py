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
from sqlalchemy.exc import SQLAlchemyError

from aljex_sync.clock import utcnow
from aljex_sync.errors import MalformedRequest, RecordNotApplicable
from aljex_sync.journal import Journal
from aljex_sync.morning import MorningLoader
from aljex_sync.store.database import open_engine, translate
from aljex_sync.store.views import TypedViews
from aljex_sync.wire import check_table_name

from . import test_morning
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


# -- names of the objects aljex-sync makes ---------------------------------------------------

# Names a sender's table could have that aljex-sync 0.x gave objects of its own: the history
# key index (SQLite, PostgreSQL), the implicit primary-key indexes and the history's version
# sequence (PostgreSQL, where they share the tables' namespace).
NAMES_OF_OLD = (
    "loads__history_key",
    "loads_pkey",
    "loads__history_pkey",
    "loads__history__aljex_version_seq",
)


def healthz(running: RunningService) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{running.service.http_port}/healthz", timeout=30)


@pytest.mark.parametrize("first", ["loads", "the other tables"])
def test_tables_named_like_objects_of_loads_and_loads_itself_all_land_in_either_order(
    service, first
):
    """Before, ``loads__history_key`` blocked ``loads`` for good on SQLite (or was itself
    answered 503 forever, turning /healthz to 503), and ``loads_pkey`` and the like were
    held on PostgreSQL: every object aljex-sync makes is now named ``_aljex_...``."""
    loads = [record("loads", "create", id=str(i), status="OPEN") for i in (1, 2)]
    others = [record(name, "create", id="1", note="n") for name in NAMES_OF_OLD]
    for body in [*loads, *others] if first == "loads" else [*others, *loads]:
        response = post(service, body)
        assert response.status_code == 200 and "held" not in response.text, response.text
        assert healthz(service).status_code == 200
    engine = service.engine()
    assert [r["id"] for r in rows(engine, "SELECT id FROM loads ORDER BY id")] == ["1", "2"]
    for name in NAMES_OF_OLD:
        quoted = engine.dialect.identifier_preparer.quote(name)
        assert rows(engine, f"SELECT id FROM {quoted}") == [{"id": "1"}]
    assert {e["status"] for e in journal(engine)} == {"applied"}
    engine.dispose()


def object_names(engine: Engine) -> set[str]:
    """Every index, constraint, sequence, trigger and view in the database (not tables)."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type <> 'table'"
    elif dialect == "postgresql":
        sql = (
            "SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind <> 'r'"
            " UNION SELECT conname FROM pg_constraint k JOIN pg_namespace n"
            " ON n.oid = k.connamespace WHERE n.nspname = current_schema()"
        )
    else:  # MariaDB: index names are per table; PRIMARY is every primary key's
        sql = (
            "SELECT index_name AS name FROM information_schema.statistics"
            " WHERE table_schema = DATABASE() AND index_name <> 'PRIMARY'"
            " UNION SELECT table_name FROM information_schema.views"
            " WHERE table_schema = DATABASE()"
        )
    return {r["name"] for r in rows(engine, sql)}


def test_no_object_aljex_sync_makes_has_a_name_a_table_could_take(database_url, tmp_path):
    """Indexes, constraints, sequences and views: the wire refuses each name as a table's
    (the journal's own indexes included), for short tables and for 63-character ones,
    whose objects' names are hashed."""
    long = "t" * 60 + "abc"
    settings = make_settings(database_url, tmp_path, tables={long: {"history": True}})
    with RunningService(settings) as running:
        for table in ("loads", "employees", long):
            response = post(running, record(table, "create", id="1", status="OPEN"))
            assert response.status_code == 200 and "held" not in response.text, response.text
        engine = running.engine()
        TypedViews(engine).refresh_all()
        names = object_names(engine)
        engine.dispose()
    assert any(name.startswith("_aljex_key_loads") for name in names), names
    for name in names:
        with pytest.raises(MalformedRequest):  # invalid, too long, or reserved
            check_table_name(name)


def made_before(engine: Engine) -> None:
    """Give loads' history the key index aljex-sync 0.x named ``loads__history_key``."""
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX loads__history_key ON loads__history (id)"))


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_table_named_like_an_index_of_an_older_database_is_held_and_healthz_stays_200(
    service,
):
    """A database made before keeps its names: on SQLite and PostgreSQL a table cannot take
    one, and is held with the reason (it used to be answered 503, for good)."""
    assert post(service, record("loads", "create", id="1")).status_code == 200
    engine = service.engine()
    made_before(engine)
    for _ in range(2):
        response = post(service, record("loads__history_key", "create", id="1"))
        assert response.status_code == 200, response.text
        assert "held" in response.text and "already" in response.text, response.text
        assert healthz(service).status_code == 200
    assert post(service, record("loads", "update", id="1", status="OPEN")).status_code == 200
    assert [e["status"] for e in journal(engine)] == ["applied", "held", "held", "applied"]
    engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_morning_file_whose_table_cannot_be_made_fails_with_the_reason(database_url, tmp_path):
    """A name taken by hand (here, the one loads' history index gets): the file fails, and
    says why, where it used to be retried every 60 s as if the database were down."""
    receiver = test_morning.Receiver(database_url, tmp_path)
    with receiver.engine.begin() as conn:
        conn.execute(text("CREATE TABLE _aljex_key_loads__history (x INTEGER)"))
    path = tmp_path / "Loads.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["id", "status"], ["1", "OPEN"]])
    report = receiver.load(path, started_at=utcnow() - timedelta(hours=1))
    assert report.status == "failed" and "already" in (report.error or ""), report.error
    receiver.journal.close()
    receiver.engine.dispose()


def test_a_name_already_taken_is_a_record_problem_not_an_unavailable_database(database_url):
    """What ``translate`` makes of "already exists", from each database itself."""
    engine = open_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE taken (id INTEGER)"))
        with pytest.raises(SQLAlchemyError) as raised, engine.begin() as conn:
            conn.execute(text("CREATE TABLE taken (id INTEGER)"))
        error = translate(raised.value, "taken")
        assert isinstance(error, RecordNotApplicable) and "already" in str(error).lower()
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE taken"))
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
