"""Connecting to the target database, running hot statements, and translating errors.

SQLite gets WAL with ``synchronous=FULL`` (a commit is on disk before it returns) and
``BEGIN IMMEDIATE`` transactions, so two writers queue on the lock instead of deadlocking;
connections that only read (:func:`reading`) begin deferred and never wait for a writer.
MariaDB/MySQL get utf8mb4, UTC, a short lock wait, and ``innodb_strict_mode=OFF`` so that
Aljex's 400-field tables can be created (strict mode refuses them for their worst-case row
size even though real rows fit). PostgreSQL gets a short lock timeout.

The journal's hot statements skip SQLAlchemy's execution path (``run_on_driver``) but not
its exceptions, so ``translate`` sorts every error, whichever path raised it, into
transient and terminal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import DBAPICursor

from ..errors import ConfigError, DatabaseUnavailable, RecordNotApplicable

log = logging.getLogger("aljex_sync.store")

_DRIVERS = {
    "postgresql": "psycopg",
    "postgres": "psycopg",
    "mysql": "pymysql",
    "mariadb": "pymysql",
}


LOCKED = "database is locked"
"""What SQLite says of a write lock not free within the busy timeout (``DatabaseUnavailable``)."""
SUPPORTED = "sqlite:///, postgresql:// or mysql:// (mariadb:// for MariaDB)"
_BACKENDS = ("sqlite", "postgresql", "postgres", "mysql", "mariadb")


def normalize_url(url: str) -> URL:
    """Fill in the driver aljex-sync ships for a bare ``postgresql://`` or ``mysql://``.

    Raises ConfigError naming ``database.url`` for a URL of any other database: the
    message names the scheme only, never the URL, which may hold a password.
    """
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise ConfigError(
            "database.url", f"is not a database URL; aljex-sync supports {SUPPORTED}"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in _BACKENDS:
        raise ConfigError(
            "database.url",
            f"{parsed.drivername}:// is not a database aljex-sync supports; use {SUPPORTED}",
        )
    if parsed.drivername in _DRIVERS:
        backend = "postgresql" if backend == "postgres" else backend
        parsed = parsed.set(drivername=f"{backend}+{_DRIVERS[parsed.drivername]}")
    if backend in ("mysql", "mariadb") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def display_url(url: str | URL) -> str:
    """The URL with any password hidden, for logs and status."""
    return (
        normalize_url(str(url)).render_as_string(hide_password=True)
        if isinstance(url, str)
        else url.render_as_string(hide_password=True)
    )


def open_engine(url: str, *, timeout: float = 5.0) -> Engine:
    """An Engine for ``url`` with the durability and timeout settings described above."""
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": timeout, "check_same_thread": False}
    elif backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": max(1, int(timeout))}
        kwargs["pool_pre_ping"] = True
    elif backend in ("mysql", "mariadb"):
        kwargs["connect_args"] = {
            "connect_timeout": max(1, int(timeout)),
            "read_timeout": 300,
            "write_timeout": 300,
        }
        kwargs["pool_pre_ping"] = True
        kwargs["pool_recycle"] = 3600
    try:
        engine = create_engine(parsed, **kwargs)
    except (ImportError, exc.NoSuchModuleError) as e:
        raise ConfigError(
            "database.url",
            f"the driver for {parsed.drivername}:// is not installed ({e}); use {SUPPORTED}",
        ) from None
    if backend == "sqlite":
        _sqlite_setup(engine, timeout)
    elif backend == "postgresql":
        _session_setup(engine, [f"SET lock_timeout = {int(timeout * 1000)}", "SET TIME ZONE 'UTC'"])
    elif backend in ("mysql", "mariadb"):
        _session_setup(
            engine,
            [
                "SET SESSION innodb_strict_mode = OFF",
                f"SET SESSION innodb_lock_wait_timeout = {max(1, int(timeout))}",
                "SET time_zone = '+00:00'",
                "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_TRANS_TABLES')",
            ],
        )
    return engine


# Seconds ``close_engine`` waits for connections still in use before closing the pool.
CLOSE_WAIT = 10.0


def close_engine(engine: Engine, *, wait: float = CLOSE_WAIT) -> bool:
    """Close the engine's connections, once those in use are back (up to ``wait`` s).

    ``Engine.dispose`` closes only the connections in the pool; one still in use is later
    checked in to a pool nobody holds, and stays open until the garbage collector finds
    it. A service that stops has such users: a thread whose task was cancelled (a chore,
    a view refresh) goes on with its statement. Returns False when some were still out
    after ``wait`` seconds, and disposes anyway: the process is ending.
    """
    checked_out = getattr(engine.pool, "checkedout", None)
    deadline = time.monotonic() + wait
    while checked_out is not None and checked_out() and time.monotonic() < deadline:
        time.sleep(0.01)
    returned = checked_out is None or not checked_out()
    engine.dispose()
    return returned


def _sqlite_setup(engine: Engine, timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        run_on_driver(connection, "BEGIN" if read_only else "BEGIN IMMEDIATE").close()


READ_ONLY = "aljex_read_only"
# WAL pages between background checkpoints: well short of the 1000 at which SQLite's own
# checkpoint would run in a committing connection, with room for a second writer's.
CHECKPOINT_PAGES = 600


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads only.

    On SQLite its transactions begin deferred: in WAL mode a reader then sees the last
    commit and waits for nobody, where ``BEGIN IMMEDIATE`` would queue behind the writer
    (a morning merge holds the lock for seconds) and hold up the writers in turn.
    """
    with engine.connect() as conn:
        yield conn.execution_options(**{READ_ONLY: True})


