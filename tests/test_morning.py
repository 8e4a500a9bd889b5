"""Morning Sync: files over SFTP (OpenSSH's client) or by hand, into real databases."""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import asyncssh
import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, inspect, select, text

from aljex_sync.cli import main
from aljex_sync.clock import utcnow
from aljex_sync.csvfile import MAX_FIELD_CHARS, MAX_ROW_CHARS, CsvReader, inspect_file
from aljex_sync.inbox import Arrival, LoadQueue, dispose
from aljex_sync.journal import Journal
from aljex_sync.morning import MorningLoader, export_time, table_for
from aljex_sync.service import INBOX_LOCK
from aljex_sync.store import stage
from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import files

from .support import TEST_PASSWORD, RunningService, make_settings, sftp_upload

AUTH = ("aljex", TEST_PASSWORD)


def write_csv(path: Path, header: list[str], rows: list[list[str]], **options: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding=options.pop("encoding", "utf-8")) as f:
        writer = csv.writer(f, **options)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def customers(n: int, city: str = "Newark") -> list[list[str]]:
    return [[f"C{i}", f"Customer {i}", city] for i in range(n)]


# 1200 rows of an id,name file: more than one batch, so some are staged before the end.
PLAIN_ROWS = b"".join(b"K%d,plain %d\r\n" % (i, i) for i in range(1200))


def table_rows(engine: Engine, sql: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql))]


def file_log(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(files).order_by(files.c.id))]


class Receiver:
    """A MorningLoader on a database, as the service builds it."""

    def __init__(self, database_url: str, tmp_path: Path, **sections: dict) -> None:
        self.settings = make_settings(database_url, tmp_path, **sections)
        self.engine = open_engine(self.settings.database.url)
        self.journal = Journal(self.engine, self.settings)
        self.journal.install()
        self.loader = MorningLoader(self.engine, self.settings, self.journal.schema)

    def load(self, path: Path, **options):
        return self.loader.load(path, **options)


@pytest.fixture
def receiver(database_url, tmp_path):
    r = Receiver(database_url, tmp_path)
    yield r
    r.engine.dispose()


# -- file names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "table"),
    [
        ("Employees.csv", "employees"),
        ("Loads_20261127.csv", "loads"),
        ("loads-2026-11-27-0600.csv", "loads"),
        ("Payments (Accounts Payable) 11-27-2026.csv", "payments"),
        ("Payments Received (Accounts Receivable)_20261127.csv", "payments_received"),
        ("New Purchases.csv", "new_purchases"),
        ("INVOICING.CSV", "invoicing"),
        ("salesreps_20261127T060000.csv", "salesreps"),
        ("weather.csv", None),
    ],
)
def test_file_names_map_to_aljex_tables(tmp_path, name, table):
    settings = make_settings("sqlite:///x.db", tmp_path)
    assert table_for(name, settings) == table


def test_configured_globs_override_the_name_rules(tmp_path):
    settings = make_settings(
        "sqlite:///x.db", tmp_path, tables={"loads": {"files": ["export_ld_*.csv"]}}
    )
    assert table_for("EXPORT_LD_0600.csv", settings) == "loads"


def test_export_time_is_the_earlier_of_mtime_and_upload_start_less_the_margin():
    start = utcnow()
    assert export_time(start, start - timedelta(hours=2), 30) == start - timedelta(minutes=150)
    assert export_time(start, start + timedelta(hours=2), 30) == start - timedelta(minutes=30)
    assert export_time(start, None, 30) == start - timedelta(minutes=30)


# -- full and window ----------------------------------------------------------------------


def test_full_file_deletes_rows_it_no_longer_holds(receiver, tmp_path):
    header = ["id", "name", "city"]
    receiver.load(write_csv(tmp_path / "Customers.csv", header, customers(150)))
    report = receiver.load(write_csv(tmp_path / "Customers.csv", header, customers(120)))
    assert report.status == "loaded"
    assert (report.counts.deleted, report.counts.updated) == (30, 120)
    assert table_rows(receiver.engine, "SELECT COUNT(*) AS n FROM customers") == [{"n": 120}]


def test_window_file_upserts_and_never_deletes(receiver, tmp_path):
    header = ["id", "status"]
    receiver.load(write_csv(tmp_path / "Loads.csv", header, [["1", "OPEN"], ["2", "OPEN"]]))
    report = receiver.load(
        write_csv(tmp_path / "Loads.csv", header, [["2", "COVERED"], ["3", "OPEN"]])
    )
    assert (report.mode, report.counts.inserted, report.counts.updated, report.counts.deleted) == (
        "window",
        1,
        1,
        0,
    )
    assert table_rows(receiver.engine, "SELECT id, status FROM loads ORDER BY id") == [
        {"id": "1", "status": "OPEN"},
        {"id": "2", "status": "COVERED"},
        {"id": "3", "status": "OPEN"},
    ]


def test_soft_delete_tables_mark_rows_instead(database_url, tmp_path):
    r = Receiver(database_url, tmp_path, tables={"customers": {"delete": "soft"}})
    header = ["id", "name", "city"]
    r.load(write_csv(tmp_path / "Customers.csv", header, customers(3)))
    r.load(write_csv(tmp_path / "Customers.csv", header, customers(2)))
    rows = table_rows(r.engine, "SELECT id, _aljex_deleted_at FROM customers ORDER BY id")
    assert [row["_aljex_deleted_at"] is not None for row in rows] == [False, False, True]
    r.engine.dispose()


def test_guard_holds_a_full_file_that_would_delete_too_much_until_forced(database_url, tmp_path):
    receiver = Receiver(database_url, tmp_path, morning={"max_drop_fraction": 1.0})
    header = ["id", "name", "city"]
    receiver.load(write_csv(tmp_path / "Customers.csv", header, customers(150)))
    small = write_csv(tmp_path / "Customers.csv", header, customers(10))
    report = receiver.load(small)
    assert report.status == "held"
    assert "would delete 140 of 150 rows" in report.error
    assert table_rows(receiver.engine, "SELECT COUNT(*) AS n FROM customers") == [{"n": 150}]
    forced = receiver.load(small, force=True)
    assert forced.status == "loaded" and forced.counts.deleted == 140
    receiver.engine.dispose()


def test_guard_holds_an_empty_full_file(receiver, tmp_path):
    header = ["id", "name", "city"]
    receiver.load(write_csv(tmp_path / "Employees.csv", header, customers(5)))
    report = receiver.load(write_csv(tmp_path / "Employees.csv", header, []))
    assert report.status == "held"
    assert report.error == "the full file is empty; it would delete all 5 rows (use --force)"
    assert table_rows(receiver.engine, "SELECT COUNT(*) AS n FROM employees") == [{"n": 5}]


