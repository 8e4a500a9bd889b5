"""The tables aljex-sync keeps, and the synced tables it grows from what Aljex sends.

System tables, all named ``_aljex_*``:

- ``_aljex_events``: the journal, one row per authenticated request, raw body included;
- ``_aljex_tables``: each synced table and the key it was created with;
- ``_aljex_columns``: each field Aljex sent and the column that holds it;
- ``_aljex_tombstones``: keys deleted by live sync, so a morning file cannot bring them back;
- ``_aljex_files``: each Morning Sync file, what it did, and how far the live feed was off;
- ``_aljex_meta``: the schema version of these tables (``migrations.py`` upgrades them).

A synced table has one text column per field, created the first time the field is seen,
plus ``_aljex_synced_at``, ``_aljex_source``, ``_aljex_event_id``, ``_aljex_deleted_at`` and
``_aljex_row_hash``. A table that keeps its history also has ``<table>__history``
(:func:`history_table`; written by ``history.py``), made with the table, grown with it,
and for a table that had rows before, seeded with them when history is first turned on.
Field names are case-insensitive: ``Osd``, ``osd`` and ``OSD`` are one field, kept in
``_aljex_columns`` as first sent. A table never grows past the column limit of its
database (``MAX_COLUMNS``): the field that would take it there is refused before any DDL.

Schema changes run in their own transaction, before the data transaction that needs them:
MySQL commits implicitly around DDL, and an empty new column is harmless if the data
transaction then fails.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
    insert,
    inspect,
    literal,
    null,
    select,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import TypeEngine

from ..clock import utcnow
from . import locks, migrations
from .database import reading
from .ddl import add_columns, create_table
from .identifiers import column_for, internal, suffixed

log = logging.getLogger("aljex_sync.store")

_MYSQL = ("mysql", "mariadb")

# Column types, portable: text everywhere, with MySQL sizes and exact (binary) collations.
Timestamp: TypeEngine[datetime] = DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL)
KeyText: TypeEngine[str] = String(255).with_variant(
    mysql.VARCHAR(255, collation="utf8mb4_nopad_bin"), *_MYSQL
)
ValueText: TypeEngine[str] = Text().with_variant(mysql.MEDIUMTEXT(collation="utf8mb4_bin"), *_MYSQL)
EventId: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")
Name: TypeEngine[str] = String(64).with_variant(mysql.VARCHAR(64, collation="utf8mb4_bin"), *_MYSQL)
MYSQL_TABLE: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mysql_row_format": "DYNAMIC",
}

SYNCED_AT = "_aljex_synced_at"
SOURCE = "_aljex_source"
EVENT_ID = "_aljex_event_id"
DELETED_AT = "_aljex_deleted_at"
ROW_HASH = "_aljex_row_hash"
"""A 64-bit hash of the values a Morning Sync file last wrote to the row (and of their
columns' names), so that the next file can tell an unchanged row without comparing its
values; NULL when live sync wrote the row since, or where the loader does not hash."""
META_COLUMNS = (SYNCED_AT, SOURCE, EVENT_ID, DELETED_AT, ROW_HASH)

# A history table's own columns; the others are the synced table's, less the row hash.
HISTORY_SUFFIX = "__history"
VERSION = "_aljex_version"
VALID_FROM = "_aljex_valid_from"
VALID_TO = "_aljex_valid_to"
ACTION = "_aljex_action"
HISTORY_EXTRA = 3  # columns a history table has beyond its table's: 4 of its own, no hash
SEEDED = "existing"
"""The action of the versions a table's rows get when history is turned on for it."""

# Columns per table, metadata columns included: SQLite's default SQLITE_MAX_COLUMN,
# PostgreSQL's MaxHeapAttributeNumber, InnoDB's limit on MariaDB and MySQL.
MAX_COLUMNS = {"sqlite": 2000, "postgresql": 1600, "mysql": 1017, "mariadb": 1017}

SYSTEM = MetaData()
# Applied events, nearly all, are left out of the journal's status index where a database
# can (not MariaDB), and only MariaDB has its table-name index: a Live Sync commit writes
# two pages fewer (store/statuses.py). ddl_if takes a tuple, though annotated str.
UNRESOLVED = text("status <> 'applied'")

events = Table(
    "_aljex_events",
    SYSTEM,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("received_at", Timestamp, nullable=False),
    Column("source", String(255), nullable=False),
    Column("remote_addr", String(64), nullable=False),
    Column("table_name", Name),
    Column("action", String(16)),
    Column("raw_action", String(64)),
    Column("record_key", Text),
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("warnings", Text),
    Column("body", LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL), nullable=False),
    Column("applied_at", Timestamp),
    Index("ix_aljex_events_status", "status", sqlite_where=UNRESOLVED, postgresql_where=UNRESOLVED),
    Index("ix_aljex_events_table_name", "table_name").ddl_if(dialect=_MYSQL),  # type: ignore[arg-type]
    **MYSQL_TABLE,
)

