"""Writing records into synced tables: upsert for create and update, delete or soft delete.

Every statement is built by SQLAlchemy Core from a ``SyncedTable``, never from text, and
cached per table shape and column set, since Aljex sends the same set of fields for every
record of a table and building a 400-column upsert is not free.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
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
    not_,
    or_,
    select,
    union_all,
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
    Timestamp,
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


def in_order(last_at: Any, last_event: Any, at: Any, event: Any) -> ColumnElement[bool]:
    """Whether a live change (received ``at``, journaled as ``event``) may follow what its
    key last saw (received ``last_at``, as ``last_event``): the rule for changes to one key.

    Receivers on several hosts can commit two changes to one key in either order; the one
    received later, or at the same time with the higher event id, comes last. Every test
    of that order is this expression, in SQL, on the row (:func:`not_older`) or on the
    key's tombstone (:func:`deleted_after`), so that it is decided where the write is.
    """
    return or_(
        last_at.is_(None),
        last_at < at,
        and_(last_at == at, or_(last_event.is_(None), last_event <= event)),
    )


def not_older(table: Table, change: Any) -> ColumnElement[bool]:
    """Whether a live change may overwrite the row: it is not older than the row's last
    live change (:func:`in_order`, on ``_aljex_synced_at`` and ``_aljex_event_id``).

    A change received earlier overwrites none of the row's values (it only fills fields
    the row never had) and a delete received earlier deletes nothing. Rows a morning file
    wrote last take any live change. ``change`` holds the change's values: ``excluded`` /
    ``inserted``, or plain values.
    """
    return or_(
        func.coalesce(table.c[SOURCE], literal_column("''")) != literal_column(LIVE_SQL),
        in_order(table.c[SYNCED_AT], table.c[EVENT_ID], change[SYNCED_AT], change[EVENT_ID]),
    )


def deleted_after(at: Any, event: Any) -> ColumnElement[bool]:
    """Whether the key's tombstone (a row of ``_aljex_tombstones``) records a delete later
    than a change received ``at`` as ``event``: the same rule as :func:`not_older`, for a
    key whose row a delete took away."""
    return not_(in_order(tombstones.c.deleted_at, tombstones.c.event_id, at, event))


@dataclass(frozen=True)
class Later:
    """What kept a change from its record: the row's own later change, or a later delete
    of its key (its tombstone), received ``at``, by event ``event_id``."""

    at: datetime
    deleted: bool = False
    event_id: int | None = None


def record_key(values: Sequence[str]) -> str:
    """The key of a record as one string: the value itself, or a JSON list when composite."""
    return values[0] if len(values) == 1 else json.dumps(list(values), ensure_ascii=False)


# The parameters of the read-back and of its tombstones, named as no column can be.
_TABLE = "_aljex_p_table"


class RowWriter:
    """Upserts and deletes for one database dialect, with statements cached.

    Whether a live change comes after what its key last saw is one SQL expression
    (:func:`in_order`), tested where the write is: on the row (the upsert's CASE, the
    delete's WHERE) or, once a delete took the row away, on the key's tombstone. With
    receivers on several hosts, "check the tombstone, then insert" is safe only if a
    change and a delete of one key meet on one lock, whichever comes first. That lock is
    the key's place in the table's primary key:

    - an upsert takes it by writing (the row's lock, or the new row's index entry), and
      only then reads back, one statement per run of rows, the event each row holds and,
      joined to it, its key's tombstone if that records a later delete: a primary-key
      look-up that finds nothing, usually, so the common case costs no extra round trip.
      A row made by a change older than a delete of its key is deleted again, the change
      superseded. PostgreSQL reads the tombstone on a snapshot taken after the upsert,
      which waited for a delete holding the key to commit; MariaDB reads it locked (FOR
      UPDATE), so as it is now, not as the transaction first saw it;
    - a delete takes the key before it decides, even when the key has no row: the row's
      lock; on MariaDB the lock on the gap where the row would be (its locking read of a
      missing key), which an insert of the key waits for; on PostgreSQL, which locks no
      gap, by inserting the row and deleting it again: the insert waits for a create of
      the key in flight, and the dead row keeps the key's place until the delete commits.
      Only then does it delete the row or, with no row, write its tombstone (keeping the
      later delete) and read that back under its lock.

    So whichever of the two commits second has seen the other. A conditional ``INSERT ...
    SELECT ... WHERE NOT EXISTS (tombstone)`` would not do: PostgreSQL evaluates it on the
    snapshot taken before the insert waits, and MariaDB's driver would send the run's
    executemany row by row. An advisory lock per key would cost a statement and a lock per
    row on the hot path. SQLite has one writer at a time (``BEGIN IMMEDIATE``).
    """

    def __init__(self, dialect: Dialect) -> None:
        self.sa_dialect = dialect
        self.dialect = dialect.name
        self._cache: dict[tuple[int, tuple[str, ...]], Prepared] = {}
        self._read_backs: dict[tuple[int, int], Prepared] = {}
        self._tombstone_statement: Prepared | None = None
        self._timestamp = Timestamp.dialect_impl(dialect).result_processor(dialect, None)
        self.history = LiveHistory(dialect)

    def _upsert(
        self,
        table: Table,
        keys: Sequence[str],
        updated: Sequence[str],
        *,
        test: Callable[[Any], ColumnElement[bool]] | None = None,
        last: Sequence[str] = (),
        meta: Collection[str] = (),
    ) -> Insert:
        """This dialect's INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE of ``updated``.

        With ``test`` (given the new values: is the change in order, :func:`in_order`), a
        change it finds older leaves the ``meta`` columns alone and only fills the other
        columns where the row has nothing (NULL). ``last``: the columns the test reads.
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
        if test is not None:
            # MariaDB assigns left to right, each seeing those before it: the columns the
            # test reads go last, in the order that keeps its answer (event id, then time).
            taken = test(new)
            ordered = [c for c in updated if c not in last] + [c for c in last if c in updated]
            sets = [
                (c, case((taken, new[c]), else_=table.c[c]))
                if c in meta
                else (c, func.coalesce(case((taken, new[c])), table.c[c], new[c]))
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
        A change older than the row's last live change (:func:`not_older`) only fills the
        row's empty (NULL) fields and leaves its meta columns alone.
        """
        cache_key = (id(synced.table), columns)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        keys = set(synced.key_columns)
        updated = [c for c in columns if c not in keys] + list(META)
        table = synced.table
        stmt = self._upsert(
            table,
            synced.key_columns,
            updated,
            test=lambda new: not_older(table, new),
            last=(EVENT_ID, SYNCED_AT, SOURCE),
            meta=META,
        )
        prepared = Prepared.compile(stmt, self.sa_dialect, [*columns, *META])
        self._cache[cache_key] = prepared
        return prepared

    def upsert(
        self,
        conn: Connection,
        synced: SyncedTable,
        columns: tuple[str, ...],
        rows: Sequence[tuple[Sequence[str], RowMeta]],
    ) -> dict[int, Later]:
        """Upsert rows given as values in ``columns`` order (keys included), each with its meta.

        One executemany per run of rows with distinct keys, in the order given, so a later
        row for a key wins; then the run's rows are read back (:meth:`_read_back`), to find
        those the rule for concurrent changes kept from taking their change, and those a
        change made again after a later delete of the record, which are deleted again. For
        a table that keeps its history, the others are versioned.

        Returns the rows that did not take their change (their position in ``rows``), each
        with what was later: the row's own change, or a delete of the record.
        """
        if not rows:
            return {}
        prepared = self.upsert_statement(synced, columns)
        params = [
            (*values, meta.synced_at, meta.source, meta.event_id, None, None)
            for values, meta in rows
        ]
        positions = [columns.index(k) for k in synced.key_columns]
        keys = [tuple(values[i] for i in positions) for values, _ in rows]
        not_taken: dict[int, Later] = {}
        for start, end in unique_runs(keys):
            prepared.execute_values(conn, params[start:end])
            held = self._read_back(conn, synced, keys[start:end])
            changes, older, undone = [], [], []
            for i in range(start, end):
                meta = rows[i][1]
                event_id, deleted_at, deleted_by = held.get(keys[i], (meta.event_id, None, None))
                if event_id != meta.event_id:  # the row holds a later change
                    older.append(i)
                elif deleted_at is not None:  # the record was deleted after this change
                    not_taken[i] = Later(self._when(deleted_at), True, deleted_by)
                    undone.append((keys[i], meta.event_id))
                elif synced.history is not None:  # versioned below
                    changes.append(
                        LiveVersion(
                            keys[i], meta.synced_at, meta.source, meta.event_id, meta.action
                        )
                    )
            times = self._row_times(conn, synced, [keys[i] for i in older])
            for i, when in zip(older, times, strict=True):
                if when is not None:
                    not_taken[i] = Later(when)
            table = synced.table
            # Rare: a row made by a change older than a delete of its key. (A row a morning
            # file made after the delete would go too, but only a replay could bring so old
            # a change after that file, and a replay older than it is superseded first.)
            for key, event_id in undone:
                of_key = (table.c[c] == v for c, v in zip(synced.key_columns, key, strict=True))
                conn.execute(delete(table).where(*of_key, table.c[EVENT_ID] == event_id))
            if synced.history is not None and changes:
                self.history.changed(conn, synced, changes)
        return not_taken

    def _row_times(
        self, conn: Connection, synced: SyncedTable, keys: Sequence[Sequence[str]]
    ) -> list[datetime | None]:
        """When each of these rows' last change was received (the rare path: not taken);
        read under the lock, as :meth:`_read_back` reads."""
        table = synced.table
        found = []
        for key in keys:
            of_key = [table.c[c] == v for c, v in zip(synced.key_columns, key, strict=True)]
            query = select(table.c[SYNCED_AT]).where(*of_key).with_for_update()
            found.append(conn.execute(query).scalar_one_or_none())
        return found

    def _when(self, value: Any) -> datetime:
        """A timestamp as the driver gave it (SQLite: text), as a datetime."""
        when = self._timestamp(value) if self._timestamp is not None else value
        assert isinstance(when, datetime)
        return when

    def _read_back(
        self, conn: Connection, synced: SyncedTable, keys: Sequence[tuple[str, ...]]
    ) -> dict[tuple[str, ...], tuple[Any, ...]]:
        """What each of these rows holds now, by key: the event id of its change, and, if
        its key's tombstone records a later delete than that change, the delete's time and
        event id (else None, None).

        Read under the rows' locks (the upsert already holds them), which on MariaDB also
        makes it a read of the rows and tombstones as they are now, not as the transaction
        first saw them. A tombstone's record key is the key itself, or for a composite key
        a JSON list, given with the key values. One prepared query per power of two of
        keys, the last key repeated to fill it.
        """
        size = 1 << (len(keys) - 1).bit_length()
        width = len(synced.key_columns)
        cache_key = (id(synced.table), size)
        prepared = self._read_backs.get(cache_key)
        if prepared is None:
            prepared = self._read_back_query(synced, size)
            self._read_backs[cache_key] = prepared
        filled = [*keys, *[keys[-1]] * (size - len(keys))]
        if width == 1:
            wanted = [key[0] for key in filled]
        else:
            wanted = [v for key in filled for v in (*key, record_key(key))]
        found = prepared.fetch_values(conn, [synced.name, *wanted])
        return {tuple(row[:width]): row[width:] for row in found}

    def _read_back_query(self, synced: SyncedTable, size: int) -> Prepared:
        table = synced.table
        columns = [table.c[k] for k in synced.key_columns]
        width = len(columns)
        names = [_TABLE]
        source: Any = table
        match: ColumnElement[bool] | None = None
        if width == 1:
            names += [f"_aljex_p_k{i}" for i in range(size)]
            match = columns[0].in_([bindparam(n, type_=String) for n in names[1:]])
            record: Any = columns[0]
        else:  # the keys and their record keys, as a derived table of parameters
            selects = []
            for i in range(size):
                row = [f"_aljex_p_k{i}_{j}" for j in range(width)] + [f"_aljex_p_r{i}"]
                names += row
                labels = [f"k{j}" for j in range(width)] + ["r"]
                binds = (
                    bindparam(n, type_=String).label(a) for n, a in zip(row, labels, strict=True)
                )
                selects.append(select(*binds))
            wanted = (union_all(*selects) if size > 1 else selects[0]).subquery("wanted")
            on_key = (c == wanted.c[f"k{j}"] for j, c in enumerate(columns))
            source = wanted.join(table, and_(*on_key))
            record = wanted.c.r
        later = and_(
            tombstones.c.table_name == bindparam(_TABLE, type_=String),
            tombstones.c.record_key == record,
            deleted_after(table.c[SYNCED_AT], table.c[EVENT_ID]),
        )
        query = select(
            *columns, table.c[EVENT_ID], tombstones.c.deleted_at, tombstones.c.event_id
        ).select_from(source.outerjoin(tombstones, later))
        if match is not None:
            query = query.where(match)
        return Prepared.compile(query.with_for_update(of=table), self.sa_dialect, names)

    def delete(
        self,
        conn: Connection,
        synced: SyncedTable,
        key: Mapping[str, str],
        meta: RowMeta,
        *,
        soft: bool,
    ) -> tuple[int, Later | None]:
        """Delete (or mark deleted) the row with this key, unless the delete is older than
        what the key last saw: the row's last live change, or with no row, its tombstone.

        Returns how many rows changed and, when the delete is older, what is later. Only a
        delete that changed the row is versioned. A delete that is not older leaves a
        tombstone (or moves it forward, never back), so that neither a morning file taken
        before it nor a live change received before it can bring the record back.
        """
        key_text = record_key(list(key.values()))
        while True:
            changed = self._delete_row(conn, synced, key, meta, soft=soft)
            if changed:
                self.tombstone(conn, synced.name, key_text, meta)
                return changed, None
            (row_time,) = self._row_times(conn, synced, [list(key.values())])
            if row_time is not None:  # the row holds a later change
                return 0, Later(row_time)
            if self._no_row(conn, synced, key, meta):
                return 0, self.forget(conn, synced.name, key_text, meta)
            # A change of this key was committed meanwhile: delete again, now it is seen.

    def _delete_row(
        self,
        conn: Connection,
        synced: SyncedTable,
        key: Mapping[str, str],
        meta: RowMeta,
        *,
        soft: bool,
    ) -> int:
        """Delete (or mark deleted) the row if the delete is not older than it; how many."""
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
        return changed

    def _no_row(
        self, conn: Connection, synced: SyncedTable, key: Mapping[str, str], meta: RowMeta
    ) -> bool:
        """Hold a key that has no row until this transaction ends; False if a change of it,
        in flight until now, has made one.

        MariaDB's locking read of the row already locked the gap where it would be, and
        SQLite writes one transaction at a time. PostgreSQL locks no gap, so the key is
        taken by inserting its row: that waits for an insert of the key in flight, and
        once deleted again, the row still holds the key's place until this transaction
        ends, so that a change of the key waits for the delete and then sees its
        tombstone.
        """
        if self.dialect != "postgresql":
            return True
        table = synced.table
        placeholder = {
            **key,
            SYNCED_AT: meta.synced_at,
            SOURCE: meta.source,
            EVENT_ID: meta.event_id,
            DELETED_AT: meta.synced_at,
        }
        columns = [table.c[c] for c in key]
        held = (
            postgresql.insert(table)
            .values(placeholder)
            .on_conflict_do_nothing(index_elements=columns)
            .returning(columns[0])
        )
        if conn.execute(held).first() is None:  # the insert in flight made the row
            return False
        of_key = (table.c[c] == v for c, v in key.items())
        conn.execute(delete(table).where(*of_key, table.c[EVENT_ID] == meta.event_id))
        return True

    def forget(self, conn: Connection, table: str, key: str, meta: RowMeta) -> Later | None:
        """A delete of a key with no row: its tombstone, unless one records a later delete.

        The tombstone is written first (it keeps the later of two deletes), then read
        back under its lock: two deletes of one key at once wait for each other there
        instead of each taking a lock the other's insert would need.
        """
        self.tombstone(conn, table, key, meta)
        later = (
            select(tombstones.c.deleted_at, tombstones.c.event_id)
            .where(
                tombstones.c.table_name == table,
                tombstones.c.record_key == key,
                deleted_after(meta.synced_at, meta.event_id),
            )
            .with_for_update()
        )
        found = conn.execute(later).first()
        return None if found is None else Later(found[0], True, found[1])

    def tombstone(self, conn: Connection, table: str, key: str, meta: RowMeta) -> None:
        """Record a live delete of a key, or keep the later one already recorded."""
        prepared = self._tombstone_statement
        if prepared is None:
            stmt = self._upsert(
                tombstones,
                ("table_name", "record_key"),
                ["deleted_at", "event_id"],
                test=lambda new: in_order(
                    tombstones.c.deleted_at,
                    tombstones.c.event_id,
                    new["deleted_at"],
                    new["event_id"],
                ),
                last=("event_id", "deleted_at"),
                meta=("deleted_at", "event_id"),
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