def test_an_empty_full_file_for_a_new_table_loads_and_makes_the_table_empty(receiver, tmp_path):
    """Deleting nothing is no mass delete: the table is made from the header, as a first
    file with rows makes it, and holds none."""
    report = receiver.load(write_csv(tmp_path / "Employees.csv", ["id", "name", "city"], []))
    assert (report.mode, report.status, report.error) == ("full", "loaded", "")
    assert report.counts.deleted == 0
    columns = {c["name"] for c in inspect(receiver.engine).get_columns("employees")}
    assert {"id", "name", "city"} <= columns
    assert table_rows(receiver.engine, "SELECT COUNT(*) AS n FROM employees") == [{"n": 0}]
    assert [f["status"] for f in file_log(receiver.engine)] == ["loaded"]


def test_an_empty_full_file_for_an_empty_table_loads(receiver, tmp_path):
    receiver.load(write_csv(tmp_path / "Employees.csv", ["id", "name"], []))
    report = receiver.load(write_csv(tmp_path / "Employees.csv", ["id", "name", "city"], []))
    assert report.status == "loaded" and report.counts.deleted == 0
    assert table_rows(receiver.engine, "SELECT COUNT(*) AS n FROM employees") == [{"n": 0}]


def test_small_tables_are_not_guarded(receiver, tmp_path):
    header = ["id", "name", "city"]
    receiver.load(write_csv(tmp_path / "Salesreps.csv", header, customers(50)))
    report = receiver.load(write_csv(tmp_path / "Salesreps.csv", header, customers(1)))
    assert report.status == "loaded" and report.counts.deleted == 49


# -- reconciliation with live sync -------------------------------------------------------


def live_post(service: RunningService, **fields: str) -> None:
    body = urlencode(fields)
    response = httpx.post(
        service.url,
        content=body,
        auth=AUTH,
        timeout=30,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text


@pytest.fixture
def service(database_url, tmp_path):
    with RunningService(make_settings(database_url, tmp_path)) as running:
        yield running


def loader_of(service: RunningService) -> MorningLoader:
    running = service.service
    return MorningLoader(running.engine, service.settings, running.schema)


def test_row_changed_by_live_after_the_export_is_kept(service, tmp_path):
    live_post(
        service, web_sync_table_name="loads", web_sync_action="create", id="7", status="DELIVERED"
    )
    exported = utcnow() - timedelta(hours=3)
    path = write_csv(tmp_path / "Loads.csv", ["id", "status"], [["7", "DISPATCHED"], ["8", "OPEN"]])
    report = loader_of(service).load(path, started_at=exported)
    assert report.counts.skipped_newer == 1 and report.counts.inserted == 1
    engine = service.engine()
    assert table_rows(engine, "SELECT id, status, _aljex_source FROM loads ORDER BY id") == [
        {"id": "7", "status": "DELIVERED", "_aljex_source": "live"},
        {"id": "8", "status": "OPEN", "_aljex_source": "Loads.csv"},
    ]
    engine.dispose()


def test_row_changed_by_live_before_the_export_is_updated_by_the_file(service, tmp_path):
    live_post(service, web_sync_table_name="loads", web_sync_action="create", id="7", status="OPEN")
    later = utcnow() + timedelta(hours=1)
    path = write_csv(tmp_path / "Loads.csv", ["id", "status"], [["7", "COVERED"]])
    report = loader_of(service).load(path, started_at=later)
    assert report.counts.updated == 1 and report.counts.differing == 1
    engine = service.engine()
    assert table_rows(engine, "SELECT status FROM loads") == [{"status": "COVERED"}]
    engine.dispose()


def test_full_file_does_not_delete_a_row_live_created_after_the_export(service, tmp_path):
    header = ["id", "name", "city"]
    live_post(
        service, web_sync_table_name="salesreps", web_sync_action="create", id="NEW", name="x"
    )
    path = write_csv(tmp_path / "Salesreps.csv", header, customers(3))
    report = loader_of(service).load(path, started_at=utcnow() - timedelta(hours=1))
    assert report.counts.deleted == 0 and report.counts.extra_in_db == 1
    engine = service.engine()
    assert {r["id"] for r in table_rows(engine, "SELECT id FROM salesreps")} == {
        "NEW",
        "C0",
        "C1",
        "C2",
    }
    engine.dispose()


def test_record_deleted_by_live_after_the_export_is_not_brought_back(service, tmp_path):
    live_post(service, web_sync_table_name="quotes", web_sync_action="create", id="Q1", amount="5")
    live_post(service, web_sync_table_name="quotes", web_sync_action="delete", id="Q1")
    path = write_csv(tmp_path / "Quotes.csv", ["id", "amount"], [["Q1", "5"], ["Q2", "6"]])
    report = loader_of(service).load(path, started_at=utcnow() - timedelta(hours=2))
    assert report.counts.skipped_newer == 1 and report.counts.inserted == 1
    engine = service.engine()
    assert table_rows(engine, "SELECT id FROM quotes") == [{"id": "Q2"}]
    engine.dispose()


def test_feed_health_counts_missing_extra_and_differing_rows(service, tmp_path):
    for i, city in enumerate(["Newark", "Trenton", "Camden"]):
        live_post(
            service,
            web_sync_table_name="payable",
            web_sync_action="create",
            id=f"C{i}",
            name=f"Customer {i}",
            city=city,
        )
    live_post(
        service,
        web_sync_table_name="payable",
        web_sync_action="create",
        id="X9",
        name="only live",
        city="Newark",
    )
    rows = [
        ["C0", "Customer 0", "Newark"],
        ["C1", "Customer 1", "Newark"],
        ["C2", "Customer 2", "Camden"],
        ["C3", "Customer 3", "Newark"],
    ]
    path = write_csv(tmp_path / "Payable.csv", ["id", "name", "city"], rows)
    report = loader_of(service).load(path, started_at=utcnow() + timedelta(hours=1))
    c = report.counts
    assert (c.missing_in_db, c.extra_in_db, c.differing) == (1, 1, 1)
    engine = service.engine()
    [logged] = file_log(engine)
    assert (logged["missing_in_db"], logged["extra_in_db"], logged["differing"]) == (1, 1, 1)
    assert logged["status"] == "loaded" and logged["rows_read"] == 4
    engine.dispose()


# -- bookkeeping and bad files ------------------------------------------------------------


def test_a_file_with_the_same_content_is_skipped_as_a_duplicate(receiver, tmp_path):
    path = write_csv(tmp_path / "Carriers.csv", ["id", "name"], [["K1", "Haulers"]])
    assert receiver.load(path).status == "loaded"
    again = receiver.load(path)
    assert again.status == "duplicate"
    assert [f["status"] for f in file_log(receiver.engine)] == ["loaded", "duplicate"]


def test_an_older_files_content_back_again_is_loaded_not_a_duplicate(receiver, tmp_path):
    """Monday's file, Tuesday's with one carrier more, Wednesday's without it again, byte
    for byte Monday's: skipped as a duplicate of Monday's, it left that carrier in."""
    nine = [[f"K{i}", "A"] for i in range(9)]
    monday = write_csv(tmp_path / "mon" / "Carriers.csv", ["id", "name"], nine)
    tuesday = write_csv(tmp_path / "tue" / "Carriers.csv", ["id", "name"], [*nine, ["K9", "B"]])
    assert receiver.load(monday).status == "loaded"
    assert receiver.load(tuesday).status == "loaded"
    os.utime(monday)  # exported again, on Wednesday
    assert receiver.load(monday).status == "loaded"
    count = "SELECT COUNT(*) AS n FROM carriers WHERE _aljex_deleted_at IS NULL"
    assert table_rows(receiver.engine, count) == [{"n": 9}]
    again = receiver.load(monday)  # the same file sent twice: that is a duplicate
    assert (again.status, again.error) == (
        "duplicate",
        "the same content as the last file loaded into its table",
    )


def test_every_file_is_recorded_with_its_counts_and_times(receiver, tmp_path):
    path = write_csv(tmp_path / "Carriers.csv", ["id", "name"], [["K1", "A"], ["K2", "B"]])
    report = receiver.load(path)
    [logged] = file_log(receiver.engine)
    assert logged["sha256"] == report.sha256 and len(logged["sha256"]) == 64
    assert (logged["table_name"], logged["mode"], logged["inserted"]) == ("carriers", "full", 2)
    assert logged["snapshot_at"] is not None and logged["finished_at"] >= logged["started_at"]


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (b"id,name\r\nK1,A\r\nK2,B,extra\r\n", 3, "fields"),
        (b'id,name\nK1,"two\nlines"\nK2\nK3,C\n', 4, "fields"),
        (b'id,name\nK1,"bad"quote\n', 2, ""),
        (b"", None, "empty"),
        (b"id,name\nK1,A\n,B\n", 3, "empty key"),
    ],
    ids=["extra-field", "short-row-after-quoted-newline", "bad-quoting", "zero-bytes", "empty-key"],
)
def test_a_malformed_file_is_rejected_whole_and_quarantined_with_its_line(
    receiver, tmp_path, content, line, reason
):
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    path = inbox / "Carriers.csv"
    path.write_bytes(content)
    report = receiver.load(path)
    assert report.status == "failed"
    assert reason in report.error
    if line:
        assert f"line {line}" in report.error
    moved = dispose(report, path, inbox)
    assert moved == inbox / "failed" / "Carriers.csv" and not path.exists()
    note = (inbox / "failed" / "Carriers.csv.error.txt").read_text()
    assert report.error in note
    with receiver.engine.connect() as conn:
        assert not conn.dialect.has_table(conn, "carriers")


