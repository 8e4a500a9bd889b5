"""`events`, `files`, `prune` and `check`: the library and the commands, on every backend."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import inspect, update

from aljex_sync import journal_query, preflight, retention
from aljex_sync.cli import main
from aljex_sync.journal import Journal
from aljex_sync.sftp_settings import host_key_fingerprint
from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import events, utcnow

from .admin_support import a_day, count_events
from .support import TEST_PASSWORD, RunningService, make_settings


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def write_config(tmp_path: Path, database_url: str, extra: str = "") -> Path:
    path = tmp_path / "aljex-sync.toml"
    path.write_text(
        f"""[database]
url = "{database_url}"
[live]
listen = "127.0.0.1:0"
password = "{TEST_PASSWORD}"
[morning]
listen = "127.0.0.1:0"
password = "{TEST_PASSWORD}"
inbox = "inbox"
host_key = "host_key"
{extra}"""
    )
    return path


@pytest.fixture
def a_day_in(database_url: str, tmp_path: Path) -> Path:
    """A config on a database holding admin_support's small day of both feeds."""
    with RunningService(make_settings(database_url, tmp_path)) as running:
        a_day(running, tmp_path)
    return write_config(tmp_path, database_url)


def age_every_event(database_url: str, days: int) -> None:
    engine = open_engine(database_url)
    with engine.begin() as conn:
        conn.execute(update(events).values(received_at=utcnow() - dt.timedelta(days=days)))
    engine.dispose()


# -- events and files -------------------------------------------------------------------------


def test_events_lists_held_records_with_their_reason_in_80_columns(a_day_in):
    code, out = run("-c", str(a_day_in), "events", "--status", "held")
    assert code == 0, out
    assert "invoicing" in out and "held" in out and "pro_num" in out
    assert "employees" not in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_events_filters_by_table_and_time_and_prints_json(a_day_in):
    code, out = run("-c", str(a_day_in), "events", "--table", "employees", "--json")
    assert code == 0, out
    found = json.loads(out)
    assert [e["status"] for e in found] == ["applied"] * 4
    assert {e["table"] for e in found} == {"employees"}
    assert [e["id"] for e in found] == sorted((e["id"] for e in found), reverse=True)
    code, out = run("-c", str(a_day_in), "events", "--since", "1h", "--json")
    assert len(json.loads(out)) == 6  # 4 applied, 1 held, 1 rejected
    future = (utcnow() + dt.timedelta(hours=1)).isoformat(timespec="minutes")
    code, out = run("-c", str(a_day_in), "events", "--since", future)
    assert code == 0 and "No events match." in out
    code, out = run("-c", str(a_day_in), "events", "--status", "rejected", "--json")
    (rejected,) = json.loads(out)
    assert rejected["action"] == "explode" and "explode" in rejected["reason"]


ODD_BODIES = [  # what Aljex may send oddly: accepted, with a warning in the journal
    b"web_sync_table_name=loads&web_sync_action=create&id=L1&name=a&name=b",
    b"web_sync_table_name=loads&web_sync_action=create&id=L2&City=Reno&city=Elko",
    b"web_sync_table_name=carriers&web_sync_action=create&id=C1&name=caf%C3%A9%FF",
    b"web_sync_table_name=loads&web_sync_action=create&id=L3&name=plain",
]


