"""Prometheus metrics: hooks the service calls as it works, and the database read at scrape.

Two kinds, in one exposition (``/metrics``, behind the admin credentials):

- **hooks**, kept in this process and updated by the parts as they work:
  :func:`observe_request` (the HTTP edge, once per Live Sync request),
  :func:`observe_group` (the journal's writer, once per committed group),
  :func:`set_queue` (requests sent to the writer and not yet answered),
  :func:`set_feed_health` (``alerts``, each watched feed's health at each check) and
  :func:`set_notify_lag` / :func:`count_notify_failure` (``notify``, per sink);
- **the database**, read at each scrape by :class:`DatabaseCollector`: whether it is up (as
  ``/healthz`` says: read, and not refusing Live Sync's writes, :class:`WriteRefusals`),
  journal events by table, action and status, held records, morning files by status and
  rows by outcome, the feed health of each table's last morning file, and the times of
  the last live event and the last morning file. These survive restarts and count what
  other processes (``aljex-sync load``, ``replay``) did too.

Nothing is registered in prometheus-client's global registry: :func:`registry_for` builds
a registry per database, so tests and embedders can run several services in one process.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from .feed_activity import last_activity
from .store.database import reading, translate
from .store.schema import events, files
from .store.statuses import status_in

log = logging.getLogger("aljex_sync.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NAMESPACE = "aljex_sync"
ACTIONS = frozenset({"create", "update", "delete", "-"})
TABLE_LABEL = re.compile(r"[a-z][a-z0-9_]{0,63}|-")
MAX_TABLE_LABELS = 256  # beyond this many distinct tables, the rest count as "other"
MAX_EVENT_SERIES = 2000

# Live Sync latencies are around a millisecond; the buckets reach the 30 s a stuck
# database could take.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

HOOKS = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "live_requests",
    "Live Sync requests answered, by table, action and HTTP status",
    ["table", "action", "status"],
    namespace=NAMESPACE,
    registry=HOOKS,
)
LATENCY = Histogram(
    "live_request_seconds",
    "Live Sync request latency in seconds, receipt to reply, by table, action and status",
    ["table", "action", "status"],
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
    registry=HOOKS,
)
GROUPS = Histogram(
    "journal_group_size",
    "Live Sync requests committed per journal transaction (group commit)",
    namespace=NAMESPACE,
    buckets=GROUP_BUCKETS,
    registry=HOOKS,
)
QUEUE = Gauge(
    "journal_queue_depth",
    "Live Sync requests sent to the journal's writer and not yet answered",
    namespace=NAMESPACE,
    registry=HOOKS,
)

FEED_HEALTHY = Gauge(
    "feed_healthy",
    "1 while a watched feed is healthy, 0 while [alerts] finds it silent, by feed",
    ["feed"],
    namespace=NAMESPACE,
    registry=HOOKS,
)

NOTIFY_LAG = Gauge(
    "notify_lag_events",
    "Applied changes not yet delivered to a notification sink ([notify]), by sink",
    ["sink"],
    namespace=NAMESPACE,
    registry=HOOKS,
)
NOTIFY_FAILURES = Counter(
    "notify_failures",
    "Failed tries to deliver to a notification sink, by sink",
    ["sink"],
    namespace=NAMESPACE,
    registry=HOOKS,
)

_tables_seen: set[str] = set()
_tables_lock = threading.Lock()


def _table_label(table: str) -> str:
    """The table as a label, bounded: odd names and tables past the limit become ``other``."""
    if table in _tables_seen:
        return table
    if not TABLE_LABEL.fullmatch(table):
        return "other"
    with _tables_lock:
        if len(_tables_seen) >= MAX_TABLE_LABELS:
            return "other"
        _tables_seen.add(table)
    return table


def observe_request(table: str, action: str, status: int | str, seconds: float) -> None:
    """Count one answered Live Sync request and its latency.

    ``table`` and ``action`` are as the log line has them (``-`` when unknown); ``status``
    is the HTTP status code. Call once per request, after the reply is decided.
    """
    labels = (_table_label(table), action if action in ACTIONS else "other", str(status))
    REQUESTS.labels(*labels).inc()
    LATENCY.labels(*labels).observe(seconds)


def observe_group(size: int) -> None:
    """Record the size of one group the journal's writer committed in one transaction."""
    GROUPS.observe(size)