def test_a_semicolon_delimited_file_fails_saying_its_delimiter_is_not_read(receiver, tmp_path):
    path = tmp_path / "Carriers.csv"
    path.write_bytes(b"id;name\r\nK1;Acme\r\n")
    report = receiver.load(path)
    assert report.status == "failed"
    assert report.error == (
        "Carriers.csv line 1: the header has no key field 'id'; it looks delimited by ';',"
        " which is not read: export it delimited by ',', tab or '|'"
    )


def test_a_file_malformed_after_many_rows_leaves_no_trace(receiver, tmp_path):
    bad = tmp_path / "Carriers.csv"
    bad.write_bytes(b"id,name\r\n" + PLAIN_ROWS + b"K1200,x,extra\r\nK1201,y\r\n")
    report = receiver.load(bad)
    assert report.status == "failed" and "line 1202" in report.error
    with receiver.engine.connect() as conn:
        assert not conn.dialect.has_table(conn, "carriers")
    good = write_csv(tmp_path / "Carriers.csv", ["id", "name"], [["K1", "A"]])
    assert receiver.load(good).status == "loaded"
    assert table_rows(receiver.engine, "SELECT id, name FROM carriers") == [
        {"id": "K1", "name": "A"}
    ]


def test_a_row_over_the_row_limit_fails_the_file_with_its_line(receiver, tmp_path):
    """The trial's file, in small: one row of many 1 MB fields. The limit on a row's size
    fails the file cleanly, as the limit on a field's does."""
    fields = MAX_ROW_CHARS // MAX_FIELD_CHARS + 1
    header = ",".join(["id", *(f"f{i}" for i in range(1, fields))])
    wide = ",".join(["K2", *["x" * MAX_FIELD_CHARS] * (fields - 1)])
    path = tmp_path / "inbox" / "Carriers.csv"
    path.parent.mkdir()
    path.write_text(f"{header}\nK1{',' * (fields - 1)}\n{wide}\n")
    report = receiver.load(path)
    assert report.status == "failed"
    assert report.error == f"Carriers.csv line 3: a row is longer than {MAX_ROW_CHARS} characters"
    assert dispose(report, path, path.parent) == path.parent / "failed" / "Carriers.csv"
    with receiver.engine.connect() as conn:
        assert not conn.dialect.has_table(conn, "carriers")


def test_a_file_of_big_rows_loads_whole_in_batches_of_a_few_rows(receiver, tmp_path):
    """Rows of 1 MB: batches end on their size, not at 500 rows, so staging holds a few MB
    at a time; every row and value arrives."""
    rows = [[f"K{i}", chr(97 + i) * 500_000, chr(65 + i) * 500_000] for i in range(10)]
    path = write_csv(tmp_path / "Carriers.csv", ["id", "a", "b"], rows)
    staged: list[int] = []
    report = receiver.load(path, progress=lambda _bytes, rows: staged.append(rows))
    assert report.status == "loaded" and report.counts.inserted == 10
    assert staged == [5, 10]  # 4 MiB a batch: the row that passes it ends one
    loaded = table_rows(receiver.engine, "SELECT id, a, b FROM carriers ORDER BY id")
    assert [[r["id"], r["a"], r["b"]] for r in loaded] == rows


def test_a_header_without_the_key_field_is_rejected(receiver, tmp_path):
    path = write_csv(tmp_path / "Invoicing.csv", ["id", "total"], [["1", "5"]])
    report = receiver.load(path)
    assert report.status == "failed" and "no key field 'pro_num'" in report.error


