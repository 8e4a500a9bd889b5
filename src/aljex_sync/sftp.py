"""The embedded SFTP server: an upload-only inbox for Aljex's Morning Sync files.

Aljex pushes one CSV per Aljex file each morning by SFTP, with a host, user and password the
customer gives it. The server accepts exactly that and nothing else: password login for one user,
the ``sftp`` subsystem only (no shell, exec, scp or forwarding), and a flat inbox the client can
write new files into and list, but never read from, link in, or leave.

What the client may do, and why:

- open for write (create/truncate) a file directly in the inbox root, write it, fstat it, set its
  times (recorded as ``Upload.mtime``; permissions and owners are ignored), close it;
- list the inbox (regular files only; hidden names and the service's subfolders stay out of
  sight), stat its files, and resolve paths (the inbox is presented as ``/``);
- rename a file it uploaded under a partial name (``.part``, ``.tmp``, ``.filepart``) on this
  session, which is how careful clients publish a file; the rename replaces an existing file of
  the new name, so the inbox always holds the newest upload; one still not renamed when the
  session ends is removed, as nobody can finish it;
- remove such a partial upload of its own (clients clean up after a failed transfer); nothing
  else can be removed, so a client cannot delete what Aljex or the service put there.

Everything else is refused with SFTP permission denied: reads, links, directories, paths with a
directory part (``../``, ``archive/x.csv``, ``/etc/x``), names starting with ``.``, the names
of the inbox's own folders (``archive``, ``failed``, ``held``, ``unmatched``, in any case, which
would stand where the loader makes those folders), appending or
resuming (opening an existing file without truncating it: the upload would not hold the old
bytes), and any pre-existing symlink or non-regular file in the inbox.

An upload is complete only when the client sends an SFTP CLOSE for a handle whose every write
succeeded. Data goes to a hidden temporary file (``.upload-<random>-<name>``), which is fsynced
and renamed to its real name before the CLOSE is answered, so a watcher of the inbox never sees
a half-written file under its real name. A dropped connection leaves no partial file behind.
The ``on_upload`` callback then runs in the background: the file is already durable, and Aljex's
client should not wait on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import stat
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import asyncssh
from asyncssh import (
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPAttrs,
    SFTPFailure,
    SFTPFileAlreadyExists,
    SFTPName,
    SFTPNoSuchFile,
    SFTPPermissionDenied,
    SFTPVFSAttrs,
)
from asyncssh.crypto import mlkem_available

from .errors import ConfigError
from .folders import clashes

log = logging.getLogger("aljex_sync.sftp")

#: Key exchanges offered: Curve25519, after the post-quantum hybrid where the cryptography
#: library provides ML-KEM. No NIST P-curves (ssh-audit fails them: their constants are
#: unexplained), no group exchange (asyncssh would hand out a 1024-bit group to a client that
#: asks for one), and no fixed finite-field groups, which the cryptography library deprecates.
KEX_ALGORITHMS = (
    *(("mlkem768x25519-sha256",) if mlkem_available else ()),
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
)
#: Ciphers offered: AEAD only (their integrity is built in), then AES-CTR, which is offered
#: with the encrypt-then-MAC MACs only. No CBC, no RC4, no 3DES.
CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
#: MACs offered (used with the CTR ciphers only): encrypt-then-MAC only, as MAC-then-encrypt
#: makes the receiver decrypt what it has not authenticated. No SHA-1, no MD5, no truncation.
MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
)
#: The software version in the server's SSH banner: the name only, so the banner does not
#: tell a scanner which library version, and which of its bugs, it is talking to.
SERVER_VERSION = "aljex-sync"
#: Host key signature algorithm; the host key is always ed25519.
HOST_KEY_ALGORITHM = "ssh-ed25519"

#: A closed upload whose name ends with one of these is not reported until renamed.
PARTIAL_SUFFIXES = (".part", ".tmp", ".filepart")

_TEMP_PREFIX = ".upload-"
# Leaves room for the temporary prefix within the usual 255-byte file name limit.
_MAX_NAME_BYTES = 200
_LOGIN_TIMEOUT = 60.0
_SESSION_EXIT_TIMEOUT = 10.0


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


@dataclass(frozen=True)
class SftpSettings:
    """Where and how to serve the inbox; the limits keep one bad client from doing much harm."""

    host: str
    port: int  # 0 = pick a free port (tests)
    username: str
    # Given the presented password; it may be slow (scrypt/argon2), so it runs in a thread.
    check_password: Callable[[str], bool]
    inbox: Path
    host_key: Path  # ed25519, generated once if missing (0600), then reused
    max_file_bytes: int = 4 * 1024**3
    max_failed_logins: int = 5  # per source address within failed_login_window
    failed_login_window: float = 300.0
    failed_login_delay: float = 1.0  # seconds each failed password attempt is slowed by


def host_key_fingerprint(path: Path) -> str:
    """Load the host key (generating it on first use) and return its OpenSSH SHA256 fingerprint.

    The customer gives this to Aljex, so it must be stable across restarts.
    """
    return _load_or_create_host_key(path).get_fingerprint("sha256")


class SftpInbox:
    """The SFTP server: serves ``settings.inbox`` and reports each complete upload."""

    def __init__(
        self, settings: SftpSettings, on_upload: Callable[[Upload], Awaitable[None]]
    ) -> None:
        self.settings = settings
        self._on_upload = on_upload
        self._guard = _LoginGuard(settings.max_failed_logins, settings.failed_login_window)
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._fingerprint: str | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._sessions: set[_InboxSFTPServer] = set()
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()
        self._callbacks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Load or create the host key, tidy the inbox, and start listening."""
        settings = self.settings
        key = _load_or_create_host_key(settings.host_key)
        self._fingerprint = key.get_fingerprint("sha256")
        settings.inbox.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_files(settings.inbox)
        self._acceptor = await asyncssh.create_server(
            lambda: _InboxSSHServer(self),
            settings.host,
            settings.port,
            server_host_keys=[key],
            kex_algs=list(KEX_ALGORITHMS),
            encryption_algs=list(CIPHERS),
            mac_algs=list(MACS),
            signature_algs=[HOST_KEY_ALGORITHM],
            server_version=SERVER_VERSION,
            compression_algs=["none"],
            password_auth=True,
            public_key_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            gss_host=None,
            login_timeout=_LOGIN_TIMEOUT,
            # Only the sftp subsystem: no session factory means shell and exec are refused.
            sftp_factory=lambda chan: _InboxSFTPServer(chan, self),
            allow_scp=False,
            process_factory=None,
            session_factory=None,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
        )
        log.info(
            "SFTP inbox %s listening on %s:%d, host key %s",
            settings.inbox,
            settings.host,
            self.port,
            self._fingerprint,
        )

    @property
    def port(self) -> int:
        """The bound port (useful when port 0 was asked)."""
        if self._acceptor is None:
            raise RuntimeError("SftpInbox is not started")
        return self._acceptor.get_port()

    @property
    def fingerprint(self) -> str:
        """The host key's ``SHA256:...`` fingerprint, as OpenSSH shows it."""
        if self._fingerprint is None:
            raise RuntimeError("SftpInbox is not started")
        return self._fingerprint

    async def close(self) -> None:
        """Stop accepting, close connections, discard their unfinished uploads, await callbacks."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        connections = list(self._connections)
        for conn in connections:
            conn.close()
        for conn in connections:
            await conn.wait_closed()
        try:
            await asyncio.wait_for(self._no_sessions.wait(), _SESSION_EXIT_TIMEOUT)
        except TimeoutError:
            log.warning("%d SFTP sessions did not end in time", len(self._sessions))
        await asyncio.gather(*self._callbacks)

    def _session_started(self, session: _InboxSFTPServer) -> None:
        self._sessions.add(session)
        self._no_sessions.clear()

    def _session_ended(self, session: _InboxSFTPServer) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._no_sessions.set()

    def _report(self, upload: Upload, duration: float) -> None:
        log.info(
            "upload complete: %r, %d bytes in %.2f s from %s",
            upload.name,
            upload.size,
            duration,
            upload.remote_addr,
        )
        task = asyncio.get_running_loop().create_task(self._run_callback(upload))
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)

    async def _run_callback(self, upload: Upload) -> None:
        try:
            await self._on_upload(upload)
        except Exception:
            log.exception("on_upload failed for %s; the file stays in the inbox", upload.path)


class _LoginGuard:
    """Counts login attempts per source address, so password guessing from one place stops early.

    An attempt takes its slot before the password is checked, and gives it back only if the
    password was right: a burst of parallel guesses can never get more than ``limit`` checks
    in one window, however slow each check is.
    """

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._attempts: dict[str, deque[float]] = {}

    def is_locked(self, addr: str) -> bool:
        self._forget_old()
        return len(self._attempts.get(addr, ())) >= self._limit

    def reserve(self, addr: str) -> float | None:
        """Take a slot for one password check; None when the address is locked out."""
        self._forget_old()
        attempts = self._attempts.setdefault(addr, deque())
        if len(attempts) >= self._limit:
            return None
        slot = time.monotonic()
        attempts.append(slot)
        return slot

    def release(self, addr: str, slot: float) -> None:
        """Give back the slot of an attempt that succeeded: it is no failure."""
        attempts = self._attempts.get(addr)
        if attempts is not None and slot in attempts:
            attempts.remove(slot)

    def failures(self, addr: str) -> int:
        return len(self._attempts.get(addr, ()))

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - self._window
        for addr, attempts in list(self._attempts.items()):
            while attempts and attempts[0] <= cutoff:
                attempts.popleft()
            if not attempts:
                del self._attempts[addr]


class _InboxSSHServer(asyncssh.SSHServer):
    """One SSH connection: password login for the configured user, with the lockout."""

    def __init__(self, inbox: SftpInbox) -> None:
        self._inbox = inbox
        self._settings = inbox.settings
        self._conn: asyncssh.SSHServerConnection | None = None
        self._addr = "unknown"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._addr = _peer_address(conn)
        self._inbox._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._inbox._connections.discard(self._conn)

    async def begin_auth(self, username: str) -> bool:
        self._refuse_if_locked(username)
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    async def validate_password(self, username: str, password: str) -> bool:
        guard = self._inbox._guard
        slot = guard.reserve(self._addr)
        if slot is None:
            self._refuse(username)
        user_ok = hmac.compare_digest(username.encode(), self._settings.username.encode())
        # Checked even for a wrong user, so the answer takes as long either way.
        try:
            password_ok = await asyncio.to_thread(self._settings.check_password, password)
        except Exception:
            log.exception("check_password raised; treating the login as failed")
            password_ok = False
        if user_ok and password_ok:
            guard.release(self._addr, slot)
            log.info("login ok: user %r from %s", username, self._addr)
            return True
        log.warning(
            "login failed: user %r from %s (%d of %d allowed in %.0f s)",
            username,
            self._addr,
            guard.failures(self._addr),
            self._settings.max_failed_logins,
            self._settings.failed_login_window,
        )
        await asyncio.sleep(self._settings.failed_login_delay)
        return False

    def _refuse_if_locked(self, username: str) -> None:
        if self._inbox._guard.is_locked(self._addr):
            self._refuse(username)

    def _refuse(self, username: str) -> NoReturn:
        log.warning("login refused: user %r from %s is locked out", username, self._addr)
        raise asyncssh.PermissionDenied("Too many failed logins; try again later")


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
    fd_open: bool = True

    def seek(self, offset: int, whence: int = 0) -> int:
        """Refuse asyncssh's ``ranges`` extension, which reads a file's layout through seek."""
        raise SFTPPermissionDenied("Uploads cannot be read back")


@dataclass(frozen=True)
class _Closed:
    """A closed, fsynced upload under a partial name, waiting for its rename to a final name."""

    started_at: datetime
    started: float
    finished: float
    mtime: datetime | None
    size: int


class _InboxSFTPServer(asyncssh.SFTPServer):
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
        self._remote_addr = _peer_address(self.connection)
        self._open: set[_OpenUpload] = set()
        self._partials: dict[str, _Closed] = {}  # closed, under a partial name, not renamed
        self._delivered: set[str] = set()  # reported in this session
        inbox._session_started(self)

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
        if pflags & FXF_READ or not pflags & FXF_WRITE:
            raise SFTPPermissionDenied("This inbox only accepts uploads; files cannot be read")
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
        temp = self._dir / f"{_TEMP_PREFIX}{secrets.token_hex(8)}-{name}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600)
        upload = _OpenUpload(name, temp, fd, datetime.now(UTC), time.monotonic())
        self._open.add(upload)
        return upload

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        upload = _as_upload(file_obj)
        if upload.failed:
            raise SFTPFailure("An earlier write failed; this upload is discarded")
        if offset + len(data) > self._max_bytes:
            upload.failed = True
            raise SFTPFailure(f"File larger than the {self._max_bytes} byte limit")
        try:
            view = memoryview(data)
            while view:
                written = os.pwrite(upload.fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError:
            upload.failed = True
            raise
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
            self._discard(upload, "a write failed")
            raise SFTPFailure("Upload failed and was discarded")
        try:
            size = await asyncio.to_thread(_seal, upload)
            os.replace(upload.temp, self._dir / upload.name)
            await asyncio.to_thread(_fsync_dir, self._dir)
        except OSError:
            self._discard(upload, "it could not be saved")
            raise
        closed = _Closed(upload.started_at, upload.started, time.monotonic(), upload.mtime, size)
        if _is_partial(upload.name):
            self._partials[upload.name] = closed
        else:
            self._deliver(upload.name, closed)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        """Publish a partial upload of this session under its final name (replacing any)."""
        old, new = _inbox_name(oldpath), _upload_name(newpath)
        closed = self._partials.get(old)
        if closed is None:
            raise SFTPPermissionDenied("Only your own finished partial uploads can be renamed")
        _existing_file(self._dir / new)
        os.replace(self._dir / old, self._dir / new)
        del self._partials[old]
        await asyncio.to_thread(_fsync_dir, self._dir)
        if _is_partial(new):
            self._partials[new] = closed
        else:
            self._deliver(new, closed)

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
        self._inbox._session_ended(self)
        # asyncssh ends an SFTP session without an exit status, which scp (in its SFTP mode)
        # takes as a failure even after a good upload. No-op if the channel is already closed.
        self.channel.exit(0)

    def _deliver(self, name: str, closed: _Closed) -> None:
        self._delivered.add(name)
        upload = Upload(
            self._dir / name, name, closed.started_at, closed.mtime, closed.size, self._remote_addr
        )
        self._inbox._report(upload, closed.finished - closed.started)

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
    if (
        name.startswith(".")
        or len(name.encode()) > _MAX_NAME_BYTES
        or any(ord(char) < 32 or ord(char) == 127 for char in name)
    ):
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


def _remove_stale_temp_files(directory: Path) -> None:
    """Remove temporary upload files a crashed process left: they can never complete."""
    for path in directory.glob(f"{_TEMP_PREFIX}*"):
        log.warning("removing %s, left by an interrupted upload", path.name)
        path.unlink(missing_ok=True)


def _peer_address(conn: asyncssh.SSHServerConnection) -> str:
    peer = conn.get_extra_info("peername")
    return str(peer[0]) if peer else "unknown"


def _load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """Read the ed25519 host key, or create it (0600) if missing, so the fingerprint is stable."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key(HOST_KEY_ALGORITHM, comment="aljex-sync host key")
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(key.export_private_key("openssh"))
                file.flush()
                os.fsync(file.fileno())
            with contextlib.suppress(FileExistsError):  # a concurrent start won: keep its key
                os.link(temp, path)  # atomic create-if-absent
        finally:
            temp.unlink(missing_ok=True)
        log.info("generated SSH host key %s", path)
    try:
        key = asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise ConfigError("morning.host_key", f"cannot read {path}: {exc}") from exc
    if key.get_algorithm() != HOST_KEY_ALGORITHM:
        raise ConfigError(
            "morning.host_key",
            f"{path} is an {key.get_algorithm()} key; it must be {HOST_KEY_ALGORITHM}"
            " (remove it and a new one is generated)",
        )
    if path.stat().st_mode & 0o077:
        log.warning("host key %s is readable by other users; chmod 600 it", path)
    return key
