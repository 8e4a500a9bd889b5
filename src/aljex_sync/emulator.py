"""Aljex's side of the wire, for tests, demos and benchmarks, with an oracle to check a receiver.

The emulator sends what Aljex would send about a :class:`~aljex_sync.brokerage.Brokerage`:
Live Sync posts, one record per form-urlencoded POST with HTTP Basic auth, in order on one
keep-alive connection as Aljex does (or on several, keeping each record's changes in order);
and Morning Sync CSV files uploaded by SFTP with their mtime, as ``put -p`` does.

What it sent is kept in a JSON state file: the brokerage's seed, day and size, then each
live run (which changes, to which tables, which were never acknowledged) and each morning
upload (at which point of the feed, for which day, which files). A brokerage is a pure
function of its seed and the number of :meth:`~aljex_sync.brokerage.Brokerage.next_change`
calls, so a later process rebuilds it exactly, continues the feed where the last run
stopped, and computes what the receiver must now hold: :func:`expected_records`.
:func:`verify` compares that with a receiver's database, field by field.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import posixpath
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import asyncssh
from sqlalchemy import Engine, column, inspect, select, table
from sqlalchemy.exc import SQLAlchemyError

from . import __version__
from .brokerage import MORNING_TABLES, SCALES, Brokerage, Key, LiveChange, write_morning_csvs
from .catalog import CATALOG, key_for, mode_for, table_for_file_name
from .errors import AljexSyncError
from .store.database import display_url, open_engine, reading
from .store.schema import DELETED_AT, columns_table
from .wire import ACTION_PARAM, TABLE_PARAM

Record = dict[str, str]
Records = dict[Key, Record]

ALL_TABLES: tuple[str, ...] = tuple(entry.table for entry in CATALOG)
DEFAULT_SEED = 1
DEFAULT_SIZE = "small"
DEFAULT_STATE = Path("aljex-emulator.json")
STATE_VERSION = 1

#: Replies worth sending again: the receiver (or a proxy before it) could not store it now.
RETRIED_STATUSES = frozenset({502, 503, 504})
#: Replies that every later request would get as well: the run stops.
FATAL_STATUSES = frozenset({401, 403})
MAX_BACKOFF = 2.0
MAX_REASONS = 5
CHECKPOINT_SECONDS = 5.0
PROGRESS_SECONDS = 0.1
_QUEUE_SIZE = 8  # changes waiting per sender: enough to keep it busy, little run-ahead
_UPLOAD_BLOCK = 64 * 1024


class EmulatorError(AljexSyncError):
    """The emulator cannot do what it was asked: a bad state file, option, or an unreachable
    server. The message names the file, option or address."""


# -- the state file ------------------------------------------------------------------------


@dataclass
class LiveRun:
    """One ``emulate live`` run: changes ``first`` to ``first + count - 1`` of the feed.

    Every change was made (the brokerage moved on); those of a table outside ``tables``
    were not sent, and ``undelivered`` lists the indexes that were sent but never
    acknowledged with a 200, or never sent because the run stopped first.
    """

    first: int
    count: int = 0
    tables: list[str] | None = None  # None: every table
    undelivered: list[int] = field(default_factory=list)
    url: str = ""
    started_at: str = ""

    def sends(self, table: str) -> bool:
        """Whether this run sent the changes of ``table``."""
        return self.tables is None or table in self.tables


@dataclass
class MorningUpload:
    """One morning upload: the files of ``tables`` for ``day``, taken after ``position``
    changes of the feed."""

    position: int
    day: date
    tables: list[str]
    files: list[str] = field(default_factory=list)
    destination: str = ""
    uploaded_at: str = ""


Event = LiveRun | MorningUpload


@dataclass
class EmulatorState:
    """The ground truth of what the emulator sent, saved as JSON at ``path``."""

    seed: int
    today: date
    size: str
    events: list[Event] = field(default_factory=list)
    path: Path | None = None

    @property
    def changes(self) -> int:
        """How many changes the feed has made so far: where the next run starts."""
        return sum(event.count for event in self.events if isinstance(event, LiveRun))

    def brokerage(self) -> Brokerage:
        """The brokerage as it stands now: rebuilt from the seed and moved on by every change."""
        brokerage = self.new_brokerage()
        for _ in range(self.changes):
            brokerage.next_change()
        return brokerage

    def new_brokerage(self) -> Brokerage:
        """The brokerage as it stood before any change."""
        return Brokerage(self.seed, today=self.today, size=self.size)

    def covered_tables(self) -> list[str]:
        """The tables anything was sent to, in catalog order: the ones a receiver is checked on."""
        covered: set[str] = set()
        for event in self.events:
            if isinstance(event, MorningUpload):
                covered.update(event.tables)
            else:
                covered.update(ALL_TABLES if event.tables is None else event.tables)
        return [name for name in ALL_TABLES if name in covered]

    def save(self) -> None:
        """Write the state atomically (a temporary file renamed over it); no-op without a path."""
        if self.path is None:
            return
        temp = self.path.with_name(f".{self.path.name}.tmp")
        temp.write_text(json.dumps(_state_to_json(self), indent=1) + "\n", encoding="utf-8")
        os.replace(temp, self.path)


def load_state(
    path: Path,
    *,
    seed: int | None = None,
    today: date | None = None,
    size: str | None = None,
) -> EmulatorState:
    """The state saved at ``path``, or a new one (not yet saved) when there is none.

    ``seed``, ``today`` and ``size`` choose the brokerage of a new state (defaults: seed 1,
    today's date, ``small``); given with an existing state, they must match it, since a
    state can only go on with the brokerage it started.
    """
    if size is not None and size not in SCALES:
        raise EmulatorError(f"unknown size {size!r}; expected one of {', '.join(SCALES)}")
    if not path.exists():
        return EmulatorState(
            DEFAULT_SEED if seed is None else seed,
            today or date.today(),
            size or DEFAULT_SIZE,
            path=path,
        )
    try:
        state = _state_from_json(json.loads(path.read_text(encoding="utf-8")), path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EmulatorError(f"{path}: not a readable emulator state: {e}") from None
    for name, given, saved in (
        ("seed", seed, state.seed),
        ("today", today, state.today),
        ("size", size, state.size),
    ):
        if given is not None and given != saved:
            raise EmulatorError(
                f"{path} holds the brokerage of --{name} {saved}, not {given}:"
                f" leave out --{name} or use another --state file"
            )
    return state


def _state_to_json(state: EmulatorState) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    for event in state.events:
        if isinstance(event, LiveRun):
            events.append({"kind": "live", **asdict(event)})
        else:
            events.append({"kind": "morning", **asdict(event), "day": event.day.isoformat()})
    return {
        "version": STATE_VERSION,
        "seed": state.seed,
        "today": state.today.isoformat(),
        "size": state.size,
        "changes": state.changes,
        "events": events,
    }


def _state_from_json(raw: dict[str, Any], path: Path) -> EmulatorState:
    if raw.get("version") != STATE_VERSION:
        raise ValueError(f"version {raw.get('version')!r} is not {STATE_VERSION}")
    if raw["size"] not in SCALES:
        raise ValueError(f"unknown size {raw['size']!r}")
    events: list[Event] = []
    for item in raw["events"]:
        values = {k: v for k, v in item.items() if k != "kind"}
        if item["kind"] == "live":
            events.append(LiveRun(**values))
        else:
            events.append(MorningUpload(**{**values, "day": date.fromisoformat(values["day"])}))
    state = EmulatorState(
        int(raw["seed"]), date.fromisoformat(raw["today"]), raw["size"], events, path
    )
    _check_positions(state)
    if raw.get("changes", state.changes) != state.changes:
        raise ValueError(f"it says {raw['changes']} changes but its runs add up to {state.changes}")
    return state


def _check_positions(state: EmulatorState) -> None:
    """Each event must start where the ones before it left the feed, or replay would lie."""
    position = 0
    for event in state.events:
        start = event.first if isinstance(event, LiveRun) else event.position
        if start != position:
            raise ValueError(f"an event starts at change {start}, but the feed was at {position}")
        if isinstance(event, LiveRun):
            position += event.count


def check_tables(tables: Iterable[str] | None, allowed: Collection[str] = ALL_TABLES) -> None:
    """Refuse table names the brokerage does not have, naming the ones it has."""
    unknown = sorted(set(tables or ()) - set(allowed))
    if unknown:
        raise EmulatorError(
            f"unknown table {', '.join(unknown)}; expected some of {', '.join(allowed)}"
        )


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- the live feed -------------------------------------------------------------------------


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


class _Sender(threading.Thread):
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
        self.run = LiveRun(state.changes, tables=tables, url=target.url, started_at=_now_text())
        self.tally = _Tally()
        self.stop = threading.Event()  # set by a fatal reply or the caller's stop
        self.external_stop = external_stop or threading.Event()
        self.senders = [
            _Sender(n, target, options, self.tally, self.stop) for n in range(options.concurrency)
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


# -- the morning files ---------------------------------------------------------------------


@dataclass(frozen=True)
class MorningFile:
    """One morning file written or uploaded: where it went, its size and mtime (epoch s)."""

    table: str
    name: str
    location: str
    size: int
    mtime: float


@dataclass(frozen=True)
class SftpTarget:
    """The SFTP server, account and directory the customer gave Aljex."""

    host: str
    port: int
    user: str
    password: str
    directory: str = "/"
    timeout: float = 30.0

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}:{self.port}{self.directory}"


@dataclass
class MorningReport:
    """What ``emulate morning`` did: the day, the files, and the server's host key."""

    day: date
    files: list[MorningFile]
    host_key: str | None = None  # SHA256 fingerprint, when uploaded


def _write_files(
    brokerage: Brokerage, day: date, directory: Path, tables: Collection[str] | None
) -> list[tuple[str, Path]]:
    """Write every morning file into ``directory``; return the chosen ones with their table."""
    chosen = []
    for path in write_morning_csvs(brokerage, day, directory):
        table_name = table_for_file_name(path.name)
        if table_name is None:  # write_morning_csvs names files by the catalog's titles
            raise AssertionError(f"{path.name} matches no catalog table")
        if tables is None or table_name in tables:
            chosen.append((table_name, path))
    return chosen


def _described(table_name: str, path: Path, location: str) -> MorningFile:
    st = path.stat()
    return MorningFile(table_name, path.name, location, st.st_size, st.st_mtime)


def write_morning(
    state: EmulatorState,
    out_dir: Path,
    *,
    day: date | None = None,
    tables: Collection[str] | None = None,
) -> MorningReport:
    """Write the morning files of ``day`` into ``out_dir`` without uploading them.

    Nothing was sent, so the state is not changed.
    """
    check_tables(tables, MORNING_TABLES)
    brokerage = state.brokerage()
    day = day or brokerage.now.date()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    with tempfile.TemporaryDirectory(prefix="aljex-morning-") as temp:
        for table_name, path in _write_files(brokerage, day, Path(temp), tables):
            final = Path(shutil.move(path, out_dir / path.name))  # keeps the mtime
            files.append(_described(table_name, final, str(final)))
    return MorningReport(day, files)


def upload_morning(
    state: EmulatorState,
    target: SftpTarget,
    *,
    day: date | None = None,
    tables: Collection[str] | None = None,
) -> MorningReport:
    """Write the morning files of ``day`` and upload them by SFTP, each with its mtime.

    The uploads are recorded in ``state`` (and saved), even when a later file fails, so
    that verify expects what arrived. Raises EmulatorError when the server cannot be
    reached or refuses a file.
    """
    check_tables(tables, MORNING_TABLES)
    brokerage = state.brokerage()
    day = day or brokerage.now.date()
    report = MorningReport(day, [])
    with tempfile.TemporaryDirectory(prefix="aljex-morning-") as temp:
        written = _write_files(brokerage, day, Path(temp), tables)
        try:
            asyncio.run(_upload(target, written, report))
        except (OSError, asyncssh.Error) as e:
            raise EmulatorError(f"SFTP upload to {target.destination} failed: {e}") from None
        finally:
            if report.files:
                state.events.append(_morning_event(state, target, report))
                state.save()
    return report


def _morning_event(state: EmulatorState, target: SftpTarget, report: MorningReport) -> Event:
    return MorningUpload(
        position=state.changes,
        day=report.day,
        tables=[f.table for f in report.files],
        files=[f.name for f in report.files],
        destination=target.destination,
        uploaded_at=_now_text(),
    )


async def _upload(target: SftpTarget, files: list[tuple[str, Path]], report: MorningReport) -> None:
    """Log in with the password and put each file, appending to ``report`` as each lands.

    The server's host key is not checked against a known_hosts file (this is a test tool);
    its fingerprint is reported so that it can be checked by eye.
    """
    async with asyncssh.connect(
        target.host,
        target.port,
        username=target.user,
        password=target.password,
        known_hosts=None,
        client_keys=None,
        agent_path=None,
        preferred_auth="password",
        connect_timeout=target.timeout,
    ) as conn:
        host_key = conn.get_server_host_key()
        report.host_key = host_key.get_fingerprint("sha256") if host_key else None
        async with conn.start_sftp_client() as sftp:
            for table_name, path in files:
                remote = posixpath.join(target.directory, path.name)
                await _put(sftp, path, remote)
                report.files.append(_described(table_name, path, remote))


async def _put(sftp: asyncssh.SFTPClient, path: Path, remote: str) -> None:
    """Upload one file and set its mtime before closing it, like ``put -p``.

    The times go on the open handle: a server may take an upload as final at the close (the
    embedded inbox does), and would then ignore times set afterwards by path.
    """
    st = path.stat()
    async with await sftp.open(remote, "wb") as handle:
        with path.open("rb") as source:
            while block := source.read(_UPLOAD_BLOCK):
                await handle.write(block)
        await handle.utime(times=(st.st_atime, st.st_mtime))


# -- the oracle ----------------------------------------------------------------------------


def _key(table_name: str, record: Mapping[str, str]) -> Key:
    return tuple(record.get(name, "") for name in key_for(table_name))


def _upsert(records: Records, table_name: str, record: Mapping[str, str]) -> None:
    """What the receiver does with a created or updated record: write the fields it carries."""
    key = _key(table_name, record)
    records[key] = {**records.get(key, {}), **record}


def _replay_run(brokerage: Brokerage, run: LiveRun, expected: dict[str, Records]) -> None:
    undelivered = set(run.undelivered)
    for index in range(run.first, run.first + run.count):
        change = brokerage.next_change()
        if not run.sends(change.table) or index in undelivered:
            continue
        records = expected.setdefault(change.table, {})
        if change.action == "delete":
            records.pop(_key(change.table, change.fields), None)
        else:
            _upsert(records, change.table, change.fields)


def _replay_morning(
    brokerage: Brokerage, upload: MorningUpload, expected: dict[str, Records]
) -> None:
    for table_name in upload.tables:
        records = expected.setdefault(table_name, {})
        if mode_for(table_name) == "full":  # the file is the whole table
            records.clear()
        for record in brokerage.morning_records(table_name, upload.day):
            _upsert(records, table_name, record)


def expected_records(
    state: EmulatorState, tables: Collection[str] | None = None
) -> dict[str, Records]:
    """What the receiver must hold now, table by table: key to record.

    Replays the feed: a delivered create or update puts the record as sent, a delivered
    delete takes it away, a full morning file makes the table exactly its records and a
    window file adds or updates its records. Records never sent are not expected. Every
    table anything was sent to is present, even when it is expected to be empty.
    """
    brokerage = state.new_brokerage()
    expected: dict[str, Records] = {name: {} for name in state.covered_tables()}
    for event in state.events:
        if isinstance(event, LiveRun):
            _replay_run(brokerage, event, expected)
        else:
            _replay_morning(brokerage, event, expected)
    return {name: records for name, records in expected.items() if tables is None or name in tables}


@dataclass(frozen=True)
class Difference:
    """One row that is not as expected.

    ``missing``: expected, absent (or soft-deleted); ``extra``: present, not expected;
    ``differs``: present with ``fields`` as (field, expected, actual) where they differ.
    """

    table: str
    key: Key
    kind: Literal["missing", "extra", "differs"]
    fields: tuple[tuple[str, str | None, str | None], ...] = ()


@dataclass
class TableReport:
    """One table compared: row counts, differences counted, and the first few of them."""

    table: str
    expected_rows: int
    actual_rows: int = 0  # rows present, soft-deleted ones left out
    missing: int = 0
    extra: int = 0
    differing: int = 0  # rows present as expected but with a differing field
    examples: list[Difference] = field(default_factory=list)

    @property
    def differences(self) -> int:
        return self.missing + self.extra + self.differing


@dataclass
class VerifyReport:
    """The receiver's database compared with what the emulator sent, table by table."""

    tables: list[TableReport]

    @property
    def differences(self) -> int:
        return sum(t.differences for t in self.tables)

    @property
    def ok(self) -> bool:
        return self.differences == 0

    @property
    def examples(self) -> list[Difference]:
        return [example for t in self.tables for example in t.examples]

    def table(self, name: str) -> TableReport:
        return next(t for t in self.tables if t.table == name)


def verify(
    url: str,
    state: EmulatorState,
    *,
    tables: Collection[str] | None = None,
    examples: int = 10,
) -> VerifyReport:
    """Compare the receiver's database at ``url`` with :func:`expected_records`.

    Fields are found through ``_aljex_columns``; every expected field is compared, columns
    the emulator never sent and the ``_aljex_*`` meta columns are not. A row with
    ``_aljex_deleted_at`` set counts as deleted. Keeps up to ``examples`` differences per
    table. Run it while the feed is quiet: tables are read one after the other.
    """
    check_tables(tables)
    expected = expected_records(state, tables)
    engine = open_engine(url)
    try:
        columns = _column_maps(engine)
        return VerifyReport(
            [
                _compare(engine, name, records, columns.get(name, {}), examples)
                for name, records in expected.items()
            ]
        )
    except SQLAlchemyError as e:
        raise EmulatorError(f"cannot read {display_url(url)}: {e}") from None
    finally:
        engine.dispose()


def _column_maps(engine: Engine) -> dict[str, dict[str, str]]:
    """Table to (field as sent to column), from the receiver's ``_aljex_columns``."""
    if not inspect(engine).has_table(columns_table.name):
        return {}
    maps: dict[str, dict[str, str]] = {}
    with reading(engine) as conn:
        c = columns_table.c
        for row in conn.execute(select(c.table_name, c.column_name, c.field_name)):
            maps.setdefault(row.table_name, {})[row.field_name] = row.column_name
    return maps


def _compare(
    engine: Engine, name: str, expected: Records, columns: Mapping[str, str], examples: int
) -> TableReport:
    report = TableReport(name, len(expected))
    remaining = dict(expected)

    def note(difference: Difference) -> None:
        if len(report.examples) < examples:
            report.examples.append(difference)

    for key, actual in _actual_rows(engine, name, expected, columns):
        report.actual_rows += 1
        record = remaining.pop(key, None)
        if record is None:
            report.extra += 1
            note(Difference(name, key, "extra"))
            continue
        differing = tuple(
            (f, value, actual.get(f)) for f, value in record.items() if actual.get(f) != value
        )
        if differing:
            report.differing += 1
            note(Difference(name, key, "differs", differing))
    report.missing = len(remaining)
    for key in remaining:
        note(Difference(name, key, "missing"))
    return report


def _actual_rows(
    engine: Engine, name: str, expected: Records, columns: Mapping[str, str]
) -> Iterator[tuple[Key, dict[str, str | None]]]:
    """The table's live rows as (key, field to value) for the expected fields it has."""
    key_fields = key_for(name)
    if not all(f in columns for f in key_fields):  # the receiver never made this table
        return
    wanted = dict.fromkeys([*key_fields, *(f for r in expected.values() for f in r)])
    fields = [f for f in wanted if f in columns]
    source = table(name, *(column(columns[f]) for f in fields), column(DELETED_AT))
    query = select(*(source.c[columns[f]] for f in fields), source.c[DELETED_AT])
    with reading(engine) as conn:
        for row in conn.execution_options(yield_per=500).execute(query):
            if row[-1] is not None:
                continue
            values = dict(zip(fields, row[:-1], strict=True))
            yield tuple(values[f] or "" for f in key_fields), values
