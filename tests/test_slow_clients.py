"""Slow and excess clients: header and body deadlines, a header size cap, a connection cap,
a pipeline cap.

Real sockets on loopback against the running service; every wait is bounded.
"""

from __future__ import annotations

import base64
import logging
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlencode

import httpx
import pytest

from aljex_sync import http_server
from aljex_sync.http_server import MAX_PIPELINED

from .support import TEST_PASSWORD, RunningService, make_settings, post_note

BODY = urlencode({"web_sync_table_name": "notes", "web_sync_action": "create", "id": "1"})
AUTH = base64.b64encode(f"aljex:{TEST_PASSWORD}".encode()).decode()


@pytest.fixture
def impatient(tmp_path, sqlite_url):
    """The service with half-second deadlines and room for 20 connections."""
    settings = make_settings(
        sqlite_url,
        tmp_path,
        live={"header_timeout": 0.5, "body_timeout": 0.5, "max_connections": 20},
    )
    with RunningService(settings) as running:
        yield running


def connect(running: RunningService) -> socket.socket:
    assert running.service.http_port is not None
    sock = socket.create_connection(("127.0.0.1", running.service.http_port), timeout=10)
    return sock


def normal_post(running: RunningService, key: str = "1") -> int:
    return post_note(running, key, timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; raises TimeoutError if it never does."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    return b"".join(chunks)


def test_headers_sent_byte_by_byte_are_cut_at_the_header_timeout(impatient):
    sock = connect(impatient)
    request = f"POST {impatient.settings.live.path} HTTP/1.1\r\nHost: x\r\n" + "X-A: b\r\n" * 100
    closed = False
    for byte in request.encode():  # one byte every 20 ms: 20 s for the whole, if let be
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if byte == ord("\n"):
            assert normal_post(impatient) == 200  # others are served meanwhile
        time.sleep(0.02)
        sock.settimeout(0)
        try:
            if sock.recv(65536, socket.MSG_PEEK) is not None:
                closed = True
                break
        except BlockingIOError:
            pass
        finally:
            sock.settimeout(10)
    assert closed
    assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_connection_that_sends_nothing_is_closed(impatient):
    sock = connect(impatient)
    assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_body_that_stalls_is_cut_logged_once_and_journaled_as_rejected(impatient, caplog):
    """The server stops waiting for the body: no reply, one WARNING saying so (the client
    did not disconnect), and the request journaled as rejected, as a refused request is,
    without the part that came (a record cut short must never be replayed)."""
    cut = "body not received within 0.5 s; connection closed"
    sock = connect(impatient)
    with caplog.at_level(logging.INFO, logger="aljex_sync"):
        sock.sendall(
            (
                f"POST {impatient.settings.live.path} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Basic {AUTH}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(BODY)}\r\n\r\n{BODY[:10]}"
            ).encode()
        )
        assert read_until_closed(sock) == b""  # closed without a reply: the body never came
        assert normal_post(impatient, key="2") == 200
        deadline = time.monotonic() + 10
        while not any(cut in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the cut request was never logged"
            time.sleep(0.05)
    said = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if any(word in r.getMessage() for word in ("body", "disconnected"))
    ]
    assert len(said) == 1, said
    level, message = said[0]
    assert level == logging.WARNING
    assert re.fullmatch(rf"127\.0\.0\.1 - - - 408 {cut} [\d.]+ms", message), message
    engine = impatient.engine()
    with engine.connect() as conn:
        journaled = sorted(
            tuple(row)
            for row in conn.exec_driver_sql(
                "SELECT status, record_key, error, body FROM _aljex_events"
            )
        )
        stored = [r[0] for r in conn.exec_driver_sql("SELECT id FROM notes")]
    engine.dispose()
    assert journaled == [
        ("applied", "2", None, b"web_sync_table_name=notes&web_sync_action=create&id=2"),
        ("rejected", None, cut, b""),
    ]
    assert stored == ["2"]


def test_headers_over_the_size_cap_get_431(impatient):
    sock = connect(impatient)
    sock.sendall(f"POST {impatient.settings.live.path} HTTP/1.1\r\nHost: x\r\n".encode())
    reply = b""
    try:
        for _ in range(100):  # 100 x 8 KiB: far over the cap
            sock.sendall(b"X-Filler: " + b"a" * 8192 + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 431 ")


@pytest.fixture
def crowded(tmp_path, sqlite_url):
    """Room for 20 connections, and a header deadline long enough that the first 20 are
    still held while the other 40 arrive, however busy the machine."""
    settings = make_settings(
        sqlite_url, tmp_path, live={"header_timeout": 3.0, "max_connections": 20}
    )
    with RunningService(settings) as running:
        yield running


def test_connections_over_the_limit_are_dropped_and_a_normal_request_is_served(crowded):
    held = [connect(crowded) for _ in range(60)]
    replies = [read_until_closed(sock) for sock in held[20:]]
    assert all(r.startswith(b"HTTP/1.1 503 ") for r in replies)
    # The 20 within the limit are idle; the header deadline frees their places.
    for _ in range(100):
        try:
            if normal_post(crowded) == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    else:
        pytest.fail("a normal request was never served")
    for sock in held[:20]:
        sock.close()


def test_a_connection_flood_under_a_low_descriptor_limit_costs_a_few_log_lines(tmp_path):
    """With `ulimit -n 128`, 300 connections at once: the excess is dropped, the service
    goes on serving, and the log says so in a few lines, without a traceback."""
    config = tmp_path / "aljex-sync.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "aljex.db"}"\n'
        f'[live]\nlisten = "127.0.0.1:0"\npassword = "{TEST_PASSWORD}"\n'
        "max_connections = 10000\nheader_timeout = 1.0\n"
        "[morning]\nenabled = false\n"
    )
    log_file = tmp_path / "serve.log"
    command = (
        f"ulimit -n 128 && exec {shlex.quote(sys.executable)} -m aljex_sync.cli -c {config} serve"
    )
    with log_file.open("w") as log:
        process = subprocess.Popen(["sh", "-c", command], stderr=log)
    flood: list[socket.socket] = []
    try:
        for _ in range(200):
            port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log_file.read_text())
            if port:
                break
            time.sleep(0.1)
        assert port, log_file.read_text()
        url = f"http://127.0.0.1:{port.group(1)}/aljex/sync"
        for _ in range(300):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", int(port.group(1))))
            flood.append(sock)
        time.sleep(1)
        for _ in range(300):
            try:
                response = httpx.post(
                    url,
                    content=BODY,
                    auth=("aljex", TEST_PASSWORD),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                    timeout=5,
                )
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("a normal request was never served")
    finally:
        for sock in flood:
            sock.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    lines = log_file.read_text().splitlines()
    assert "notes create 1 200 applied" in "\n".join(lines)
    assert not [line for line in lines if "Traceback" in line]
    assert len(lines) < 20, lines[:40]


