"""Named locks in the database, so that receivers on several hosts take turns where only one
may act at a time: installing the bookkeeping tables, growing a synced table, loading a
morning file; and one lock a process keeps while it runs (:class:`KeptLock`: the notifier).

PostgreSQL has advisory locks (``pg_advisory_lock`` for a session, ``pg_advisory_xact_lock``
for a transaction), MariaDB and MySQL ``GET_LOCK`` (held by the session until released).
Both are taken with "try" and a deadline rather than by waiting inside the server: the
sessions here run with a short ``lock_timeout``, which would cut a legitimate wait short.
On SQLite the write lock of ``BEGIN IMMEDIATE`` already makes every writer take its turn,
so these locks are no-ops there.

:class:`FileLock` is the operating system's lock on a file, for what only one process on
a host may do: keep the notifier's lock on SQLite, serve one SQLite database or one inbox.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy import Connection, Engine, TextClause, text
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


def beside(database: str, name: str) -> Path:
    """The lock file ``name`` of the SQLite database file ``database``."""
    return Path(f"{database}.{name}.lock")


LOADING = "loading"
"""The lock file an ``aljex-sync load`` holds beside a SQLite database while it loads, so
that ``serve`` can tell the database busy with a load from one that is down."""


def beside_sqlite(url: str, name: str) -> FileLock | None:
    """The lock file ``name`` beside the SQLite database file of ``url``; None for another
    database, or one in memory (one process's own)."""
    from .database import normalize_url  # database imports this module

    parsed = normalize_url(url)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
    if parsed.get_backend_name() != "sqlite" or in_memory:
        return None
    return FileLock(beside(database, name))


class KeptLock:
    """A named lock one process keeps for as long as it likes, tried without waiting.

    On PostgreSQL (``pg_try_advisory_lock``) and MariaDB (``GET_LOCK`` with no wait) it is a
    session's lock, on a connection of its own kept open while it is held. The server lets
    go of a session's locks when its connection ends, so a process that dies, SIGKILL
    included, lets go of it at once (its kernel closes the connection); a host that
    vanishes keeps it until the server drops the dead connection.

    SQLite has no such lock, and its write lock cannot be kept while serving. Every process
    on one SQLite database runs on the database's host, so the lock is the operating
    system's: a :class:`FileLock` beside the database, ``<database>.<name>.lock``, which
    the kernel lets go of when the process ends, however it ends. An in-memory database is
    one process's own: its lock is always there to take.
    """

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._conn: Connection | None = None  # the session holding it (PostgreSQL, MariaDB)
        self._file: FileLock | None = None  # the lock file (SQLite)
        self._memory = False  # taken on an in-memory SQLite database
        self._mysql = ""  # its GET_LOCK name, once known

    @property
    def path(self) -> Path | None:
        """The lock file, on SQLite with a database file; None elsewhere."""
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not database or database == ":memory:":
            return None
        return beside(database, self.name)

    def take(self) -> bool:
        """Take the lock if no other process holds it; True if this process holds it now."""
        if self._conn is not None or self._file is not None or self._memory:
            return True
        if self.engine.dialect.name == "sqlite":
            return self._take_file()
        conn = self.engine.connect()
        try:
            got = self._try(conn)
            conn.commit()
        except BaseException:
            with suppress(SQLAlchemyError):
                conn.invalidate()
                conn.close()
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def held(self) -> bool:
        """Whether this process still holds the lock; False once its connection is gone."""
        if self._file is not None or self._memory:
            return True
        conn = self._conn
        if conn is None:
            return False
        try:
            ours = bool(conn.execute(*self._ours_query()).scalar())
            conn.commit()
        except SQLAlchemyError:
            ours = False
        if not ours:
            self._conn = None
            with suppress(SQLAlchemyError):
                conn.invalidate()  # never pooled: the server ends the session, and its locks
                conn.close()
        return ours

    def release(self) -> None:
        """Let go of the lock, if held."""
        conn, self._conn = self._conn, None
        if conn is not None:
            _let_go(conn, self.name)
            conn.close()
        file, self._file = self._file, None
        if file is not None:
            file.release()
        self._memory = False

    def _try(self, conn: Connection) -> bool:
        if conn.dialect.name == "postgresql":
            query = text("SELECT pg_try_advisory_lock(:key)")
            return bool(conn.execute(query, {"key": lock_key(self.name)}).scalar())
        database = conn.execute(text("SELECT DATABASE()")).scalar() or ""
        self._mysql = _mysql_name(f"{database} {self.name}")
        got = conn.execute(text("SELECT GET_LOCK(:name, 0)"), {"name": self._mysql}).scalar()
        return got == 1

    def _ours_query(self) -> tuple[TextClause, dict[str, object]]:
        if self.engine.dialect.name == "postgresql":
            key = lock_key(self.name)
            query = text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                " AND pid = pg_backend_pid() AND granted AND classid::bigint = :high"
                " AND objid::bigint = :low AND objsubid = 1)"
            )
            return query, {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}
        return text("SELECT IS_USED_LOCK(:name) = CONNECTION_ID()"), {"name": self._mysql}

    def _take_file(self) -> bool:
        path = self.path
        if path is None:  # an in-memory database: no other process can share it
            self._memory = True
            return True
        lock = FileLock(path)
        if not lock.take():
            return False
        self._file = lock
        return True


class FileLock:
    """A file this process holds locked until it lets go or ends, however it ends.

    ``flock`` on POSIX, ``msvcrt.locking`` on Windows: the kernel lets go of the lock when
    the descriptor closes, which it does for a process that dies, SIGKILL included. The
    descriptor is not inherited by the processes this one starts (PEP 446), so a child
    left running never keeps the lock. The holder writes its pid in the file, for
    :meth:`holder` to say who holds it; the file stays when the lock is let go (removing
    it could let two processes lock two different files of one name).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds it."""
        return self._descriptor is not None

    def take(self) -> bool:
        """Lock the file, made if need be, unless another process holds it; True if held now.

        Raises OSError when the file cannot be opened or made (a missing or read-only folder).
        """
        if self._descriptor is not None:
            return True
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _lock(descriptor):
            os.close(descriptor)
            return False
        self._descriptor = descriptor
        with suppress(OSError):  # the pid is only for messages
            os.ftruncate(descriptor, 0)
            os.lseek(descriptor, 0, os.SEEK_SET)
            os.write(descriptor, f"{os.getpid()}\n".encode())
        return True

    def release(self) -> None:
        """Let go of the lock, if held."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            os.close(descriptor)  # closing it lets go of the lock

    def in_use(self) -> bool:
        """Whether another process holds it now. Makes no file: one that does not exist is
        held by nobody. Tries the lock and lets go at once."""
        if self._descriptor is not None:
            return False
        try:
            descriptor = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            return not _lock(descriptor)
        finally:
            os.close(descriptor)

    def holder(self) -> int | None:
        """The pid the holder wrote in the file, if it can be read."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, ValueError):
            return None
        return int(text) if text.isdigit() else None


# The byte locked on Windows, past the pid written at the start, so that it can be read.
_WINDOWS_LOCKED_BYTE = 64


def _lock(descriptor: int) -> bool:
    """Lock an open file without waiting; False if another process holds it."""
    try:
        if sys.platform == "win32":
            import msvcrt

            os.lseek(descriptor, _WINDOWS_LOCKED_BYTE, os.SEEK_SET)
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by another process
        return False
    return True
