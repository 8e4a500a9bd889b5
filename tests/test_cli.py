"""The command line: exit codes, exact messages, and a real `serve` process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import click
import httpx
import pytest
from click.testing import CliRunner

from aljex_sync import config
from aljex_sync.cli import main
from aljex_sync.credentials import verify_password
from aljex_sync.messages import Received
from aljex_sync.sftp_settings import host_key_fingerprint


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def init(tmp_path: Path, *extra: str) -> tuple[Path, str]:
    path = tmp_path / "aljex-sync.toml"
    code, out = run("-c", str(path), "init", "--public-host", "sync.example.com", *extra)
    assert code == 0, out
    return path, out


def test_init_writes_a_config_and_prints_what_to_tell_aljex(tmp_path):
    path, out = init(tmp_path)
    assert "URL:      http://sync.example.com:8080/aljex/sync" in out
    assert "Username: aljex" in out
    passwords = re.findall(r"Password: (\S+)", out)
    assert len(passwords) == 2
    settings = config.load(path, env={})
    assert verify_password(settings.live.password_hash, passwords[0])
    assert verify_password(settings.morning.password_hash, passwords[1])
    assert passwords[0] not in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    fingerprint = re.search(r"Host key: (SHA256:\S+)", out).group(1)
    assert fingerprint == host_key_fingerprint(settings.morning.host_key)


def test_init_will_not_overwrite_without_force(tmp_path):
    path, _ = init(tmp_path)
    code, out = run("-c", str(path), "init")
    assert code == 1
    assert "exists; use --force" in out
    code, _ = run("-c", str(path), "init", "--force")
    assert code == 0


def test_a_bad_config_stops_with_one_line_naming_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[live]\nlisten = "everywhere"\npassword = "x"\n[morning]\nsftp = false\n')
    code, out = run("-c", str(path), "status")
    assert code == 1
    assert out.strip().count("\n") == 0
    assert "live.listen: must be HOST:PORT" in out


def test_a_missing_config_says_to_run_init(tmp_path):
    code, out = run("-c", str(tmp_path / "none.toml"), "serve")
    assert code == 1
    assert "aljex-sync init" in out


def test_status_on_an_empty_database(tmp_path):
    path, _ = init(tmp_path)
    code, out = run("-c", str(path), "status")
    assert code == 1
    assert "no aljex-sync tables here" in out
    _install(path)
    code, out = run("-c", str(path), "status")
    assert code == 0
    assert "Requests: none" in out


def _install(path: Path) -> None:
    """Make the journal's tables, as the first `serve` does."""
    from aljex_sync.journal import Journal
    from aljex_sync.store.database import open_engine

    settings = config.load(path, env={})
    journal = Journal(open_engine(settings.database.url), settings)
    journal.install()
    journal.close()


def test_status_answers_while_a_writer_holds_the_database(tmp_path):
    """Readers begin deferred on SQLite: a long morning merge does not hold up `status`."""
    import sqlite3

    path, _ = init(tmp_path)
    _install(path)
    writer = sqlite3.connect(tmp_path / "aljex.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO _aljex_tables VALUES ('x', '[]', '[]', '2026-01-01')")
    try:
        result = CliRunner().invoke(
            main,
            ["-c", str(path), "status"],
            env={"ALJEX_SYNC_DATABASE_TIMEOUT": "0.2"},
            catch_exceptions=False,
        )
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert result.exit_code == 0, result.output
    assert "Requests: none" in result.output


def test_help_explains_every_command():
    code, out = run("--help")
    assert code == 0
    for command in ("init", "serve", "status", "replay"):
        assert command in out
        sub_code, sub_out = run(command, "--help")
        assert sub_code == 0 and len(sub_out.splitlines()) > 4


def test_config_and_log_options_work_after_the_command_name_too(tmp_path):
    path, _ = init(tmp_path)
    _install(path)
    before = run("-c", str(path), "status")
    assert before[0] == 0 and "Requests: none" in before[1]
    assert run("status", "-c", str(path)) == before
    assert run("status", "--config", str(path), "--json")[1].startswith("{")
    # Given in both places, the one after the command's name wins.
    assert run("-c", str(tmp_path / "none.toml"), "status", "-c", str(path)) == before
    code, out = run("-c", str(path), "status", "-c", str(tmp_path / "none.toml"))
    assert code == 1 and "aljex-sync init" in out

    def host_key_logged(before: list[str], after: list[str]) -> list[str]:
        """init in a folder of its own (so it makes, and logs, a host key): the log line."""
        other = tmp_path / str(len(list(tmp_path.iterdir()))) / "aljex-sync.toml"
        other.parent.mkdir()
        code, out = run(*before, "init", "-c", str(other), "--public-host", "h", *after)
        assert code == 0 and other.exists(), out
        return [line for line in out.splitlines() if "generated SSH host key" in line]

    assert host_key_logged([], ["--log-format", "json"])[0].startswith("{")
    assert host_key_logged(["--log-level", "debug"], ["--log-level", "warning"]) == []
    assert host_key_logged(["--log-format", "json"], ["--log-level", "info"])[0].startswith("{")
    assert host_key_logged(["--log-format", "json"], ["--log-format", "text"])[0][0].isdigit()