def test_requests_pipelined_a_few_ahead_are_all_answered_in_order(impatient):
    requests = b"".join(
        b"POST /aljex/sync HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s"
        % (AUTH.encode(), len(body), body)
        for body in (
            urlencode(
                {"web_sync_table_name": "notes", "web_sync_action": "create", "id": str(n)}
            ).encode()
            for n in range(MAX_PIPELINED)
        )
    )
    sock = connect(impatient)
    sock.sendall(requests)
    replies = b""
    while replies.count(b"HTTP/1.1 200") < MAX_PIPELINED:
        chunk = sock.recv(65536)
        assert chunk, replies
        replies += chunk
    sock.close()
    events = [int(n) for n in re.findall(rb"applied as event (\d+)", replies)]
    assert events == sorted(events) and len(events) == MAX_PIPELINED


def test_a_client_pipelining_without_end_is_cut_off_and_others_go_on(impatient):
    """uvicorn queued every request sent ahead of its replies: one client, with no
    password, grew the process with all it sent. Past the cap its connection is closed."""
    request = b"POST /aljex/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    sock = connect(impatient)
    try:
        for _ in range(20):
            sock.sendall(request * 5000)  # 250 KB a time
    except (BrokenPipeError, ConnectionResetError):
        pass  # cut off while sending, as it should be
    replies = read_until_closed(sock)
    assert replies.count(b"HTTP/1.1 4") <= MAX_PIPELINED + 1
    assert normal_post(impatient) == 200


def connect_from(running: RunningService, source: str) -> socket.socket:
    """A connection from another loopback address (Linux answers all of 127.0.0.0/8)."""
    assert running.service.http_port is not None
    return socket.create_connection(
        ("127.0.0.1", running.service.http_port), timeout=10, source_address=(source, 0)
    )


@pytest.fixture
def guarded(tmp_path, sqlite_url):
    """Three connections per address; only 127.0.0.1 and a proxy at 127.0.0.4 allowed."""
    settings = make_settings(
        sqlite_url,
        tmp_path,
        live={
            "max_connections_per_address": 3,
            "allow_ips": ["127.0.0.1/32", "127.0.0.2/32"],
            "trusted_proxies": ["127.0.0.4/32"],
        },
    )
    with RunningService(settings) as running:
        yield running


