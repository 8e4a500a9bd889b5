"""Alerts for silence: a feed that has gone quiet is unhealthy, and people are told.

Aljex's feeds fail silently: a sender that stops sending looks, from here, exactly like a
quiet afternoon. Two rules of ``[alerts]`` turn silence into a state:

- ``live_quiet_minutes``: the live feed is unhealthy once no live event has been applied
  for this long (counted from the start of the service if none ever was);
- ``morning_by``: the morning feed is unhealthy once the day's deadline (a local time in
  ``time_zone``) has passed with no morning file loaded since that day's midnight. Before
  today's deadline, yesterday's day is the one judged, so a missed morning stays
  unhealthy through the night instead of recovering at midnight.

:class:`HealthWatch` evaluates both from the database (the journal and the file log, so
``aljex-sync load`` counts too) and reports each change: at ERROR when a feed turns
unhealthy, at WARNING when it recovers, in the ``aljex_sync_feed_healthy`` gauge, and to
the ``webhook`` (:class:`Webhook`), which posts from a task of its own so a slow receiver
never holds anything up. Silence never makes ``/healthz`` fail: a quiet night must not get
the process restarted by its service manager; the feed lines are added to its body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from . import metrics
from .clock import utcnow
from .config import AlertSettings
from .feed_activity import last_activity
from .store.database import reading

log = logging.getLogger("aljex_sync.alerts")

CHECK_INTERVAL = 30.0  # seconds between two evaluations in ``serve``
WEBHOOK_TIMEOUT = 5.0  # seconds one POST may take
WEBHOOK_ATTEMPTS = 3
WEBHOOK_QUEUE = 100  # changes waiting to be posted; older ones are dropped past this


@dataclass(frozen=True)
class FeedHealth:
    """One feed's health at one moment, and one line saying why."""

    feed: str  # "live" or "morning"
    healthy: bool
    reason: str

    def line(self) -> str:
        """``live: healthy: ...`` or ``morning: unhealthy: ...``, as /healthz shows it."""
        return f"{self.feed}: {'healthy' if self.healthy else 'unhealthy'}: {self.reason}"


