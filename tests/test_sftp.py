"""The SFTP inbox, driven by the real OpenSSH clients (sftp, ssh, scp) against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
import pytest

from aljex_sync.sftp_settings import SftpSettings, host_key_fingerprint

from .support import (
    SFTP_PASSWORD,
    SFTP_USER,
    RunningInbox,
    inbox_servers,
    needs_ipv6,
    sftp_settings,
)

USER = SFTP_USER
TARGET = f"{USER}@127.0.0.1"
PASSWORD = SFTP_PASSWORD
CLIENT_TIMEOUT = 20
HOST = "127.0.0.1"
GCM = "aes128-gcm@openssh.com"

SSH_OPTIONS = [
    "-F", "/dev/null",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "PubkeyAuthentication=no",
    "-o", "PreferredAuthentications=password",
    "-o", "BatchMode=no",
    "-o", "NumberOfPasswordPrompts=1",
    "-o", "ConnectTimeout=10",
]  # fmt: skip


@pytest.fixture
def inbox_dir(tmp_path: Path) -> Path:
    inbox = tmp_path / "inbox"
    for sub in ("archive", "failed", "unmatched"):
        (inbox / sub).mkdir(parents=True)
    return inbox


@pytest.fixture
def settings(tmp_path: Path, inbox_dir: Path) -> SftpSettings:
    return sftp_settings(inbox_dir, tmp_path / "keys" / "ssh_host_ed25519_key")


@pytest.fixture
def serve(settings: SftpSettings) -> Iterator[Callable[..., RunningInbox]]:
    """Start servers with the test's settings (overridable); stop them all at teardown."""
    with inbox_servers(settings) as start:
        yield start


@pytest.fixture
def server(serve: Callable[..., RunningInbox]) -> RunningInbox:
    return serve()


