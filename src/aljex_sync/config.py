"""Settings: a TOML file, ``ALJEX_SYNC_<SECTION>_<KEY>`` environment overrides, checked once.

The file is found by ``-c/--config``, else ``$ALJEX_SYNC_CONFIG``, else ``./aljex-sync.toml``.
Every key is declared once in ``SCHEMA`` with its type and default; docs/configuration.md
documents the same keys. A wrong value stops start-up with one line naming the key. Relative
paths (the inbox, the host key, a SQLite file) are taken from the folder of the config file,
so the service behaves the same whatever folder it is started from.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from datetime import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import catalog
from .config_keys import SCHEMA as SCHEMA
from .config_keys import TABLE_SCHEMA as TABLE_SCHEMA
from .config_keys import Key as Key
from .credentials import is_supported_hash
from .errors import ConfigError
from .field_types import FIELD_TYPES
from .settings import AdminSettings as AdminSettings
from .settings import AlertSettings as AlertSettings
from .settings import DatabaseSettings as DatabaseSettings
from .settings import DeleteMode as DeleteMode
from .settings import JournalSettings as JournalSettings
from .settings import LiveSettings as LiveSettings
from .settings import MorningSettings as MorningSettings
from .settings import Network as Network
from .settings import NotifySettings as NotifySettings
from .settings import Settings as Settings
from .settings import TableSettings as TableSettings
from .store import database

DEFAULT_CONFIG_NAME = "aljex-sync.toml"
ENV_CONFIG = "ALJEX_SYNC_CONFIG"
ENV_PREFIX = "ALJEX_SYNC_"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the config file is: the explicit path, ``$ALJEX_SYNC_CONFIG``, or ``./``."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(ENV_CONFIG)
    return Path(from_env) if from_env else Path(DEFAULT_CONFIG_NAME)


def load(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read, override from the environment and check the settings; raise ConfigError."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(
                "", f"no config file at {path} (run `aljex-sync init` to write one)"
            ) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("", f"{path} is not valid TOML: {e}") from None
    base = path.resolve().parent if path is not None else Path.cwd()
    return parse(raw, env=env, base=base, path=path)


def parse(
    raw: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    base: Path | None = None,
    path: Path | None = None,
) -> Settings:
    """Check a parsed TOML document (plus environment overrides) and build Settings."""
    env = {} if env is None else env
    from_env = _env_overrides(env)
    try:
        return _parse(raw, env, base or Path.cwd(), path)
    except ConfigError as e:
        if e.key in from_env:  # say where the wrong value really is
            raise ConfigError(from_env[e.key], e.reason) from None
        raise


def describe(error: ConfigError, path: Path) -> str:
    """The one line to show for a config error: the file's name, or else the variable's."""
    if not error.key or error.key.startswith(ENV_PREFIX):
        return str(error)
    return f"{path}: {error}"


def env_name(dotted: str) -> str:
    """The environment variable that overrides a key: ``live.listen`` -> ALJEX_SYNC_LIVE_LISTEN."""
    return f"{ENV_PREFIX}{dotted.replace('.', '_')}".upper()


def _env_overrides(env: Mapping[str, str]) -> dict[str, str]:
    """The keys the environment overrides (dotted name -> variable); refuses unknown ones.

    A mistyped variable would otherwise be ignored silently, as a typo in the file is not.
    """
    known = {env_name(f"{s}.{k}"): f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys}
    found: dict[str, str] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG:
            continue
        if name not in known:
            close = difflib.get_close_matches(name, [*known, ENV_CONFIG], n=1, cutoff=0.8)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(name, f"unknown setting in the environment{hint}")
        found[known[name]] = name
    return found


def _parse(
    raw: Mapping[str, Any], env: Mapping[str, str], base: Path, path: Path | None
) -> Settings:
    unknown = set(raw) - set(SCHEMA) - {"tables"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown section")
    values = {name: _section(name, raw.get(name, {}), env) for name in SCHEMA}
    db, live, morning = values["database"], values["live"], values["morning"]

    if db["timeout"] <= 0:
        raise ConfigError("database.timeout", "must be more than 0")
    database = DatabaseSettings(_database_url(db["url"], base), db["timeout"])

    live_host, live_port = _listen("live.listen", live["listen"])
    if not str(live["path"]).startswith("/"):
        raise ConfigError("live.path", "must start with /")
    _check_credentials("live", live)
    _check_charset("live.legacy_charset", live["legacy_charset"])
    for key in (
        "max_body_bytes",
        "max_fields",
        "max_tables",
        "max_failed_logins",
        "failed_login_window",
        "header_timeout",
        "body_timeout",
        "max_connections",
        "max_connections_per_address",
    ):
        if live[key] <= 0:
            raise ConfigError(f"live.{key}", "must be more than 0")
    live_settings = LiveSettings(
        enabled=live["enabled"],
        host=live_host,
        port=live_port,
        path=live["path"],
        username=live["username"],
        password=live["password"],
        password_hash=live["password_hash"],
        allow_ips=_networks("live.allow_ips", live["allow_ips"]),
        trusted_proxies=_proxies("live.trusted_proxies", live["trusted_proxies"]),
        max_body_bytes=live["max_body_bytes"],
        max_fields=live["max_fields"],
        legacy_charset=live["legacy_charset"],
        accept_tables=frozenset(str(t).lower() for t in live["accept_tables"]),
        max_tables=live["max_tables"],
        max_failed_logins=live["max_failed_logins"],
        failed_login_window=live["failed_login_window"],
        header_timeout=live["header_timeout"],
        body_timeout=live["body_timeout"],
        max_connections=live["max_connections"],
        max_connections_per_address=live["max_connections_per_address"],
        **_tls(live, base),
    )

    morning_host, morning_port = _listen("morning.listen", morning["listen"])
    if morning["sftp"]:
        _check_credentials("morning", morning)
    _check_charset("morning.legacy_charset", morning["legacy_charset"])
    for key in ("max_delete_fraction", "max_drop_fraction"):
        if not 0 <= morning[key] <= 1:
            raise ConfigError(f"morning.{key}", "must be between 0 and 1")
    for key in ("quiet_seconds", "snapshot_margin"):
        if morning[key] < 0:
            raise ConfigError(f"morning.{key}", "must not be negative")
    morning_settings = MorningSettings(
        enabled=morning["enabled"],
        sftp=morning["sftp"],
        host=morning_host,
        port=morning_port,
        username=morning["username"],
        password=morning["password"],
        password_hash=morning["password_hash"],
        inbox=base / morning["inbox"],
        host_key=base / morning["host_key"],
        quiet_seconds=morning["quiet_seconds"],
        snapshot_margin=morning["snapshot_margin"],
        max_delete_fraction=morning["max_delete_fraction"],
        legacy_charset=morning["legacy_charset"],
        max_drop_fraction=morning["max_drop_fraction"],
        allow_ips=_networks("morning.allow_ips", morning["allow_ips"]),
    )

    if morning_settings.enabled:
        _check_inbox_apart(morning_settings, database.url, live_settings, path)

    tables_raw = raw.get("tables", {})
    if not isinstance(tables_raw, Mapping):
        raise ConfigError("tables", "must be a table of tables, like [tables.loads]")
    tables = {name.lower(): _table(name, spec) for name, spec in tables_raw.items()}
    admin = _admin(values["admin"])
    alerts = _alerts(values["alerts"])
    journal = _journal(values["journal"], morning_settings.snapshot_margin)
    return Settings(
        database,
        live_settings,
        morning_settings,
        tables,
        path,
        admin,
        alerts,
        journal,
        notify=_notify(values["notify"]),
    )


def _section(name: str, raw: Any, env: Mapping[str, str]) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(name, "must be a section, like [name]")
    schema = SCHEMA[name]
    unknown = set(raw) - set(schema)
    if unknown:
        raise ConfigError(f"{name}.{sorted(unknown)[0]}", "unknown key")
    values: dict[str, Any] = {}
    for key, spec in schema.items():
        dotted = f"{name}.{key}"
        variable = env_name(dotted)
        if variable in env:
            values[key] = _from_env(dotted, spec, env[variable])
        elif key in raw:
            values[key] = _typed(dotted, spec, raw[key])
        else:
            values[key] = spec.default
    return values


def _typed(dotted: str, spec: Key, value: Any) -> Any:
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.type is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(dotted, f"must be a finite number, got {value!r}")
    if spec.type is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(dotted, "must be a list of strings")
        return value
    if spec.type is dict and not isinstance(value, Mapping):
        raise ConfigError(dotted, "must be a table of field = value, like [tables.loads.types]")
    if not isinstance(value, spec.type) or (spec.type is int and isinstance(value, bool)):
        raise ConfigError(dotted, f"must be a {spec.type.__name__}, got {value!r}")
    return value


def _from_env(dotted: str, spec: Key, text: str) -> Any:
    """Environment values are text: lists are comma-separated, booleans true/false/1/0."""
    try:
        if spec.type is bool:
            lowered = text.strip().lower()
            if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(text)
            return lowered in {"true", "1", "yes"}
        if spec.type is list:
            return [part.strip() for part in text.split(",") if part.strip()]
        if spec.type is float and not math.isfinite(float(text)):
            raise ValueError(text)
        return spec.type(text)
    except ValueError:
        kind = "finite number" if spec.type is float else spec.type.__name__
        raise ConfigError(dotted, f"must be a {kind}, got {text!r}") from None


LISTEN_FORM = "must be HOST:PORT or [IPv6]:PORT, like 0.0.0.0:8080 or [::]:8080"


def _listen(dotted: str, value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``: the host to bind, and the port (0: any free one).

    An IPv6 address must be in brackets: in ``::1:8080`` or ``::8080`` nothing says where
    the address ends and the port begins (``::8080`` is an IPv6 address itself), so such
    a value is refused with the bracketed form most likely meant.
    """
    text = value.strip()
    if text.startswith("["):
        bracketed = re.fullmatch(r"\[([^\[\]]+)\]:([0-9]+)", text)
        if bracketed is None:
            missing = re.fullmatch(r"\[[^\[\]]*\]", text) is not None
            raise ConfigError(dotted, _listen_problem(value, "no port" if missing else ""))
        host, port = bracketed.groups()
        if not _is_ipv6(host):
            raise ConfigError(dotted, _listen_problem(value, "only an IPv6 address is bracketed"))
    elif ":" not in text:
        raise ConfigError(dotted, _listen_problem(value, "no port" if text else ""))
    else:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ConfigError(dotted, _listen_problem(value, _brackets_meant(host, port)))
        if not host or not re.fullmatch(r"[0-9]+", port) or re.search(r"[\[\]\s/]", host):
            raise ConfigError(dotted, _listen_problem(value, ""))
    if int(port) > 65535:
        raise ConfigError(dotted, _listen_problem(value, f"port {int(port)} is over 65535"))
    return host, int(port)


