"""The staging table: one Morning Sync file's rows, in a table of the loader's own, filled
the fastest way each database allows (``merge`` then merges it).

- SQLite: executemany of the parsed rows, in one deferred transaction that touches only the
  connection's temporary database, so live sync goes on writing while a file is staged. A
  row whose hash the table already holds is staged as kept (:data:`KEPT`): key and hash only.
- PostgreSQL: COPY. When the file is plain CSV (``csvfile``'s :attr:`~CsvReader.plain`),
  its own bytes go to COPY's CSV reader, which then reads the same records, and the row
  count COPY reports is checked; otherwise, or if COPY disagrees, the parsed rows. The
  stage is UNLOGGED, not temporary, so that a second connection can read it: the merge
  counts on one connection while it rewrites rows on the other (``overlap``). Its name
  holds the server process id of the connection that made it, and a stage whose process
  is gone (a loader killed mid-load) is dropped by the next stage made (:func:`_sweep`).
- MariaDB: executemany of the parsed rows into a temporary table, which locks nothing
  live sync needs.

A dry run merges into a scratch copy of the synced table (:func:`scratch_copy`), so that it
makes no table and no column.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
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
    bindparam,
    delete,
    exc,
    exists,
    insert,
    select,
)
from sqlalchemy.engine import RootTransaction
from sqlalchemy.pool import SingletonThreadPool, StaticPool

from .database import run_on_driver
from .prepared import Prepared
from .schema import (
    DELETED_AT,
    MYSQL_TABLE,
    ROW_HASH,
    KeyText,
    SyncedTable,
    ValueText,
)

STAGE_PREFIX = "_aljex_stage_"
_SHARED_STAGE = re.compile(r"_aljex_stage_([0-9]+)_[0-9a-f]{12}")
"""A PostgreSQL stage's name: the prefix, its maker's server process id, a random part."""
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
LOOKUP_MAP_ROWS = 500_000
"""Most rows whose keys and hashes the look-up reads into memory at once (about 60 MB)."""
LOOKUP_FETCH_ROWS = 10_000
# COPY's DELIMITER for each delimiter csvfile accepts, as SQL literals.
_COPY_DELIMITERS = {",": "','", "|": "'|'", "\t": "E'\\t'"}


class CsvRefused(Exception):
    """The database did not read the file's bytes as csvfile did: stage the parsed rows.

    Raised by :meth:`Stage.close` after it has rolled back what COPY staged; the loader
    raises it too when the file turns out not to be plain after all.
    """


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
        self.shared = self.dialect == "postgresql"
        """Whether other connections can read the stage (PostgreSQL: UNLOGGED)."""
        with conn.begin():
            name, prefix = f"{STAGE_PREFIX}{secrets.token_hex(6)}", "TEMPORARY"
            if self.shared:
                _sweep(conn)
                pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
                name, prefix = f"{STAGE_PREFIX}{pid}_{secrets.token_hex(6)}", "UNLOGGED"
            self.table = Table(name, MetaData(), *cols, prefixes=[prefix], **MYSQL_TABLE)
            self.table.create(conn)
            if self.shared:
                # An autovacuum worker busy on the stage would hold up its DROP for a second.
                conn.exec_driver_sql(
                    f"ALTER TABLE {conn.dialect.identifier_preparer.quote(name)} SET"
                    " (autovacuum_enabled = false, toast.autovacuum_enabled = false)"
                )
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
        self.rows = 0
        """Rows given to the stage, repeats of a key included (set by :meth:`close`)."""
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
        self.rows = rows

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
        if self.conn.invalidated and self.shared:  # a stage outlives its connection
            with suppress(exc.SQLAlchemyError), self.conn.engine.begin() as other:
                self.table.drop(other, checkfirst=True)  # else the next stage's sweep does
            return
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
            # Autovacuum would analyze the stage too late, and without a row count the
            # planner picks nested loops. A small sample of the keys is all it needs.
            quote = self.conn.dialect.identifier_preparer.quote
            names = ", ".join(quote(k) for k in self.key_columns)
            self.conn.exec_driver_sql("SET LOCAL default_statistics_target = 10")
            self.conn.exec_driver_sql(f"ANALYZE {quote(st.name)} ({names})")


def _sweep(conn: Connection) -> None:
    """Drop the PostgreSQL stages whose maker's server process is gone: a loader killed
    mid-load leaves its UNLOGGED stage behind, where a temporary one would go with it.

    A stage of a live process is left alone, and so is one this role cannot drop.
    """
    names = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relpersistence = 'u'"
        " AND left(c.relname, 13) = '_aljex_stage_' AND NOT EXISTS (SELECT 1 FROM"
        " pg_stat_activity a WHERE a.pid::text = split_part(substr(c.relname, 14), '_', 1))"
    ).scalars()
    quote = conn.dialect.identifier_preparer.quote
    for name in list(names):
        if _SHARED_STAGE.fullmatch(name):  # only a name this module makes reaches the SQL
            with suppress(exc.DBAPIError), conn.begin_nested():
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(name)}")


class _Lookup:
    """Stages as kept the rows of each batch whose hash the table holds (SQLite, one key).

    The table's keys and hashes are read once, in one scan, into a map: an indexed query
    per batch cost 8 us a row, most of a daily file's load. A table of more than
    :data:`LOOKUP_MAP_ROWS` hashed rows would not fit the loader's memory budget; it is
    looked up one indexed query per batch instead. Either way the reads run in the stage's
    own transaction: a read of the main database, which in WAL mode holds up no writer. A
    row live sync changes after the look-up is caught by :func:`survey`
    (:class:`StageOutdated`). Gives up when the first :data:`LOOKUP_TRIAL_ROWS` rows show
    that nearly all rows changed.
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
        self._map: dict[str, int] | None = None
        self._mapped = False  # whether the map was tried (it stays None when too big)
        self.looked = self.kept = 0
        self.done = False

    def _read_map(self) -> dict[str, int] | None:
        """Every alive, hashed row's key and hash; None when there are too many of them."""
        t = self.target
        stmt = select(t.c[self.key], t.c[ROW_HASH]).where(
            t.c[DELETED_AT].is_(None), t.c[ROW_HASH].is_not(None)
        )
        cursor = run_on_driver(self.conn, stmt.compile(dialect=self.conn.dialect).string)
        known: dict[str, int] = {}
        try:
            while part := cursor.fetchmany(LOOKUP_FETCH_ROWS):
                known.update(part)
                if len(known) > LOOKUP_MAP_ROWS:
                    return None
        finally:
            cursor.close()
        return known

    def _known(self, keys: list[str]) -> dict[str, int]:
        """The hashes the table holds for ``keys`` (those it holds alive and hashed)."""
        if not self._mapped:
            self._map, self._mapped = self._read_map(), True
        if self._map is not None:
            return self._map
        cursor = run_on_driver(self.conn, self._query(len(keys)), keys)
        try:
            return dict(cursor.fetchall())
        finally:
            cursor.close()

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
        """Stage the unchanged rows as kept; return the others and their hashes.

        A key the batch gives twice keeps only its last row here: kept rows are staged
        before the others, so an earlier changed row would otherwise outnumber a later kept
        one and win over it (the rows left out are counted as repeats all the same).
        """
        keys = [row[self.key_at] for row in rows]
        if len(set(keys)) < len(keys):
            last = sorted({key: at for at, key in enumerate(keys)}.values())
            keys = [keys[at] for at in last]
            rows, hashes = [rows[at] for at in last], [hashes[at] for at in last]
        known = self._known(keys)
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
            self._map = None
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


