"""The HTTP server under Live Sync: uvicorn with httptools, plus the limits it lacks.

uvicorn closes idle keep-alive connections, but nothing else: a client may take forever
to send its headers or its body, open connections that never send anything, or send
headers without end. Each such connection holds a file descriptor, and a few thousand of
them (slowloris) starve the process. httptools is kept for its speed (Live Sync latency
is what Aljex waits on); ``EdgeProtocol`` is its protocol with, per connection:

- a header deadline: the request line and headers must arrive within ``header_timeout``
  seconds of the connection opening (or, on a kept-alive connection, of the request's
  first byte), else the client gets 408 and the connection is closed;
- a body deadline: the body must arrive within ``body_timeout`` seconds of the headers,
  else the connection is closed without a reply. The endpoint, which sees the connection
  end, finds why in the request's scope (:func:`cut_short`) and logs the request so; a
  body it had already answered without reading is reported below. uvicorn stops reading a
  body past 64 KiB until the endpoint takes it, so for such a body the deadline also
  covers the endpoint's checks before it reads (normally milliseconds);
- a header size cap (``MAX_HEADER_BYTES``), answered with 431;
- a connection cap: a connection beyond ``max_connections`` is answered 503 and closed as
  soon as it is accepted, so the descriptors it would hold go back at once; so is one
  beyond ``max_connections_per_address`` from one address (an IPv6 address's /64; trusted
  proxies aside), so that one client's idle connections cannot take every slot; and with
  ``allow_ips``, one from any other address (trusted proxies, and 127.0.0.1 and ::1 for
  the health check, aside) gets 403 at once;
- a pipeline cap: uvicorn queues every request a client sends ahead of its replies, and
  reads on after each reply, so one client pipelining without end (no password needed)
  grew the process by about 48 MB for each MB it sent. A connection with more than
  ``MAX_PIPELINED`` requests waiting is closed, unanswered beyond the one in hand; the
  rest of what it sent is not parsed into requests. Senders post one record at a time.

The cap must stay below the process's file descriptor limit, with room to spare: asyncio
accepts up to ``backlog`` connections in one go before any of them can be dropped, and
once ``accept`` fails for lack of descriptors, asyncio (3.11) schedules a retry for every
slot of the backlog, on every attempt, and the retries multiply until the log holds
nothing else. ``config`` raises the soft limit as far as the hard limit allows, then
sizes the backlog and, with a warning if it must, lowers the cap, so that the reserve,
the connections and two backlogs of accepted ones fit.

With ``[live] tls_cert``, uvicorn is given no TLS context: ``EdgeProtocol`` sees each
connection as it is accepted, judges it as above before any TLS byte is read (a refused one
is closed without a reply, which its client could not read), and only then starts the
handshake (``loop.start_tls``), which must be done within ``header_timeout``; the headers
then have their own ``header_timeout``. A handshake that fails (plain HTTP on the HTTPS
port, a client that does not trust the certificate) closes the connection with a reason.
Left to asyncio, TLS on the listening socket would hand a connection to the protocol only
once its handshake was through: connections that never finished one were held a minute
each, past every limit.

Connections closed for these reasons (but a body the endpoint was waiting for, which its
own request line reports) are counted and logged as one line per reason and
``REPORT_INTERVAL``, however many there are (:func:`closed_connections`).

A reply leaves in one send: uvicorn writes the status line and headers, then the body,
each straight to the socket, so every reply cost two system calls here and woke the
client twice (TCP_NODELAY sends each at once). ``OneSend`` holds what is written until
the reply is complete, or until the end of the loop's turn for a reply sent in parts.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from . import logs
from .config import LiveSettings
from .settings import Network, address_group, within

log = logging.getLogger("aljex_sync.http")

MAX_HEADER_BYTES = 64 * 1024
REPORT_INTERVAL = 60.0
MAX_REASONS = 1000  # reasons the report keeps apart (each its last line's time)
OTHER_REASONS = "other reasons (too many at once to keep apart)"  # past MAX_REASONS
KEEP_ALIVE_TIMEOUT = 5.0
# Descriptors kept for everything but client connections: the database, the journal
# writer's link, the SFTP server, log files (a quarter of the limit if that is less).
RESERVED_DESCRIPTORS = 128
MAX_BACKLOG = 1024
MAX_PIPELINED = 16  # requests a connection may send ahead of their replies
# Let in by the connection gate whatever ``allow_ips`` says, for /healthz and `status` on
# this machine; a Live Sync request from them is still judged by ``allow_ips`` (403).
THIS_MACHINE = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
CUT = "aljex_sync.cut"
"""The ASGI scope extension in which the server says why it closed the connection of a
request whose body it stopped waiting for: ``{"reason": ...}``."""


@dataclass(frozen=True)
class Limits:
    """What a client may take: time for headers and body, and connections at once; who
    may connect at all."""

    header_timeout: float
    body_timeout: float
    max_connections: int
    backlog: int = MAX_BACKLOG
    per_address: int = 64
    allow_ips: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    tls: ssl.SSLContext | None = None  # HTTPS, the handshake begun once a connection is let in


def config(
    app: ASGIApp,
    live: LiveSettings,
    tls: ssl.SSLContext | None = None,
    *,
    report: logs.CountedRepeats[str] | None = None,
) -> uvicorn.Config:
    """The uvicorn configuration of the Live Sync server, with ``live``'s limits; HTTPS with
    ``tls``, the context ``tls.server_context`` made. ``report``: where the connections the
    server closes itself are counted (``closed_connections``), for its owner to flush at
    a stop."""
    connections, backlog = _room_for(live.max_connections)
    limits = Limits(
        live.header_timeout,
        live.body_timeout,
        connections,
        backlog,
        live.max_connections_per_address,
        live.allow_ips,
        live.trusted_proxies,
        tls,
    )
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=30,
        timeout_keep_alive=int(KEEP_ALIVE_TIMEOUT),
        server_header=False,
        backlog=limits.backlog,
        http=edge_protocol(limits, closed_connections() if report is None else report),
        # X-Forwarded-For is judged by the endpoint against trusted_proxies only.
        proxy_headers=False,
        # No ssl for uvicorn: EdgeProtocol starts TLS itself, once a connection is let in.
    )


def _room_for(connections: int) -> tuple[int, int]:
    """The connection cap and listen backlog the descriptor limit leaves room for, after
    raising the soft limit as far as needed and allowed."""
    if sys.platform == "win32":
        return connections, MAX_BACKLOG
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 2 * MAX_BACKLOG + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < want:
        raised = want if hard == resource.RLIM_INFINITY else min(hard, want)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return connections, MAX_BACKLOG
    spare = soft - min(RESERVED_DESCRIPTORS, soft // 4)
    backlog = max(8, min(MAX_BACKLOG, spare // 4))
    room = max(1, spare - 2 * backlog)
    if room < connections:
        log.warning(
            "only %d file descriptors (ulimit -n): taking at most %d connections, not %d",
            soft,
            room,
            connections,
        )
        return room, backlog
    return connections, backlog


def cut_short(scope: Mapping[str, Any]) -> str | None:
    """Why the server closed the connection before the request's body came whole (its
    body deadline), or None: the client went away of its own accord."""
    cut = scope.get("extensions", {}).get(CUT)
    return None if cut is None else str(cut["reason"])


def edge_protocol(limits: Limits, report: logs.CountedRepeats[str]) -> type[EdgeProtocol]:
    """An ``EdgeProtocol`` class bound to ``limits`` and ``report`` (uvicorn builds
    protocols itself)."""
    shared = {"limits": limits, "report": report, "from_address": Counter()}
    return type("EdgeProtocol", (EdgeProtocol,), shared)


def address_of(peer: Any) -> str | None:
    """The host of a socket's peer name, or None (a Unix socket, or none known)."""
    if isinstance(peer, tuple | list) and peer and isinstance(peer[0], str):
        return peer[0]
    return None


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and a connection cap."""

    limits: ClassVar[Limits]
    report: ClassVar[logs.CountedRepeats[str]]  # connections closed, by reason
    from_address: ClassVar[Counter[str]]  # open connections by ``address_group``

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading: str | None = None  # "headers", "body", or None between requests
        self._header_bytes = 0
        self._counted: str | None = None  # the bucket this connection is counted in
        self._early: list[bytes] | None = None  # what came before TLS was handed over
        self._handshake: asyncio.Task[None] | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._out = OneSend(transport, self.loop)
        super().connection_made(self._out)
        if not self._let_in(transport):
            return
        if self.limits.tls is None:
            self._expect("headers", self.limits.header_timeout)
        else:
            self._early = []
            self._handshake = self.loop.create_task(self._secure(transport))

    def _let_in(self, transport: asyncio.Transport) -> bool:
        """Judge a connection as it is accepted: allow_ips, then the caps; answer and close
        one refused."""
        limits = self.limits
        host = address_of(transport.get_extra_info("peername"))
        proxy = host is not None and within(host, limits.trusted_proxies)
        if (
            host is not None
            and limits.allow_ips
            and not proxy
            and host not in THIS_MACHINE
            and not within(host, limits.allow_ips)
        ):
            self.report.count(f"address {host} not allowed")
            self._answer_and_close(403, f"address {host} is not allowed")
            return False
        if len(self.connections) > limits.max_connections:
            self.report.count("over the connection limit")
            self._answer_and_close(503, "too many connections, try again")
            return False
        if host is not None and not proxy:
            bucket = address_group(host)
            if self.from_address[bucket] >= limits.per_address:
                self.report.count(f"over {limits.per_address} connections from {bucket}")
                self._answer_and_close(503, "too many connections from this address, try again")
                return False
            self.from_address[bucket] += 1
            self._counted = bucket
        return True

    async def _secure(self, raw: asyncio.Transport) -> None:
        """The TLS handshake, done within ``header_timeout`` or the connection is closed;
        then the connection is uvicorn's, on the TLS transport."""
        assert self.limits.tls is not None
        seconds = self.limits.header_timeout
        tls: asyncio.Transport | None = None
        try:
            if not raw.is_closing():
                async with asyncio.timeout(seconds):
                    tls = await start_tls(
                        self.loop, raw, self, self.limits.tls, self._take_early, seconds
                    )
        except TimeoutError:
            if not self._lost:  # else the client went away first
                self.report.count(f"TLS handshake not done within {seconds:g} s")
        except ssl.SSLError as e:
            self.report.count(handshake_failure(e))
        except (OSError, RuntimeError):
            pass  # the client went away, or the server is stopping
        finally:
            self._handshake = None
        if tls is not None and not tls.is_closing() and not self._lost:
            self._hand_over(tls)
            return
        raw.abort()
        # The TLS layer tells the protocol of a connection lost in its handshake on some
        # paths only (before this task learns why, on uvloop's): said here in any case.
        self.connection_lost(None)

    def _take_early(self) -> bytes:
        """The bytes read before ``start_tls`` took the transport over (uvloop starts
        reading as soon as the connection is made): the start of the handshake."""
        early = b"".join(self._early or ())
        if self._early is not None:
            self._early.clear()
        return early

    def _hand_over(self, tls: asyncio.Transport) -> None:
        """Give uvicorn's protocol the TLS transport (scheme https), and what it has
        already decrypted."""
        early = self._take_early()
        self._early = None
        self._out = OneSend(tls, self.loop)
        super().connection_made(self._out)
        self._expect("headers", self.limits.header_timeout)
        if early:
            self.data_received(early)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._cancel()  # a handshake under way ends on its own, soon: its task says why
        if self._counted is not None:
            self.from_address[self._counted] -= 1
            if not self.from_address[self._counted]:
                del self.from_address[self._counted]
            self._counted = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._early is not None:  # TLS not handed over yet
            self._early.append(data)
            return
        if self._reading == "headers":
            self._header_bytes += len(data)
        super().data_received(data)
        if self._reading == "headers" and self._header_bytes > MAX_HEADER_BYTES:
            self.report.count(f"headers over {MAX_HEADER_BYTES} bytes")
            self._answer_and_close(431, "request headers too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._reading is None:  # a kept-alive connection's next request
            self._header_bytes = 0
            self._expect("headers", self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():
            return  # closed for its pipeline: what else came is not made into requests
        self._expect("body", self.limits.body_timeout)
        super().on_headers_complete()
        if len(self.pipeline) > MAX_PIPELINED:
            self.report.count(f"over {MAX_PIPELINED} requests sent ahead of their replies")
            self._cancel()
            self.transport.close()

    def on_message_complete(self) -> None:
        self._cancel()
        self._reading = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._out.flush()  # the whole reply, in one send
        super().on_response_complete()

    def _expect(self, part: str, seconds: float) -> None:
        self._cancel()
        self._reading = part
        self._deadline = self.loop.call_later(seconds, self._too_slow, part, seconds)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, part: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if part == "headers":
            self.report.count(f"{part} not sent within {seconds:g} s")
            self._answer_and_close(408, f"request headers not sent within {seconds:g} s")
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The endpoint reads the body, or will: it sees the connection end, finds why
            # here, and its request line says so (once, with who sent it).
            reason = f"body not received within {seconds:g} s; connection closed"
            cycle.scope.setdefault("extensions", {})[CUT] = {"reason": reason}
        else:  # answered already, without the body: no request line will mention it
            self.report.count(f"{part} not sent within {seconds:g} s")
        self.transport.close()

    def _answer_and_close(self, status: int, reason: str) -> None:
        """Answer before any request was handed to the endpoint, and close."""
        self._cancel()
        self._reading = None
        if self.limits.tls is not None and self.scheme != "https":
            pass  # before its TLS handshake: a reply in clear would not be read
        elif self.cycle is None or self.cycle.response_complete:
            body = reason.encode() + b"\n"
            phrase = {
                403: b"Forbidden",
                408: b"Request Timeout",
                431: b"Request Header Fields Too Large",
            }.get(status, b"Service Unavailable")
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, phrase, len(body), body)
            )
        self.transport.close()


