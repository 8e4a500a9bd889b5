"""What the admin page and ``/metrics`` show, read with SQL from the bookkeeping tables.

Everything here only reads: ``_aljex_events``, ``_aljex_files``, ``_aljex_tables`` and the
synced tables those name. Counts are aggregated in the database and every list is bounded,
so a page costs a handful of queries whatever the journal holds. Synced tables are named
from ``_aljex_tables`` and quoted by SQLAlchemy, never built from a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, case, func, select, table, true
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from .clock import utcnow
from .overview import ATTENTION, held_reasons, not_loaded
from .store.database import reading
from .store.schema import events, files, tables_table
from .store.statuses import count_by_status, status_in

HOURS = 48  # the span of the chart of events per hour
MAX_TABLES = 200
MAX_REASONS = 10
MAX_FILES = 50
MAX_EVENTS = 50
COUNTS = (
    "rows_read",
    "inserted",
    "updated",
    "deleted",
    "skipped_newer",
    "missing_in_db",
    "extra_in_db",
    "differing",
)


@dataclass(frozen=True)
class FileRow:
    """One morning file and what it did (a row of ``_aljex_files``)."""

    id: int
    name: str
    table: str | None
    mode: str | None
    status: str
    rows_read: int
    inserted: int
    updated: int
    deleted: int
    skipped_newer: int
    missing_in_db: int
    extra_in_db: int
    differing: int
    error: str | None
    finished_at: datetime

    @property
    def healthy(self) -> bool:
        """The live feed agreed with the file: nothing missing, extra or differing."""
        return not (self.missing_in_db or self.extra_in_db or self.differing)


@dataclass(frozen=True)
class TableRow:
    """One synced table: its rows, its last live change and morning file, its held records."""

    name: str
    rows: int | None  # None: the table could not be read
    last_live: datetime | None
    last_file: FileRow | None
    held: int


@dataclass(frozen=True)
class Feed:
    """One feed (``live`` or ``morning``): recent volume, per hour, and what it refused."""

    name: str
    last_hour: int
    last_day: int
    hourly: list[tuple[datetime, int]]  # HOURS buckets, oldest first
    rejected: list[tuple[str, int]]  # reason, count, over the chart's span


@dataclass(frozen=True)
class EventRow:
    """One journal entry, without its body."""

    id: int
    received_at: datetime
    remote_addr: str
    table: str | None
    action: str | None
    key: str | None
    status: str
    error: str | None


@dataclass(frozen=True)
class Event(EventRow):
    """One journal entry with its raw body and warnings."""

    raw_action: str | None = None
    warnings: str | None = None
    applied_at: datetime | None = None
    body: bytes = b""


@dataclass(frozen=True)
class Overview:
    """Everything the status page shows, as of ``now`` (naive UTC)."""

    now: datetime
    tables: list[TableRow]
    feeds: list[Feed]
    files_by_status: dict[str, int]
    problem_files: list[FileRow]  # the latest held, failed and unmatched: overview.not_loaded
    recent_files: list[FileRow]
    events: list[EventRow]
    held_by_reason: list[tuple[str, str, int]]  # table, reason, count
    events_by_status: dict[str, int] = field(default_factory=dict)

    @property
    def held(self) -> int:
        return self.events_by_status.get("held", 0)


def read_overview(engine: Engine, now: datetime | None = None) -> Overview:
    """Read the whole status page in one read-only connection."""
    now = now or utcnow()
    with reading(engine) as conn:
        by_status = count_by_status(conn)
        files_by_status = _count_by(conn, files.c.status)
        feeds = [_live_feed(conn, now), _morning_feed(conn, now)]
        problem = file_rows(conn, not_loaded(), MAX_FILES)
        recent = file_rows(conn, None, MAX_FILES)
        latest = [_event_row(row) for row in conn.execute(_event_query().limit(MAX_EVENTS))]
        held = held_reasons(conn, MAX_REASONS)
        tables = _tables(conn)
    return Overview(now, tables, feeds, files_by_status, problem, recent, latest, held, by_status)


def read_event(engine: Engine, event_id: int) -> Event | None:
    """One event with its raw body, or None."""
    query = _event_query(
        events.c.raw_action, events.c.warnings, events.c.applied_at, events.c.body
    ).where(events.c.id == event_id)
    with reading(engine) as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    base = _event_row(row)
    return Event(
        **base.__dict__,
        raw_action=row.raw_action,
        warnings=row.warnings,
        applied_at=row.applied_at,
        body=bytes(row.body or b""),
    )


# -- the parts -------------------------------------------------------------------------


def _count_by(conn: Connection, column: ColumnElement[Any]) -> dict[str, int]:
    rows = conn.execute(select(column, func.count()).group_by(column))
    return {str(value): int(n) for value, n in rows}


def _tables(conn: Connection) -> list[TableRow]:
    names = [
        str(n)
        for n in conn.execute(
            select(tables_table.c.table_name).order_by(tables_table.c.table_name).limit(MAX_TABLES)
        ).scalars()
    ]
    last_live = {
        str(t): last
        for t, last in conn.execute(
            select(events.c.table_name, func.max(events.c.received_at))
            .where(events.c.status == "applied")
            .group_by(events.c.table_name)
        )
    }
    held = {
        str(t): int(n)
        for t, n in conn.execute(
            select(events.c.table_name, func.count())
            .where(status_in("held"))
            .group_by(events.c.table_name)
        )
    }
    latest_ids = (
        select(func.max(files.c.id))
        .where(files.c.table_name.is_not(None))
        .group_by(files.c.table_name)
        .scalar_subquery()
    )
    last_file = {f.table: f for f in file_rows(conn, files.c.id.in_(latest_ids), MAX_TABLES)}
    rows: dict[str, int | None] = {name: _row_count(conn, name) for name in names}
    # Held records may name a table that was never created (its key was missing).
    for name in sorted(set(held) - set(names))[: max(0, MAX_TABLES - len(names))]:
        names.append(name)
        rows[name] = None
    return [
        TableRow(name, rows[name], last_live.get(name), last_file.get(name), held.get(name, 0))
        for name in names
    ]


def _row_count(conn: Connection, name: str) -> int | None:
    """The rows of one synced table; None if it does not exist (yet) or cannot be read."""
    try:
        return int(conn.execute(select(func.count()).select_from(table(name))).scalar_one())
    except SQLAlchemyError:
        conn.rollback()  # PostgreSQL refuses the rest of a failed transaction
        return None


def hour_of(column: ColumnElement[Any], dialect: str) -> ColumnElement[str]:
    """The hour of a timestamp as text, ``YYYY-MM-DD HH``, on each backend."""
    if dialect == "postgresql":
        return func.to_char(column, "YYYY-MM-DD HH24")
    if dialect in ("mysql", "mariadb"):
        return func.date_format(column, "%Y-%m-%d %H")
    return func.strftime("%Y-%m-%d %H", column)


def _hourly(
    conn: Connection, column: ColumnElement[Any], where: ColumnElement[bool], now: datetime
) -> list[tuple[datetime, int]]:
    """Counts per hour over the last HOURS hours, the current one included, oldest first."""
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    hour = hour_of(column, conn.dialect.name).label("hour")
    inner = select(hour).where(where, column >= first).subquery()
    counts = {
        str(h): int(n)
        for h, n in conn.execute(select(inner.c.hour, func.count()).group_by(inner.c.hour))
    }
    buckets = [first + timedelta(hours=i) for i in range(HOURS)]
    return [(b, counts.get(f"{b:%Y-%m-%d %H}", 0)) for b in buckets]


def _recent(
    conn: Connection, column: ColumnElement[Any], where: ColumnElement[bool], now: datetime
) -> tuple[int, int]:
    """How many in the last hour and in the last day."""
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
    last_hour, last_day = conn.execute(
        select(func.sum(case((column >= hour_ago, 1), else_=0)), func.count()).where(
            where, column >= day_ago
        )
    ).one()
    return int(last_hour or 0), int(last_day or 0)


def _live_feed(conn: Connection, now: datetime) -> Feed:
    column = events.c.received_at
    live = events.c.source == "live"
    since = now - timedelta(hours=HOURS)
    rejected = [
        (str(reason or ""), int(n))
        for reason, n in conn.execute(
            select(events.c.error, func.count())
            .where(live, status_in("rejected"), column >= since)
            .group_by(events.c.error)
            .order_by(func.count().desc(), events.c.error)
            .limit(MAX_REASONS)
        )
    ]
    return Feed(
        "live", *_recent(conn, column, live, now), _hourly(conn, column, live, now), rejected
    )


def _morning_feed(conn: Connection, now: datetime) -> Feed:
    column = files.c.finished_at
    every = true()
    since = now - timedelta(hours=HOURS)
    rejected = [
        (f"{status}: {reason or ''}", int(n))
        for status, reason, n in conn.execute(
            select(files.c.status, files.c.error, func.count())
            .where(files.c.status.in_(ATTENTION), column >= since)
            .group_by(files.c.status, files.c.error)
            .order_by(func.count().desc(), files.c.status)
            .limit(MAX_REASONS)
        )
    ]
    return Feed(
        "morning", *_recent(conn, column, every, now), _hourly(conn, column, every, now), rejected
    )


def file_rows(conn: Connection, where: ColumnElement[bool] | None, limit: int) -> list[FileRow]:
    query = select(
        files.c.id,
        files.c.name,
        files.c.table_name,
        files.c.mode,
        files.c.status,
        files.c.error,
        files.c.finished_at,
        *(files.c[c] for c in COUNTS),
    )
    if where is not None:
        query = query.where(where)
    rows = conn.execute(query.order_by(files.c.id.desc()).limit(limit))
    return [
        FileRow(
            id=int(r.id),
            name=str(r.name),
            table=r.table_name,
            mode=r.mode,
            status=str(r.status),
            error=r.error,
            finished_at=r.finished_at,
            **{c: int(r._mapping[c] or 0) for c in COUNTS},
        )
        for r in rows
    ]


def _event_query(*extra: ColumnElement[Any]) -> Any:
    return select(
        events.c.id,
        events.c.received_at,
        events.c.remote_addr,
        events.c.table_name,
        events.c.action,
        events.c.record_key,
        events.c.status,
        events.c.error,
        *extra,
    ).order_by(events.c.id.desc())


def _event_row(row: Any) -> EventRow:
    return EventRow(
        int(row.id),
        row.received_at,
        str(row.remote_addr),
        row.table_name,
        row.action,
        row.record_key,
        str(row.status),
        row.error,
    )
