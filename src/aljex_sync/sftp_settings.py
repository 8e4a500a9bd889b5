"""The SFTP server's settings, what its SSH side offers, and its host key.

The algorithms are chosen to pass ssh-audit; the host key is ed25519, generated once and
kept, since the customer gives its fingerprint to Aljex.

The connection and open-upload limits keep the server inside the file descriptors Live Sync
leaves to everything else (``http_server.RESERVED_DESCRIPTORS``): the SFTP server takes at
most half of them, whatever a client does. Aljex logs in with one connection, or a few, and
uploads one file at a time.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from asyncssh.crypto import mlkem_available

from .errors import ConfigError
from .folders import folder_problem
from .http_server import RESERVED_DESCRIPTORS
from .settings import Network

log = logging.getLogger("aljex_sync.sftp")

#: Key exchanges offered: Curve25519, after the post-quantum hybrid where the cryptography
#: library provides ML-KEM. No NIST P-curves (ssh-audit fails them: their constants are
#: unexplained), no group exchange (asyncssh would hand out a 1024-bit group to a client that
#: asks for one), and no fixed finite-field groups, which the cryptography library deprecates.
KEX_ALGORITHMS = (
    *(("mlkem768x25519-sha256",) if mlkem_available else ()),
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
)
#: Ciphers offered: AEAD only (their integrity is built in), then AES-CTR, which is offered
#: with the encrypt-then-MAC MACs only. No CBC, no RC4, no 3DES.
CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
#: MACs offered (used with the CTR ciphers only): encrypt-then-MAC only, as MAC-then-encrypt
#: makes the receiver decrypt what it has not authenticated. No SHA-1, no MD5, no truncation.
MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
)
#: The software version in the server's SSH banner: the name only, so the banner does not
#: tell a scanner which library version, and which of its bugs, it is talking to.
SERVER_VERSION = "aljex-sync"
#: Host key signature algorithm; the host key is always ed25519.
HOST_KEY_ALGORITHM = "ssh-ed25519"

#: The descriptors the SFTP server may hold: half of what Live Sync leaves to the rest.
SSH_DESCRIPTORS = RESERVED_DESCRIPTORS // 2
#: The listen backlog: asyncio accepts up to this many connections in one go, before any
#: of them can be refused, and again before the first are closed (a flood from 16
#: addresses peaked at 48 descriptors, the 8 connections kept included). A larger one
#: takes more descriptors in a flood; Aljex's connection, if the kernel drops it when the
#: queue is full, is tried again by its client a second later.
SSH_BACKLOG = SSH_DESCRIPTORS // 4
#: SSH connections at once; each holds a socket, and while it uploads, a file.
MAX_CONNECTIONS = (SSH_DESCRIPTORS - 2 * SSH_BACKLOG) // 2
#: Upload handles open at once across all sessions, each holding a file descriptor: one per
#: connection, which is what the descriptor budget above leaves room for. Without a limit one
#: session opening thousands of handles took every descriptor of the process, and Live Sync
#: with it. Fixed, not a setting: more would not fit the budget.
MAX_OPEN_UPLOADS = MAX_CONNECTIONS
#: Upload handles one SFTP session may hold open at once. Aljex uploads one file at a time;
#: a few leave room for clients that overlap the close of one file with the open of the
#: next, while one session cannot take every place of :data:`MAX_OPEN_UPLOADS`.
MAX_OPEN_UPLOADS_PER_SESSION = 4
#: Of those, connections not logged in yet (OpenSSH's MaxStartups): the rest stay free for
#: Aljex once logged in, whoever else connects.
MAX_UNAUTHENTICATED = MAX_CONNECTIONS // 2
#: Connections not logged in yet from one address: one scanner or flood from a single
#: address cannot take the room Aljex needs to log in.
MAX_UNAUTHENTICATED_PER_ADDRESS = 3
#: Seconds a connection has to log in (OpenSSH's LoginGraceTime); then it is closed.
LOGIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class SftpSettings:
    """Where and how to serve the inbox; the limits keep one bad client from doing much harm."""

    host: str
    port: int  # 0 = pick a free port (tests)
    username: str
    # Given the presented password; it may be slow (scrypt/argon2), so it runs in a thread.
    check_password: Callable[[str], bool]
    inbox: Path
    host_key: Path  # ed25519, generated once if missing (0600), then reused
    max_file_bytes: int = 4 * 1024**3
    max_failed_logins: int = 5  # per source address within failed_login_window
    failed_login_window: float = 300.0
    failed_login_delay: float = 1.0  # seconds each failed password attempt is slowed by
    max_connections: int = MAX_CONNECTIONS  # more are closed as soon as they are accepted
    max_unauthenticated: int = MAX_UNAUTHENTICATED
    max_unauthenticated_per_address: int = MAX_UNAUTHENTICATED_PER_ADDRESS
    login_timeout: float = LOGIN_TIMEOUT
    allow_ips: tuple[Network, ...] = ()  # empty: any address may connect
    max_open_uploads: int = MAX_OPEN_UPLOADS  # across sessions; more opens are refused
    max_open_uploads_per_session: int = MAX_OPEN_UPLOADS_PER_SESSION


def host_key_fingerprint(path: Path) -> str:
    """Load the host key (generating it on first use) and return its OpenSSH SHA256 fingerprint.

    The customer gives this to Aljex, so it must be stable across restarts.
    """
    key, created = load_or_create_host_key(path)
    if created:
        log.info("generated SSH host key %s", path)
    return key.get_fingerprint("sha256")


def load_or_create_host_key(path: Path) -> tuple[asyncssh.SSHKey, bool]:
    """Read the ed25519 host key, or create it (0600) if missing, so the fingerprint is stable.

    Returns the key and whether it was created now, for the caller to log: a key ``serve``
    creates where one was used before is a changed key to Aljex. A key that cannot be
    read or made is a ConfigError naming the file or its folder and the system's reason.
    """
    created = False
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise ConfigError(
                "morning.host_key", folder_problem(path.parent, e, writing=False)
            ) from None
        try:
            created = _create_host_key(path)
        except OSError as e:
            raise ConfigError(
                "morning.host_key", f"cannot create {path}: {e.strerror or e}"
            ) from None
    try:
        key = asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise ConfigError("morning.host_key", f"cannot read {path}: {exc}") from exc
    if key.get_algorithm() != HOST_KEY_ALGORITHM:
        raise ConfigError(
            "morning.host_key",
            f"{path} is an {key.get_algorithm()} key; it must be {HOST_KEY_ALGORITHM}"
            " (remove it and a new one is generated)",
        )
    if path.stat().st_mode & 0o077:
        log.warning("host key %s is readable by other users; chmod 600 it", path)
    return key, created


def _create_host_key(path: Path) -> bool:
    """Write a new key to ``path`` unless one appears there meanwhile; True if this one won."""
    key = asyncssh.generate_private_key(HOST_KEY_ALGORITHM, comment="aljex-sync host key")
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(key.export_private_key("openssh"))
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temp, path)  # atomic create-if-absent
        except FileExistsError:  # a concurrent start won: keep its key
            return False
    finally:
        temp.unlink(missing_ok=True)
    return True