async def start_tls(
    loop: asyncio.AbstractEventLoop,
    raw: asyncio.Transport,
    protocol: asyncio.Protocol,
    context: ssl.SSLContext,
    early: Callable[[], bytes],
    seconds: float,
) -> asyncio.Transport | None:
    """``loop.start_tls`` on an accepted connection whose protocol may already have read
    the start of the handshake: ``early()`` gives those bytes, which are handed to the TLS
    layer once it has the transport. None if the connection was closed meanwhile. Closing
    the TLS connection waits ``seconds`` at most for the client's close_notify (not 30).

    ``start_tls`` takes the transport over at once and starts its TLS layer with
    ``call_soon``: bytes given after that, with ``call_soon`` too, come before any the
    transport reads next.
    """
    upgrade = asyncio.ensure_future(
        loop.start_tls(raw, protocol, context, server_side=True, ssl_shutdown_timeout=seconds)
    )
    try:
        while raw.get_protocol() is protocol and not upgrade.done():
            await asyncio.sleep(0)
        if data := early():
            loop.call_soon(_feed, raw, data)
        return await upgrade
    finally:
        upgrade.cancel()


def _feed(raw: asyncio.Transport, data: bytes) -> None:
    """Give ``raw``'s protocol (the TLS layer, a buffered protocol) ``data`` as if read."""
    view = memoryview(data)
    while view and not raw.is_closing():
        layer = cast(asyncio.BufferedProtocol, raw.get_protocol())
        buffer = memoryview(layer.get_buffer(len(view)))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        layer.buffer_updated(n)
        view = view[n:]


