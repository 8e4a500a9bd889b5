"""HTTPS on the Live Sync port: `init --tls-self-signed`, real TLS clients (httpx, Python's
ssl, OpenSSL's s_client), connections judged before their handshake, the start-up errors
for wrong files, and the warning for a password sent in clear."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from sqlalchemy import text

from aljex_sync import config, http_server
from aljex_sync.cli import main
from aljex_sync.config import LiveSettings
from aljex_sync.errors import ConfigError
from aljex_sync.service import bind, new_event_loop
from aljex_sync.tls import make_self_signed, plain_password_warning, server_context

from .support import TEST_PASSWORD, RunningService, make_settings
from .test_serve import assert_one_error_line, serving, write_config
from .test_slow_clients import connect_from, read_until_closed

LOOPBACK = {"ALJEX_SYNC_LIVE_LISTEN": "127.0.0.1:0", "ALJEX_SYNC_MORNING_LISTEN": "127.0.0.1:0"}
RECORD = {"web_sync_table_name": "loads", "web_sync_action": "create", "id": "7", "status": "OPEN"}


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that trusts ``cert`` alone and checks the host name."""
    return ssl.create_default_context(cafile=str(cert))


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls_cert.pem", tmp_path / "tls_key.pem"
    make_self_signed(cert, key, ["localhost", "127.0.0.1"])
    return cert, key


@pytest.fixture
def https_service(sqlite_url, tmp_path, pair):
    cert, key = pair
    settings = make_settings(
        sqlite_url, tmp_path, live={"tls_cert": str(cert), "tls_key": key.name}
    )
    with RunningService(settings) as running:
        yield running


def test_init_tls_self_signed_serves_https_and_a_record_posted_over_it_is_committed(tmp_path):
    path = tmp_path / "aljex-sync.toml"
    result = CliRunner().invoke(
        main, ["-c", str(path), "init", "--public-host", "localhost", "--tls-self-signed"]
    )
    assert result.exit_code == 0, result.output
    assert "URL:      https://localhost:8080/aljex/sync" in result.output
    password = re.search(r"Password: (\S+)", result.output).group(1)
    settings = config.load(path, env=LOOPBACK)
    assert settings.live.tls_cert == tmp_path / "tls_cert.pem"
    assert settings.live.tls_key is not None
    assert settings.live.tls_key.stat().st_mode & 0o777 == 0o600
    fingerprint = re.search(r"TLS: +self-signed, SHA-256 (\S+)", result.output).group(1)
    cert_der = ssl.PEM_cert_to_DER_cert(settings.live.tls_cert.read_text())
    assert fingerprint.replace(":", "").lower() == hashlib.sha256(cert_der).hexdigest()

    with RunningService(settings) as running:
        url = f"https://localhost:{running.service.http_port}{settings.live.path}"
        reply = httpx.post(
            url, data=RECORD, auth=("aljex", password), verify=trusting(settings.live.tls_cert)
        )
        assert reply.status_code == 200, reply.text
        with running.engine().connect() as conn:
            assert conn.execute(text("SELECT status FROM loads WHERE id = '7'")).scalar() == "OPEN"


def test_python_ssl_client_negotiates_tls_1_2_or_later_and_verifies_the_certificate(
    https_service, pair
):
    port = https_service.service.http_port
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        trusting(pair[0]).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.1 200")


def test_tls_1_1_is_refused(https_service):
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that only the server can say no
    with warnings.catch_warnings():  # Python deprecates TLS 1.1, which is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1_1
    port = https_service.service.http_port
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises((ssl.SSLError, ConnectionResetError)),
        client.wrap_socket(raw, server_hostname="localhost"),
    ):
        pass
    assert server_context(*_files(https_service)).minimum_version == ssl.TLSVersion.TLSv1_2


def _files(running: RunningService) -> tuple[Path, Path]:
    live = running.settings.live
    assert live.tls_cert is not None and live.tls_key is not None
    return live.tls_cert, live.tls_key


