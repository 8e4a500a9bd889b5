"""Writing records into synced tables: upsert for create and update, delete or soft delete.

Every statement is built by SQLAlchemy Core from a ``SyncedTable``, never from text, and
cached per table shape and column set, since Aljex sends the same set of fields for every
record of a table and building a 400-column upsert is not free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Dialect,
    Insert,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from .history import LiveHistory, LiveVersion, unique_runs
from .prepared import Prepared
from .schema import (
    DELETED_AT,
    EVENT_ID,
    ROW_HASH,
    SOURCE,
    SYNCED_AT,
    SyncedTable,
    tombstones,
)

LIVE_SQL = "'live'"  # the source of a live change (journal_write.LIVE), as an SQL literal

# upsert() fills them in this order. A live write clears the row hash: the row no longer
# holds what the last morning file did, and that file's hash must not say it does.
META = (SYNCED_AT, SOURCE, EVENT_ID, DELETED_AT, ROW_HASH)


@dataclass(frozen=True)
class RowMeta:
    """Where a row's current values came from: the time they are true as of, and source."""

    synced_at: datetime
    source: str
    event_id: int | None
    action: str = "update"  # the change's action, for the table's history


def not_older(table: Table, change: Any) -> ColumnElement[bool]:
    """Whether a live change may overwrite the row: the rule for concurrent changes to a key.

    Receivers on several hosts can commit two changes to one key in either order. A row
    remembers its last live change (``_aljex_synced_at``, when it was received, and
    ``_aljex_event_id``); a change received earlier, or at the same time with a lower event
    id, overwrites none of its values (it only fills fields the row never had) and a delete
    received earlier deletes nothing. Rows a morning file wrote last take any live change.
    ``change`` holds the change's values: ``excluded`` / ``inserted``, or plain values.
    """
    row_time, row_event = table.c[SYNCED_AT], table.c[EVENT_ID]
    return or_(
        func.coalesce(table.c[SOURCE], literal_column("''")) != literal_column(LIVE_SQL),
        row_time.is_(None),
        row_time < change[SYNCED_AT],
        and_(
            row_time == change[SYNCED_AT], or_(row_event.is_(None), row_event <= change[EVENT_ID])
        ),
    )


def record_key(values: Sequence[str]) -> str:
    """The key of a record as one string: the value itself, or a JSON list when composite."""
    return values[0] if len(values) == 1 else json.dumps(list(values), ensure_ascii=False)


