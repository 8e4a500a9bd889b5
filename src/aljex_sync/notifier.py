"""One notifier among receivers: only the process that holds the notifier's lock sends.

Receivers on several hosts may all have ``[notify]``; each change must still go out once
(at least once), in journal order. The sinks' cursors are in the database
(``_aljex_meta``), so whichever process sends goes on where the last one stopped, and a
lock it keeps for as long as it sends (``store.locks.KeptLock``: a session's advisory lock
on PostgreSQL, ``GET_LOCK`` on MariaDB, a file lock beside an SQLite database) makes sure
only one process sends at a time. ``serve --workers N`` runs the notifier in its main
process only, like the other chores.

- Each process with ``[notify]`` tries the lock at start, then every ``TRY_EVERY``
  seconds. The one that takes it says so at INFO and sends; the others say at INFO who
  sends, and wait.
- The holder checks every ``TRY_EVERY`` seconds that it still holds the lock, and notes in
  ``_aljex_meta`` (``notifier.holder``) that it does, with when. Having lost it (its
  database connection ended), it stops sending and tries again like the others.
- A holder that dies lets go of the lock as its connection closes; another process takes
  it at its next try and resumes from the cursors: what the dead one sent but had not
  recorded is sent again (at least once), nothing is skipped, and the order is kept.
- A waiting process that sees the holder's note unchanged for ``STALLED_AFTER`` seconds
  (or cannot try the lock for as long) warns: notifications wait, typically for the
  database to drop the connection of a host that vanished without closing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, inspect, select

from .chores import BackgroundTasks
from .clock import utcnow
from .config import Settings
from .notify import ChangeFeed, Delivery, sinks_for
from .store.database import reading
from .store.locks import KeptLock
from .store.migrations import meta, write_meta

log = logging.getLogger("aljex_sync.notify")

TRY_EVERY = 5.0  # seconds between tries of the lock, and between the holder's checks of it
STALLED_AFTER = 60.0  # seconds without a sign of the holder before a waiting process warns
HOLDER = "notifier.holder"  # the _aljex_meta row of the process that sends
LOCK = "notifier"


def this_process() -> str:
    """How the logs and ``status`` name this process: host and pid."""
    return f"{socket.gethostname()} pid {os.getpid()}"


@dataclass(frozen=True)
class Holder:
    """The process that sends notifications, as it last noted."""

    by: str
    since: str  # when it took the lock, ISO UTC
    seen: str  # when it last checked it still held the lock
    stopped: str = ""  # when it let go of it, if it stopped cleanly

    def line(self) -> str:
        def shown(moment: str) -> str:
            return moment[:19].replace("T", " ")

        if self.stopped:
            return f"none (last {self.by}, stopped {shown(self.stopped)} UTC)"
        return f"{self.by}, since {shown(self.since)} UTC (last seen {shown(self.seen)} UTC)"


def read_holder(engine: Engine) -> Holder | None:
    """The sending process's note, or None when none has ever sent; reads only."""
    with reading(engine) as conn:
        if meta.name not in inspect(conn).get_table_names():
            return None
        kept = conn.execute(select(meta.c.value).where(meta.c.name == HOLDER)).scalar()
    if not kept:
        return None
    note = json.loads(kept)
    return Holder(note["by"], note["since"], note["seen"], note.get("stopped", ""))


def _iso(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%S}Z"


