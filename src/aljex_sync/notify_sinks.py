"""Where change notifications go: a signed webhook, and NATS JetStream.

A sink has one job, :meth:`Sink.send`: deliver one notice and return only once the other
side has it (a 2xx reply; a JetStream publish ack), else raise. Retrying, ordering and the
cursor are ``notify``'s.

The webhook signs each body with ``[notify] secret`` (HMAC-SHA256). The signed material
is the timestamp header, a dot, then the body, so a captured request cannot be replayed
later with a fresh timestamp; a receiver checks both (:func:`verify`, docs/operations.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Aljex-Sync-Signature"
TIMESTAMP_HEADER = "X-Aljex-Sync-Timestamp"
ID_HEADER = "X-Aljex-Sync-Id"
WEBHOOK_TIMEOUT = 10.0  # seconds one POST may take
NATS_TIMEOUT = 5.0  # seconds to connect, and to wait for a publish ack


@dataclass(frozen=True)
class Notice:
    """One message for the sinks.

    ``msg_id`` identifies it for deduplication: the event id (``"12"``) for a live change,
    ``file-<id>`` for a morning file's summary. ``action`` is ``create``, ``update``,
    ``delete`` or ``morning``.
    """

    msg_id: str
    table: str
    action: str
    body: bytes

    def subject(self, prefix: str = "aljex") -> str:
        """The NATS subject: ``aljex.<table>.<action>`` (table names are checked words)."""
        return f"{prefix}.{self.table}.{self.action}"


class Sink(Protocol):
    name: str

    async def send(self, notice: Notice) -> None:
        """Deliver ``notice``; return once it is received, else raise."""

    async def close(self) -> None:
        """Let go of any connection."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC of ``timestamp.body``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str, signature: str, body: bytes, *, now: float, tolerance: float = 300
) -> bool:
    """What a receiver checks: the signature matches, and the timestamp is recent."""
    try:
        fresh = abs(now - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSink:
    """POSTs each notice as JSON to ``[notify] webhook``, signed; a 2xx means delivered.

    The log names the host only: the URL may carry a token.
    """

    name = "webhook"

    def __init__(self, url: str, secret: str, *, timeout: float = WEBHOOK_TIMEOUT) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.where = urlsplit(url).netloc.rpartition("@")[2]

    async def send(self, notice: Notice) -> None:
        status = await asyncio.to_thread(self._post, notice)
        if not 200 <= status < 300:
            raise DeliveryFailed(f"{self.where} answered {status}")

    def _post(self, notice: Notice) -> int:
        timestamp = str(int(time.time()))
        request = urllib.request.Request(  # noqa: S310 (config allows http and https only)
            self.url,
            data=notice.body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "aljex-sync",
                ID_HEADER: notice.msg_id,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(self.secret, timestamp, notice.body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (idem)
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except urllib.error.URLError as e:
            raise DeliveryFailed(f"{self.where}: {e.reason}") from None

    async def close(self) -> None:
        return None


class NatsSink:
    """Publishes each notice to JetStream on ``aljex.<table>.<action>``, waiting for its ack.

    Connects at the first send, and makes the stream (``[notify] nats_stream`` on subjects
    ``aljex.>``, or ``nats_prefix``'s) if there is none; a stream made by hand is used as it
    is. The header ``Nats-Msg-Id`` is the notice's id, so JetStream drops a copy sent again
    within its duplicate window (two minutes by default), as after a restart. After a
    failure the connection is dropped and made again at the next try.
    """

    name = "nats"

    def __init__(
        self, url: str, stream: str, prefix: str = "aljex", *, timeout: float = NATS_TIMEOUT
    ) -> None:
        self.url = url
        self.stream = stream
        self.prefix = prefix
        self.timeout = timeout
        self.where = urlsplit(url).netloc.rpartition("@")[2] or url
        self._nc: Any = None
        self._js: Any = None

    async def _connect(self) -> Any:
        import nats  # imported here: only a service that publishes to NATS needs it
        from nats.js.errors import NotFoundError

        # One try per send (0 would mean "for ever"); the failure is ours to log and retry.
        nc = await asyncio.wait_for(
            nats.connect(
                self.url,
                connect_timeout=self.timeout,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=_ignore,
            ),
            timeout=self.timeout * 2,
        )
        try:
            js = nc.jetstream(timeout=self.timeout)
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                await js.add_stream(name=self.stream, subjects=[f"{self.prefix}.>"])
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js
        return js

    async def send(self, notice: Notice) -> None:
        js = self._js or await self._connect()
        try:
            await js.publish(
                notice.subject(self.prefix),
                notice.body,
                timeout=self.timeout,
                stream=self.stream,
                headers={"Nats-Msg-Id": notice.msg_id},
            )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            try:
                await nc.close()
            except Exception:  # a broken connection: nothing more to do with it
                return


async def _ignore(error: Exception) -> None:
    """nats-py's error callback: errors reach ``send``'s caller, which logs them once."""


class DeliveryFailed(Exception):
    """A sink's receiver refused a notice or could not be reached."""