class Client:
    """The OpenSSH command-line clients, logging in with a password through SSH_ASKPASS."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(exist_ok=True)

    def env(self, password: str) -> dict[str, str]:
        askpass = self.workdir / "askpass.sh"
        askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(password)}\n")
        askpass.chmod(0o700)
        return {
            **os.environ,
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0",
        }

    def sftp_command(
        self, port: int, commands: list[str], options: list[str], target: str = TARGET
    ) -> list[str]:
        batch = self.workdir / "batch"
        batch.write_text("".join(f"{command}\n" for command in commands))
        return ["sftp", *SSH_OPTIONS, *options, "-P", str(port), "-b", str(batch), target]

    def sftp(
        self,
        port: int,
        *commands: str,
        password: str = PASSWORD,
        options: tuple[str, ...] = (),
        host: str = HOST,
    ) -> subprocess.CompletedProcess[str]:
        target = f"{USER}@[{host}]" if ":" in host else f"{USER}@{host}"
        command = self.sftp_command(port, list(commands), list(options), target)
        return self.run(command, password)

    def ssh(
        self, port: int, *options: str, command: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["ssh", *SSH_OPTIONS, *options, "-p", str(port), TARGET, *command])

    def run(self, command: list[str], password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            env=self.env(password),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            check=False,
        )


@pytest.fixture
def client(tmp_path: Path) -> Client:
    return Client(tmp_path / "client")


@pytest.fixture
def local_csv(tmp_path: Path) -> Path:
    path = tmp_path / "local" / "loads.csv"
    path.parent.mkdir()
    path.write_bytes(b"load_id,shipper\n1001,ACME\n1002,Globex\n")
    return path


@pytest.fixture
def sftp_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="aljex_sync.sftp")
    return caplog


def visible_files(inbox: Path) -> set[str]:
    return {path.name for path in inbox.iterdir() if path.is_file()}


def assert_refused(result: subprocess.CompletedProcess[str]) -> None:
    """The client logged in, and the server refused the command with SFTP permission denied."""
    assert result.returncode != 0, result.stdout
    assert "sftp> " in result.stdout, result.stderr  # got past login to the command
    assert "Permission denied" in result.stderr, result.stderr


def test_put_uploads_file_once_with_its_bytes(
    server: RunningInbox, client: Client, local_csv: Path, sftp_log: pytest.LogCaptureFixture
) -> None:
    before = datetime.now(UTC)
    result = client.sftp(server.port, f'put "{local_csv}" loads.csv')
    assert result.returncode == 0, result.stderr

    upload = server.next_upload()
    assert upload.name == "loads.csv"
    assert upload.path == server.settings.inbox / "loads.csv"
    assert upload.path.read_bytes() == local_csv.read_bytes()
    assert upload.size == local_csv.stat().st_size
    assert before <= upload.started_at <= datetime.now(UTC)
    assert upload.started_at.tzinfo is not None
    assert upload.mtime is None
    assert upload.remote_addr == "127.0.0.1"
    assert visible_files(server.settings.inbox) == {"loads.csv"}
    assert server.stop() == []  # exactly once
    assert "login ok: user 'aljex' from 127.0.0.1" in sftp_log.text
    assert f"upload complete: 'loads.csv', {upload.size} bytes in" in sftp_log.text


def test_put_with_p_records_the_client_mtime(
    server: RunningInbox, client: Client, local_csv: Path
) -> None:
    os.utime(local_csv, (1_700_000_000, 1_700_000_000))
    result = client.sftp(server.port, f'put -p "{local_csv}" loads.csv')
    assert result.returncode == 0, result.stderr
    assert server.next_upload().mtime == datetime.fromtimestamp(1_700_000_000, UTC)


def test_listing_shows_uploads_but_not_temp_files_or_subfolders(
    server: RunningInbox, client: Client, local_csv: Path
) -> None:
    (server.settings.inbox / ".upload-0123-other.csv").write_text("half")
    result = client.sftp(server.port, f'put "{local_csv}" loads.csv', "pwd", "ls -1a")
    assert result.returncode == 0, result.stderr
    assert "Remote working directory: /" in result.stdout
    listing = result.stdout.split("ls -1a", 1)[1].split()
    assert listing == ["loads.csv"]


def test_wrong_password_is_refused_and_slowed(
    serve: Callable[..., RunningInbox], client: Client, sftp_log: pytest.LogCaptureFixture
) -> None:
    server = serve(failed_login_delay=0.6)
    started = time.monotonic()
    result = client.sftp(server.port, "ls", password="wrong")
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "Permission denied" in result.stderr
    assert elapsed >= 0.6
    assert "login failed: user 'aljex' from 127.0.0.1" in sftp_log.text


def test_wrong_user_is_refused(server: RunningInbox, client: Client) -> None:
    result = client.run(
        ["sftp", *SSH_OPTIONS, "-P", str(server.port), "-b", "/dev/null", "root@127.0.0.1"]
    )
    assert result.returncode != 0
    assert "Permission denied" in result.stderr


def test_repeated_failed_logins_lock_out_the_address_until_the_window_passes(
    serve: Callable[..., RunningInbox], client: Client, sftp_log: pytest.LogCaptureFixture
) -> None:
    window = 3.0  # generous: the locked attempt must land inside it on a slow machine
    server = serve(max_failed_logins=2, failed_login_window=window, failed_login_delay=0.05)
    for _ in range(2):
        assert client.sftp(server.port, "ls", password="guess").returncode != 0
    both_failed = time.monotonic()

    locked = client.sftp(server.port, "ls")  # the right password, from a locked-out address
    assert locked.returncode != 0
    assert "Too many failed logins" in locked.stderr
    assert "login refused: user 'aljex' from 127.0.0.1 is locked out" in sftp_log.text

    time.sleep(max(0.0, both_failed + window + 0.1 - time.monotonic()))
    assert client.sftp(server.port, "ls").returncode == 0


@needs_ipv6
def test_listening_on_every_ipv6_address_takes_ipv4_clients_too(
    serve: Callable[..., RunningInbox], client: Client, local_csv: Path
) -> None:
    """`[::]` means every address, as `0.0.0.0` does for IPv4: an IPv4 client connects too
    (asyncio alone makes it IPv6 only), and is seen as the IPv4 address it is."""
    server = serve(host="::")
    for n, host in enumerate(["127.0.0.1", "::1"]):
        result = client.sftp(server.port, f'put "{local_csv}" loads{n}.csv', host=host)
        assert result.returncode == 0, (host, result.stderr)
        upload = server.next_upload()
        assert (upload.name, upload.remote_addr) == (f"loads{n}.csv", host)


@needs_ipv6
def test_failed_logins_from_ipv6_are_counted_against_the_whole_64(
    serve: Callable[..., RunningInbox], client: Client, sftp_log: pytest.LogCaptureFixture
) -> None:
    """A client with a /64 has 2**64 addresses to turn through: the lockout counts the /64."""
    server = serve(host="::1", max_failed_logins=2, failed_login_delay=0.05)
    for _ in range(2):
        assert client.sftp(server.port, "ls", password="guess", host="::1").returncode != 0
    assert server.inbox is not None
    assert server.inbox.guard.failures("::/64") == 2
    assert server.inbox.guard.is_locked("::/64")
    locked = client.sftp(server.port, "ls", host="::1")
    assert "Too many failed logins" in locked.stderr
    assert "login refused: user 'aljex' from ::1 is locked out" in sftp_log.text


@pytest.mark.parametrize(
    "target",
    ["../loads.csv", "../../tmp/loads.csv", "/etc/loads.csv", "/../loads.csv", "x/../loads.csv"],
)
def test_paths_outside_the_inbox_are_refused(
    server: RunningInbox, client: Client, local_csv: Path, target: str
) -> None:
    assert_refused(client.sftp(server.port, f'put "{local_csv}" "{target}"'))
    assert visible_files(server.settings.inbox) == set()
    assert not (server.settings.inbox.parent / "loads.csv").exists()
    assert server.stop() == []


def test_writing_into_a_subfolder_is_refused(
    server: RunningInbox, client: Client, local_csv: Path
) -> None:
    assert_refused(client.sftp(server.port, f'put "{local_csv}" archive/loads.csv'))
    assert_refused(client.sftp(server.port, "cd archive"))
    assert list((server.settings.inbox / "archive").iterdir()) == []


@pytest.mark.parametrize("command", ["ln -s loads.csv link.csv", "ln loads.csv link.csv"])
def test_links_are_refused(
    server: RunningInbox, client: Client, local_csv: Path, command: str
) -> None:
    assert client.sftp(server.port, f'put "{local_csv}" loads.csv').returncode == 0
    assert_refused(client.sftp(server.port, command))
    assert visible_files(server.settings.inbox) == {"loads.csv"}


def test_reading_back_is_refused(
    server: RunningInbox, client: Client, local_csv: Path, tmp_path: Path
) -> None:
    assert client.sftp(server.port, f'put "{local_csv}" loads.csv').returncode == 0
    assert_refused(client.sftp(server.port, f'get loads.csv "{tmp_path / "back.csv"}"'))
    assert not (tmp_path / "back.csv").exists()


def test_open_modes_other_than_create_or_truncate_are_refused(server: RunningInbox) -> None:
    """Reading, appending and resuming can't be had through the sftp CLI, so ask asyncssh."""
    (server.settings.inbox / "loads.csv").write_text("load_id\n1001\n")

    async def attempt(name: str, mode: str | int) -> str:
        try:
            async with (
                asyncssh.connect(
                    "127.0.0.1",
                    server.port,
                    username=USER,
                    password=PASSWORD,
                    known_hosts=None,
                    client_keys=None,
                    config=None,
                ) as conn,
                conn.start_sftp_client() as sftp,
                sftp.open(name, mode) as file,
            ):
                async for _ in file.request_ranges(0, 1024):  # reads the layout: refused too
                    pass
                return "allowed"
        except asyncssh.SFTPPermissionDenied:
            return "refused"

    resume = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT
    modes: list[str | int] = ["rb", "r+b", "ab", resume]
    for mode in modes:
        assert asyncio.run(attempt("loads.csv", mode)) == "refused", mode
    assert asyncio.run(attempt("new.csv", "wb")) == "refused"
    assert (server.settings.inbox / "loads.csv").read_text() == "load_id\n1001\n"


