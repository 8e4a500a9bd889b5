"""Logins at the HTTP edge: failure limits per address, and fair turns at the slow check.

An address here is a client as ``settings.address_group`` counts it: an IPv4 address, or an
IPv6 address's /64, so that a client turning through the addresses of its /64 is one.

A wrong password costs the server a slow hash (argon2 or scrypt), so password guessing is
also a way to take the CPU from Aljex. Three rules keep Aljex's own login prompt:

- an address with ``max_failures`` failed logins within ``window`` seconds is refused
  with 429 and a Retry-After, before any check. Failures are counted when they happen
  and every check of one address waits for the one before it, so a burst of parallel
  guesses is checked at most ``max_failures`` times, not once per request;
- one address has at most one slow check in flight; its other requests wait for it, and
  once one of them succeeds the rest pass on the fast path;
- the slow checks share a few slots, and an address with recent failures waits behind
  every address without any. Aljex, whose logins succeed, is never queued behind an
  attacker's guesses, only behind the one check that may be running.

Live Sync and the admin area each keep their own failures (a guess at one password says
nothing about the other, and Aljex's logins must not clear an admin guesser's count when
both come through one proxy), but share the slow-check slots: the CPU is one, and an
admin guesser's hashes wait behind Aljex's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .credentials import PasswordCheck
from .settings import address_group

# Slow hashes running at once; the rest of the CPU stays with the HTTP loop and the writer.
SLOW_SLOTS = 2
# Addresses remembered at most; the oldest are forgotten first when an attack uses many.
MAX_ADDRESSES = 10_000


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """The user name and password of an HTTP Basic ``Authorization`` header; None for no
    header, another scheme, or one that does not decode (taken as no credentials)."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


@dataclass(frozen=True)
class Verdict:
    """What became of one login: let in, or refused; ``retry_after`` is set when it was
    refused unchecked, its address being over the failure limit (429, not 401)."""

    ok: bool
    retry_after: int | None = None


class Logins:
    """Failed logins per address (an IPv6 address's /64), and whose turn it is at the slow
    password check.

    ``slots``: a number of slow-check slots of its own, or another ``Logins``' slots to
    share (``other.slots``).
    """

    def __init__(
        self, *, max_failures: int, window: float, slots: int | SlowSlots = SLOW_SLOTS
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}
        self.slots = slots if isinstance(slots, SlowSlots) else SlowSlots(slots)

    async def login(
        self, address: str, username: str, password: str, check: PasswordCheck
    ) -> Verdict:
        """Check a login from ``address`` under this limiter's rules, counting the outcome.

        An address over its failure limit is refused before its password is looked at. A
        password only the slow hash can decide waits for its address's turn; the limit is
        checked again once the turn comes, since the requests ahead of it may have failed.
        """
        wait = self.retry_after(address)
        if wait is not None:
            return Verdict(ok=False, retry_after=wait)
        ok = check.check_fast(username, password)
        if ok is None:
            async with self.slow_turn(address):
                wait = self.retry_after(address)
                if wait is not None:
                    return Verdict(ok=False, retry_after=wait)
                ok = await asyncio.to_thread(check.check, username, password)
        if ok:
            self.succeeded(address)
        else:
            self.failed(address)
        return Verdict(ok=ok)

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None if it may try now."""
        recent = self._recent(address)
        if len(recent) < self.max_failures:
            return None
        # The oldest failure that keeps the address at the limit must leave the window.
        oldest = recent[len(recent) - self.max_failures]
        return max(1, math.ceil(oldest + self.window - time.monotonic()))

    def suspect(self, address: str) -> bool:
        """True while ``address`` has failed logins within the window."""
        return bool(self._recent(address))

    def failed(self, address: str) -> None:
        """Count a failed login from ``address``."""
        address = address_group(address)
        recent = self._failures.pop(address, None) or deque()
        recent.append(time.monotonic())
        while len(recent) > self.max_failures:
            recent.popleft()
        self._failures[address] = recent  # re-inserted: the dict stays oldest first
        while len(self._failures) > MAX_ADDRESSES:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, address: str) -> None:
        """Forget the failures of an address that has just logged in."""
        self._failures.pop(address_group(address), None)

    @contextlib.asynccontextmanager
    async def slow_turn(self, address: str) -> AsyncIterator[None]:
        """Wait for this address's turn, then for a slot; an address with failures waits
        behind those without."""
        address = address_group(address)
        lock, users = self._turns.get(address, (asyncio.Lock(), 0))
        self._turns[address] = (lock, users + 1)
        try:
            async with lock:
                await self.slots.acquire(last=self.suspect(address))
                try:
                    yield
                finally:
                    self.slots.release()
        finally:
            lock, users = self._turns[address]
            if users > 1:
                self._turns[address] = (lock, users - 1)
            else:
                del self._turns[address]

    def _recent(self, address: str) -> deque[float]:
        address = address_group(address)
        recent = self._failures.get(address)
        if recent is None:
            return deque()
        horizon = time.monotonic() - self.window
        while recent and recent[0] <= horizon:
            recent.popleft()
        if not recent:
            del self._failures[address]
        return recent


class SlowSlots:
    """A semaphore with two queues: waiters in the first are always woken before the second."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(),
            deque(),
        )

    async def acquire(self, *, last: bool) -> None:
        if self._free and not any(self._waiting):
            self._free -= 1
            return
        queue = self._waiting[1 if last else 0]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as this waiter was cancelled
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the slot to the first live waiter, first queue first, or free it."""
        for queue in self._waiting:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1
