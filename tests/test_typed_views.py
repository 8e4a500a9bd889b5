"""The typed views: `<table>_typed` casts Aljex's text, on SQLite, PostgreSQL and MariaDB.

The values come from the emulator's brokerage (with its quirks: ``:`` in money fields,
``DROP`` in times) and from small files written here; they are loaded with the
MorningLoader or sent to the running service, and the views are read with plain SQL.
"""

from __future__ import annotations

import csv
import json
import logging
from contextlib import ExitStack
from datetime import date, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, inspect, text

from aljex_sync.cli import main
from aljex_sync.clock import utcnow
from aljex_sync.emulate.brokerage import Brokerage
from aljex_sync.emulate.morning import write_morning_csvs
from aljex_sync.field_types import known_type
from aljex_sync.inbox import Arrival
from aljex_sync.store import locks
from aljex_sync.store.casts import FALSE_WORDS, TRUE_WORDS
from aljex_sync.store.database import open_engine
from aljex_sync.store.views import TypedViews, readable_names, view_name

from . import test_morning
from .support import TEST_PASSWORD, RunningService, make_settings, post_note

DAY = date(2026, 9, 16)


class Receiver(test_morning.Receiver):
    """test_morning's MorningLoader on a database; each file must load."""

    def load(self, path: Path, **options: Any) -> None:
        report = self.loader.load(path, **options)
        assert report.status == "loaded", report.error

    def views(self) -> TypedViews:
        return TypedViews(self.engine, self.settings.field_types)


@pytest.fixture
def receiver(database_url, tmp_path):
    r = Receiver(database_url, tmp_path)
    yield r
    r.engine.dispose()


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def rows(engine: Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql))]


def view_columns(engine: Engine, view: str) -> list[str]:
    return [c["name"] for c in inspect(engine).get_columns(view)]


# What a view gives, made comparable across the three databases: SQLite has no date, time
# or decimal types (ISO text, REAL), pymysql reads TIME as a timedelta, and flags are 0/1.
def as_date(value: Any) -> str | None:
    return None if value is None else str(value)


def hms(value: Any) -> str | None:
    """A view's time as HH:MM:SS, whatever the driver returned."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    assert isinstance(value, time)
    return value.strftime("%H:%M:%S")


def cents(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value)).quantize(Decimal("0.01"))


def flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


# The oracle: what a value of each type should become, in Python.
def expected(kind: str, raw: str) -> Any:
    if raw == "":
        return None
    try:
        if kind == "date":
            return date.fromisoformat(raw).isoformat()
        if kind == "time":
            hour, minute = raw.split(":")
            return time(int(hour), int(minute)).strftime("%H:%M:%S")
        if kind == "money":
            return Decimal(raw.replace("$", "").replace(",", "")).quantize(Decimal("0.01"))
        if kind == "int":
            return int(raw)
        if kind == "bool":
            return raw.upper() in TRUE_WORDS if raw.upper() in TRUE_WORDS + FALSE_WORDS else None
    except ValueError:
        return None
    return raw


NORMALIZE = {"date": as_date, "time": hms, "money": cents, "int": lambda v: v, "bool": flag}


# -- the brokerage, its quirks included ---------------------------------------------------


def test_brokerage_views_cast_every_value_and_turn_the_quirks_into_null(receiver, tmp_path):
    brokerage = Brokerage(11, today=DAY, size="tiny")
    for path in write_morning_csvs(brokerage, DAY, tmp_path / "export"):
        receiver.load(path)
    records = {r["id"]: r for r in brokerage.morning_records("loads", DAY)}
    checked = {
        "pickup_date": "date",
        "pickup_time": "time",
        "line_haul": "money",
        "invoice_total": "money",
        "weight": "int",
        "miles": "int",
        "hazmat": "bool",
        "team": "bool",
        "osd": "bool",
        **{f"accessorial{n}": "money" for n in range(1, 9)},
        **{f"ps_appt_time_{n}": "time" for n in range(1, 21)},
        **{f"ps_appt_date_{n}": "date" for n in range(1, 21)},
    }
    quirks = 0
    for row in rows(receiver.engine, "SELECT * FROM loads_typed"):
        record = records[row["id"]]
        for name, kind in checked.items():
            raw = record["Osd" if name == "osd" else name]
            quirks += raw in (":", "DROP")
            assert NORMALIZE[kind](row[name]) == expected(kind, raw), (row["id"], name, raw)
    assert quirks >= 1  # the brokerage puts ':' and 'DROP' in its loads; they are NULL above

    # Every view of every table reads without an error, and status counts the quirks.
    with receiver.engine.connect() as conn:
        for table in brokerage.tables():
            if inspect(conn).has_table(table):
                conn.execute(text(f"SELECT * FROM {view_name(table)}")).all()
    misfits = receiver.views().misfits()
    assert misfits is not None
    loads = {m.name: m.values for m in misfits if m.table == "loads"}
    for name, kind in checked.items():
        bad = sum(
            1
            for r in records.values()
            if r["Osd" if name == "osd" else name]
            and expected(kind, r[name if name != "osd" else "Osd"]) is None
        )
        assert loads[name] == bad, name
    check_the_documented_queries(receiver.engine, brokerage)


def documented_queries(dialect: str) -> tuple[str, str]:
    """docs/database.md's example queries: loads per pickup day, revenue per month."""
    docs = (Path(__file__).parent.parent / "docs" / "database.md").read_text()
    section = docs.split("## Typed views")[1]
    per_day, per_month = [block.split("```")[0] for block in section.split("```sql")[1:3]]
    heading = {"postgresql": "-- PostgreSQL", "sqlite": "-- SQLite"}.get(
        dialect, "-- MariaDB / MySQL"
    )
    return per_day, per_month.split(heading)[1].split("\n\n")[0]