def handshake_failure(e: ssl.SSLError) -> str:
    """Why a TLS handshake failed, in the words of the report."""
    if e.reason == "HTTP_REQUEST":
        return "plain HTTP sent to the HTTPS port"
    why = (e.reason or type(e).__name__).lower().replace("_", " ")
    return f"TLS handshake failed ({why})"


class OneSend(asyncio.Transport):
    """A transport whose writes within one turn of the event loop leave in one send.

    The protocol flushes it when a reply is complete; a write not followed by a flush in
    the same turn (a reply sent in parts) leaves at the end of the turn. Everything but
    writing is the wrapped transport's own.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is held, if anything."""
        if self._held:
            data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
            self._held.clear()
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


def closed_connections(interval: float = REPORT_INTERVAL) -> logs.CountedRepeats[str]:
    """The log of connections closed for one reason: the first at once, the rest counted
    and logged once per ``interval`` (and when the service stops), so an attack costs a
    few log lines, not one per connection. Reasons name addresses: past ``MAX_REASONS``
    within an interval, the rest are counted under ``OTHER_REASONS``."""
    return logs.CountedRepeats(
        lambda summary: log.warning(
            "closed %d more connection(s) in the last %g s: %s",
            summary.count,
            interval,
            summary.key,
        ),
        first=lambda reason, _source: log.warning("closed a connection: %s", reason),
        interval=interval,
        max_keys=MAX_REASONS,
        overflow=lambda _reason: OTHER_REASONS,
    )
