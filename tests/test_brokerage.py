"""The seeded brokerage: deterministic, consistent, quirky like real feeds, and a true oracle."""

from __future__ import annotations

import csv
import re
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pytest

from aljex_sync.catalog import CATALOG, key_for
from aljex_sync.emulate.brokerage import MORNING_TABLES, Brokerage
from aljex_sync.emulate.fields import MONEY_FIELDS
from aljex_sync.emulate.morning import write_morning_csvs
from aljex_sync.emulate.values import charset_for, file_charset
from aljex_sync.emulate.world import LOAD_STATUSES, LiveChange, Scale

TODAY = date(2026, 11, 27)
TIME = re.compile(r"^\d{1,2}:\d{2}$")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@pytest.fixture(scope="module")
def small() -> Brokerage:
    """A small brokerage that no test moves on (read-only)."""
    return Brokerage(11, today=TODAY)


def run(brokerage: Brokerage, count: int) -> list[LiveChange]:
    return [brokerage.next_change() for _ in range(count)]


def all_values(brokerage: Brokerage) -> list[str]:
    return [
        value
        for table in brokerage.tables()
        for record in brokerage.records(table).values()
        for value in record.values()
    ]


# -- shape -------------------------------------------------------------------------------------


def test_tables_and_keys_are_the_catalogs(small: Brokerage) -> None:
    assert small.tables() == [entry.table for entry in CATALOG]
    for table in small.tables():
        assert small.key(table) == key_for(table)
    assert small.key("invoicing") == ("pro_num",)
    assert small.key("spots") == ("spot_number",)


def test_records_are_keyed_by_their_key_fields(small: Brokerage) -> None:
    for table in small.tables():
        for key, record in small.records(table).items():
            assert key == tuple(record[name] for name in small.key(table))


def test_every_value_is_a_string_and_every_record_has_its_tables_fields(small: Brokerage) -> None:
    for table in small.tables():
        columns = small.morning_columns(table)
        for record in small.records(table).values():
            assert list(record) == columns
            assert all(isinstance(value, str) for value in record.values())


def test_loads_have_about_400_fields_including_the_observed_ones(small: Brokerage) -> None:
    load = next(iter(small.records("loads").values()))
    assert 380 <= len(load) <= 420
    named = [
        "status",
        "equipment",
        "origin_city",
        "origin_state",
        "dest_city",
        "dest_state",
        "pickup_date",
        "must_del_date",
        "delivery_date",
        "weight",
        "miles",
        "carrier_id",
        "carrier_line_haul",
        "carrier_total_rate",
        "invoice_total",
        "customer_id",
        "sales_rep",
        "office",
        "tag_creation_date",
        "tag_created_by",
        "Osd",
        "Tord",
    ]
    named += [f"accessorial{n}" for n in range(1, 9)]
    named += [f"carrier_accessorial{n}" for n in range(1, 9)]
    named += [f"extra_ref_{n}" for n in range(1, 7)]
    for n in range(1, 21):
        named += [f"ps{n}", f"ps_company_{n}", f"ps_city_{n}", f"ps_state_{n}", f"ps_zip_{n}"]
        named += [f"ps_ref_{n}", f"ps_appt_date_{n}", f"ps_arrive_date_{n}"]
    named += [f"key_{s}_{p}" for s in "chlwdrp" for p in ("date", "time", "user")]
    assert set(named) <= set(load)
    assert "osd" not in load and "tord" not in load


def test_field_values_have_aljex_formats(small: Brokerage) -> None:
    for load in small.records("loads").values():
        assert load["status"] in LOAD_STATUSES
        assert load["equipment"] in {"V", "R", "F", "FT", "SB", "PO"}
        assert load["id"].isdigit()
        for name, value in load.items():
            if name.endswith("_date") or "_date_" in name:
                assert value == "" or ISO_DATE.match(value), (name, value)
            if name.endswith("_time") or "_time_" in name:
                assert value in ("", "DROP") or TIME.match(value), (name, value)
        for n in range(1, 21):
            assert load[f"ps{n}"] in ("P", "S", "")