def _listen_problem(value: str, why: str) -> str:
    return f"{LISTEN_FORM}, got {value!r}" + (f": {why}" if why else "")


def _brackets_meant(host: str, port: str) -> str:
    """For an IPv6 address written without brackets, the value most likely meant."""
    if re.fullmatch(r"[0-9]+", port) and _is_ipv6(host):
        return f"an IPv6 address goes in brackets; write [{host}]:{port}"
    whole = host + ":" + port
    if whole.startswith("::") and re.fullmatch(r"[0-9]+", whole[2:]):  # "::8080"
        return f"an IPv6 address goes in brackets; for every address write [::]:{whole[2:]}"
    return "an IPv6 address goes in brackets"


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def _check_credentials(section: str, values: Mapping[str, Any]) -> None:
    if not values["enabled"]:
        return
    if not values["username"]:
        raise ConfigError(f"{section}.username", "must not be empty")
    if values["password_hash"]:
        if not is_supported_hash(values["password_hash"]):
            raise ConfigError(
                f"{section}.password_hash",
                "is not an argon2 ($argon2id$...) or scrypt ($scrypt$...) hash",
            )
    elif not values["password"]:
        raise ConfigError(
            f"{section}.password_hash",
            "set password_hash (or password); `aljex-sync init` writes one",
        )


