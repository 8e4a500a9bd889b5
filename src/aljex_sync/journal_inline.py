"""Writing a lone Live Sync request on the event loop, and the rest through the writer process.

Aljex most likely posts one record at a time, and a request then waits for two process
wake-ups and two pickles on its way through ``journal_process`` (about 0.1 ms here) while
the process it crosses to does nothing else. So on SQLite, when nothing else is in flight,
the edge journals the request itself: the same ``Journal``, the same single transaction of
event and effect, committed (and fsynced) before the 200, on a connection of its own.
Under load it hands requests to the writer process, which groups them (group commit), and
leaves the event loop free to read the next requests.

The event loop must never wait on a lock someone else holds (the writer process, a morning
load in this process, the CLI): this connection's busy timeout is zero, and a request that
finds the write lock taken goes to the writer process, which waits for it as before.
Nothing of it was written then, since SQLite refuses the lock at ``BEGIN IMMEDIATE`` (or at
the DDL of a new column), before any row. After such a refusal the edge leaves writing to
the writer process for ``LOCKED_PAUSE`` seconds: a morning load can hold the lock for
seconds, and asking again on every request would only cost time.

Event ids agree between the two writers: both take the write lock before they insert, and
both let SQLite number events as ``max(id) + 1``. Schema copies catch up as they do
between the writer process and the morning loads (``Schema.ensure`` re-reads on a
collision). PostgreSQL and MariaDB always go through the writer process: a network
round trip, or a lock wait there, would hold up every connection of the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

from . import metrics
from .config import Settings
from .journal import Journal, locked
from .journal_process import JournalProcess
from .messages import Outcome, Received
from .store.database import normalize_url, open_engine

log = logging.getLogger("aljex_sync.journal")

LOCKED_PAUSE = 1.0  # seconds of handing off after the write lock was found taken


class InlineFirst:
    """The Live Sync writer: inline when the edge is idle (SQLite), else the writer process."""

    def __init__(self, settings: Settings, process: JournalProcess) -> None:
        self.process = process
        self.journal: Journal | None = None
        if normalize_url(settings.database.url).get_backend_name() == "sqlite":
            engine = open_engine(settings.database.url, timeout=0)
            self.journal = Journal(engine, settings, hands_off=True)
        self.in_flight = 0
        self._deciding = 0  # requests waiting a turn of the loop before they decide
        self.written_inline = 0  # counted for tests and the curious: which path was taken
        self.handed_off = 0
        self._locked_until = 0.0

    def start(self) -> None:
        """Open the inline journal (after the writer process has installed the tables)."""
        if self.journal is not None:
            self.journal.start()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    async def write(self, received: Received) -> Outcome:
        """The request's outcome, once committed here or by the writer process."""
        self.in_flight += 1
        try:
            if self.journal is not None and (self._deciding or self._alone()):
                # Requests that arrived with this one start in this turn of the loop:
                # let them, so that they are counted before this one decides. Under load
                # the writer process is busy and a request goes there at once, unless
                # one before it is still deciding: the requests keep their order.
                self._deciding += 1
                try:
                    await asyncio.sleep(0)
                finally:
                    self._deciding -= 1
                if self._alone():
                    outcome = self._write_here(received)
                    if outcome is not None:
                        return outcome
            self.handed_off += 1
            return await self.process.write(received)
        finally:
            self.in_flight -= 1

    def _alone(self) -> bool:
        return self.in_flight == 1 and self.process.idle and time.monotonic() >= self._locked_until

    def _write_here(self, received: Received) -> Outcome | None:
        """The outcome, or None when the write lock is taken and the request is to be
        handed off; raises what the writer process would have answered otherwise."""
        assert self.journal is not None
        (result,) = self.journal.write_group([received])
        if isinstance(result, Outcome):
            self.written_inline += 1
            metrics.observe_group(1)
            return result
        if locked(result):
            self._locked_until = time.monotonic() + LOCKED_PAUSE
            return None
        raise result  # DatabaseUnavailable (a 503), or a bug, as from the writer process
