"""Merging a staged Morning Sync file into its synced table, in one transaction.

A file is first loaded into a temporary staging table (one per load, on the loader's own
connection), then merged by a handful of set-based statements that SQLAlchemy Core renders
for each dialect: count what the file would do, then UPDATE ... FROM, INSERT ... SELECT,
and for a full file, DELETE of the rows it no longer holds.

Reconciliation with live sync: the file is a snapshot taken at ``snapshot_at`` (T). A row
changed after T (``_aljex_synced_at > T``) keeps its newer values and is not deleted; a key
live sync deleted after T (a tombstone newer than T) is not brought back.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from .prepared import Prepared
from .schema import (
    DELETED_AT,
    EVENT_ID,
    MYSQL_TABLE,
    SOURCE,
    SYNCED_AT,
    KeyText,
    SyncedTable,
    ValueText,
    tombstones,
)

STAGE_PREFIX = "_aljex_stage_"


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
    existing: int = 0


class Stage:
    """A temporary table holding one file's rows, keyed like its target."""

    def __init__(
        self, conn: Connection, key_columns: Sequence[str], columns: Sequence[str]
    ) -> None:
        self.conn = conn
        self.key_columns = tuple(key_columns)
        self.columns = tuple(columns)
        keys = set(self.key_columns)
        cols = [
            Column(c, KeyText, primary_key=True) if c in keys else Column(c, ValueText)
            for c in self.columns
        ]
        name = f"{STAGE_PREFIX}{secrets.token_hex(6)}"
        self.table = Table(name, MetaData(), *cols, prefixes=["TEMPORARY"], **MYSQL_TABLE)
        with conn.begin():
            self.table.create(conn)
        dialect = conn.dialect
        # Rows arrive in file order; a key seen twice keeps its last row.
        stmt: Any
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            stmt = mysql.insert(self.table)
            stmt = stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in self._values()})
        else:
            from sqlalchemy.dialects import postgresql, sqlite

            make = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
            stmt = make(self.table)
            values = self._values()
            stmt = (
                stmt.on_conflict_do_update(
                    index_elements=list(self.key_columns),
                    set_={c: stmt.excluded[c] for c in values},
                )
                if values
                else stmt.on_conflict_do_nothing()
            )
        self._insert = Prepared.compile(stmt, dialect, self.columns)
        self._positional = self._insert.order == self.columns

    def _values(self) -> list[str]:
        keys = set(self.key_columns)
        return [c for c in self.columns if c not in keys]

    def add(self, rows: list[list[str]]) -> None:
        """Stage a batch of rows given in the file's column order, in its own transaction."""
        if not rows:
            return
        with self.conn.begin():
            if self._positional:
                self.conn.exec_driver_sql(self._insert.sql, list(map(tuple, rows)))
            else:
                self._insert.execute(
                    self.conn, [dict(zip(self.columns, r, strict=True)) for r in rows]
                )

    def drop(self) -> None:
        with self.conn.begin():
            self.table.drop(self.conn, checkfirst=False)


