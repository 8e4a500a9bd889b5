"""The parse-only ceiling of the Live Sync benchmark, built from the receiver's public parts.

It is the Live Sync endpoint itself (``live.LiveEndpoint``: source address, credentials,
content type, size, the same log line) on the same HTTP stack (``http_server.config``),
with a writer that parses each body (``wire.parse_body``) and stores nothing: what a
request costs before the journal. It runs on the service's own event loop, as the real
endpoint does, so the two compete for the same thread.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from aljex_sync import http_server
from aljex_sync.config import LiveSettings
from aljex_sync.errors import WireError
from aljex_sync.live import LiveEndpoint
from aljex_sync.messages import Outcome, Received
from aljex_sync.wire import parse_body


class ParseOnly:
    """A writer for ``LiveEndpoint`` that parses every body and stores nothing."""

    def __init__(self, live: LiveSettings) -> None:
        self.live = live

    async def write(self, received: Received) -> Outcome:
        """The outcome the journal would give, without a database: event 0, never kept."""
        error = received.rejection
        if error is None:
            try:
                change = parse_body(
                    received.body,
                    legacy_charset=self.live.legacy_charset,
                    max_fields=self.live.max_fields,
                )
            except WireError as e:
                error = e
            else:
                return Outcome(0, "applied", table=change.table, action=change.action)
        return Outcome(0, "rejected", error.reason, error.table, error.action, rejection=error)


@contextmanager
def ceiling(live: LiveSettings, loop: asyncio.AbstractEventLoop) -> Iterator[str]:
    """Serve the ceiling on loopback on ``loop`` (the service's); yields its URL."""
    # IPPROTO_TCP, as the service binds: asyncio then sets TCP_NODELAY on accepted sockets.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.setblocking(False)
    endpoint = LiveEndpoint(live, ParseOnly(live))
    # Off the main thread, uvicorn leaves the signals alone: the benchmark stops it.
    server = uvicorn.Server(http_server.config(endpoint.app(), live))
    serving = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), loop)
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError("the ceiling's server stopped while starting")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}{live.path}"
    finally:
        server.should_exit = True
        serving.result(timeout=60)
        sock.close()