tables_table = Table(
    "_aljex_tables",
    SYSTEM,
    Column("table_name", Name, primary_key=True),
    Column("key_fields", Text, nullable=False),
    Column("key_columns", Text, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    **MYSQL_TABLE,
)

columns_table = Table(
    "_aljex_columns",
    SYSTEM,
    Column("table_name", Name, primary_key=True),
    Column("column_name", Name, primary_key=True),
    Column("field_name", Text, nullable=False),
    Column("first_seen_at", Timestamp, nullable=False),
    **MYSQL_TABLE,
)

tombstones = Table(
    "_aljex_tombstones",
    SYSTEM,
    Column("table_name", Name, primary_key=True),
    Column(
        "record_key",
        String(700).with_variant(mysql.VARCHAR(700, collation="utf8mb4_nopad_bin"), *_MYSQL),
        primary_key=True,
    ),
    Column("deleted_at", Timestamp, nullable=False),
    Column("event_id", EventId),
    **MYSQL_TABLE,
)


files = Table(
    "_aljex_files",
    SYSTEM,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("table_name", Name),
    Column("mode", String(16)),
    Column("snapshot_at", Timestamp),
    Column("rows_read", BigInteger, nullable=False, default=0),
    Column("inserted", BigInteger, nullable=False, default=0),
    Column("updated", BigInteger, nullable=False, default=0),
    Column("deleted", BigInteger, nullable=False, default=0),
    Column("skipped_newer", BigInteger, nullable=False, default=0),
    Column("missing_in_db", BigInteger, nullable=False, default=0),
    Column("extra_in_db", BigInteger, nullable=False, default=0),
    Column("differing", BigInteger, nullable=False, default=0),
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp, nullable=False),
    Index("ix_aljex_files_sha256", "sha256"),
    **MYSQL_TABLE,
)

login_failures = Table(
    "_aljex_login_failures",
    SYSTEM,
    Column("address", String(64), primary_key=True),
    Column("username", String(64), primary_key=True),
    Column("failures", BigInteger, nullable=False),
    Column("first_at", Timestamp, nullable=False),
    Column("last_at", Timestamp, nullable=False),
    **MYSQL_TABLE,
)
"""Failed Live Sync logins per address and user name tried (``login_failures``)."""


