"""The live sender: Aljex's Live Sync posts, one record per form-urlencoded POST.

Each change of the brokerage goes out with HTTP Basic auth, in order on one keep-alive
connection as Aljex does (or on several, keeping each record's changes in order), retried
after a 502/503/504 or a connection error. The run is recorded in the state as it goes.
"""

from __future__ import annotations

import base64
import http.client
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlencode, urlsplit

from .. import __version__
from ..catalog import key_for
from ..wire import ACTION_PARAM, TABLE_PARAM
from .state import EmulatorError, EmulatorState, LiveRun, check_tables, now_text
from .world import LiveChange

#: Replies worth sending again: the receiver (or a proxy before it) could not store it now.
RETRIED_STATUSES = frozenset({502, 503, 504})
#: Replies that every later request would get as well: the run stops.
FATAL_STATUSES = frozenset({401, 403})
MAX_BACKOFF = 2.0
MAX_REASONS = 5
CHECKPOINT_SECONDS = 5.0
PROGRESS_SECONDS = 0.1
_QUEUE_SIZE = 8  # changes waiting per sender: enough to keep it busy, little run-ahead


def encode_change(change: LiveChange) -> bytes:
    """The POST body of one change, as section 5 of the document shows it.

    ``application/x-www-form-urlencoded`` per HTML 4.01: the table and action first, then
    every field; a space becomes ``+`` and any other reserved byte ``%XX``, the bytes being
    the value in the change's charset (Aljex sends some records in cp1252).
    """
    pairs = [(TABLE_PARAM, change.table), (ACTION_PARAM, change.action), *change.fields.items()]
    return urlencode(pairs, encoding=change.charset).encode("ascii")


@dataclass(frozen=True)
class LiveTarget:
    """Where the receiver listens and the credentials Aljex was given."""

    url: str
    user: str
    password: str
    timeout: float = 30.0


@dataclass(frozen=True)
class LiveOptions:
    """How to send: how much, how fast, on how many connections, and how stubbornly.

    Without ``count`` or ``duration`` the feed runs until stopped.
    """

    count: int | None = None  # changes to post (changes of other tables do not count)
    duration: float | None = None  # seconds
    rate: float | None = None  # requests per second, at most
    concurrency: int = 1
    tables: frozenset[str] | None = None
    retries: int = 3  # after the first attempt, for 502/503/504 and connection errors
    backoff: float = 0.25  # seconds before the first retry, doubled for each next one

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise EmulatorError("--concurrency must be at least 1")
        if self.retries < 0 or self.backoff < 0:
            raise EmulatorError("--retries and the backoff cannot be negative")
        if self.rate is not None and self.rate <= 0:
            raise EmulatorError("--rate must be more than 0")
        if (self.count is not None and self.count < 0) or (
            self.duration is not None and self.duration < 0
        ):
            raise EmulatorError("--count and --duration cannot be negative")
        check_tables(self.tables)


@dataclass
class LiveReport:
    """What a live run did; also the snapshot the progress callback gets while it runs."""

    first: int  # index of the run's first change in the feed
    generated: int = 0  # changes made (the brokerage moved on by this many)
    posted: int = 0  # changes handed to a sender: those of the chosen tables
    skipped: int = 0  # changes of other tables, made but not sent
    delivered: int = 0  # acknowledged with a 200
    failed: int = 0  # sent, but never acknowledged after the retries
    abandoned: int = 0  # never sent: the run stopped first
    retries: int = 0
    problems: dict[str, int] = field(default_factory=dict)  # replies by status code or error
    reasons: list[str] = field(default_factory=list)  # the first few, one line each
    elapsed: float = 0.0
    stopped_by: str | None = None  # why the run ended before its count or duration

    @property
    def per_second(self) -> float:
        """Requests answered per second so far."""
        return (self.delivered + self.failed) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Whether every change sent was acknowledged and nothing stopped the run."""
        return self.failed == 0 and self.abandoned == 0 and self.stopped_by is None


class _Tally:
    """The outcomes the sender threads report, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delivered = 0
        self.failed: set[int] = set()
        self.abandoned: set[int] = set()
        self.in_flight: set[int] = set()
        self.retries = 0
        self.problems: Counter[str] = Counter()
        self.reasons: list[str] = []
        self.fatal: str | None = None

    def problem(self, kind: str, reason: str, *, fatal: bool = False) -> None:
        with self.lock:
            self.problems[kind] += 1
            if len(self.reasons) < MAX_REASONS and reason not in self.reasons:
                self.reasons.append(reason)
            if fatal and self.fatal is None:
                self.fatal = reason

    def retried(self) -> None:
        with self.lock:
            self.retries += 1

    def start(self, index: int) -> None:
        with self.lock:
            self.in_flight.add(index)

    def finish(self, index: int, outcome: Literal["delivered", "failed", "abandoned"]) -> None:
        with self.lock:
            self.in_flight.discard(index)
            if outcome == "delivered":
                self.delivered += 1
            else:
                (self.failed if outcome == "failed" else self.abandoned).add(index)

    def not_acknowledged(self) -> list[int]:
        """Indexes without a 200: failed, abandoned, and (at a checkpoint) still in flight."""
        with self.lock:
            return sorted(self.failed | self.abandoned | self.in_flight)


