"""The Aljex-side emulator: a real feed into a real receiver, checked field by field."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from aljex_sync.catalog import key_for
from aljex_sync.emulate.brokerage import MORNING_TABLES, Brokerage
from aljex_sync.emulate.commands import emulate
from aljex_sync.emulate.morning import SftpTarget, upload_morning, write_morning_csvs
from aljex_sync.emulate.sender import LiveOptions, LiveReport, LiveTarget, encode_change, run_live
from aljex_sync.emulate.state import (
    EmulatorError,
    EmulatorState,
    LiveRun,
    MorningUpload,
    load_state,
)
from aljex_sync.emulate.verify import expected_records, verify
from aljex_sync.emulate.world import LiveChange

from .support import (
    SFTP_PASSWORD,
    SFTP_USER,
    TEST_PASSWORD,
    RunningInbox,
    RunningService,
    make_settings,
    needs_ipv6,
    sftp_settings,
)

SEED = 7
TODAY = date(2026, 11, 27)
COUNT = 150


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(emulate, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def new_state(tmp_path: Path) -> EmulatorState:
    return load_state(tmp_path / "state.json", seed=SEED, today=TODAY, size="tiny")


def send(
    receiver: RunningService, state: EmulatorState, count: int = COUNT, **options: Any
) -> LiveReport:
    target = LiveTarget(receiver.url, "aljex", TEST_PASSWORD)
    return run_live(state, target, LiveOptions(count=count, **options))


def sqlite_path(receiver: RunningService) -> str:
    return receiver.settings.database.url.removeprefix("sqlite:///")


def execute(engine: Engine, sql: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), params)


@pytest.fixture
def receiver(database_url: str, tmp_path: Path) -> Iterator[RunningService]:
    with RunningService(make_settings(database_url, tmp_path)) as running:
        yield running


@pytest.fixture
def sqlite_receiver(sqlite_url: str, tmp_path: Path) -> Iterator[RunningService]:
    with RunningService(make_settings(sqlite_url, tmp_path)) as running:
        yield running


@pytest.fixture
def engine(sqlite_receiver: RunningService) -> Iterator[Engine]:
    engine = sqlite_receiver.engine()
    yield engine
    engine.dispose()


# -- the wire ------------------------------------------------------------------------------


def test_body_is_the_documents_example_form_urlencoded_with_table_and_action_first():
    change = LiveChange(
        "employees", "create", {"id": "demo", "name": "Bill Smith", "email": "bill@aljex.com"}
    )
    assert encode_change(change) == (
        b"web_sync_table_name=employees&web_sync_action=create"
        b"&id=demo&name=Bill+Smith&email=bill%40aljex.com"
    )


def test_cp1252_records_are_percent_encoded_from_cp1252_bytes_and_others_from_utf8():
    note = {"id": "1", "name": "Café", "notes": "Dock 3 & 4\r\n5% + $25"}
    assert encode_change(LiveChange("carriers", "update", note, "cp1252")).endswith(
        b"&name=Caf%E9&notes=Dock+3+%26+4%0D%0A5%25+%2B+%2425"
    )
    assert b"&name=Caf%C3%A9&" in encode_change(LiveChange("carriers", "update", note))


# -- the live feed into a real receiver ----------------------------------------------------


@pytest.mark.backend
def test_live_feed_leaves_the_receiver_exactly_as_the_brokerage(receiver, tmp_path):
    state = new_state(tmp_path)
    report = send(receiver, state)
    assert (report.posted, report.delivered, report.failed, report.problems) == (
        COUNT,
        COUNT,
        0,
        {},
    )
    assert report.ok
    result = verify(receiver.settings.database.url, state)
    assert result.ok, result.examples
    assert sum(t.expected_rows for t in result.tables) > 50
    assert result.table("loads").actual_rows == result.table("loads").expected_rows


def test_the_state_file_is_saved_and_a_second_run_continues_the_feed(sqlite_receiver, tmp_path):
    state_file = str(tmp_path / "state.json")
    common = ("--password", TEST_PASSWORD, "--state", state_file)
    new = ("--seed", str(SEED), "--today", TODAY.isoformat(), "--size", "tiny")
    code, out = invoke("live", "--url", sqlite_receiver.url, "--count", "80", *common, *new)
    assert code == 0, out
    assert "changes made" in out
    code, out = invoke("live", "--url", sqlite_receiver.url, "--count", "70", *common)
    assert code == 0, out

    saved = json.loads(Path(state_file).read_text())
    assert (saved["seed"], saved["today"], saved["size"]) == (SEED, "2026-11-27", "tiny")
    assert [(e["kind"], e["first"], e["count"]) for e in saved["events"]] == [
        ("live", 0, 80),
        ("live", 80, 70),
    ]
    assert saved["changes"] == 150
    code, out = invoke(
        "verify", "--db", sqlite_receiver.settings.database.url, "--state", state_file
    )
    assert code == 0, out
    assert "no differences" in out


def test_a_continued_feed_is_the_same_feed_as_one_long_run(tmp_path):
    """Two runs of 80 and 70 make the same brokerage as one of 150: the oracle can replay."""
    state = new_state(tmp_path)
    state.events += [LiveRun(0, 80), LiveRun(80, 70)]
    one_run = Brokerage(SEED, today=TODAY, size="tiny")
    for _ in range(150):
        one_run.next_change()
    continued = state.brokerage()
    assert continued.now == one_run.now
    for table in one_run.tables():
        assert continued.records(table) == one_run.records(table)


def test_a_cp1252_record_arrives_decoded(sqlite_receiver, engine, tmp_path):
    brokerage = Brokerage(SEED, today=TODAY, size="tiny")
    changes = [brokerage.next_change() for _ in range(COUNT)]
    accented = [
        c for c in changes if c.charset == "cp1252" and c.action != "delete" and c.table != "loads"
    ]
    assert accented, "the seed should send a cp1252 record early"
    change = accented[-1]
    field, value = next((f, v) for f, v in change.fields.items() if not v.isascii())
    body = encode_change(change)
    assert f"={quote_plus(value, encoding='cp1252')}&".encode() in body
    assert quote_plus(value).encode() not in body  # not UTF-8

    state = new_state(tmp_path)
    assert send(sqlite_receiver, state).delivered == COUNT
    [key_field] = key_for(change.table)
    with engine.connect() as conn:
        stored = conn.execute(
            text(f"SELECT {field} FROM {change.table} WHERE {key_field} = :key"),
            {"key": change.fields[key_field]},
        ).scalar_one()
    assert stored == state.brokerage().records(change.table)[(change.fields[key_field],)][field]
    assert not stored.isascii()


def test_tables_option_sends_only_those_tables_but_moves_the_feed_on(
    sqlite_receiver, engine, tmp_path
):
    state = new_state(tmp_path)
    report = send(sqlite_receiver, state, 60, tables=frozenset({"loads", "customers"}))
    assert report.posted == report.delivered == 60
    assert report.skipped > 0
    assert state.changes == report.generated == 60 + report.skipped
    with engine.connect() as conn:
        made = {row[0] for row in conn.execute(text("SELECT table_name FROM _aljex_tables"))}
    assert made == {"loads", "customers"}
    result = verify(sqlite_receiver.settings.database.url, state)
    assert [t.table for t in result.tables] == ["customers", "loads"]
    assert result.ok, result.examples


def test_concurrent_senders_keep_each_records_changes_in_order(sqlite_receiver, tmp_path):
    state = new_state(tmp_path)
    report = send(sqlite_receiver, state, 300, concurrency=4)
    assert report.delivered == 300
    result = verify(sqlite_receiver.settings.database.url, state)
    assert result.ok, result.examples


def test_a_503_is_retried_until_the_receiver_can_store_it(sqlite_url, tmp_path):
    settings = make_settings(sqlite_url, tmp_path, database={"timeout": 0.3})
    with RunningService(settings) as running:
        state = new_state(tmp_path)
        assert send(running, state, 5).delivered == 5  # the tables exist before the lock
        blocker = sqlite3.connect(
            sqlite_path(running), isolation_level=None, check_same_thread=False
        )
        blocker.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(1.0, blocker.execute, ("ROLLBACK",))
        release.start()
        try:
            report = send(running, state, 20, retries=6)
        finally:
            release.join()
            blocker.close()
        assert report.problems.get("503", 0) >= 1
        assert report.retries >= 1
        assert (report.delivered, report.failed) == (20, 0)
        assert any("database unavailable" in reason for reason in report.reasons)
        result = verify(running.settings.database.url, state)
        assert result.ok, result.examples


def test_a_refused_password_stops_the_run_and_nothing_counts_as_delivered(
    sqlite_receiver, tmp_path
):
    state_file = str(tmp_path / "state.json")
    code, out = invoke(
        "live",
        "--url",
        sqlite_receiver.url,
        "--password",
        "wrong",
        "--count",
        "50",
        "--state",
        state_file,
        "--size",
        "tiny",
    )
    assert code == 1
    assert "401 wrong username or password" in out
    state = load_state(Path(state_file))
    [run] = state.events
    assert isinstance(run, LiveRun)
    assert run.count > 0
    assert run.undelivered == list(range(run.count))
    assert all(not records for records in expected_records(state).values())


def test_unreachable_receiver_fails_every_change_after_its_retries(tmp_path):
    state = new_state(tmp_path)
    target = LiveTarget("http://127.0.0.1:9/aljex/sync", "aljex", "x", timeout=2)
    report = run_live(state, target, LiveOptions(count=3, retries=1, backoff=0.01))
    assert (report.delivered, report.failed, report.retries) == (0, 3, 3)
    assert report.problems == {"ConnectionRefusedError": 6}
    assert state.events == [LiveRun(0, 3, undelivered=[0, 1, 2], url=target.url,
                                     started_at=state.events[0].started_at)]  # fmt: skip


# -- verify --------------------------------------------------------------------------------


def test_verify_finds_a_missing_row_an_extra_row_and_a_differing_field(
    sqlite_receiver, engine, tmp_path
):
    state = new_state(tmp_path)
    send(sqlite_receiver, state)
    url = sqlite_receiver.settings.database.url
    expected = expected_records(state)
    load_id = sorted(expected["loads"])[0][0]
    carrier_id = sorted(expected["carriers"])[0][0]
    customer_id = sorted(expected["customers"])[0][0]
    execute(engine, "DELETE FROM loads WHERE id = :id", id=load_id)
    execute(engine, "INSERT INTO spots (spot_number) VALUES ('no-such-spot')")
    execute(engine, "UPDATE carriers SET phone = 'tampered' WHERE id = :id", id=carrier_id)
    execute(
        engine,
        "UPDATE customers SET _aljex_deleted_at = '2026-01-01' WHERE id = :id",
        id=customer_id,
    )

    result = verify(url, state)
    counts = {t.table: (t.missing, t.extra, t.differing) for t in result.tables if t.differences}
    assert counts == {
        "loads": (1, 0, 0),
        "spots": (0, 1, 0),
        "carriers": (0, 0, 1),
        "customers": (1, 0, 0),  # soft-deleted: as good as gone
    }
    [differs] = result.table("carriers").examples
    phone = expected["carriers"][(carrier_id,)]["phone"]
    assert (differs.kind, differs.key, differs.fields) == (
        "differs",
        (carrier_id,),
        (("phone", phone, "tampered"),),
    )
    assert [(d.kind, d.key) for d in result.table("spots").examples] == [
        ("extra", ("no-such-spot",))
    ]
    assert result.differences == 4

    code, out = invoke("verify", "--db", url, "--state", str(state.path), "--show", "2")
    assert code == 1
    assert "4 differences" in out
    assert "First 2 differences" in out


def test_verify_of_an_empty_database_finds_every_row_missing(sqlite_url, tmp_path):
    state = new_state(tmp_path)
    state.events.append(LiveRun(0, 50))
    result = verify(sqlite_url, state)
    assert result.differences == sum(t.expected_rows for t in result.tables) > 0
    assert all(t.actual_rows == 0 for t in result.tables)


# -- the oracle ----------------------------------------------------------------------------


def test_expected_records_are_the_brokerages_latest_versions_of_what_was_sent(tmp_path):
    state = new_state(tmp_path)
    state.events.append(LiveRun(0, 400))
    brokerage = Brokerage(SEED, today=TODAY, size="tiny")
    sent: dict[str, set[tuple[str, ...]]] = {}
    deleted: set[tuple[str, tuple[str, ...]]] = set()
    for _ in range(400):
        change = brokerage.next_change()
        key = tuple(change.fields[f] for f in key_for(change.table))
        sent.setdefault(change.table, set()).add(key)
        if change.action == "delete":
            deleted.add((change.table, key))
    expected = expected_records(state)
    assert deleted, "the feed should delete something"
    for table_name, records in expected.items():
        truth = brokerage.records(table_name)
        alive = {k for k in sent.get(table_name, set()) if (table_name, k) not in deleted}
        assert set(records) == alive
        assert all(records[k] == truth[k] for k in records)


def test_a_change_never_acknowledged_is_not_expected(tmp_path):
    brokerage = Brokerage(SEED, today=TODAY, size="tiny")
    changes = [brokerage.next_change() for _ in range(100)]
    index = next(i for i, c in enumerate(changes) if c.table == "new_purchases")
    key = (changes[index].fields["id"],)
    state = new_state(tmp_path)
    state.events.append(LiveRun(0, 100))
    assert key in expected_records(state)["new_purchases"]
    state.events[0] = LiveRun(0, 100, undelivered=[index])
    assert key not in expected_records(state)["new_purchases"]


def test_a_full_morning_file_is_the_whole_table_and_a_window_file_only_adds(tmp_path):
    later = TODAY + timedelta(days=10)  # the loads delivered today are out of the window
    state = new_state(tmp_path)
    state.events += [
        LiveRun(0, 150, tables=["quotes", "loads"]),
        MorningUpload(150, later, ["employees", "loads"]),
        LiveRun(150, 50, tables=["quotes"]),
    ]
    brokerage = Brokerage(SEED, today=TODAY, size="tiny")
    for _ in range(150):
        brokerage.next_change()
    morning_loads = {(r["id"],) for r in brokerage.morning_records("loads", later)}
    expected = expected_records(state)
    assert list(expected) == ["employees", "loads", "quotes"]
    assert expected["employees"] == brokerage.records("employees")
    assert morning_loads < set(expected["loads"])  # the loads sent live stay
    assert set(expected["loads"]) <= set(brokerage.records("loads"))


def test_the_state_file_round_trips_and_refuses_another_brokerage(tmp_path):
    state = new_state(tmp_path)
    state.events += [LiveRun(0, 10, ["loads"], [3]), MorningUpload(10, TODAY, ["employees"])]
    state.save()
    again = load_state(tmp_path / "state.json")
    assert (again.seed, again.today, again.size, again.events) == (
        SEED,
        TODAY,
        "tiny",
        state.events,
    )
    assert load_state(tmp_path / "state.json", seed=SEED).changes == 10
    with pytest.raises(EmulatorError, match="--seed 7, not 8"):
        load_state(tmp_path / "state.json", seed=8)
    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(EmulatorError, match="not a readable emulator state"):
        load_state(tmp_path / "state.json")


def test_unknown_tables_are_refused_with_the_known_ones(tmp_path):
    with pytest.raises(EmulatorError, match="unknown table nope; expected some of employees"):
        LiveOptions(tables=frozenset({"nope"}))
    state = str(tmp_path / "state.json")
    code, out = invoke("verify", "--db", "sqlite://", "--state", state, "--tables", "nope")
    assert code == 2  # the state file does not exist: click refuses it before anything
    code, out = invoke("morning", "--out", str(tmp_path), "--tables", "spots", "--state", state)
    assert code == 1
    assert "unknown table spots" in out
    assert not (tmp_path / "state.json").exists()


def test_count_and_duration_together_are_refused(tmp_path):
    args = ["--url", "http://127.0.0.1:9/", "--password", "p", "--count", "1", "--duration", "1"]
    code, out = invoke("live", *args, "--state", str(tmp_path / "state.json"))
    assert code == 1
    assert "give --count or --duration, not both" in out


# -- the morning files ---------------------------------------------------------------------


def morning_out(tmp_path: Path, *, changes_sent: int) -> tuple[EmulatorState, Path]:
    """A state after ``changes_sent`` live changes, and its morning files written by
    ``emulate morning --out`` into a folder of their own."""
    state = new_state(tmp_path)
    state.events.append(LiveRun(0, changes_sent))
    state.save()
    out = tmp_path / "out"
    code, output = invoke("morning", "--out", str(out), "--state", str(state.path))
    assert code == 0, output
    return state, out


def morning_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_morning_out_writes_the_files_of_the_brokerage_as_the_feed_left_it(tmp_path):
    state, out = morning_out(tmp_path, changes_sent=120)

    reference = tmp_path / "reference"
    brokerage = state.brokerage()
    write_morning_csvs(brokerage, brokerage.now.date(), reference)
    assert morning_files(out) == morning_files(reference)
    assert len(morning_files(out)) == len(MORNING_TABLES)
    assert "Loads_20261127.csv" in morning_files(out)
    assert load_state(state.path).events == state.events  # nothing was sent


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[RunningInbox]:
    server = RunningInbox(sftp_settings(tmp_path / "inbox", tmp_path / "keys" / "host_key"))
    yield server
    server.stop()


def test_morning_upload_arrives_byte_identical_to_the_out_files_with_its_mtime(inbox, tmp_path):
    state, out = morning_out(tmp_path, changes_sent=60)

    target = SftpTarget("127.0.0.1", inbox.port, SFTP_USER, SFTP_PASSWORD, "/")
    report = upload_morning(state, target)
    uploads = {u.name: u for u in (inbox.next_upload() for _ in report.files)}
    assert {name: u.path.read_bytes() for name, u in uploads.items()} == morning_files(out)
    assert report.host_key == inbox.fingerprint
    for file in report.files:
        mtime = uploads[file.name].mtime
        assert mtime is not None
        assert int(mtime.timestamp()) == int(file.mtime)
        assert abs((datetime.now(UTC) - mtime).total_seconds()) < 60
    event = load_state(state.path).events[-1]
    assert isinstance(event, MorningUpload)
    assert (event.position, event.day, event.tables) == (60, report.day, list(MORNING_TABLES))


def test_morning_command_uploads_and_prints_the_host_key(inbox, tmp_path):
    state_file = str(tmp_path / "state.json")
    code, out = invoke(
        "morning",
        "--sftp",
        f"127.0.0.1:{inbox.port}",
        "--user",
        SFTP_USER,
        "--password",
        SFTP_PASSWORD,
        "--tables",
        "employees,payable",
        "--state",
        state_file,
        "--size",
        "tiny",
        "--today",
        TODAY.isoformat(),
    )
    assert code == 0, out
    assert f"server host key: {inbox.fingerprint}" in out
    names = {inbox.next_upload().name, inbox.next_upload().name}
    assert names == {"Employees_20261127.csv", "Payable_20261127.csv"}
    [event] = load_state(Path(state_file)).events
    assert isinstance(event, MorningUpload)
    assert event.tables == ["employees", "payable"]


@needs_ipv6
def test_an_ipv6_server_is_named_with_its_address_in_brackets(tmp_path):
    state = new_state(tmp_path)
    with socket.socket(socket.AF_INET6) as closed:  # bound, never listening: refused
        closed.bind(("::1", 0))
        port = closed.getsockname()[1]
        target = SftpTarget("::1", port, SFTP_USER, SFTP_PASSWORD, "/", timeout=5)
        with pytest.raises(EmulatorError, match=rf"SFTP upload to aljex@\[::1\]:{port}/ failed"):
            upload_morning(state, target)
    assert state.events == []


def test_a_refused_sftp_login_is_an_error_and_records_nothing(inbox, tmp_path):
    state = new_state(tmp_path)
    target = SftpTarget("127.0.0.1", inbox.port, SFTP_USER, "wrong", "/")
    with pytest.raises(EmulatorError, match=r"SFTP upload to aljex@127\.0\.0\.1"):
        upload_morning(state, target)
    assert state.events == []
    assert not (tmp_path / "state.json").exists()
