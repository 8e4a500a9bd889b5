"""Where Morning Sync files arrive, and the queue that loads them one at a time.

Files come either from the embedded SFTP server (an upload counts when the client closes
it) or, for customers who run their own SSH server, from watching the inbox folder (a file
counts once it has not changed for ``quiet_seconds``; names ending ``.part``, ``.tmp`` or
``.filepart`` are still being written, and load once renamed). Loading runs in one worker
thread, file after file, so a big file never blocks the event loop that answers live sync.

An upload of a name that is still queued replaces the file on disk (the SFTP server renames it
over the older one): the older arrival then has nothing of its own left to load, which is
logged at INFO, and the newer one loads the file. A queued file that is gone without a newer
upload of its name (removed by hand, say) is a WARNING.

The worker never dies: whatever goes wrong with one file sends that file to ``failed/`` with
its reason and an ERROR in the log, and the worker goes on with the next. A file the database
refused (down, unreachable, locked, full) stays in the inbox and is tried again every
``retry_seconds``, and at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import secrets
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .clock import utcnow
from .errors import DatabaseUnavailable
from .file_report import FileReport
from .folders import ARCHIVE, FAILED, FOLDERS, HELD, LOADING, UNMATCHED, aside_folder, clashes
from .morning import MorningLoader
from .sftp_files import PARTIAL_SUFFIXES, Upload

log = logging.getLogger("aljex_sync.inbox")

TAKEN_MEMORY = timedelta(days=1)
"""How long the load queue remembers when it took a file of each name, to tell a queued
upload that a newer one replaced (and was loaded in its place) from one that vanished."""


@dataclass(frozen=True)
class Arrival:
    """A complete file in the inbox, with what is known of when it was exported."""

    path: Path
    started_at: datetime  # naive UTC: when its upload began (or it was first seen)
    mtime: datetime | None  # naive UTC: the modification time the client gave it


def _naive_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _naive(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC).replace(tzinfo=None)


class LoadQueue:
    """Loads arrivals one at a time in a worker thread, then moves each file out."""

    retry_seconds = 60.0
    """How long a file the database refused waits in the inbox before it is tried again."""

    def __init__(self, loader: MorningLoader, inbox: Path) -> None:
        self.loader = loader
        self.inbox = inbox
        self.reports: list[FileReport] = []
        self._queue: queue.SimpleQueue[Arrival | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="aljex-morning", daemon=True)
        self._idle = threading.Event()
        self._pending = 1  # the worker first makes the inbox's folders

        self._lock = threading.Lock()
        self._queued: Counter[Path] = Counter()  # arrivals queued or loading, per path
        self._taken_at: dict[Path, datetime] = {}  # naive UTC: a root file last taken to load
        self._retries: set[threading.Timer] = set()
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def put(self, arrival: Arrival) -> None:
        with self._lock:
            self._pending += 1
            self._queued[arrival.path] += 1
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
        with self._lock:
            self._closed = True
            for timer in self._retries:
                timer.cancel()  # the file stays in the inbox for the next start
            self._retries.clear()
        self._queue.put(None)
        self._thread.join()

    def _retry_later(self, arrival: Arrival) -> None:
        with self._lock:
            if self._closed:
                return
            timer = threading.Timer(self.retry_seconds, self._retry, (arrival,))
            timer.name, timer.daemon = "aljex-morning-retry", True
            self._retries.add(timer)
        timer.start()

    def _retry(self, arrival: Arrival) -> None:
        with self._lock:
            self._retries.discard(threading.current_thread())
            if self._closed:
                return
        if arrival.path.is_file():  # not loaded meanwhile (by hand, or by another receiver)
            self.put(arrival)

    def _run(self) -> None:
        try:
            self._make_folders()
        except OSError as e:  # the operator's to fix: one line, no traceback
            log.error(
                "cannot make the inbox's folders in %s: %s; uploads cannot be loaded until"
                " it is fixed",
                self.inbox,
                e,
            )
        except Exception:
            log.exception("the inbox's folders could not all be made")
        finally:
            self._done()
        while True:
            arrival = self._queue.get()
            if arrival is None:
                return
            try:
                self._load(arrival)
            except Exception:  # last resort: the next file must still load
                log.exception("%s: could not be dealt with", arrival.path.name)
            finally:
                with self._lock:
                    self._queued[arrival.path] -= 1
                    if self._queued[arrival.path] <= 0:
                        del self._queued[arrival.path]
                self._done()

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    def _make_folders(self) -> None:
        """Make the inbox's own folders; a file standing where one must be is failed first.

        Such a file can only predate the rule that refuses those names at upload. Once the
        folders exist, no file can take their names again.
        """
        self.inbox.mkdir(parents=True, exist_ok=True)
        for name in FOLDERS:
            path = self.inbox / name
            if path.is_file() and not path.is_symlink():
                self._load(Arrival(path, _naive_now(), None))
            make_folder(self.inbox, path)

    def _load(self, arrival: Arrival) -> None:
        path = arrival.path
        with self._lock:
            newer_queued = self._queued[path] > 1
        if path.parent == self.inbox and newer_queued:
            # A newer upload of the name is queued behind this one: the file is now its.
            log.info(
                "%s: replaced by a newer upload of the same name before it was loaded;"
                " the newer one loads next",
                path.name,
            )
            return
        if not path.is_file() or path.is_symlink():
            taken = self._taken_at.get(path)
            if taken is not None and taken >= arrival.started_at:
                # This upload replaced an earlier one of its name while that one was being
                # taken to load: the earlier arrival loaded this file.
                log.info(
                    "%s: loaded already: it replaced an earlier upload of the same name and"
                    " was loaded in that one's place",
                    path.name,
                )
            else:
                log.warning("%s: no longer in the inbox, nothing to load", path.name)
            return
        path = self._take(path)
        arrival = Arrival(path, arrival.started_at, arrival.mtime)
        try:
            self._load_taken(arrival)
        finally:
            if path.parent.parent == self.inbox / LOADING:
                with contextlib.suppress(OSError):  # not empty: it waits for a retry
                    path.parent.rmdir()

    def _take(self, path: Path) -> Path:
        """Move a file of the inbox root into a folder of its own under ``.loading``.

        The name stays (it says which table the file is for). A file already taken (a
        retry, or left from a stop) stays where it is; so does one that cannot be moved.
        """
        if path.parent != self.inbox:
            return path
        folder = aside_folder(self.inbox)
        now = _naive_now()
        self._taken_at = {p: t for p, t in self._taken_at.items() if now - t < TAKEN_MEMORY}
        self._taken_at[path] = now
        try:
            folder.mkdir(parents=True)
            os.rename(path, folder / path.name)
        except OSError as e:
            log.warning("%s: loading it where it is, could not move it aside: %s", path.name, e)
            with contextlib.suppress(OSError):
                folder.rmdir()
            return path
        return folder / path.name

    def _load_taken(self, arrival: Arrival) -> None:
        path = arrival.path
        try:
            report = self.loader.load(path, started_at=arrival.started_at, mtime=arrival.mtime)
        except DatabaseUnavailable as e:
            # The file stays in the inbox, tried again later and at the next start.
            log.error(
                "%s not loaded, database unavailable: %s; trying again in %g s",
                path.name,
                e,
                self.retry_seconds,
            )
            self._retry_later(arrival)
            return
        except Exception as e:
            log.exception("%s: loading failed", path.name)
            report = self._failed(path, f"the loader failed on it: {type(e).__name__}: {e}")
        try:
            dispose(report, path, self.inbox)
        except Exception as e:
            log.exception("%s: could not be moved to %s/", path.name, report.status)
            if report.status == "failed":
                raise
            report = self._failed(path, f"it could not be moved to {report.status}/: {e}")
            dispose(report, path, self.inbox)
        self.reports.append(report)

    def _failed(self, path: Path, error: str) -> FileReport:
        """Record the loader's own failure on a file, if the database lets it."""
        try:
            return self.loader.failed(path, error)
        except Exception:
            log.exception("%s: its failure could not be recorded", path.name)
            return FileReport(path.name, "failed", error=error)


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
        and path.name not in FOLDERS  # in a folder's place: the load queue fails it first
    ]


