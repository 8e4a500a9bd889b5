"""Running the service: the journal, the Live Sync endpoint, and the Morning Sync inbox.

``Service`` owns their life cycle so that ``serve``, the demo and the tests start and stop
the same things the same way. The journal's writer runs in a process of its own
(``journal_process``); the morning loads run here, on a connection pool of their own.
Stopping drains in-flight HTTP requests first, then lets the journal commit what it holds,
then closes the database. A stop never takes longer than ``STOP_TIMEOUT``: what is still
running then is abandoned (the journal's writer is killed; nothing it had not committed
was acknowledged), so a service manager can always restart the service. A start that
fails stops whatever had already started, so the error reaches the caller at once. The
typed views are brought up to date in the background once the rest runs (``view_refresh``).

Only one ``serve`` may use an SQLite database, and only one an inbox folder: the main
process locks them before anything else (``serve_locks``), and a second one is refused
with one line naming the first one's pid. The operating system lets go of the locks when
the process ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import uvicorn
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from . import http_server, metrics, tls
from .admin import admin_routes
from .chores import BackgroundTasks, Chores
from .config import Settings
from .credentials import PasswordCheck
from .errors import AljexSyncError, ConfigError, DatabaseUnavailable
from .folders import FOLDERS, folder_problem
from .inbox import FolderWatch, LoadQueue, left_over
from .journal_inline import InlineFirst
from .journal_process import JournalProcess
from .listening import listening_socket
from .live import LiveEndpoint, database_probe
from .login_failures import FailedLogins
from .morning import MorningLoader
from .notifier import Notifier
from .settings import host_port
from .sftp import SftpInbox
from .sftp_settings import SftpSettings
from .store.database import close_engine, display_url, open_engine, reading
from .store.locks import LOADING, FileLock, beside_sqlite
from .store.schema import Schema, files
from .view_refresh import ViewRefresher

log = logging.getLogger("aljex_sync.service")

STOP_TIMEOUT = 30.0
"""Seconds a stop may take, from the first signal to the exit, whatever is in flight."""

SERVE_LOCK = "serve"  # beside an SQLite database: <database>.serve.lock
INBOX_LOCK = ".aljex-sync.lock"  # in the inbox: a hidden name, never loaded nor uploaded


class AlreadyServing(AljexSyncError):
    """Another ``serve`` already uses what only one may: this SQLite database, this inbox."""


class CannotListen(OSError):
    """A port that cannot be listened on; ``errno`` says why (:func:`port_taken`)."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message alone, without OSError's "[Errno n]"


def port_taken(error: OSError) -> bool:
    """Whether ``error`` says the address is in use (by another process, most likely)."""
    return error.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE))


@dataclass(frozen=True)
class ServeLock:
    """A lock the main process of ``serve`` holds while it runs, and what it guards."""

    file: FileLock
    kind: Literal["database", "inbox"]
    what: str  # as the refusal names it: the database's URL, "the inbox <folder>"

    def refusal(self) -> str:
        """The one line a second ``serve`` stops with."""
        pid = self.file.holder()
        who = "another aljex-sync serve" + (f" (pid {pid})" if pid else "")
        return f"{who} is already using {self.what}; stop it first"


def serve_locks(settings: Settings) -> list[ServeLock]:
    """What only one ``serve`` may use, locked by its main process while it runs.

    An SQLite database takes one writer at a time, which one service keeps busy (so
    ``serve --workers`` is refused on it too): its lock is a file beside it. Two services
    on one inbox would both take each upload: its lock is a hidden file in it. Receivers
    sharing a PostgreSQL or MariaDB database, each with an inbox of its own, are fine.
    """
    locks = []
    file = beside_sqlite(settings.database.url, SERVE_LOCK)
    if file is not None:
        locks.append(ServeLock(file, "database", display_url(settings.database.url)))
    if settings.morning.enabled:
        inbox = settings.morning.inbox
        locks.append(ServeLock(FileLock(inbox / INBOX_LOCK), "inbox", f"the inbox {inbox}"))
    return locks