def set_queue(depth: int) -> None:
    """Set how many requests wait for the journal's writer (sent, not yet answered)."""
    QUEUE.set(depth)


def set_feed_health(feed: str, healthy: bool) -> None:
    """Set a watched feed's health (``alerts.HealthWatch``, at each check)."""
    FEED_HEALTHY.labels(feed).set(1 if healthy else 0)


def set_notify_lag(sink: str, events: int) -> None:
    """Set how many applied changes a notification sink is behind (``notify``)."""
    NOTIFY_LAG.labels(sink).set(events)


def count_notify_failure(sink: str) -> None:
    """Count one failed try to deliver to a notification sink (``notify``)."""
    NOTIFY_FAILURES.labels(sink).inc()


class _Hooks(Collector):
    """The hook metrics of this process, as part of another registry."""

    def collect(self) -> Iterable[Metric]:
        return HOOKS.collect()

    def describe(self) -> Iterable[Metric]:
        return HOOKS.collect()


WRITE_REFUSAL_SHOWN = 60.0
"""Seconds the database counts as down (/healthz 503, ``aljex_sync_database_up`` 0) after a
request it refused, unless one lands: long enough for a monitor to see it while Aljex keeps
retrying; short enough that a monitor that takes the service out of rotation for it lets
Aljex's retries back in."""


class WriteRefusals:
    """The last Live Sync request the database refused as unavailable, while none landed.

    The health probe and the scrape only read, and a full disk refuses only writes: the
    refused requests are what tell them. The HTTP edge records each request's fate here;
    ``/healthz`` (``live.py``) and ``aljex_sync_database_up`` read the same record, the one
    :func:`write_refusals` keeps for their database, so that they agree.
    """

    def __init__(self, shown: float = WRITE_REFUSAL_SHOWN) -> None:
        self.shown = shown
        self._last: tuple[float, str] | None = None  # (time.monotonic(), why)

    def refused(self, why: str) -> None:
        """A request the database refused: nothing of it was stored."""
        self._last = (time.monotonic(), why)

    def landed(self) -> None:
        """A request the database stored: it writes again."""
        self._last = None

    def current(self) -> str | None:
        """Why the last request was not stored, for ``shown`` seconds after it unless one
        landed since; else None."""
        last = self._last
        if last is None or time.monotonic() - last[0] >= self.shown:
            return None
        return last[1]


_refusals: weakref.WeakKeyDictionary[Engine, WriteRefusals] = weakref.WeakKeyDictionary()
_refusals_lock = threading.Lock()


def write_refusals(engine: Engine) -> WriteRefusals:
    """The one record of refused writes for the database ``engine`` opens, in this process
    (each service, and each ``serve --workers`` worker, has its own engine)."""
    with _refusals_lock:
        found = _refusals.get(engine)
        if found is None:
            found = _refusals[engine] = WriteRefusals()
        return found


def _seconds(moment: datetime | None) -> float | None:
    """A naive UTC timestamp from the database as Unix seconds."""
    return None if moment is None else moment.replace(tzinfo=UTC).timestamp()