def scratch_copy(conn: Connection, planned: SyncedTable, existing: Table | None) -> SyncedTable:
    """A temporary copy of a synced table, shaped as a file would leave it: what a dry run
    merges into when the file would create the table or add columns to it.

    ``planned`` is the table as the file would make it; ``existing``, the table as it is,
    if it is. The copy holds the existing rows, so a dry run counts what a load would do,
    and no table, column or bookkeeping row is made for it. It goes with the connection,
    or with ``drop_scratch``.
    """
    name = f"_aljex_dry_{secrets.token_hex(4)}"
    columns = [
        Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in planned.table.columns
    ]
    scratch = Table(name, MetaData(), *columns, prefixes=["TEMPORARY"], **MYSQL_TABLE)
    with conn.begin():
        scratch.create(conn)
        if existing is not None:
            shared = [c.name for c in existing.columns if c.name in scratch.c]
            conn.execute(
                insert(scratch).from_select(shared, select(*(existing.c[c] for c in shared)))
            )
    copy = SyncedTable(planned.name, planned.key_fields, planned.key_columns, planned.columns)
    copy.table = scratch
    return copy


def drop_scratch(conn: Connection, scratch: SyncedTable) -> None:
    """Drop a ``scratch_copy`` (a lost connection took it already)."""
    if not conn.invalidated:
        with conn.begin():
            scratch.table.drop(conn, checkfirst=False)
