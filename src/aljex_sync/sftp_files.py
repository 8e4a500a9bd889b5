"""The SFTP session on the inbox: what a client may do with files, and a complete upload.

See ``sftp``'s docstring for the rules; this module enforces them, hook by hook of
asyncssh's ``SFTPServer``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import asyncssh
from asyncssh import (
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPAttrs,
    SFTPError,
    SFTPFailure,
    SFTPFileAlreadyExists,
    SFTPName,
    SFTPNoSuchFile,
    SFTPPermissionDenied,
    SFTPVFSAttrs,
)

from .folders import aside_folder, clashes
from .sftp_login import peer_address

if TYPE_CHECKING:
    from .sftp import SftpInbox

log = logging.getLogger("aljex_sync.sftp")

#: A closed upload whose name ends with one of these is not reported until renamed.
PARTIAL_SUFFIXES = (".part", ".tmp", ".filepart")

_TEMP_PREFIX = ".upload-"
# Leaves room for the temporary prefix within the usual 255-byte file name limit.
_MAX_NAME_BYTES = 200


@dataclass(frozen=True)
class Upload:
    """A file whose upload completed.

    The client closed it after writes that all succeeded, and it was fsynced before the close
    was answered.
    """

    path: Path  # final path in the inbox
    name: str  # file name as the client gave it
    started_at: datetime  # UTC, aware: when the client opened it for writing
    mtime: datetime | None  # UTC aware, if the client set it (sftp `put -p`), else None
    size: int
    remote_addr: str


@dataclass(eq=False)
class _OpenUpload:
    """An upload in progress: the hidden temporary file one client handle writes to."""

    name: str
    temp: Path
    fd: int
    started_at: datetime
    started: float  # time.monotonic(), for the logged duration
    mtime: datetime | None = None
    failed: bool = False
    why: str = "a write failed"  # why it failed, once it has
    fd_open: bool = True

    def seek(self, offset: int, whence: int = 0) -> int:
        """Refuse asyncssh's ``ranges`` extension, which reads a file's layout through seek."""
        raise SFTPPermissionDenied("Uploads cannot be read back")


class _TooManyOpen(SFTPFailure):
    """An open refused by the open-upload limits (FX_FAILURE, with the limit as the reason)."""


@dataclass(frozen=True)
class _Closed:
    """A closed, fsynced upload under a partial name, waiting for its rename to a final name."""

    started_at: datetime
    started: float
    finished: float
    mtime: datetime | None
    size: int


class InboxSFTPServer(asyncssh.SFTPServer):
    """One SFTP session on the inbox.

    ``map_path`` refuses every path, so any hook not overridden here (mkdir, rmdir, symlink, link,
    readlink, lsetstat, statvfs, and whatever later asyncssh versions add) is refused too; the
    hooks that are allowed resolve names themselves with ``_inbox_name``.
    """

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], inbox: SftpInbox) -> None:
        super().__init__(chan)
        self._inbox = inbox
        self._dir = inbox.settings.inbox
        self._max_bytes = inbox.settings.max_file_bytes
        self._remote_addr = peer_address(self.connection)
        self._open: set[_OpenUpload] = set()
        self._partials: dict[str, _Closed] = {}  # closed, under a partial name, not renamed
        self._delivered: set[str] = set()  # reported in this session
        self._refused_over_limit = 0  # opens refused by the open-upload limits
        inbox.session_started(self)

    def map_path(self, path: bytes) -> bytes:
        raise SFTPPermissionDenied("Operation not allowed in this upload-only inbox")

    def realpath(self, path: bytes) -> bytes:
        parts: list[str] = []
        for part in _split(path):
            if part == "..":
                if parts:
                    parts.pop()
            else:
                parts.append(part)
        return ("/" + "/".join(parts)).encode()

    def lstat(self, path: bytes) -> SFTPAttrs:
        if not _split(path):
            return SFTPAttrs.from_local(os.stat(self._dir))
        name = _inbox_name(path)
        st = _existing_file(self._dir / name)
        if st is None:
            raise SFTPNoSuchFile(f"No such file: {name}")
        return SFTPAttrs.from_local(st)

    def stat(self, path: bytes) -> SFTPAttrs:
        """Same as lstat: symlinks are never followed, they are refused."""
        return self.lstat(path)

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        if _split(path):
            raise SFTPPermissionDenied("Only the inbox itself can be listed")
        # Snapshot first, so an abandoned listing holds no open directory iterator.
        for name, st in _list_files(self._dir):
            yield SFTPName(name.encode(), attrs=SFTPAttrs.from_local(st))

    def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> _OpenUpload:
        """A new upload; a refusal is logged with its reason, which OpenSSH's sftp does not
        show (it prints "Permission denied" or "Failure" whatever the server said)."""
        if pflags & FXF_READ or not pflags & FXF_WRITE:
            raise SFTPPermissionDenied("This inbox only accepts uploads; files cannot be read")
        try:
            return self._open_upload(path, pflags)
        except SFTPError as e:
            if isinstance(e, _TooManyOpen):
                # A client looping on open would log a line per attempt: the first is
                # logged, the rest counted and logged when the session ends.
                self._refused_over_limit += 1
                if self._refused_over_limit > 1:
                    raise
            shown = path.decode("utf-8", "replace").lstrip("/")
            log.warning("upload refused: %r from %s: %s", shown[:80], self._remote_addr, e.reason)
            raise

    def _open_upload(self, path: bytes, pflags: int) -> _OpenUpload:
        if pflags & FXF_APPEND:
            raise SFTPPermissionDenied("Appending is not supported; upload the whole file")
        name = _upload_name(path)
        if _existing_file(self._dir / name) is not None:
            if pflags & FXF_EXCL:
                raise SFTPFileAlreadyExists(f"File already exists: {name}")
            if not pflags & FXF_TRUNC:
                raise SFTPPermissionDenied("Resuming is not supported; upload the whole file")
        elif not pflags & FXF_CREAT:
            raise SFTPNoSuchFile(f"No such file: {name}")
        self._check_open_limits()
        temp = self._dir / f"{_TEMP_PREFIX}{secrets.token_hex(8)}-{name}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o600)
        except OSError as e:
            self._cannot_save(name, e)
        upload = _OpenUpload(name, temp, fd, datetime.now(UTC), time.monotonic())
        self._open.add(upload)
        return upload

    @property
    def open_uploads(self) -> int:
        """Upload handles this session holds open, each with a file descriptor."""
        return len(self._open)

    def _check_open_limits(self) -> None:
        """Refuse a new upload handle over the per-session or the server-wide limit.

        Each open upload holds a file descriptor, and the process's descriptors are Live
        Sync's too: a client holding thousands of handles once took them all.
        """
        settings = self._inbox.settings
        per_session = settings.max_open_uploads_per_session
        if len(self._open) >= per_session:
            raise _TooManyOpen(
                f"Too many uploads open at once: {per_session} in this session;"
                " close one before opening another"
            )
        if self._inbox.open_uploads() >= settings.max_open_uploads:
            raise _TooManyOpen(
                f"Too many uploads open at once: {settings.max_open_uploads} on this server;"
                " try again once one is closed"
            )

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        upload = _as_upload(file_obj)
        if upload.failed:
            raise SFTPFailure("An earlier write failed; this upload is discarded")
        if offset + len(data) > self._max_bytes:
            upload.failed = True
            upload.why = f"File larger than the {self._max_bytes} byte limit"
            raise SFTPFailure(upload.why)
        try:
            view = memoryview(data)
            while view:
                written = os.pwrite(upload.fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as e:
            upload.failed = True
            upload.why = f"a write failed: {e.strerror}"
            self._cannot_save(upload.name, e)
        return len(data)

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        raise SFTPPermissionDenied("This inbox only accepts uploads; files cannot be read")

    def fstat(self, file_obj: object) -> SFTPAttrs:
        return SFTPAttrs.from_local(os.fstat(_as_upload(file_obj).fd))

    def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        upload = _as_upload(file_obj)
        upload.mtime = _mtime(attrs) or upload.mtime

    def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Record times on this session's own uploads; some clients set them by path."""
        name = _inbox_name(path)
        mtime = _mtime(attrs)
        if name in self._partials:
            if mtime is not None:
                self._partials[name] = replace(self._partials[name], mtime=mtime)
            return
        for upload in self._open:
            if upload.name == name:
                upload.mtime = mtime or upload.mtime
                return
        if name not in self._delivered:  # too late to change a reported Upload: accept, ignore
            raise SFTPPermissionDenied("Only your own uploads can be changed")

    async def fsync(self, file_obj: object) -> None:
        await asyncio.to_thread(os.fsync, _as_upload(file_obj).fd)

    def fstatvfs(self, file_obj: object) -> SFTPVFSAttrs:
        raise SFTPPermissionDenied("Operation not allowed in this upload-only inbox")

    async def close(self, file_obj: object) -> None:
        upload = _as_upload(file_obj)
        self._open.discard(upload)
        if _client_input_ended(self.channel):
            # asyncssh also calls close() for handles still open when a session ends;
            # only a CLOSE request, read while the client is still sending, completes a file.
            self._discard(upload, "the client left before closing it")
            return
        if upload.failed:
            self._discard(upload, upload.why)
            raise SFTPFailure("Upload failed and was discarded")
        try:
            size = await asyncio.to_thread(_seal, upload)
            path = self._publish(upload.temp, upload.name)
            await asyncio.to_thread(_fsync_dir, path.parent)
        except OSError as e:
            self._discard(upload, f"it could not be saved: {e.strerror}")
            self._cannot_save(upload.name, e)
        closed = _Closed(upload.started_at, upload.started, time.monotonic(), upload.mtime, size)
        if _is_partial(upload.name):
            self._partials[upload.name] = closed
        else:
            self._deliver(path, closed)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        """Publish a partial upload of this session under its final name (replacing any)."""
        old, new = _inbox_name(oldpath), _upload_name(newpath)
        closed = self._partials.get(old)
        if closed is None:
            raise SFTPPermissionDenied("Only your own finished partial uploads can be renamed")
        _existing_file(self._dir / new)
        if _is_partial(new):
            os.replace(self._dir / old, self._dir / new)
            path = self._dir / new
        else:
            path = self._publish(self._dir / old, new)
        del self._partials[old]
        await asyncio.to_thread(_fsync_dir, path.parent)
        if _is_partial(new):
            self._partials[new] = closed
        else:
            self._deliver(path, closed)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self.rename(oldpath, newpath)

    def remove(self, path: bytes) -> None:
        """Let a client clean up its own unfinished partial upload, and nothing else."""
        name = _inbox_name(path)
        if name not in self._partials:
            raise SFTPPermissionDenied("Only your own unfinished partial uploads can be removed")
        del self._partials[name]
        (self._dir / name).unlink(missing_ok=True)

    def exit(self) -> None:
        for upload in list(self._open):
            self._discard(upload, "the session ended")
        self._open.clear()
        for name in list(self._partials):
            log.info("removing %r: uploaded under a partial name but never renamed", name)
            (self._dir / name).unlink(missing_ok=True)
        self._partials.clear()
        if self._refused_over_limit > 1:
            log.warning(
                "upload refused %d more times from %s: too many uploads open at once",
                self._refused_over_limit - 1,
                self._remote_addr,
            )
        self._inbox.session_ended(self)
        # asyncssh ends an SFTP session without an exit status, which scp (in its SFTP mode)
        # takes as a failure even after a good upload. No-op if the channel is already closed.
        self.channel.exit(0)

    def _publish(self, source: Path, name: str) -> Path:
        """Put a completed upload under its name in the inbox root; or, while an earlier
        upload of that name still waits there to be loaded, in a folder of its own beside
        the files being loaded: it loads after that one, and replaces nothing."""
        target = self._dir / name
        if _is_partial(name) or not target.is_file():
            os.replace(source, target)
            return target
        folder = aside_folder(self._dir)
        folder.mkdir(parents=True)
        os.rename(source, folder / name)
        log.info("%s: an earlier upload of it waits to be loaded; this one loads after it", name)
        return folder / name

    def _deliver(self, path: Path, closed: _Closed) -> None:
        name = path.name
        self._delivered.add(name)
        upload = Upload(path, name, closed.started_at, closed.mtime, closed.size, self._remote_addr)
        self._inbox.report(upload, closed.finished - closed.started)

    def _cannot_save(self, name: str, error: OSError) -> NoReturn:
        """The inbox refused a write (gone, unwritable, full): every upload will fail the
        same way until someone fixes it, so ERROR, with the reason the client is told too."""
        log.error(
            "cannot save the upload of %r from %s in %s: %s",
            name,
            self._remote_addr,
            self._dir,
            error.strerror or error,
        )
        raise SFTPFailure(f"The upload cannot be saved: {error.strerror or error}") from None

    def _discard(self, upload: _OpenUpload, why: str) -> None:
        log.warning(
            "discarding incomplete upload of %r from %s: %s", upload.name, self._remote_addr, why
        )
        try:
            if upload.fd_open:
                upload.fd_open = False
                os.close(upload.fd)
            upload.temp.unlink(missing_ok=True)
        except OSError:
            log.exception("could not remove %s", upload.temp)


