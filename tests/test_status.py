"""`status`, `replay` and `load --dry-run`: they read, never write, and fit a terminal."""

from __future__ import annotations

import http.server
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import create_engine, insert, inspect

from aljex_sync import config, dashboard, overview
from aljex_sync.cli import main
from aljex_sync.clock import utcnow
from aljex_sync.journal import Journal
from aljex_sync.messages import Outcome, Received
from aljex_sync.morning import MorningLoader
from aljex_sync.store.database import normalize_url, open_engine
from aljex_sync.store.schema import files

from .support import RunningService, make_settings


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def make_config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "aljex-sync.toml"
    code, out = run(
        "-c", str(path), "init", "--public-host", "sync.example.com", "--database-url", database_url
    )
    assert code == 0, out
    return path


def table_names(database_url: str) -> list[str]:
    engine = create_engine(normalize_url(database_url))
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_status_on_a_database_without_aljex_tables_says_so_and_creates_none(tmp_path, database_url):
    path = make_config(tmp_path, database_url)
    code, out = run("-c", str(path), "status")
    assert code == 1
    assert "no aljex-sync tables here" in out
    assert out.strip().count("\n") == 0
    if database_url.startswith("sqlite"):
        assert not (tmp_path / "aljex.db").exists()
    else:
        assert table_names(database_url) == []


def test_replay_on_a_database_without_aljex_tables_creates_none(tmp_path, database_url):
    path = make_config(tmp_path, database_url)
    code, out = run("-c", str(path), "replay")
    assert code == 1
    assert "no aljex-sync tables here" in out
    if not database_url.startswith("sqlite"):
        assert table_names(database_url) == []
    else:
        assert not (tmp_path / "aljex.db").exists()


def test_load_dry_run_on_a_database_without_aljex_tables_writes_nothing(tmp_path, database_url):
    path = make_config(tmp_path, database_url)
    csv = tmp_path / "Customers.csv"
    csv.write_text("id,name\nC1,Acme\n")
    before = csv.read_bytes()
    code, out = run("-c", str(path), "load", "--dry-run", str(csv))
    assert code == 1
    assert "no aljex-sync tables here" in out
    assert csv.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "Customers.csv",
        "aljex-sync.toml",
        "ssh_host_key",
    ]
    if not database_url.startswith("sqlite"):
        assert table_names(database_url) == []


def _fill(path: Path) -> None:
    """A journal with held and rejected requests, and morning files not loaded."""
    settings = config.load(path, env={})
    journal = Journal(open_engine(settings.database.url), settings)
    journal.start()
    bodies = [
        b"web_sync_table_name=bills&web_sync_action=create&bill_no=B1",
        b"web_sync_table_name=bills&web_sync_action=create&bill_no=B2",
        b"web_sync_action=create&id=1",
        b"web_sync_action=create&id=2",
        b"web_sync_table_name=loads&web_sync_action=" + b"x" * 40 + b"&id=3",
        b"web_sync_table_name=loads&web_sync_action=create&id=L1&city=Reno",
    ]
    outcomes = journal.write_group([Received(b, "127.0.0.1", utcnow()) for b in bodies])
    assert [o.status for o in outcomes if isinstance(o, Outcome)] == [
        "held",
        "held",
        "rejected",
        "rejected",
        "rejected",
        "applied",
    ]
    now = utcnow()
    reasons = {
        "failed": "line 7: the record has 41 fields but the header has 40 fields; the whole"
        " file is refused and nothing of it was applied",
        "held": "the full file would delete 900 of 1000 rows, more than 50%; load it with"
        " --force if that is right",
        "unmatched": "the file name matches no Aljex file",
    }
    with journal.engine.begin() as conn:
        for status, reason in reasons.items():
            conn.execute(
                insert(files).values(
                    name=f"A-rather-long-export-name-{status}-2026-12-01.csv",
                    sha256="",
                    size=10,
                    table_name=None if status == "unmatched" else "customers",
                    status=status,
                    error=reason,
                    started_at=now,
                    finished_at=now,
                )
            )
    journal.close()


