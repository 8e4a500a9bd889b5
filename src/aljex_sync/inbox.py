"""Where Morning Sync files arrive, and the queue that loads them one at a time.

Files come either from the embedded SFTP server (an upload counts when the client closes
it) or, for customers who run their own SSH server, from watching the inbox folder (a file
counts once it has not changed for ``quiet_seconds``; names ending ``.part``, ``.tmp`` or
``.filepart`` are still being written). Loading runs in one worker thread, file after file,
so a big file never blocks the event loop that answers live sync.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import DatabaseUnavailable
from .morning import FileReport, MorningLoader, dispose
from .sftp import PARTIAL_SUFFIXES, Upload

log = logging.getLogger("aljex_sync.inbox")


@dataclass(frozen=True)
class Arrival:
    """A complete file in the inbox, with what is known of when it was exported."""

    path: Path
    started_at: datetime  # naive UTC: when its upload began (or it was first seen)
    mtime: datetime | None  # naive UTC: the modification time the client gave it


def _naive(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC).replace(tzinfo=None)


class LoadQueue:
    """Loads arrivals one at a time in a worker thread, then moves each file out."""

    def __init__(self, loader: MorningLoader, inbox: Path) -> None:
        self.loader = loader
        self.inbox = inbox
        self.reports: list[FileReport] = []
        self._queue: queue.SimpleQueue[Arrival | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="aljex-morning", daemon=True)
        self._idle = threading.Event()
        self._idle.set()
        self._pending = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def put(self, arrival: Arrival) -> None:
        with self._lock:
            self._pending += 1
            self._idle.clear()
        self._queue.put(arrival)

    async def from_upload(self, upload: Upload) -> None:
        """The SFTP server's callback."""
        started = _naive(upload.started_at)
        assert started is not None
        self.put(Arrival(upload.path, started, _naive(upload.mtime)))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued file is done (tests and the demo use it)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            arrival = self._queue.get()
            if arrival is None:
                return
            try:
                self._load(arrival)
            finally:
                with self._lock:
                    self._pending -= 1
                    if self._pending == 0:
                        self._idle.set()

    def _load(self, arrival: Arrival) -> None:
        try:
            report = self.loader.load(
                arrival.path, started_at=arrival.started_at, mtime=arrival.mtime
            )
        except DatabaseUnavailable as e:
            # The file stays in the inbox; the next start (or watch pass) tries it again.
            log.error("%s not loaded, database unavailable: %s", arrival.path.name, e)
            return
        except Exception:
            log.exception("%s: loading failed", arrival.path.name)
            return
        dispose(report, arrival.path, self.inbox)
        self.reports.append(report)


def waiting_files(inbox: Path) -> list[Path]:
    """Complete-looking files in the inbox root: not hidden, partial, links or notes."""
    if not inbox.is_dir():
        return []
    return [
        path
        for path in sorted(inbox.iterdir())
        if path.is_file()
        and not path.is_symlink()
        and not path.name.startswith(".")
        and not path.name.lower().endswith(PARTIAL_SUFFIXES)
        and not path.name.endswith(".error.txt")
    ]


def left_over(inbox: Path) -> list[Arrival]:
    """Files that arrived before a restart and were never loaded, oldest first."""
    arrivals = []
    for path in waiting_files(inbox):
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(tzinfo=None)
        arrivals.append(Arrival(path, mtime, mtime))
    return sorted(arrivals, key=lambda a: a.started_at)


class FolderWatch:
    """Polls the inbox for files that have stopped changing, for folder-watch mode."""

    def __init__(self, inbox: Path, loads: LoadQueue, quiet_seconds: float) -> None:
        self.inbox = inbox
        self.loads = loads
        self.quiet_seconds = quiet_seconds
        self._seen: dict[Path, tuple[int, float, float]] = {}  # size, mtime, first seen
        self._queued: set[Path] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.get_running_loop().create_task(self._watch())
        log.info("watching %s for morning files", self.inbox)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            self.scan()
            await asyncio.sleep(min(1.0, max(0.05, self.quiet_seconds / 4)))

    def scan(self, now: float | None = None) -> list[Path]:
        """Queue the files that are ready; returns them."""
        now = asyncio.get_running_loop().time() if now is None else now
        ready: list[Path] = []
        present = set()
        for path in waiting_files(self.inbox):
            present.add(path)
            if path in self._queued:
                continue
            stat = path.stat()
            seen = self._seen.get(path)
            if seen is None or seen[:2] != (stat.st_size, stat.st_mtime):
                self._seen[path] = (stat.st_size, stat.st_mtime, now)
                continue
            if now - seen[2] >= self.quiet_seconds:
                first_seen = datetime.now(UTC).replace(tzinfo=None)
                mtime = _naive(datetime.fromtimestamp(stat.st_mtime, UTC))
                self.loads.put(Arrival(path, min(first_seen, mtime or first_seen), mtime))
                self._queued.add(path)
                ready.append(path)
        for gone in set(self._seen) - present:
            self._seen.pop(gone, None)
        self._queued &= present
        return ready