def _split(path: bytes) -> list[str]:
    """The components of a client path, relative to the inbox presented as ``/``."""
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        raise SFTPPermissionDenied("File names must be UTF-8") from None
    return [part for part in text.split("/") if part not in ("", ".")]


def _inbox_name(path: bytes) -> str:
    """The file name a client path denotes in the inbox root; refuse any other path."""
    parts = _split(path)
    if len(parts) != 1:
        raise SFTPPermissionDenied("Only files directly in the inbox are accessible")
    name = parts[0]
    if len(name.encode()) > _MAX_NAME_BYTES:
        raise SFTPPermissionDenied(f"File name over {_MAX_NAME_BYTES} bytes")
    if name.startswith(".") or any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise SFTPPermissionDenied(f"File name not allowed: {name!r}")
    return name


def _upload_name(path: bytes) -> str:
    """The name an upload may take: an inbox name that is not one of the inbox's folders."""
    name = _inbox_name(path)
    if clashes(name) or clashes(_final_name(name)):
        raise SFTPPermissionDenied(
            f"File name not allowed: {name!r} is the name of one of the inbox's own folders"
        )
    return name


def _final_name(name: str) -> str:
    """``name`` without a partial-upload suffix (``loads.csv.part`` -> ``loads.csv``)."""
    lowered = name.lower()
    for suffix in PARTIAL_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _existing_file(path: Path) -> os.stat_result | None:
    """Stat a name in the inbox without following links; refuse anything but a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise SFTPPermissionDenied("Only files in the inbox are accessible")
    return st


def _is_partial(name: str) -> bool:
    return name.lower().endswith(PARTIAL_SUFFIXES)


def _as_upload(file_obj: object) -> _OpenUpload:
    if not isinstance(file_obj, _OpenUpload):  # only open() makes handles, so never expected
        raise SFTPPermissionDenied("Not an upload handle")
    return file_obj


def _mtime(attrs: SFTPAttrs) -> datetime | None:
    if attrs.mtime is None:
        return None
    try:
        return datetime.fromtimestamp(attrs.mtime, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _client_input_ended(chan: asyncssh.SSHServerChannel[bytes]) -> bool:
    """Whether the client can send no more requests on this channel.

    asyncssh calls ``SFTPServer.close`` both for a CLOSE request and, when the session ends, for
    every handle still open, and gives the hook no way to tell which. The cleanup only runs once
    the client's input has ended: the connection dropped (the channel is then closing) or the
    client sent EOF or closed the channel (the private ``_recv_state`` leaves ``"open"``). The
    tests that kill a client mid-upload pin this down for each case.
    """
    return chan.is_closing() or getattr(chan, "_recv_state", "open") != "open"


def _seal(upload: _OpenUpload) -> int:
    """Fsync and close a finished upload's file; return its size. Runs in a thread."""
    try:
        os.fsync(upload.fd)
        return os.fstat(upload.fd).st_size
    finally:
        upload.fd_open = False
        os.close(upload.fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _list_files(directory: Path) -> list[tuple[str, os.stat_result]]:
    """The regular, non-hidden files in ``directory``: what a client may see of the inbox."""
    files = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                files.append((entry.name, st))
    return sorted(files)


def remove_stale_temp_files(directory: Path) -> None:
    """Remove temporary upload files a crashed process left: they can never complete."""
    for path in directory.glob(f"{_TEMP_PREFIX}*"):
        log.warning("removing %s, left by an interrupted upload", path.name)
        path.unlink(missing_ok=True)