@pytest.mark.parametrize("command", ["mkdir new", "rmdir archive", "rm archive"])
def test_directory_changes_are_refused(server: RunningInbox, client: Client, command: str) -> None:
    assert_refused(client.sftp(server.port, command))
    assert sorted(p.name for p in server.settings.inbox.iterdir()) == [
        "archive",
        "failed",
        "unmatched",
    ]


def test_preexisting_symlink_in_the_inbox_is_never_followed(
    server: RunningInbox, client: Client, local_csv: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text("secret")
    (server.settings.inbox / "evil.csv").symlink_to(outside)
    assert_refused(client.sftp(server.port, f'put "{local_csv}" evil.csv'))
    # sftp stats before it opens; the symlink is hidden from stat, so get sees no such file.
    assert client.sftp(server.port, f'get evil.csv "{tmp_path / "got.csv"}"').returncode != 0
    assert not (tmp_path / "got.csv").exists()
    assert "evil.csv" not in client.sftp(server.port, "ls -1").stdout
    assert outside.read_text() == "secret"


def test_remove_is_refused_except_for_own_partial_uploads(
    server: RunningInbox, client: Client, local_csv: Path
) -> None:
    (server.settings.inbox / "theirs.csv").write_text("placed by someone else")
    assert_refused(client.sftp(server.port, "rm theirs.csv"))
    result = client.sftp(server.port, f'put "{local_csv}" mine.csv.part', "rm mine.csv.part")
    assert result.returncode == 0, result.stderr
    assert visible_files(server.settings.inbox) == {"theirs.csv"}
    assert server.stop() == []


def test_part_upload_renamed_to_final_name_yields_one_upload_for_the_final_name(
    server: RunningInbox, client: Client, local_csv: Path
) -> None:
    result = client.sftp(
        server.port, f'put -p "{local_csv}" loads.csv.part', "rename loads.csv.part loads.csv"
    )
    assert result.returncode == 0, result.stderr
    uploads = server.stop()
    assert [upload.name for upload in uploads] == ["loads.csv"]
    assert uploads[0].path.read_bytes() == local_csv.read_bytes()
    assert uploads[0].mtime is not None
    assert visible_files(server.settings.inbox) == {"loads.csv"}


def test_partial_upload_never_renamed_is_removed_and_not_reported(
    server: RunningInbox, client: Client, local_csv: Path
) -> None:
    result = client.sftp(server.port, f'put "{local_csv}" loads.csv.filepart')
    assert result.returncode == 0, result.stderr
    assert server.stop() == []
    assert visible_files(server.settings.inbox) == set()


def test_file_over_the_size_limit_fails_and_is_not_reported(
    serve: Callable[..., RunningInbox], client: Client, tmp_path: Path
) -> None:
    server = serve(max_file_bytes=10_000)
    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * 50_000)
    result = client.sftp(server.port, f'put "{big}" big.csv')
    assert result.returncode != 0
    assert server.stop() == []
    assert list(server.settings.inbox.glob("*.csv")) == []
    assert list(server.settings.inbox.glob(".upload-*")) == []


