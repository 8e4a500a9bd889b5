"""Failed Live Sync and admin logins, kept in the database so that ``status`` shows them.

A password changed on one side only is the likeliest reason records stop arriving, and
the WARNING line each refused request logs is easy to miss in a busy log. Failures are
counted in memory per address (an IPv6 address's /64, as the limits count it:
``settings.address_group``) and user name tried, and written every
:data:`FLUSH_INTERVAL` seconds into ``_aljex_login_failures``, one row per address and
name: a flood of guesses costs one row write per address and interval, never one per
request, and no request is journaled for it (the journal keeps what was authenticated).

At most :data:`MOST_PER_FLUSH` address-and-name pairs are written per interval (those
with the most failures); the rest are counted in the log line. The table keeps
:data:`KEEP_DAYS` days and at most :data:`MOST_ROWS` rows, the oldest going first. Each
HTTP process (``serve --workers``) counts and writes its own, into the same rows.

The admin area's failures go into the same table, the user name tried stored after
:data:`ADMIN_MARK`: a Live Sync user name can never hold a colon (HTTP Basic ends the name
at the first), so the two cannot be confused, and no column had to be added. ``recent``
reads either kind, so an admin flood never hides Aljex's failed logins from ``status``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from .clock import utcnow
from .settings import address_group
from .store.database import reading
from .store.schema import login_failures

log = logging.getLogger("aljex_sync.live")

FLUSH_INTERVAL = 10.0  # seconds between writes of the failures counted meanwhile
MOST_PER_FLUSH = 100
KEEP_DAYS = 7
MOST_ROWS = 1000
NAME_CHARS = 64  # a user name tried is kept this long, as printable text
ADDRESS_CHARS = 64  # the width of its address column (store/schema.py)
RECENT = timedelta(hours=24)  # what ``status`` shows
ADMIN_MARK = "admin:"  # before the user name tried of a failed admin login


@dataclass
class _Count:
    failures: int
    first_at: datetime
    last_at: datetime


@dataclass(frozen=True)
class LoginFailure:
    """One address and user name's failed logins, as ``status`` shows them."""

    address: str
    username: str
    failures: int
    first_at: datetime
    last_at: datetime


class FailedLogins:
    """Counts failed logins in memory and writes them to the database in the background."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._counts: dict[tuple[str, str], _Count] = {}

    def note(self, address: str, username: str, *, admin: bool = False) -> None:
        """Count one refused login (no credentials, a wrong one, or over the limit);
        ``admin``: to the admin area, not Live Sync."""
        now = utcnow()
        name = _printable(username)
        if admin:
            name = (ADMIN_MARK + name)[:NAME_CHARS]
        key = (address_group(address)[:ADDRESS_CHARS], name)
        count = self._counts.get(key)
        if count is None:
            self._counts[key] = _Count(1, now, now)
        else:
            count.failures += 1
            count.last_at = now

    async def run(self, interval: float = FLUSH_INTERVAL) -> None:
        """Write what was counted every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.flush()

    async def flush(self) -> None:
        """Write what was counted since the last flush; on failure, log it and keep it."""
        if not self._counts:
            return
        counts, self._counts = self._counts, {}
        try:
            await asyncio.to_thread(self._write, counts)
        except Exception as e:
            log.warning("could not record failed logins: %s", str(e).splitlines()[0][:300])
            for key, count in counts.items():  # counted again, with what came meanwhile
                newer = self._counts.get(key)
                if newer is not None:
                    count.failures += newer.failures
                    count.last_at = newer.last_at
                self._counts[key] = count

    def _write(self, counts: dict[tuple[str, str], _Count]) -> None:
        ranked = sorted(counts.items(), key=lambda item: -item[1].failures)
        kept, dropped = ranked[:MOST_PER_FLUSH], ranked[MOST_PER_FLUSH:]
        with self.engine.begin() as conn:
            for (address, username), count in kept:
                where = (login_failures.c.address == address) & (
                    login_failures.c.username == username
                )
                bump = (
                    update(login_failures)
                    .where(where)
                    .values(
                        failures=login_failures.c.failures + count.failures,
                        last_at=count.last_at,
                    )
                )
                if conn.execute(bump).rowcount:
                    continue
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(login_failures).values(
                                address=address,
                                username=username,
                                failures=count.failures,
                                first_at=count.first_at,
                                last_at=count.last_at,
                            )
                        )
                except IntegrityError:  # another HTTP process made the row meanwhile
                    conn.execute(bump)
            _prune(conn)
        if dropped:
            log.warning(
                "failed logins from %d more address and user name pairs were not recorded",
                len(dropped),
            )


def _prune(conn: Connection) -> None:
    """Keep :data:`KEEP_DAYS` days of rows, and at most :data:`MOST_ROWS`."""
    cutoff = utcnow() - timedelta(days=KEEP_DAYS)
    conn.execute(delete(login_failures).where(login_failures.c.last_at < cutoff))
    newest = (
        select(login_failures.c.last_at)
        .order_by(login_failures.c.last_at.desc())
        .offset(MOST_ROWS - 1)
        .limit(1)
    )
    oldest_kept = conn.execute(newest).scalar()
    if oldest_kept is not None:
        conn.execute(delete(login_failures).where(login_failures.c.last_at < oldest_kept))


def recent(engine: Engine, *, limit: int = 10, admin: bool = False) -> list[LoginFailure]:
    """The failed Live Sync logins (``admin``: admin logins, the user name tried without
    :data:`ADMIN_MARK`) of the last 24 hours, the latest first."""
    since = utcnow() - RECENT
    marked = login_failures.c.username.startswith(ADMIN_MARK, autoescape=True)
    query = (
        select(login_failures)
        .where(login_failures.c.last_at >= since, marked if admin else ~marked)
        .order_by(login_failures.c.last_at.desc())
        .limit(limit)
    )
    with reading(engine) as conn:
        found = [LoginFailure(**row._mapping) for row in conn.execute(query)]
    if admin:
        found = [replace(f, username=f.username[len(ADMIN_MARK) :]) for f in found]
    return found


def _printable(text: str) -> str:
    """A user name tried, as it can be shown: printable characters, at most NAME_CHARS."""
    return "".join(c if c.isprintable() else "?" for c in text[:NAME_CHARS])
