"""The SFTP server's SSH side: password login for one user, with a lockout per address.

Only password authentication is offered. A failed password is slowed down, and an address
with too many failures within the window is refused before its password is checked.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, NoReturn

import asyncssh

if TYPE_CHECKING:
    from .sftp import SftpInbox

log = logging.getLogger("aljex_sync.sftp")


class LoginGuard:
    """Counts login attempts per source address, so password guessing from one place stops early.

    An attempt takes its slot before the password is checked, and gives it back only if the
    password was right: a burst of parallel guesses can never get more than ``limit`` checks
    in one window, however slow each check is.
    """

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._attempts: dict[str, deque[float]] = {}

    def is_locked(self, addr: str) -> bool:
        self._forget_old()
        return len(self._attempts.get(addr, ())) >= self._limit

    def reserve(self, addr: str) -> float | None:
        """Take a slot for one password check; None when the address is locked out."""
        self._forget_old()
        attempts = self._attempts.setdefault(addr, deque())
        if len(attempts) >= self._limit:
            return None
        slot = time.monotonic()
        attempts.append(slot)
        return slot

    def release(self, addr: str, slot: float) -> None:
        """Give back the slot of an attempt that succeeded: it is no failure."""
        attempts = self._attempts.get(addr)
        if attempts is not None and slot in attempts:
            attempts.remove(slot)

    def failures(self, addr: str) -> int:
        return len(self._attempts.get(addr, ()))

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - self._window
        for addr, attempts in list(self._attempts.items()):
            while attempts and attempts[0] <= cutoff:
                attempts.popleft()
            if not attempts:
                del self._attempts[addr]


class InboxSSHServer(asyncssh.SSHServer):
    """One SSH connection: password login for the configured user, with the lockout."""

    def __init__(self, inbox: SftpInbox) -> None:
        self._inbox = inbox
        self._settings = inbox.settings
        self._conn: asyncssh.SSHServerConnection | None = None
        self._addr = "unknown"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._addr = peer_address(conn)
        self._inbox.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._inbox.connections.discard(self._conn)

    async def begin_auth(self, username: str) -> bool:
        self._refuse_if_locked(username)
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    async def validate_password(self, username: str, password: str) -> bool:
        guard = self._inbox.guard
        slot = guard.reserve(self._addr)
        if slot is None:
            self._refuse(username)
        user_ok = hmac.compare_digest(username.encode(), self._settings.username.encode())
        # Checked even for a wrong user, so the answer takes as long either way.
        try:
            password_ok = await asyncio.to_thread(self._settings.check_password, password)
        except Exception:
            log.exception("check_password raised; treating the login as failed")
            password_ok = False
        if user_ok and password_ok:
            guard.release(self._addr, slot)
            log.info("login ok: user %r from %s", username, self._addr)
            return True
        log.warning(
            "login failed: user %r from %s (%d of %d allowed in %.0f s)",
            username,
            self._addr,
            guard.failures(self._addr),
            self._settings.max_failed_logins,
            self._settings.failed_login_window,
        )
        await asyncio.sleep(self._settings.failed_login_delay)
        return False

    def _refuse_if_locked(self, username: str) -> None:
        if self._inbox.guard.is_locked(self._addr):
            self._refuse(username)

    def _refuse(self, username: str) -> NoReturn:
        log.warning("login refused: user %r from %s is locked out", username, self._addr)
        raise asyncssh.PermissionDenied("Too many failed logins; try again later")


def peer_address(conn: asyncssh.SSHServerConnection) -> str:
    peer = conn.get_extra_info("peername")
    return str(peer[0]) if peer else "unknown"
