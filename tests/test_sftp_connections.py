"""The SFTP server's connection limits: idle or endless connections cannot starve the process.

Each SSH connection holds a file descriptor, and the SFTP server shares the process's
descriptors with Live Sync. A connection beyond a limit is closed as soon as it is
accepted, one not logged in within the login time is closed then, and the log says so in
one line per reason and interval, however many there are.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import asyncssh
import pytest

from aljex_sync import sftp_settings
from aljex_sync.http_server import RESERVED_DESCRIPTORS
from aljex_sync.sftp_login import ConnectionGate
from aljex_sync.sftp_settings import SftpSettings

from .support import (
    SFTP_PASSWORD,
    SFTP_USER,
    RunningInbox,
    RunningService,
    inbox_servers,
    make_settings,
    post_note,
    sftp_upload,
)
from .support import (
    sftp_settings as inbox_settings,
)

PROMPTLY = 2.0  # seconds: a refused connection is closed long before this


@pytest.fixture
def sftp_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="aljex_sync.sftp")
    return caplog


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., RunningInbox]]:
    """Start SFTP inboxes with the tests' settings, some overridden; stop them at teardown."""
    with inbox_servers(inbox_settings(tmp_path / "inbox", tmp_path / "host_key")) as start:
        yield start


def open_idle(port: int, count: int, source: str, stack: ExitStack) -> list[socket.socket]:
    """``count`` TCP connections to ``port`` from address ``source``, that never send a byte."""
    opened = []
    for _ in range(count):
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        opened.append(sock)
    return opened


def closed_within(socks: list[socket.socket], seconds: float) -> tuple[int, int]:
    """How many of ``socks`` the server closes within ``seconds``, and how many it keeps."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + seconds
    while selector.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)  # the banner of a kept connection, or the end
            except ConnectionResetError:
                data = b""
            if not data:
                selector.unregister(sock)
                closed += 1
    kept = len(selector.get_map())
    selector.close()
    return closed, kept


class Flood:
    """``count`` idle connections from ``source``, opened and held by a process of its own
    (as an attacker's would be, not waiting on this one's interpreter lock)."""

    def __init__(self, port: int, source: str, count: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.test_sftp_connections", str(port), source, str(count)],
            cwd=Path(__file__).parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the flood process ended without a word"
        self.closed, self.kept = (int(n) for n in line.split())

    def stop(self) -> None:
        """Close the connections still held, and end the process."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        assert self.process.wait(30) == 0
        self.process.stdout.close()


def flood(port: int, source: str, count: int) -> None:
    """The flood process: open the connections, say how many were closed and how many
    kept, and hold those until standard input ends."""
    with ExitStack() as stack:
        socks = open_idle(port, count, source, stack)
        closed, kept = closed_within(socks, PROMPTLY)
        print(closed, kept, flush=True)
        sys.stdin.read()


def upload_a_file(server: RunningInbox, tmp_path: Path) -> int:
    """Upload a small Loads.csv with OpenSSH's sftp; its exit code."""
    local = tmp_path / "Loads.csv"
    local.write_text("id\nL1\n")
    result = sftp_upload(server.port, [f"put {local}"], tmp_path / "client", password=SFTP_PASSWORD)
    return result.returncode


def lines_of(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The SFTP server's log lines that say ``text``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "aljex_sync.sftp" and text in r.getMessage()
    ]


