"""Every configuration key, declared once: its type, default and one line of help.

``config`` reads and checks the values; ``cli/config_file`` writes ``init``'s file from the
same declarations; docs/configuration.md documents the same keys (tests/test_docs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default and one line of help."""

    type: type
    default: Any
    help: str


SCHEMA: dict[str, dict[str, Key]] = {
    "database": {
        "url": Key(str, "sqlite:///aljex.db", "SQLAlchemy URL of the target database"),
        "timeout": Key(float, 5.0, "seconds to wait for a busy or unreachable database"),
    },
    "live": {
        "enabled": Key(bool, True, "run the Live Sync HTTP endpoint"),
        "listen": Key(str, "0.0.0.0:8080", "HOST:PORT or [IPv6]:PORT the HTTP endpoint listens on"),
        "path": Key(str, "/aljex/sync", "URL path Aljex posts to"),
        "username": Key(str, "aljex", "user name Aljex sends with HTTP Basic auth"),
        "password": Key(str, "", "password in clear (prefer password_hash)"),
        "password_hash": Key(str, "", "argon2 or scrypt hash of the password"),
        "allow_ips": Key(list, [], "CIDRs allowed to post; empty means any address"),
        "trusted_proxies": Key(list, [], "CIDRs whose X-Forwarded-For is believed"),
        "max_body_bytes": Key(int, 1048576, "largest request body accepted"),
        "max_fields": Key(int, 1000, "most fields accepted in one request"),
        "legacy_charset": Key(str, "cp1252", "charset of values that are not valid UTF-8"),
        "accept_tables": Key(list, [], "tables Live Sync may write; empty means any"),
        "max_tables": Key(int, 200, "most synced tables; Live Sync creates no more"),
        "max_failed_logins": Key(int, 10, "failed logins from one address before it gets 429"),
        "failed_login_window": Key(
            float, 300.0, "seconds a failed login counts against its address"
        ),
        "header_timeout": Key(float, 10.0, "seconds a client has to send a request's headers"),
        "body_timeout": Key(float, 30.0, "seconds a client has to send a request's body"),
        "max_connections": Key(int, 256, "open HTTP connections at most; more are closed at once"),
        "max_connections_per_address": Key(
            int, 64, "open HTTP connections from one address at most (proxies aside)"
        ),
        "tls_cert": Key(str, "", "PEM certificate (chain) file: serve HTTPS; empty: plain HTTP"),
        "tls_key": Key(str, "", "PEM private key file of tls_cert"),
    },
    "morning": {
        "enabled": Key(bool, True, "receive Morning Sync files"),
        "sftp": Key(bool, True, "run the embedded SFTP server (false: watch the inbox)"),
        "listen": Key(str, "0.0.0.0:2222", "HOST:PORT or [IPv6]:PORT the SFTP server listens on"),
        "username": Key(str, "aljex", "SFTP user name Aljex logs in with"),
        "password": Key(str, "", "SFTP password in clear (prefer password_hash)"),
        "password_hash": Key(str, "", "argon2 or scrypt hash of the SFTP password"),
        "allow_ips": Key(list, [], "CIDRs allowed to connect by SFTP; empty means any address"),
        "inbox": Key(str, "inbox", "folder the files arrive in"),
        "host_key": Key(str, "ssh_host_key", "SFTP host key file, generated once"),
        "quiet_seconds": Key(float, 10.0, "folder-watch mode: load a file unchanged this long"),
        "snapshot_margin": Key(float, 30.0, "minutes taken off a file's export time estimate"),
        "max_delete_fraction": Key(float, 0.5, "a full file may delete at most this share"),
        "max_drop_fraction": Key(
            float, 0.2, "a full file may have at most this share fewer rows than the last"
        ),
        "legacy_charset": Key(str, "cp1252", "charset of the bytes of a file that are not UTF-8"),
    },
    "admin": {
        "username": Key(str, "", "user name of the admin page and /metrics; empty: off"),
        "password": Key(str, "", "admin password in clear (prefer password_hash)"),
        "password_hash": Key(str, "", "argon2 or scrypt hash of the admin password"),
    },
    "alerts": {
        "live_quiet_minutes": Key(
            float, 0.0, "live feed unhealthy after this long without an applied event; 0: off"
        ),
        "morning_by": Key(str, "", 'HH:MM a morning file must have loaded by each day; "": off'),
        "time_zone": Key(str, "", 'IANA time zone of morning_by; "": this machine\'s'),
        "webhook": Key(str, "", "URL that gets a JSON POST on each change of a feed's health"),
    },
    "journal": {
        "keep_days": Key(int, 30, "days applied events are kept; 0: forever"),
        "tombstone_days": Key(int, 30, "days the keys live sync deleted are kept; 0: forever"),
    },
    "notify": {
        "webhook": Key(str, "", "URL that gets each applied change as a signed JSON POST"),
        "secret": Key(str, "", "key of the webhook's HMAC-SHA256 signature (needed with webhook)"),
        "nats": Key(str, "", "NATS URL (nats://HOST:4222): publish each change to JetStream"),
        "nats_stream": Key(str, "ALJEX", "JetStream stream of the subjects, made if missing"),
        "nats_prefix": Key(str, "aljex", "first part of the subjects: PREFIX.<table>.<action>"),
        "poll_seconds": Key(float, 1.0, "seconds between two looks at the journal for changes"),
        "max_backoff_seconds": Key(
            float, 300.0, "longest pause between two tries of a failing sink"
        ),
    },
}

TABLE_SCHEMA: dict[str, Key] = {
    "key": Key(list, None, "key fields of the table"),
    "delete": Key(str, "hard", "hard: remove deleted rows; soft: set _aljex_deleted_at"),
    "mode": Key(str, None, "morning file mode: full or window"),
    "files": Key(list, [], "globs of morning file names that belong to this table"),
    "delimiter": Key(str, None, "CSV delimiter of this table's morning files"),
    "max_drop_fraction": Key(float, None, "this table's [morning] max_drop_fraction"),
    "types": Key(dict, {}, "field = type in the typed view: date, time, money, int, bool, text"),
    "history": Key(bool, None, "keep <table>__history, every version of each record (loads: on)"),
}