def run_on_driver(
    conn: Connection, sql: str, parameters: Any = None, *, many: bool = False
) -> DBAPICursor:
    """Run ``sql`` on a cursor of the driver itself and return the cursor, for the hot path.

    SQLAlchemy's own execution path costs more than SQLite's execution of a small statement.
    This skips it and keeps its contract: a driver error is raised as the SQLAlchemy
    exception SQLAlchemy would have raised (so ``translate`` classifies it the same way),
    and a connection the driver reports lost is invalidated, never used again.
    """
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        elif parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
    except conn.dialect.loaded_dbapi.Error as e:
        lost = conn.dialect.is_disconnect(e, dbapi_connection, cursor)
        if lost:
            conn.invalidate(e)
        else:
            cursor.close()
        raise exc.DBAPIError.instance(
            sql,
            parameters,
            e,
            conn.dialect.loaded_dbapi.Error,
            connection_invalidated=lost,
            dialect=conn.dialect,
            ismulti=many,
        ) from e
    return cursor


class WalCheckpointer:
    """Checkpoints a SQLite WAL from a thread of its own, so that commits do not wait for it.

    SQLite copies the WAL into the database file in the commit that takes the WAL past
    1000 pages, and that commit then takes milliseconds longer (it writes and fsyncs the
    database file). Checkpointing from here, before the WAL gets there, keeps that off the
    writers; if this thread falls behind or fails, SQLite's own checkpoint still bounds
    the WAL. Durability is unchanged: a commit is in the fsynced WAL before it returns
    either way.

    Checkpoints are few, not prompt: once a checkpoint has copied the whole WAL, the next
    commit starts the WAL over and, under ``synchronous=FULL``, fsyncs its header as well
    as its frames: two fsyncs instead of one. Checkpointing after every quiet commit put
    that second fsync on nearly every request of a sporadic sender, and on one commit in
    about 35 under load; waiting for about ``every`` pages (estimated from the records
    committed) puts it on one commit in 100 or more, and each checkpoint's fsync of the
    database file competes less with the commits' own.
    """

    def __init__(self, engine: Engine, *, every: int = CHECKPOINT_PAGES) -> None:
        self.engine = engine
        self.every = every
        self._pages = 0  # the estimated pages committed since the last checkpoint
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aljex-checkpoint", daemon=True)
        self._thread.start()

    def committed(self, records: int = 1) -> None:
        """Tell the checkpointer a transaction of ``records`` records has committed."""
        # A lone record appends about 4 pages (its event, the row and its key, now and
        # then a parent page; an applied event has no index entry); a group shares its
        # pages. A rough count is enough.
        self._pages += 2 + 2 * records
        if self._pages >= self.every:
            self._pages = 0
            self._wake.set()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._wake.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        try:
            connection = self.engine.raw_connection()
        except exc.SQLAlchemyError as e:
            log.warning("no background WAL checkpoints, SQLite will do them: %s", e)
            return
        try:
            while not self._stopping.is_set():
                self._wake.wait()
                self._wake.clear()
                if not self._stopping.is_set():
                    self._checkpoint(connection)
        finally:
            connection.close()

    def _checkpoint(self, connection: Any) -> None:
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            cursor.fetchall()
        except self.engine.dialect.loaded_dbapi.Error as e:
            log.warning("WAL checkpoint failed, SQLite will do it: %s", e)
        finally:
            cursor.close()