def _tls(live: Mapping[str, Any], base: Path) -> dict[str, Path | None]:
    """Both files or neither; their contents are checked when the server starts (tls.py)."""
    cert, key = live["tls_cert"], live["tls_key"]
    if bool(cert) != bool(key):
        missing = "live.tls_key" if cert else "live.tls_cert"
        raise ConfigError(missing, "set tls_cert and tls_key together, or neither")
    return {"tls_cert": base / cert if cert else None, "tls_key": base / key if key else None}


def _admin(values: Mapping[str, Any]) -> AdminSettings:
    """Off when nothing is set; else a user name and a password (or its hash) are needed."""
    if not (values["username"] or values["password"] or values["password_hash"]):
        return AdminSettings()
    _check_credentials("admin", {**values, "enabled": True})
    return AdminSettings(values["username"], values["password"], values["password_hash"])


def _alerts(values: Mapping[str, Any]) -> AlertSettings:
    """The silence rules, checked: a time of day, a zone zoneinfo knows, an http(s) URL."""
    if values["live_quiet_minutes"] < 0:
        raise ConfigError("alerts.live_quiet_minutes", "must not be negative")
    morning_by = None
    if values["morning_by"]:
        match = re.fullmatch(r"(\d{1,2}):(\d{2})", values["morning_by"].strip())
        if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
            raise ConfigError(
                "alerts.morning_by", f"must be HH:MM, like 07:00, got {values['morning_by']!r}"
            )
        morning_by = time(int(match.group(1)), int(match.group(2)))
    zone = values["time_zone"].strip()
    if zone:
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                "alerts.time_zone",
                f"unknown time zone {zone!r}; use an IANA name like America/Chicago"
                " (on Windows, install the tzdata package)",
            ) from None
    webhook = values["webhook"].strip()
    if webhook:
        parsed = urlsplit(webhook)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError("alerts.webhook", "must be an http:// or https:// URL")
    return AlertSettings(values["live_quiet_minutes"], morning_by, zone, webhook)


