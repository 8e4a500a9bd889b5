"""A load client for the Live Sync benchmark, run as its own process.

Keep-alive connections on one asyncio event loop, requests built in advance, and replies
read by httptools' C parser (uvicorn's own), so that the client costs as little CPU as
it can on the machine it shares with the server: the server, not the client, is what
gets measured. (A first version used a thread per connection with http.client; its CPU
per request nearly doubled when replies came in bursts, since the threads woke together
and queued for the interpreter lock, and group commit answers in bursts by design. See
docs/benchmarks.md.) Prints one JSON object on stdout.

    python -m bench.client URL USER PASSWORD BODIES_FILE CONNECTIONS
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from urllib.parse import urlsplit

import httptools


class _Connection(asyncio.Protocol):
    """One keep-alive connection: send a request, wait for its whole reply, repeat."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future[tuple[int, bool]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport  # asyncio sets TCP_NODELAY on TCP transports

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.reply is not None and not self.reply.done():
            keep = self.parser.should_keep_alive()
            self.reply.set_result((self.parser.get_status_code(), keep))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError("the server closed the connection"))

    async def send(self, request: bytes) -> tuple[int, bool]:
        """The status code of the reply, and whether the connection may be used again."""
        assert self.transport is not None
        self.reply = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.reply


async def _send_all(host: str, port: int, requests: list[bytes], latencies: list[float]) -> int:
    loop = asyncio.get_running_loop()
    connection: _Connection | None = None
    failures = 0
    for request in requests:
        if connection is None:
            _, connection = await loop.create_connection(_Connection, host, port)
        started = time.perf_counter()
        try:
            status, keep = await connection.send(request)
        except ConnectionError:
            status, keep = 0, False
        latencies.append(time.perf_counter() - started)
        if status != 200:
            failures += 1
        if not keep:
            assert connection.transport is not None
            connection.transport.close()
            connection = None
    if connection is not None and connection.transport is not None:
        connection.transport.close()
    return failures


def _request(host: str, port: int, path: str, auth: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {auth}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _run(url: str, auth: str, bodies: list[bytes], n_conn: int) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [_request(host, port, parts.path, auth, body) for body in bodies]
    shares = [requests[i::n_conn] for i in range(n_conn)]
    latencies: list[list[float]] = [[] for _ in range(n_conn)]
    started, cpu = time.perf_counter(), time.process_time()
    failures = await asyncio.gather(
        *(_send_all(host, port, share, lat) for share, lat in zip(shares, latencies, strict=True))
    )
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    flat = sorted(x for part in latencies for x in part)
    return {
        "requests": len(flat),
        "failures": sum(failures),
        "seconds": elapsed,
        "per_second": len(flat) / elapsed,
        "client_cpu_us": cpu / max(len(flat), 1) * 1e6,
        "p50_ms": flat[len(flat) // 2] * 1000,
        "p99_ms": flat[min(len(flat) - 1, int(len(flat) * 0.99))] * 1000,
        # 200 evenly spaced quantiles, enough to draw the distribution.
        "quantiles_ms": [flat[i * (len(flat) - 1) // 199] * 1000 for i in range(200)],
    }


def main() -> None:
    url, user, password, bodies_file, connections = sys.argv[1:6]
    with open(bodies_file, "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f]
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    print(json.dumps(asyncio.run(_run(url, auth, bodies, int(connections)))))


if __name__ == "__main__":
    main()