class RowWriter:
    """Upserts and deletes for one database dialect, with statements cached."""

    def __init__(self, dialect: Dialect) -> None:
        self.sa_dialect = dialect
        self.dialect = dialect.name
        self._cache: dict[tuple[int, tuple[str, ...]], Prepared] = {}
        self._held_queries: dict[tuple[int, int], Prepared] = {}
        self._tombstone_statement: Prepared | None = None
        self.history = LiveHistory(dialect)

    def _upsert(
        self, table: Table, keys: Sequence[str], updated: Sequence[str], *, in_order: bool = False
    ) -> Insert:
        """This dialect's INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE of ``updated``.

        With ``in_order``, a change older than the row's last live change (:func:`not_older`)
        only fills the row's empty (NULL) fields and leaves its meta columns alone.
        """
        stmt: Any
        mariadb = self.dialect in ("mysql", "mariadb")
        if mariadb:
            stmt = mysql.insert(table)
            new = stmt.inserted
        else:
            stmt = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)
            new = stmt.excluded
        sets: list[tuple[str, Any]] = [(c, new[c]) for c in updated]
        if in_order:
            # MariaDB assigns left to right, each seeing those before it: the columns the
            # test reads go last, in the order that keeps its answer (event id, time, source).
            test = not_older(table, new)
            last = (EVENT_ID, SYNCED_AT, SOURCE)
            ordered = [c for c in updated if c not in last] + [c for c in last if c in updated]
            sets = [
                (c, case((test, new[c]), else_=table.c[c]))
                if c in META
                else (c, func.coalesce(case((test, new[c])), table.c[c], new[c]))
                for c in ordered
            ]
        if mariadb:
            return stmt.on_duplicate_key_update(sets)  # type: ignore[no-any-return]
        return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
            index_elements=[table.c[k] for k in keys], set_=dict(sets)
        )

    def upsert_statement(self, synced: SyncedTable, columns: tuple[str, ...]) -> Prepared:
        """INSERT ... ON CONFLICT (key) DO UPDATE of ``columns`` and the meta columns.

        Only the columns given are written, so fields a record did not carry keep their
        values, and two concurrent updates of one key cannot undo each other's fields.
        """
        cache_key = (id(synced.table), columns)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        keys = set(synced.key_columns)
        updated = [c for c in columns if c not in keys] + list(META)
        stmt = self._upsert(synced.table, synced.key_columns, updated, in_order=True)
        prepared = Prepared.compile(stmt, self.sa_dialect, [*columns, *META])
        self._cache[cache_key] = prepared
        return prepared

    def upsert(
        self,
        conn: Connection,
        synced: SyncedTable,
        columns: tuple[str, ...],
        rows: Sequence[tuple[Sequence[str], RowMeta]],
    ) -> dict[int, datetime]:
        """Upsert rows given as values in ``columns`` order (keys included), each with its meta.

        One executemany per run of rows with distinct keys, in the order given, so a later
        row for a key wins; then the run's rows are read back, to find those the rule for
        concurrent changes (:func:`not_older`) kept from taking their change, and, for a
        table that keeps its history, the others are versioned.

        Returns the rows that did not take their change (their position in ``rows``), each
        with when the row's own later change was received.
        """
        if not rows:
            return {}
        prepared = self.upsert_statement(synced, columns)
        params = [
            (*values, meta.synced_at, meta.source, meta.event_id, None, None)
            for values, meta in rows
        ]
        at = [columns.index(k) for k in synced.key_columns]
        keys = [[values[i] for i in at] for values, _ in rows]
        not_taken: list[int] = []
        for start, end in unique_runs(keys):
            prepared.execute_values(conn, params[start:end])
            held = self._held_by(conn, synced, keys[start:end])
            changes = []
            for i in range(start, end):
                meta = rows[i][1]
                if held.get(tuple(keys[i]), meta.event_id) != meta.event_id:
                    not_taken.append(i)
                else:
                    changes.append(
                        LiveVersion(
                            keys[i], meta.synced_at, meta.source, meta.event_id, meta.action
                        )
                    )
            if synced.history is not None and changes:
                self.history.changed(conn, synced, changes)
        times = self._row_times(conn, synced, [keys[i] for i in not_taken])
        return {i: t for i, t in zip(not_taken, times, strict=True) if t is not None}

    def _held_by(
        self, conn: Connection, synced: SyncedTable, keys: Sequence[Sequence[str]]
    ) -> dict[tuple[str, ...], int | None]:
        """The event id of the change each of these rows holds, by key.

        Read under the rows' locks (the upsert already holds them), which on MariaDB also
        makes it a read of the rows as they are now, not as the transaction first saw them.
        One prepared query per power of two of keys, the last key repeated to fill it.
        """
        size = 1 << (len(keys) - 1).bit_length()
        cache_key = (id(synced.table), size)
        prepared = self._held_queries.get(cache_key)
        width = len(synced.key_columns)
        if prepared is None:
            table = synced.table
            columns = [table.c[k] for k in synced.key_columns]
            names = [f"_aljex_p_k{i}_{j}" for i in range(size) for j in range(width)]
            params = [bindparam(name, type_=String) for name in names]
            if width == 1:
                match = columns[0].in_(params)
            else:
                rows = [tuple_(*params[i * width : (i + 1) * width]) for i in range(size)]
                match = tuple_(*columns).in_(rows)
            query = select(*columns, table.c[EVENT_ID]).where(match).with_for_update()
            prepared = Prepared.compile(query, self.sa_dialect, names)
            self._held_queries[cache_key] = prepared
        wanted = [v for key in keys for v in key] + list(keys[-1]) * (size - len(keys))
        return {tuple(row[:width]): row[width] for row in prepared.fetch_values(conn, wanted)}

    def _row_times(
        self, conn: Connection, synced: SyncedTable, keys: Sequence[Sequence[str]]
    ) -> list[datetime | None]:
        """When each of these rows' last change was received (the rare path: not taken);
        read under the lock, as :meth:`_held_by` reads."""
        table = synced.table
        found = []
        for key in keys:
            of_key = [table.c[c] == v for c, v in zip(synced.key_columns, key, strict=True)]
            query = select(table.c[SYNCED_AT]).where(*of_key).with_for_update()
            found.append(conn.execute(query).scalar_one_or_none())
        return found

    def delete(
        self,
        conn: Connection,
        synced: SyncedTable,
        key: Mapping[str, str],
        meta: RowMeta,
        *,
        soft: bool,
    ) -> tuple[int, datetime | None]:
        """Delete (or mark deleted) the row with this key.

        Returns how many rows changed and, when none did because the row holds a later
        live change (:func:`not_older`), when that change was received. Only a delete that
        changed the row is versioned. A hard delete leaves a tombstone so a morning file
        taken before the delete cannot bring the record back.
        """
        table = synced.table
        of_key = [table.c[c] == v for c, v in key.items()]
        where = and_(
            *of_key, not_older(table, {SYNCED_AT: meta.synced_at, EVENT_ID: meta.event_id})
        )
        change = LiveVersion(
            [key[c] for c in synced.key_columns], meta.synced_at, meta.source, meta.event_id, ""
        )
        changed = 0
        if soft:
            result = conn.execute(
                update(table)
                .where(where)
                .values(
                    {
                        DELETED_AT: meta.synced_at,
                        SYNCED_AT: meta.synced_at,
                        SOURCE: meta.source,
                        EVENT_ID: meta.event_id,
                    }
                )
            )
            changed = result.rowcount
            if synced.history is not None and changed:
                self.history.deleted(conn, synced, change)
        elif synced.history is None:
            changed = conn.execute(delete(table).where(where)).rowcount
        else:
            # The version copies the row, so it comes first: lock the row if it is to go,
            # so that no other receiver's change gets in between the copy and the delete.
            going = select(*(table.c[c] for c in key)).where(where).with_for_update()
            if conn.execute(going).first() is not None:
                self.history.deleted(conn, synced, change)
                changed = conn.execute(delete(table).where(where)).rowcount
        self.tombstone(conn, synced.name, record_key(list(key.values())), meta)
        if changed:
            return changed, None
        later = select(table.c[SYNCED_AT]).where(*of_key).with_for_update()
        return 0, conn.execute(later).scalar_one_or_none()

    def tombstone(self, conn: Connection, table: str, key: str, meta: RowMeta) -> None:
        prepared = self._tombstone_statement
        if prepared is None:
            stmt = self._upsert(
                tombstones, ("table_name", "record_key"), ["deleted_at", "event_id"]
            )
            names = ("table_name", "record_key", "deleted_at", "event_id")
            prepared = Prepared.compile(stmt, self.sa_dialect, names)
            self._tombstone_statement = prepared
        prepared.execute_values(conn, [(table, key, meta.synced_at, meta.event_id)])

    def synced_at(
        self, conn: Connection, synced: SyncedTable, key: Mapping[str, str]
    ) -> datetime | None:
        """When the row with this key was last changed, or None when there is none."""
        table = synced.table
        where = and_(*(table.c[c] == v for c, v in key.items()))
        return conn.execute(select(table.c[SYNCED_AT]).where(where)).scalar_one_or_none()