def min_tombstone_days(snapshot_margin: float) -> int:
    """The fewest days a tombstone may be kept: more than a day plus ``snapshot_margin``
    (minutes), so that it outlives the snapshot of any morning file that is on time."""
    return int((24 * 60 + snapshot_margin) // (24 * 60)) + 1


def tombstone_days_problem(days: int, snapshot_margin: float) -> str:
    """Why ``days`` cannot be [journal] tombstone_days, or '' when it can (0: forever)."""
    least = min_tombstone_days(snapshot_margin)
    if days == 0 or days >= least:
        return ""
    return (
        f"must be 0 (keep forever) or at least {least} days: more than a day plus"
        f" morning.snapshot_margin ({snapshot_margin:g} minutes)"
    )


def _journal(values: Mapping[str, Any], snapshot_margin: float) -> JournalSettings:
    """How long the journal keeps events and tombstones, checked."""
    if values["keep_days"] < 0:
        raise ConfigError("journal.keep_days", "must not be negative")
    problem = tombstone_days_problem(values["tombstone_days"], snapshot_margin)
    if problem:
        raise ConfigError("journal.tombstone_days", problem)
    return JournalSettings(values["keep_days"], values["tombstone_days"])


def _notify(values: Mapping[str, Any]) -> NotifySettings:
    """The notification sinks, checked: URLs of the right kind, a secret for the webhook."""
    webhook, nats = values["webhook"].strip(), values["nats"].strip()
    if webhook:
        parsed = urlsplit(webhook)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError("notify.webhook", "must be an http:// or https:// URL")
        if not values["secret"]:
            raise ConfigError("notify.secret", "is needed to sign what the webhook is sent")
    if nats:
        parsed = urlsplit(nats)
        if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
            raise ConfigError("notify.nats", "must be a nats:// or tls:// URL")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", values["nats_stream"]):
        raise ConfigError("notify.nats_stream", "must be letters, digits, - or _")
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", values["nats_prefix"]):
        raise ConfigError("notify.nats_prefix", "must be words of letters, digits, - or _ and dots")
    for key in ("poll_seconds", "max_backoff_seconds"):
        if values[key] <= 0:
            raise ConfigError(f"notify.{key}", "must be more than 0")
    return NotifySettings(
        webhook,
        values["secret"],
        nats,
        values["nats_stream"],
        values["nats_prefix"],
        values["poll_seconds"],
        values["max_backoff_seconds"],
    )


def _check_charset(dotted: str, name: str) -> None:
    try:
        "".encode(name)
    except LookupError:
        raise ConfigError(dotted, f"unknown charset {name!r}") from None


def _networks(dotted: str, values: list[str]) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)
    except ValueError as e:
        raise ConfigError(dotted, str(e)) from None