def check_the_documented_queries(engine: Engine, brokerage: Brokerage) -> None:
    per_day, per_month = documented_queries(engine.dialect.name)
    loads = list(brokerage.morning_records("loads", DAY))
    days = sorted({r["pickup_date"] for r in loads if r["pickup_date"]})
    counted = [(as_date(r["pickup_date"]), r["loads"]) for r in rows(engine, per_day)]
    assert counted == [(d, sum(r["pickup_date"] == d for r in loads)) for d in days]
    revenue: dict[str, Decimal] = {}
    for invoice in brokerage.morning_records("invoicing", DAY):
        if invoice["inv_date"] and expected("money", invoice["total"]) is not None:
            month = invoice["inv_date"][:7]
            revenue[month] = revenue.get(month, Decimal(0)) + Decimal(invoice["total"])
    got = {str(r["month"])[:7]: cents(r["revenue"]) for r in rows(engine, per_month)}
    got.pop("None", None)
    assert got == revenue


def test_metadata_columns_pass_through_with_synced_at_a_timestamp(receiver, tmp_path):
    receiver.load(write_csv(tmp_path / "Loads.csv", ["id", "status"], [["1", "OPEN"]]))
    (row,) = rows(receiver.engine, "SELECT * FROM loads_typed")
    assert row["_aljex_source"] == "Loads.csv"
    assert str(row["_aljex_synced_at"])[:4].isdigit()
    assert row["_aljex_deleted_at"] is None
    with receiver.engine.connect() as conn:
        later = conn.execute(
            text("SELECT COUNT(*) FROM loads_typed WHERE _aljex_synced_at > '2000-01-01'")
        ).scalar()
    assert later == 1


# -- the rule for fields the catalog does not know ----------------------------------------

WIDGETS = [
    ["id", "Ship Day", "Cost", "Count", "Flag", "Code", "At", "Mixed", "Empty"],
    ["W1", "09/16/2026", "$1,234.50", "3", "Y", "007", "9:05", "12", ""],
    ["W2", "2026-09-17", "-12.00", "-4", "n", "12", "14:30", "abc", ""],
    ["W3", "", "", "", "", "", "", "", ""],
]


def test_unknown_fields_get_the_type_every_stored_value_fits(receiver, tmp_path):
    receiver.load(write_csv(tmp_path / "w.csv", WIDGETS[0], WIDGETS[1:]), table="widgets")
    assert view_columns(receiver.engine, "widgets_typed")[:9] == [
        "id", "ship_day", "cost", "count", "flag", "code", "at", "mixed", "empty"
    ]  # fmt: skip
    got = {r["id"]: r for r in rows(receiver.engine, "SELECT * FROM widgets_typed")}
    assert as_date(got["W1"]["ship_day"]) == "2026-09-16"
    assert as_date(got["W2"]["ship_day"]) == "2026-09-17"
    assert cents(got["W1"]["cost"]) == Decimal("1234.50")
    assert cents(got["W2"]["cost"]) == Decimal("-12.00")
    assert (got["W1"]["count"], got["W2"]["count"]) == (3, -4)
    assert (flag(got["W1"]["flag"]), flag(got["W2"]["flag"])) == (True, False)
    assert (got["W1"]["code"], got["W2"]["code"]) == ("007", "12")  # a leading zero: text
    assert (hms(got["W1"]["at"]), hms(got["W2"]["at"])) == ("09:05:00", "14:30:00")
    assert (got["W1"]["mixed"], got["W2"]["mixed"]) == ("12", "abc")
    for name in WIDGETS[0][1:]:  # the empty string is NULL, whatever the type
        assert got["W3"][readable_names([name])[0]] is None
    assert got["W1"]["empty"] is None


