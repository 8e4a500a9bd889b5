"""The Live Sync HTTP edge: source address, authentication, limits, and status codes.

The checks run cheapest first and before any database work: method, source address,
credentials, content type and size; then the body goes to the journal's writer, which
parses it in its own process (a malformed body comes back as a rejection, journaled like
the rest). Only the journal's commit produces a 200. Every request is logged as one line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .config import LiveSettings, Network
from .credentials import PasswordCheck
from .errors import (
    DatabaseUnavailable,
    MalformedRequest,
    RequestTooLarge,
    TableNotAccepted,
    UnknownAction,
    UnsupportedMediaType,
    WireError,
)
from .journal import Outcome, Received
from .store.schema import utcnow
from .wire import parse_body

log = logging.getLogger("aljex_sync.live")

FORM = "application/x-www-form-urlencoded"
ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STATUS_OF: dict[type[WireError], int] = {
    MalformedRequest: 400,
    RequestTooLarge: 413,
    UnsupportedMediaType: 415,
    UnknownAction: 422,
    TableNotAccepted: 403,
}


class Writer(Protocol):
    """Where the edge hands authenticated requests (``journal_process.JournalProcess``)."""

    async def write(self, received: Received) -> Outcome:
        """The request's outcome, once committed; DatabaseUnavailable if it cannot be."""
        ...


@dataclass
class _Line:
    """The fields of the one log line every request gets."""

    source: str
    started: float
    table: str = "-"
    action: str = "-"
    key: str = "-"

    def emit(self, status: int, result: str) -> None:
        ms = (time.perf_counter() - self.started) * 1000
        log.info(
            "%s %s %s %s %d %s %.1fms",
            self.source,
            self.table,
            self.action,
            self.key[:60] or "-",
            status,
            result,
            ms,
        )


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> str:
    """The address a request came from, believing X-Forwarded-For only from trusted proxies.

    Walks the X-Forwarded-For chain from the right, skipping trusted proxies, and takes
    the first address that is not one: a client cannot forge its way past a proxy that
    appends what it saw.
    """
    address = peer or "unknown"
    if not forwarded_for or not trusted or not _in(address, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        address = hop
        if not _in(hop, trusted):
            break
    return address


def _in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _text(status: int, line: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(line + "\n", status_code=status, headers=headers)


class LiveEndpoint:
    """The ASGI app Aljex posts to. ``journal`` does the writing; None means parse only."""

    def __init__(
        self,
        settings: LiveSettings,
        journal: Writer | None,
        check: PasswordCheck | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.check = check or PasswordCheck(
            settings.username, password=settings.password, password_hash=settings.password_hash
        )
        # Slow password hashes run in threads; bound them so failed logins cannot
        # take every core.
        self._slow_checks = asyncio.Semaphore(2)

    def app(self, *, extra_routes: list[Route] | None = None) -> Starlette:
        routes = [
            # Every method reaches the handler, which answers 405 itself with one line.
            Route(self.settings.path, self.handle, methods=list(ALL_METHODS)),
            Route("/healthz", self.health, methods=["GET"]),
            *(extra_routes or []),
        ]
        return Starlette(routes=routes)

    async def health(self, request: Request) -> Response:
        return _text(200, "ok")

    async def handle(self, request: Request) -> Response:
        peer = request.client.host if request.client else None
        source = client_address(
            peer, request.headers.get("x-forwarded-for"), self.settings.trusted_proxies
        )
        line = _Line(source, time.perf_counter())
        response = await self._handle(request, source, line)
        return response

    async def _handle(self, request: Request, source: str, line: _Line) -> Response:
        settings = self.settings
        if request.method != "POST":
            line.emit(405, "method not allowed")
            return _text(405, "only POST is accepted here", {"Allow": "POST"})
        if settings.allow_ips and not _in(source, settings.allow_ips):
            line.emit(403, "address not allowed")
            return _text(403, f"address {source} is not allowed")
        if not await self._authenticated(request):
            line.emit(401, "unauthorized")
            return _text(
                401,
                "username and password required",
                {"WWW-Authenticate": 'Basic realm="aljex-sync", charset="UTF-8"'},
            )
        received_at = utcnow()
        try:
            body = await self._read_body(request)
        except RequestTooLarge as e:
            return await self._reject(e, b"", source, received_at, line, close=True)
        except ClientDisconnect:
            line.emit(400, "client disconnected")
            return _text(400, "client disconnected")
        content_type = request.headers.get("content-type")
        if content_type is not None and content_type.split(";")[0].strip().lower() != FORM:
            error = UnsupportedMediaType(f"content type {content_type[:80]!r} is not {FORM}")
            return await self._reject(error, body, source, received_at, line)
        if self.journal is None:  # the parse-only ceiling used by the benchmark
            return self._parse_only(body, line)
        try:
            outcome = await self.journal.write(Received(body, source, received_at))
        except DatabaseUnavailable as e:
            line.emit(503, "database unavailable")
            return _text(503, f"database unavailable, nothing was stored: {e}"[:300])
        return self._reply(outcome, line)

    def _parse_only(self, body: bytes, line: _Line) -> Response:
        """What the benchmark's ceiling does: everything the endpoint does but the writing."""
        settings = self.settings
        try:
            change = parse_body(
                body, legacy_charset=settings.legacy_charset, max_fields=settings.max_fields
            )
        except WireError as e:
            return self._refuse(e, line)
        line.table, line.action = change.table, change.action
        line.emit(200, "parsed")
        return _text(200, "parsed")

    def _reply(self, outcome: Outcome, line: _Line) -> Response:
        if outcome.rejection is not None:
            return self._refuse(outcome.rejection, line)
        line.table, line.action = outcome.table or "-", outcome.action or "-"
        line.key = outcome.key
        if outcome.status == "held":
            line.emit(200, f"held: {outcome.reason}")
            return _text(200, f"held as event {outcome.event_id}: {outcome.reason}"[:300])
        line.emit(200, outcome.status)
        return _text(200, f"{outcome.status} as event {outcome.event_id}")

    async def _authenticated(self, request: Request) -> bool:
        credentials = _basic_credentials(request.headers.get("authorization"))
        if credentials is None:
            return False
        fast = self.check.check_fast(*credentials)
        if fast is not None:
            return fast
        async with self._slow_checks:
            return await asyncio.to_thread(self.check.check, *credentials)

    async def _read_body(self, request: Request) -> bytes:
        """The whole body, refusing one over the limit without reading the rest."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise RequestTooLarge("the Content-Length header is not a number") from None
            if size > limit:
                raise RequestTooLarge(f"the body is {size} bytes, over the limit of {limit}")
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise RequestTooLarge(f"the body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _reject(
        self,
        error: WireError,
        body: bytes,
        source: str,
        received_at: datetime,
        line: _Line,
        *,
        close: bool = False,
    ) -> Response:
        """Answer a 4xx, after journaling the request as rejected (best effort)."""
        if self.journal is not None:
            received = Received(body, source, received_at, rejection=error)
            try:
                await self.journal.write(received)
            except DatabaseUnavailable as e:
                log.warning("could not journal a rejected request: %s", e)
        return self._refuse(error, line, close=close)

    @staticmethod
    def _refuse(error: WireError, line: _Line, *, close: bool = False) -> Response:
        """The 4xx reply for a refused request, and its log line."""
        status = STATUS_OF.get(type(error), 400)
        line.table = error.table or "-"
        line.action = error.action or "-"
        line.emit(status, error.reason)
        headers = {"Connection": "close"} if close else None
        return _text(status, error.reason[:300], headers)