def _proxies(dotted: str, values: list[str]) -> tuple[Network, ...]:
    """Proxies whose X-Forwarded-For is believed; a /0 would let anyone say who they are."""
    networks = _networks(dotted, values)
    for net in networks:
        if net.prefixlen == 0:
            raise ConfigError(
                dotted, f"{net} trusts every address; list your proxy's own address instead"
            )
    return networks


def _check_inbox_apart(
    morning: MorningSettings, url: str, live: LiveSettings, path: Path | None
) -> None:
    """Refuse an inbox that holds the service's own files: every file in the inbox is taken
    for an upload and moved out, so the config or the database would go to unmatched/."""
    own: list[tuple[str, Path]] = [("the SFTP host key", morning.host_key)]
    if path is not None:
        own.append(("the config file", path))
    parsed = database.normalize_url(url)
    name = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and name and not name.startswith(("file:", ":")):
        own.append(("the database", Path(name)))
    own += [("the TLS files", p) for p in (live.tls_cert, live.tls_key) if p is not None]
    inbox = morning.inbox.resolve()
    for what, file in own:
        if file.resolve().parent == inbox:
            raise ConfigError(
                "morning.inbox",
                f"is {inbox}, the folder of {what}: every file in the inbox is taken for a"
                " morning upload and moved out; give the inbox a folder of its own, like"
                ' "inbox"',
            )


def _database_url(url: str, base: Path) -> str:
    """Make a relative SQLite path relative to the config file's folder."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////"):
        rest = url[len(prefix) :]
        if rest and not rest.startswith(":memory:") and not rest.startswith("file:"):
            return prefix + str(base / rest)
    if "://" not in url:
        raise ConfigError("database.url", f"is not a database URL; use {database.SUPPORTED}")
    database.normalize_url(url)  # refuses a database aljex-sync cannot write to
    return url


def _table(name: str, spec: Any) -> TableSettings:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
        raise ConfigError(f"tables.{name}", "is not a valid table name")
    if not isinstance(spec, Mapping):
        raise ConfigError(f"tables.{name}", "must be a section, like [tables.loads]")
    unknown = set(spec) - set(TABLE_SCHEMA)
    if unknown:
        raise ConfigError(f"tables.{name}.{sorted(unknown)[0]}", "unknown key")
    table = name.lower()
    values = {
        k: _typed(f"tables.{name}.{k}", s, spec[k]) if k in spec else s.default
        for k, s in TABLE_SCHEMA.items()
    }
    key = tuple(values["key"]) if values["key"] is not None else catalog.key_for(table)
    if not key or not all(k.strip() for k in key):
        raise ConfigError(f"tables.{name}.key", "must name at least one field")
    if values["delete"] not in ("hard", "soft"):
        raise ConfigError(f"tables.{name}.delete", 'must be "hard" or "soft"')
    mode = values["mode"] if values["mode"] is not None else catalog.mode_for(table)
    if mode not in ("full", "window"):
        raise ConfigError(f"tables.{name}.mode", 'must be "full" or "window"')
    delimiter = values["delimiter"]
    if delimiter is not None and delimiter not in (",", "\t", "|"):
        raise ConfigError(f"tables.{name}.delimiter", 'must be ",", "\\t" or "|"')
    drop = values["max_drop_fraction"]
    if drop is not None and not 0 <= drop <= 1:
        raise ConfigError(f"tables.{name}.max_drop_fraction", "must be between 0 and 1")
    files = tuple(values["files"])
    types = _field_types(f"tables.{name}.types", values["types"])
    history = values["history"] if values["history"] is not None else catalog.history_for(table)
    return TableSettings(
        table, key, values["delete"], mode, files, delimiter, drop, types, history=history
    )


def _field_types(dotted: str, raw: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """``[tables.X.types]``: each field (any case) and one of the typed views' types."""
    for field_name, kind in raw.items():
        if kind not in FIELD_TYPES:
            allowed = ", ".join(f'"{t}"' for t in FIELD_TYPES)
            raise ConfigError(f"{dotted}.{field_name}", f"must be one of {allowed}")
    return tuple((field_name.lower(), kind) for field_name, kind in raw.items())