class Notifier:
    """Every configured sink's delivery, as tasks on the service's loop, while this
    process holds the notifier's lock."""

    def __init__(self, settings: Settings, engine: Engine, *, every: float = TRY_EVERY) -> None:
        self.settings = settings
        self.engine = engine
        self.every = every
        self.name = this_process()
        self.lock = KeptLock(engine, LOCK)
        self.deliveries: list[Delivery] = []  # while this process sends
        self._tasks = BackgroundTasks(log)
        self._sending = BackgroundTasks(log)
        self._waiting = _Waiting()
        self._since: datetime | None = None  # when this process took the lock, while held

    def start(self) -> None:
        """Start trying the lock, and sending while held; call on the service's loop."""
        if sinks_for(self.settings):
            self._tasks.spawn(self._run(), "the notifier")

    async def close(self) -> None:
        """Stop delivering and let go of the lock; what was not acknowledged is sent by
        the next holder (another process, or this one after its next start)."""
        await self._tasks.close()

    async def _run(self) -> None:
        try:
            while True:
                if await self._take():
                    await self._send_while_held()
                await asyncio.sleep(self.every)
        finally:
            await self._sending.close()
            if self._since is not None and await asyncio.to_thread(self.lock.held):
                await asyncio.to_thread(self._note, self._since, stopped=True)
            await asyncio.to_thread(self.lock.release)

    async def _take(self) -> bool:
        try:
            taken = await asyncio.to_thread(self.lock.take)
        except Exception as e:  # the database, most likely: tried again at the next turn
            self._waiting.failed(self.name, e)
            return False
        if not taken:
            holder = None
            with contextlib.suppress(Exception):
                holder = await asyncio.to_thread(read_holder, self.engine)
            self._waiting.saw(self.name, holder)
        return taken

    async def _send_while_held(self) -> None:
        """Send to every sink until the lock is lost (or the task is cancelled)."""
        self._since = since = utcnow()
        sinks = sinks_for(self.settings)
        log.info(
            "notifications are sent by this process (%s), to %s",
            self.name,
            " and ".join(sink.name for sink in sinks),
        )
        self._waiting = _Waiting()
        await asyncio.to_thread(self._note, since)
        notify = self.settings.notify
        charset = self.settings.live.legacy_charset
        self.deliveries = [
            Delivery(
                ChangeFeed(self.engine, charset),
                sink,
                notify.poll_seconds,
                notify.max_backoff_seconds,
            )
            for sink in sinks
        ]
        for delivery in self.deliveries:
            self._sending.spawn(delivery.run(), f"notifications to {delivery.sink.name}")
        try:
            while True:
                await asyncio.sleep(self.every)
                if not await asyncio.to_thread(self.lock.held):
                    break
                await asyncio.to_thread(self._note, since)
        finally:
            await self._sending.close()
            self.deliveries = []
        self._since = None
        log.warning(
            "this process (%s) no longer holds the notifier's lock (its database connection"
            " ended): it stopped sending notifications, and takes the lock again when it can",
            self.name,
        )
        await asyncio.to_thread(self.lock.release)

    def _note(self, since: datetime, *, stopped: bool = False) -> None:
        """Note in the database that this process sends, and that it is alive (or stopped)."""
        now = _iso(utcnow())
        note = {"by": self.name, "since": _iso(since), "seen": now}
        if stopped:
            note["stopped"] = now
        try:
            write_meta(self.engine, {HOLDER: json.dumps(note)})
        except Exception as e:  # the database: the lock check says whether it matters
            log.debug("could not note the notifier's holder: %s", e)


class _Waiting:
    """What a process waiting for the lock has seen of the holder, to say so once and to
    warn once when it shows no sign of life for ``STALLED_AFTER`` seconds."""

    def __init__(self) -> None:
        self.seen: Holder | None = None
        self.since = time.monotonic()  # when the holder last showed a sign of life
        self.warned = False

    def saw(self, me: str, holder: Holder | None) -> None:
        now = time.monotonic()
        if holder is not None and holder != self.seen:
            if self.seen is None or holder.by != self.seen.by:
                log.info(
                    "notifications are sent by %s; this process (%s) takes over if it stops",
                    holder.by,
                    me,
                )
            self.seen, self.since, self.warned = holder, now, False
            return
        if now - self.since >= STALLED_AFTER and not self.warned:
            self.warned = True
            log.warning(
                "notifications stalled: the notifier's lock has been held for %.0f s by a"
                " process that shows no sign of life (%s); this process (%s) takes over once"
                " the database ends that process's connection",
                now - self.since,
                self.seen.by if self.seen is not None else "unknown",
                me,
            )

    def failed(self, me: str, error: Exception) -> None:
        now = time.monotonic()
        if now - self.since >= STALLED_AFTER and not self.warned:
            self.warned = True
            log.warning(
                "this process (%s) could not try the notifier's lock for %.0f s: %s",
                me,
                now - self.since,
                error,
            )
