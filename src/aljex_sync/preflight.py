"""``aljex-sync check``: will ``serve`` start here? Everything it needs, tried, nothing left.

The config and its environment overrides are checked by loading them (``config.load``
refuses typos and wrong values). Then each thing ``serve`` needs is tried the way
``serve`` would use it: the database by creating, writing and dropping a scratch table
(``serve`` creates tables and columns as fields arrive, so it needs that right); the
ports by binding them; the inbox by making it and writing a file in it; the SFTP host key
by reading it, or, when it does not exist yet, by making its folder and writing a file
there (and saying that ``serve`` will create the key); the TLS files, when configured, by
loading them; and that no ``serve`` already runs on the SQLite database or the inbox, by
trying its locks. A folder that cannot be made or written in is worded as ``serve`` stops
on it (``folders.folder_problem``).
Nothing is left behind: no table, no file, no folder, no key.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path

import asyncssh
from sqlalchemy import Column, Integer, MetaData, Table, insert, select
from sqlalchemy.exc import SQLAlchemyError

from .config import Settings
from .folders import folder_problem
from .listening import listening_socket
from .overview import database_file_missing
from .service import port_taken, serve_locks
from .settings import host_port
from .sftp_settings import HOST_KEY_ALGORITHM
from .store.database import display_url, normalize_url, open_engine, reading, translate


@dataclass
class Report:
    """What ``check`` found: one line per problem, and what passed."""

    problems: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def add(self, problem: str | None, passed: str) -> None:
        if problem is None:
            self.passed.append(passed)
        else:
            self.problems.append(problem)


def run(settings: Settings) -> Report:
    """Check everything ``serve`` needs with these settings."""
    report = Report()
    report.add(check_database(settings), f"database {display_url(settings.database.url)}")
    running = check_running(settings)
    if running is not None:
        report.add(*running)
    live, morning = settings.live, settings.morning
    if live.enabled:
        report.add(check_port("live.listen", live.host, live.port), f"port {live.port} free")
        tls = check_tls(settings)
        if tls is not None:
            report.add(*tls)
    if morning.enabled:
        report.add(check_folder("morning.inbox", morning.inbox), f"inbox {morning.inbox}")
        if morning.sftp:
            report.add(
                check_port("morning.listen", morning.host, morning.port),
                f"port {morning.port} free",
            )
            report.add(*check_host_key(morning.host_key))
    return report


def in_memory(url: str) -> str | None:
    """Why ``url`` cannot be served, if it is an in-memory SQLite database; else None."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    name = parsed.database or ""
    memory = parsed.query.get("mode") == "memory"
    if name and name != ":memory:" and not memory:
        return None
    return (
        "database.url: an in-memory SQLite database (sqlite:// or :memory:) is not"
        " shared with the journal writer's process, and every record would be lost at the"
        " stop; give a file, e.g. sqlite:///aljex.db"
    )


def check_database(settings: Settings) -> str | None:
    """Reachable and writable: create, write and drop a scratch table. None if fine."""
    url = settings.database.url
    memory = in_memory(url)
    if memory is not None:
        return memory
    if database_file_missing(url):  # connecting would create it, not its folder
        folder = Path(normalize_url(url).database or "").parent
        if not folder.is_dir():
            return f"database.url: the folder {folder} does not exist; make it first"
        return check_folder("database.url", folder)
    engine = open_engine(url, timeout=settings.database.timeout)
    scratch = Table(
        f"_aljex_check_{secrets.token_hex(4)}", MetaData(), Column("id", Integer, primary_key=True)
    )
    where = display_url(url)
    try:
        with reading(engine) as conn:
            conn.execute(select(1)).all()
    except SQLAlchemyError as e:
        engine.dispose()
        return f"database.url: cannot reach {where}: {translate(e)}"
    try:
        try:
            with engine.begin() as conn:
                scratch.create(conn)
            with engine.begin() as conn:
                conn.execute(insert(scratch).values(id=1))
        finally:
            with engine.begin() as conn:
                scratch.drop(conn, checkfirst=True)
    except SQLAlchemyError as e:
        return f"database.url: {where}: cannot create, write and drop a table: {translate(e)}"
    finally:
        engine.dispose()
    return None


def check_running(settings: Settings) -> tuple[str | None, str] | None:
    """No ``serve`` holds the locks a second one would be refused on (``serve_locks``):
    on the SQLite database, on the inbox. None when there are none to hold (a database
    server, no inbox)."""
    locks = serve_locks(settings)
    if not locks:
        return None
    for lock in locks:
        try:
            in_use = lock.file.in_use()
        except OSError:  # cannot be opened: check_database or check_folder say why
            continue
        if in_use:
            return lock.refusal(), ""
    return None, "no other aljex-sync serve on " + " or ".join(lock.what for lock in locks)


def check_port(key: str, host: str, port: int) -> str | None:
    """The port is free: bind it as ``serve`` would (port 0 is always free). None if fine."""
    if port == 0:
        return None
    try:
        listening_socket(host, port, backlog=1).close()
    except OSError as e:
        hint = " (is aljex-sync already running?)" if port_taken(e) else ""
        return f"{key}: cannot listen on {host_port(host, port)}: {e.strerror}{hint}"
    return None


def check_folder(key: str, path: Path) -> str | None:
    """A folder ``serve`` makes and writes in: made (with any missing parents), a file
    written in it, both then removed, as ``serve`` would fail on them. None if fine."""
    missing = list(takewhile(lambda p: not os.path.lexists(p), [path, *path.parents]))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"{key}: {folder_problem(path, e, writing=False)}"
    try:
        probe = path / f".aljex-sync-check-{secrets.token_hex(4)}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as e:
            return f"{key}: {folder_problem(path, e, writing=True)}"
        probe.unlink()
    finally:
        for folder in missing:  # the deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
    return None


def check_host_key(path: Path) -> tuple[str | None, str]:
    """The SFTP host key reads as an ed25519 key, or its folder takes the one ``serve``
    would create (which changes the fingerprint Aljex was given, if it had one)."""
    if not path.exists():
        problem = check_folder("morning.host_key", path.parent)
        return problem, (
            f"host key {path} does not exist: serve will create it, and Aljex must be"
            " given its new fingerprint"
        )
    try:
        key = asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as e:
        return f"morning.host_key: cannot read {path}: {e}", ""
    if key.get_algorithm() != HOST_KEY_ALGORITHM:
        algorithm = key.get_algorithm()
        return f"morning.host_key: {path} is an {algorithm} key, not {HOST_KEY_ALGORITHM}", ""
    return None, f"host key {path}, fingerprint {key.get_fingerprint('sha256')}"


def check_tls(settings: Settings) -> tuple[str | None, str] | None:
    """``[live] tls_cert`` and ``tls_key`` load as a pair; None when TLS is not configured.

    The keys are read with getattr: they come with HTTPS support, and this check works
    with or without them.
    """
    cert = str(getattr(settings.live, "tls_cert", "") or "")
    key = str(getattr(settings.live, "tls_key", "") or "")
    if not cert and not key:
        return None
    if not (cert and key):
        return "live.tls_cert: set both tls_cert and tls_key, or neither", ""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        return f"live.tls_cert: cannot load {cert} with {key}: {e}", ""
    return None, f"TLS certificate {cert}"
