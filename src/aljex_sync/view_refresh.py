"""The typed views, brought up to date in the background of ``serve``: at start, after loads.

Inferring the types of a big table's columns from their values takes seconds, on a first
start over a big database a minute. Neither Aljex's posts nor the next morning file may
wait for it: ``serve`` answers Live Sync and takes files first, then this task refreshes
every view once; after that, the loader hands it each table it loaded instead of
refreshing the view itself. A table asked for while it already waits is refreshed once.

One task on the service's loop (``chores.BackgroundTasks``, so it cannot die silently)
runs the refreshes, one table at a time, in a daemon thread. A view that fails is logged at
WARNING and kept in ``_aljex_view_errors`` by ``TypedViews`` (``status`` shows it), and
added to the lines of ``/healthz``; a refresh that fails as a whole (the database is down)
is logged at ERROR and tried again ``RETRY`` seconds later. Stopping starts no other
table; the one being refreshed is left to its thread, which does not hold up the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping

from sqlalchemy import Engine

from .chores import BackgroundTasks
from .store.views import TypedViews, ViewError

log = logging.getLogger("aljex_sync.views")

SLOW = 1.0
"""Seconds past which a refresh after a load is logged at INFO, with the time it took."""

RETRY = 60.0
"""Seconds before a refresh that failed as a whole is tried again."""


class ViewRefresher:
    """Refreshes the typed views off the paths that answer Aljex and load files.

    ``ready`` is set once the start-up refresh has been through every table (a view that
    failed is in :meth:`lines`); :meth:`wait_idle` waits for the tables asked for since.
    """

    def __init__(
        self, engine: Engine, overrides: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        self.views = TypedViews(engine, overrides)
        self.ready = threading.Event()
        self.errors: list[ViewError] = []  # as read after the last refresh
        self.failure: str | None = None  # why the last refresh failed as a whole
        self._lock = threading.Lock()
        self._everything = False
        self._tables: dict[str, None] = {}  # asked for, in order, each once
        self._idle = threading.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._tasks = BackgroundTasks(log)

    def start(self) -> None:
        """Refresh every view, then each table asked for; call on the service's loop."""
        self._loop = asyncio.get_running_loop()
        self._ask(everything=True)
        self._tasks.spawn(self._run(), "typed views")

    def after_load(self, table: str) -> None:
        """A morning file was loaded into ``table``: refresh its view soon. Any thread."""
        self._ask(table=table)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every refresh asked for is done (tests use it); False on timeout."""
        return self._idle.wait(timeout)

    def lines(self) -> list[str]:
        """One line per view not refreshed, for /healthz; none while all is well."""
        lines = [f"views: {e.view} not refreshed: {e.error}" for e in self.errors]
        if self.failure is not None:
            lines.append(f"views: not refreshed: {self.failure}")
        return lines

    async def close(self) -> None:
        """Start no other refresh, and stop the task (a table being refreshed is left to
        its thread)."""
        self._stopping.set()
        await self._tasks.close()

    def _ask(self, *, everything: bool = False, table: str | None = None) -> None:
        with self._lock:
            self._everything |= everything
            if table is not None:
                self._tables[table] = None
            self._idle.clear()
            loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the service stopped
                loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        self._wake.set()  # what was asked before the task began
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                everything, tables = self._everything, list(self._tables)
                self._everything, self._tables = False, {}
            if everything or tables:
                try:
                    await _in_daemon_thread(self._refresh, everything, tables)
                except Exception as e:
                    self.failure = " ".join(str(e).split())[:300] or type(e).__name__
                    log.error("typed views not refreshed: %s; trying again in %g s", e, RETRY)
                    with self._lock:  # ask again for what was not done
                        self._everything |= everything
                        self._tables = dict.fromkeys([*tables, *self._tables])
                    await asyncio.sleep(RETRY)
                    self._wake.set()
                    continue
                self.failure = None
                if everything:
                    self.ready.set()
            with self._lock:
                if not self._everything and not self._tables:
                    self._idle.set()

    def _refresh(self, everything: bool, tables: list[str]) -> None:
        """Refresh every view, or those of ``tables``, in this thread; then read the errors."""
        begun = time.monotonic()
        if everything:
            tables = self.views.tables()
            log.info("typed views: bringing %s up to date", _tables(len(tables)))
        rebuilt = 0
        for table in tables:
            if self._stopping.is_set():
                return
            rebuilt += self.views.after_load(table)
        self.errors = self.views.errors()
        took = time.monotonic() - begun
        level = logging.INFO if everything or took > SLOW else logging.DEBUG
        failed = f", {len(self.errors)} not refreshed" if self.errors else ""
        log.log(
            level,
            "typed views: %s checked, %d rebuilt%s, in %.1f s",
            _tables(len(tables)),
            rebuilt,
            failed,
            took,
        )


def _tables(count: int) -> str:
    return f"{count} table{'s' if count != 1 else ''}"


async def _in_daemon_thread(work: Callable[..., None], *args: object) -> None:
    """Run ``work`` in a daemon thread of its own and wait for it.

    Not asyncio's executor: the process waits for its threads as it exits, and a refresh
    may wait minutes for another receiver's lock on a view. A daemon thread is abandoned
    at exit; what it had not committed is rolled back by the database.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():  # cancelled: the service is stopping
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            work(*args)
        except BaseException as e:  # handed to the task, which logs it
            error = e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="aljex-views", daemon=True).start()
    await done