class Service:
    """The whole receiver, started and stopped as one."""

    def __init__(
        self, settings: Settings, *, sock: socket.socket | None = None, chores: bool = True
    ) -> None:
        """``sock``: a listening socket for Live Sync, bound by a parent (``workers.py``);
        ``chores``: whether this is the main process, which holds ``serve_locks``, runs the
        background chores and refreshes the typed views (one process should)."""
        self.settings = settings
        self._given_socket = sock
        self._run_chores = chores
        self.journal = JournalProcess(settings)
        self.writer = InlineFirst(settings, self.journal)  # Live Sync's: inline when idle
        self.engine = open_engine(settings.database.url, timeout=settings.database.timeout)
        self.schema = Schema(self.engine)
        self.chores = Chores(settings, self.engine)  # feed health, webhook, daily prune
        self.notifier = Notifier(settings, self.engine)  # [notify]: each change, sent on
        self.views = ViewRefresher(self.engine, settings.field_types)  # typed views, later
        self.failed_logins = FailedLogins(self.engine)  # for `status`, written every 10 s
        self._edge_tasks = BackgroundTasks(log)
        # Connections the HTTP server closes itself (limits, deadlines), counted by reason.
        self.closed_connections = http_server.closed_connections()
        self.live: LiveEndpoint | None = None
        self.loads: LoadQueue | None = None
        self.sftp: SftpInbox | None = None
        self.watch: FolderWatch | None = None
        self._server: uvicorn.Server | None = None
        self._sockets: list[socket.socket] = []
        self._locks: list[FileLock] = []
        self.http_port: int | None = None
        self._hurry = asyncio.Event()
        self._running = False  # started whole, and not stopped yet
        self._hand_lock = beside_sqlite(settings.database.url, LOADING)  # `aljex-sync load`
        self._hand_load = (-1.0, False)  # when the hand load's lock was last looked at, held
        self._journal_ready = False

    async def start(self) -> None:
        """Open the database, then start listening. Raises if either cannot be done.

        The HTTP port is taken first, as it is the quickest thing to find taken. Whatever
        fails, what had started is stopped again before the error is raised.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        if self._run_chores:  # before anything else: a second serve must touch nothing
            self._hold_locks()
        live = self.settings.live
        context = None
        if live.enabled and live.tls_cert is not None and live.tls_key is not None:
            context = tls.server_context(live.tls_cert, live.tls_key)
        if live.enabled:
            sock = self._given_socket or bind(live.host, live.port, "Live Sync HTTP")
            self._sockets.append(sock)
            self.http_port = sock.getsockname()[1]
        await self.journal.start()  # which creates the system tables
        await asyncio.to_thread(self.writer.start)
        self._journal_ready = True
        log.info("database %s ready", display_url(self.settings.database.url))
        if live.enabled:
            sock = self._sockets[0]
            probes = (
                database_probe(self.engine, self.settings.database.timeout, self._busy_with),
                self.journal.healthy,
            )
            self.live = LiveEndpoint(
                live,
                self.writer,
                probes=probes,
                details=self._health_lines,
                busy=self._busy_with,
                refusals=metrics.write_refusals(self.engine),  # what /metrics reads too
                failed_logins=self.failed_logins,
            )
            self._edge_tasks.spawn(self.failed_logins.run(), "failed-login recorder")
            extra = admin_routes(
                self.settings,
                self.engine,
                health=self.chores.health,
                failed_logins=self.failed_logins,
                slots=self.live.logins.slots,  # admin guesses queue behind Aljex's logins
            )
            app = self.live.app(extra_routes=extra)
            config = http_server.config(app, live, context, report=self.closed_connections)
            self._server = _Server(config)
            self._server_task = asyncio.create_task(self._server.serve(sockets=[sock]))
            while not self._server.started:
                if self._server_task.done():
                    self._server_task.result()
                    raise RuntimeError("the HTTP server stopped while starting")
                await asyncio.sleep(0.01)
            scheme = "https" if context else "http"
            log.info(
                "live sync listening on %s://%s%s",
                scheme,
                host_port(live.host, sock.getsockname()[1]),
                live.path,
            )
            if warning := tls.plain_password_warning(live):
                log.warning(warning)

        if self.settings.morning.enabled:
            await self._start_morning()
        if self._run_chores:
            self.chores.start()
            self.notifier.start()
            # The typed views, once Aljex is answered: a first start may take a minute.
            self.views.start()
        self._running = True

    def _hold_locks(self) -> None:
        """Lock ``serve_locks``; AlreadyServing if another process holds one.

        The inbox is made here, and its lock is the first file written in it: an inbox
        that cannot be made or written in stops the start with one line naming it, as
        neither the SFTP server nor the folder watch could take a file.
        """
        for lock in serve_locks(self.settings):
            folder = lock.file.path.parent
            if lock.kind == "inbox":
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise ConfigError(
                        "morning.inbox", folder_problem(folder, e, writing=False)
                    ) from None
            try:
                taken = lock.file.take()
            except OSError as e:
                if lock.kind == "database":  # its folder is missing or read-only
                    raise DatabaseUnavailable(
                        f"cannot open the database: cannot make {lock.file.path}: {e.strerror}"
                    ) from None
                raise ConfigError(
                    "morning.inbox", folder_problem(folder, e, writing=True)
                ) from None
            if not taken:
                raise AlreadyServing(lock.refusal())
            self._locks.append(lock.file)

    def _health_lines(self) -> list[str]:
        """/healthz's lines after "ok": the feeds' health, the views not refreshed."""
        return [*self.chores.health.lines(), *self.views.lines()]

    def _busy_with(self) -> str | None:
        """What may hold SQLite's write lock for long: a morning load (this service's, or
        an ``aljex-sync load`` by hand) merges a file in one transaction, and live writes
        wait for it. The hand load's lock file is looked at once a second at most."""
        if self.engine.dialect.name != "sqlite":
            return None
        if self.loads is not None and not self.loads.wait_idle(0):
            return "a morning load"
        now = time.monotonic()
        if now - self._hand_load[0] >= 1.0:
            by_hand = self._hand_lock is not None and self._hand_lock.in_use()
            self._hand_load = (now, by_hand)
        return "a morning load run by hand (aljex-sync load)" if self._hand_load[1] else None

    async def _start_morning(self) -> None:
        """The load queue, then the SFTP server or the folder watch that feeds it."""
        morning = self.settings.morning
        # The view of a loaded table is refreshed by self.views, not in the loader's thread.
        refresh_view = self.views.after_load if self._run_chores else None
        loader = MorningLoader(self.engine, self.settings, self.schema, refresh_view=refresh_view)
        self.loads = LoadQueue(loader, morning.inbox)
        key_in_use = morning.sftp and await asyncio.to_thread(self._morning_used_before)
        self.loads.start()  # which makes the inbox's folders
        if morning.sftp:
            left = list(left_over(morning.inbox))
            if left:  # a load can take a while: say why the service is busy at once
                names = ", ".join(sorted({a.path.name for a in left}))
                log.info(
                    "loading %d file(s) left in the inbox at the last stop: %s",
                    len(left),
                    names[:300],
                )
            for arrival in left:
                self.loads.put(arrival)
            check = PasswordCheck(
                morning.username, password=morning.password, password_hash=morning.password_hash
            )
            self.sftp = SftpInbox(
                SftpSettings(
                    host=morning.host,
                    port=morning.port,
                    username=morning.username,
                    check_password=lambda password: check.check(morning.username, password),
                    inbox=morning.inbox,
                    host_key=morning.host_key,
                    allow_ips=morning.allow_ips,
                ),
                self.loads.from_upload,
            )
            try:
                await self.sftp.start(key_in_use=key_in_use)
            except OSError as e:  # the key and the inbox raise ConfigError
                self.sftp = None
                reason = os.strerror(e.errno) if e.errno else str(e)
                raise CannotListen(
                    e.errno,
                    f"Morning Sync SFTP: cannot listen on {host_port(morning.host, morning.port)}:"
                    f" {reason}",
                ) from None
        else:
            self.watch = FolderWatch(morning.inbox, self.loads, morning.quiet_seconds)
            self.watch.start()

    def _morning_used_before(self) -> bool:
        """Whether morning files came here before: the inbox has its folders (a serve ran
        on it), or the file log has a row. A host key made now is then a changed one."""
        inbox = self.settings.morning.inbox
        if any((inbox / name).is_dir() for name in FOLDERS):
            return True
        try:
            with reading(self.engine) as conn:
                return conn.execute(select(files.c.id).limit(1)).first() is not None
        except SQLAlchemyError:
            return False  # the loads will say what is wrong with the database

    async def stop(self, *, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop taking files and requests, finish what is in flight, close the database.

        Safe after a partial start. Returns False if it had to give up after ``timeout``
        seconds (or on :meth:`hurry`): the journal's writer is then killed, and the threads
        still busy are left to die with the process.
        """
        child = self.journal.pid
        if self.live is not None:  # /healthz says so at once: the drain may take a while
            self.live.stopping()
        running, self._running = self._running, False
        if running:  # a stop can take long (a morning load ends first): say so at once
            log.info(
                "stopping: finishing the requests and any morning load in flight"
                " (at most %.0f s; a second signal cuts it short)",
                timeout,
            )
        stopping = asyncio.ensure_future(self._stop())
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait({stopping, hurry}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            hurry.cancel()
        self._flush_counts()
        if stopping.done():
            stopping.result()
            # After a failed start, the error is the line to read, not this.
            log.log(logging.INFO if running else logging.DEBUG, "stopped")
            return True
        stopping.cancel()
        if self._hurry.is_set():
            log.error("stop cut short; abandoning what is still running")
        else:
            log.error("not stopped after %.0f s; abandoning what is still running", timeout)
        _kill_child(child)
        return False

    def _flush_counts(self) -> None:
        """Write the counts of the log lines held back (``logs.CountedRepeats``), once
        nothing more comes or the stop is given up: no count is lost to a stop."""
        self.closed_connections.flush()
        if self.live is not None:
            self.live.refused_lines.flush()
        if self.sftp is not None:  # a stop cut short while it closed
            self.sftp.closings.flush()

    def hurry(self) -> None:
        """Cut a stop short: a second signal while stopping."""
        self._hurry.set()

    async def _stop(self) -> None:
        await self.chores.close()
        await self.notifier.close()
        await self.views.close()
        if self.sftp is not None:
            await self.sftp.close()
            self.sftp = None
        if self.watch is not None:
            await self.watch.close()
            self.watch = None
        if self.loads is not None:
            await asyncio.to_thread(self.loads.close)
            self.loads = None
        if self._server is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._server_task
            self._server = None
        await self._edge_tasks.close()
        if self._journal_ready:
            await self.failed_logins.flush()  # the last ones counted
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if not self._journal_ready:  # a start cut short: it was sent nothing, let it go
            _kill_child(self.journal.pid)
        await self.journal.close()
        await asyncio.to_thread(self.writer.close)
        if not await asyncio.to_thread(close_engine, self.engine):
            log.warning("a database call was still running as the service stopped")
        for lock in self._locks:  # last: nothing of this process uses them any more
            lock.release()
        self._locks.clear()

    async def run_until(self, stop: asyncio.Event) -> bool:
        """Start, wait for ``stop``, then stop cleanly; returns what :meth:`stop` returned.

        ``stop`` set while starting cuts the start short. A start that fails raises.
        """
        starting = asyncio.ensure_future(self._start())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({starting, stopped}, return_when="FIRST_COMPLETED")
            if starting.done():
                starting.result()
                await stopped
            else:
                log.info("stopping while starting")
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
        finally:
            stopped.cancel()
            clean = await self.stop()
        return clean


class _Server(uvicorn.Server):
    """uvicorn's server, minus its own signal handlers: the Service decides when to stop.

    uvicorn would otherwise take SIGINT and SIGTERM from the caller while it runs, and stop
    only itself.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _kill_child(pid: int | None) -> None:
    """Kill the journal's writer, which ignores SIGTERM (stopping is the parent's call).

    Its uncommitted group was never acknowledged; the database rolls it back.
    """
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def bind(host: str, port: int, what: str) -> socket.socket:
    """A listening socket (``[::]`` takes IPv4 too: ``listening``); binding here lets port
    0 be used and known before serving."""
    try:
        return listening_socket(host, port, backlog=2048)
    except OSError as e:
        raise CannotListen(
            e.errno, f"{what}: cannot listen on {host_port(host, port)}: {e.strerror}"
        ) from None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The service's event loop: uvloop's where it is installed, else asyncio's own.

    uvloop runs the same protocols with less CPU per request, and the event loop's CPU
    is what limits Live Sync under load (docs/benchmarks.md). It has no Windows build.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class BackgroundService:
    """A Service on its own event loop in a background thread, for tests, demo and bench.

    Use as a context manager: entering starts it (raising what start raised), leaving
    stops it the way SIGTERM stops ``serve``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = Service(settings)
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> BackgroundService:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self.service.start(), self.loop)
        try:
            future.result(timeout=60)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self.service.stop(), self.loop).result(timeout=120)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    @property
    def url(self) -> str:
        """The Live Sync URL on loopback."""
        scheme = "https" if self.settings.live.tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.service.http_port}{self.settings.live.path}"
