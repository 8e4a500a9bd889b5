"""Connecting to the target database, and translating its errors in one place.

SQLite gets WAL with ``synchronous=FULL`` (a commit is on disk before it returns) and
``BEGIN IMMEDIATE`` transactions, so two writers queue on the lock instead of deadlocking.
MariaDB/MySQL get utf8mb4, UTC, a short lock wait, and ``innodb_strict_mode=OFF`` so that
Aljex's 400-field tables can be created (strict mode refuses them for their worst-case row
size even though real rows fit). PostgreSQL gets a short lock timeout.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

from ..errors import DatabaseUnavailable, RecordNotApplicable

_DRIVERS = {
    "postgresql": "psycopg",
    "postgres": "psycopg",
    "mysql": "pymysql",
    "mariadb": "pymysql",
}


def normalize_url(url: str) -> URL:
    """Fill in the driver aljex-sync ships for a bare ``postgresql://`` or ``mysql://``."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
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
    engine = create_engine(parsed, **kwargs)
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
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


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
    Integrity and data errors mean this record cannot be stored as it is: hold it.
    """
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return DatabaseUnavailable(_reason(error))
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


def _reason(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()[0] if str(original).strip() else repr(original)
    return text[:300]


def _looks_like_record_problem(text: str) -> bool:
    """MySQL reports some per-row refusals (row too large, data too long) as operational."""
    lowered = text.lower()
    return any(
        marker in lowered
        for marker in ("row size too large", "data too long", "too many columns", "(1118", "(1406")
    )