def test_configured_types_override_the_rule_and_misfits_are_counted(database_url, tmp_path):
    types = {"code": "int", "MIXED": "money", "Ship Day": "text"}
    r = Receiver(database_url, tmp_path, tables={"widgets": {"types": types}})
    try:
        r.load(write_csv(tmp_path / "w.csv", WIDGETS[0], WIDGETS[1:]), table="widgets")
        got = {x["id"]: x for x in rows(r.engine, "SELECT * FROM widgets_typed")}
        assert (got["W1"]["code"], got["W2"]["code"]) == (None, 12)
        assert (cents(got["W1"]["mixed"]), got["W2"]["mixed"]) == (Decimal("12.00"), None)
        assert got["W1"]["ship_day"] == "09/16/2026"
        misfits = {m.name: m.values for m in r.views().misfits() or [] if m.table == "widgets"}
        assert misfits["code"] == 1 and misfits["mixed"] == 1 and misfits["cost"] == 0
        assert "ship_day" not in misfits  # text has nothing to misfit
    finally:
        r.engine.dispose()


def test_a_catalog_field_keeps_its_type_and_junk_in_it_is_null(receiver, tmp_path):
    header = ["id", "pickup_date", "pickup_time", "line_haul", "weight", "hazmat"]
    data = [
        ["1", "2026-09-16", "7:30", "1500.00", "42000", "N"],
        ["2", "02/30/2026", "DROP", ":", "heavy", "maybe"],
        ["3", "09/18/2026", "23:59", "$2,100.00", "0", "Y"],
    ]
    receiver.load(write_csv(tmp_path / "Loads.csv", header, data))
    got = {r["id"]: r for r in rows(receiver.engine, "SELECT * FROM loads_typed")}
    assert [as_date(got[k]["pickup_date"]) for k in "123"] == ["2026-09-16", None, "2026-09-18"]
    assert [hms(got[k]["pickup_time"]) for k in "123"] == ["07:30:00", None, "23:59:00"]
    assert [cents(got[k]["line_haul"]) for k in "123"] == [
        Decimal("1500.00"), None, Decimal("2100.00")
    ]  # fmt: skip
    assert [got[k]["weight"] for k in "123"] == [42000, None, 0]
    assert [flag(got[k]["hazmat"]) for k in "123"] == [False, None, True]


# -- readable names -----------------------------------------------------------------------


def test_readable_names_are_lowercase_words_with_a_suffix_only_on_collision():
    fields = ["Pickup Date", "pickup-date", "PICKUP  DATE!", "Pro #", "2nd Stop", "", "x" * 80]
    assert readable_names(fields) == [
        "pickup_date", "pickup_date_2", "pickup_date_3", "pro", "f_2nd_stop", "field", "x" * 63
    ]  # fmt: skip
    long = readable_names(["y" * 70, "Y" * 70])
    assert long == ["y" * 63, "y" * 61 + "_2"]
    assert readable_names(["a_2", "a", "A"]) == ["a_2", "a", "a_3"]  # a_2 was taken first


def test_colliding_field_names_show_with_a_suffix_in_the_view(receiver, tmp_path):
    header = ["id", "Pickup Date", "pickup-date", "user"]
    receiver.load(
        write_csv(tmp_path / "s.csv", header, [["1", "2026-09-16", "x", "me"]]), table="stops"
    )
    assert view_columns(receiver.engine, "stops_typed")[:4] == [
        "id", "pickup_date", "pickup_date_2", "user"
    ]  # fmt: skip
    (row,) = rows(receiver.engine, "SELECT * FROM stops_typed")
    assert (as_date(row["pickup_date"]), row["pickup_date_2"], row["user"]) == (
        "2026-09-16", "x", "me"
    )  # fmt: skip


# -- when views are built -----------------------------------------------------------------


def test_refreshing_an_unchanged_view_does_nothing(receiver, tmp_path):
    receiver.load(write_csv(tmp_path / "Loads.csv", ["id", "miles"], [["1", "12"]]))
    views = receiver.views()
    assert views.refresh("loads") is False
    assert views.refresh_all() == []


