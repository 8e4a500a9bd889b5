"""How long the journal keeps events: ``[journal] keep_days`` for resolved ones, forever else.

Every request is kept raw in ``_aljex_events`` so that nothing is lost; once a record is
applied (or superseded: a replayed change older than what its row already had), its row
in the synced table is the truth and the raw request is only history. ``prune`` removes
those older than ``keep_days``. Held and rejected events are kept whatever their age:
they are what ``replay`` works on, and a replay that applies them makes them prunable.

Deletes run in batches of ``BATCH`` ids, each its own short transaction, so the journal's
writer (and, on SQLite, everything else) never waits long behind a prune.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, delete, func, select
from sqlalchemy.sql.elements import ColumnElement

from .clock import utcnow
from .store.database import reading
from .store.schema import events

log = logging.getLogger("aljex_sync.retention")

RESOLVED = ("applied", "superseded")
BATCH = 1000
DAY = 24 * 3600.0  # seconds between two prunes in ``serve``


@dataclass(frozen=True)
class PruneReport:
    """What one prune removed (or, in a dry run, would remove)."""

    removed: int
    cutoff: datetime  # naive UTC: resolved events received before this go
    dry_run: bool = False


def cutoff_for(keep_days: int, now: datetime | None = None) -> datetime:
    """Events received before this moment (naive UTC) are past ``keep_days``."""
    return (utcnow() if now is None else now) - timedelta(days=keep_days)


def _old(cutoff: datetime) -> ColumnElement[bool]:
    return and_(events.c.status.in_(RESOLVED), events.c.received_at < cutoff)


def prune(
    engine: Engine,
    keep_days: int,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    batch: int = BATCH,
) -> PruneReport:
    """Remove applied and superseded events received more than ``keep_days`` ago.

    A dry run only counts them. Each batch commits on its own: a prune stopped halfway
    has removed what it reported and left the journal consistent.
    """
    cutoff = cutoff_for(keep_days, now)
    if dry_run:
        with reading(engine) as conn:
            count = conn.execute(select(func.count()).where(_old(cutoff))).scalar()
        return PruneReport(int(count or 0), cutoff, dry_run=True)
    removed = 0
    while True:
        with reading(engine) as conn:
            ids = list(
                conn.execute(
                    select(events.c.id).where(_old(cutoff)).order_by(events.c.id).limit(batch)
                ).scalars()
            )
        if not ids:
            break
        with engine.begin() as conn:  # re-checked: a replay may have changed one meanwhile
            result = conn.execute(delete(events).where(events.c.id.in_(ids), _old(cutoff)))
        removed += int(result.rowcount or 0)
        if len(ids) < batch:
            break
    return PruneReport(removed, cutoff)


def prune_and_log(engine: Engine, keep_days: int) -> PruneReport:
    """``serve``'s daily prune: prune, and say what went (at DEBUG when nothing did)."""
    report = prune(engine, keep_days)
    log.log(
        logging.INFO if report.removed else logging.DEBUG,  # a quiet day is not news
        "journal: pruned %d applied event%s received before %s UTC (keep_days = %d)",
        report.removed,
        "" if report.removed == 1 else "s",
        f"{report.cutoff:%Y-%m-%d %H:%M}",
        keep_days,
    )
    return report