def test_scales_tiny_small_and_custom() -> None:
    tiny = Brokerage(1, today=TODAY, size="tiny")
    assert len(tiny.records("employees")) == 5
    assert len(tiny.records("salesreps")) == 3
    assert len(tiny.records("loads")) == 30
    custom = Scale(4, 2, 3, 3, 12, 2, 2, 1, 1, 1)
    brokerage = Brokerage(1, today=TODAY, size=custom)
    assert len(brokerage.records("customers")) == 3
    assert len(brokerage.records("loads")) == 12


def test_unknown_size_and_impossible_scale_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown size"):
        Brokerage(1, today=TODAY, size="huge")
    with pytest.raises(ValueError, match="salesreps"):
        Scale(2, 3, 1, 1, 1, 1, 1, 1, 1, 1)


# -- determinism -------------------------------------------------------------------------------


def test_same_seed_and_day_give_the_same_brokerage_and_feed() -> None:
    first, second = Brokerage(5, today=TODAY), Brokerage(5, today=TODAY)
    for table in first.tables():
        assert first.records(table) == second.records(table)
    assert run(first, 500) == run(second, 500)
    assert first.now == second.now


def test_another_seed_gives_another_brokerage() -> None:
    first, second = Brokerage(5, today=TODAY), Brokerage(6, today=TODAY)
    assert first.records("loads") != second.records("loads")


# -- referential sense -------------------------------------------------------------------------


def assert_references_hold(brokerage: Brokerage) -> None:
    ids = {table: {key[0] for key in brokerage.records(table)} for table in brokerage.tables()}
    assert ids["salesreps"] <= ids["employees"]
    for load in brokerage.records("loads").values():
        assert load["customer_id"] in ids["customers"]
        assert load["sales_rep"] in ids["salesreps"]
        assert load["dispatcher"] in ids["employees"]
        if load["status"] == "OPEN":
            assert load["carrier_id"] == ""
        elif load["status"] != "VOID":
            assert load["carrier_id"] in ids["carriers"]
    for invoice in brokerage.records("invoicing").values():
        assert invoice["pro_num"] in ids["loads"]
        assert invoice["customer_id"] in ids["customers"]
    for table, pro_table, party in (
        ("payments", "loads", "carriers"),
        ("payable", "loads", "carriers"),
        ("payments_received", "invoicing", "customers"),
        ("debits", "invoicing", "customers"),
        ("credits", "invoicing", "customers"),
    ):
        for record in brokerage.records(table).values():
            assert record["pro_num"] in ids[pro_table], table
            party_id = record["carrier_id" if party == "carriers" else "customer_id"]
            assert party_id in ids[party], table
    for payment in brokerage.records("payments").values():
        assert payment["payable_id"] in ids["payable"]
    for table in ("quotes", "spots"):
        for record in brokerage.records(table).values():
            assert record["customer_id"] in ids["customers"]


def test_references_hold_in_a_new_brokerage(small: Brokerage) -> None:
    assert_references_hold(small)


def test_references_hold_after_a_day_of_live_changes() -> None:
    brokerage = Brokerage(3, today=TODAY, size="tiny")
    run(brokerage, 3000)
    assert_references_hold(brokerage)


def test_every_delivered_load_of_the_history_is_invoiced_at_its_total(small: Brokerage) -> None:
    loads, invoices = small.records("loads"), small.records("invoicing")
    delivered = {key for key, load in loads.items() if load["status"] == "DELIVERED"}
    assert delivered == set(invoices)
    for key in delivered:
        assert invoices[key]["proj_rev"] == loads[key]["invoice_total"]
        assert invoices[key]["ship_date"] == loads[key]["pickup_date"]


# -- live feed ---------------------------------------------------------------------------------