def test_a_morning_load_with_new_columns_refreshes_the_view(receiver, tmp_path):
    receiver.load(write_csv(tmp_path / "Loads.csv", ["id", "status"], [["1", "OPEN"]]))
    assert view_columns(receiver.engine, "loads_typed")[:2] == ["id", "status"]
    receiver.load(write_csv(tmp_path / "Loads.csv", ["id", "status", "rank"], [["1", "OPEN", "4"]]))
    (row,) = rows(receiver.engine, "SELECT id, status, rank FROM loads_typed")
    assert row == {"id": "1", "status": "OPEN", "rank": 4}  # inferred: every value is an int


def test_a_view_built_on_a_typed_view_survives_new_columns(receiver, tmp_path):
    receiver.load(write_csv(tmp_path / "Loads.csv", ["id", "miles"], [["1", "12"]]))
    with receiver.engine.begin() as conn:
        conn.execute(text("CREATE VIEW long_loads AS SELECT id, miles FROM loads_typed"))
    receiver.load(write_csv(tmp_path / "Loads.csv", ["id", "miles", "weight"], [["1", "2", "3"]]))
    assert rows(receiver.engine, "SELECT * FROM long_loads") == [{"id": "1", "miles": 2}]
    assert rows(receiver.engine, "SELECT weight FROM loads_typed") == [{"weight": 3}]


def post(service: RunningService, fields: list[tuple[str, str]]) -> None:
    response = httpx.post(service.url, data=dict(fields), auth=("aljex", TEST_PASSWORD), timeout=30)
    assert response.status_code == 200, response.text


def test_a_live_record_with_new_fields_refreshes_the_view(service):
    assert service.service.views.ready.wait(30)  # the start-up refresh, done with
    record = [("web_sync_table_name", "loads"), ("web_sync_action", "create"), ("id", "1")]
    post(service, [*record, ("status", "OPEN")])
    engine = service.engine()
    try:
        assert view_columns(engine, "loads_typed")[:2] == ["id", "status"]
        new = [("Pickup Date", "2026-09-16"), ("miles", "7"), ("Dock Door", "12")]
        post(service, [*record, ("status", "OPEN"), *new])
        (row,) = rows(engine, "SELECT * FROM loads_typed")
        # The new columns are at the end, typed from the catalog; an unknown field waits
        # as text (the live feed never scans the table) until the next start or morning load.
        assert view_columns(engine, "loads_typed")[-3:] == ["pickup_date", "miles", "dock_door"]
        assert (as_date(row["pickup_date"]), row["miles"], row["dock_door"]) == (
            "2026-09-16", 7, "12"
        )  # fmt: skip
        assert TypedViews(engine).refresh_all() == ["loads"]
        assert rows(engine, "SELECT dock_door FROM loads_typed") == [{"dock_door": 12}]
    finally:
        engine.dispose()


def test_start_up_builds_missing_views_for_every_table(database_url, tmp_path):
    r = Receiver(database_url, tmp_path)
    try:
        r.load(write_csv(tmp_path / "Loads.csv", ["id", "miles"], [["1", "12"]]))
        with r.engine.begin() as conn:
            conn.execute(text("DROP VIEW loads_typed"))
    finally:
        r.engine.dispose()
    with RunningService(make_settings(database_url, tmp_path)) as running:
        assert running.service.views.ready.wait(60)  # built in the background, once serving
        engine = running.engine()
        try:
            assert rows(engine, "SELECT miles FROM loads_typed") == [{"miles": 12}]
        finally:
            engine.dispose()


def arrival(path: Path) -> Arrival:
    """A file in the inbox, complete, as the SFTP server or the folder watch hands it on."""
    return Arrival(path, utcnow(), None)


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
def test_a_slow_view_refresh_holds_up_neither_live_sync_nor_the_next_file(
    database_url, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG, logger="aljex_sync.views")
    r = Receiver(database_url, tmp_path)
    r.load(write_csv(tmp_path / "Loads.csv", ["id", "miles"], [["1", "12"]]))
    r.engine.dispose()
    settings = make_settings(database_url, tmp_path)
    inbox = settings.morning.inbox
    engine = open_engine(database_url)
    try:
        with ExitStack() as view_lock:
            # Refreshing the view of loads waits while this lock is held, as it waits for
            # another receiver's refresh of the same view.
            view_lock.enter_context(locks.held(engine, "view loads", wait=5))
            with RunningService(settings) as running:
                service = running.service
                assert post_note(running) == 200
                header = ["id", "miles", "stops"]
                for miles in ("1", "2"):  # two files of one table, then another table's
                    loads = write_csv(inbox / f"Loads_{miles}.csv", header, [["1", miles, "4"]])
                    service.loads.put(arrival(loads))
                service.loads.put(arrival(write_csv(inbox / "Employees.csv", ["id"], [["E1"]])))
                assert service.loads.wait_idle(30)
                assert [r.status for r in service.loads.reports] == ["loaded"] * 3
                assert not service.views.ready.is_set()  # the start-up refresh still waits
                assert "stops" not in view_columns(engine, "loads_typed")
                view_lock.close()
                assert service.views.ready.wait(60)
                assert service.views.wait_idle(60)  # then the loaded tables' views, once each
                checked = [r.getMessage() for r in caplog.records if "checked" in r.getMessage()]
                assert [line.split(",")[0] for line in checked] == [
                    "typed views: 1 table checked",
                    "typed views: 2 tables checked",
                ]
                assert rows(engine, "SELECT miles, stops FROM loads_typed") == [
                    {"miles": 2, "stops": 4}
                ]
                assert view_columns(engine, "employees_typed")[0] == "id"
    finally:
        engine.dispose()


