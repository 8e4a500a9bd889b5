"""The journal's writer in a process of its own, for the Live Sync endpoint.

The HTTP event loop and the journal's writer both need the CPU for every request. In one
process they also take turns at the interpreter lock: the writer gives it up around each
database call and then waits for the loop to let go of it, and under load most of a
group's time went to that wait. Here the writer is a child process with its own
interpreter. The loop sends each request down a socket pair and the child answers once
per group, so the loop does little more than it does to parse a request.

Frames are a 4-byte big-endian length and a pickle. Parent to child: ``(id, request)``,
the request as the edge read it, unparsed, packed by ``messages.pack_received``; an empty
frame asks the child to finish and exit. Child to parent: ``("done", [(id, packed
Outcome or exception), ...])`` after each commit, and ``("log", record)`` for its log
lines, which the parent logs as its own. Group commit is natural: whatever arrived while
the child was writing the last group is the next group.

If the child dies, the requests it had in hand may or may not have been committed (it can
die between its COMMIT and its answer). Each is sent once more, marked ``resent``, to the
next child, which answers from the journal if the request is there and writes it if not:
a committed request is never answered 503, and none is journaled twice.

The child is forked from a fork server (``multiprocessing``'s forkserver context) that
has this module loaded: quick to start, and never forked from a process with threads. As
with any ``multiprocessing`` child, the program's main module is imported in it again, so
a script that runs a ``Service`` itself must keep its start-up under
``if __name__ == "__main__":`` (the ``aljex-sync`` command does).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import signal
import socket
import struct
import threading
from dataclasses import replace
from typing import Any, cast

from . import metrics
from .config import Settings
from .errors import DatabaseUnavailable
from .journal import MAX_BATCH, Journal
from .messages import (
    Outcome,
    PackedOutcome,
    Received,
    pack_outcome,
    pack_received,
    unpack_outcome,
    unpack_received,
)
from .store.database import open_engine

log = logging.getLogger("aljex_sync.journal")


class WriterLost(DatabaseUnavailable):
    """The journal process exited with the request in hand; it may have been committed."""


_LENGTH = struct.Struct(">I")
START_TIMEOUT = 60.0
READ_SIZE = 1 << 20
STOP_TIMEOUT = 60.0


def _frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def _unframe(frame: bytes) -> Any:
    # Only ever frames from the other end of a socket pair this process made with its
    # own child; nothing from the network is unpickled. Request bodies travel as bytes.
    return pickle.loads(frame)  # noqa: S301


class _Frames:
    """Splits a byte stream into frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        start = 0
        buffer = self._buffer
        while len(buffer) - start >= 4:
            (size,) = _LENGTH.unpack_from(buffer, start)
            end = start + 4 + size
            if end > len(buffer):
                break
            frames.append(bytes(buffer[start + 4 : end]))
            start = end
        del buffer[:start]
        return frames


# -- the parent side -------------------------------------------------------------------