def test_one_address_cannot_take_every_connection(guarded):
    """Idle connections from one address shut everyone out once they held every slot."""
    held = [connect_from(guarded, "127.0.0.2") for _ in range(3)]
    try:
        time.sleep(0.2)
        extra = connect_from(guarded, "127.0.0.2")
        assert read_until_closed(extra).startswith(b"HTTP/1.1 503")
        assert normal_post(guarded) == 200  # from 127.0.0.1: slots of its own
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    again = connect_from(guarded, "127.0.0.2")
    again.sendall(b"POST /aljex/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert again.recv(100).startswith(b"HTTP/1.1 401")  # counted out as they closed
    again.close()


def test_a_trusted_proxy_is_not_limited_per_address(guarded):
    held = [connect_from(guarded, "127.0.0.4") for _ in range(5)]
    try:
        last = held[-1]
        last.sendall(
            b"POST /aljex/sync HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 127.0.0.1\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        assert last.recv(100).startswith(b"HTTP/1.1 401")  # its client's, not refused
    finally:
        for sock in held:
            sock.close()


def test_with_allow_ips_another_address_is_refused_as_it_connects(guarded, caplog):
    """Before it can hold a connection or send a byte: a refused address takes no slot."""
    with caplog.at_level(logging.WARNING, logger="aljex_sync.http"):
        stranger = connect_from(guarded, "127.0.0.3")
        reply = read_until_closed(stranger)
    assert reply.startswith(b"HTTP/1.1 403")
    assert b"address 127.0.0.3 is not allowed" in reply
    assert "closed a connection: address 127.0.0.3 not allowed" in caplog.text
    assert normal_post(guarded) == 200


def test_with_allow_ips_the_health_check_still_answers_on_this_machine(tmp_path, sqlite_url):
    """A monitor (or `status`) on the machine itself asks /healthz on 127.0.0.1, whatever
    addresses Aljex posts from; a Live Sync request from there is still refused."""
    settings = make_settings(sqlite_url, tmp_path, live={"allow_ips": ["203.0.113.0/24"]})
    with RunningService(settings) as running:
        base = running.url.rsplit("/aljex/sync", 1)[0]
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        assert normal_post(running) == 403
        stranger = connect_from(running, "127.0.0.3")
        assert read_until_closed(stranger).startswith(b"HTTP/1.1 403")


def test_connections_closed_for_one_reason_are_logged_once_and_the_rest_counted_at_stop(
    tmp_path, sqlite_url, caplog
):
    """A flood of refused connections costs two lines a minute, and the count held back
    when the service stops is written as it stops, not lost."""
    settings = make_settings(sqlite_url, tmp_path, live={"allow_ips": ["127.0.0.1/32"]})
    with (
        caplog.at_level(logging.WARNING, logger="aljex_sync.http"),
        RunningService(settings) as running,
    ):
        for _ in range(5):
            stranger = connect_from(running, "127.0.0.3")
            assert read_until_closed(stranger).startswith(b"HTTP/1.1 403")
            stranger.close()
    assert [r.getMessage() for r in caplog.records if r.name == "aljex_sync.http"] == [
        "closed a connection: address 127.0.0.3 not allowed",
        "closed 4 more connection(s) in the last 60 s: address 127.0.0.3 not allowed",
    ]


def test_reasons_past_those_kept_apart_are_counted_together_and_none_is_lost(
    tmp_path, sqlite_url, caplog, monkeypatch
):
    """Reasons name addresses, and an attacker has many: past ``MAX_REASONS`` (3 here),
    refusals are counted as other reasons, in one line, not one line per address."""
    monkeypatch.setattr(http_server, "MAX_REASONS", 3)
    settings = make_settings(sqlite_url, tmp_path, live={"allow_ips": ["127.0.0.1/32"]})
    with (
        caplog.at_level(logging.WARNING, logger="aljex_sync.http"),
        RunningService(settings) as running,
    ):
        for n in range(10, 20):
            stranger = connect_from(running, f"127.0.0.{n}")
            assert read_until_closed(stranger).startswith(b"HTTP/1.1 403")
            stranger.close()
    assert [r.getMessage() for r in caplog.records if r.name == "aljex_sync.http"] == [
        "closed a connection: address 127.0.0.10 not allowed",
        "closed a connection: address 127.0.0.11 not allowed",
        "closed a connection: address 127.0.0.12 not allowed",
        f"closed 7 more connection(s) in the last 60 s: {http_server.OTHER_REASONS}",
    ]