class FieldColumns(dict[str, str]):
    """Field name to column, where field names are case-insensitive.

    Keys are kept lowercased; ``sent`` remembers each field's name as first sent, which is
    what ``_aljex_columns`` records.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        self.sent: dict[str, str] = {}
        for name, column in pairs:
            self[name] = column

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __setitem__(self, name: str, column: str) -> None:
        lowered = name.lower()
        self.sent.setdefault(lowered, name)
        super().__setitem__(lowered, column)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def update(self, pairs: Any = (), /, **_: str) -> None:
        items = pairs.as_sent() if isinstance(pairs, FieldColumns) else dict(pairs).items()
        for name, column in items:
            self[name] = column

    def copy(self) -> FieldColumns:
        copied = FieldColumns()
        for lowered, column in self.items():
            copied[self.sent.get(lowered, lowered)] = column
        return copied

    def as_sent(self) -> list[tuple[str, str]]:
        """(field as first sent, column) pairs."""
        return [(self.sent.get(lowered, lowered), column) for lowered, column in self.items()]


@dataclass
class SyncedTable:
    """What aljex-sync knows of one synced table: its key and its field-to-column map."""

    name: str
    key_fields: tuple[str, ...]
    key_columns: tuple[str, ...]
    columns: FieldColumns = field(default_factory=FieldColumns)  # field name -> column
    keeps_history: bool = False
    table: Table = field(init=False)
    history: Table | None = field(init=False, default=None)  # <table>__history, if kept

    def __post_init__(self) -> None:
        if not isinstance(self.columns, FieldColumns):
            self.columns = FieldColumns(dict(self.columns).items())
        self.rebuild()

    def rebuild(self) -> None:
        """Make the SQLAlchemy Table that matches the current columns."""
        key_set = set(self.key_columns)
        cols: list[Column[Any]] = [Column(c, KeyText, primary_key=True) for c in self.key_columns]
        cols += [
            Column(c, ValueText) for c in dict.fromkeys(self.columns.values()) if c not in key_set
        ]
        cols += [
            Column(SYNCED_AT, Timestamp),
            Column(SOURCE, String(255)),
            Column(EVENT_ID, BigInteger),
            Column(DELETED_AT, Timestamp),
            Column(ROW_HASH, BigInteger),
        ]
        primary_key = PrimaryKeyConstraint(*self.key_columns, name=internal("pk", self.name))
        self.table = Table(self.name, MetaData(), *cols, primary_key, **MYSQL_TABLE)
        self.history = history_table(self) if self.keeps_history else None

    @property
    def taken(self) -> set[str]:
        return set(self.columns.values()) | set(META_COLUMNS)

    @property
    def width(self) -> int:
        """Columns in the table, metadata columns included."""
        return len(self.taken | set(self.key_columns))

    @staticmethod
    def key_field_for_names(fields: Iterable[str], key_field: str) -> str | None:
        """The sent field that carries a key field: exact name first, else any case."""
        names = list(fields)
        if key_field in names:
            return key_field
        lowered = key_field.lower()
        return next((n for n in names if n.lower() == lowered), None)


def history_name(table: str) -> str:
    """``<table>__history``, shortened with a hash of the table's name past 63 characters."""
    return suffixed(table, HISTORY_SUFFIX)


def history_table(synced: SyncedTable) -> Table:
    """The history table of a synced table: a version number, the table's columns (its row
    hash aside), then when the version was true (``VALID_FROM`` up to ``VALID_TO``, NULL
    while current) and the ``ACTION`` that made it. Indexed by the record's key.

    Its primary key, its key index and (PostgreSQL) its version sequence are named by
    :func:`internal`: a sender's table can have none of their names. Tables made before
    keep the names they were made with (``<history>_key``, PostgreSQL's own ``_pkey`` and
    ``_seq``).
    """
    name = history_name(synced.name)
    key_set = set(synced.key_columns)
    cols: list[Column[Any]] = [Column(VERSION, EventId, primary_key=True, autoincrement=True)]
    cols += [
        Column(c.name, KeyText if c.name in key_set else c.type)
        for c in synced.table.columns
        if c.name != ROW_HASH
    ]
    cols += [
        Column(VALID_FROM, Timestamp, nullable=False),
        Column(VALID_TO, Timestamp),
        Column(ACTION, String(16), nullable=False),
    ]
    return Table(
        name,
        MetaData(),
        *cols,
        PrimaryKeyConstraint(VERSION, name=internal("pk", name)),
        Index(internal("key", name), *synced.key_columns),
        **MYSQL_TABLE,
    )


def _never(_: str) -> bool:
    return False