def test_an_unmatched_file_is_not_guessed(receiver, tmp_path):
    path = write_csv(tmp_path / "inbox" / "Weather.csv", ["id"], [["1"]])
    report = receiver.load(path)
    assert report.status == "unmatched"
    assert (
        dispose(report, path, tmp_path / "inbox")
        == tmp_path / "inbox" / "unmatched" / "Weather.csv"
    )


# -- CSV shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("\ufeffid,name\r\nK1,Café\r\n".encode(), "Café"),
        (b'id,name\nK1,"Line one\r\nline two, with comma"\n', "Line one\r\nline two, with comma"),
        (b"id,name\r\nK1,M\xfcller Trucking\r\n", "Müller Trucking"),
        (b"id\tname\nK1\tTab, Inc\n", "Tab, Inc"),
        (b'id|name\nK1|Pipe "Co"\n', 'Pipe "Co"'),
        (b'id,name\nK1,""\n', ""),
    ],
    ids=["utf8-bom-crlf", "quoted-newline", "cp1252", "tab", "pipe", "empty-string"],
)
def test_csv_shapes_load_exactly(receiver, tmp_path, content, expected):
    path = tmp_path / "Carriers.csv"
    path.write_bytes(content)
    report = receiver.load(path)
    assert report.status == "loaded", report.error
    assert table_rows(receiver.engine, "SELECT id, name FROM carriers") == [
        {"id": "K1", "name": expected}
    ]


@pytest.mark.parametrize(
    "content",
    [
        b'id,name\r\nK1,"Acme, Inc."\r\nK2,"two\r\nlines"\r\nK3,\r\nK4,""\r\n',
        b"id,name\r\nK1,a\r\nK2,b\r\n\r\n\r\n",
        b"id,name\nK1,a\n\nK2,b\n",
        b"\nid,name\nK1,a\n",
        b"id,name\nK1,a\r\nK2,b\n",
        b"id,name\r\n" + PLAIN_ROWS + b'K1200,48" pipe\r\n',
        b"id\r\nK1\r\n\\.\r\nK2\r\n",
        b"id,name\r\nK1,first\r\nK2,x\r\nK1,last\r\n",
        "id,name\r\nK1,Caf\u00e9\r\n".encode("cp1252"),
        b'id\tname\r\nK1\t"tab\there"\r\nK2\t\r\n',
        b'id|name\nK1|"pipe|here"\nK2|b\n',
        "\ufeffid,name\r\nK1,Caf\u00e9\r\n".encode(),
    ],
    ids=[
        "plain",
        "trailing-blank-lines",
        "blank-line-between-rows",
        "blank-line-before-header",
        "mixed-line-endings",
        "quote-in-unquoted-value-after-many-rows",
        "end-of-copy-marker-as-a-key",
        "key-twice",
        "cp1252",
        "tab",
        "pipe",
        "utf8-bom",
    ],
)
def test_the_table_holds_the_rows_csvfile_reads_whatever_the_shape(receiver, tmp_path, content):
    """PostgreSQL may COPY a file's own bytes: they must give exactly the rows csvfile reads."""
    path = tmp_path / "Carriers.csv"
    path.write_bytes(content)
    expected: dict[str, list[str]] = {}
    with CsvReader(path, inspect_file(path)) as reader:
        header = reader.header
        for batch in reader.batches():
            for row in batch:
                expected[row[0]] = row  # a key given twice keeps its last row
    report = receiver.load(path)
    assert report.status == "loaded", report.error
    assert report.counts.inserted == len(expected)
    columns = ", ".join(header)
    loaded = table_rows(receiver.engine, f"SELECT {columns} FROM carriers")
    assert sorted(loaded, key=lambda r: r["id"]) == [
        dict(zip(header, expected[k], strict=True)) for k in sorted(expected)
    ]


def test_live_sync_can_write_while_a_file_is_staged(receiver, tmp_path):
    path = write_csv(tmp_path / "Customers.csv", ["id", "name", "city"], customers(1500))
    # A writer that gives up after 0.3 s: it fails if staging holds the database's lock.
    writer = open_engine(receiver.settings.database.url, timeout=0.3)
    with writer.begin() as conn:
        conn.execute(text("CREATE TABLE side (n INTEGER)"))
    written: list[int] = []

    def progress(bytes_read: int, rows: int) -> None:
        with writer.begin() as conn:
            conn.execute(text("INSERT INTO side (n) VALUES (:n)"), {"n": rows})
        written.append(rows)

    report = receiver.load(path, progress=progress)
    writer.dispose()
    assert report.status == "loaded" and report.counts.inserted == 1500
    assert written[-1] == 1500 and len(written) >= 2
    assert table_rows(receiver.engine, "SELECT COUNT(*) AS n FROM side") == [{"n": len(written)}]


def test_counts_of_full_files_that_revive_update_insert_and_soft_delete(database_url, tmp_path):
    r = Receiver(database_url, tmp_path, tables={"customers": {"delete": "soft"}})
    header = ["id", "name", "city"]
    r.load(write_csv(tmp_path / "Customers.csv", header, customers(5)))
    second = [*customers(2), ["C5", "Customer 5", "Newark"]]
    second[1][2] = "Camden"
    c = r.load(write_csv(tmp_path / "Customers.csv", header, second)).counts
    assert (c.inserted, c.updated, c.deleted) == (1, 2, 3)
    assert (c.missing_in_db, c.extra_in_db, c.differing, c.skipped_newer) == (1, 3, 1, 0)
    # C2 was soft-deleted: the file brings it back; C1 and C5 are now gone from the file.
    third = [["C0", "Customer 0", "Newark"], ["C2", "Customer 2", "Newark"]]
    c = r.load(write_csv(tmp_path / "Customers.csv", header, third)).counts
    assert (c.inserted, c.updated, c.deleted) == (0, 2, 2)
    assert (c.missing_in_db, c.extra_in_db, c.differing, c.skipped_newer) == (1, 2, 0, 0)
    rows = table_rows(r.engine, "SELECT id, _aljex_deleted_at FROM customers ORDER BY id")
    assert {row["id"]: row["_aljex_deleted_at"] is None for row in rows} == {
        "C0": True,
        "C1": False,
        "C2": True,
        "C3": False,
        "C4": False,
        "C5": False,
    }
    r.engine.dispose()