class _Link(asyncio.Protocol):
    """The parent's end of the socket pair to one child, and the requests sent down it."""

    def __init__(self, owner: JournalProcess) -> None:
        self.owner = owner
        self.frames = _Frames()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Outcome]] = {}
        self.ready: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox: list[bytes] = []

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.closed.done()

    @property
    def outbox_full(self) -> bool:
        return bool(self._outbox)

    def send(self, frame: bytes) -> None:
        """Send a frame: at once to an idle child, else with the rest of this loop turn's.

        Requests that arrive while the child is writing then reach it together, in one
        system call and one wake-up, to be its next group; a lone request does not wait
        for the loop to come round.
        """
        if not self.pending and not self._outbox and self.open:
            assert self.transport is not None
            self.transport.write(frame)
            return
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(frame)

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        if self.open:
            assert self.transport is not None
            self.transport.write(b"".join(frames))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        for frame in self.frames.feed(data):
            kind, payload = _unframe(frame)
            if kind == "done":
                self._settle(payload)
            elif kind == "log":
                record = logging.makeLogRecord(payload)
                logging.getLogger(record.name).handle(record)
            elif not self.ready.done():  # "ready" or "failed"
                self.ready.set_result(None if kind == "ready" else str(payload))

    def _settle(self, results: list[tuple[int, PackedOutcome | BaseException]]) -> None:
        metrics.observe_group(len(results))  # one "done" frame is one committed group
        for rid, result in results:
            future = self.pending.pop(rid, None)
            if future is None or future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(unpack_outcome(result))
        metrics.set_queue(len(self.pending))

    def connection_lost(self, exc: Exception | None) -> None:
        """The child is gone: nothing still waiting was acknowledged."""
        if not self.ready.done():
            self.ready.set_result("the journal process exited while starting")
        pending, self.pending = self.pending, {}
        metrics.set_queue(0)
        if pending and not self.owner.stopping:
            log.error("the journal process exited with %d request(s) in hand", len(pending))
        for future in pending.values():
            if not future.done():
                future.set_exception(WriterLost("the journal process exited"))
        if not self.closed.done():
            self.closed.set_result(None)


class JournalProcess:
    """Writes Live Sync requests through a journal in a child process.

    ``write`` answers after the commit, or raises :class:`DatabaseUnavailable` if the
    database could not take the request. If the child dies, the requests it held get
    DatabaseUnavailable (nothing of theirs was acknowledged) and the next request starts
    a new child.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = False
        self._process: multiprocessing.process.BaseProcess | None = None
        self._link: _Link | None = None
        self._next_id = 0
        self._starting = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The child's process id, while it runs."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the child and wait until its database is ready; raises if it is not."""
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        context: multiprocessing.context.BaseContext
        if "forkserver" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
        else:  # Windows: a fresh interpreter, slower to start
            context = multiprocessing.get_context("spawn")
        process = context.Process(
            target=_child_main,
            args=(child, self.settings, logging.getLogger().getEffectiveLevel()),
            name="aljex-journal",
            daemon=True,
        )
        try:
            await asyncio.to_thread(process.start)
        finally:
            child.close()
        self._process = process
        _, self._link = await loop.create_connection(lambda: _Link(self), sock=parent)
        try:
            failure = await asyncio.wait_for(asyncio.shield(self._link.ready), START_TIMEOUT)
        except TimeoutError:
            failure = "the journal process did not start in time"
        if failure is not None:
            await self._kill()
            raise DatabaseUnavailable(failure)

    async def write(self, received: Received) -> Outcome:
        """Send a request to the writer and wait for its commit.

        If the writer dies with the request in hand, the request goes once more, marked
        resent, to a new writer (see the module's docstring).
        """
        resent = False
        while True:
            link = self._link
            if link is None or not link.open:
                link = await self._restart()
            self._next_id += 1
            rid = self._next_id
            future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            link.send(_frame((rid, pack_received(received))))
            link.pending[rid] = future
            metrics.set_queue(len(link.pending))
            try:
                return await future
            except WriterLost:
                if resent or self.stopping:
                    raise
                resent = True
                received = replace(received, resent=True)
                log.warning("sending the request the journal process had in hand to a new one")
            finally:
                link.pending.pop(rid, None)
                metrics.set_queue(len(link.pending))

    @property
    def idle(self) -> bool:
        """True while the writer runs with no request in hand (nor one on its way to it).

        A writer that is gone is not idle: the next request starts a new one.
        """
        link = self._link
        return link is not None and link.open and not (link.pending or link.outbox_full)

    async def close(self) -> None:
        """Let the child finish what it was sent, then stop it."""
        self.stopping = True
        link = self._link
        if link is not None and link.open:
            link.send(_LENGTH.pack(0))
            try:
                await asyncio.wait_for(asyncio.shield(link.closed), STOP_TIMEOUT)
            except TimeoutError:
                log.error("the journal process did not finish in time; stopping it")
        await self._kill()

    async def _restart(self) -> _Link:
        if self.stopping:
            raise DatabaseUnavailable("the service is stopping")
        async with self._starting:
            if self._link is None or not self._link.open:
                await self._kill()
                log.warning("starting a new journal process")
                await self.start()
        assert self._link is not None
        return self._link

    async def _kill(self) -> None:
        """Close the link and make sure the child is gone."""
        link, self._link = self._link, None
        if link is not None and link.transport is not None:
            link.transport.close()
        process, self._process = self._process, None
        if process is not None:
            await asyncio.to_thread(process.join, 5)
            if process.is_alive():
                process.terminate()
                await asyncio.to_thread(process.join, 5)

    async def healthy(self) -> str | None:
        """None while the writer process runs and its link is open, else one line why not."""
        process, link = self._process, self._link
        if process is None or not process.is_alive() or link is None or not link.open:
            return "the journal writer is not running (the next request starts a new one)"
        return None