def _minutes(span: timedelta) -> str:
    n = int(span.total_seconds() // 60)
    return f"{n} minute{'s' if n != 1 else ''}"


def live_health(
    last_event: datetime | None, started_at: datetime, now: datetime, quiet_minutes: float
) -> FeedHealth:
    """The live feed's health: unhealthy after ``quiet_minutes`` without an applied event.

    Times are naive UTC. Before any event, the quiet is counted from ``started_at``, so a
    new install is not unhealthy the moment it starts.
    """
    limit = timedelta(minutes=quiet_minutes)
    if last_event is None:
        quiet = now - started_at
        if quiet >= limit:
            return FeedHealth(
                "live", False, f"no live event since the service started {_minutes(quiet)} ago"
            )
        return FeedHealth("live", True, "no live event yet; watching since the start")
    quiet = now - max(last_event, started_at)
    if quiet >= limit:
        return FeedHealth("live", False, f"no live event for {_minutes(now - last_event)}")
    return FeedHealth("live", True, f"last live event {_minutes(now - last_event)} ago")


def zone_of(name: str) -> tzinfo | None:
    """The IANA zone ``name``; None for "", which means this machine's own zone."""
    return ZoneInfo(name) if name else None


def _at(day: date, moment: time, zone: tzinfo | None) -> datetime:
    """``day`` at ``moment`` in ``zone`` (None: this machine's), as naive UTC."""
    local = datetime.combine(day, moment, tzinfo=zone)
    aware = local if zone is not None else local.astimezone()
    return aware.astimezone(UTC).replace(tzinfo=None)


def judged_day(now: datetime, by: time, zone: tzinfo | None) -> tuple[date, datetime, datetime]:
    """The day whose morning is judged at ``now`` (naive UTC), its midnight and deadline.

    Today once today's deadline has passed, else yesterday. Midnight and deadline are
    naive UTC.
    """
    aware = now.replace(tzinfo=UTC)
    local = aware.astimezone(zone) if zone is not None else aware.astimezone()
    day = local.date()
    if now < _at(day, by, zone):
        day -= timedelta(days=1)
    return day, _at(day, time(0, 0), zone), _at(day, by, zone)


def morning_health(
    last_loaded: datetime | None, now: datetime, by: time, zone: tzinfo | None
) -> FeedHealth:
    """The morning feed's health: a file must have loaded on the judged day (see above)."""
    day, midnight, _deadline = judged_day(now, by, zone)
    if last_loaded is not None and last_loaded >= midnight:
        return FeedHealth("morning", True, f"last file loaded {last_loaded:%Y-%m-%d %H:%M} UTC")
    return FeedHealth("morning", False, f"no morning file loaded by {by:%H:%M} on {day}")


class HealthWatch:
    """Evaluates the silence rules and reports each change of a feed's health.

    ``clock`` gives now as naive UTC; tests set it to judge any moment without waiting.
    The state starts healthy: a feed found unhealthy at the first check is a change.
    """

    def __init__(
        self,
        settings: AlertSettings,
        engine: Engine,
        *,
        live: bool = True,
        morning: bool = True,
        webhook: Webhook | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.watch_live = live and settings.live_quiet_minutes > 0
        self.watch_morning = morning and settings.morning_by is not None
        self.zone = zone_of(settings.time_zone)
        self.webhook = webhook
        self.clock = clock
        self.started_at = clock()
        self.current: dict[str, FeedHealth] = {}
        self._checking = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.watch_live or self.watch_morning

    def evaluate(self, now: datetime | None = None) -> list[FeedHealth]:
        """Each watched feed's health at ``now`` (default: the clock); reads the database."""
        now = self.clock() if now is None else now
        with reading(self.engine) as conn:
            last_live, last_file = last_activity(conn)
        found = []
        if self.watch_live:
            found.append(
                live_health(last_live, self.started_at, now, self.settings.live_quiet_minutes)
            )
        if self.watch_morning and self.settings.morning_by is not None:
            found.append(morning_health(last_file, now, self.settings.morning_by, self.zone))
        return found

    def check(self, now: datetime | None = None) -> list[FeedHealth]:
        """Evaluate, keep the result, and report the feeds whose health changed.

        One check at a time: two at once would each report the same change.
        """
        with self._checking:
            return self._check(now)

    def _check(self, now: datetime | None) -> list[FeedHealth]:
        changed = []
        for health in self.evaluate(now):
            before = self.current.get(health.feed)
            self.current = {**self.current, health.feed: health}
            metrics.set_feed_health(health.feed, health.healthy)
            was_healthy = before.healthy if before is not None else True
            if health.healthy == was_healthy:
                continue
            changed.append(health)
            if health.healthy:
                log.warning("%s feed recovered: %s", health.feed, health.reason)
            else:
                log.error("%s feed unhealthy: %s", health.feed, health.reason)
            if self.webhook is not None:
                self.webhook.post(health, self.clock())
        return changed

    def lines(self) -> list[str]:
        """One line per watched feed, for /healthz; none before the first check."""
        return [self.current[feed].line() for feed in ("live", "morning") if feed in self.current]

    async def run(self, interval: float = CHECK_INTERVAL) -> None:
        """Check every ``interval`` seconds until cancelled; a failed check is logged."""
        while True:
            try:
                await asyncio.to_thread(self.check)
            except Exception:
                log.exception("feed health check failed; trying again in %g s", interval)
            await asyncio.sleep(interval)


class Webhook:
    """Posts each change of health as JSON to ``[alerts] webhook``, from a task of its own.

    A POST has ``WEBHOOK_TIMEOUT`` seconds and up to ``WEBHOOK_ATTEMPTS`` tries, with a
    growing pause between them; a failure is logged at WARNING with the host only (the URL
    may carry a token). :meth:`post` never waits: changes queue, in order.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = WEBHOOK_TIMEOUT,
        attempts: int = WEBHOOK_ATTEMPTS,
        pause: float = 1.0,
    ) -> None:
        self.url = url
        self.host = urlsplit(url).netloc.rpartition("@")[2]
        self.timeout = timeout
        self.attempts = attempts
        self.pause = pause
        self._queue: asyncio.Queue[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def post(self, health: FeedHealth, now: datetime) -> None:
        """Queue one change for posting; safe from any thread once :meth:`run` has begun."""
        payload = json.dumps(
            {
                "service": "aljex-sync",
                "feed": health.feed,
                "healthy": health.healthy,
                "reason": health.reason,
                "at": now.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"),
            }
        ).encode()
        if self._loop is None or self._queue is None:
            log.warning("webhook to %s not running; change of %s not sent", self.host, health.feed)
            return
        self._loop.call_soon_threadsafe(self._enqueue, payload)

    def _enqueue(self, payload: bytes) -> None:
        assert self._queue is not None
        if self._queue.full():
            self._queue.get_nowait()
            log.warning("webhook to %s is behind; the oldest change was dropped", self.host)
        self._queue.put_nowait(payload)

    async def run(self) -> None:
        """Post what is queued, in order, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(WEBHOOK_QUEUE)
        while True:
            payload = await self._queue.get()
            await self.deliver(payload)

    async def deliver(self, payload: bytes) -> bool:
        """POST ``payload``, retrying; True once a 2xx answered."""
        for attempt in range(1, self.attempts + 1):
            try:
                status = await asyncio.to_thread(self._send, payload)
                if 200 <= status < 300:
                    return True
                problem = f"answered {status}"
            except Exception as e:  # any failure of the network or the receiver
                problem = f"{type(e).__name__}: {e}"
            log.warning(
                "webhook to %s: attempt %d of %d failed: %s",
                self.host,
                attempt,
                self.attempts,
                problem,
            )
            if attempt < self.attempts:
                await asyncio.sleep(self.pause * 2 ** (attempt - 1))
        return False

    def _send(self, payload: bytes) -> int:
        request = urllib.request.Request(  # noqa: S310 (config allows http and https only)
            self.url,
            data=payload,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "aljex-sync"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (idem)
                return int(response.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