def taken_files(inbox: Path) -> list[Path]:
    """Files moved aside to load (``.loading/*/``) and not done: loading, waiting to be
    tried again, or left by a stop."""
    return sorted(
        path for path in (inbox / LOADING).glob("*/*") if path.is_file() and not path.is_symlink()
    )


def left_over(inbox: Path) -> list[Arrival]:
    """Files that arrived before a restart and were never loaded, oldest first."""
    arrivals = []
    for path in [*taken_files(inbox), *waiting_files(inbox)]:
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


def dispose(report: FileReport, path: Path, inbox: Path) -> Path | None:
    """Move a file out of the inbox according to what became of it; write error notes."""
    if not path.exists():
        return None
    if report.status in ("loaded", "duplicate"):
        folder = inbox / ARCHIVE / utcnow().strftime("%Y-%m-%d")
    elif report.status == "held":
        folder = inbox / HELD
    elif report.status == "unmatched":
        folder = inbox / UNMATCHED
    elif report.status == "failed":
        folder = inbox / FAILED
    else:
        return None
    if path.parent == inbox and clashes(path.name):
        # The file stands where a folder must be: step it aside (hidden, so nothing loads it).
        aside = path.with_name(f".aside-{secrets.token_hex(4)}-{path.name}")
        os.replace(path, aside)
        path = aside
    make_folder(inbox, folder)
    target = _free_name(folder / report.name)
    shutil.move(str(path), target)
    if report.status in ("failed", "held", "unmatched"):
        note = target.with_name(target.name + ".error.txt")
        note.write_text(f"{report.status}: {report.error}\n")
    report.moved_to = target
    return target


def make_folder(inbox: Path, folder: Path) -> None:
    """Make one of the inbox's folders (or a folder in one); a file in the way is failed first.

    The load queue makes the folders before any load, failing such a file through the
    loader; this is the last resort for one that turns up later, with a note and an ERROR.
    """
    top = inbox / folder.relative_to(inbox).parts[0]
    if top.is_symlink() or (top.exists() and not top.is_dir()):
        aside = inbox / f".aside-{secrets.token_hex(4)}-{top.name}"
        os.replace(top, aside)
        failed = inbox / FAILED
        if top != failed:
            make_folder(inbox, failed)
        else:
            failed.mkdir()
        target = _free_name(failed / top.name)
        os.replace(aside, target)
        reason = "the file's name is the name of one of the inbox's own folders"
        target.with_name(target.name + ".error.txt").write_text(f"failed: {reason}\n")
        log.error("%s: moved to %s: %s", top.name, target, reason)
    folder.mkdir(parents=True, exist_ok=True)


def _free_name(target: Path) -> Path:
    """``target``, or ``name.1.csv``, ``name.2.csv``... when that is taken."""
    if not target.exists():
        return target
    n = 1
    while True:
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        if not candidate.exists():
            return candidate
        n += 1