def said(caplog: pytest.LogCaptureFixture, words: str, within: float = 10.0) -> None:
    """Wait for the server (on its own thread) to log ``words``."""
    deadline = time.monotonic() + within
    while words not in caplog.text:
        assert time.monotonic() < deadline, f"never logged: {words}\n{caplog.text}"
        time.sleep(0.02)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_plain_http_on_the_https_port_gets_no_answer_and_is_counted(https_service, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(httpx.HTTPError):
        httpx.post(
            https_service.url.replace("https://", "http://"),
            data=RECORD,
            auth=("aljex", TEST_PASSWORD),
        )
    said(caplog, "closed a connection: plain HTTP sent to the HTTPS port")
    no_tracebacks(caplog)


def test_garbage_instead_of_a_handshake_is_closed_and_counted(https_service, caplog):
    with caplog.at_level(logging.WARNING):
        sock = socket.create_connection(("127.0.0.1", https_service.service.http_port), 10)
        sock.sendall(b"\x16\x03\x01\x00\x08garbage!" + os.urandom(64))
        assert read_until_closed(sock) == b""
        said(caplog, "closed a connection: TLS handshake failed (")
    no_tracebacks(caplog)


DEADLINE = 2.0  # header_timeout: the handshake's deadline, then the headers'


@pytest.fixture
def guarded_https(sqlite_url, tmp_path, pair):
    """HTTPS with a two-second handshake deadline, three connections per address, and
    only 127.0.0.1 and 127.0.0.2 allowed."""
    cert, key = pair
    live = {
        "tls_cert": str(cert),
        "tls_key": key.name,
        "header_timeout": DEADLINE,
        "max_connections_per_address": 3,
        "allow_ips": ["127.0.0.1/32", "127.0.0.2/32"],
    }
    with RunningService(make_settings(sqlite_url, tmp_path, live=live)) as running:
        yield running


def test_with_allow_ips_another_address_is_closed_before_any_handshake(guarded_https, caplog):
    """At once, and without a reply (none in clear could be read by a TLS client)."""
    with caplog.at_level(logging.WARNING, logger="aljex_sync.http"):
        started = time.monotonic()
        assert read_until_closed(connect_from(guarded_https, "127.0.0.3")) == b""
        assert time.monotonic() - started < DEADLINE / 2  # not the handshake's deadline
        with (
            connect_from(guarded_https, "127.0.0.3") as raw,
            pytest.raises(OSError),  # closed before the server said a word of TLS
            trusting(_files(guarded_https)[0]).wrap_socket(raw, server_hostname="localhost"),
        ):
            pass
    assert "closed a connection: address 127.0.0.3 not allowed" in caplog.text
    assert https_post(guarded_https, "127.0.0.2").status_code == 200


def test_connections_that_never_send_a_client_hello_are_capped_and_closed_at_the_deadline(
    guarded_https, caplog
):
    """The ones over the per-address cap are closed as they come; the others when the
    handshake's deadline passes, which counts them out again."""
    with caplog.at_level(logging.WARNING, logger="aljex_sync.http"):
        held = [connect_from(guarded_https, "127.0.0.2") for _ in range(3)]
        time.sleep(0.2)  # accepted and counted
        started = time.monotonic()
        for _ in range(3):
            assert read_until_closed(connect_from(guarded_https, "127.0.0.2")) == b""
        assert time.monotonic() - started < DEADLINE / 2
        for sock in held:
            assert read_until_closed(sock) == b""
        assert DEADLINE / 2 < time.monotonic() - started < DEADLINE + 5
    assert "closed a connection: over 3 connections from 127.0.0.2" in caplog.text
    assert f"closed a connection: TLS handshake not done within {DEADLINE:g} s" in caplog.text
    assert https_post(guarded_https, "127.0.0.2").status_code == 200
    no_tracebacks(caplog)


def test_after_the_handshake_the_headers_have_their_own_deadline(guarded_https):
    with (
        connect_from(guarded_https, "127.0.0.2") as raw,
        trusting(_files(guarded_https)[0]).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        started = time.monotonic()
        assert tls.recv(4096).startswith(b"HTTP/1.1 408 ")  # over TLS, as it is read
        assert DEADLINE / 2 < time.monotonic() - started < DEADLINE + 5


def https_post(running: RunningService, source: str, key: str = "7") -> httpx.Response:
    """A record posted over HTTPS from ``source``, a loopback address."""
    transport = httpx.HTTPTransport(verify=trusting(_files(running)[0]), local_address=source)
    with httpx.Client(transport=transport, timeout=10) as client:
        url = f"https://localhost:{running.service.http_port}{running.settings.live.path}"
        return client.post(url, data={**RECORD, "id": key}, auth=("aljex", TEST_PASSWORD))


def test_a_record_posted_over_https_is_committed_and_journaled_with_its_address(guarded_https):
    assert https_post(guarded_https, "127.0.0.2", key="8").status_code == 200
    with guarded_https.engine().connect() as conn:
        assert conn.execute(text("SELECT status FROM loads WHERE id = '8'")).scalar() == "OPEN"
        journaled = conn.execute(text("SELECT remote_addr FROM _aljex_events")).scalars()
        assert list(journaled) == ["127.0.0.2"]


@contextmanager
def edge(live: LiveSettings, context: ssl.SSLContext, loop: asyncio.AbstractEventLoop):
    """http_server's uvicorn on ``loop`` in a thread, serving an app that keeps each
    request's scope; yields the port and the scopes."""
    scopes: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = bind("127.0.0.1", 0, "test")
    server = uvicorn.Server(http_server.config(app, live, context))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    serving = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), loop)
    try:
        while not server.started:
            assert not serving.done(), serving.result()
            time.sleep(0.01)
        yield sock.getsockname()[1], scopes
    finally:
        server.should_exit = True
        serving.result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        sock.close()


