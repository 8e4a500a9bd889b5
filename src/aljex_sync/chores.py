"""The background chores of ``serve``: the feed health watch, its webhook, the daily prune.

Each runs as an asyncio task beside the servers, and none may die silently: an exception
is logged at ERROR with its traceback and the chore goes on at its next turn. Stopping the
service cancels them first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import Engine

from .alerts import CHECK_INTERVAL, HealthWatch, Webhook
from .config import Settings
from .retention import DAY, prune_and_log

log = logging.getLogger("aljex_sync.chores")


async def every(interval: float, what: str, job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` now and then every ``interval`` seconds until cancelled; log failures."""
    while True:
        try:
            await job()
        except Exception:
            log.exception("%s failed; trying again in %g s", what, interval)
        await asyncio.sleep(interval)


class BackgroundTasks:
    """Tasks on the service's loop, cancelled together; one that dies says so at ERROR."""

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(self, work: Awaitable[None], name: str) -> None:
        """Run ``work`` as a task named after ``name``, logging it if it ever ends in error."""

        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except BaseException:
                self.log.exception("%s stopped unexpectedly", name)
                raise

        self._tasks.append(asyncio.create_task(guarded(), name=f"aljex-sync {name}"))

    async def close(self) -> None:
        """Cancel every task and wait for them to end."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()


class Chores:
    """What ``serve`` does besides serving; ``health`` is shared with /healthz and the page."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        alerts = settings.alerts
        self.webhook = Webhook(alerts.webhook) if alerts.webhook else None
        self.health = HealthWatch(
            alerts,
            engine,
            live=settings.live.enabled,
            morning=settings.morning.enabled,
            webhook=self.webhook,
        )
        self.check_interval = CHECK_INTERVAL
        self.prune_interval = DAY
        self._tasks = BackgroundTasks(log)

    def start(self) -> None:
        """Start the chores the settings ask for; call on the service's loop."""
        if self.webhook is not None:
            self._tasks.spawn(self.webhook.run(), "webhook")
        if self.health.enabled:
            self.health.started_at = self.health.clock()
            self._tasks.spawn(self.health.run(self.check_interval), "feed health")
        journal = self.settings.journal
        if journal.keep_days or journal.tombstone_days:
            days = (journal.keep_days, journal.tombstone_days)
            job = lambda: asyncio.to_thread(prune_and_log, self.engine, *days)  # noqa: E731
            self._tasks.spawn(every(self.prune_interval, "journal prune", job), "journal prune")

    async def close(self) -> None:
        """Cancel every chore and wait for them to end."""
        await self._tasks.close()