def test_status_fits_80_columns_and_lists_what_needs_a_look(tmp_path, sqlite_url):
    path = make_config(tmp_path, sqlite_url)
    _fill(path)
    result = subprocess.run(
        [sys.executable, "-m", "aljex_sync.cli", "-c", str(path), "status"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    text = " ".join(result.stdout.split())
    assert "Requests: 1 applied, 2 held, 3 rejected" in text
    for title in ("Held records", "Rejected requests", "Morning files not loaded"):
        assert title in text
    assert "key field 'id' is missing" in text
    attention = text.split("Morning files not loaded")[1].split("Recent morning files")[0]
    for status in ("failed", "held", "unmatched"):
        assert f"│ {status} │" in attention
    for reason in ("matches no", "900 of 1000", "has 41"):
        assert reason in attention
    rejected = text.split("Rejected requests")[1].split("Morning files")[0]
    assert "web_sync_table_name is missing or empty │ 2 │" in rejected
    assert "unknown action" in rejected


def test_status_json_keeps_its_keys_and_adds_rejections_and_files(tmp_path, sqlite_url):
    import json

    path = make_config(tmp_path, sqlite_url)
    _fill(path)
    code, out = run("-c", str(path), "status", "--json")
    assert code == 0
    found = json.loads(out)
    assert found["by_status"] == {"applied": 1, "held": 2, "rejected": 3}
    assert {"by_table", "held", "last_received", "files"} <= set(found)
    assert sum(r["count"] for r in found["rejected"]) == 3
    assert {f["status"] for f in found["not_loaded"]} == {"failed", "held", "unmatched"}


def test_replay_says_how_many_stay_held_and_why(tmp_path, sqlite_url):
    path = make_config(tmp_path, sqlite_url)
    _fill(path)
    code, out = run("-c", str(path), "replay")
    assert code == 0
    assert "Replayed: 2 held" in out
    assert "2 records stay held:" in out
    assert "  2 bills: key field 'id' is missing" in out or "  2 key field 'id' is missing" in out


def test_load_of_a_duplicate_hints_at_force(tmp_path, sqlite_url):
    path = make_config(tmp_path, sqlite_url)
    csv = tmp_path / "Customers.csv"
    csv.write_text("id,name\nC1,Acme\n")
    assert run("-c", str(path), "load", str(csv))[0] == 0
    code, out = run("-c", str(path), "load", str(csv))
    assert code == 0
    assert "duplicate" in out
    assert "--force" in out


def _fill_with_brackets(path: Path) -> None:
    """Requests and a file whose names Aljex (or anyone with the password) chose: brackets."""
    settings = config.load(path, env={})
    journal = Journal(open_engine(settings.database.url), settings)
    journal.start()
    bodies = [
        b"web_sync_table_name=%5B%2Fx%5D&web_sync_action=create&id=1",
        b"web_sync_table_name=notes&web_sync_action=%5Bred%5Dzap%5B%2Fred%5D&id=1",
        b"web_sync_table_name=bills&web_sync_action=create&bill_no=B1",
    ]
    journal.write_group([Received(b, "127.0.0.1", utcnow()) for b in bodies])
    now = utcnow()
    with journal.engine.begin() as conn:
        conn.execute(
            insert(files).values(
                name="[/b]x.csv",
                sha256="",
                size=10,
                table_name=None,
                status="unmatched",
                error="the file name matches no Aljex file",
                started_at=now,
                finished_at=now,
            )
        )
    journal.close()


def test_names_with_brackets_are_printed_as_sent_and_never_break_a_command(tmp_path, sqlite_url):
    path = make_config(tmp_path, sqlite_url)
    _fill_with_brackets(path)
    for command in (["status"], ["events"], ["files"], ["events", "--status", "rejected"]):
        code, out = run("-c", str(path), *command)
        assert code == 0, (command, out)
    text = " ".join(run("-c", str(path), "status")[1].split())
    assert "invalid table name '[/x]'" in text
    assert "'[red]zap[/red]'" in text
    assert "[/b]x.csv" in run("-c", str(path), "files")[1]


def test_replay_names_the_setting_that_fixes_a_key(tmp_path, sqlite_url):
    path = make_config(tmp_path, sqlite_url)
    _fill(path)
    code, out = run("-c", str(path), "replay")
    assert code == 0
    assert "often a key under [tables.NAME]" in " ".join(out.split())


def test_load_prints_a_file_name_with_brackets_as_it_is(tmp_path, sqlite_url):
    path = make_config(tmp_path, sqlite_url)
    csv = tmp_path / "[red]Customers[bold].csv"
    csv.write_text("id,name\nC1,Acme\n")
    code, out = run("-c", str(path), "load", "--table", "customers", str(csv))
    assert code == 0, out
    assert "[red]Customers[bold].csv -> customers (full): loaded" in out


def test_status_lists_the_files_waiting_in_the_inbox(tmp_path, sqlite_url):
    """A file the database refused stays in the inbox until the next start: status says so."""
    path = make_config(tmp_path, sqlite_url)
    _fill(path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "archive").mkdir()
    (inbox / "Loads.csv").write_text("id,city\nL1,Reno\n")
    (inbox / ".upload-0123-Carriers.csv").write_text("id\n")  # an upload in progress
    (inbox / ".loading" / "1a2b").mkdir(parents=True)
    (inbox / ".loading" / "1a2b" / "Payable.csv").write_text("id\n")  # taken to load
    code, out = run("-c", str(path), "status")
    assert code == 0, out
    text = " ".join(out.split())
    assert "Waiting in the inbox" in text
    assert "Loads.csv" in text and "Carriers" not in text
    code, out = run("-c", str(path), "status", "--json")
    import json

    assert sorted(f["name"] for f in json.loads(out)["waiting"]) == ["Loads.csv", "Payable.csv"]


def test_status_says_whether_serve_runs_and_is_well(tmp_path, sqlite_url):
    """The database cannot tell whether the service is up, or answers Aljex 503: status
    asks the service's own health check, on the Live Sync port of the config."""
    path = make_config(tmp_path, sqlite_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "ALJEX_SYNC_LIVE_LISTEN": f"127.0.0.1:{port}",
        "ALJEX_SYNC_MORNING_LISTEN": "127.0.0.1:0",
        "ALJEX_SYNC_DATABASE_TIMEOUT": "0.3",
        "http_proxy": "http://127.0.0.1:9",  # a shell's proxy, dead: never used for this
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    url = f"http://127.0.0.1:{port}/healthz"

    def status(*options: str) -> str:
        result = CliRunner().invoke(main, ["-c", str(path), "status", *options], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    with RunningService(config.load(path, env=env)) as running:
        assert f"Service: healthy (serve answers at {url})" in status()
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            sick = status()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert "Service: NOT HEALTHY: database unavailable: database is locked" in sick
        assert json.loads(status("--json"))["service"]["state"] == "healthy"
        assert running.service.http_port == port
    gone = status()
    assert f"Service: not running: nothing answers at {url}" in gone
    assert json.loads(status("--json"))["service"]["state"] == "not running"


def test_a_file_not_loaded_is_listed_until_a_later_file_of_its_table_loads(database_url, tmp_path):
    """A truncated loads.csv is settled by the complete one after it, though their bytes
    differ; a file of another table is not; an unmatched file is settled by its name."""
    settings = make_settings(database_url, tmp_path)
    engine = open_engine(settings.database.url)
    journal = Journal(engine, settings)
    journal.install()
    loader = MorningLoader(engine, settings, journal.schema)
    inbox = tmp_path / "files"
    inbox.mkdir()

    def load(name: str, body: bytes, with_loader: MorningLoader = loader) -> str:
        (inbox / name).write_bytes(body)
        return with_loader.load(inbox / name).status

    def listed() -> tuple[list[str], list[str]]:
        by_status = [p.name for p in overview.read(engine).problems]
        on_the_page = [f.name for f in dashboard.read_overview(engine).problem_files]
        return by_status, on_the_page

    assert load("loads.csv", b"id,status\nL1,OPEN\nL2,OP") == "held"  # cut short
    assert load("Carriers_20261201.csv", b"id,name\nK1,Acme\nK2,Bo") == "held"
    assert load("weather.csv", b"id,sky\nW1,clear\n") == "unmatched"
    assert listed() == (["weather.csv", "Carriers_20261201.csv", "loads.csv"],) * 2
    assert load("loads.csv", b"id,status\nL1,OPEN\nL2,OPEN\n") == "loaded"
    assert listed() == (["weather.csv", "Carriers_20261201.csv"],) * 2
    # Once [tables.weather] names the file, it loads, and its unmatched copy is settled.
    named = make_settings(database_url, tmp_path, tables={"weather": {"files": ["weather*"]}})
    weather = MorningLoader(engine, named, journal.schema)
    assert load("weather.csv", b"id,sky\nW1,clear\nW2,rain\n", weather) == "loaded"
    assert listed() == (["Carriers_20261201.csv"],) * 2
    engine.dispose()


def test_status_tells_another_program_on_the_port_from_serve(tmp_path, sqlite_url):
    path = make_config(tmp_path, sqlite_url)
    _fill(path)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {"ALJEX_SYNC_LIVE_LISTEN": f"127.0.0.1:{server.server_address[1]}"}
        result = CliRunner().invoke(main, ["-c", str(path), "status"], env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0, result.output
    assert "Service: NOT HEALTHY: something other than aljex-sync answers there (HTTP 404)" in (
        " ".join(result.output.split())
    )
    assert "DOCTYPE" not in result.output
