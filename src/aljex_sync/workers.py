"""``serve --workers N``: N processes answer Live Sync on one port; the rest runs once.

One process parses HTTP at a time per interpreter, and on PostgreSQL or MariaDB the
database can take more writers than one process keeps busy. So the main process binds the
Live Sync port and starts N worker processes that accept on that one inherited socket (the
kernel hands each connection to one of them), each with its own journal writer, as a lone
``serve`` has. The main process runs what must run once: the Morning Sync inbox (SFTP
server or folder watch, and the load queue) and the chores (feed health, webhook, prune),
with the ``[notify]`` notifier.

- SIGTERM (or Ctrl-C) stops the workers first, each the way ``serve`` stops (in-flight
  requests finished and committed), then the main process's parts.
- A worker that dies is logged and started again; its journal writer dies with it, and
  nothing it had not committed was acknowledged.
- If a worker cannot start, the others are stopped and the start fails with one line.

Workers are ``multiprocessing`` spawn children: a fresh interpreter with no threads, which
then starts its own journal writer. As with any such child, the program's main module is
imported in it again (see ``journal_process``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess

from . import logs
from .config import Settings
from .errors import AljexSyncError
from .service import STOP_TIMEOUT, Service, bind, new_event_loop
from .settings import host_port

log = logging.getLogger("aljex_sync.workers")

START_TIMEOUT = 90.0  # seconds for a worker to report ready
RESTART_PAUSE = 1.0  # seconds between restarts of a worker that keeps dying at once
WATCH_INTERVAL = 0.5  # seconds between looks at the workers


class WorkerFailed(AljexSyncError):
    """A worker process could not start."""


class _Worker:
    """One worker process and the pipe it reports its start on."""

    def __init__(
        self, number: int, process: BaseProcess, ready: multiprocessing.connection.Connection
    ) -> None:
        self.number = number
        self.process = process
        self.ready = ready
        self.started = time.monotonic()


class Workers:
    """The main process of ``serve --workers N``: the port, the workers, the inbox, once."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        live = settings.live
        # The main process serves no HTTP; the workers run no inbox and no chores.
        self.main = Service(replace(settings, live=replace(live, enabled=False)))
        self.worker_settings = replace(settings, morning=replace(settings.morning, enabled=False))
        self.context = multiprocessing.get_context("spawn")
        self.sock: socket.socket | None = None
        self.workers: dict[int, _Worker] = {}
        self.http_port: int | None = None
        self.stopping = False
        self._hurry = asyncio.Event()

    async def run_until(self, stop: asyncio.Event) -> bool:
        """Start, keep the workers running until ``stop``, then stop; True when clean."""
        try:
            live = self.settings.live
            self.sock = bind(live.host, live.port, "Live Sync HTTP")
            self.http_port = self.sock.getsockname()[1]
            await self.main.start()  # installs the tables before any worker writes
            starts = (self._start(n) for n in range(1, self.count + 1))
            for result in await asyncio.gather(*starts, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
            log.info(
                "live sync: %d workers on %s%s",
                self.count,
                host_port(live.host, self.http_port),
                live.path,
            )
            await self._watch(stop)
        finally:
            clean = await self._stop()
        return clean

    def hurry(self) -> None:
        """A second signal: cut the stop short."""
        self._hurry.set()
        self.main.hurry()

    async def _start(self, number: int) -> None:
        """Start worker ``number`` and wait until it serves; WorkerFailed if it does not."""
        assert self.sock is not None
        mine, theirs = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_main,
            args=(number, self.sock, self.worker_settings, _level(), _format(), theirs),
            name=f"aljex-worker-{number}",
        )
        await asyncio.to_thread(process.start)
        theirs.close()
        worker = _Worker(number, process, mine)
        self.workers[number] = worker
        failure: str | None = "it did not start in time"
        if await asyncio.to_thread(mine.poll, START_TIMEOUT):
            try:
                failure = mine.recv()
            except (EOFError, OSError):  # it died without a word
                failure = None
            if failure == "":
                log.info("worker %d ready (pid %s)", number, process.pid)
                return
        if process.is_alive():
            process.kill()
        await asyncio.to_thread(process.join, 5)
        failure = failure or f"it exited with status {process.exitcode}"
        raise WorkerFailed(f"Live Sync worker {number} could not start: {failure}")

    async def _watch(self, stop: asyncio.Event) -> None:
        """Until ``stop``: start again any worker that died, and log it."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL)
            if stop.is_set():
                return
            for number, worker in list(self.workers.items()):
                if worker.process.is_alive():
                    continue
                worker.process.join()
                log.error(
                    "worker %d (pid %s) exited with status %s; starting a new one",
                    number,
                    worker.process.pid,
                    worker.process.exitcode,
                )
                del self.workers[number]
                if time.monotonic() - worker.started < RESTART_PAUSE:
                    await asyncio.sleep(RESTART_PAUSE)
                try:
                    await self._start(number)
                except WorkerFailed as e:
                    log.error("%s; trying again", e)

    async def _stop(self) -> bool:
        """SIGTERM every worker, wait for them (up to STOP_TIMEOUT), then stop the rest."""
        self.stopping = True
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                if worker.process.pid is not None:
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        clean = True
        for worker in self.workers.values():
            left = max(0.0, deadline - time.monotonic())
            if self._hurry.is_set():
                left = 0.0
            await asyncio.to_thread(worker.process.join, left)
            if worker.process.is_alive():
                log.error("worker %d did not stop in time; killing it", worker.number)
                worker.process.kill()
                await asyncio.to_thread(worker.process.join, 5)
                clean = False
            elif worker.process.exitcode != 0:
                clean = False
            worker.ready.close()
        self.workers.clear()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return await self.main.stop() and clean


def _level() -> int:
    return logging.getLogger().getEffectiveLevel()


def _format() -> str:
    """This process's log format, for its workers to log alike."""
    handlers = logging.getLogger().handlers
    json = any(isinstance(h.formatter, logs.JsonFormatter) for h in handlers)
    return "json" if json else "text"


def _worker_main(
    number: int,
    sock: socket.socket,
    settings: Settings,
    level: int,
    log_format: str,
    ready: multiprocessing.connection.Connection,
) -> None:
    """A worker: serve Live Sync on the inherited socket until SIGTERM from the main process."""
    # Ctrl-C reaches the whole process group; stopping is the main process's call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.setup(logging.getLevelName(level).lower(), log_format)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            clean = runner.run(_serve_worker(number, sock, settings, ready))
    finally:
        for child in multiprocessing.active_children():  # a journal writer left behind
            child.kill()
            child.join(5)
    raise SystemExit(0 if clean else 1)


async def _serve_worker(
    number: int,
    sock: socket.socket,
    settings: Settings,
    ready: multiprocessing.connection.Connection,
) -> bool:
    stop = asyncio.Event()
    service = Service(settings, sock=sock, chores=False)

    def on_signal() -> None:
        if stop.is_set():
            service.hurry()
        stop.set()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_signal)
    try:
        await service.start()
    except Exception as e:  # one line to the main process, which fails the start with it
        with contextlib.suppress(OSError):
            ready.send(str(e) or type(e).__name__)
        raise SystemExit(1) from None
    ready.send("")
    ready.close()
    await stop.wait()
    return await service.stop()
