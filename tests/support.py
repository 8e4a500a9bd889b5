"""Helpers the tests share: settings for a test, the service and the SFTP inbox in threads."""

from __future__ import annotations

import asyncio
import base64
import hmac
import os
import queue
import shlex
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import Engine, text

from aljex_sync import config
from aljex_sync.config import Settings
from aljex_sync.service import BackgroundService
from aljex_sync.sftp import SftpInbox
from aljex_sync.sftp_files import Upload
from aljex_sync.sftp_settings import SftpSettings
from aljex_sync.store.database import open_engine

TEST_PASSWORD = "s3cret-pass"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
SFTP_USER = "aljex"
SFTP_PASSWORD = "correct horse battery"


def make_settings(database_url: str, tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a test: loopback, port 0, a known password; sections override."""
    raw: dict[str, Any] = {
        "database": {"url": database_url},
        "live": {"listen": "127.0.0.1:0", "password": TEST_PASSWORD},
        "morning": {
            "listen": "127.0.0.1:0",
            "password": TEST_PASSWORD,
            "inbox": str(tmp_path / "inbox"),
            "host_key": str(tmp_path / "host_key"),
        },
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config.parse(raw, base=tmp_path)


class RunningService(BackgroundService):
    """The service in a background thread, with a way to open its database."""

    def engine(self) -> Engine:
        return open_engine(self.settings.database.url)


@contextmanager
def full_disk(engine: Engine) -> Iterator[None]:
    """PostgreSQL refusing every new journal row as a full disk does (SQLSTATE 53100),
    while it still reads; writes land again after the block."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION aljex_test_full() RETURNS trigger AS $$ BEGIN RAISE"
                " EXCEPTION 'could not extend file: No space left on device' USING"
                " ERRCODE = '53100'; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER aljex_test_full BEFORE INSERT ON _aljex_events"
                " FOR EACH ROW EXECUTE FUNCTION aljex_test_full()"
            )
        )
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER aljex_test_full ON _aljex_events"))
            conn.execute(text("DROP FUNCTION aljex_test_full()"))


def post_note(running: RunningService, key: str = "1", *, timeout: float = 30.0) -> int:
    """Live Sync: create record ``key`` of table ``notes``; the reply's status code."""
    body = urlencode({"web_sync_table_name": "notes", "web_sync_action": "create", "id": key})
    return httpx.post(
        running.url,
        content=body,
        auth=("aljex", TEST_PASSWORD),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=timeout,
    ).status_code


def raw_post(
    running: RunningService, body: str, password: str = TEST_PASSWORD, *, close: bool = False
) -> bytes:
    """A Live Sync POST as bytes on the wire, for tests that hold the socket themselves."""
    token = base64.b64encode(f"aljex:{password}".encode()).decode()
    headers = [
        f"POST {running.settings.live.path} HTTP/1.1",
        "Host: x",
        f"Authorization: Basic {token}",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {len(body.encode())}",
        *(["Connection: close"] if close else []),
    ]
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def open_from(source: str, port: int) -> socket.socket:
    """A connection to the service on loopback ``port`` from ``source`` (any 127.x)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes, then the socket closed."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def sftp_upload(
    port: int,
    commands: list[str],
    workdir: Path,
    *,
    password: str = TEST_PASSWORD,
    user: str = "aljex",
) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH's `sftp` in batch mode, logging in with a password via SSH_ASKPASS."""
    workdir.mkdir(parents=True, exist_ok=True)
    askpass = workdir / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(password)}\n")
    askpass.chmod(0o700)
    batch = workdir / "batch"
    batch.write_text("".join(f"{c}\n" for c in commands))
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
    env["DISPLAY"] = ":0"
    options = [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=no",
        "-F",
        "/dev/null",
    ]
    return subprocess.run(
        ["sftp", *options, "-P", str(port), "-b", str(batch), f"{user}@127.0.0.1"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class RunningInbox:
    """An SftpInbox on its own event loop in a background thread, as the service would run it."""

    def __init__(self, settings: SftpSettings) -> None:
        self.settings = settings
        self.uploads: queue.Queue[Upload] = queue.Queue()
        self.port = 0
        self.fingerprint = ""
        self.inbox: SftpInbox | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        inbox = SftpInbox(self.settings, self._on_upload)
        self.inbox = inbox  # for a test to look at its limits' counts
        await inbox.start()
        self.port, self.fingerprint = inbox.port, inbox.fingerprint
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await inbox.close()

    async def _on_upload(self, upload: Upload) -> None:
        self.uploads.put(upload)
        if upload.name.startswith("boom"):
            raise RuntimeError("the service choked on it")

    def next_upload(self, timeout: float = 5) -> Upload:
        return self.uploads.get(timeout=timeout)

    def stop(self) -> list[Upload]:
        """Close the server (which awaits its callbacks); return every Upload not yet taken."""
        if self._thread.is_alive():
            assert self._loop is not None and self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)
            assert not self._thread.is_alive(), "server did not stop"
        if self._error is not None:
            raise self._error
        uploads = []
        while not self.uploads.empty():
            uploads.append(self.uploads.get_nowait())
        return uploads


def sftp_settings(inbox: Path, host_key: Path) -> SftpSettings:
    """An SFTP inbox on a free loopback port, with the test user and a short login delay."""
    return SftpSettings(
        host="127.0.0.1",
        port=0,
        username=SFTP_USER,
        check_password=check_password,
        inbox=inbox,
        host_key=host_key,
        failed_login_delay=0.1,
    )


def check_password(password: str) -> bool:
    return hmac.compare_digest(password.encode(), SFTP_PASSWORD.encode())


@contextmanager
def inbox_servers(settings: SftpSettings) -> Iterator[Callable[..., RunningInbox]]:
    """Start SFTP inboxes with ``settings``, some overridden; stop them all on the way out."""
    running: list[RunningInbox] = []

    def start(**overrides: Any) -> RunningInbox:
        server = RunningInbox(replace(settings, **overrides))
        running.append(server)
        return server

    try:
        yield start
    finally:
        for server in running:
            server.stop()