def test_a_composite_key_merges_on_all_its_fields(database_url, tmp_path):
    stops = {"key": ["load_id", "stop"], "mode": "full", "files": ["stops*.csv"]}
    r = Receiver(database_url, tmp_path, tables={"stops": stops})
    header = ["load_id", "stop", "city"]
    first = [["L1", "1", "Newark"], ["L1", "2", "Camden"], ["L2", "1", "Trenton"]]
    assert r.load(write_csv(tmp_path / "stops_1.csv", header, first)).counts.inserted == 3
    # L1/2 changes, given twice (the last row wins); L2/1 goes; L2/2 is new.
    second = [["L1", "1", "Newark"], ["L1", "2", "Edison"], ["L2", "2", "Paterson"]]
    second.append(["L1", "2", "Hoboken"])
    c = r.load(write_csv(tmp_path / "stops_2.csv", header, second)).counts
    assert (c.inserted, c.updated, c.deleted, c.differing, c.extra_in_db) == (1, 2, 1, 1, 1)
    assert table_rows(r.engine, "SELECT load_id, stop, city FROM stops ORDER BY load_id, stop") == [
        {"load_id": "L1", "stop": "1", "city": "Newark"},
        {"load_id": "L1", "stop": "2", "city": "Hoboken"},
        {"load_id": "L2", "stop": "2", "city": "Paterson"},
    ]
    r.engine.dispose()


def test_header_fields_get_the_same_columns_as_live_sync(receiver, tmp_path):
    path = write_csv(tmp_path / "Loads.csv", ["id", "Osd", "select"], [["1", "Y", "s"]])
    assert receiver.load(path).status == "loaded"
    with receiver.engine.connect() as conn:
        mapping = dict(
            conn.execute(
                text(
                    "SELECT field_name, column_name FROM _aljex_columns WHERE table_name = 'loads'"
                )
            ).all()
        )
    assert mapping["Osd"] == "osd" and mapping["select"].startswith("select_")


def test_dry_run_reports_and_changes_nothing(receiver, tmp_path):
    header = ["id", "name", "city"]
    receiver.load(write_csv(tmp_path / "Customers.csv", header, customers(5)))
    report = receiver.load(
        write_csv(tmp_path / "Customers.csv", header, customers(3, "X")), dry_run=True
    )
    assert report.status == "dry-run" and report.counts.deleted == 2 and report.counts.updated == 3
    assert table_rows(
        receiver.engine, "SELECT COUNT(*) AS n FROM customers WHERE city = 'Newark'"
    ) == [{"n": 5}]
    assert len(file_log(receiver.engine)) == 1


def test_dry_run_of_a_file_with_new_columns_adds_none_and_counts_as_a_load_would(
    receiver, tmp_path
):
    header = ["id", "name", "city"]
    receiver.load(write_csv(tmp_path / "Customers.csv", header, customers(5)))
    wider = [[*row, "NJ"] for row in customers(4)]
    report = receiver.load(
        write_csv(tmp_path / "Customers.csv", [*header, "state"], wider), dry_run=True
    )
    assert report.status == "dry-run"
    assert report.counts.deleted == 1 and report.counts.updated == 4
    columns = {c["name"] for c in inspect(receiver.engine).get_columns("customers")}
    assert "state" not in columns
    assert table_rows(
        receiver.engine, "SELECT COUNT(*) AS n FROM _aljex_columns WHERE field_name = 'state'"
    ) == [{"n": 0}]
    assert len(file_log(receiver.engine)) == 1


def test_dry_run_of_a_file_for_a_new_table_makes_no_table(receiver, tmp_path):
    report = receiver.load(
        write_csv(tmp_path / "Carriers.csv", ["id", "name"], [["K1", "Acme"], ["K2", "Bolt"]]),
        dry_run=True,
    )
    assert report.status == "dry-run" and report.counts.inserted == 2
    assert "carriers" not in inspect(receiver.engine).get_table_names()
    assert table_rows(
        receiver.engine, "SELECT COUNT(*) AS n FROM _aljex_tables WHERE table_name = 'carriers'"
    ) == [{"n": 0}]
    # Nothing was left behind: the same file then loads as a first file does.
    loaded = receiver.load(
        write_csv(tmp_path / "Carriers.csv", ["id", "name"], [["K1", "Acme"], ["K2", "Bolt"]])
    )
    assert loaded.status == "loaded" and loaded.counts.inserted == 2


# -- over SFTP, through the service --------------------------------------------------------


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_uploaded_file_is_loaded_and_archived(service, tmp_path):
    local = write_csv(tmp_path / "out" / "Loads_20261127.csv", ["id", "status"], [["1", "OPEN"]])
    port = service.service.sftp.port
    result = sftp_upload(port, [f"put -p {local}"], tmp_path / "client")
    assert result.returncode == 0, result.stderr
    assert service.service.loads.wait_idle(30)
    engine = service.engine()
    assert table_rows(engine, "SELECT id, status FROM loads") == [{"id": "1", "status": "OPEN"}]
    engine.dispose()
    inbox = service.settings.morning.inbox
    archived = list((inbox / "archive").glob("*/Loads_20261127.csv"))
    assert len(archived) == 1 and not (inbox / "Loads_20261127.csv").exists()


def test_upload_with_preserved_mtime_sets_the_export_time(service, tmp_path):
    local = write_csv(tmp_path / "out" / "Quotes.csv", ["id", "amount"], [["Q1", "1"]])
    two_hours_ago = time.time() - 7200
    os.utime(local, (two_hours_ago, two_hours_ago))
    result = sftp_upload(service.service.sftp.port, [f"put -p {local}"], tmp_path / "client")
    assert result.returncode == 0, result.stderr
    assert service.service.loads.wait_idle(30)
    engine = service.engine()
    [logged] = file_log(engine)
    lag = utcnow() - logged["snapshot_at"]
    assert timedelta(minutes=145) < lag < timedelta(minutes=160)
    engine.dispose()


def test_a_malformed_upload_goes_to_failed_and_the_service_goes_on(service, tmp_path):
    bad = tmp_path / "out" / "Carriers.csv"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"id,name\nK1,A,B\n")
    good = write_csv(tmp_path / "out" / "Employees.csv", ["id", "name"], [["E1", "Ann"]])
    result = sftp_upload(service.service.sftp.port, [f"put {bad}", f"put {good}"], tmp_path / "c")
    assert result.returncode == 0, result.stderr
    assert service.service.loads.wait_idle(30)
    inbox = service.settings.morning.inbox
    assert "line 2" in (inbox / "failed" / "Carriers.csv.error.txt").read_text()
    engine = service.engine()
    assert table_rows(engine, "SELECT id FROM employees") == [{"id": "E1"}]
    engine.dispose()


