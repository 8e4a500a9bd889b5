"""The settings aljex-sync runs with, as ``config`` makes them from the file and the
environment: one frozen dataclass per section, and ``Settings`` holding them all."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Literal

from . import catalog
from .catalog import Mode

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def within(address: str, networks: tuple[Network, ...]) -> bool:
    """True when ``address`` is an IP address in one of ``networks``; an IPv4 address a
    dual-stack listener reports as IPv6 (``::ffff:a.b.c.d``) as the IPv4 address it is."""
    ip = plain_ip(address)
    return ip is not None and any(ip in net for net in networks)


def plain_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``address`` as an IP address, ``::ffff:a.b.c.d`` as ``a.b.c.d``; None if it is none."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def address_group(address: str) -> str:
    """What one client is counted by in the limits per address: its IPv4 address (as a
    dual-stack listener's ``::ffff:a.b.c.d`` too), or its IPv6 address's /64, which a
    single subscriber gets whole (2**64 addresses to turn through); else the text itself.
    Counting exact IPv6 addresses would limit no one."""
    ip = plain_ip(address)
    if ip is None:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def host_port(host: str, port: int | str) -> str:
    """``host:port`` as a URL or a listen value writes it: an IPv6 address in brackets
    (``[::1]:8080``), since in ``::1:8080`` nothing says where the address ends."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


DeleteMode = Literal["hard", "soft"]


@dataclass(frozen=True)
class DatabaseSettings:
    url: str
    timeout: float


@dataclass(frozen=True)
class LiveSettings:
    enabled: bool
    host: str
    port: int
    path: str
    username: str
    password: str
    password_hash: str
    allow_ips: tuple[Network, ...]
    trusted_proxies: tuple[Network, ...]
    max_body_bytes: int
    max_fields: int
    legacy_charset: str
    max_failed_logins: int
    failed_login_window: float
    header_timeout: float
    body_timeout: float
    max_connections: int
    max_connections_per_address: int = 64
    accept_tables: frozenset[str] = frozenset()
    max_tables: int = 200
    tls_cert: Path | None = None  # with tls_key: HTTPS
    tls_key: Path | None = None


@dataclass(frozen=True)
class MorningSettings:
    enabled: bool
    sftp: bool
    host: str
    port: int
    username: str
    password: str
    password_hash: str
    inbox: Path
    host_key: Path
    quiet_seconds: float
    snapshot_margin: float
    max_delete_fraction: float
    legacy_charset: str
    max_drop_fraction: float = 0.2
    allow_ips: tuple[Network, ...] = ()


@dataclass(frozen=True)
class AdminSettings:
    """The admin area (``/admin/``, ``/metrics``): off unless a user and a password are set."""

    username: str = ""
    password: str = ""
    password_hash: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.username and (self.password or self.password_hash))


@dataclass(frozen=True)
class AlertSettings:
    """When a silent feed counts as unhealthy (``alerts.py``); every rule off by default."""

    live_quiet_minutes: float = 0.0  # 0: off
    morning_by: time | None = None  # local time of day in time_zone; None: off
    time_zone: str = ""  # IANA name; "": the machine's own
    webhook: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.live_quiet_minutes or self.morning_by)


@dataclass(frozen=True)
class JournalSettings:
    """How long the journal keeps what it no longer needs (``retention.py``)."""

    keep_days: int = 30  # 0: forever
    tombstone_days: int = 30  # 0: forever; else at least ``config.min_tombstone_days``


@dataclass(frozen=True)
class NotifySettings:
    """Where each applied change is sent (``notify.py``); off while both sinks are empty."""

    webhook: str = ""
    secret: str = ""
    nats: str = ""
    nats_stream: str = "ALJEX"
    nats_prefix: str = "aljex"
    poll_seconds: float = 1.0
    max_backoff_seconds: float = 300.0

    @property
    def enabled(self) -> bool:
        return bool(self.webhook or self.nats)


@dataclass(frozen=True)
class TableSettings:
    """A table's settings, with the catalog filled in where the file is silent."""

    name: str
    key: tuple[str, ...]
    delete: DeleteMode
    mode: Mode
    files: tuple[str, ...] = ()
    delimiter: str | None = None
    max_drop_fraction: float | None = None  # None: [morning] max_drop_fraction
    types: tuple[tuple[str, str], ...] = ()  # [tables.X.types]: (field, type) for the views
    history: bool = False  # keep <table>__history (store/history.py)


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings
    live: LiveSettings
    morning: MorningSettings
    tables: Mapping[str, TableSettings] = field(default_factory=dict)
    path: Path | None = None
    admin: AdminSettings = AdminSettings()
    alerts: AlertSettings = AlertSettings()
    journal: JournalSettings = JournalSettings()
    notify: NotifySettings = NotifySettings()

    def table(self, name: str) -> TableSettings:
        """The settings of a table, from ``[tables.NAME]`` or else the catalog."""
        found = self.tables.get(name)
        if found is not None:
            return found
        return TableSettings(
            name,
            catalog.key_for(name),
            "hard",
            catalog.mode_for(name),
            history=catalog.history_for(name),
        )

    def keeps_history(self, name: str) -> bool:
        """Whether table ``name`` keeps ``<name>__history``: ``[tables.X] history``, else
        on for the catalog's tables (loads)."""
        return self.table(name).history

    @property
    def field_types(self) -> dict[str, dict[str, str]]:
        """``[tables.X.types]`` of every table that has one: table to field to type."""
        return {name: dict(t.types) for name, t in self.tables.items() if t.types}