def test_an_idle_flood_is_closed_at_once_while_uploads_and_live_sync_go_on(
    sqlite_url: str, tmp_path: Path, sftp_log: pytest.LogCaptureFixture
) -> None:
    """The trial's flood: idle connections to the SSH port. All but a few from the flooding
    address are closed at once; an upload from another address and Live Sync still work."""
    settings = make_settings(sqlite_url, tmp_path)
    per_address = sftp_settings.MAX_UNAUTHENTICATED_PER_ADDRESS
    count = 100
    with RunningService(settings) as running:
        assert running.service.sftp is not None
        port = running.service.sftp.port
        idle = Flood(port, "127.0.0.2", count)
        try:
            assert (idle.closed, idle.kept) == (count - per_address, per_address)
            local = tmp_path / "Customers.csv"
            local.write_text("id,name\nC1,Acme\n")
            result = sftp_upload(port, [f"put {local}"], tmp_path / "client")
            assert result.returncode == 0, result.stderr
            assert post_note(running) == 200
        finally:
            idle.stop()
    refused = lines_of(sftp_log, "SSH connection")
    assert refused[0] == (
        f"closed an SSH connection from 127.0.0.2: over {per_address} connections"
        " not logged in from one address"
    )
    # The rest in one line, written at the latest when the server stops.
    assert len(refused) == 2, refused
    assert refused[1].startswith(f"closed {count - per_address - 1} more SSH connection(s) in ")
    assert refused[1].endswith("not logged in from one address (most from 127.0.0.2)")


def test_connections_not_logged_in_are_capped_across_addresses(
    serve: Callable[..., RunningInbox], sftp_log: pytest.LogCaptureFixture
) -> None:
    """Past the cap, a newcomer takes the place of the oldest connection of the address
    with the most waiting; one from an address with as many as any other is refused."""
    server = serve(max_unauthenticated=4, max_unauthenticated_per_address=2)
    with ExitStack() as stack:
        first = open_idle(server.port, 2, "127.0.0.2", stack)
        second = open_idle(server.port, 2, "127.0.0.3", stack)
        assert closed_within([*first, *second], 0.5) == (0, 4)
        late = open_idle(server.port, 2, "127.0.0.4", stack)
        time.sleep(0.3)
        assert closed_within(late, 0.5) == (0, 2)  # each took an older one's place
        assert closed_within([first[0], second[0]], PROMPTLY) == (2, 0)
        assert closed_within([first[1], second[1]], 0.5) == (0, 2)
        refused = open_idle(server.port, 1, "127.0.0.4", stack)
        assert closed_within(refused, PROMPTLY) == (1, 0)
    assert lines_of(sftp_log, "closed an SSH connection") == [
        "closed an SSH connection from 127.0.0.2: not logged in; its place given to a"
        " connection from another address",
        "closed an SSH connection from 127.0.0.4: over 2 connections not logged in from"
        " one address",
    ]


def test_idle_connections_from_a_few_addresses_do_not_shut_out_an_upload(
    sqlite_url: str, tmp_path: Path, sftp_log: pytest.LogCaptureFixture
) -> None:
    """The attacker's trial: idle connections from three addresses filled every place for
    connections not logged in, and Aljex's uploads were refused for as long as they stayed."""
    settings = make_settings(sqlite_url, tmp_path)
    per_address = sftp_settings.MAX_UNAUTHENTICATED_PER_ADDRESS
    with RunningService(settings) as running:
        assert running.service.sftp is not None
        port = running.service.sftp.port
        floods = [Flood(port, f"127.0.0.{n}", per_address) for n in (31, 32, 33)]
        try:
            local = tmp_path / "Customers.csv"
            local.write_text("id,name\nC1,Acme\n")
            result = sftp_upload(port, [f"put {local}"], tmp_path / "client")
            assert result.returncode == 0, result.stderr
        finally:
            for idle in floods:
                idle.stop()
    assert lines_of(sftp_log, "its place given to a connection from another address")


def test_with_allow_ips_another_address_is_closed_before_the_banner(
    serve: Callable[..., RunningInbox], sftp_log: pytest.LogCaptureFixture
) -> None:
    server = serve(allow_ips=(ipaddress.ip_network("127.0.0.1/32"),))
    with ExitStack() as stack:
        stranger = open_idle(server.port, 1, "127.0.0.5", stack)
        assert closed_within(stranger, PROMPTLY) == (1, 0)
        known = open_idle(server.port, 1, "127.0.0.1", stack)
        assert closed_within(known, 0.5) == (0, 1)
    assert lines_of(sftp_log, "closed an SSH connection") == [
        "closed an SSH connection from 127.0.0.5: address not allowed"
    ]