def test_a_client_killed_mid_upload_loads_nothing(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path)
    big = tmp_path / "out" / "Loads.csv"
    big.parent.mkdir(parents=True)
    with big.open("w") as f:
        f.write("id,notes\n")
        for i in range(100_000):
            f.write(f"{i},{'x' * 100}\n")
    with RunningService(settings) as running:
        work = tmp_path / "client"
        sftp_upload(running.service.sftp.port, ["pwd"], work)  # writes askpass and batch
        (work / "batch").write_text(f"put {big}\n")
        env = {
            **os.environ,
            "SSH_ASKPASS": str(work / "askpass.sh"),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0",
        }
        process = subprocess.Popen(
            [
                "sftp",
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=no",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "PreferredAuthentications=password",
                "-l",  # bandwidth limit in kbit/s, so the kill lands mid-upload
                "8000",
                "-P",
                str(running.service.sftp.port),
                "-b",
                str(work / "batch"),
                "aljex@127.0.0.1",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        inbox = settings.morning.inbox
        wait_for(
            lambda: any(
                p.name.startswith(".upload-") and p.stat().st_size > 1_000_000
                for p in inbox.iterdir()
            )
        )
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        wait_for(lambda: not any(p.name.startswith(".upload-") for p in inbox.iterdir()))
        assert running.service.loads.wait_idle(10)
        assert running.service.loads.reports == []
        assert [p.name for p in inbox.iterdir() if p.is_file()] == [INBOX_LOCK]  # serve's


def test_folder_watch_loads_a_file_once_it_stops_changing(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, morning={"sftp": False, "quiet_seconds": 0.3})
    with RunningService(settings) as running:
        inbox = settings.morning.inbox
        partial = write_csv(inbox / "Loads.csv.part", ["id", "status"], [["1", "OPEN"]])
        time.sleep(1.0)
        assert running.service.loads.reports == []
        partial.rename(inbox / "Loads.csv")
        wait_for(lambda: len(running.service.loads.reports) == 1)
        assert running.service.loads.reports[0].status == "loaded"
        engine = running.engine()
        assert table_rows(engine, "SELECT id FROM loads") == [{"id": "1"}]
        engine.dispose()


def test_files_left_in_the_inbox_are_loaded_at_start(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path)
    write_csv(settings.morning.inbox / "Employees.csv", ["id", "name"], [["E1", "Ann"]])
    with RunningService(settings) as running:
        assert running.service.loads.wait_idle(30)
        assert [r.status for r in running.service.loads.reports] == ["loaded"]


# -- the load command ---------------------------------------------------------------------


def test_load_command_prints_a_summary_and_force_applies_a_held_file(tmp_path):
    config = tmp_path / "aljex-sync.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "db.sqlite"}"\n'
        '[live]\npassword = "x"\n[morning]\nsftp = false\n'
    )
    header = ["id", "name", "city"]
    first = write_csv(tmp_path / "a" / "Customers.csv", header, customers(150))
    runner = CliRunner()
    result = runner.invoke(main, ["-c", str(config), "load", str(first)])
    assert result.exit_code == 0, result.output
    assert "loaded" in result.output and "150" in result.output
    small = write_csv(tmp_path / "b" / "Customers.csv", header, customers(2))
    held = runner.invoke(main, ["-c", str(config), "load", str(small)])
    assert held.exit_code == 1 and "held" in held.output
    dry = runner.invoke(main, ["-c", str(config), "load", "--dry-run", "--force", str(small)])
    assert dry.exit_code == 0 and "dry-run" in dry.output
    forced = runner.invoke(main, ["-c", str(config), "load", "--force", str(small)])
    assert forced.exit_code == 0 and "148" in forced.output


# -- trust: truncated files, the loader that never dies, encodings, field names ----------


def test_truncated_upload_is_held_not_loaded(receiver, tmp_path, caplog):
    header = ["id", "name", "city"]
    receiver.load(write_csv(tmp_path / "a" / "Customers.csv", header, customers(3)))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cut = inbox / "Customers.csv"
    cut.write_bytes(b"id,name,city\nC0,New 0,Trenton\nC1,New 1,Tre")
    report = receiver.load(cut)
    assert report.status == "held"
    assert report.error.startswith("possibly truncated: Customers.csv:")
    assert "does not end with a line break" in report.error
    assert table_rows(receiver.engine, "SELECT DISTINCT city FROM customers") == [
        {"city": "Newark"}
    ]
    assert [(f["status"], f["error"]) for f in file_log(receiver.engine)][-1] == (
        "held",
        report.error,
    )
    assert any(
        r.levelname == "WARNING" and "held: possibly truncated" in r.getMessage()
        for r in caplog.records
    )
    assert dispose(report, cut, inbox) == inbox / "held" / "Customers.csv"
    assert "possibly truncated" in (inbox / "held" / "Customers.csv.error.txt").read_text()


def test_a_last_record_cut_inside_quotes_is_held_not_loaded(receiver, tmp_path):
    path = tmp_path / "Loads.csv"
    path.write_bytes(b'id,notes\n1,"whole"\n2,"cut after a line break\n')
    report = receiver.load(path)
    assert report.status == "held" and "still open at the end" in report.error
    with receiver.engine.connect() as conn:
        assert not conn.dialect.has_table(conn, "loads")


def test_a_full_file_with_sharply_fewer_rows_is_held_until_forced(receiver, tmp_path):
    header = ["id", "name", "city"]
    receiver.load(write_csv(tmp_path / "a" / "Customers.csv", header, customers(150)))
    fewer = write_csv(tmp_path / "b" / "Customers.csv", header, customers(110, "Camden"))
    report = receiver.load(fewer)
    assert report.status == "held"
    assert report.error.startswith(
        "possibly truncated: 110 rows, 27% fewer than the 150 of the last full file"
    )
    assert table_rows(receiver.engine, "SELECT COUNT(*) AS n FROM customers") == [{"n": 150}]
    within = write_csv(tmp_path / "c" / "Customers.csv", header, customers(120, "Camden"))
    assert receiver.load(within).status == "loaded"  # 20% fewer: allowed by default
    forced = receiver.load(fewer, force=True)
    assert forced.status == "loaded" and forced.counts.deleted == 10


def test_the_allowed_drop_in_rows_is_configurable_per_table(database_url, tmp_path):
    r = Receiver(
        database_url,
        tmp_path,
        morning={"max_drop_fraction": 0.0},
        tables={"customers": {"max_drop_fraction": 0.5}},
    )
    header = ["id", "name", "city"]
    r.load(write_csv(tmp_path / "a" / "Customers.csv", header, customers(150)))
    assert r.load(write_csv(tmp_path / "b" / "Customers.csv", header, customers(110))).status == (
        "loaded"
    )
    r.load(write_csv(tmp_path / "a" / "Employees.csv", header, customers(150, "Camden")))
    held = r.load(write_csv(tmp_path / "b" / "Employees.csv", header, customers(149, "Camden")))
    assert held.status == "held" and "1% fewer" in held.error
    r.engine.dispose()


def test_an_unmatched_file_is_recorded_and_logged_as_a_warning(receiver, tmp_path, caplog):
    path = write_csv(tmp_path / "Weather.csv", ["id"], [["1"]])
    report = receiver.load(path)
    assert report.status == "unmatched"
    [logged] = file_log(receiver.engine)
    assert (logged["name"], logged["status"], logged["table_name"]) == (
        "Weather.csv",
        "unmatched",
        None,
    )
    assert logged["error"] == "the file name matches no Aljex file"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "Weather.csv -> ? unmatched: the file name matches no Aljex file")
    ]