class DatabaseCollector(Collector):
    """Reads the bookkeeping tables at each scrape; aggregated in SQL, bounded in size.

    If the database cannot be read, the scrape still succeeds with ``aljex_sync_database_up``
    at 0 and the other database metrics left out. While it refuses Live Sync's writes
    (:class:`WriteRefusals`) the metric is 0 too, and what it can still read is there.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        return []  # no query at registration; names are checked at scrape

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{NAMESPACE}_database_up",
            "1 while the database is up as /healthz says: the bookkeeping tables could be read"
            " at this scrape, and the last Live Sync request was not refused by it",
        )
        try:
            found = list(self._read())
        except SQLAlchemyError as e:
            log.warning("metrics: cannot read the database: %s", translate(e))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 0 if write_refusals(self.engine).current() is not None else 1)
        yield up
        yield from found

    def _read(self) -> Iterator[Metric]:
        n = NAMESPACE
        journal = GaugeMetricFamily(
            f"{n}_journal_events",
            "Live Sync requests in the journal (_aljex_events), by table, action and status",
            labels=["table", "action", "status"],
        )
        held = GaugeMetricFamily(
            f"{n}_held_records",
            "Records held in the journal until replayed, by table",
            labels=["table"],
        )
        last_live = GaugeMetricFamily(
            f"{n}_last_live_event_timestamp_seconds",
            "Unix time the last applied Live Sync record was received",
        )
        file_status = GaugeMetricFamily(
            f"{n}_morning_files",
            "Morning files in the file log (_aljex_files), by status",
            labels=["status"],
        )
        rows = CounterMetricFamily(
            f"{n}_morning_rows",
            "Rows of loaded morning files, by outcome (read, inserted, updated, deleted, "
            "skipped_newer: kept because live sync had a newer change)",
            labels=["outcome"],
        )
        health = GaugeMetricFamily(
            f"{n}_morning_feed_differences",
            "Live feed health found by each table's last loaded morning file: rows missing "
            "from the database, extra in it, or differing",
            labels=["table", "kind"],
        )
        last_file = GaugeMetricFamily(
            f"{n}_last_morning_file_timestamp_seconds",
            "Unix time the last morning file was loaded",
        )
        outcomes = ("rows_read", "inserted", "updated", "deleted", "skipped_newer")
        kinds = ("missing_in_db", "extra_in_db", "differing")
        loaded = files.c.status == "loaded"
        with reading(self.engine) as conn:
            for table, action, status, count in conn.execute(
                select(events.c.table_name, events.c.action, events.c.status, func.count())
                .group_by(events.c.table_name, events.c.action, events.c.status)
                .order_by(func.count().desc())
                .limit(MAX_EVENT_SERIES)
            ):
                journal.add_metric([table or "-", action or "-", str(status)], int(count))
            for table, count in conn.execute(
                select(events.c.table_name, func.count())
                .where(status_in("held"))
                .group_by(events.c.table_name)
                .limit(MAX_EVENT_SERIES)
            ):
                held.add_metric([table or "-"], int(count))
            live_at, file_at = last_activity(conn)
            for status, count in conn.execute(
                select(files.c.status, func.count()).group_by(files.c.status)
            ):
                file_status.add_metric([str(status)], int(count))
            sums = conn.execute(
                select(*(func.sum(files.c[c]) for c in outcomes)).where(loaded)
            ).one()
            for outcome, total in zip(outcomes, sums, strict=True):
                rows.add_metric([outcome.removeprefix("rows_")], int(total or 0))
            latest = (
                select(func.max(files.c.id))
                .where(loaded, files.c.table_name.is_not(None))
                .group_by(files.c.table_name)
                .scalar_subquery()
            )
            for row in conn.execute(
                select(files.c.table_name, *(files.c[k] for k in kinds)).where(
                    files.c.id.in_(latest)
                )
            ):
                for kind, value in zip(kinds, row[1:], strict=True):
                    health.add_metric([str(row[0]), kind], int(value or 0))
        for family, moment in ((last_live, live_at), (last_file, file_at)):
            seconds = _seconds(moment)
            if seconds is not None:
                family.add_metric([], seconds)
        yield from (journal, held, last_live, file_status, rows, health, last_file)


def registry_for(engine: Engine) -> CollectorRegistry:
    """A registry with this process's hook metrics and the database's, read at scrape."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Hooks())
    registry.register(DatabaseCollector(engine))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format (reads the database: call from a thread)."""
    return generate_latest(registry)