class _Poster:
    """One keep-alive connection to the receiver, as each of Aljex's senders holds one."""

    def __init__(self, target: LiveTarget) -> None:
        parts = urlsplit(target.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EmulatorError(f"--url {target.url!r} is not an http:// or https:// URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = target.timeout
        credentials = base64.b64encode(f"{target.user}:{target.password}".encode()).decode()
        self._headers = {
            "Authorization": f"Basic {credentials}",
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": f"aljex-sync-emulator/{__version__}",
        }
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> tuple[int, str]:
        """Send one body; return the status and the reply's first line.

        Raises OSError or HTTPException when no reply came. A reused connection the server
        had already closed (keep-alive timeout) is retried at once on a new one: the request
        never reached the receiver's application.
        """
        reused = self._conn is not None
        while True:
            try:
                return self._exchange(body)
            except (OSError, http.client.HTTPException) as error:
                self.close()
                if not (reused and isinstance(error, ConnectionResetError | BrokenPipeError)):
                    raise
                reused = False

    def _exchange(self, body: bytes) -> tuple[int, str]:
        conn = self._conn or self._connect()
        conn.request("POST", self._path, body=body, headers=self._headers)
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace").strip()
        if response.will_close:
            self.close()
        return response.status, (text.splitlines() or [response.reason])[0][:200]

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = kind(self._host, self._port, timeout=self._timeout)
        conn.connect()
        # http.client writes headers and body in two sends; without NODELAY, Nagle's
        # algorithm and the server's delayed ACK stall every request by 40 ms.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _SenderThread(threading.Thread):
    """A sending thread: posts the changes queued for it, in order, retrying transient
    failures. The feed gives all changes of one record to the same sender, so each record's
    changes arrive in the order they were made whatever the concurrency."""

    def __init__(
        self,
        number: int,
        target: LiveTarget,
        options: LiveOptions,
        tally: _Tally,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"emulator-sender-{number}", daemon=True)
        self.queue: queue.Queue[tuple[int, LiveChange] | None] = queue.Queue(_QUEUE_SIZE)
        self._poster = _Poster(target)
        self._options = options
        self._tally = tally
        self._halt = stop

    def run(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                index, change = item
                if self._halt.is_set():
                    self._tally.finish(index, "abandoned")
                    continue
                try:
                    outcome = self._deliver(encode_change(change))
                except Exception as e:  # a bug must not wedge the feed: count and go on
                    self._tally.problem(type(e).__name__, f"{type(e).__name__}: {e}")
                    outcome = "failed"
                self._tally.finish(index, outcome)
        finally:
            self._poster.close()

    def _deliver(self, body: bytes) -> Literal["delivered", "failed", "abandoned"]:
        """Post ``body`` until a 200, a reply not worth repeating, or the retries run out."""
        for attempt in range(self._options.retries + 1):
            if attempt:
                self._tally.retried()
                delay = min(self._options.backoff * 2 ** (attempt - 1), MAX_BACKOFF)
                if self._halt.wait(delay):
                    return "abandoned"
            try:
                status, reason = self._poster.post(body)
            except (OSError, http.client.HTTPException) as e:
                self._tally.problem(type(e).__name__, f"{type(e).__name__}: {e}")
                continue
            if status == 200:
                return "delivered"
            fatal = status in FATAL_STATUSES
            self._tally.problem(str(status), f"{status} {reason}", fatal=fatal)
            if fatal:
                self._halt.set()
            if status not in RETRIED_STATUSES:
                break
        return "failed"


class _Feed:
    """One live run: makes changes on the calling thread and hands them to the senders."""

    def __init__(
        self,
        state: EmulatorState,
        target: LiveTarget,
        options: LiveOptions,
        external_stop: threading.Event | None,
    ) -> None:
        self.state = state
        self.options = options
        self.brokerage = state.brokerage()
        tables = sorted(options.tables) if options.tables is not None else None
        self.run = LiveRun(state.changes, tables=tables, url=target.url, started_at=now_text())
        self.tally = _Tally()
        self.stop = threading.Event()  # set by a fatal reply or the caller's stop
        self.external_stop = external_stop or threading.Event()
        self.senders = [
            _SenderThread(n, target, options, self.tally, self.stop)
            for n in range(options.concurrency)
        ]
        self.generated = self.posted = self.skipped = 0
        self.started = time.monotonic()
        self._next_checkpoint = self.started + CHECKPOINT_SECONDS
        self._next_progress = self.started
        self._progress: Callable[[LiveReport], None] | None = None

    def send(self, progress: Callable[[LiveReport], None] | None) -> LiveReport:
        """Run until the count, the duration or a stop; save the state; report."""
        self._progress = progress
        self.state.events.append(self.run)
        for sender in self.senders:
            sender.start()
        try:
            while self._pace():
                index, change = self._next_wanted()
                self._dispatch(index, change)
        except BaseException:
            self.stop.set()  # Ctrl-C or a bug: abandon what is queued rather than send it
            raise
        finally:
            self._finish()
        report = self.report()
        if progress is not None:
            progress(report)
        return report

    def _halted(self) -> bool:
        if self.external_stop.is_set():
            self.stop.set()
        return self.stop.is_set()

    def _done(self) -> bool:
        options = self.options
        return (
            self._halted()
            or (options.count is not None and self.posted >= options.count)
            or (options.duration is not None and self._elapsed() >= options.duration)
        )

    def _pace(self) -> bool:
        """Wait for the next request's turn under ``--rate``; False when the run is over."""
        rate = self.options.rate
        while not self._done():
            self._tick()
            wait = 0.0 if rate is None else self.started + self.posted / rate - time.monotonic()
            if wait <= 0:
                return True
            self.external_stop.wait(min(wait, PROGRESS_SECONDS))
        return False

    def _next_wanted(self) -> tuple[int, LiveChange]:
        """The next change of a chosen table; those of other tables still move the feed on."""
        while True:
            change = self.brokerage.next_change()
            index = self.run.first + self.generated
            self.generated += 1
            if self.run.sends(change.table):
                return index, change
            self.skipped += 1

    def _dispatch(self, index: int, change: LiveChange) -> None:
        key = tuple(change.fields.get(name, "") for name in key_for(change.table))
        sender = self.senders[hash((change.table, key)) % len(self.senders)]
        self.posted += 1
        self.tally.start(index)
        while not self._halted():
            try:
                sender.queue.put((index, change), timeout=PROGRESS_SECONDS)
                return
            except queue.Full:
                self._tick()
        self.tally.finish(index, "abandoned")

    def _tick(self) -> None:
        """Report progress and checkpoint the state, each when it is due."""
        now = time.monotonic()
        if self._progress is not None and now >= self._next_progress:
            self._next_progress = now + PROGRESS_SECONDS
            self._progress(self.report())
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + CHECKPOINT_SECONDS
            self._record()
            self.state.save()

    def _finish(self) -> None:
        """Let the senders empty their queues (abandoning them if stopped), then save."""
        for sender in self.senders:
            while sender.is_alive():
                try:
                    sender.queue.put(None, timeout=PROGRESS_SECONDS)
                    break
                except queue.Full:
                    self._halted()
                    self._tick()
        for sender in self.senders:
            while sender.is_alive():
                sender.join(PROGRESS_SECONDS)
                self._halted()
                self._tick()
        self._record()
        self.state.save()

    def _record(self) -> None:
        """Write the run's progress into its state event."""
        self.run.count = self.generated
        self.run.undelivered = self.tally.not_acknowledged()

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def report(self) -> LiveReport:
        tally = self.tally
        with tally.lock:
            stopped_by = tally.fatal or ("interrupted" if self.external_stop.is_set() else None)
            return LiveReport(
                first=self.run.first,
                generated=self.generated,
                posted=self.posted,
                skipped=self.skipped,
                delivered=tally.delivered,
                failed=len(tally.failed),
                abandoned=len(tally.abandoned),
                retries=tally.retries,
                problems=dict(tally.problems),
                reasons=list(tally.reasons),
                elapsed=self._elapsed(),
                stopped_by=stopped_by,
            )


def run_live(
    state: EmulatorState,
    target: LiveTarget,
    options: LiveOptions | None = None,
    *,
    progress: Callable[[LiveReport], None] | None = None,
    stop: threading.Event | None = None,
) -> LiveReport:
    """Send the live feed from where ``state`` left it, recording the run in ``state``.

    Sequential by default, as Aljex sends. ``progress`` gets a snapshot about ten times a
    second (on the calling thread) and the final report. Setting ``stop`` ends the run:
    requests in flight finish, queued ones are abandoned. A 401 or 403 stops the run too.
    The state is saved every few seconds and at the end, so an interrupted run can be
    continued and verified.
    """
    return _Feed(state, target, options or LiveOptions(), stop).send(progress)