@pytest.mark.parametrize(
    "kill_group",
    [True, False],
    ids=["whole client killed, connection drops", "sftp killed, ssh sends EOF"],
)
def test_client_killed_mid_upload_reports_nothing_and_leaves_no_partial(
    server: RunningInbox, client: Client, tmp_path: Path, kill_group: bool
) -> None:
    big = tmp_path / "big.csv"
    with big.open("wb") as file:
        for _ in range(50):
            file.write(os.urandom(1024 * 1024))
    command = client.sftp_command(server.port, [f'put "{big}" big.csv'], ["-l", "40000"])
    proc = subprocess.Popen(
        command,
        env=client.env(PASSWORD),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    inbox = server.settings.inbox
    try:
        deadline = time.monotonic() + 10
        while sum(p.stat().st_size for p in inbox.glob(".upload-*")) < 1_000_000:
            assert time.monotonic() < deadline, "upload did not start"
            time.sleep(0.01)
        if kill_group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(5)

        deadline = time.monotonic() + 10
        while list(inbox.glob(".upload-*")):
            assert time.monotonic() < deadline, "partial upload was not removed"
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the ssh child, if it is still around
        proc.wait(5)
    assert server.stop() == []
    assert visible_files(inbox) == set()


def test_failing_upload_callback_is_logged_and_serving_continues(
    server: RunningInbox, client: Client, local_csv: Path, sftp_log: pytest.LogCaptureFixture
) -> None:
    assert client.sftp(server.port, f'put "{local_csv}" boom.csv').returncode == 0
    assert server.next_upload().name == "boom.csv"
    assert client.sftp(server.port, f'put "{local_csv}" fine.csv').returncode == 0
    assert server.next_upload().name == "fine.csv"
    server.stop()
    assert "on_upload failed for" in sftp_log.text


def test_shell_and_exec_are_refused(server: RunningInbox, client: Client) -> None:
    exec_result = client.ssh(server.port, command=("true",))
    assert exec_result.returncode != 0
    assert "exec request failed" in exec_result.stderr
    shell_result = client.ssh(server.port, "-T")
    assert shell_result.returncode != 0
    assert "shell request failed" in shell_result.stderr


def test_scp_is_refused(server: RunningInbox, client: Client, local_csv: Path) -> None:
    legacy = client.run(
        ["scp", "-O", *SSH_OPTIONS, "-P", str(server.port), str(local_csv), f"{TARGET}:x.csv"]
    )
    assert legacy.returncode != 0
    assert "exec request failed" in legacy.stderr
    assert visible_files(server.settings.inbox) == set()


def test_scp_over_the_sftp_protocol_is_plain_sftp(
    server: RunningInbox, client: Client, local_csv: Path, tmp_path: Path
) -> None:
    """OpenSSH 9's scp speaks SFTP by default: it uploads like sftp, and cannot download."""
    scp = ["scp", *SSH_OPTIONS, "-P", str(server.port)]
    upload = client.run([*scp, str(local_csv), f"{TARGET}:loads.csv"])
    assert upload.returncode == 0, upload.stderr
    assert server.next_upload().name == "loads.csv"
    download = client.run([*scp, f"{TARGET}:loads.csv", str(tmp_path / "back.csv")])
    assert download.returncode != 0
    assert "Permission denied" in download.stderr
    assert not (tmp_path / "back.csv").exists()


def test_port_forwarding_is_refused(server: RunningInbox, client: Client) -> None:
    # The destination is the server itself, so only the server's refusal can make this fail.
    local = client.ssh(server.port, "-W", f"127.0.0.1:{server.port}")
    assert local.returncode != 0
    assert "open failed" in local.stderr
    remote = client.ssh(server.port, "-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9")
    assert remote.returncode != 0
    assert "remote port forwarding failed" in remote.stderr


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["-o", "KexAlgorithms=diffie-hellman-group14-sha1"], "no matching key exchange"),
        (["-o", "KexAlgorithms=diffie-hellman-group-exchange-sha256"], "no matching key exchange"),
        (["-o", "KexAlgorithms=diffie-hellman-group16-sha512"], "no matching key exchange"),
        (["-o", "Ciphers=aes128-cbc"], "no matching cipher"),
        (["-o", "Ciphers=aes128-ctr", "-o", "MACs=hmac-sha1"], "no matching MAC"),
        (["-o", "HostKeyAlgorithms=rsa-sha2-256"], "no matching host key type"),
        (["-o", "KexAlgorithms=ecdh-sha2-nistp256"], "no matching key exchange"),
        (["-o", "KexAlgorithms=ecdh-sha2-nistp521"], "no matching key exchange"),
        (["-o", "Ciphers=aes128-ctr", "-o", "MACs=hmac-sha2-256"], "no matching MAC"),
    ],
    ids=[
        "kex group14-sha1",
        "kex group-exchange",
        "kex group16",
        "cbc cipher",
        "sha1 mac",
        "rsa host key",
        "kex nistp256",
        "kex nistp521",
        "encrypt-and-mac sha256",
    ],
)
def test_only_modern_algorithms_are_offered(
    server: RunningInbox, client: Client, options: list[str], error: str
) -> None:
    result = client.sftp(server.port, "ls", options=tuple(options))
    assert result.returncode != 0
    assert error in result.stderr


