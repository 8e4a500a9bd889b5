"""What ``status`` shows, read from the journal and the file log without writing anything.

``status``, ``replay`` and ``load --dry-run`` may be pointed at any database, including one
aljex-sync has never used: they look for its tables first (:func:`find_tables`) and say
so when there are none, rather than create them. On SQLite a missing file is not even
created.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, and_, exists, func, inspect, or_, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from .store.database import normalize_url, reading
from .store.schema import events, files
from .store.statuses import count_by_status, status_in

NO_TABLES = "no aljex-sync tables here"
ATTENTION = ("failed", "held", "unmatched")


def not_loaded() -> ColumnElement[bool]:
    """Files of ``_aljex_files`` that still need a look: held, failed or unmatched, and no
    later file has loaded for the same table, under the same name, or with the same bytes.

    A truncated ``loads.csv`` is settled by the complete one loaded after it, and an
    unmatched file by a file of its name loaded once ``[tables.X] files`` names it. The one
    rule for ``status`` and the admin page.
    """
    later = aliased(files)
    loaded_since = exists().where(
        later.c.status == "loaded",
        later.c.id > files.c.id,
        or_(
            later.c.table_name == files.c.table_name,  # NULL (unmatched) matches nothing
            later.c.name == files.c.name,
            and_(later.c.sha256 == files.c.sha256, later.c.sha256 != ""),
        ),
    )
    return and_(files.c.status.in_(ATTENTION), ~loaded_since)


@dataclass(frozen=True)
class FileProblem:
    """A morning file that was not loaded, and why; kept until a later file settles it
    (:func:`not_loaded`)."""

    name: str
    table: str | None
    status: str
    reason: str
    finished_at: datetime


@dataclass(frozen=True)
class Summary:
    """What ``aljex-sync status`` shows: counts per status and table, and recent holds."""

    by_status: dict[str, int]
    by_table: list[tuple[str, str, int, datetime]]  # table, status, count, last received
    held_reasons: list[tuple[str, str, int]]  # table, reason, count
    last_received: datetime | None


def summarize(engine: Engine) -> Summary:
    """Read the journal's counts; needs nothing but the database."""
    with reading(engine) as conn:
        by_status = count_by_status(conn)
        by_table = [
            (str(t or "-"), str(s), int(n), last)
            for t, s, n, last in conn.execute(
                select(
                    events.c.table_name,
                    events.c.status,
                    func.count(),
                    func.max(events.c.received_at),
                )
                .group_by(events.c.table_name, events.c.status)
                .order_by(events.c.table_name, events.c.status)
            )
        ]
        held = held_reasons(conn, 10)
        last = conn.execute(select(func.max(events.c.received_at))).scalar()
    return Summary(by_status, by_table, held, last)


@dataclass(frozen=True)
class Overview:
    """Everything ``status`` prints."""

    summary: Summary
    rejected: list[tuple[str, int]]  # reason, requests
    problems: list[FileProblem]
    recent: list[dict[str, object]]
    warned: list[tuple[str, int, datetime]]  # table, requests with warnings, the last one


def held_reasons(conn: Connection, limit: int) -> list[tuple[str, str, int]]:
    """Held records counted by table and reason, most first (``status``, the admin page)."""
    return [
        (str(t or "-"), str(e or ""), int(n))
        for t, e, n in conn.execute(
            select(events.c.table_name, events.c.error, func.count())
            .where(status_in("held"))
            .group_by(events.c.table_name, events.c.error)
            .order_by(func.count().desc(), events.c.table_name)
            .limit(limit)
        )
    ]


def database_file_missing(url: str) -> bool:
    """Whether ``url`` is a SQLite file that does not exist (connecting would create it)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    name = parsed.database or ""
    if not name or name == ":memory:" or name.startswith("file:"):
        return False
    return not Path(name).exists()


def find_tables(engine: Engine) -> bool:
    """Whether the journal's and the file log's tables are there; reads only."""
    with reading(engine) as conn:
        present = set(inspect(conn).get_table_names())
    return {events.name, files.name} <= present


def read(engine: Engine, *, limit: int = 10) -> Overview:
    """The journal's counts, rejected requests by reason, requests accepted with warnings by
    table, and the files that need a look."""
    summary = summarize(engine)
    with reading(engine) as conn:
        warned = [
            (str(t or "-"), int(n), last)
            for t, n, last in conn.execute(
                select(events.c.table_name, func.count(), func.max(events.c.received_at))
                .where(events.c.warnings.is_not(None))
                .group_by(events.c.table_name)
                .order_by(events.c.table_name)
            )
        ]
        rejected = [
            (str(reason or "-"), int(n))
            for reason, n in conn.execute(
                select(events.c.error, func.count())
                .where(status_in("rejected"))
                .group_by(events.c.error)
                .order_by(func.count().desc(), events.c.error)
                .limit(limit)
            )
        ]
        problems = [
            FileProblem(
                str(row.name),
                row.table_name,
                str(row.status),
                str(row.error or ""),
                row.finished_at,
            )
            for row in conn.execute(
                select(files.c.name, files.c.table_name, files.c.status, files.c.error)
                .add_columns(files.c.finished_at)
                .where(not_loaded())
                .order_by(files.c.id.desc())
                .limit(limit)
            )
        ]
    return Overview(summary, rejected, problems, recent_files(engine, limit), warned)


def recent_files(engine: Engine, limit: int = 10) -> list[dict[str, object]]:
    """The last morning files and what became of them, newest first, for ``status``."""
    query = (
        select(
            files.c.name,
            files.c.table_name,
            files.c.status,
            files.c.rows_read,
            files.c.inserted,
            files.c.updated,
            files.c.deleted,
            files.c.skipped_newer,
            files.c.missing_in_db,
            files.c.extra_in_db,
            files.c.differing,
            files.c.error,
            files.c.finished_at,
        )
        .order_by(files.c.id.desc())
        .limit(limit)
    )
    with reading(engine) as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