def _session_setup(engine: Engine, statements: list[str]) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for statement in statements:
            cursor.execute(statement)
        cursor.close()
        dbapi_connection.commit()


def translate(error: BaseException, table: str = "") -> Exception:
    """Map a database error to the tree in errors.py: transient or about one record.

    Connection loss, timeouts and locks mean the database is unavailable: retry later.
    Integrity and data errors mean this record cannot be stored as it is: hold it. So
    does a name already taken (a table or an index the DDL would make): retrying cannot
    free it, and an endless 503 would have Aljex resend the record forever.
    """
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return DatabaseUnavailable(_reason(error))
    if isinstance(error, exc.DBAPIError) and _refused_for_the_record(error.orig):
        return RecordNotApplicable(table, f"the database refused it: {_reason(error)}")
    if isinstance(error, exc.OperationalError | exc.TimeoutError | exc.InterfaceError):
        text = _reason(error)
        if _looks_like_record_problem(text):
            return RecordNotApplicable(table, f"the database refused it: {text}")
        return DatabaseUnavailable(text)
    if isinstance(error, exc.DBAPIError | exc.StatementError):
        return RecordNotApplicable(table, f"the database refused it: {_reason(error)}")
    if isinstance(error, OSError):
        return DatabaseUnavailable(str(error))
    return error if isinstance(error, Exception) else RuntimeError(str(error))


def deadlocked(error: BaseException) -> bool:
    """True when the database ended the transaction to break a deadlock (MariaDB 1213,
    PostgreSQL 40P01) or a serialization conflict (40001): run again, it may well pass.

    Nothing of the transaction was committed: the database rolled it back.
    """
    orig = getattr(error, "orig", None)
    if getattr(orig, "sqlstate", None) in ("40P01", "40001"):
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and args[0] == 1213


def _reason(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()[0] if str(original).strip() else repr(original)
    return text[:300]


# PostgreSQL SQLSTATE classes about the statement's own data: data exception, integrity
# constraint violation, program limit exceeded (too many columns, row or value too big).
_PG_RECORD_CLASSES = ("22", "23", "54")
# MySQL/MariaDB error numbers about the statement's own data, whatever DB-API class the
# driver gives them: too many columns, row size too large, data too long, incorrect
# string or value, out of range, column cannot be null, duplicate key, identifier too long;
# and names already taken: table (1050), column (1060), index (1061).
_MYSQL_RECORD_ERRORS = frozenset(
    {1048, 1050, 1059, 1060, 1061, 1062, 1070, 1071, 1074, 1117, 1118, 1264, 1292, 1366}
    | {1367, 1406, 4025}
)


def _refused_for_the_record(orig: BaseException | None) -> bool:
    """True when the driver's error is about this statement's data, not the database."""
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate[:2] in _PG_RECORD_CLASSES:
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    code = args[0] if args else None
    return isinstance(code, int) and code in _MYSQL_RECORD_ERRORS


def _looks_like_record_problem(text: str) -> bool:
    """MySQL reports some per-row refusals (row too large, data too long) as operational,
    and SQLite a name already taken."""
    lowered = text.lower()
    return any(
        marker in lowered
        for marker in (
            "row size too large",
            "data too long",
            "too many columns",
            "string or blob too big",
            "(1118",
            "(1406",
            # SQLite: "table x already exists", "there is already an index named x".
            "already exists",
            "there is already",
        )
    )