def test_a_view_that_cannot_be_refreshed_shows_in_status_and_healthz(database_url, tmp_path):
    r = Receiver(database_url, tmp_path)
    r.load(write_csv(tmp_path / "w.csv", ["id", "size"], [["W1", "3"]]), table="widgets")
    with r.engine.begin() as conn:  # a table of someone's takes the view's name
        conn.execute(text("DROP VIEW widgets_typed"))
        conn.execute(text("CREATE TABLE widgets_typed (note VARCHAR(10))"))
    r.engine.dispose()
    why = "widgets_typed is a table, so the view cannot have that name"
    with RunningService(make_settings(database_url, tmp_path)) as running:
        assert running.service.views.ready.wait(60)
        health = httpx.get(f"http://127.0.0.1:{running.service.http_port}/healthz", timeout=30)
        assert health.text == f"ok\nviews: widgets_typed not refreshed: {why}\n"
    config = tmp_path / "aljex-sync.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n[live]\npassword = "x"\n[morning]\npassword = "x"\n'
    )
    shown = CliRunner().invoke(main, ["-c", str(config), "status"])
    assert shown.exit_code == 0, shown.output
    table = shown.output.split("Typed views not refreshed")[1]
    assert "│ widgets_typed │ widgets_typed is a table" in table
    as_json = json.loads(CliRunner().invoke(main, ["-c", str(config), "status", "--json"]).output)
    [kept] = as_json["views_not_refreshed"]
    assert (kept["table"], kept["view"], kept["error"]) == ("widgets", "widgets_typed", why)

    engine = open_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE widgets_typed"))
        assert TypedViews(engine).refresh_all() == ["widgets"]
        assert TypedViews(engine).errors() == []  # a refresh that succeeds clears it
    finally:
        engine.dispose()


def test_status_types_counts_the_values_that_do_not_fit(sqlite_url, tmp_path):
    r = Receiver(sqlite_url, tmp_path)
    header = ["id", "pickup_time", "line_haul"]
    data = [["1", "DROP", ":"], ["2", "9:05", ":"], ["3", "", "12.00"]]
    r.load(write_csv(tmp_path / "Loads.csv", header, data))
    r.engine.dispose()
    config = tmp_path / "aljex-sync.toml"
    config.write_text(
        f'[database]\nurl = "{sqlite_url}"\n[live]\npassword = "x"\n[morning]\npassword = "x"\n'
    )
    result = CliRunner().invoke(main, ["-c", str(config), "status", "--types"])
    assert result.exit_code == 0, result.output
    shown = {
        cells[2]: cells[1:5]
        for line in result.output.splitlines()
        if len(cells := [c.strip() for c in line.split("│")]) == 6
    }
    assert shown["line_haul"] == ["loads_typed", "line_haul", "money", "2"]
    assert shown["pickup_time"] == ["loads_typed", "pickup_time", "time", "1"]
    as_json = CliRunner().invoke(main, ["-c", str(config), "status", "--types", "--json"])
    counted = {m["name"]: m["values"] for m in json.loads(as_json.output)["types"]}
    assert counted == {"pickup_time": 1, "line_haul": 2}


def test_catalog_marks_ids_and_zip_codes_as_text():
    assert known_type("loads", "ps_zip_3") == "text"
    assert known_type("loads", "Osd") == "bool"
    assert known_type("loads", "key_c_time") == "time"
    assert known_type("loads", "Pickup Date") == "date"  # as a report spells it
    assert (known_type("loads", "team"), known_type("employees", "team")) == ("bool", None)
    assert known_type("widgets", "pickup_date") is None  # the catalog is for Aljex's files


def test_view_names_fit_63_characters():
    assert view_name("loads") == "loads_typed"
    long = view_name("t" * 63)
    assert len(long) == 63 and long.endswith("_typed") and long != view_name("t" * 62 + "u")
