"""What the notification tests receive with: a real webhook on loopback, NATS JetStream."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import events

NATS_URL = "nats://127.0.0.1:4222"
SECRET = "webhook-secret"


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


class WebhookReceiver:
    """An HTTP server on loopback that keeps every POST; ``refuse`` makes it answer 500."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refused = 0
        self.refuse = False
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._lock:
                    if outer.refuse:
                        outer.refused += 1
                        status = 500
                    else:
                        outer.received.append(Received(dict(self.headers.items()), body))
                        status = 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.payload for r in self.received]


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    """Poll ``check`` until it is true; fail the test (not time it) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def require_nats() -> None:
    """Skip without NATS at 127.0.0.1:4222, but fail under CI, where it must run."""
    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=2).close()
    except OSError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"NATS is not running at 127.0.0.1:4222 ({e}); .ci/run starts it")
        pytest.skip(f"NATS is not running at 127.0.0.1:4222 ({e})")


def unique_stream() -> tuple[str, str]:
    """A stream name and subject prefix of this test's own, so tests never share one."""
    tag = uuid.uuid4().hex[:10]
    return f"TEST_{tag}", f"test{tag}"


def read_stream(stream: str) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """Every message of ``stream``: subject, headers, JSON payload; then drop the stream."""
    return asyncio.run(_read_stream(stream))


async def _read_stream(stream: str) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    import nats
    from nats.errors import TimeoutError as NatsTimeout

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        subject = info.config.subjects[0]
        sub = await js.pull_subscribe(subject, stream=stream)
        found = []
        while len(found) < info.state.messages:
            try:
                batch = await sub.fetch(100, timeout=5)
            except NatsTimeout:
                break
            for msg in batch:
                found.append((msg.subject, dict(msg.headers or {}), json.loads(msg.data)))
                await msg.ack()
        return found
    finally:
        await nc.close()


def delete_stream(stream: str) -> None:
    async def delete() -> None:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(stream)
        except NotFoundError:
            pass
        finally:
            await nc.close()

    asyncio.run(delete())


def stream_count(stream: str) -> int:
    async def count() -> int:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(NATS_URL)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        except NotFoundError:
            return 0
        finally:
            await nc.close()

    return asyncio.run(count())


def applied_event_ids(url: str) -> list[int]:
    """The journal's applied events at ``url``, in journal order: what a sink is owed."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            query = select(events.c.id).where(events.c.status == "applied").order_by(events.c.id)
            return [int(i) for i in conn.execute(query).scalars()]
    finally:
        engine.dispose()