def test_replaying_the_live_feed_over_the_start_gives_the_ground_truth() -> None:
    brokerage = Brokerage(8, today=TODAY, size="tiny")
    replica = {table: brokerage.records(table) for table in brokerage.tables()}
    for change in run(brokerage, 2000):
        key = tuple(change.fields[name] for name in brokerage.key(change.table))
        if change.action == "delete":
            del replica[change.table][key]
        else:
            assert (key in replica[change.table]) == (change.action == "update"), change
            replica[change.table][key] = change.fields
    for table in brokerage.tables():
        assert replica[table] == brokerage.records(table), table


def test_creates_and_updates_send_the_whole_record() -> None:
    brokerage = Brokerage(2, today=TODAY, size="tiny")
    for change in run(brokerage, 1000):
        assert change.action in ("create", "update", "delete")
        assert list(change.fields) == brokerage.morning_columns(change.table)


def test_deletes_are_only_of_quotes_and_spots_and_carry_the_key() -> None:
    brokerage = Brokerage(4, today=TODAY, size="tiny")
    deletes = [change for change in run(brokerage, 3000) if change.action == "delete"]
    assert {change.table for change in deletes} == {"quotes", "spots"}
    for change in deletes:
        key = tuple(change.fields[name] for name in brokerage.key(change.table))
        assert all(key) and key not in brokerage.records(change.table)


def test_load_statuses_only_move_forward_with_audit_stamps() -> None:
    brokerage = Brokerage(9, today=TODAY, size="tiny")
    order = {status: n for n, status in enumerate(LOAD_STATUSES[:-1])}
    status = {key[0]: load["status"] for key, load in brokerage.records("loads").items()}
    seen: Counter[tuple[str, str]] = Counter()
    delivered: set[str] = set()
    for _ in range(3000):
        change = brokerage.next_change()
        fields = change.fields
        if change.table == "invoicing" and change.action == "create":
            assert fields["pro_num"] in delivered
        if change.table != "loads":
            continue
        if change.action == "create":
            assert fields["status"] == "OPEN" and fields["carrier_id"] == ""
            assert fields["key_c_date"] == brokerage.now.date().isoformat()
        else:
            before, after = status[fields["id"]], fields["status"]
            if before != after:
                seen[before, after] += 1
                assert before not in ("DELIVERED", "VOID")
                assert after == "VOID" or order[after] > order[before], (before, after)
                assert fields["key_w_date"] == brokerage.now.date().isoformat()
                assert fields["key_w_time"] == f"{brokerage.now.hour}:{brokerage.now:%M}"
            if after in ("COVERED", "DISPATCHED", "LOADED", "DELIVERED"):
                assert fields["carrier_id"] and fields["key_h_date"] and fields["key_r_date"]
            if after == "DELIVERED":
                assert fields["delivery_date"] and fields["key_p_date"]
                delivered.add(fields["id"])
        status[fields["id"]] = fields["status"]
    for step in [("COVERED", "DISPATCHED"), ("DISPATCHED", "LOADED"), ("LOADED", "DELIVERED")]:
        assert seen[step] > 0, step
    assert seen["OPEN", "COVERED"] > 0


def test_the_clock_moves_10_to_90_seconds_per_change() -> None:
    brokerage = Brokerage(1, today=TODAY, size="tiny")
    start = before = brokerage.now
    assert start.date() == TODAY
    for _ in range(200):
        brokerage.next_change()
        assert timedelta(seconds=10) <= brokerage.now - before <= timedelta(seconds=90)
        before = brokerage.now


def test_the_feed_mixes_every_kind_of_change() -> None:
    brokerage = Brokerage(12, today=TODAY)
    kinds = {(change.table, change.action) for change in run(brokerage, 5000)}
    expected = {("loads", "create"), ("loads", "update"), ("invoicing", "create")}
    expected |= {("customers", "update"), ("carriers", "update"), ("employees", "update")}
    expected |= {("payments", "create"), ("payments_received", "create"), ("payable", "create")}
    expected |= {("quotes", "create"), ("quotes", "delete"), ("spots", "create")}
    expected |= {("spots", "delete"), ("debits", "create"), ("credits", "create")}
    expected |= {("new_purchases", "create")}
    assert expected <= kinds


