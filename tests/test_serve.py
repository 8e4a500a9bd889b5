"""`aljex-sync serve` as a service manager runs it: a real process, its exit code and stderr.

A start that cannot succeed must end the process with status 1 and one line saying why,
so that systemd (or any supervisor) sees the failure and restarts it; a SIGTERM at any
moment must end it. The time bounds below only guard against a hang.
"""

from __future__ import annotations

import errno
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from aljex_sync.listening import listening_socket
from aljex_sync.service import bind

from .support import TEST_PASSWORD, needs_ipv6, sftp_upload

HANG_GUARD = 10.0  # seconds; a correct exit takes about one


def write_config(tmp_path: Path, *, http: str = "127.0.0.1:0", sftp: str = "127.0.0.1:0") -> Path:
    path = tmp_path / "aljex-sync.toml"
    path.write_text(
        f"""[database]
url = "sqlite:///aljex.db"
[live]
listen = "{http}"
password = "live-secret"
[morning]
listen = "{sftp}"
password = "sftp-secret"
"""
    )
    return path


class Serve:
    """A running `aljex-sync serve`, its stderr read line by line as it comes."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, *, level: str) -> None:
        self.started = time.monotonic()
        command = [sys.executable, "-m", "aljex_sync.cli", "--log-level", level]
        self.process = subprocess.Popen(
            [*command, "-c", str(config), "serve"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its children too can be ended, whatever happens
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for_line(self, text: str) -> str:
        deadline = time.monotonic() + 30
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"serve ended before logging {text!r}: {self.seen}"
            self.seen.append(line)
            if text in line:
                return line

    def finish(self) -> tuple[int, list[str], float]:
        """Wait for the exit (killing it after the hang guard); exit code, stderr, seconds."""
        try:
            code = self.process.wait(timeout=HANG_GUARD)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not exit within {HANG_GUARD} s")
        elapsed = time.monotonic() - self.started
        self._reader.join(5)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return code, self.seen, elapsed


@contextmanager
def serving(
    config: Path, env: dict[str, str] | None = None, *, level: str = "warning"
) -> Iterator[Serve]:
    serve = Serve(config, env, level=level)
    try:
        yield serve
    finally:
        with suppress(ProcessLookupError):
            os.killpg(serve.process.pid, signal.SIGKILL)
        serve.process.wait()
        serve._reader.join(5)
        assert serve.process.stderr is not None
        serve.process.stderr.close()


@contextmanager
def port_taken(host: str = "127.0.0.1") -> Iterator[int]:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def assert_one_error_line(lines: list[str], *expected: str) -> None:
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0]


def test_serve_exits_with_one_line_when_the_http_port_is_taken(tmp_path):
    with port_taken() as port, serving(write_config(tmp_path, http=f"127.0.0.1:{port}")) as serve:
        code, lines, _ = serve.finish()
    assert code == 1
    assert_one_error_line(lines, "Live Sync HTTP", f"127.0.0.1:{port}", "in use")


def test_serve_exits_with_one_line_when_the_sftp_port_is_taken(tmp_path):
    with port_taken() as port, serving(write_config(tmp_path, sftp=f"127.0.0.1:{port}")) as serve:
        code, lines, _ = serve.finish()
    assert code == 1
    assert_one_error_line(lines, "Morning Sync SFTP", f"127.0.0.1:{port}", "in use")


def test_a_taken_port_asks_whether_aljex_sync_is_already_running(tmp_path):
    with port_taken() as port, serving(write_config(tmp_path, http=f"127.0.0.1:{port}")) as serve:
        code, lines, _ = serve.finish()
    assert code == 1
    assert_one_error_line(lines, "in use (is aljex-sync already running?)")


def test_a_port_that_cannot_be_listened_on_says_why_by_its_errno():
    with port_taken() as port, pytest.raises(OSError) as taken:
        bind("127.0.0.1", port, "Live Sync HTTP")
    assert taken.value.errno == errno.EADDRINUSE
    assert str(taken.value) == (
        f"Live Sync HTTP: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_an_address_not_on_this_host_is_one_line_without_the_already_running_hint(tmp_path):
    config = write_config(tmp_path, http="192.0.2.1:8080")  # TEST-NET-1: on no host
    with serving(config) as serve:
        code, lines, _ = serve.finish()
    assert code == 1
    assert_one_error_line(lines, "Live Sync HTTP: cannot listen on 192.0.2.1:8080: ")
    assert "already running" not in lines[0] and "[Errno" not in lines[0]


@needs_ipv6
@pytest.mark.parametrize(
    ("key", "what"), [("http", "Live Sync HTTP"), ("sftp", "Morning Sync SFTP")]
)
def test_a_taken_ipv6_port_is_named_with_the_address_in_brackets(tmp_path, key, what):
    with (
        port_taken("::1") as port,
        serving(write_config(tmp_path, **{key: f"[::1]:{port}"})) as serve,
    ):
        code, lines, _ = serve.finish()
    assert code == 1
    assert_one_error_line(lines, f"{what}: cannot listen on [::1]:{port}: Address already in use")


@needs_ipv6
def test_serve_on_ipv6_writes_its_addresses_and_urls_with_the_address_in_brackets(tmp_path):
    """`::1:8080` cannot be pasted into a browser, nor read one way only."""
    port = free_port()
    with serving(
        write_config(tmp_path, http=f"[::1]:{port}", sftp="[::1]:0"), level="info"
    ) as serve:
        live = serve.wait_for_line("live sync listening on")
        sftp = serve.wait_for_line("SFTP inbox")
        assert live.endswith(f" live sync listening on http://[::1]:{port}/aljex/sync")
        assert re.search(r" listening on \[::1\]:[0-9]+, host key ", sftp), sftp
        health = httpx.get(f"http://[::1]:{port}/healthz", timeout=10, trust_env=False)
        assert health.status_code == 200
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "aljex_sync.cli",
                "-c",
                str(tmp_path / "aljex-sync.toml"),
                "status",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"Service: healthy (serve answers at http://[::1]:{port}/healthz)" in status.stdout
        serve.process.send_signal(signal.SIGTERM)
        code, _, _ = serve.finish()
    assert code == 0


@needs_ipv6
def test_serve_on_every_ipv6_address_takes_ipv4_and_ipv6_clients_on_both_ports(tmp_path):
    """`[::]` means every address, as `0.0.0.0` does for IPv4, on the HTTP port and the
    SFTP port alike, whatever the system's default for IPv6 sockets."""
    http, sftp = free_port(), free_port()
    config = write_config(tmp_path, http=f"[::]:{http}", sftp=f"[::]:{sftp}")
    with serving(config, level="info") as serve:
        serve.wait_for_line("SFTP inbox")
        for host in ("127.0.0.1", "[::1]"):
            reply = httpx.get(f"http://{host}:{http}/healthz", timeout=10, trust_env=False)
            assert reply.status_code == 200, host
            with socket.create_connection((host.strip("[]"), sftp), timeout=10) as ssh:
                assert ssh.recv(64).startswith(b"SSH-2.0-aljex-sync"), host
        serve.process.send_signal(signal.SIGTERM)
        code, _, _ = serve.finish()
    assert code == 0