def test_failed_files_are_logged_as_errors(receiver, tmp_path, caplog):
    path = tmp_path / "Carriers.csv"
    path.write_bytes(b"id,name\nK1,A,B\nK2,C\n")
    assert receiver.load(path).status == "failed"
    assert [r.levelname for r in caplog.records] == ["ERROR"]


def test_a_bom_and_a_cp1252_byte_load_with_the_count_in_the_report(receiver, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aljex_sync.morning")
    path = tmp_path / "Carriers.csv"
    path.write_bytes(b"\xef\xbb\xbfid,name\nK1,Caf\xc3\xa9\xff\nK2,Montr\xe9al\n")
    report = receiver.load(path)
    assert report.status == "loaded"
    assert report.legacy_bytes == 2
    assert report.warning_text() == "2 bytes were not UTF-8, read as cp1252"
    assert report.summary().endswith("; 2 bytes were not UTF-8, read as cp1252")
    assert table_rows(receiver.engine, "SELECT id, name FROM carriers ORDER BY id") == [
        {"id": "K1", "name": "Café\u00ff"},
        {"id": "K2", "name": "Montréal"},
    ]
    [logged] = file_log(receiver.engine)
    assert (logged["status"], logged["error"]) == (
        "loaded",
        "2 bytes were not UTF-8, read as cp1252",
    )
    assert [r.levelname for r in caplog.records] == ["INFO"]


def test_field_names_in_a_header_are_case_insensitive(receiver, tmp_path):
    path = tmp_path / "Loads.csv"
    path.write_bytes(b"ID,Osd,status,OSD\n1,first,open,last\n")
    report = receiver.load(path)
    assert report.status == "loaded"
    assert report.warnings == [
        "the header names field 'osd' 2 times (columns 2, 4, names compared in any case);"
        " the last column's values were used"
    ]
    path.write_bytes(b"id,osd,Status\n2,again,closed\n")
    assert receiver.load(path).status == "loaded"
    assert table_rows(receiver.engine, "SELECT id, osd, status FROM loads ORDER BY id") == [
        {"id": "1", "osd": "last", "status": "open"},
        {"id": "2", "osd": "again", "status": "closed"},
    ]
    with receiver.engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("loads")}
    assert {c for c in columns if not c.startswith("_aljex_")} == {"id", "osd", "status"}


def test_after_force_the_files_own_rows_are_not_kept_as_newer_live(receiver, tmp_path):
    header = ["id", "name", "city"]
    path = tmp_path / "Customers.csv"
    write_csv(path, header, customers(5, "Cut"))
    receiver.load(path, started_at=utcnow())  # an earlier load of it took a later T
    write_csv(path, header, customers(5, "Whole"))
    report = receiver.load(path, force=True, started_at=utcnow() - timedelta(hours=3))
    assert report.status == "loaded"
    assert (report.counts.skipped_newer, report.counts.updated) == (0, 5)
    assert table_rows(receiver.engine, "SELECT DISTINCT city FROM customers") == [{"city": "Whole"}]


def folder_watch(tmp_path: Path, url: str) -> RunningService:
    settings = make_settings(url, tmp_path, morning={"sftp": False, "quiet_seconds": 0.2})
    return RunningService(settings)


@pytest.mark.parametrize("name", ["unmatched", "failed", "Held", "archive"])
def test_the_loader_goes_on_after_a_file_named_like_an_inbox_folder(tmp_path, sqlite_url, name):
    """Such a file goes to failed/ with its reason, and every later file still loads."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / name).write_bytes(b"id,name\nE1,Ann\n")
    with folder_watch(tmp_path, sqlite_url) as running:
        loads = running.service.loads
        wait_for(lambda: len(loads.reports) == 1)
        write_csv(inbox / "Employees.csv", ["id", "name"], [["E2", "Bob"]])
        wait_for(lambda: len(loads.reports) == 2)
        assert [(r.name, r.status) for r in loads.reports] == [
            (name, "failed"),
            ("Employees.csv", "loaded"),
        ]
        assert "name of one of the inbox's own folders" in loads.reports[0].error
        engine = running.engine()
        assert table_rows(engine, "SELECT id FROM employees") == [{"id": "E2"}]
        assert [f["status"] for f in file_log(engine)] == ["failed", "loaded"]
        engine.dispose()
    assert (inbox / "failed" / name).read_bytes() == b"id,name\nE1,Ann\n"
    assert "inbox's own folders" in (inbox / "failed" / f"{name}.error.txt").read_text()
    assert all((inbox / folder).is_dir() for folder in ("failed", "archive"))


def test_a_file_in_the_place_of_an_inbox_folder_is_failed_before_any_load(
    tmp_path, sqlite_url, caplog
):
    """Left by an older version: without the held/ folder, the cut file could not be held."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "held").write_bytes(b"in the way\n")
    (inbox / "Customers.csv").write_bytes(b"id,name\nC1,cut")
    with folder_watch(tmp_path, sqlite_url) as running:
        loads = running.service.loads
        wait_for(lambda: len(loads.reports) == 2)
        write_csv(inbox / "Employees.csv", ["id", "name"], [["E1", "Ann"]])
        wait_for(lambda: len(loads.reports) == 3)
        assert [(r.name, r.status) for r in loads.reports] == [
            ("held", "failed"),
            ("Customers.csv", "held"),
            ("Employees.csv", "loaded"),
        ]
    assert (inbox / "held" / "Customers.csv").exists()
    assert (inbox / "failed" / "held").read_bytes() == b"in the way\n"
    assert any(r.levelname == "ERROR" for r in caplog.records)


