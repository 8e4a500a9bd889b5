"""How long the journal keeps what it no longer needs: resolved events and old tombstones.

Every request is kept raw in ``_aljex_events`` so that nothing is lost; once a record is
applied (or superseded: a change older than what its row or key already had), its row
in the synced table is the truth and the raw request is only history. ``prune`` removes
those older than ``[journal] keep_days``. Held and rejected events are kept whatever their
age: they are what ``replay`` works on, and a replay that applies them makes them prunable.

A tombstone (``_aljex_tombstones``) keeps a morning file whose snapshot is older than a live
delete from bringing the record back. Morning files are a day old at most, so
``prune_tombstones`` removes those of deletes more than ``[journal] tombstone_days`` ago, and
records in ``_aljex_meta`` the moment before which deletes are no longer all remembered
(:data:`FORGOTTEN`, in the transaction of each batch it removes). A file older than that
which would insert rows is held (:func:`resurrection_risk`): a row it holds that the table
lacks may be a record deleted since, whose tombstone went.

Deletes run in batches of ``BATCH`` rows, each its own short transaction, so the journal's
writer (and, on SQLite, everything else) never waits long behind a prune.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from .clock import utcnow
from .store import locks
from .store.database import reading
from .store.migrations import meta
from .store.schema import events, tombstones

log = logging.getLogger("aljex_sync.retention")

RESOLVED = ("applied", "superseded")
BATCH = 1000
LOAD_WAIT = 3600.0  # seconds a batch of tombstones waits for a load of their table
# _aljex_meta: deletes before this moment may have lost their tombstone (naive UTC, as text
# of one fixed width, so that the database compares two of them as it would the times).
FORGOTTEN = "tombstones_pruned_before"
_MOMENT = "%Y-%m-%d %H:%M:%S.%f"
DAY = 24 * 3600.0  # seconds between two prunes in ``serve``


@dataclass(frozen=True)
class PruneReport:
    """What one prune removed (or, in a dry run, would remove)."""

    removed: int
    cutoff: datetime  # naive UTC: resolved events received (or keys deleted) before this go
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


def prune_tombstones(
    engine: Engine,
    tombstone_days: int,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    batch: int = BATCH,
) -> PruneReport:
    """Remove the tombstones of deletes more than ``tombstone_days`` ago.

    A dry run only counts them. Each table's tombstones are walked in key order (its primary
    key's range: no batch reads again what an earlier one kept), and each batch commits on
    its own with the :data:`FORGOTTEN` mark, so a load never sees a tombstone gone unmarked.
    """
    cutoff = cutoff_for(tombstone_days, now)
    old = tombstones.c.deleted_at < cutoff
    with reading(engine) as conn:
        if dry_run:
            count = conn.execute(select(func.count()).where(old)).scalar()
            return PruneReport(int(count or 0), cutoff, dry_run=True)
        names = list(conn.execute(select(tombstones.c.table_name).distinct()).scalars())
    removed, marked = 0, False
    for name in names:
        after: str | None = None
        while True:
            query = select(tombstones.c.record_key).where(tombstones.c.table_name == name, old)
            if after is not None:
                query = query.where(tombstones.c.record_key > after)
            with reading(engine) as conn:
                keys = list(
                    conn.execute(query.order_by(tombstones.c.record_key).limit(batch)).scalars()
                )
            if not keys:
                break
            if not marked:
                _make_mark(engine)
                marked = True
            removed += _remove(engine, name, keys, cutoff)
            if len(keys) < batch:
                break
            after = keys[-1]
    return PruneReport(removed, cutoff)


def _remove(engine: Engine, table: str, keys: list[str], cutoff: datetime) -> int:
    """Remove these tombstones of ``table`` if still older than ``cutoff``, and mark it.

    In turn with a load of the table (its lock, held until the commit), which reads the
    tombstones and then the mark: on MariaDB the first read of a transaction fixes what its
    later plain reads see, so a batch committed in between could go unseen by the second.
    """
    with engine.connect() as conn:
        transaction = conn.begin()
        with locks.for_transaction(conn, locks.morning_load(table), wait=LOAD_WAIT):
            try:
                _mark_forgotten(conn, cutoff)
                result = conn.execute(  # re-checked: a new delete may have renewed one
                    delete(tombstones).where(
                        tombstones.c.table_name == table,
                        tombstones.c.record_key.in_(keys),
                        tombstones.c.deleted_at < cutoff,
                    )
                )
                transaction.commit()
            except BaseException:
                transaction.rollback()
                raise
    return int(result.rowcount or 0)


def forgotten_before(conn: Connection) -> datetime | None:
    """The moment before which a live delete may have lost its tombstone, if one ever did."""
    value = conn.execute(select(meta.c.value).where(meta.c.name == FORGOTTEN)).scalar()
    return datetime.strptime(value, _MOMENT) if value else None


def resurrection_risk(conn: Connection, snapshot_at: datetime, inserting: int) -> str:
    """Why a file of ``snapshot_at`` must not insert ``inserting`` rows without --force, or ''.

    A row the table lacks may be a record live sync deleted after the snapshot; once that
    delete's tombstone is pruned, only the file's age can tell. A soft-deleted row is no
    risk: it is still in the table, newer than the file.
    """
    forgotten = forgotten_before(conn) if inserting else None
    if forgotten is None or snapshot_at >= forgotten:
        return ""
    return (
        f"the file's snapshot ({snapshot_at:%Y-%m-%d %H:%M} UTC) is older than the deletes"
        f" still remembered (tombstones of deletes before {forgotten:%Y-%m-%d %H:%M} UTC were"
        f" pruned, [journal] tombstone_days): {inserting} of its rows are not in the table"
        " and may be records deleted since; load it with --force if that is right"
    )


def _make_mark(engine: Engine) -> None:
    """The :data:`FORGOTTEN` row, empty, unless it is there; another prune may make it too."""
    with suppress(IntegrityError), engine.begin() as conn:
        if conn.execute(select(meta.c.name).where(meta.c.name == FORGOTTEN)).first() is None:
            conn.execute(meta.insert().values(name=FORGOTTEN, value=""))


def _mark_forgotten(conn: Connection, cutoff: datetime) -> None:
    """Move the :data:`FORGOTTEN` mark up to ``cutoff``, never back."""
    value = f"{cutoff:{_MOMENT}}"
    conn.execute(
        update(meta).where(meta.c.name == FORGOTTEN, meta.c.value < value).values(value=value)
    )


def prune_and_log(engine: Engine, keep_days: int, tombstone_days: int = 0) -> None:
    """``serve``'s daily prune: events past ``keep_days``, tombstones past ``tombstone_days``
    (either 0: not pruned), saying what went (at DEBUG when nothing did)."""
    if keep_days:
        report = prune(engine, keep_days)
        log.log(
            logging.INFO if report.removed else logging.DEBUG,  # a quiet day is not news
            "journal: pruned %d applied event%s received before %s UTC (keep_days = %d)",
            report.removed,
            "" if report.removed == 1 else "s",
            f"{report.cutoff:%Y-%m-%d %H:%M}",
            keep_days,
        )
    if tombstone_days:
        report = prune_tombstones(engine, tombstone_days)
        log.log(
            logging.INFO if report.removed else logging.DEBUG,
            "journal: pruned %d tombstone%s of deletes before %s UTC (tombstone_days = %d)",
            report.removed,
            "" if report.removed == 1 else "s",
            f"{report.cutoff:%Y-%m-%d %H:%M}",
            tombstone_days,
        )