@pytest.mark.parametrize(
    "options",
    [
        ["-o", "KexAlgorithms=curve25519-sha256", "-o", "Ciphers=chacha20-poly1305@openssh.com"],
        ["-o", "KexAlgorithms=curve25519-sha256@libssh.org", "-o", "Ciphers=" + GCM],
        ["-o", "Ciphers=aes256-ctr", "-o", "MACs=hmac-sha2-512-etm@openssh.com"],
        ["-o", "Ciphers=aes128-ctr", "-o", "MACs=hmac-sha2-256-etm@openssh.com"],
    ],
    ids=["curve25519 chacha20", "curve25519-libssh gcm", "ctr sha512-etm", "ctr sha256-etm"],
)
def test_modern_algorithms_are_accepted(
    server: RunningInbox, client: Client, options: list[str]
) -> None:
    result = client.sftp(server.port, "ls", options=tuple(options))
    assert result.returncode == 0, result.stderr


def test_host_key_persists_across_restarts(
    serve: Callable[..., RunningInbox], settings: SftpSettings
) -> None:
    first = serve()
    first.stop()
    second = serve()
    assert second.fingerprint == first.fingerprint
    assert host_key_fingerprint(settings.host_key) == first.fingerprint
    assert settings.host_key.stat().st_mode & 0o777 == 0o600
    shown = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(settings.host_key)],
        capture_output=True,
        text=True,
        check=True,
        timeout=CLIENT_TIMEOUT,
    )
    assert first.fingerprint in shown.stdout
    assert "ED25519" in shown.stdout


