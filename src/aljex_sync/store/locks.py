"""Named locks in the database, so that receivers on several hosts take turns where only one
may act at a time: installing the bookkeeping tables, growing a synced table, loading a
morning file.

PostgreSQL has advisory locks (``pg_advisory_lock`` for a session, ``pg_advisory_xact_lock``
for a transaction), MariaDB and MySQL ``GET_LOCK`` (held by the session until released).
Both are taken with "try" and a deadline rather than by waiting inside the server: the
sessions here run with a short ``lock_timeout``, which would cut a legitimate wait short.
On SQLite the write lock of ``BEGIN IMMEDIATE`` already makes every writer take its turn,
so these locks are no-ops there.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from ..errors import DatabaseUnavailable

POLL = 0.05  # seconds between tries on PostgreSQL
DDL_WAIT = 300.0  # seconds to wait while another process changes the schema


def morning_load(table: str) -> str:
    """The lock a morning file's merge into ``table`` holds, and a tombstone prune of the
    table's keys takes in turn (``retention``)."""
    return f"morning {table}"


def lock_key(name: str) -> int:
    """A signed 64-bit key for ``name``, as PostgreSQL's advisory locks want."""
    return int.from_bytes(hashlib.sha256(f"aljex-sync {name}".encode()).digest()[:8], signed=True)


def _mysql_name(name: str) -> str:
    """A GET_LOCK name: at most 64 characters, unique per database (the server's locks
    are global to it, and two databases on one server must not share a lock)."""
    return "aljex:" + hashlib.sha256(f"aljex-sync {name}".encode()).hexdigest()[:40]


def _take(conn: Connection, name: str, wait: float, *, transaction: bool) -> None:
    """Take the lock on ``conn`` or raise DatabaseUnavailable after ``wait`` seconds."""
    dialect = conn.dialect.name
    deadline = time.monotonic() + wait
    if dialect == "postgresql":
        function = "pg_try_advisory_xact_lock" if transaction else "pg_try_advisory_lock"
        query = text(f"SELECT {function}(:key)")
        key = lock_key(name)
        while not conn.execute(query, {"key": key}).scalar():
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        else:
            return
    elif dialect in ("mysql", "mariadb"):
        database = conn.execute(text("SELECT DATABASE()")).scalar() or ""
        got = conn.execute(
            text("SELECT GET_LOCK(:name, :wait)"),
            {"name": _mysql_name(f"{database} {name}"), "wait": max(0, int(wait))},
        ).scalar()
        if got == 1:
            return
    else:
        return
    raise DatabaseUnavailable(f"another process held the {name} lock for over {wait:.0f} s")


def _release(conn: Connection, name: str) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(name)})
    elif dialect in ("mysql", "mariadb"):
        database = conn.execute(text("SELECT DATABASE()")).scalar() or ""
        conn.execute(
            text("SELECT RELEASE_LOCK(:name)"), {"name": _mysql_name(f"{database} {name}")}
        )


@contextmanager
def held(engine: Engine, name: str, *, wait: float) -> Iterator[None]:
    """Hold the lock ``name`` while the block runs, on a connection of its own.

    The block does its work on other connections; the lock only makes other processes
    that ask for the same name wait their turn.
    """
    if engine.dialect.name == "sqlite":
        yield
        return
    with engine.connect() as conn:
        _take(conn, name, wait, transaction=False)
        conn.commit()  # nothing of the session's own to keep open meanwhile
        try:
            yield
        finally:
            _let_go(conn, name)


@contextmanager
def for_transaction(conn: Connection, name: str, *, wait: float) -> Iterator[None]:
    """Hold ``name`` for the transaction begun on ``conn``: leave the block after its
    COMMIT or ROLLBACK.

    On PostgreSQL the lock is ``pg_advisory_xact_lock``'s, which the end of the transaction
    releases; on MariaDB GET_LOCK's, released when the block is left.
    """
    _take(conn, name, wait, transaction=True)
    try:
        yield
    finally:
        if conn.dialect.name in ("mysql", "mariadb"):
            _let_go(conn, name)


def _let_go(conn: Connection, name: str) -> None:
    """Release a lock; a connection that cannot is dropped, never pooled with it held
    (the server releases a session's locks when it ends)."""
    try:
        _release(conn, name)
        conn.commit()
    except SQLAlchemyError:
        conn.invalidate()