@needs_ipv6
def test_a_socket_on_every_ipv6_address_takes_ipv4_whatever_the_system_default():
    """Linux's default is a sysctl (net.ipv6.bindv6only); the BSDs and Windows default to
    IPv6 only. serve turns it off itself."""
    with listening_socket("::", 0, backlog=1) as sock:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


@needs_ipv6
def test_check_finds_an_ipv4_listener_on_the_port_of_every_ipv6_address(tmp_path):
    """`[::]` takes IPv4 too, so a program on 127.0.0.1 at its port keeps serve from it."""
    with port_taken() as port:
        config = write_config(tmp_path, http=f"[::]:{port}")
        problems = check_problems(config, {})
    assert problems == [
        f"problem: live.listen: cannot listen on [::]:{port}: Address already in use"
        " (is aljex-sync already running?)"
    ]


def under_a_file(tmp_path: Path, *parts: str) -> Path:
    """A path whose parent folder would have to be made inside a plain file: no user, root
    included, can make it (a read-only folder would not stop root)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be\n")
    return blocker.joinpath(*parts)


def check_problems(config: Path, env: dict[str, str]) -> list[str]:
    """`aljex-sync check` on the same config and environment: its problem lines."""
    result = subprocess.run(
        [sys.executable, "-m", "aljex_sync.cli", "-c", str(config), "check"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith("problem: ")]


@pytest.mark.parametrize(
    ("variable", "key", "value", "folder"),
    [
        ("ALJEX_SYNC_MORNING_INBOX", "morning.inbox", ("inbox",), ("inbox",)),
        ("ALJEX_SYNC_MORNING_HOST_KEY", "morning.host_key", ("keys", "host_key"), ("keys",)),
    ],
    ids=["inbox", "host-key"],
)
def test_a_folder_serve_cannot_make_is_one_line_naming_it_not_the_port(
    tmp_path, variable, key, value, folder
):
    env = {variable: str(under_a_file(tmp_path, *value))}
    sftp = f"127.0.0.1:{free_port()}"
    with serving(write_config(tmp_path, sftp=sftp), env) as serve:
        code, lines, elapsed = serve.finish()
    assert code == 1 and elapsed < HANG_GUARD
    made = under_a_file(tmp_path, *folder)
    assert_one_error_line(lines, f"{key}: cannot make the folder {made}: Not a directory")
    assert "listen" not in lines[0]
    # check says the same, so that a check that passes means a start that does.
    assert check_problems(write_config(tmp_path, sftp=sftp), env) == [
        lines[0].replace("error: ", "problem: ", 1)
    ]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc on this system")
@pytest.mark.parametrize(
    ("variable", "key", "path", "folder"),
    [
        ("ALJEX_SYNC_MORNING_INBOX", "morning.inbox", "/proc/inbox", "/proc/inbox"),
        (
            "ALJEX_SYNC_MORNING_HOST_KEY",
            "morning.host_key",
            "/proc/sys/kernel/hk/key",
            "/proc/sys/kernel/hk",
        ),
    ],
    ids=["inbox", "host-key"],
)
def test_a_folder_under_proc_is_one_line_with_the_systems_reason(
    tmp_path, variable, key, path, folder
):
    """What an operator tried: even root cannot make a folder in /proc."""
    config = write_config(tmp_path)
    with serving(config, {variable: path}) as serve:
        code, lines, _ = serve.finish()
    assert code == 1
    assert_one_error_line(lines, f"{key}: cannot make the folder {folder}: ")
    assert check_problems(config, {variable: path}) == [lines[0].replace("error: ", "problem: ")]


def free_port() -> int:
    with port_taken() as port:
        return port


def other_ports() -> dict[str, str]:
    """Ports of its own for a second serve on one config, as an operator would give it."""
    return {
        "ALJEX_SYNC_LIVE_LISTEN": f"127.0.0.1:{free_port()}",
        "ALJEX_SYNC_MORNING_LISTEN": f"127.0.0.1:{free_port()}",
    }


def test_a_second_serve_on_the_same_sqlite_database_exits_with_one_line(tmp_path):
    config = write_config(tmp_path)
    with serving(config, level="info") as first:
        first.wait_for_line("SFTP inbox")
        with serving(config, other_ports()) as second:
            code, lines, _ = second.finish()
        assert first.process.poll() is None  # the first one serves on
    assert code == 1
    assert_one_error_line(
        lines,
        f"another aljex-sync serve (pid {first.process.pid}) is already using"
        f" sqlite:///{tmp_path / 'aljex.db'}; stop it first",
    )


def test_a_second_serve_on_the_same_inbox_exits_with_one_line(tmp_path):
    """Another database, the same inbox: both would take each upload."""
    config = write_config(tmp_path)
    with serving(config, level="info") as first:
        first.wait_for_line("SFTP inbox")
        other = {**other_ports(), "ALJEX_SYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"}
        with serving(config, other) as second:
            code, lines, _ = second.finish()
    assert code == 1
    assert_one_error_line(
        lines,
        f"another aljex-sync serve (pid {first.process.pid}) is already using the inbox"
        f" {tmp_path / 'inbox'}; stop it first",
    )
    assert not (tmp_path / "b.db").exists()  # refused before it touched anything


def test_the_locks_of_a_serve_killed_with_sigkill_are_free_at_once(tmp_path):
    """The kernel lets go of them with the process, even while its journal writer, a child
    of its own, outlives it for a moment."""
    config = write_config(tmp_path)
    with serving(config, level="info") as first:
        first.wait_for_line("SFTP inbox")
        os.kill(first.process.pid, signal.SIGKILL)  # serve alone, not its process group
        first.process.wait()
        with serving(config, level="info") as second:
            second.wait_for_line("SFTP inbox")
            second.process.send_signal(signal.SIGTERM)
            code, lines, _ = second.finish()
    assert code == 0, lines


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:{port}/test",
        "mysql://root@127.0.0.1:{port}/test",
        "sqlite:///{folder}/no/such/folder/aljex.db",
    ],
    ids=["postgresql", "mariadb", "sqlite"],
)
def test_serve_exits_with_one_line_when_the_database_is_unreachable(tmp_path, url):
    with port_taken() as port:  # bound, and listening; then closed: nothing answers there
        pass
    env = {"ALJEX_SYNC_DATABASE_URL": url.format(port=port, folder=tmp_path)}
    with serving(write_config(tmp_path), env) as serve:
        code, lines, _ = serve.finish()
    assert code == 1
    assert_one_error_line(lines, "cannot open the database")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"], ids=["empty", "memory"])
def test_serve_refuses_an_in_memory_sqlite_database_in_one_line(tmp_path, url):
    """The journal writer is a process of its own: it would never see the same database,
    and every record would be gone at the stop."""
    with serving(write_config(tmp_path), {"ALJEX_SYNC_DATABASE_URL": url}) as serve:
        code, lines, _ = serve.finish()
    assert code == 1
    assert_one_error_line(lines, "database.url: an in-memory SQLite database")


def test_serve_start_up_failure_prints_no_traceback_at_any_log_level(tmp_path):
    with (
        port_taken() as port,
        serving(write_config(tmp_path, sftp=f"127.0.0.1:{port}"), level="debug") as serve,
    ):
        code, lines, _ = serve.finish()
    assert code == 1
    assert not any("Traceback" in line for line in lines), lines
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]]


def test_sigterm_while_running_stops_cleanly(tmp_path):
    with serving(write_config(tmp_path), level="info") as serve:
        serve.wait_for_line("SFTP inbox")
        serve.process.send_signal(signal.SIGTERM)
        code, lines, _ = serve.finish()
    assert code == 0
    assert lines[-1].endswith("stopped")
    # Said as the signal comes: a stop waits for a morning load, which can take long.
    said = "stopping: finishing the requests and any morning load in flight (at most 30 s;"
    assert [line for line in lines if said in line], lines


def test_a_failed_start_says_only_why(tmp_path):
    """No "stopped" line before the error: the start failed, nothing was running."""
    with (
        port_taken() as port,
        serving(write_config(tmp_path, sftp=f"127.0.0.1:{port}"), level="info") as serve,
    ):
        code, lines, _ = serve.finish()
    assert code == 1
    assert lines[-1].startswith("error: ")
    assert not any("stop" in line for line in lines), lines


def test_a_signal_delivered_twice_at_once_still_stops_cleanly(tmp_path):
    """`timeout make serve` signals the process group and then serve: two signals, one stop."""
    with serving(write_config(tmp_path), level="info") as serve:
        serve.wait_for_line("SFTP inbox")
        serve.process.send_signal(signal.SIGTERM)
        serve.process.send_signal(signal.SIGINT)
        code, lines, _ = serve.finish()
    assert code == 0
    assert lines[-1].endswith("stopped")
    assert not any("abandoning" in line for line in lines)


def test_healthz_says_stopping_while_a_stop_finishes_what_is_in_flight(tmp_path):
    """After SIGTERM a morning load and a Live Sync request still run: /healthz answers 503
    "stopping" meanwhile, so a load balancer turns away, and the request still gets its 200
    once its record is committed."""
    port, sftp_port = free_port(), free_port()
    config = tmp_path / "aljex-sync.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///aljex.db"\ntimeout = 60\n'
        f'[live]\nlisten = "127.0.0.1:{port}"\npassword = "{TEST_PASSWORD}"\n'
        f'[morning]\nlisten = "127.0.0.1:{sftp_port}"\npassword = "{TEST_PASSWORD}"\n'
    )
    healthz = f"http://127.0.0.1:{port}/healthz"
    with serving(config, level="info") as serve:
        serve.wait_for_line("SFTP inbox")
        blocker = sqlite3.connect(tmp_path / "aljex.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # as a long merge holds it: the load lasts
        replies: queue.Queue[httpx.Response | Exception] = queue.Queue()

        def post() -> None:
            try:
                replies.put(
                    httpx.post(
                        f"http://127.0.0.1:{port}/aljex/sync",
                        content="web_sync_table_name=notes&web_sync_action=create&id=7",
                        auth=("aljex", TEST_PASSWORD),
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                        timeout=60,
                        trust_env=False,
                    )
                )
            except Exception as e:
                replies.put(e)

        try:
            local = tmp_path / "Customers.csv"
            local.write_text("id,name\nC1,Acme\n")
            upload = sftp_upload(sftp_port, [f"put {local}"], tmp_path / "client")
            assert upload.returncode == 0, upload.stderr
            deadline = time.monotonic() + 10
            while "a morning load" not in httpx.get(healthz, trust_env=False).text:
                assert time.monotonic() < deadline, "the load did not begin"
                time.sleep(0.05)
            sender = threading.Thread(target=post)
            sender.start()
            time.sleep(0.5)  # the request is in, waiting for the write lock
            serve.process.send_signal(signal.SIGTERM)
            serve.wait_for_line("stopping: finishing the requests")
            answer = httpx.get(healthz, trust_env=False)
            assert (answer.status_code, answer.text) == (
                503,
                "stopping: finishing the requests and any morning load in flight\n",
            )
            assert replies.empty()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        sender.join(60)
        reply = replies.get(timeout=1)
        assert isinstance(reply, httpx.Response), reply
        assert reply.status_code == 200, reply.text
        code, lines, _ = serve.finish()
    assert code == 0, lines
    assert lines[-1].endswith("stopped")
    with sqlite3.connect(tmp_path / "aljex.db") as db:
        assert db.execute("SELECT id FROM notes").fetchall() == [("7",)]
        assert db.execute("SELECT id FROM customers").fetchall() == [("C1",)]


def _has_children(pid: int) -> bool:
    """Whether ``pid`` has started its journal's writer (through multiprocessing): serve has
    set its signal handlers by then. Other children do not count: importing asyncssh may
    run gcc for a moment (``ctypes.util.find_library``), before any handler is set."""
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            # The writer comes through multiprocessing's forkserver. A child that only
            # carries serve's own command line is a fork not yet exec'd (the gcc that
            # importing asyncssh runs), from before any handler is set.
            if b"multiprocessing" in command or b"journal_process" in command:
                return True
    return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigterm_while_starting_stops_at_once(tmp_path):
    """The database stays locked, so the start cannot finish; SIGTERM must still end it."""
    config = write_config(tmp_path)
    db = sqlite3.connect(tmp_path / "aljex.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("BEGIN IMMEDIATE")  # the journal cannot create its tables
    env = {"ALJEX_SYNC_DATABASE_TIMEOUT": "120"}
    try:
        with serving(config, env, level="info") as serve:
            deadline = time.monotonic() + 30
            while not _has_children(serve.process.pid):
                assert serve.process.poll() is None, "serve ended while starting"
                assert time.monotonic() < deadline, "serve did not start its journal"
                time.sleep(0.05)
            time.sleep(0.5)  # the journal's writer is waiting for the lock
            serve.process.send_signal(signal.SIGTERM)
            code, lines, _ = serve.finish()
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert code == 0, lines
    assert any("stopping while starting" in line for line in lines), lines
    assert not any("database" in line and "ready" in line for line in lines), lines
