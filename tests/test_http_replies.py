"""Replies leave the server in one piece: one TCP segment per reply, not one for the
headers and one for the body, so the sender is woken once per record."""

from __future__ import annotations

import socket
import struct
import sys
from urllib.parse import urlencode

import pytest

from .support import TEST_PASSWORD, RunningService, make_settings, raw_post

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="counts segments with Linux's TCP_INFO"
)

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, segments that carried data, received.
DATA_SEGS_IN = struct.Struct("=I")
DATA_SEGS_IN_OFFSET = 152


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return DATA_SEGS_IN.unpack_from(info, DATA_SEGS_IN_OFFSET)[0]


def request(running: RunningService, key: str, password: str = TEST_PASSWORD) -> bytes:
    body = urlencode({"web_sync_table_name": "notes", "web_sync_action": "create", "id": key})
    return raw_post(running, body, password)


def read_reply(sock: socket.socket) -> bytes:
    """One whole reply (headers and the Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.fixture
def running(tmp_path, sqlite_url):
    with RunningService(make_settings(sqlite_url, tmp_path, morning={"enabled": False})) as r:
        yield r


def test_each_reply_on_a_kept_alive_connection_comes_in_one_segment(running):
    with socket.create_connection(("127.0.0.1", running.service.http_port), timeout=10) as s:
        replies = []
        for key in ("1", "2", "3"):
            s.sendall(request(running, key))
            replies.append(read_reply(s))
        assert all(r.startswith(b"HTTP/1.1 200 ") for r in replies), replies
        assert data_segments_in(s) == 3


def test_a_refusal_comes_in_one_segment_too(running):
    with socket.create_connection(("127.0.0.1", running.service.http_port), timeout=10) as s:
        s.sendall(request(running, "1", password="wrong"))
        assert read_reply(s).startswith(b"HTTP/1.1 401 ")
        assert data_segments_in(s) == 1
