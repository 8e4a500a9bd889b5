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
compared. On SQLite such a row is not even staged with its values (:data:`KEPT`).

How each database is staged, the costly part of a load:

- SQLite: executemany of the parsed rows, in one deferred transaction that touches only the
  connection's temporary database, so live sync goes on writing while a file is staged.
- PostgreSQL: COPY. When the file is plain CSV (``csvfile``'s :attr:`~CsvReader.plain`),
  its own bytes go to COPY's CSV reader, which then reads the same records, and the row
  count COPY reports is checked; otherwise, or if COPY disagrees, the parsed rows.
- MariaDB: executemany of the parsed rows into a temporary table, which locks nothing
  live sync needs.

A key the file holds twice keeps its last row: SQLite and PostgreSQL number the rows as they
arrive and drop the earlier duplicates once the file is in; MariaDB's stage is keyed and
overwrites them on insert.

Reconciliation with live sync: the file is a snapshot taken at ``snapshot_at`` (T). A row
changed after T (``_aljex_synced_at > T``) keeps its newer values and is not deleted; a key
live sync deleted after T (a tombstone newer than T) is not brought back. The exception is
``own``, a file loaded again on purpose (``load --force``): the rows an earlier load of that
same file wrote are its own, not newer, whatever T that load took.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exc,
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
from sqlalchemy.engine import RootTransaction
from sqlalchemy.pool import SingletonThreadPool, StaticPool
from sqlalchemy.sql.elements import ColumnElement

from . import history
from .database import run_on_driver
from .prepared import Prepared
from .schema import (
    DELETED_AT,
    EVENT_ID,
    MYSQL_TABLE,
    ROW_HASH,
    SOURCE,
    SYNCED_AT,
    KeyText,
    SyncedTable,
    ValueText,
    tombstones,
)

STAGE_PREFIX = "_aljex_stage_"
ROW = "_aljex_row"
"""The stage's row number, in file order (SQLite, PostgreSQL). No column made from a field
can take this name: those start with a letter."""

KEPT = "_aljex_kept"
"""1 on a stage row that holds only the key and the row hash: the table held the same
values when the row was staged (SQLite), so its values were not staged, nor will be written."""

_MYSQL = ("mysql", "mariadb")
LOOKUP_TRIAL_ROWS = 10_000
"""Rows staged before the stage judges whether looking up the table's hashes pays: in a file
where nearly every row changed, each look-up costs more than staging the row's values."""
# COPY's DELIMITER for each delimiter csvfile accepts, as SQL literals.
_COPY_DELIMITERS = {",": "','", "|": "'|'", "\t": "E'\\t'"}


class CsvRefused(Exception):
    """The database did not read the file's bytes as csvfile did: stage the parsed rows.

    Raised by :meth:`Stage.close` after it has rolled back what COPY staged; the loader
    raises it too when the file turns out not to be plain after all.
    """


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


class StageOutdated(Exception):
    """A row staged as unchanged (key and hash only) changed in the table since: stage again.

    Live sync wrote the row between the look-up and the merge, with a time no later than the
    file's snapshot, so the file's values must be written, and the stage lacks them.
    """


def row_hasher(columns: Sequence[str]) -> Any:
    """A function from a batch of rows to their 64-bit hashes, as signed integers.

    BLAKE2b of the values joined by NUL (which no value holds: files with one are refused),
    keyed by the columns' names, so that a file with other columns never matches a row.
    """
    key = hashlib.blake2b("\0".join(columns).encode()).digest()
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes
    join = "\0".join

    def hashes(rows: list[list[str]]) -> list[int]:
        return [
            from_bytes(
                blake2b(join(row).encode(), digest_size=8, key=key).digest(), "little", signed=True
            )
            for row in rows
        ]

    return hashes


class Stage:
    """A temporary table holding one file's rows, and the fastest way each database fills it.

    Use: ``open()``, then ``add()`` each batch of parsed rows (or ``add_csv()`` the file's
    bytes, after ``open(csv=True)``), then ``close()``; ``abort()`` on any error. ``drop()``
    when the merge is over.

    On SQLite each row is staged with its hash, and given ``target`` (the synced table as it
    stands, single key), a row whose hash the table already holds is staged as kept: key
    and hash only, which is most of what a daily full file brings.
    """

    def __init__(
        self,
        conn: Connection,
        key_columns: Sequence[str],
        columns: Sequence[str],
        *,
        delimiter: str = ",",
        target: Table | None = None,
    ) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self.key_columns = tuple(key_columns)
        self.columns = tuple(columns)
        self.delimiter = delimiter
        keyed = self.dialect in _MYSQL
        keys = set(self.key_columns)
        cols: list[Column[Any]] = []
        if self.dialect == "sqlite":
            cols.append(Column(ROW, Integer, primary_key=True))  # the rowid itself
        elif self.dialect == "postgresql":
            cols.append(Column(ROW, BigInteger, Identity()))
        cols += [
            Column(c, KeyText, primary_key=keyed) if c in keys else Column(c, ValueText)
            for c in self.columns
        ]
        cols += [Column(ROW_HASH, BigInteger), Column(KEPT, Integer)]
        name = f"{STAGE_PREFIX}{secrets.token_hex(6)}"
        self.table = Table(name, MetaData(), *cols, prefixes=["TEMPORARY"], **MYSQL_TABLE)
        with conn.begin():
            self.table.create(conn)
        stmt: Any = insert(self.table)
        if keyed:
            from sqlalchemy.dialects import mysql

            stmt = mysql.insert(self.table)
            values = {c: stmt.inserted[c] for c in self.columns if c not in keys}
            first = self.key_columns[0]
            stmt = stmt.on_duplicate_key_update(values or {first: stmt.inserted[first]})
        # SQLite stages each row's hash; elsewhere the merge compares values (NULL hash).
        self.hashes = row_hasher(self.columns) if self.dialect == "sqlite" else None
        staged = (*self.columns, ROW_HASH) if self.hashes else self.columns
        self._insert = Prepared.compile(stmt, conn.dialect, staged)
        self._positional = self._insert.order == staged
        self._lookup: _Lookup | None = None
        if self.hashes and target is not None and len(self.key_columns) == 1:
            self._lookup = _Lookup(conn, self.table, target, self.key_columns[0], self.columns)
        self._open = False
        self._csv = False
        self._transaction: RootTransaction | None = None
        self._copying: AbstractContextManager[Any] | None = None
        self._copy: Any = None
        self._cursor: Any = None

    @property
    def copies_csv(self) -> bool:
        """Whether ``open(csv=True)`` is possible: PostgreSQL's COPY reads CSV itself."""
        return copies_csv(self.conn)

    def open(self, *, csv: bool = False) -> None:
        """Begin staging; ``csv`` means the rows will come as the file's own bytes."""
        if self._open:
            raise RuntimeError("the stage is already open")
        if csv and not self.copies_csv:
            raise ValueError(f"{self.dialect} cannot read CSV bytes")
        self._csv = csv
        self._open = True
        try:
            if self.dialect == "sqlite":
                # Deferred, and writing only to the temporary database: no lock on the main
                # one, so live sync goes on writing however long the file takes.
                run_on_driver(self.conn, "BEGIN").close()
            else:
                self._transaction = self.conn.begin()
            if self.dialect == "postgresql":
                sql = self._copy_sql(csv=csv)
                with _on_driver(self.conn, sql):
                    raw = self.conn.connection.dbapi_connection
                    assert raw is not None
                    self._cursor = raw.cursor()
                    self._copying = self._cursor.copy(sql)
                    self._copy = self._copying.__enter__()
        except BaseException:
            self.abort()
            raise

    def add(self, rows: list[list[str]]) -> None:
        """Stage a batch of parsed rows, given in the file's column order.

        On SQLite each row gets its hash appended, in place.
        """
        if not rows:
            return
        if self.hashes is not None:
            hashes = self.hashes(rows)
            if self._lookup is not None:
                rows, hashes = self._lookup.stage_kept(rows, hashes)
                if self._lookup.done:
                    self._lookup = None
            for row, row_hash in zip(rows, hashes, strict=False):
                row.append(row_hash)
            if not rows:
                return
        if self.dialect == "postgresql":
            write_row = self._copy.write_row
            with _on_driver(self.conn, "COPY"):
                for row in rows:
                    write_row(row)
        elif self._positional:
            run_on_driver(self.conn, self._insert.sql, rows, many=True).close()
        else:
            self._insert.execute_values(self.conn, rows)

    def add_csv(self, data: bytes) -> None:
        """Stage part of the file's bytes (``open(csv=True)`` only): COPY reads them."""
        if data:
            with _on_driver(self.conn, "COPY"):
                self._copy.write(data)

    def close(self, rows: int) -> None:
        """Finish staging ``rows`` rows: keep each key's last row, index the keys, commit.

        In CSV mode, raises :class:`CsvRefused` when COPY refused the bytes or read a
        different number of rows; nothing is staged then.
        """
        if not self._open:
            raise RuntimeError("the stage is not open")
        try:
            if self.dialect == "postgresql":
                self._end_copy(rows)
                self._tidy()
                assert self._transaction is not None
                self._transaction.commit()
            elif self.dialect == "sqlite":
                run_on_driver(self.conn, "COMMIT").close()
                self._open = False
                with self.conn.begin():
                    self._tidy()
            else:
                assert self._transaction is not None
                self._transaction.commit()
        except BaseException:
            self.abort()
            raise
        self._open = False
        self._transaction = None

    def abort(self) -> None:
        """Give up what was staged since ``open()``; safe to call when not open.

        Called while another error is on its way up, so it does not add its own.
        """
        if not self._open:
            return
        self._open = False
        copying, self._copying = self._copying, None
        if copying is not None:
            stop = CsvRefused("staging stopped")
            with suppress(Exception):  # sends CopyFail; the transaction is rolled back below
                copying.__exit__(CsvRefused, stop, None)
        transaction, self._transaction = self._transaction, None
        with suppress(Exception):
            if transaction is not None:
                transaction.rollback()
            elif self.dialect == "sqlite":
                run_on_driver(self.conn, "ROLLBACK").close()

    def drop(self) -> None:
        """Drop the stage, which is then of no more use.

        On a SQLite file database, by closing the connection, which deletes its temporary
        database at once: a DROP would first free its pages one by one (a quarter of a
        second per 100 MB).
        """
        self.abort()
        if self.conn.invalidated:  # the connection was lost, and its temporary tables with it
            return
        pool = self.conn.engine.pool
        if self.dialect == "sqlite" and not isinstance(pool, StaticPool | SingletonThreadPool):
            self.conn.invalidate()
            return
        with self.conn.begin():
            self.table.drop(self.conn, checkfirst=False)

    def _copy_sql(self, *, csv: bool) -> str:
        """COPY into the stage, names quoted by the dialect.

        CSV mode reads what csvfile does from a plain file: the first record is the header,
        an unquoted empty field is an empty string (not NULL), and the bytes are UTF-8
        whatever the connection's client encoding. Text mode takes ``write_row``'s rows.
        """
        quote = self.conn.dialect.identifier_preparer.quote
        names = ", ".join(quote(c) for c in self.columns)
        sql = f"COPY {quote(self.table.name)} ({names}) FROM STDIN"
        if csv:
            sql += (
                f" WITH (FORMAT csv, HEADER true, DELIMITER {_COPY_DELIMITERS[self.delimiter]},"
                f" ENCODING 'UTF8', FORCE_NOT_NULL ({names}))"
            )
        return sql

    def _end_copy(self, rows: int) -> None:
        """End the COPY; in CSV mode, turn its refusal or a different count into CsvRefused."""
        copying, self._copying = self._copying, None
        assert copying is not None
        try:
            with _on_driver(self.conn, "COPY", translate=not self._csv):
                copying.__exit__(None, None, None)
        except self.conn.dialect.loaded_dbapi.Error as e:  # CSV mode, connection still good
            reason = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
            raise CsvRefused(f"COPY refused the file: {reason}") from e
        copied = self._cursor.rowcount
        if self._csv and copied != rows:
            raise CsvRefused(f"COPY read {copied} rows where csvfile read {rows}")

    def _tidy(self) -> None:
        """Index the keys, dropping all but each key's last row first if need be.

        Building the unique index is also the test for duplicate keys: it fails on them.
        """
        if self.dialect in _MYSQL:
            return
        st = self.table
        key = Index(f"{st.name}_key", *(st.c[k] for k in self.key_columns), unique=True)
        try:
            with self.conn.begin_nested():
                key.create(self.conn)
        except exc.IntegrityError:
            later = st.alias("later")
            same = [later.c[k] == st.c[k] for k in self.key_columns]
            self.conn.execute(delete(st).where(exists().where(*same, later.c[ROW] > st.c[ROW])))
            key.create(self.conn)
        if self.dialect == "postgresql":
            # Temporary tables are never analyzed on their own, and without a row count the
            # planner picks nested loops. A small sample of the keys is all it needs.
            quote = self.conn.dialect.identifier_preparer.quote
            names = ", ".join(quote(k) for k in self.key_columns)
            self.conn.exec_driver_sql("SET LOCAL default_statistics_target = 10")
            self.conn.exec_driver_sql(f"ANALYZE {quote(st.name)} ({names})")


class _Lookup:
    """Stages as kept the rows of each batch whose hash the table holds (SQLite, one key).

    One indexed query per batch, in the stage's own transaction: a read of the main
    database, which in WAL mode holds up no writer. A row live sync changes after the
    look-up is caught by :func:`survey` (:class:`StageOutdated`). Gives up when the first
    :data:`LOOKUP_TRIAL_ROWS` rows show that nearly all rows changed.
    """

    def __init__(
        self, conn: Connection, stage: Table, target: Table, key: str, columns: Sequence[str]
    ) -> None:
        self.conn = conn
        self.target = target
        self.key = key
        self.key_at = list(columns).index(key)
        self._kept = Prepared.compile(insert(stage), conn.dialect, (key, ROW_HASH, KEPT))
        self._queries: dict[int, str] = {}
        self.looked = self.kept = 0
        self.done = False

    def _query(self, size: int) -> str:
        sql = self._queries.get(size)
        if sql is None:
            t = self.target
            stmt = select(t.c[self.key], t.c[ROW_HASH]).where(
                t.c[DELETED_AT].is_(None),
                t.c[self.key].in_([bindparam(f"k{i}") for i in range(size)]),
            )
            sql = self._queries[size] = stmt.compile(dialect=self.conn.dialect).string
        return sql

    def stage_kept(
        self, rows: list[list[str]], hashes: list[int]
    ) -> tuple[list[list[str]], list[int]]:
        """Stage the unchanged rows as kept; return the others and their hashes."""
        keys = [row[self.key_at] for row in rows]
        cursor = run_on_driver(self.conn, self._query(len(keys)), keys)
        try:
            known = dict(cursor.fetchall())
        finally:
            cursor.close()
        changed: list[list[str]] = []
        changed_hashes: list[int] = []
        kept: list[tuple[str, int, int]] = []
        for key, row, row_hash in zip(keys, rows, hashes, strict=True):
            if known.get(key) == row_hash:
                kept.append((key, row_hash, 1))
            else:
                changed.append(row)
                changed_hashes.append(row_hash)
        if kept:
            self._kept.execute_values(self.conn, kept)
        self.looked += len(rows)
        self.kept += len(kept)
        if self.looked >= LOOKUP_TRIAL_ROWS and self.kept * 10 < self.looked:
            self.done = True
        return changed, changed_hashes


def copies_csv(conn: Connection) -> bool:
    """Whether a stage on this connection can take a file's CSV bytes (PostgreSQL's COPY)."""
    return conn.dialect.name == "postgresql"


@contextmanager
def _on_driver(conn: Connection, statement: str, *, translate: bool = True) -> Iterator[None]:
    """Raise driver errors of calls made on the driver itself (COPY) as SQLAlchemy's.

    As ``run_on_driver`` does: a lost connection is invalidated and always translated;
    with ``translate=False`` other errors pass through as the driver raised them.
    """
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as e:
        lost = conn.dialect.is_disconnect(e, conn.connection.dbapi_connection, None)
        if lost:
            conn.invalidate(e)
        elif not translate:
            raise
        raise exc.DBAPIError.instance(
            statement,
            None,
            e,
            dbapi_error,
            connection_invalidated=lost,
            dialect=conn.dialect,
        ) from e


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
) -> MergeCounts:
    """Count what merging the stage would do; drops tombstoned keys from the stage first.

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
    counts.skipped_newer = _drop_tombstoned(conn, stage, synced, snapshot_at)
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
        _count_if(and_(found, alive, changed)),
        _count_if(and_(found, not_newer, or_(~alive, changed))),
        # Kept rows the merge would now have to write: changed (or gone) since the look-up.
        _count_if(and_(kept, or_(~in_table, and_(not_newer, or_(~alive, changed))))),
    ]
    if one_pass:
        aggregates += [
            _count_if(and_(in_table, alive)),
            _count_if(and_(in_table, alive, not_newer)),
        ]
    joined = st.outerjoin(target, same_key, full=one_pass)
    row = [int(n) for n in conn.execute(select(*aggregates).select_from(joined)).one()]
    staged, matched, newer, found_alive, found_alive_not_newer, differing = row[:6]
    counts.rewritten, outdated = row[6:8]
    if outdated:
        raise StageOutdated(f"{outdated} rows staged as unchanged changed in the table since")
    if one_pass:
        alive_rows, alive_not_newer = row[8:]
    counts.staged = staged
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
) -> None:
    """Write the surveyed stage into its table. Runs inside the caller's transaction."""
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
    # A row is written when it is new, revived, or its values change; kept rows never are.
    rewrite = and_(not_newer, or_(~alive, _changes(target, st.c, values)))
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
    else:
        if counts.rewritten:
            conn.execute(
                update(target)
                .where(same_key, rewrite)
                .values({**{c: st.c[c] for c in [*values, ROW_HASH]}, **meta})
            )
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


def _changes(target: Table, source: Any, values: Sequence[str]) -> ColumnElement[bool]:
    """Whether the ``source`` row (stage or ``excluded``) changes the values of ``target``'s.

    Equal hashes settle it; else (a hash NULL or different) the values are compared, and
    AND evaluates them only then.
    """
    if not values:
        return false()
    mine, theirs = target.c[ROW_HASH], source[ROW_HASH]
    unsettled = or_(mine.is_(None), theirs.is_(None), mine != theirs)
    return and_(unsettled, or_(*(target.c[c].is_distinct_from(source[c]) for c in values)))


def _drop_tombstoned(
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
