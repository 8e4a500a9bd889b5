"""The SFTP server's SSH side: who may connect, and password login for one user.

Only password authentication is offered. A failed password is slowed down, and an address
with too many failures within the window is refused before its password is checked. The
limits count an IPv6 client by its /64 (``settings.address_group``), as Live Sync's do: one
subscriber has all of its 2**64 addresses to turn through.

Every connection holds a file descriptor of the process Live Sync runs in, so a connection
beyond a limit (:class:`ConnectionGate`) is closed as soon as it is accepted, before the
SSH banner, and one not logged in within the login time is closed then. Connections closed
for these reasons are logged as one line per reason and ``REPORT_INTERVAL``
(:func:`closed_connections`), however many there are, as Live Sync's are.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, NoReturn, Protocol

import asyncssh

from . import logs
from .settings import address_group, plain_ip, within
from .sftp_settings import SftpSettings

if TYPE_CHECKING:
    from .sftp import SftpInbox

log = logging.getLogger("aljex_sync.sftp")

REPORT_INTERVAL = 60.0
MAX_REASONS = 100  # the reasons are this module's own; a bound all the same


class Waiting(Protocol):
    """A connection not logged in yet, which the gate may close for a newer one."""

    def give_way(self) -> None: ...


class ConnectionGate:
    """The SSH connections open, and whether one more may be: at most ``max_connections``,
    of which ``max_unauthenticated`` not logged in yet, ``max_unauthenticated_per_address``
    of those from one address (as ``address_group`` counts one: an IPv6 address's /64).

    Refusing every connection once ``max_unauthenticated`` wait to log in let a few
    addresses holding idle connections shut Aljex out. So a connection from an address
    with fewer waiting than another address takes the place of that address's oldest
    connection that has not begun to log in, which is closed. One that has begun (its key
    exchange done, its password being checked) is never closed for another: a flood of
    bare connections, however fast it comes again, cannot end Aljex's login halfway. A
    connection that finds no such place is refused.
    """

    def __init__(self, settings: SftpSettings) -> None:
        self._settings = settings
        self.open = 0
        # Per address, its connections not logged in yet, oldest first.
        self._waiting: dict[str, dict[Waiting, None]] = {}
        self._logging_in: set[Waiting] = set()  # of those, the ones that began to log in

    def admit(self, addr: str, conn: Waiting) -> str | None:
        """Count in a connection from ``addr``; or, if it would pass a limit, which one."""
        settings = self._settings
        if self.open >= settings.max_connections:
            return f"over {settings.max_connections} connections at once"
        per_address = settings.max_unauthenticated_per_address
        mine = len(self._waiting.get(addr, ()))
        if mine >= per_address:
            return f"over {per_address} connections not logged in from one address"
        if sum(map(len, self._waiting.values())) >= settings.max_unauthenticated:
            victim = self._place_for(mine)
            if victim is None:
                return f"over {settings.max_unauthenticated} connections not logged in"
            self._done_waiting(*victim)
            victim[1].give_way()
        self.open += 1
        self._waiting.setdefault(addr, {})[conn] = None
        return None

    def _place_for(self, mine: int) -> tuple[str, Waiting] | None:
        """The connection a newcomer whose address has ``mine`` waiting may replace: the
        oldest not logging in yet, of the address with the most waiting (more than mine)."""
        for addr in sorted(self._waiting, key=lambda a: -len(self._waiting[a])):
            if len(self._waiting[addr]) <= mine:
                return None
            for conn in self._waiting[addr]:
                if conn not in self._logging_in:
                    return addr, conn
        return None

    def logging_in(self, addr: str, conn: Waiting) -> None:
        """``conn`` began to log in (asyncssh's ``begin_auth``): never replaced from now."""
        if conn in self._waiting.get(addr, ()):
            self._logging_in.add(conn)

    def logged_in(self, addr: str, conn: Waiting) -> None:
        self._done_waiting(addr, conn)

    def left(self, addr: str, conn: Waiting) -> None:
        self.open -= 1
        self._done_waiting(addr, conn)

    def _done_waiting(self, addr: str, conn: Waiting) -> None:
        self._logging_in.discard(conn)
        waiting = self._waiting.get(addr)
        if waiting is None or conn not in waiting:
            return  # logged in, or closed for another already
        del waiting[conn]
        if not waiting:
            del self._waiting[addr]


def closed_connections(interval: float = REPORT_INTERVAL) -> logs.CountedRepeats[str]:
    """The log of SSH connections closed for one reason: the first at once, with its
    address; the rest counted and logged once per ``interval`` (and when the server
    stops) with the address most of them came from, so a flood costs a few log lines,
    not one per connection."""
    return logs.CountedRepeats(
        lambda summary: log.warning(
            "closed %d more SSH connection(s) in %.0f s: %s (most from %s)",
            summary.count,
            summary.seconds,
            summary.key,
            summary.most_from,
        ),
        first=lambda reason, addr: log.warning(
            "closed an SSH connection from %s: %s", addr, reason
        ),
        interval=interval,
        max_keys=MAX_REASONS,
        overflow=lambda _reason: "other reasons",
    )


class LoginGuard:
    """Counts login attempts per source address (``address_group``: an IPv6 address's /64), so
    password guessing from one place stops early.

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
        self._group = "unknown"  # what the limits count it by: ``address_group``
        self._admitted = False
        self._logged_in = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._addr = peer_address(conn)
        self._group = address_group(self._addr)
        allowed = self._settings.allow_ips
        refused = None
        if allowed and not within(self._addr, allowed):
            refused = "address not allowed"
        refused = refused or self._inbox.gate.admit(self._group, self)
        if refused is not None:
            self._inbox.closings.count(refused, self._addr)
            conn.abort()  # before the banner: the descriptor goes back at once
            return
        self._admitted = True
        self._inbox.connections.add(conn)
        timeout = self._settings.login_timeout
        self._deadline = asyncio.get_running_loop().call_later(timeout, self._too_slow, timeout)

    def auth_completed(self) -> None:
        self._cancel_deadline()
        self._logged_in = True
        self._inbox.gate.logged_in(self._group, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._admitted and self._conn is not None:
            self._admitted = False
            self._inbox.connections.discard(self._conn)
            self._inbox.gate.left(self._group, self)

    def give_way(self) -> None:
        """Closed, not logged in yet, for a connection from another address (the gate)."""
        self._cancel_deadline()
        if self._conn is not None:
            reason = "not logged in; its place given to a connection from another address"
            self._inbox.closings.count(reason, self._addr)
            self._conn.abort()

    def _too_slow(self, timeout: float) -> None:
        self._deadline = None
        if self._conn is not None:
            self._inbox.closings.count(f"not logged in within {timeout:g} s", self._addr)
            self._conn.abort()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    async def begin_auth(self, username: str) -> bool:
        self._refuse_if_locked(username)
        self._inbox.gate.logging_in(self._group, self)
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
        slot = guard.reserve(self._group)
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
            guard.release(self._group, slot)
            log.info("login ok: user %r from %s", username, self._addr)
            return True
        log.warning(
            "login failed: user %r from %s (%d of %d allowed in %.0f s)",
            username,
            self._addr,
            guard.failures(self._group),
            self._settings.max_failed_logins,
            self._settings.failed_login_window,
        )
        await asyncio.sleep(self._settings.failed_login_delay)
        return False

    def _refuse_if_locked(self, username: str) -> None:
        if self._inbox.guard.is_locked(self._group):
            self._refuse(username)

    def _refuse(self, username: str) -> NoReturn:
        log.warning("login refused: user %r from %s is locked out", username, self._addr)
        raise asyncssh.PermissionDenied("Too many failed logins; try again later")


def peer_address(conn: asyncssh.SSHServerConnection) -> str:
    """The client's address; an IPv4 client of a dual-stack listener (``::ffff:a.b.c.d``)
    as the IPv4 address it is, in the logs as in the checks."""
    peer = conn.get_extra_info("peername")
    if not peer:
        return "unknown"
    ip = plain_ip(str(peer[0]))
    return str(peer[0]) if ip is None else str(ip)