def merge(
    conn: Connection,
    stage: Stage,
    synced: SyncedTable,
    *,
    full: bool,
    soft_delete: bool,
    snapshot_at: datetime,
    source: str,
) -> MergeCounts:
    """Count, then apply the staged file to its table. Runs inside the caller's transaction."""
    st = stage.table
    target = synced.table
    counts = MergeCounts()
    same_key = and_(*(target.c[k] == st.c[k] for k in synced.key_columns))
    alive = target.c[DELETED_AT].is_(None)
    newer = target.c[SYNCED_AT] > snapshot_at
    not_newer = or_(target.c[SYNCED_AT].is_(None), target.c[SYNCED_AT] <= snapshot_at)
    values = [c for c in stage.columns if c not in set(synced.key_columns)]

    counts.skipped_newer = _drop_tombstoned(conn, stage, synced, snapshot_at)
    counts.staged = _count(conn, select(func.count()).select_from(st))
    counts.existing = count_alive(conn, synced)
    joined = st.join(target, same_key)
    counts.skipped_newer += _count(conn, select(func.count()).select_from(joined).where(newer))
    counts.missing_in_db = counts.staged - _count(
        conn, select(func.count()).select_from(joined).where(alive)
    )
    if values:
        differs: ColumnElement[bool] = or_(*(target.c[c].is_distinct_from(st.c[c]) for c in values))
        counts.differing = _count(
            conn, select(func.count()).select_from(joined).where(alive, differs)
        )
    in_file = exists().where(same_key)
    if full:
        counts.extra_in_db = _count(
            conn, select(func.count()).select_from(target).where(alive, ~in_file)
        )

    # Counted before writing: drivers disagree on rowcount for UPDATE ... FROM and
    # INSERT ... SELECT (MySQL counts changed rows only, psycopg reports none for the latter).
    missing = ~exists().where(same_key)
    counts.updated = _count(conn, select(func.count()).select_from(joined).where(not_newer))
    counts.inserted = _count(conn, select(func.count()).select_from(st).where(missing))
    if full:
        counts.deleted = would_delete(conn, stage, synced, snapshot_at)

    meta = {SYNCED_AT: snapshot_at, SOURCE: source, EVENT_ID: None, DELETED_AT: None}
    conn.execute(
        update(target).where(same_key, not_newer).values({**{c: st.c[c] for c in values}, **meta})
    )
    conn.execute(
        insert(target).from_select(
            [*stage.columns, *meta],
            select(*(st.c[c] for c in stage.columns), *(_literal(v) for v in meta.values())).where(
                missing
            ),
        )
    )
    if full:
        gone = and_(alive, ~in_file, not_newer)
        if soft_delete:
            conn.execute(
                update(target)
                .where(gone)
                .values({DELETED_AT: snapshot_at, SYNCED_AT: snapshot_at, SOURCE: source})
            )
        else:
            conn.execute(delete(target).where(gone))
    return counts


def count_alive(conn: Connection, synced: SyncedTable) -> int:
    """Rows of a synced table that are not (soft-)deleted."""
    table = synced.table
    return _count(
        conn, select(func.count()).select_from(table).where(table.c[DELETED_AT].is_(None))
    )


def would_delete(conn: Connection, stage: Stage, synced: SyncedTable, snapshot_at: datetime) -> int:
    """How many rows a full file would delete: alive, not in the file, not newer than it."""
    st = stage.table
    target = synced.table
    same_key = and_(*(target.c[k] == st.c[k] for k in synced.key_columns))
    not_newer = or_(target.c[SYNCED_AT].is_(None), target.c[SYNCED_AT] <= snapshot_at)
    return _count(
        conn,
        select(func.count())
        .select_from(target)
        .where(target.c[DELETED_AT].is_(None), ~exists().where(same_key), not_newer),
    )


def _drop_tombstoned(
    conn: Connection, stage: Stage, synced: SyncedTable, snapshot_at: datetime
) -> int:
    """Remove from the stage keys live sync deleted after the snapshot: no resurrection."""
    st = stage.table
    keys = conn.execute(
        select(tombstones.c.record_key).where(
            tombstones.c.table_name == synced.name, tombstones.c.deleted_at > snapshot_at
        )
    ).scalars()
    dropped = 0
    for record_key in keys:
        values = _split_key(record_key, len(synced.key_columns))
        where = and_(*(st.c[k] == v for k, v in zip(synced.key_columns, values, strict=True)))
        dropped += max(conn.execute(delete(st).where(where)).rowcount, 0)
    return dropped


def _split_key(record_key: str, parts: int) -> list[str]:
    if parts == 1:
        return [record_key]
    values = json.loads(record_key)
    return [str(v) for v in values]


def _literal(value: object) -> Any:
    return null() if value is None else literal(value)


def _count(conn: Connection, query: Any) -> int:
    return int(conn.execute(query).scalar_one())
