"""Configuration: the file, environment overrides, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from aljex_sync import config
from aljex_sync.credentials import hash_password
from aljex_sync.errors import ConfigError

MINIMAL = """
[live]
password = "pw"
[morning]
password = "pw2"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aljex-sync.toml"
    path.write_text(text)
    return path


def test_defaults_fill_every_key_not_given(tmp_path):
    settings = config.load(write(tmp_path, MINIMAL), env={})
    assert (settings.live.host, settings.live.port) == ("0.0.0.0", 8080)
    assert settings.live.path == "/aljex/sync"
    assert settings.live.max_body_bytes == 1048576
    assert settings.morning.port == 2222
    assert settings.database.url == f"sqlite:///{tmp_path / 'aljex.db'}"


def test_relative_paths_are_taken_from_the_config_folder(tmp_path):
    settings = config.load(write(tmp_path, MINIMAL), env={})
    assert settings.morning.inbox == tmp_path / "inbox"
    assert settings.morning.host_key == tmp_path / "ssh_host_key"


def test_environment_overrides_any_key(tmp_path):
    env = {
        "ALJEX_SYNC_DATABASE_URL": "postgresql://u@db/aljex",
        "ALJEX_SYNC_LIVE_LISTEN": "127.0.0.1:9000",
        "ALJEX_SYNC_LIVE_ALLOW_IPS": "10.0.0.0/8, 192.0.2.1",
        "ALJEX_SYNC_MORNING_ENABLED": "false",
        "ALJEX_SYNC_LIVE_MAX_BODY_BYTES": "2048",
    }
    settings = config.load(write(tmp_path, MINIMAL), env=env)
    assert settings.database.url == "postgresql://u@db/aljex"
    assert settings.live.port == 9000
    assert [str(n) for n in settings.live.allow_ips] == ["10.0.0.0/8", "192.0.2.1/32"]
    assert settings.morning.enabled is False
    assert settings.live.max_body_bytes == 2048


def test_config_path_comes_from_option_then_environment_then_working_folder(monkeypatch):
    monkeypatch.delenv("ALJEX_SYNC_CONFIG", raising=False)
    assert config.config_path(None) == Path("aljex-sync.toml")
    monkeypatch.setenv("ALJEX_SYNC_CONFIG", "/etc/aljex.toml")
    assert config.config_path(None) == Path("/etc/aljex.toml")
    assert config.config_path("x.toml") == Path("x.toml")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[live]\nlisten = "nonsense"\npassword="x"', "live.listen"),
        ('[live]\nlisten = "0.0.0.0:99999"\npassword="x"', "live.listen"),
        ('[live]\npassword="x"\nmax_body_bytes = "big"', "live.max_body_bytes"),
        ('[live]\npassword="x"\nallow_ips = ["10.0.0.300/8"]', "live.allow_ips"),
        ('[live]\npassword="x"\npath = "no-slash"', "live.path"),
        ('[live]\npasword="x"', "live.pasword"),
        ('[live]\npassword_hash = "plain"', "live.password_hash"),
        ("[live]\nenabled = true", "live.password_hash"),
        ('[live]\npassword="x"\nlegacy_charset = "klingon"', "live.legacy_charset"),
        ('[databse]\nurl = "x"', "databse"),
        ('[tables.loads]\nkey = []\n[live]\npassword="x"', "tables.loads.key"),
        ('[tables.loads]\ndelete = "sometimes"\n[live]\npassword="x"', "tables.loads.delete"),
        ('[tables.loads]\nmode = "partial"\n[live]\npassword="x"', "tables.loads.mode"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path, text, key):
    text += "\n[morning]\nsftp = false\n" if "[morning]" not in text else ""
    with pytest.raises(ConfigError) as error:
        config.load(write(tmp_path, text), env={})
    assert error.value.key == key
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("::8080", "for every address write [::]:8080"),
        (":::8080", "write [::]:8080"),
        ("::1:8080", "write [::1]:8080"),
        ("1.2.3.4", "no port"),
        ("[::1]", "no port"),
        ("127.0.0.1:65536", "port 65536 is over 65535"),
        ("[1.2.3.4]:8080", "only an IPv6 address is bracketed"),
        ("[::1:8080", ""),
        (":8080", ""),
        ("0.0.0.0:http", ""),
    ],
)
@pytest.mark.parametrize("section", ["live", "morning"])
def test_a_listen_value_not_host_port_is_refused_with_the_right_form(tmp_path, section, value, why):
    path = write(tmp_path, MINIMAL.replace(f"[{section}]\n", f'[{section}]\nlisten = "{value}"\n'))
    with pytest.raises(ConfigError) as error:
        config.load(path, env={})
    assert error.value.key == f"{section}.listen"
    line = str(error.value)
    assert "\n" not in line
    assert "must be HOST:PORT or [IPv6]:PORT, like 0.0.0.0:8080 or [::]:8080" in line
    assert f"got {value!r}" in line
    assert why in line


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("0.0.0.0:8080", "0.0.0.0", 8080),
        ("[::]:8080", "::", 8080),
        ("[::1]:0", "::1", 0),
        ("localhost:65535", "localhost", 65535),
        (" 127.0.0.1:2222 ", "127.0.0.1", 2222),
    ],
)
def test_a_listen_value_gives_the_host_and_port_to_bind(tmp_path, value, host, port):
    env = {"ALJEX_SYNC_LIVE_LISTEN": value}
    settings = config.load(write(tmp_path, MINIMAL), env=env)
    assert (settings.live.host, settings.live.port) == (host, port)