class Schema:
    """The synced tables, kept in memory and grown in the database as fields arrive.

    Safe to share between threads: changes to the schema are serialized by a lock. Other
    processes grow the same tables (the journal's writer process, the morning loads, the
    CLI), so this copy can be behind the database: a change that collides with one made
    elsewhere re-reads the schema and is tried again.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._lock = threading.RLock()
        self.tables: dict[str, SyncedTable] = {}
        # Hook: called with a table's name after its columns were created or added, e.g.
        # TypedViews.columns_added; it must not raise. Column additions are rare.
        self.on_columns_added: Callable[[str], None] | None = None
        # Which tables keep <table>__history (Settings.keeps_history). Only the writers
        # (the journal, the morning loader) set it: they make and grow the history tables.
        self.keeps_history: Callable[[str], bool] = _never

    def install(self) -> None:
        """Create or upgrade the system tables, and load what is known of synced tables.

        Looks before it writes, so that once they are current (the usual case) it takes no
        lock. A database of a newer aljex-sync raises DatabaseTooNew (``migrations``).
        """
        found, present = migrations.current(self.engine)
        if found != migrations.LATEST or not present.issuperset(SYSTEM.tables):
            migrations.upgrade(self.engine, SYSTEM)
        self.reload()

    def reload(self) -> None:
        with reading(self.engine) as conn:
            known: dict[str, SyncedTable] = {}
            for row in conn.execute(select(tables_table)):
                known[row.table_name] = SyncedTable(
                    row.table_name,
                    tuple(json.loads(row.key_fields)),
                    tuple(json.loads(row.key_columns)),
                    keeps_history=self.keeps_history(row.table_name),
                )
            for row in conn.execute(select(columns_table).order_by(columns_table.c.first_seen_at)):
                synced = known.get(row.table_name)
                # Before names were case-insensitive, ``Osd`` and ``osd`` could both be
                # recorded: the column named as the field is the one to keep using.
                if synced is not None and (
                    row.field_name not in synced.columns
                    or row.column_name == row.field_name.lower()
                ):
                    synced.columns[row.field_name] = row.column_name
            for synced in known.values():
                synced.rebuild()
        if any(synced.keeps_history for synced in known.values()):
            self._make_histories(known)
        with self._lock:
            self.tables = known

    def ensure(self, name: str, key_fields: Sequence[str], fields: Iterable[str]) -> SyncedTable:
        """The synced table ``name`` with a column for each of ``fields``, creating as needed.

        Raises a SQLAlchemy error if the database refuses the DDL; the caller translates.
        """
        fields = tuple(fields)
        with self._lock:
            synced = self.tables.get(name)
            if synced is not None and all(f in synced.columns for f in fields):
                return synced
            # Receivers on other hosts grow the same tables: one at a time, in turn.
            with locks.held(self.engine, f"schema {name}", wait=locks.DDL_WAIT):
                try:
                    return self._ensure(name, key_fields, fields)
                except SQLAlchemyError:
                    # Most likely made meanwhile by another process: catch up, retry once.
                    self.reload()
                    return self._ensure(name, key_fields, fields)

    def _ensure(self, name: str, key_fields: Sequence[str], fields: Iterable[str]) -> SyncedTable:
        """``ensure`` against this copy of the schema; the caller holds the lock."""
        synced = self.tables.get(name)
        if synced is None:
            return self._create(name, key_fields, fields)
        new = [f for f in dict.fromkeys(fields) if f not in synced.columns]
        if new:
            self._add(synced, new)
        return synced

    @property
    def max_columns(self) -> int:
        """The most columns a table can have on this database, metadata columns included."""
        return MAX_COLUMNS.get(self.dialect, 1017)

    def too_wide(self, name: str, key_fields: Sequence[str], fields: Iterable[str]) -> str:
        """Why ``ensure`` would take the table past the database's column limit, or "".

        Checked before any DDL, so a record that cannot fit is held at once instead of
        trying (and failing) schema changes that hold the database's locks.
        """
        with self._lock:
            synced = self.tables.get(name)
            known: Iterable[str] = synced.columns if synced is not None else ()
            width = synced.width if synced is not None else len(META_COLUMNS)
            if self.keeps_history(name):  # the history table is the wider one
                width += HISTORY_EXTRA
            new = {f.lower() for f in (*key_fields, *fields)} - set(known)
        if width + len(new) <= self.max_columns:
            return ""
        return (
            f"table {name} would have {width + len(new)} columns, over the limit of "
            f"{self.max_columns} on {self.dialect}"
        )

    def plan(self, name: str, key_fields: Sequence[str], fields: Iterable[str]) -> FieldColumns:
        """The column each field would get, without changing the database.

        ``ensure`` then gives the same answer, so a file can be staged before any DDL.
        """
        with self._lock:
            synced = self.tables.get(name)
            known = synced.columns.copy() if synced is not None else FieldColumns()
            taken = synced.taken if synced is not None else set(META_COLUMNS)
            for f in [*key_fields, *fields]:
                if f not in known:
                    known[f] = column_for(f, taken)
                    taken.add(known[f])
            return known

    def _create(self, name: str, key_fields: Sequence[str], fields: Iterable[str]) -> SyncedTable:
        columns = self.plan(name, key_fields, fields)
        key_columns = tuple(columns[k] for k in key_fields)
        keeps_history = self.keeps_history(name) and history_name(name) not in self.tables
        synced = SyncedTable(name, tuple(key_fields), key_columns, columns, keeps_history)
        now = utcnow()
        with self.engine.begin() as conn:
            for table in (synced.table, synced.history):
                if table is None:
                    continue
                if not inspect(conn).has_table(table.name):
                    create_table(conn, table)
                else:  # made by another process, or by hand: adopt what is there
                    existing = {c["name"] for c in inspect(conn).get_columns(table.name)}
                    missing = [c for c in table.columns if c.name not in existing]
                    add_columns(conn, table.name, missing)
            conn.execute(
                insert(tables_table),
                {
                    "table_name": name,
                    "key_fields": json.dumps(list(key_fields)),
                    "key_columns": json.dumps(list(key_columns)),
                    "created_at": now,
                },
            )
            self._record_columns(conn, name, columns.as_sent(), now)
        self.tables[name] = synced
        if self.on_columns_added is not None:
            self.on_columns_added(name)
        return synced

    def _add(self, synced: SyncedTable, new_fields: list[str]) -> None:
        planned = self.plan(synced.name, synced.key_fields, new_fields)
        added = FieldColumns((f, planned[f]) for f in new_fields)
        now = utcnow()
        with self.engine.begin() as conn:
            names = [synced.name] if synced.history is None else [synced.name, synced.history.name]
            for name in names:  # the history table grows with its table
                existing = {c["name"] for c in inspect(conn).get_columns(name)}
                to_create = [
                    Column(c, ValueText) for c in dict.fromkeys(added.values()) if c not in existing
                ]
                add_columns(conn, name, to_create)
            self._record_columns(conn, synced.name, added.as_sent(), now)
        synced.columns.update(added)
        synced.rebuild()
        if self.on_columns_added is not None:
            self.on_columns_added(synced.name)

    def _make_histories(self, known: dict[str, SyncedTable]) -> None:
        """Make the history tables that are missing, each seeded with its table's rows.

        Looks first, so that once they exist (the usual case) it takes no lock. The rows
        a table holds when its history begins each get a version (action ``existing``)
        true from their ``_aljex_synced_at``; a history table made earlier gets the columns
        its table gained while its history was off. A history table that cannot be made (its
        name taken by a synced table, or refused by the database) is logged, and its table
        goes on without history: history is for the readers, and never holds up a record.
        """
        lacking: dict[str, list[Column[Any]]] = {}
        with reading(self.engine) as conn:
            inspector = inspect(conn)
            present = set(inspector.get_table_names())
            for synced in known.values():
                if synced.history is not None and synced.history.name in present:
                    have = {c["name"] for c in inspector.get_columns(synced.history.name)}
                    lacking[synced.history.name] = [
                        c for c in synced.history.columns if c.name not in have
                    ]
        for synced in known.values():
            history = synced.history
            if history is not None and lacking.get(history.name):
                # Columns added while its history was turned off: the history catches up.
                with self.engine.begin() as conn:
                    add_columns(conn, history.name, lacking[history.name])
            if history is None or history.name in present:
                continue
            try:
                if history.name in known:
                    raise ValueError(f"a synced table is named {history.name}")
                with self.engine.begin() as conn:
                    create_table(conn, history)
                    conn.execute(seed(synced, history))
                log.info("%s: history begins, with the rows it holds", synced.name)
            except (SQLAlchemyError, ValueError) as e:
                if self._history_exists(history.name):
                    continue  # made meanwhile by another process, which seeded it
                log.error("%s: no history kept: %s", synced.name, str(e).splitlines()[0])
                synced.keeps_history = False
                synced.rebuild()

    def _history_exists(self, name: str) -> bool:
        with reading(self.engine) as conn:
            return inspect(conn).has_table(name)

    @staticmethod
    def _record_columns(
        conn: Connection, table: str, pairs: Iterable[tuple[str, str]], now: datetime
    ) -> None:
        rows = [
            {"table_name": table, "column_name": c, "field_name": f, "first_seen_at": now}
            for f, c in pairs
        ]
        if rows:
            conn.execute(insert(columns_table), rows)


def seed(synced: SyncedTable, history: Table) -> Any:
    """INSERT of a version of each row alive in the table, as it stands, for its history."""
    table = synced.table
    copied = [c.name for c in table.columns if c.name != ROW_HASH]
    since = func.coalesce(table.c[SYNCED_AT], literal(utcnow(), Timestamp))
    rows = select(*(table.c[c] for c in copied), since, null(), literal(SEEDED, String(16))).where(
        table.c[DELETED_AT].is_(None)
    )
    return insert(history).from_select([*copied, VALID_FROM, VALID_TO, ACTION], rows)