@pytest.fixture
def odd_requests_in(database_url: str, tmp_path: Path) -> Path:
    """A config on a database whose journal holds three requests with warnings, one without."""
    with RunningService(make_settings(database_url, tmp_path)) as running:
        for body in ODD_BODIES:
            reply = httpx.post(
                running.url,
                content=body,
                auth=("aljex", TEST_PASSWORD),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
    return write_config(tmp_path, database_url)


def test_events_json_shows_each_requests_warnings(odd_requests_in):
    code, out = run("-c", str(odd_requests_in), "events", "--json")
    assert code == 0, out
    by_key = {e["key"]: e for e in json.loads(out)}
    assert by_key["L1"]["warnings"] == ["field 'name' was sent more than once; the last value won"]
    assert "field 'city' was also sent as 'City'" in by_key["L2"]["warnings"][0]
    assert "1 name(s) or value(s) were not all UTF-8" in by_key["C1"]["warnings"][0]
    assert by_key["L3"]["warnings"] == []
    assert {e["status"] for e in by_key.values()} == {"applied"}


def test_events_shows_warnings_under_the_reason_in_80_columns(odd_requests_in):
    code, out = run("-c", str(odd_requests_in), "events")
    assert code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80
    text = " ".join(out.replace("│", " ").split())
    assert "warning: field 'name' was sent more than once; the last value won" in text
    assert "warning: 1 name(s) or value(s) were not all UTF-8" in text


def test_events_with_warnings_lists_only_requests_with_warnings(odd_requests_in):
    code, out = run("-c", str(odd_requests_in), "events", "--with-warnings", "--json")
    assert code == 0, out
    assert sorted(e["key"] for e in json.loads(out)) == ["C1", "L1", "L2"]


def test_status_counts_requests_with_warnings_per_table(odd_requests_in):
    code, out = run("-c", str(odd_requests_in), "status", "--json")
    assert code == 0, out
    found = json.loads(out)["warnings"]
    assert [(w["table"], w["count"]) for w in found] == [("carriers", 1), ("loads", 2)]
    code, out = run("-c", str(odd_requests_in), "status")
    assert code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80
    text = " ".join(out.split())
    section = text.split("Requests with warnings")[1]
    assert "│ carriers │ 1 │" in section and "│ loads │ 2 │" in section
    assert "aljex-sync events --with-warnings" in section


def test_events_refuses_a_since_too_far_back_or_a_limit_below_one_in_one_line(a_day_in):
    code, out = run("-c", str(a_day_in), "events", "--since", "99999999d")
    assert code == 1
    assert out.startswith("error: --since '99999999d': ") and out.count("\n") == 1, out
    for command in ("events", "files"):
        code, out = run("-c", str(a_day_in), command, "--limit", "-1")
        assert code == 2 and "--limit" in out, out


def test_files_lists_morning_files_with_why_they_were_not_loaded(a_day_in):
    code, out = run("-c", str(a_day_in), "files", "--status", "failed", "--json")
    assert code == 0, out
    (failed,) = json.loads(out)
    assert failed["name"] == "Carriers.csv" and "3 fields" in failed["reason"]
    code, out = run("-c", str(a_day_in), "files")
    assert "Customers.csv" in out and "loaded" in out and "Carriers.csv" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_since_reads_durations_and_utc_times():
    now = dt.datetime(2026, 3, 2, 12, 0)
    assert journal_query.parse_since("90m", now) == dt.datetime(2026, 3, 2, 10, 30)
    assert journal_query.parse_since("3d", now) == dt.datetime(2026, 2, 27, 12, 0)
    assert journal_query.parse_since("2026-03-01T06:30", now) == dt.datetime(2026, 3, 1, 6, 30)
    assert journal_query.parse_since("2026-03-01T06:30-06:00", now) == dt.datetime(
        2026, 3, 1, 12, 30
    )
    with pytest.raises(journal_query.BadSince):
        journal_query.parse_since("yesterday", now)


@pytest.mark.parametrize("command", ["events", "files", "prune"])
def test_read_only_commands_create_nothing_where_aljex_sync_never_ran(tmp_path, command):
    database = tmp_path / "nothing.db"
    config = write_config(tmp_path, f"sqlite:///{database}")
    code, out = run("-c", str(config), command, *(["--dry-run"] if command == "prune" else []))
    assert code == 1
    assert "no aljex-sync tables here" in out
    assert not database.exists()


# -- prune ------------------------------------------------------------------------------------


def test_prune_removes_old_applied_events_in_batches_and_keeps_held_and_rejected(
    database_url, tmp_path
):
    with RunningService(make_settings(database_url, tmp_path)) as running:
        a_day(running, tmp_path)
    age_every_event(database_url, 40)
    engine = open_engine(database_url)
    try:
        assert retention.prune(engine, 30, dry_run=True).removed == 4
        assert count_events(engine) == 6
        assert retention.prune(engine, 30, batch=3).removed == 4
        assert sorted(r.status for r in _statuses(engine)) == ["held", "rejected"]
        assert retention.prune(engine, 30).removed == 0
        # A replay that applies the held record makes it prunable.
        fixed = make_settings(database_url, tmp_path, tables={"invoicing": {"key": ["id"]}})
        journal = Journal(open_engine(database_url), fixed)
        try:
            assert [o.status for o in journal.replay()] == ["applied"]
        finally:
            journal.close()
        assert retention.prune(engine, 30).removed == 1
        assert [r.status for r in _statuses(engine)] == ["rejected"]
    finally:
        engine.dispose()


def _statuses(engine):
    with engine.connect() as conn:
        return conn.execute(events.select()).all()


def test_prune_command_says_what_it_removed(database_url, tmp_path):
    with RunningService(make_settings(database_url, tmp_path)) as running:
        a_day(running, tmp_path)
    age_every_event(database_url, 10)
    config = write_config(tmp_path, database_url)
    code, out = run("-c", str(config), "prune", "--dry-run")
    assert code == 0 and out.startswith("Would remove 0 applied events")  # keep_days = 30
    code, out = run("-c", str(config), "prune", "--keep-days", "7", "--dry-run")
    assert out.startswith("Would remove 4 applied events")
    code, out = run("-c", str(config), "prune", "--keep-days", "7")
    assert code == 0 and out.startswith("Removed 4 applied events")
    assert "(7 days kept)" in out


def test_serve_prunes_at_start_and_logs_what_it_removed(database_url, tmp_path, caplog):
    settings = make_settings(database_url, tmp_path, journal={"keep_days": 30})
    with RunningService(settings) as running:
        a_day(running, tmp_path)
    age_every_event(database_url, 40)
    caplog.clear()
    with caplog.at_level(logging.INFO, "aljex_sync.retention"), RunningService(settings):
        deadline = time.monotonic() + 60
        while not any("pruned" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no prune logged"
            time.sleep(0.05)
    (line,) = [r.getMessage() for r in caplog.records if "pruned" in r.getMessage()]
    assert line.startswith("journal: pruned 4 applied events received before")
    engine = open_engine(database_url)
    assert count_events(engine) == 2
    engine.dispose()


# -- check ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_passes_and_leaves_no_table_behind(database_url, tmp_path):
    with RunningService(make_settings(database_url, tmp_path)):
        pass  # the tables exist, as they do once serve has run
    engine = open_engine(database_url)
    before = set(inspect(engine).get_table_names())
    config = write_config(tmp_path, database_url)
    (tmp_path / "host_key").unlink()  # as on a new machine: serve will make it
    code, out = run("-c", str(config), "check")
    assert code == 0, out
    assert out.startswith("ok: ")
    assert "ok: database" in out and "ok: host key" in out
    assert set(inspect(engine).get_table_names()) == before
    engine.dispose()
    assert not (tmp_path / "host_key").exists()  # not even the key it would create


@pytest.mark.backend
def test_check_says_when_a_serve_already_runs_on_the_sqlite_database_or_the_inbox(
    database_url, tmp_path
):
    config = write_config(tmp_path, database_url)
    with RunningService(make_settings(database_url, tmp_path)):
        code, out = run("-c", str(config), "check")
    # On SQLite the database is what the second serve is refused on first; on a database
    # server, several receivers are fine, each with an inbox of its own.
    used = database_url if database_url.startswith("sqlite") else f"the inbox {tmp_path / 'inbox'}"
    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert problems == [
        f"problem: another aljex-sync serve (pid {os.getpid()}) is already using {used};"
        " stop it first"
    ]
    code, out = run("-c", str(config), "check")  # stopped: nothing holds them any more
    assert code == 0, out
    assert "ok: no other aljex-sync serve on " in out


def test_check_prints_one_line_per_problem_and_exits_1(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    (tmp_path / "host_key").write_text("not a key")
    config = write_config(tmp_path, "postgresql://nobody@127.0.0.1:1/none")
    text = config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"', 1)
    config.write_text(text)
    try:
        code, out = run("-c", str(config), "check")
    finally:
        taken.close()
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert lines[0].startswith(
        "problem: database.url: cannot reach postgresql+psycopg://nobody@127.0.0.1:1/none: "
    )
    assert lines[1] == (
        f"problem: live.listen: cannot listen on 127.0.0.1:{port}: Address already in use"
        " (is aljex-sync already running?)"
    )
    assert lines[2].startswith("problem: morning.host_key: cannot read")


def test_check_reports_a_config_or_environment_typo_as_its_one_problem(tmp_path, monkeypatch):
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'a.db'}")
    monkeypatch.setenv("ALJEX_SYNC_LIVE_LISTN", "127.0.0.1:9")
    code, out = run("-c", str(config), "check")
    assert code == 1
    assert out == (
        "problem: ALJEX_SYNC_LIVE_LISTN: unknown setting in the environment;"
        " did you mean ALJEX_SYNC_LIVE_LISTEN?\n"
    )


def test_check_finds_a_missing_sqlite_file_fine_and_does_not_create_it(tmp_path):
    database = tmp_path / "later.db"
    config = write_config(tmp_path, f"sqlite:///{database}")
    code, out = run("-c", str(config), "check")
    assert code == 0, out
    assert not database.exists()


def test_check_finds_a_sqlite_file_in_a_folder_that_does_not_exist_a_problem(tmp_path):
    """serve makes the SQLite file, not its folder: check must not say ok to what fails."""
    database = tmp_path / "no" / "such" / "aljex.db"
    config = write_config(tmp_path, f"sqlite:///{database}")
    code, out = run("-c", str(config), "check")
    assert code == 1
    assert out.splitlines()[0] == (
        f"problem: database.url: the folder {database.parent} does not exist; make it first"
    )


def test_check_makes_the_inbox_and_key_folders_as_serve_would_and_leaves_none_behind(
    tmp_path, monkeypatch
):
    inbox, key = tmp_path / "new" / "deep" / "inbox", tmp_path / "keys" / "host_key"
    monkeypatch.setenv("ALJEX_SYNC_MORNING_INBOX", str(inbox))
    monkeypatch.setenv("ALJEX_SYNC_MORNING_HOST_KEY", str(key))
    code, out = run("-c", str(write_config(tmp_path, f"sqlite:///{tmp_path / 'a.db'}")), "check")
    assert code == 0, out
    assert f"ok: inbox {inbox}\n" in out
    assert (
        f"ok: host key {key} does not exist: serve will create it, and Aljex must be given"
        " its new fingerprint\n"
    ) in out
    assert not (tmp_path / "new").exists() and not (tmp_path / "keys").exists()


def test_check_finds_an_inbox_in_the_place_of_a_file_a_problem(tmp_path, monkeypatch):
    (tmp_path / "inbox").write_text("a file, not a folder\n")
    code, out = run("-c", str(write_config(tmp_path, f"sqlite:///{tmp_path / 'a.db'}")), "check")
    assert code == 1
    assert out.splitlines() == [f"problem: morning.inbox: {tmp_path / 'inbox'} is not a folder"]


def test_check_shows_the_fingerprint_of_an_existing_host_key(tmp_path):
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'a.db'}")
    fingerprint = host_key_fingerprint(tmp_path / "host_key")
    code, out = run("-c", str(config), "check")
    assert code == 0, out
    assert f"ok: host key {tmp_path / 'host_key'}, fingerprint {fingerprint}\n" in out


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"], ids=["empty", "memory"])
def test_check_refuses_an_in_memory_sqlite_database(tmp_path, url):
    code, out = run("-c", str(write_config(tmp_path, url)), "check")
    assert code == 1
    assert out.splitlines()[0].startswith("problem: database.url: an in-memory SQLite database")


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_check_loads_tls_files_when_the_settings_have_them(tmp_path):
    cert, key = self_signed(tmp_path, "one")
    _, other_key = self_signed(tmp_path, "two")

    def tls(cert_path: object, key_path: object) -> object:
        return preflight.check_tls(
            SimpleNamespace(live=SimpleNamespace(tls_cert=cert_path, tls_key=key_path))
        )

    assert preflight.check_tls(make_settings("sqlite://", tmp_path)) is None  # not configured
    assert tls(cert, key) == (None, f"TLS certificate {cert}")
    problem, _ = tls(cert, other_key)
    assert problem.startswith(f"live.tls_cert: cannot load {cert} with {other_key}")
    problem, _ = tls(cert, "")
    assert problem == "live.tls_cert: set both tls_cert and tls_key, or neither"