def test_a_connection_not_logged_in_within_the_login_time_is_closed_and_logged(
    serve: Callable[..., RunningInbox], sftp_log: pytest.LogCaptureFixture
) -> None:
    server = serve(login_timeout=0.5)
    with ExitStack() as stack:
        idle = open_idle(server.port, 1, "127.0.0.1", stack)
        started = time.monotonic()
        assert closed_within(idle, PROMPTLY) == (1, 0)
        assert 0.4 < time.monotonic() - started < PROMPTLY
    assert lines_of(sftp_log, "closed an SSH connection") == [
        "closed an SSH connection from 127.0.0.1: not logged in within 0.5 s"
    ]


def test_logged_in_connections_are_capped_and_a_freed_place_takes_the_next(
    serve: Callable[..., RunningInbox], tmp_path: Path, sftp_log: pytest.LogCaptureFixture
) -> None:
    server = serve(max_connections=2)

    def upload() -> int:
        return upload_a_file(server, tmp_path)

    async def while_two_are_logged_in() -> tuple[int, int]:
        held = [await login(server.port) for _ in range(2)]
        refused = await asyncio.to_thread(upload)
        held.pop().close()
        await asyncio.sleep(0.2)
        uploaded = await asyncio.to_thread(upload)
        for conn in held:
            conn.close()
        return refused, uploaded

    refused, uploaded = asyncio.run(while_two_are_logged_in())
    assert refused != 0 and uploaded == 0
    assert server.next_upload().name == "Loads.csv"
    assert lines_of(sftp_log, "closed an SSH connection") == [
        "closed an SSH connection from 127.0.0.1: over 2 connections at once"
    ]


async def login(port: int) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        port,
        username=SFTP_USER,
        password=SFTP_PASSWORD,
        known_hosts=None,
        client_keys=None,
        config=None,
        preferred_auth="password",
    )


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def hold_open_uploads(
    conn: asyncssh.SSHClientConnection, tries: int
) -> tuple[list[asyncssh.SFTPClientFile], list[str]]:
    """Open ``tries`` uploads on a new session of ``conn`` and keep them open: the handles
    the server gave, and the reasons of the opens it refused."""
    sftp = await conn.start_sftp_client()
    held, refused = [], []
    for n in range(tries):
        try:
            held.append(await sftp.open(f"held-{id(conn)}-{n}.csv", "wb"))
        except asyncssh.SFTPFailure as e:
            refused.append(e.reason)
    return held, refused


def test_open_uploads_are_capped_per_session_and_in_total_and_descriptors_stay_bounded(
    serve: Callable[..., RunningInbox], tmp_path: Path, sftp_log: pytest.LogCaptureFixture
) -> None:
    """The trial's attack: sessions that open uploads by the hundred and never close them.
    Each session gets a few, all of them together a fixed number; the rest are refused with
    the reason, the process's descriptors stay bounded, and once a handle is closed an
    upload with OpenSSH's sftp goes through."""
    server = serve()
    per_session = sftp_settings.MAX_OPEN_UPLOADS_PER_SESSION
    in_total = sftp_settings.MAX_OPEN_UPLOADS
    sessions = in_total // per_session + 1
    tries = 200

    def upload() -> int:
        return upload_a_file(server, tmp_path)

    async def attack() -> tuple[list[int], set[str], int, int, int]:
        before = open_descriptors()
        conns = [await login(server.port) for _ in range(sessions)]
        results = [await hold_open_uploads(conn, tries) for conn in conns]
        grown = open_descriptors() - before
        held = [len(handles) for handles, _ in results]
        reasons = {reason for _, refused in results for reason in refused}
        refused_put = await asyncio.to_thread(upload)
        await results[0][0][0].close()  # completes an empty upload, and frees a place
        uploaded = await asyncio.to_thread(upload)
        for conn in conns:
            conn.close()
            await conn.wait_closed()
        return held, reasons, grown, refused_put, uploaded

    held, reasons, grown, refused_put, uploaded = asyncio.run(attack())
    assert held == [per_session] * (sessions - 1) + [0]
    assert reasons == {
        f"Too many uploads open at once: {per_session} in this session;"
        " close one before opening another",
        f"Too many uploads open at once: {in_total} on this server; try again once one is closed",
    }
    # Both ends of each session's socket, and the uploads' files: nothing per refused open.
    assert grown <= 2 * sessions + in_total + 4
    assert refused_put != 0 and uploaded == 0
    assert "Loads.csv" in {upload.name for upload in server.stop()}
    assert not [p for p in server.settings.inbox.iterdir() if p.name.startswith(".")]
    refusals = lines_of(sftp_log, "upload refused")
    # Per session the first refusal, then the count of the rest when it ends; and the put.
    assert len(refusals) == 2 * sessions + 1
    counted = sorted(r for r in refusals if "more times" in r)
    assert counted == [
        *[
            f"upload refused {tries - per_session - 1} more times from 127.0.0.1: too many"
            " uploads open at once"
        ]
        * (sessions - 1),
        f"upload refused {tries - 1} more times from 127.0.0.1: too many uploads open at once",
    ]
    levels = {r.levelname for r in sftp_log.records if "upload refused" in r.getMessage()}
    assert levels == {"WARNING"}


