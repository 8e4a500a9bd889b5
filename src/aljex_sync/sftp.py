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
import logging
import socket
from collections.abc import Awaitable, Callable

import asyncssh

from .errors import ConfigError
from .folders import folder_problem
from .listening import listening_socket
from .settings import host_port
from .sftp_files import InboxSFTPServer, Upload, remove_stale_temp_files
from .sftp_login import ConnectionGate, InboxSSHServer, LoginGuard, closed_connections
from .sftp_settings import (
    CIPHERS,
    HOST_KEY_ALGORITHM,
    KEX_ALGORITHMS,
    MACS,
    SERVER_VERSION,
    SSH_BACKLOG,
    SftpSettings,
    load_or_create_host_key,
)

log = logging.getLogger("aljex_sync.sftp")

_SESSION_EXIT_TIMEOUT = 10.0


class SftpInbox:
    """The SFTP server: serves ``settings.inbox`` and reports each complete upload."""

    def __init__(
        self, settings: SftpSettings, on_upload: Callable[[Upload], Awaitable[None]]
    ) -> None:
        self.settings = settings
        self._on_upload = on_upload
        self.guard = LoginGuard(settings.max_failed_logins, settings.failed_login_window)
        self.gate = ConnectionGate(settings)
        self.closings = closed_connections()  # SSH connections closed, by reason
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._fingerprint: str | None = None
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._sessions: set[InboxSFTPServer] = set()
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()
        self._callbacks: set[asyncio.Task[None]] = set()

    async def start(self, *, key_in_use: bool = False) -> None:
        """Load or create the host key, tidy the inbox, and start listening.

        ``key_in_use``: whether morning files came here before, so that a host key made
        now is one Aljex has not been given (it was moved, or ``host_key`` points elsewhere):
        that is logged at WARNING, as Aljex will refuse the changed key. A key or inbox
        that cannot be made is a ConfigError; an OSError means the port cannot be listened on.
        """
        settings = self.settings
        key, created = load_or_create_host_key(settings.host_key)
        self._fingerprint = key.get_fingerprint("sha256")
        if created and key_in_use:
            log.warning(
                "generated a new SSH host key %s, fingerprint %s, though this receiver has taken"
                " morning files before: Aljex will see a changed host key and refuse to connect"
                " until it is given the new fingerprint (if the old key was moved or"
                " [morning] host_key is mistyped, stop, put it back and start again)",
                settings.host_key,
                self._fingerprint,
            )
        elif created:
            log.info(
                "generated SSH host key %s, fingerprint %s: give it to Aljex",
                settings.host_key,
                self._fingerprint,
            )
        try:
            settings.inbox.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                "morning.inbox", folder_problem(settings.inbox, e, writing=False)
            ) from None
        remove_stale_temp_files(settings.inbox)
        # Bound here, not by asyncio: its servers take IPv6 only on [::] (listening.py).
        sock = listening_socket(settings.host, settings.port, SSH_BACKLOG)
        try:
            self._acceptor = await self._listen(sock, key)
        except BaseException:
            sock.close()
            raise
        log.info(
            "SFTP inbox %s listening on %s, host key %s",
            settings.inbox,
            host_port(settings.host, self.port),
            self._fingerprint,
        )

    async def _listen(self, sock: socket.socket, key: asyncssh.SSHKey) -> asyncssh.SSHAcceptor:
        """The SSH server on ``sock``: what it offers, and what it refuses."""
        return await asyncssh.create_server(
            lambda: InboxSSHServer(self),
            sock=sock,
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
            # InboxSSHServer keeps settings.login_timeout itself, and logs what it closes.
            login_timeout=0,
            backlog=SSH_BACKLOG,
            # Only the sftp subsystem: no session factory means shell and exec are refused.
            sftp_factory=lambda chan: InboxSFTPServer(chan, self),
            allow_scp=False,
            process_factory=None,
            session_factory=None,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
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
        connections = list(self.connections)
        for conn in connections:
            conn.close()
        for conn in connections:
            await conn.wait_closed()
        try:
            await asyncio.wait_for(self._no_sessions.wait(), _SESSION_EXIT_TIMEOUT)
        except TimeoutError:
            log.warning("%d SFTP sessions did not end in time", len(self._sessions))
        await asyncio.gather(*self._callbacks)
        self.closings.flush()

    def session_started(self, session: InboxSFTPServer) -> None:
        self._sessions.add(session)
        self._no_sessions.clear()

    def open_uploads(self) -> int:
        """Upload handles open across all sessions: each holds a file descriptor."""
        return sum(session.open_uploads for session in self._sessions)

    def session_ended(self, session: InboxSFTPServer) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._no_sessions.set()

    def report(self, upload: Upload, duration: float) -> None:
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