@pytest.mark.parametrize(
    "loop", [new_event_loop, asyncio.new_event_loop], ids=["uvloop", "asyncio"]
)
def test_the_application_sees_https_and_the_client_address(tmp_path, pair, loop):
    live = make_settings("sqlite:///x.db", tmp_path, live={"header_timeout": DEADLINE}).live
    context = server_context(*pair)
    with edge(live, context, loop()) as (port, scopes):
        for _ in range(20):  # some clients' first bytes come before start_tls is called
            transport = httpx.HTTPTransport(verify=trusting(pair[0]), local_address="127.0.0.2")
            with httpx.Client(transport=transport, timeout=10) as client:
                assert client.get(f"https://localhost:{port}/x").text == "ok"
        with socket.create_connection(("127.0.0.1", port), 10) as idle:
            assert read_until_closed(idle) == b""  # the handshake's deadline, on this loop
    assert len(scopes) == 20
    assert {s["scheme"] for s in scopes} == {"https"}
    assert {s["client"][0] for s in scopes} == {"127.0.0.2"}


def test_openssl_s_client_verifies_the_certificate(https_service, pair):
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is not installed (CI=true: .ci/run installs it)")
        pytest.skip("openssl is not installed")
    port = https_service.service.http_port
    done = subprocess.run(
        [
            *("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"),
            *("-CAfile", str(pair[0]), "-verify_return_error", "-verify_hostname", "localhost"),
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Verify return code: 0 (ok)" in done.stdout
    assert re.search(r"Protocol *: TLSv1\.[23]|New, TLSv1\.[23]", done.stdout), done.stdout


def test_a_missing_certificate_is_an_error_naming_the_key(tmp_path, pair):
    with pytest.raises(ConfigError, match="does not exist") as caught:
        server_context(tmp_path / "nope.pem", pair[1])
    assert caught.value.key == "live.tls_cert"


def test_an_unreadable_key_is_an_error_naming_the_key(tmp_path, pair):
    with pytest.raises(ConfigError, match="cannot read") as caught:
        server_context(pair[0], tmp_path)  # a folder: root may read any file, not this
    assert caught.value.key == "live.tls_key"


def test_files_that_are_not_pem_are_errors_naming_their_key(tmp_path, pair):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="no PEM certificate") as caught:
        server_context(junk, pair[1])
    assert caught.value.key == "live.tls_cert"
    with pytest.raises(ConfigError, match="no PEM private key") as caught:
        server_context(pair[0], junk)
    assert caught.value.key == "live.tls_key"
    with pytest.raises(ConfigError, match="no PEM private key") as caught:
        server_context(pair[0], pair[0])  # the certificate given as the key
    assert caught.value.key == "live.tls_key"


def test_a_key_of_another_certificate_is_an_error_naming_the_key(tmp_path, pair):
    other = tmp_path / "other"
    make_self_signed(other / "cert.pem", other / "key.pem", ["localhost"])
    with pytest.raises(ConfigError, match="is not the key of the certificate") as caught:
        server_context(pair[0], other / "key.pem")
    assert caught.value.key == "live.tls_key"


def test_serve_with_a_mismatched_key_exits_with_one_line(tmp_path):
    make_self_signed(tmp_path / "cert.pem", tmp_path / "unused.pem", ["localhost"])
    make_self_signed(tmp_path / "other.pem", tmp_path / "key.pem", ["localhost"])
    path = write_config(tmp_path)
    path.write_text(
        path.read_text().replace("[live]\n", '[live]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n')
    )
    with serving(path) as serve:
        code, lines, _ = serve.finish()
    assert code == 1
    assert_one_error_line(lines, "live.tls_key", "key.pem", "is not the key of the certificate")


def test_a_certificate_without_its_key_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="together") as caught:
        make_settings("sqlite:///x.db", tmp_path, live={"tls_cert": "cert.pem"})
    assert caught.value.key == "live.tls_key"


@pytest.mark.parametrize(
    ("live", "warned"),
    [
        ({"listen": "0.0.0.0:0"}, True),
        ({"listen": "[::]:0"}, True),
        ({"listen": "127.0.0.1:0"}, False),
        ({"listen": "localhost:0"}, False),
        ({"listen": "0.0.0.0:0", "trusted_proxies": ["127.0.0.1/32"]}, False),
        ({"listen": "0.0.0.0:0", "tls_cert": "c.pem", "tls_key": "k.pem"}, False),
    ],
    ids=["any-ipv4", "any-ipv6", "loopback", "localhost", "behind-a-proxy", "tls"],
)
def test_which_configs_send_the_password_in_clear(tmp_path, live, warned):
    settings = make_settings("sqlite:///x.db", tmp_path, live=live)
    assert (plain_password_warning(settings.live) is not None) == warned


def test_serve_warns_at_start_up_when_the_password_would_cross_the_network_in_clear(
    sqlite_url, tmp_path, caplog
):
    settings = make_settings(sqlite_url, tmp_path, live={"listen": "0.0.0.0:0"})
    with caplog.at_level("WARNING", logger="aljex_sync"), RunningService(settings):
        pass
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "plain HTTP" in r.message]
    assert len(warnings) == 1
    assert "tls_cert" in warnings[0].message and "trusted_proxies" in warnings[0].message


def test_serve_says_nothing_of_the_kind_on_loopback(sqlite_url, tmp_path, caplog):
    with (
        caplog.at_level("WARNING", logger="aljex_sync"),
        RunningService(make_settings(sqlite_url, tmp_path)),
    ):
        pass
    assert not [r for r in caplog.records if "plain HTTP" in r.message]