# -- quirks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_a_small_brokerage_shows_every_quirk(seed: int) -> None:
    brokerage = Brokerage(seed, today=TODAY)
    loads = brokerage.records("loads").values()
    assert any(load[name] == ":" for load in loads for name in MONEY_FIELDS["loads"])
    assert any(value == "DROP" for load in loads for name, value in load.items() if "time" in name)
    values = all_values(brokerage)
    for char in ("+", "&", "=", "%", "\r\n"):
        assert any(char in value for value in values), repr(char)
    cp1252 = [
        record
        for table in brokerage.tables()
        for record in brokerage.records(table).values()
        if charset_for(record) == "cp1252"
    ]
    assert cp1252
    for record in cp1252:
        text = "".join(record.values())
        assert not text.isascii()
        text.encode("cp1252")


def test_live_changes_flag_accented_records_cp1252() -> None:
    brokerage = Brokerage(13, today=TODAY)
    changes = run(brokerage, 3000)
    flagged = [change for change in changes if change.charset == "cp1252"]
    assert flagged
    for change in flagged:
        text = "".join(change.fields.values())
        assert not text.isascii()
        text.encode("cp1252")
    for change in changes:
        if change.charset == "utf-8":
            try:
                "".join(change.fields.values()).encode("cp1252")
            except UnicodeEncodeError:
                continue
            assert "".join(change.fields.values()).isascii()


def test_charset_rules() -> None:
    assert charset_for({"name": "Bill Smith"}) == "utf-8"
    assert charset_for({"name": "Müller Trucking"}) == "cp1252"
    assert charset_for({"name": "Łukasz Freight"}) == "utf-8"
    assert file_charset([{"a": "x"}, {"a": "Café"}]) == "cp1252"
    assert file_charset([{"a": "Café"}, {"a": "Łódź"}]) == "utf-8"
    assert file_charset([]) == "utf-8"


# -- morning files -----------------------------------------------------------------------------


def test_morning_export_covers_every_file_but_spots(small: Brokerage) -> None:
    export = small.morning_export(TODAY)
    assert list(export) == [entry.table for entry in CATALOG if entry.table != "spots"]
    assert list(export) == list(MORNING_TABLES)
    with pytest.raises(ValueError, match="spots"):
        list(small.morning_records("spots", TODAY))


def test_full_files_hold_every_record(small: Brokerage) -> None:
    export = small.morning_export(TODAY)
    for table in ("employees", "customers", "carriers", "payments", "salesreps", "payable"):
        assert export[table] == list(small.records(table).values()), table


def test_loads_file_holds_active_loads_and_not_old_untouched_delivered_ones(
    small: Brokerage,
) -> None:
    in_file = {record["id"] for record in small.morning_export(TODAY)["loads"]}
    since = TODAY - timedelta(days=3)
    old = []
    for key, load in small.records("loads").items():
        meta = small.meta("loads", key)
        if load["status"] not in ("DELIVERED", "VOID"):
            assert meta.active and key[0] in in_file
        dates = (meta.created.date(), meta.updated.date(), meta.ship_date)
        if load["status"] == "DELIVERED" and all(d is not None and d < since for d in dates):
            old.append(key[0])
            assert key[0] not in in_file
    delivered_ten_days_ago = [
        key[0]
        for key, load in small.records("loads").items()
        if load["delivery_date"] == (TODAY - timedelta(days=10)).isoformat()
        and small.meta("loads", key).updated.date() < since
    ]
    assert delivered_ten_days_ago
    assert not set(delivered_ten_days_ago) & in_file
    assert old