# -- the child side --------------------------------------------------------------------


class _ParentChannel:
    """The child's end of the socket pair, shared by its writer and its log lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, obj: object) -> None:
        frame = _frame(obj)
        with self._lock:
            self.sock.sendall(frame)


class _LogToParent(logging.Handler):
    def __init__(self, sender: _ParentChannel) -> None:
        super().__init__()
        self.sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            fields["msg"] = record.getMessage()
            fields["args"] = None
            fields["exc_text"] = (
                logging.Formatter().formatException(record.exc_info) if record.exc_info else None
            )
            fields["exc_info"] = None
            self.sender.send(("log", fields))
        except Exception:
            self.handleError(record)


def _child_main(sock: socket.socket, settings: Settings, level: int) -> None:
    """The journal process: write what arrives, group by group, until told to stop."""
    # Stopping is the parent's call: Ctrl-C reaches the whole process group, and the
    # parent drains its requests before it asks this process to finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sender = _ParentChannel(sock)
    root = logging.getLogger()
    root.handlers[:] = [_LogToParent(sender)]
    root.setLevel(level)
    try:
        journal = Journal(
            open_engine(settings.database.url, timeout=settings.database.timeout), settings
        )
        journal.start()
    except Exception as e:  # reported to the parent, which raises it
        sender.send(("failed", str(e)))
        return
    sender.send(("ready", None))
    try:
        _write_until_stopped(sock, sender, journal)
    finally:
        journal.close()
        sock.close()


def _write_until_stopped(sock: socket.socket, sender: _ParentChannel, journal: Journal) -> None:
    """Each read takes every request that has arrived, and they are written as one group."""
    frames = _Frames()
    while True:
        try:
            data = sock.recv(READ_SIZE)
        except ConnectionResetError:
            data = b""
        if not data:  # the parent is gone
            return
        stop = False
        batch: list[tuple[int, Received]] = []
        for frame in frames.feed(data):
            if not frame:
                stop = True
                break
            rid, packed = _unframe(frame)
            batch.append((rid, unpack_received(packed)))
        for start in range(0, len(batch), MAX_BATCH):
            group = batch[start : start + MAX_BATCH]
            results = journal.write_group([received for _, received in group])
            sender.send(
                (
                    "done",
                    [(rid, _packed_result(r)) for (rid, _), r in zip(group, results, strict=True)],
                )
            )
        if stop:
            return


def _packed_result(result: Outcome | BaseException) -> PackedOutcome | BaseException:
    """An outcome packed (quicker to pickle than the dataclass), or an exception the
    parent can unpickle: a bug's own exception class may not be."""
    if isinstance(result, Outcome):
        return pack_outcome(result)
    if isinstance(result, DatabaseUnavailable):
        return result
    try:
        _unframe(pickle.dumps(result))
    except Exception:
        return RuntimeError(f"{type(result).__name__}: {result}")
    return result
