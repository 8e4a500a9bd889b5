"""HTTPS on the Live Sync port: `init --tls-self-signed`, real TLS clients (httpx, Python's
ssl, OpenSSL's s_client), the start-up errors for wrong files, and the warning for a
password sent in clear."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import warnings
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from aljex_sync import config
from aljex_sync.cli import main
from aljex_sync.errors import ConfigError
from aljex_sync.tls import make_self_signed, plain_password_warning, server_context

from .support import TEST_PASSWORD, RunningService, make_settings
from .test_serve import assert_one_error_line, serving, write_config

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


def test_plain_http_on_the_https_port_gets_no_answer(https_service):
    with pytest.raises(httpx.HTTPError):
        httpx.post(
            https_service.url.replace("https://", "http://"),
            data=RECORD,
            auth=("aljex", TEST_PASSWORD),
        )


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
