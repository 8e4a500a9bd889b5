"""Change history: every version of each record of a table that keeps ``<table>__history``.

A version is the whole record as it stood after a change (every column of the table, its
row hash aside), true from ``_aljex_valid_from`` until ``_aljex_valid_to`` (NULL while it
is the current one), with the ``_aljex_action`` that made it: ``create``, ``update`` or
``delete`` from live sync, ``insert``, ``update`` or ``delete`` from a morning file, and
``existing`` for the rows a table held when its history began. ``_aljex_source`` and
``_aljex_event_id`` say which file or journal event it came from, as in the table.

Versions are written in the transaction of the change, by copying the row from the table
after it was written (``INSERT ... SELECT``), so a live update that sends a few fields
still makes a whole version, and the previous version is closed first. A delete closes the
current version and adds a ``delete`` version, the record as it was deleted, true for no
time at all (``_aljex_valid_from`` = ``_aljex_valid_to`` = ``_aljex_deleted_at``), which
records when and by what it went.

Live sync (:class:`LiveHistory`, used by ``RowWriter``) closes and copies per record, as
one executemany each for a run of records; morning files (:func:`merged`,
:func:`deleting`) do it set-based, for all the rows a merge wrote. A morning file makes a
version only for the rows it actually changed: a row its row hash shows unchanged is not
written, nor versioned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Dialect,
    Engine,
    String,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    inspect,
    literal,
    not_,
    null,
    select,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from .database import reading
from .prepared import Prepared
from .schema import (
    ACTION,
    DELETED_AT,
    EVENT_ID,
    ROW_HASH,
    SOURCE,
    SYNCED_AT,
    VALID_FROM,
    VALID_TO,
    VERSION,
    SyncedTable,
    Timestamp,
    history_table,
)

MORNING_INSERT, MORNING_UPDATE, DELETE = "insert", "update", "delete"

# The parameters of the live statements, besides the key values: named as no column of a
# table can be (those made from fields never start with ``_aljex``).
_AT, _SOURCE, _EVENT, _DELETED, _TO, _ACTION = (
    f"_aljex_p_{name}" for name in ("at", "source", "event", "deleted", "to", "action")
)


def _copied(synced: SyncedTable) -> list[str]:
    """The table's columns a version copies: all but the row hash."""
    return [c.name for c in synced.table.columns if c.name != ROW_HASH]


def _keys(synced: SyncedTable) -> list[str]:
    return [f"_aljex_p_key{i}" for i in range(len(synced.key_columns))]


@dataclass(frozen=True)
class LiveVersion:
    """One live change to version: the record's key values, and what the change was."""

    key: Sequence[str]
    at: datetime
    source: str
    event_id: int | None
    action: str