def every_command(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The command line of each command and subcommand under ``group``."""
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += every_command(command, (*prefix, name))
    return found


@pytest.mark.parametrize("command", every_command(main), ids=" ".join)
def test_every_command_takes_the_config_and_log_options_and_shows_them(command):
    code, out = run(*command, "-c", "x.toml", "--log-level", "error", "--log-format", "json", "-h")
    assert code == 0, out
    for option in ("-c, --config FILE", "--log-level", "--log-format"):
        assert option in out, (command, out)


def test_serve_runs_until_sigterm_then_stops_cleanly(tmp_path):
    path, out = init(tmp_path, "--http-port", "0")
    password = re.findall(r"Password: (\S+)", out)[0]
    text = path.read_text().replace('listen = "0.0.0.0:0"', 'listen = "127.0.0.1:18765"')
    path.write_text(text.replace("[morning]\nenabled = true", "[morning]\nenabled = false"))
    env = {**os.environ, "ALJEX_SYNC_MORNING_ENABLED": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "aljex_sync.cli", "-c", str(path), "serve"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        body = urlencode(
            {"web_sync_table_name": "employees", "web_sync_action": "create", "id": "demo"}
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.post(
                    "http://127.0.0.1:18765/aljex/sync",
                    content=body,
                    auth=("aljex", password),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "employees create demo 200 applied" in err
    assert err.rstrip().endswith("stopped")
    _code, out = run("-c", str(path), "status")
    assert "1 applied" in out


def test_demo_runs_the_whole_product_and_ends_with_zero_differences(tmp_path):
    code, out = run("demo", "--seconds", "2", "--rate", "50", "--folder", str(tmp_path / "demo"))
    assert code == 0, out
    assert "13 files uploaded, 13 loaded" in out
    assert "verify: zero differences" in out
    assert (tmp_path / "demo" / "aljex.db").exists()


def test_replay_command_lands_held_records_once_the_key_is_configured(tmp_path):
    from aljex_sync.clock import utcnow
    from aljex_sync.journal import Journal
    from aljex_sync.messages import Outcome, Received
    from aljex_sync.store.database import open_engine

    path, _ = init(tmp_path)
    settings = config.load(path, env={})
    journal = Journal(open_engine(settings.database.url), settings)
    journal.start()
    body = b"web_sync_table_name=bills&web_sync_action=create&bill_no=B1&amount=5"
    (outcome,) = journal.write_group([Received(body, "127.0.0.1", utcnow())])
    assert isinstance(outcome, Outcome) and outcome.status == "held"
    journal.close()
    code, out = run("-c", str(path), "status")
    assert "key field 'id' is missing" in out
    path.write_text(path.read_text() + '\n[tables.bills]\nkey = ["bill_no"]\n')
    code, out = run("-c", str(path), "replay")
    assert code == 0
    assert "event 1 bills B1 -> applied" in out
    assert "Replayed: 1 applied" in out
    code, out = run("-c", str(path), "replay")
    assert "Nothing to replay." in out


def test_replay_of_named_events_takes_held_ones_and_rejected_ones_only_when_asked(tmp_path):
    from aljex_sync.clock import utcnow
    from aljex_sync.journal import Journal
    from aljex_sync.store.database import open_engine

    path, _ = init(tmp_path)
    settings = config.load(path, env={})
    journal = Journal(open_engine(settings.database.url), settings)
    journal.start()
    bodies = (
        b"web_sync_table_name=bills&web_sync_action=create&bill_no=B1",  # 1 held: no key
        b"web_sync_table_name=bills&web_sync_action=create&bill_no=B2",  # 2 held
        b"web_sync_table_name=bills&web_sync_action=frobnicate&id=3",  # 3 rejected
    )
    outcomes = journal.write_group([Received(b, "127.0.0.1", utcnow()) for b in bodies])
    assert [o.status for o in outcomes] == ["held", "held", "rejected"]  # type: ignore[union-attr]
    journal.close()
    path.write_text(path.read_text() + '\n[tables.bills]\nkey = ["bill_no"]\n')
    hint = "; replay applies only held events (and rejected ones with --include-rejected)"

    code, out = run("-c", str(path), "replay", "--event", "3")
    assert (code, out) == (1, f"error: event 3 is rejected{hint}\n")
    code, out = run("-c", str(path), "replay", "--event", "2", "--event", "9")
    assert (code, out) == (1, f"error: there is no event 9{hint}\n")
    code, out = run("-c", str(path), "replay", "--event", "2")
    assert code == 0
    assert out.splitlines() == ["event 2 bills B2 -> applied", "Replayed: 1 applied"]
    code, out = run("-c", str(path), "replay", "--event", "1", "--event", "2")
    assert (code, out) == (1, f"error: event 2 is applied{hint}\n")
    code, out = run("-c", str(path), "replay", "--event", "3", "--include-rejected")
    assert code == 0
    assert "event 3 bills - -> rejected" in out
    code, out = run("-c", str(path), "replay")
    assert out.splitlines() == ["event 1 bills B1 -> applied", "Replayed: 1 applied"]


def test_init_never_tells_aljex_localhost(tmp_path):
    from aljex_sync.cli.init import reachable_address

    path = tmp_path / "aljex-sync.toml"
    code, out = run("-c", str(path), "init")
    assert code == 0, out
    host = re.search(r"URL:      http://([^:/]+):8080/aljex/sync", out).group(1)
    assert "localhost" not in out and host != "127.0.0.1"
    found = reachable_address()
    assert host == (found or "HOST")
    advice = " ".join(out.split())
    if found is None:
        assert "Replace HOST with the name or address Aljex reaches this machine at" in advice
    else:
        assert f"{found} is this machine's" in advice
    assert "--public-host HOST" in advice or "send Aljex that instead" in advice


def test_init_with_a_public_host_prints_it_and_no_advice(tmp_path):
    _, out = init(tmp_path)
    assert "Host:     sync.example.com" in out
    assert "this machine's" not in out


def test_init_says_what_comes_next_by_how_it_was_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALJEX_SYNC_CONFIG", raising=False)
    _, out = init(tmp_path)
    assert out.rstrip().endswith("Start the service with: aljex-sync serve")
    _, out = init(tmp_path, "--force", "--then-serving")
    assert out.rstrip().endswith("Starting the service now; stop it with Ctrl-C.")
    assert "aljex-sync serve" not in out


@pytest.mark.parametrize(
    ("config_option", "serve"),
    [
        ("./a.toml", "aljex-sync serve -c a.toml"),
        ("etc/my sync.toml", "aljex-sync serve -c 'etc/my sync.toml'"),
        ("aljex-sync.toml", "aljex-sync serve"),
    ],
)
def test_init_tells_serve_where_the_config_is_unless_it_finds_it_itself(
    tmp_path, monkeypatch, config_option, serve
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALJEX_SYNC_CONFIG", raising=False)
    code, out = run("-c", config_option, "init", "--public-host", "sync.example.com")
    assert code == 0, out
    assert out.splitlines()[-1] == f"Start the service with: {serve}"


def test_init_tells_serve_no_path_when_aljex_sync_config_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALJEX_SYNC_CONFIG", str(tmp_path / "a.toml"))
    code, out = run("-c", "a.toml", "init", "--public-host", "sync.example.com")
    assert code == 0, out
    assert out.splitlines()[-1] == "Start the service with: aljex-sync serve"


def test_init_takes_the_host_of_a_url_given_as_public_host_and_says_so(tmp_path):
    _, out = init(tmp_path, "--public-host", "http://sync.example.com/")
    assert "URL:      http://sync.example.com:8080/aljex/sync" in out
    assert "Host:     sync.example.com" in out
    advice = " ".join(out.split())
    assert "--public-host http://sync.example.com/: took its host, sync.example.com" in advice


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("sync.example.com:8080", " (the ports are --http-port and --sftp-port)"),
        ("https://sync.example.com:443/", " (the ports are --http-port and --sftp-port)"),
        ("sync.example.com/aljex/sync", " (the path is [live] path in the config)"),
        ("http://sync.example.com/aljex/sync", " (the path is [live] path in the config)"),
        ("sync example.com", ""),
        ("ftp://sync.example.com", ""),
    ],
)
def test_init_refuses_a_public_host_that_is_more_than_a_host_in_one_line(tmp_path, given, why):
    path = tmp_path / "aljex-sync.toml"
    code, out = run("-c", str(path), "init", "--public-host", given)
    assert code == 2
    assert out.splitlines()[-1] == (
        f"Error: Invalid value for '--public-host': {given!r} is not a host name or IP"
        " address: give the one Aljex reaches this machine at, e.g. --public-host"
        f" sync.example.com{why}"
    )
    assert not path.exists()


@pytest.mark.parametrize("given", ["2001:db8::7", "[2001:db8::7]"])
def test_init_takes_an_ipv6_public_host_with_or_without_brackets(tmp_path, given):
    _, out = init(tmp_path, "--public-host", given)
    assert "URL:      http://[2001:db8::7]:8080/aljex/sync" in out
    assert "Host:     2001:db8::7\n" in out


@pytest.mark.parametrize(
    ("given", "what"),
    [
        ("localhost", "this machine's own name, for itself alone (loopback)"),
        ("127.0.0.2", "this machine's loopback address, for itself alone"),
        ("::1", "this machine's loopback address, for itself alone"),
        ("192.168.1.20", "an address on a private network"),
    ],
)
def test_init_warns_of_a_public_host_aljex_cannot_reach(tmp_path, given, what):
    _, out = init(tmp_path, "--public-host", given)
    assert (
        f"Warning: {given} is {what}, which Aljex cannot reach from the internet: send Aljex"
        " your public host name or address instead" in " ".join(out.split())
    )


def test_init_refuses_an_unsupported_database_in_one_line(tmp_path):
    path = tmp_path / "aljex-sync.toml"
    code, out = run("-c", str(path), "init", "--database-url", "postgre://u@db/x")
    assert code == 1
    assert out.strip().count("\n") == 0
    assert "--database-url: postgre:// is not a database aljex-sync supports" in out
    assert not path.exists()


def test_an_unsupported_database_in_the_environment_is_one_line_naming_the_variable(tmp_path):
    path, _ = init(tmp_path)
    result = CliRunner().invoke(
        main,
        ["-c", str(path), "status"],
        env={"ALJEX_SYNC_DATABASE_URL": "mssql+pyodbc://u@db/x"},
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("error: ALJEX_SYNC_DATABASE_URL: mssql+pyodbc://")
    assert "sqlite" in result.output and "mariadb" in result.output


def test_a_mistyped_environment_override_stops_the_command(tmp_path):
    path, _ = init(tmp_path)
    result = CliRunner().invoke(
        main,
        ["-c", str(path), "status"],
        env={"ALJEX_SYNC_LIVE_LISTN": "127.0.0.1:9000"},
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert "error: ALJEX_SYNC_LIVE_LISTN: unknown setting" in result.output
    assert "did you mean ALJEX_SYNC_LIVE_LISTEN?" in result.output


def test_init_writes_every_setting_at_its_default_but_what_it_chose(tmp_path):
    import tomllib

    from aljex_sync.config import SCHEMA

    path, _ = init(tmp_path, "--http-port", "8081", "--database-url", "sqlite:///x.db")
    written = tomllib.loads(path.read_text())
    chosen = {"database.url", "live.listen", "live.password_hash", "morning.password_hash"}
    for section, keys in SCHEMA.items():
        for name, key in keys.items():
            dotted = f"{section}.{name}"
            if name == "password":  # only the hash is written
                assert name not in written[section], dotted
            elif dotted not in chosen:
                assert written[section][name] == key.default, dotted
    assert written["database"]["url"] == "sqlite:///x.db"
    assert written["live"]["listen"] == "0.0.0.0:8081"
    assert written["live"]["password_hash"].startswith("$argon2id$")
    assert "# largest request body accepted" in path.read_text()


def test_init_logs_the_new_host_key_before_what_to_send_aljex_not_inside_it(tmp_path):
    command = [sys.executable, "-m", "aljex_sync.cli", "-c", str(tmp_path / "a.toml"), "init"]
    result = subprocess.run(
        [*command, "--public-host", "sync.example.com"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order written
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    lines = out.splitlines()
    logged = [i for i, line in enumerate(lines) if "generated SSH host key" in line]
    block = [i for i, line in enumerate(lines) if "Send Aljex the following." in line]
    assert logged and block, out
    assert logged[0] < block[0], out


@pytest.mark.parametrize("option", ["--http-port", "--sftp-port"])
def test_init_refuses_a_port_out_of_range_before_writing_anything(tmp_path, option):
    path, _ = init(tmp_path)
    before = path.read_text()
    code, out = run("-c", str(path), "init", "--force", option, "99999")
    assert code == 2 and option in out, out
    assert path.read_text() == before  # the config and its passwords are kept


def test_check_refuses_an_ipv6_listen_address_without_brackets_in_one_line(tmp_path):
    path = tmp_path / "aljex-sync.toml"
    path.write_text('[live]\nlisten = "::8080"\npassword = "x"\n[morning]\nsftp = false\n')
    code, out = run("-c", str(path), "check")
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert code == 1
    assert problems == [
        f"problem: {path}: live.listen: must be HOST:PORT or [IPv6]:PORT, like 0.0.0.0:8080"
        " or [::]:8080, got '::8080': an IPv6 address goes in brackets; for every address"
        " write [::]:8080"
    ]