def test_temp_files_left_by_a_crash_are_removed_at_start(
    serve: Callable[..., RunningInbox], inbox_dir: Path
) -> None:
    (inbox_dir / ".upload-0123abcd-loads.csv").write_text("half a fi")
    (inbox_dir / "loads.csv").write_text("complete")
    serve()
    assert sorted(p.name for p in inbox_dir.iterdir() if p.is_file()) == ["loads.csv"]


def test_ssh_audit_finds_no_failures(server: RunningInbox) -> None:
    """ssh-audit (from PyPI) judges every algorithm the server offers: none may fail."""
    result = subprocess.run(
        [sys.executable, "-m", "ssh_audit", "-j", "--skip-rate-test", "-p", str(server.port), HOST],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    audit = json.loads(result.stdout)
    failures = [
        f"{section} {entry['algorithm']}: {entry['notes']['fail']}"
        for section in ("kex", "key", "enc", "mac")
        for entry in audit[section]
        if entry.get("notes", {}).get("fail")
    ]
    assert failures == []
    assert audit["cves"] == []
    assert not any(entry["algorithm"].startswith("ecdh-sha2-nistp") for entry in audit["kex"])
    assert all(entry["algorithm"].endswith("-etm@openssh.com") for entry in audit["mac"])


def test_ssh_banner_names_no_library_version(server: RunningInbox) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        banner = sock.makefile("rb").readline()
    assert banner == b"SSH-2.0-aljex-sync\r\n"


def test_parallel_password_guesses_are_checked_at_most_the_limit(
    serve: Callable[..., RunningInbox],
) -> None:
    """Each attempt takes its slot before the (slow) check: 40 at once get 5 checks, not 40.

    The connection limits are raised so that all 40 get as far as their password.
    """
    checks: list[str] = []
    lock = threading.Lock()

    def slow_check(password: str) -> bool:
        with lock:
            checks.append(password)
        time.sleep(0.3)
        return password == PASSWORD

    server = serve(
        check_password=slow_check,
        max_failed_logins=5,
        failed_login_delay=0.0,
        max_unauthenticated=40,
        max_unauthenticated_per_address=40,
        max_connections=40,
    )

    async def guess(n: int) -> str:
        try:
            async with asyncssh.connect(
                "127.0.0.1",
                server.port,
                username=USER,
                password=f"guess {n}",
                known_hosts=None,
                client_keys=None,
                config=None,
                preferred_auth="password",
            ):
                return "in"
        except asyncssh.PermissionDenied:
            return "refused"

    async def burst() -> list[str]:
        return await asyncio.gather(*(guess(n) for n in range(40)))

    outcomes = asyncio.run(burst())
    assert outcomes == ["refused"] * 40
    assert len(checks) == 5


@pytest.mark.parametrize("name", ["unmatched", "Archive", "FAILED", "held", "held.part"])
def test_names_of_the_inbox_folders_are_refused_at_upload(
    server: RunningInbox, client: Client, local_csv: Path, name: str
) -> None:
    result = client.sftp(server.port, f'put "{local_csv}" {name}')
    assert_refused(result)
    assert visible_files(server.settings.inbox) == set()
    assert server.stop() == []


def test_a_partial_upload_cannot_be_renamed_to_an_inbox_folder_name(
    server: RunningInbox, client: Client, local_csv: Path
) -> None:
    result = client.sftp(server.port, f'put "{local_csv}" x.part', "rename x.part Unmatched")
    assert_refused(result)
    assert server.stop() == []


def test_a_refused_upload_is_logged_with_its_reason(
    server: RunningInbox, client: Client, local_csv: Path, sftp_log: pytest.LogCaptureFixture
) -> None:
    """OpenSSH's sftp shows Aljex only "Permission denied": the reason must be in our log."""
    long_name = "c" * 300 + ".csv"
    assert_refused(client.sftp(server.port, f'put "{local_csv}" .hidden.csv'))
    assert_refused(client.sftp(server.port, f'put "{local_csv}" {long_name}'))
    refused = [r for r in sftp_log.records if "upload refused" in r.getMessage()]
    assert [r.levelname for r in refused] == ["WARNING", "WARNING"]
    assert "'.hidden.csv' from 127.0.0.1: File name not allowed" in refused[0].getMessage()
    assert "over 200 bytes" in refused[1].getMessage()


def test_an_inbox_that_cannot_be_written_fails_the_upload_with_an_error_logged(
    server: RunningInbox, client: Client, local_csv: Path, sftp_log: pytest.LogCaptureFixture
) -> None:
    """The folder gone (or unwritable, or the disk full): the upload fails, and the log says
    why at ERROR, since every upload will fail until someone fixes the inbox."""
    inbox = server.settings.inbox
    for folder in sorted(inbox.iterdir()):
        folder.rmdir()
    inbox.rmdir()
    result = client.sftp(server.port, f'put "{local_csv}" loads.csv')
    assert result.returncode != 0
    errors = [r.getMessage() for r in sftp_log.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"cannot save the upload of 'loads.csv' from 127.0.0.1 in {inbox}")
    assert "No such file or directory" in errors[0]
    assert server.stop() == []


def test_a_file_over_the_size_limit_is_logged_with_the_limit(
    serve: Callable[..., RunningInbox],
    client: Client,
    tmp_path: Path,
    sftp_log: pytest.LogCaptureFixture,
) -> None:
    server = serve(max_file_bytes=10_000)
    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * 50_000)
    assert client.sftp(server.port, f'put "{big}" big.csv').returncode != 0
    server.stop()
    discarded = [r for r in sftp_log.records if "discarding" in r.getMessage()]
    assert len(discarded) == 1 and discarded[0].levelname == "WARNING"
    assert "larger than the 10000 byte limit" in discarded[0].getMessage()