class LiveHistory:
    """The statements that version live changes, compiled once per table shape."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._cache: dict[int, tuple[Prepared, Prepared]] = {}

    def _statements(self, synced: SyncedTable) -> tuple[Prepared, Prepared]:
        cached = self._cache.get(id(synced.table))
        if cached is not None:
            return cached
        history, table = synced.history, synced.table
        assert history is not None
        keys = _keys(synced)
        pairs = list(zip(synced.key_columns, keys, strict=True))
        at = bindparam(_AT, type_=Timestamp)
        close = (
            update(history)
            .where(
                *(history.c[c] == bindparam(k, type_=String) for c, k in pairs),
                history.c[VALID_TO].is_(None),
            )
            .values({VALID_TO: at})
        )
        meta: dict[str, Any] = {
            SYNCED_AT: at,
            SOURCE: bindparam(_SOURCE, type_=String),
            EVENT_ID: bindparam(_EVENT, type_=BigInteger),
            DELETED_AT: bindparam(_DELETED, type_=Timestamp),
        }
        copied = _copied(synced)
        row = select(
            *(meta.get(c, table.c[c]) for c in copied),
            at,
            bindparam(_TO, type_=Timestamp),
            bindparam(_ACTION, type_=String),
        ).where(*(table.c[c] == bindparam(k, type_=String) for c, k in pairs))
        version = insert(history).from_select([*copied, VALID_FROM, VALID_TO, ACTION], row)
        names = (_AT, _SOURCE, _EVENT, _DELETED, _TO, _ACTION, *keys)
        statements = (
            Prepared.compile(close, self.dialect, (_AT, *keys)),
            Prepared.compile(version, self.dialect, names),
        )
        self._cache[id(synced.table)] = statements
        return statements

    def changed(
        self, conn: Connection, synced: SyncedTable, changes: Sequence[LiveVersion]
    ) -> None:
        """Version records just upserted, each key once: close, then copy the rows.

        The caller splits a run where a key comes again, since a copy is of the row as
        it stands, after the whole run's upsert.
        """
        close, version = self._statements(synced)
        close.execute_values(conn, [(c.at, *c.key) for c in changes])
        version.execute_values(
            conn,
            [(c.at, c.source, c.event_id, None, None, c.action, *c.key) for c in changes],
        )

    def deleted(self, conn: Connection, synced: SyncedTable, change: LiveVersion) -> None:
        """Version a record about to be deleted (or just marked deleted): close its current
        version and add its delete version."""
        close, version = self._statements(synced)
        close.execute_values(conn, [(change.at, *change.key)])
        at = change.at
        version.execute_values(
            conn, [(at, change.source, change.event_id, at, at, DELETE, *change.key)]
        )


def unique_runs(keys: Sequence[Sequence[str]]) -> list[tuple[int, int]]:
    """Split positions 0..n into runs (start, end) in which no key comes twice."""
    runs: list[tuple[int, int]] = []
    seen: set[tuple[str, ...]] = set()
    start = 0
    for i, key in enumerate(keys):
        k = tuple(key)
        if k in seen:
            runs.append((start, i))
            seen, start = set(), i
        seen.add(k)
    if start < len(keys):
        runs.append((start, len(keys)))
    return runs


# -- morning files ---------------------------------------------------------------------


def merged(
    conn: Connection, stage: Table, synced: SyncedTable, *, snapshot_at: datetime, source: str
) -> None:
    """Version the rows a morning merge just wrote (inserted or rewritten), set-based.

    The rows written are those of the stage that now hold this file's export time and
    name; rows the file left alone keep their older time. A row an earlier load of this
    same file wrote (``load --force``) already has its version open, and gets no second.
    """
    history, target = synced.history, synced.table
    assert history is not None
    at = literal(snapshot_at, Timestamp)
    written = and_(
        target.c[SYNCED_AT] == at,
        target.c[SOURCE] == source,
        target.c[EVENT_ID].is_(None),
    )
    same_key = and_(*(target.c[k] == stage.c[k] for k in synced.key_columns))
    of_row = [history.c[k] == target.c[k] for k in synced.key_columns]
    own_version = and_(
        history.c[VALID_FROM] == at,
        func.coalesce(history.c[SOURCE], "") == source,
        history.c[EVENT_ID].is_(None),
    )
    conn.execute(
        update(history)
        .where(
            history.c[VALID_TO].is_(None),
            not_(own_version),
            exists(select(1).select_from(stage.join(target, same_key)).where(written, *of_row)),
        )
        .values({VALID_TO: at})
    )
    earlier = history.alias("earlier")
    of_earlier = [earlier.c[k] == target.c[k] for k in synced.key_columns]
    open_version = exists().where(*of_earlier, earlier.c[VALID_TO].is_(None))
    # Closed just now, by this merge: the row was there before it, an update.
    was_there = exists().where(*of_earlier, earlier.c[VALID_TO] == at, earlier.c[ACTION] != DELETE)
    copied = _copied(synced)
    rows = (
        select(
            *(target.c[c] for c in copied),
            at,
            null(),
            case((was_there, literal(MORNING_UPDATE)), else_=literal(MORNING_INSERT)),
        )
        .select_from(stage.join(target, same_key))
        .where(written, ~open_version)
    )
    conn.execute(insert(history).from_select([*copied, VALID_FROM, VALID_TO, ACTION], rows))


def deleting(
    conn: Connection,
    synced: SyncedTable,
    gone: ColumnElement[bool],
    *,
    snapshot_at: datetime,
    source: str,
) -> None:
    """Version the rows a full file is about to delete (``gone``): close, add delete versions.

    On PostgreSQL and MariaDB the rows are locked first, so that live sync cannot change
    one between these statements and the delete (it would then not be deleted).
    """
    history, target = synced.history, synced.table
    assert history is not None
    if conn.dialect.name != "sqlite":  # SQLite's write lock already keeps everyone out
        keys = [target.c[k] for k in synced.key_columns]
        conn.execute(select(*keys).where(gone).with_for_update()).close()
    at = literal(snapshot_at, Timestamp)
    of_row = [history.c[k] == target.c[k] for k in synced.key_columns]
    conn.execute(
        update(history)
        .where(history.c[VALID_TO].is_(None), exists(select(1).where(gone, *of_row)))
        .values({VALID_TO: at})
    )
    meta: dict[str, Any] = {
        SYNCED_AT: at,
        SOURCE: literal(source),
        EVENT_ID: null(),
        DELETED_AT: at,
    }
    copied = _copied(synced)
    rows = select(*(meta.get(c, target.c[c]) for c in copied), at, at, literal(DELETE)).where(gone)
    conn.execute(insert(history).from_select([*copied, VALID_FROM, VALID_TO, ACTION], rows))


# -- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One version of a record, as ``aljex-sync history`` shows it."""

    version: int
    action: str
    valid_from: datetime
    valid_to: datetime | None
    source: str | None
    event_id: int | None
    fields: dict[str, str | None]  # field name (as first sent) -> value
    changed: list[str]  # the fields whose value differs from the version before
    was: dict[str, str | None]  # their values in the version before (none for the first)


def versions(engine: Engine, synced: SyncedTable, key: Sequence[str]) -> list[Version] | None:
    """Every version of the record with this key, oldest first; None without a history table.

    Reads the history table as it is, whatever the configuration says now, and only the
    columns it has (a table's columns added while its history was off are not there yet).
    """
    history = history_table(synced)
    sent = {column: name for name, column in synced.columns.as_sent()}
    fields = {c.name: sent[c.name] for c in history.columns if c.name in sent}  # table order
    with reading(engine) as conn:
        inspector = inspect(conn)
        if not inspector.has_table(history.name):
            return None
        present = {c["name"] for c in inspector.get_columns(history.name)}
        query = (
            select(*(c for c in history.columns if c.name in present))
            .where(*(history.c[c] == v for c, v in zip(synced.key_columns, key, strict=True)))
            .order_by(history.c[VERSION])
        )
        rows = [row._mapping for row in conn.execute(query)]
    found: list[Version] = []
    before: dict[str, str | None] = {}
    for row in rows:
        values = {fields[c]: row.get(c) for c in fields}
        # NULL and '' alike: a column added later is NULL in the versions before it.
        changed = [f for f, v in values.items() if (v or "") != (before.get(f) or "")]
        found.append(
            Version(
                int(row[VERSION]),
                row[ACTION],
                row[VALID_FROM],
                row[VALID_TO],
                row[SOURCE],
                row[EVENT_ID],
                values,
                changed,
                {f: before.get(f) for f in changed} if before else {},
            )
        )
        before = values
    return found