def test_a_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="aljex-sync init"):
        config.load(tmp_path / "nope.toml", env={})


def test_invalid_toml_is_reported_with_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[live\n"), env={})


def test_tables_override_the_catalog_and_the_catalog_fills_the_rest(tmp_path):
    text = MINIMAL + '[tables.invoicing]\nkey = ["pro_num", "line"]\ndelete = "soft"\n'
    settings = config.load(write(tmp_path, text), env={})
    assert settings.table("invoicing").key == ("pro_num", "line")
    assert settings.table("invoicing").delete == "soft"
    assert settings.table("spots").key == ("spot_number",)
    assert settings.table("loads").key == ("id",) and settings.table("loads").mode == "window"
    assert settings.table("customers").mode == "full"
    assert settings.table("anything_else").key == ("id",)


def test_password_hash_must_be_a_known_form(tmp_path):
    text = f'[live]\npassword_hash = "{hash_password("x")}"\n[morning]\nsftp = false\n'
    assert config.load(write(tmp_path, text), env={}).live.password_hash.startswith("$argon2id$")


def test_a_mistyped_environment_override_is_refused_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError) as raised:
        config.load(write(tmp_path, MINIMAL), env={"ALJEX_SYNC_LIVE_LISTN": "127.0.0.1:9000"})
    assert raised.value.key == "ALJEX_SYNC_LIVE_LISTN"
    assert "did you mean ALJEX_SYNC_LIVE_LISTEN?" in str(raised.value)


def test_other_environment_variables_are_not_overrides(tmp_path):
    env = {"ALJEX_SYNC_CONFIG": "elsewhere.toml", "ALJEX_TEST_POSTGRES": "postgresql://x/y"}
    assert config.load(write(tmp_path, MINIMAL), env=env).live.port == 8080


def test_a_bad_value_from_the_environment_names_the_variable_not_the_file(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as raised:
        config.load(path, env={"ALJEX_SYNC_LIVE_LISTEN": "everywhere"})
    assert raised.value.key == "ALJEX_SYNC_LIVE_LISTEN"
    line = config.describe(raised.value, path)
    assert line.startswith("ALJEX_SYNC_LIVE_LISTEN: must be HOST:PORT")
    assert str(path) not in line


@pytest.mark.parametrize(
    "url", ["postgre://u@db/aljex", "mssql+pyodbc://u:secret@db/aljex", "oracle://u@db"]
)
def test_an_unsupported_database_url_is_one_line_naming_the_supported_ones(tmp_path, url):
    with pytest.raises(ConfigError) as raised:
        config.load(write(tmp_path, f'[database]\nurl = "{url}"\n{MINIMAL}'), env={})
    message = str(raised.value)
    assert raised.value.key == "database.url"
    assert "\n" not in message and "secret" not in message
    for scheme in ("sqlite", "postgresql", "mysql", "mariadb"):
        assert scheme in message


@pytest.mark.parametrize(
    ("inbox", "what"),
    [
        ("", "the config file"),
        (".", "the config file"),
        ("data", "the database"),
        ("keys", "the SFTP host key"),
    ],
    ids=["empty", "dot", "database-folder", "host-key-folder"],
)
def test_an_inbox_that_holds_the_service_own_files_is_refused(tmp_path, inbox, what):
    """Every file in the inbox is taken for an upload and moved out: with the config or the
    database in it, serve would move them to unmatched/ at its first start."""
    (tmp_path / "data").mkdir()
    text = MINIMAL.replace(
        "[morning]\n", f'[morning]\ninbox = "{inbox}"\nhost_key = "keys/ssh_host_key"\n'
    )
    text = f'[database]\nurl = "sqlite:///data/aljex.db"\n{text}'
    with pytest.raises(ConfigError, match=r"morning\.inbox") as caught:
        config.load(write(tmp_path, text), env={})
    assert what in caught.value.reason
    assert "a folder of its own" in caught.value.reason


def test_an_inbox_of_its_own_beside_the_database_is_fine(tmp_path):
    settings = config.load(write(tmp_path, MINIMAL), env={})
    assert settings.morning.inbox == tmp_path / "inbox"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_that_is_not_finite_is_refused(tmp_path, value):
    """`quiet_seconds = nan` made the folder watch wait forever: no comparison is true."""
    env = {"ALJEX_SYNC_MORNING_QUIET_SECONDS": value}
    with pytest.raises(ConfigError, match="MORNING_QUIET_SECONDS"):
        config.load(write(tmp_path, MINIMAL), env=env)
    text = MINIMAL.replace("[morning]\n", f"[morning]\nquiet_seconds = {value}\n")
    with pytest.raises(ConfigError, match=r"morning\.quiet_seconds"):
        config.load(write(tmp_path, text), env={})