def test_the_sftp_server_fits_in_the_descriptors_live_sync_leaves_to_the_rest() -> None:
    """Each connection holds a socket, open uploads a file each; asyncio accepts up to a
    backlog at once before any is refused (twice over, as Live Sync counts them)."""
    defaults = SftpSettings("127.0.0.1", 0, "u", bool, Path("inbox"), Path("key"))
    worst = defaults.max_connections + defaults.max_open_uploads + 2 * sftp_settings.SSH_BACKLOG
    assert worst <= RESERVED_DESCRIPTORS // 2
    assert defaults.max_unauthenticated_per_address < defaults.max_unauthenticated
    assert defaults.max_unauthenticated < defaults.max_connections
    assert defaults.max_open_uploads_per_session < defaults.max_open_uploads


if __name__ == "__main__":  # the flood process
    flood(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))


class _Conn:
    """A connection as the gate sees it: closed when it must give way, and then gone, as
    asyncssh reports it (``left``)."""

    def __init__(self, gate: ConnectionGate, addr: str) -> None:
        self.gate, self.addr, self.closed = gate, addr, False

    def give_way(self) -> None:
        self.closed = True

    def come(self) -> str | None:
        return self.gate.admit(self.addr, self)

    def gone(self) -> None:
        self.gate.left(self.addr, self)


def test_a_connection_that_began_to_log_in_never_gives_way_to_a_newer_one(tmp_path: Path) -> None:
    """The attacker's second trial: bare connections churned from 20 addresses evicted
    Aljex's own before its login was through. Once it logs in, only bare ones give way."""
    settings = replace(
        inbox_settings(tmp_path / "inbox", tmp_path / "key"),
        max_unauthenticated=3,
        max_unauthenticated_per_address=2,
    )
    gate = ConnectionGate(settings)
    aljex = _Conn(gate, "203.0.113.10")
    assert aljex.come() is None
    gate.logging_in(aljex.addr, aljex)
    bare = [_Conn(gate, "198.51.100.1"), _Conn(gate, "198.51.100.1")]
    assert [c.come() for c in bare] == [None, None]
    churned = []
    for n in range(2, 50):  # each from an address of its own, the last one's gone as it comes
        churned.append(_Conn(gate, f"198.51.100.{n}"))
        assert churned[-1].come() is None
        for conn in [*bare, *churned]:
            if conn.closed:
                conn.gone()
                conn.closed = None  # gone once
    assert aljex.closed is False  # first in line at every tie, yet never replaced
    assert [c.closed for c in bare] == [None, None]
    assert [c.closed for c in churned].count(None) == len(churned) - 2  # 2 places besides
    gate.logged_in(aljex.addr, aljex)