def test_loads_file_holds_recently_shipped_delivered_loads(small: Brokerage) -> None:
    in_file = {record["id"] for record in small.morning_export(TODAY)["loads"]}
    recent = [
        load["id"]
        for load in small.records("loads").values()
        if load["status"] == "DELIVERED"
        and load["pickup_date"] >= (TODAY - timedelta(days=3)).isoformat()
    ]
    assert recent and set(recent) <= in_file


def test_invoicing_file_uses_the_three_day_window(small: Brokerage) -> None:
    in_file = {record["pro_num"] for record in small.morning_export(TODAY)["invoicing"]}
    since = (TODAY - timedelta(days=3)).isoformat()
    for key, invoice in small.records("invoicing").items():
        meta = small.meta("invoicing", key)
        recent = invoice["ship_date"] >= since or invoice["inv_date"] >= since
        recent = recent or meta.updated.date().isoformat() >= since
        assert (key[0] in in_file) == recent
    assert in_file and in_file != {key[0] for key in small.records("invoicing")}


@pytest.mark.parametrize("table", ["payments_received", "debits", "credits", "quotes"])
def test_created_window_files_hold_the_last_seven_days(small: Brokerage, table: str) -> None:
    in_file = {record["id"] for record in small.morning_export(TODAY)[table]}
    for key in small.records(table):
        created = small.meta(table, key).created.date()
        assert (key[0] in in_file) == (created >= TODAY - timedelta(days=7))


def test_a_quote_created_live_is_in_the_next_mornings_file_and_gone_after_a_week() -> None:
    brokerage = Brokerage(6, today=TODAY, size="tiny")
    created = next(
        change
        for change in iter(brokerage.next_change, None)
        if change.table == "quotes" and change.action == "create"
    )
    quote_id = created.fields["id"]
    ids = {record["id"] for record in brokerage.morning_export(TODAY + timedelta(days=1))["quotes"]}
    assert quote_id in ids
    later = brokerage.morning_export(TODAY + timedelta(days=9))["quotes"]
    assert quote_id not in {record["id"] for record in later}


def read_csv(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252")
    return list(csv.reader(text.splitlines(keepends=True)))


def test_morning_csvs_are_named_by_catalog_title_and_day(small: Brokerage, tmp_path: Path) -> None:
    paths = write_morning_csvs(small, TODAY, tmp_path)
    names = {path.name for path in paths}
    assert "Loads_20261127.csv" in names
    assert "Payments Received (Accounts Receivable)_20261127.csv" in names
    assert "Payments (Accounts Payable)_20261127.csv" in names
    assert len(names) == len(MORNING_TABLES)
    assert not any(name.startswith("Spots") for name in names)


def test_morning_csvs_round_trip_to_the_same_records(small: Brokerage, tmp_path: Path) -> None:
    paths = write_morning_csvs(small, TODAY, tmp_path)
    export = small.morning_export(TODAY)
    encodings = set()
    for table, path in zip(MORNING_TABLES, paths, strict=True):
        encoding = file_charset(export[table])
        encodings.add(encoding)
        with path.open(encoding=encoding, newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == small.morning_columns(table)
        assert [dict(zip(rows[0], row, strict=True)) for row in rows[1:]] == export[table]
        assert read_csv(path)[1:] == rows[1:]
    assert encodings == {"utf-8", "cp1252"}


def test_morning_csvs_use_crlf_and_quote_values_with_line_breaks(
    small: Brokerage, tmp_path: Path
) -> None:
    paths = write_morning_csvs(small, TODAY, tmp_path)
    loads = next(path for path in paths if path.name.startswith("Loads_"))
    raw = loads.read_bytes()
    header = ",".join(small.morning_columns("loads")).encode() + b"\r\n"
    assert raw.startswith(header) and raw.endswith(b"\r\n")
    notes = {r["notes"] for r in small.morning_export(TODAY)["loads"] if "\r\n" in r["notes"]}
    for note in notes:
        assert b'"' + note.encode() + b'"' in raw
