"""Merging a staged Morning Sync file into its synced table, in one transaction.

A file is first loaded into a temporary staging table (one per load, on the loader's own
connection), then merged by a few set-based statements that SQLAlchemy Core renders for
each dialect. :func:`survey` counts everything in one aggregate pass over the stage joined
to the table (plus one over the table for a full file, except on PostgreSQL); :func:`apply`
then writes, skipping any statement the counts show would change nothing: on SQLite one
``INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE``, elsewhere ``UPDATE ... FROM``
and ``INSERT ... SELECT`` (PostgreSQL's upsert locks each row before it updates it, which
made it a fifth slower there), and for a full file a DELETE of the rows it no longer holds.

A row whose values the file leaves as they are is not rewritten (it keeps its synced-at
time and source): equal row hashes (``ROW_HASH``) settle that at once, else the values are
compared. On SQLite such a row is not even staged with its values (:data:`KEPT`); one whose
hash is missing (live sync clears it) or stale gets the file's, and nothing else, so that
the next file finds it unchanged at once.

How each database is staged, the costly part of a load, is in ``stage``.

A key the file holds twice keeps its last row: SQLite and PostgreSQL number the rows as they
arrive and drop the earlier duplicates once the file is in; MariaDB's stage is keyed and
overwrites them on insert. Either way the stage ends with one row a key, so the rows read
less the rows :func:`survey` finds staged (and those tombstones took) are the repeats
(``MergeCounts.repeated``), counted in the pass the survey makes anyway.

Reconciliation with live sync: the file is a snapshot taken at ``snapshot_at`` (T). A row
changed after T (``_aljex_synced_at > T``) keeps its newer values and is not deleted; a key
live sync deleted after T (a tombstone newer than T) is not brought back. The exception is
``own``, a file loaded again on purpose (``load --force``): the rows an earlier load of that
same file wrote are its own, not newer, whatever T that load took. Tombstones are pruned
after ``[journal] tombstone_days``; a file older than the pruned ones that would insert
rows is held before it gets here (``retention.resurrection_risk``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    and_,
    case,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from . import history
from .schema import (
    DELETED_AT,
    EVENT_ID,
    ROW_HASH,
    SOURCE,
    SYNCED_AT,
    SyncedTable,
    tombstones,
)
from .stage import KEPT, Stage, StageOutdated


@dataclass
class MergeCounts:
    """What a merge did, and how the file compared with what live sync had built."""

    staged: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    skipped_newer: int = 0
    missing_in_db: int = 0
    extra_in_db: int = 0
    differing: int = 0
    existing: int = 0  # alive rows before the merge; counted for full files only
    rewritten: int = 0  # updated rows whose values change, or that the file revives
    rehashed: int = 0  # unchanged rows whose hash is missing or stale (SQLite), see apply
    repeated: int = 0  # rows read that a later row of the file gave the key of again


def _not_newer(target: Table, snapshot_at: datetime, own: str | None) -> ColumnElement[bool]:
    """Rows the file may change: not changed after T, or written by ``own`` (a file name)."""
    synced_at = target.c[SYNCED_AT]
    not_newer = or_(synced_at.is_(None), synced_at <= snapshot_at)
    if own is None:
        return not_newer
    # COALESCE: no NULL may leak into the count of newer rows, its negation.
    own_row = and_(func.coalesce(target.c[SOURCE], "") == own, target.c[EVENT_ID].is_(None))
    return or_(not_newer, own_row)


def survey(
    conn: Connection,
    stage: Stage,
    synced: SyncedTable,
    *,
    full: bool,
    snapshot_at: datetime,
    own: str | None = None,
    tombstoned: int | None = None,
) -> MergeCounts:
    """Count what merging the stage would do; drops tombstoned keys from the stage first,
    unless the caller did (``tombstoned``: how many, from :func:`drop_tombstoned`).

    Runs inside the merge's transaction, in one aggregate pass over the stage joined to the
    table, plus for a full file one over the table. PostgreSQL does both in one pass with a
    FULL JOIN (SQLite's FULL JOIN would scan the table again; MariaDB has none); elsewhere
    the table is counted first. Either way a count of zero for a write still holds when the
    write would run, as live changes can only make rows newer or gone, so :func:`apply` may
    skip it.
    """
    st = stage.table
    target = synced.table
    counts = MergeCounts()
    if tombstoned is None:
        tombstoned = drop_tombstoned(conn, stage, synced, snapshot_at)
    counts.skipped_newer = tombstoned
    key = synced.key_columns[0]
    in_file, in_table = st.c[key].is_not(None), target.c[key].is_not(None)
    found = and_(in_file, in_table)
    alive = target.c[DELETED_AT].is_(None)
    not_newer = _not_newer(target, snapshot_at, own)
    values = [c for c in stage.columns if c not in set(synced.key_columns)]
    changed = _changes(target, st.c, values)
    kept = st.c[KEPT].is_not(None)
    same_key = and_(*(target.c[k] == st.c[k] for k in synced.key_columns))
    one_pass = full and conn.dialect.name == "postgresql"
    alive_rows = alive_not_newer = 0
    if full and not one_pass:
        alive_rows, alive_not_newer = conn.execute(
            select(func.count(), _count_if(not_newer)).select_from(target).where(alive)
        ).one()
    aggregates = [
        _count_if(in_file),
        _count_if(found),
        _count_if(and_(in_file, in_table, ~not_newer)),
        _count_if(and_(found, alive)),
        _count_if(and_(found, alive, not_newer)),
        # The value comparisons run once a row: the three counts below are disjoint.
        _count_if(and_(found, alive, not_newer, changed)),
        _count_if(and_(found, alive, ~not_newer, changed)),
        _count_if(and_(found, ~alive, not_newer)),
        # Kept rows the merge would now have to write: changed (or gone) since the look-up.
        _count_if(and_(kept, or_(~in_table, and_(not_newer, or_(~alive, changed))))),
    ]
    if one_pass:
        aggregates += [
            _count_if(and_(in_table, alive)),
            _count_if(and_(in_table, alive, not_newer)),
        ]
    hashed = stage.hashes is not None and bool(values)
    if hashed:
        aggregates.append(_count_if(and_(found, alive, not_newer, _stale(target, st, values))))
    joined = st.outerjoin(target, same_key, full=one_pass)
    row = [int(n) for n in conn.execute(select(*aggregates).select_from(joined)).one()]
    staged, matched, newer, found_alive, found_alive_not_newer = row[:5]
    changed_alive, changed_newer, revived, outdated = row[5:9]
    differing = changed_alive + changed_newer
    counts.rewritten = changed_alive + revived
    if outdated:
        raise StageOutdated(f"{outdated} rows staged as unchanged changed in the table since")
    if one_pass:
        alive_rows, alive_not_newer = row[9:11]
    if hashed:
        counts.rehashed = row[-1]
    counts.staged = staged
    counts.repeated = max(stage.rows - tombstoned - staged, 0)
    counts.inserted = staged - matched
    counts.updated = matched - newer
    counts.skipped_newer += newer
    counts.missing_in_db = staged - found_alive
    counts.differing = differing
    if full:
        counts.existing = int(alive_rows)
        counts.extra_in_db = counts.existing - found_alive
        counts.deleted = int(alive_not_newer) - found_alive_not_newer
    return counts


def apply(
    conn: Connection,
    stage: Stage,
    synced: SyncedTable,
    counts: MergeCounts,
    *,
    full: bool,
    soft_delete: bool,
    snapshot_at: datetime,
    source: str,
    own: str | None = None,
    rewritten: bool = False,
) -> None:
    """Write the surveyed stage into its table. Runs inside the caller's transaction.

    ``rewritten``: :func:`rewrite` has run already (``overlap``), so the rows the table
    holds are not written again here.
    """
    st = stage.table
    target = synced.table
    same_key = and_(*(target.c[k] == st.c[k] for k in synced.key_columns))
    alive = target.c[DELETED_AT].is_(None)
    not_newer = _not_newer(target, snapshot_at, own)
    values = [c for c in stage.columns if c not in set(synced.key_columns)]
    meta = {SYNCED_AT: snapshot_at, SOURCE: source, EVENT_ID: None, DELETED_AT: None}
    written = [*stage.columns, ROW_HASH, *meta]
    rows = select(
        *(st.c[c] for c in [*stage.columns, ROW_HASH]), *(_literal(v) for v in meta.values())
    )
    if conn.dialect.name == "sqlite":
        if counts.inserted or counts.rewritten:
            from sqlalchemy.dialects import sqlite

            # The WHERE also keeps SQLite from reading ON CONFLICT as a join's ON.
            upsert = sqlite.insert(target).from_select(written, rows.where(st.c[KEPT].is_(None)))
            upsert = upsert.on_conflict_do_update(
                index_elements=[target.c[k] for k in synced.key_columns],
                set_={c: upsert.excluded[c] for c in [*values, ROW_HASH, *meta]},
                where=and_(not_newer, or_(~alive, _changes(target, upsert.excluded, values))),
            )
            conn.execute(upsert)
        if counts.rehashed:
            # Unchanged rows whose hash live sync cleared (or an older loader wrote) get
            # the file's, and nothing else: the next file finds them unchanged at once.
            stale = and_(same_key, alive, not_newer, _stale(target, st, values))
            conn.execute(update(target).where(stale).values({ROW_HASH: st.c[ROW_HASH]}))
    else:
        if counts.rewritten and not rewritten:
            rewrite(conn, stage, synced, snapshot_at=snapshot_at, source=source, own=own)
        if counts.inserted:
            missing = ~exists().where(same_key)
            conn.execute(insert(target).from_select(written, rows.where(missing)))
    if synced.history is not None and (counts.inserted or counts.rewritten):
        history.merged(conn, st, synced, snapshot_at=snapshot_at, source=source)
    if full and counts.deleted:
        gone = and_(alive, ~exists().where(same_key), not_newer)
        if synced.history is not None:
            history.deleting(conn, synced, gone, snapshot_at=snapshot_at, source=source)
        if soft_delete:
            conn.execute(
                update(target)
                .where(gone)
                .values({DELETED_AT: snapshot_at, SYNCED_AT: snapshot_at, SOURCE: source})
            )
        else:
            conn.execute(delete(target).where(gone))


def rewrite(
    conn: Connection,
    stage: Stage,
    synced: SyncedTable,
    *,
    snapshot_at: datetime,
    source: str,
    own: str | None,
) -> int:
    """UPDATE the rows the file revives or changes (not SQLite); returns how many.

    ``overlap`` runs it on its own, beside :func:`survey`, before the counts are known.
    """
    st = stage.table
    target = synced.table
    same_key = and_(*(target.c[k] == st.c[k] for k in synced.key_columns))
    values = [c for c in stage.columns if c not in set(synced.key_columns)]
    meta = {SYNCED_AT: snapshot_at, SOURCE: source, EVENT_ID: None, DELETED_AT: None}
    # A row is written when it is revived or its values change; kept rows never are.
    alive = target.c[DELETED_AT].is_(None)
    changed = _changes(target, st.c, values)
    written = and_(_not_newer(target, snapshot_at, own), or_(~alive, changed))
    result = conn.execute(
        update(target)
        .where(same_key, written)
        .values({**{c: st.c[c] for c in [*values, ROW_HASH]}, **meta})
    )
    return max(result.rowcount, 0)


def _changes(target: Table, source: Any, values: Sequence[str]) -> ColumnElement[bool]:
    """Whether the ``source`` row (stage or ``excluded``) changes the values of ``target``'s.

    Equal hashes settle it; else (a hash NULL or different) the values are compared, and
    AND evaluates them only then.
    """
    if not values:
        return false()
    mine, theirs = target.c[ROW_HASH], source[ROW_HASH]
    unsettled = or_(mine.is_(None), theirs.is_(None), mine != theirs)
    return and_(unsettled, _differs(target, source, values))


def _stale(target: Table, st: Table, values: Sequence[str]) -> ColumnElement[bool]:
    """A stage row staged with its values, equal to the table's, whose hash the table lacks
    or holds another of."""
    mine, theirs = target.c[ROW_HASH], st.c[ROW_HASH]
    return and_(
        st.c[KEPT].is_(None),
        or_(mine.is_(None), mine != theirs),
        ~_differs(target, st.c, values),
    )


def _differs(target: Table, source: Any, values: Sequence[str]) -> ColumnElement[bool]:
    """Whether any of ``values`` differs between ``target``'s row and ``source``'s (NULL
    equal to NULL)."""
    return or_(*(target.c[c].is_distinct_from(source[c]) for c in values))


def drop_tombstoned(
    conn: Connection, stage: Stage, synced: SyncedTable, snapshot_at: datetime
) -> int:
    """Remove from the stage keys live sync deleted after the snapshot: no resurrection."""
    st = stage.table
    recent = select(tombstones.c.record_key).where(
        tombstones.c.table_name == synced.name, tombstones.c.deleted_at > snapshot_at
    )
    if conn.execute(recent.limit(1)).first() is None:  # the usual case: an indexed look
        return 0
    if len(synced.key_columns) == 1:  # the record key is the key itself: one statement
        key = st.c[synced.key_columns[0]]
        return max(conn.execute(delete(st).where(key.in_(recent))).rowcount, 0)
    dropped = 0
    for record_key in conn.execute(recent).scalars():
        values = _split_key(record_key, len(synced.key_columns))
        where = and_(*(st.c[k] == v for k, v in zip(synced.key_columns, values, strict=True)))
        dropped += max(conn.execute(delete(st).where(where)).rowcount, 0)
    return dropped


def _split_key(record_key: str, parts: int) -> list[str]:
    if parts == 1:
        return [record_key]
    values = json.loads(record_key)
    return [str(v) for v in values]


def _count_if(condition: ColumnElement[Any]) -> ColumnElement[int]:
    """How many rows meet ``condition``, in an aggregate pass (0, not NULL, for none)."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _literal(value: object) -> Any:
    return null() if value is None else literal(value)
