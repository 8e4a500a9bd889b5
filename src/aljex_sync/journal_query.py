"""What ``aljex-sync events`` and ``files`` list: the journal and the file log, filtered.

Both only read (:func:`~aljex_sync.store.database.reading`), newest first, bounded by a
limit, and never return a body: an event's raw body is on the admin page, one at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.sql.elements import ColumnElement

from .clock import utcnow
from .dashboard import FileRow, file_rows
from .errors import AljexSyncError
from .store.database import reading
from .store.schema import events, files
from .store.statuses import status_in

EVENT_STATUSES = ("applied", "held", "rejected", "superseded")
FILE_STATUSES = ("loaded", "duplicate", "held", "failed", "unmatched")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class BadSince(AljexSyncError):
    """A ``--since`` that is neither a duration nor a time."""


@dataclass(frozen=True)
class EventLine:
    """One journal entry as ``events`` lists it: what came, what became of it, and why.

    ``warnings`` is what was accepted but odd (a field sent twice, bytes that were not
    UTF-8), one line each, as the journal keeps them.
    """

    id: int
    received_at: datetime
    table: str | None
    action: str | None
    key: str | None
    status: str
    reason: str | None
    warnings: tuple[str, ...]


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since`` as naive UTC: a duration back from now (``90m``, ``2h``, ``3d``, ``1w``)
    or a UTC time (``2026-03-02``, ``2026-03-02T06:30``, ``2026-03-02 06:30:00``)."""
    now = utcnow() if now is None else now
    spoken = text.strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", spoken)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip().removesuffix("Z").removesuffix("z"))
    except ValueError:
        raise BadSince(
            f"--since {text!r}: give a duration like 90m, 2h, 3d, or a UTC time like"
            " 2026-03-02T06:30"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def list_events(
    engine: Engine,
    *,
    status: str | None = None,
    table: str | None = None,
    since: datetime | None = None,
    with_warnings: bool = False,
    limit: int = 50,
) -> list[EventLine]:
    """The latest journal entries, newest first, filtered by status, table, time and
    whether they carry warnings."""
    where: list[ColumnElement[bool]] = []
    if with_warnings:
        where.append(events.c.warnings.is_not(None))
    if status:
        where.append(status_in(status))
    if table:
        where.append(events.c.table_name == table.lower())
    if since is not None:
        where.append(events.c.received_at >= since)
    query = (
        select(
            events.c.id,
            events.c.received_at,
            events.c.table_name,
            events.c.action,
            events.c.raw_action,
            events.c.record_key,
            events.c.status,
            events.c.error,
            events.c.warnings,
        )
        .where(*where)
        .order_by(events.c.id.desc())
        .limit(limit)
    )
    with reading(engine) as conn:
        rows = conn.execute(query).all()
    return [
        EventLine(
            int(r.id),
            r.received_at,
            r.table_name,
            r.action or r.raw_action,
            r.record_key,
            str(r.status),
            r.error,
            tuple(r.warnings.splitlines()) if r.warnings else (),
        )
        for r in rows
    ]


def list_files(engine: Engine, *, status: str | None = None, limit: int = 50) -> list[FileRow]:
    """The latest morning files, newest first, of one status or all."""
    with reading(engine) as conn:
        return file_rows(conn, files.c.status == status if status else None, limit)