def test_a_file_that_raises_inside_the_loader_goes_to_failed_and_the_next_one_loads(
    receiver, tmp_path, caplog
):
    inbox = tmp_path / "inbox"
    bad = write_csv(inbox / "Carriers.csv", ["id", "name"], [["K1", "A"]])
    good = write_csv(inbox / "Employees.csv", ["id", "name"], [["E1", "Ann"]])
    loads = LoadQueue(receiver.loader, inbox)
    loads.start()
    # An upload start so early that its export time cannot be computed: load() raises.
    loads.put(Arrival(bad, datetime.min, None))
    loads.put(Arrival(good, utcnow(), None))
    assert loads.wait_idle(30)
    loads.close()
    assert [(r.name, r.status) for r in loads.reports] == [
        ("Carriers.csv", "failed"),
        ("Employees.csv", "loaded"),
    ]
    assert loads.reports[0].error.startswith("the loader failed on it: OverflowError")
    assert (inbox / "failed" / "Carriers.csv").exists()
    assert "OverflowError" in (inbox / "failed" / "Carriers.csv.error.txt").read_text()
    assert [(f["name"], f["status"]) for f in file_log(receiver.engine)] == [
        ("Carriers.csv", "failed"),
        ("Employees.csv", "loaded"),
    ]
    assert any(r.levelname == "ERROR" and "Carriers.csv" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("how", ["rename", "posix_rename"])
def test_a_partial_upload_loads_on_its_rename_not_before(service, tmp_path, how):
    local = write_csv(tmp_path / "out" / "Loads.csv", ["id", "status"], [["1", "OPEN"]])
    loads = service.service.loads

    async def upload() -> tuple[list[str], list[str]]:
        async with (
            asyncssh.connect(
                "127.0.0.1",
                service.service.sftp.port,
                username="aljex",
                password=TEST_PASSWORD,
                known_hosts=None,
                client_keys=None,
                config=None,
            ) as conn,
            conn.start_sftp_client() as sftp,
        ):
            await sftp.put(str(local), "Loads.csv.tmp")
            await asyncio.to_thread(loads.wait_idle, 30)
            before = [r.name for r in loads.reports]
            await getattr(sftp, how)("Loads.csv.tmp", "Loads.csv")
        await asyncio.to_thread(wait_for, lambda: len(loads.reports) == 1)
        return before, [r.status for r in loads.reports]

    before, after = asyncio.run(upload())
    assert (before, after) == ([], ["loaded"])
    engine = service.engine()
    assert table_rows(engine, "SELECT id, status FROM loads") == [{"id": "1", "status": "OPEN"}]
    engine.dispose()


# -- rows a file leaves as they are -------------------------------------------------------


def test_a_file_does_not_rewrite_the_rows_it_leaves_unchanged(receiver, tmp_path):
    header = ["id", "name", "city"]
    yesterday, today = utcnow() - timedelta(days=1), utcnow()
    receiver.load(write_csv(tmp_path / "Customers.csv", header, customers(5)), started_at=yesterday)
    second = customers(5)
    second[3][2] = "Camden"
    report = receiver.load(write_csv(tmp_path / "Customers.csv", header, second), started_at=today)
    assert (report.counts.updated, report.counts.differing) == (5, 1)
    rows = table_rows(receiver.engine, "SELECT id, city, _aljex_synced_at FROM customers")
    as_of = {r["id"]: r["_aljex_synced_at"] for r in rows}  # C0 keeps yesterday's time
    assert {key for key, synced_at in as_of.items() if synced_at != as_of["C0"]} == {"C3"}
    assert {r["id"]: r["city"] for r in rows}["C3"] == "Camden"


def test_an_unchanged_row_live_sync_wrote_gets_the_files_hash_and_nothing_else(service, tmp_path):
    """Live sync clears a row's hash; a file with the same values leaves the row as it
    is but gives it the hash back (SQLite), so that the next file finds it unchanged."""
    header = ["id", "name", "city"]
    loader = loader_of(service)
    loader.load(write_csv(tmp_path / "Customers.csv", header, customers(3)))
    live_post(
        service, web_sync_table_name="customers", web_sync_action="update", id="C1", city="Newark"
    )
    engine = service.engine()
    query = "SELECT _aljex_row_hash AS h, _aljex_synced_at AS at FROM customers WHERE id = 'C1'"
    (before,) = table_rows(engine, query)
    assert before["h"] is None
    later = utcnow() + timedelta(hours=1)
    report = loader.load(tmp_path / "Customers.csv", force=True, started_at=later)
    assert report.status == "loaded" and report.counts.differing == 0
    (after,) = table_rows(engine, query)
    engine.dispose()
    assert after["at"] == before["at"]  # not rewritten: live sync's time stays
    hashed = service.settings.database.url.startswith("sqlite")
    assert (after["h"] is not None) == hashed
    assert report.counts.rehashed == (1 if hashed else 0)


def test_a_row_live_sync_changed_before_the_export_is_rewritten_with_the_files_values(
    service, tmp_path
):
    """Live sync's write clears the row's hash: the same file again must still win."""
    header = ["id", "name", "city"]
    loader = loader_of(service)
    loader.load(write_csv(tmp_path / "Customers.csv", header, customers(3)))
    live_post(
        service, web_sync_table_name="customers", web_sync_action="update", id="C1", city="Trenton"
    )
    later = utcnow() + timedelta(hours=1)
    report = loader.load(tmp_path / "Customers.csv", force=True, started_at=later)
    assert report.status == "loaded" and report.counts.differing == 1
    engine = service.engine()
    assert table_rows(engine, "SELECT city FROM customers WHERE id = 'C1'") == [{"city": "Newark"}]
    engine.dispose()


@pytest.mark.parametrize("looked_up", ["in one scan", "per batch"])
def test_a_row_live_sync_changes_while_the_file_is_staged_gets_the_files_values(
    service, tmp_path, caplog, monkeypatch, looked_up
):
    """On SQLite the row was staged as unchanged: the loader stages the file again.

    Unchanged rows are found by the hashes the table holds: read in one scan, or per batch
    for a table too big to hold them all in memory; the outcome is the same."""
    if looked_up == "per batch":
        monkeypatch.setattr(stage, "LOOKUP_MAP_ROWS", 100)
    header = ["id", "name", "city"]
    loader = loader_of(service)
    path = write_csv(tmp_path / "Customers.csv", header, customers(1200))
    loader.load(path, started_at=utcnow() - timedelta(days=1))
    posted: list[int] = []

    def progress(bytes_read: int, rows: int) -> None:
        if not posted:  # the first batch, with C0, is staged: live sync changes C0 now
            live_post(
                service,
                web_sync_table_name="customers",
                web_sync_action="update",
                id="C0",
                city="X",
            )
            posted.append(rows)

    caplog.set_level(logging.INFO, logger="aljex_sync.morning")
    report = loader.load(
        path, force=True, started_at=utcnow() + timedelta(hours=1), progress=progress
    )
    assert report.status == "loaded" and report.rows_read == 1200 and report.counts.differing == 1
    engine = service.engine()
    assert table_rows(engine, "SELECT city FROM customers WHERE id = 'C0'") == [{"city": "Newark"}]
    engine.dispose()
    if service.settings.database.url.startswith("sqlite"):
        assert "staging every row again" in caplog.text
