"""The Live Sync HTTP edge: source address, authentication, limits, and status codes.

The checks run cheapest first and before any database work: method, source address,
failed-login limit, credentials, content type and size; then the body goes to the
journal's writer, which parses it in its own process (a malformed body comes back as a
rejection, journaled like the rest). Only the journal's commit produces a 200. Every
request is logged as one line. ``/healthz`` answers 200 only while the database and the
writer both answer, and the service is not stopping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

from sqlalchemy import Engine, false, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from . import http_server, logs, metrics
from .clock import utcnow
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
    WrongPath,
)
from .journal import locked
from .login_failures import FailedLogins
from .logins import Logins, basic_credentials
from .messages import Outcome, Received
from .settings import address_group, plain_ip, within
from .store.database import LOCKED
from .store.schema import events

log = logging.getLogger("aljex_sync.live")

FORM = "application/x-www-form-urlencoded"
# Longest value taken from the network into a log line; the key was always cut at 60.
MAX_LOGGED = 60
REFUSED_INTERVAL = 60.0  # seconds between two lines of one address's refusals (refused_lines)
MAX_REFUSED_ADDRESSES = 10_000
STOPPING = "stopping: finishing the requests and any morning load in flight"
OTHER_ADDRESSES = "other addresses"  # the refusals counted past MAX_REFUSED_ADDRESSES
ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STATUS_OF: dict[type[WireError], int] = {
    MalformedRequest: 400,
    RequestTooLarge: 413,
    UnsupportedMediaType: 415,
    UnknownAction: 422,
    TableNotAccepted: 403,
    WrongPath: 404,
}


# A health probe: None when its part is up, else one line saying what is wrong.
Probe = Callable[[], Awaitable[str | None]]


def database_probe(
    engine: Engine, timeout: float, busy: Callable[[], str | None] = lambda: None
) -> Probe:
    """A probe that opens a write transaction on ``engine`` and reads the journal's table.

    A write transaction, because that is what a request needs: on SQLite it waits for
    the write lock as the writer would. Reading the journal's table, because a server can
    answer ``SELECT 1`` for a database that has been dropped. Not while ``busy`` says this
    service's own work holds the lock: it would only wait out its timeout for it.
    """

    def check() -> None:
        with engine.begin() as conn:
            conn.execute(select(events.c.id).where(false())).all()

    async def probe() -> str | None:
        if busy():
            return None
        try:
            await asyncio.wait_for(asyncio.to_thread(check), timeout * 2 + 1)
        except TimeoutError:
            return f"database unavailable: no answer within {timeout * 2 + 1:g} s"
        except SQLAlchemyError as e:
            cause = getattr(e, "orig", None) or e
            first = str(cause).splitlines()
            return f"database unavailable: {first[0] if first else type(e).__name__}"
        return None

    return probe


class Writer(Protocol):
    """Where the edge hands authenticated requests (``journal_process.JournalProcess``)."""

    async def write(self, received: Received) -> Outcome:
        """The request's outcome, once committed; DatabaseUnavailable if it cannot be."""
        ...


class Refusal(NamedTuple):
    """The kind of a request refused before any record was read, as its line says it."""

    source: str
    status: int
    result: str
    level: int


def refused_lines(interval: float = REFUSED_INTERVAL) -> logs.CountedRepeats[Refusal]:
    """The lines of requests refused before any record was read (401, 403, 405, 429), at
    most one per address (an IPv6 address's /64: ``address_group``), reason and
    ``interval``; the rest counted into one line later, which names the /64 (and
    when the service stops).

    Those need no password, so a flood of them wrote one line each, about 40 GB a day
    from one client: a disk filled, or the journal's rate limit dropping Aljex's own lines.
    A request that was let in (its record applied, held or refused) keeps its own line.
    Past ``MAX_REFUSED_ADDRESSES`` kinds within an interval, the rest are counted under
    ``OTHER_ADDRESSES``.
    """
    return logs.CountedRepeats(
        lambda summary: log.log(
            summary.key.level,
            "%s - - - %d %s (%d more like it in the last %g s)",
            summary.key.source[:MAX_LOGGED],
            summary.key.status,
            summary.key.result,
            summary.count,
            interval,
        ),
        interval=interval,
        max_keys=MAX_REFUSED_ADDRESSES,
        overflow=lambda refusal: refusal._replace(source=OTHER_ADDRESSES),
    )


@dataclass
class _RequestLogLine:
    """The fields of the one log line every request gets."""

    source: str
    started: float
    table: str = "-"
    action: str = "-"
    key: str = "-"
    # Refusals before any record: at most one line a minute per kind (``refused_lines``).
    refused: logs.CountedRepeats[Refusal] | None = None

    def emit(self, status: int, result: str, *, level: int = logging.INFO) -> None:
        """Log the line: at ``level``, which callers raise for what the operator must act on."""
        ms = (time.perf_counter() - self.started) * 1000
        if self.refused is not None:
            # Counted by client: an IPv6 one turning through the addresses of its /64 is one.
            kind = Refusal(address_group(self.source), status, result, level)
            if not self.refused.count(kind, self.source):
                metrics.observe_request(self.table, self.action, status, ms / 1000)
                return
        log.log(
            level,
            "%s %s %s %s %d %s %.1fms",
            self.source[:MAX_LOGGED],
            self.table[:MAX_LOGGED],
            self.action[:MAX_LOGGED],
            self.key[:MAX_LOGGED] or "-",
            status,
            result,
            ms,
            extra=logs.EVERY_TIME,
        )
        metrics.observe_request(self.table, self.action, status, ms / 1000)


def client_address(peer: str | None, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The address a request came from, believing X-Forwarded-For only from trusted proxies.

    ``forwarded_for`` is every X-Forwarded-For line of the request, in order: a proxy may
    add a line of its own rather than extend the client's, and reading only the first
    line would believe the client. Walks the chain from the right, skipping trusted
    proxies, and takes the first address that is not one: a client cannot forge its way
    past a proxy that appends what it saw. A hop that is not an IP address is never taken
    as the source: the walk stops at it, at the last proxy that was trusted.
    """
    address = peer or "unknown"
    if ":" in address:  # an IPv4 peer of a dual-stack listener, as the IPv4 address it is
        plain = plain_ip(address)
        address = address if plain is None else str(plain)
    if not forwarded_for or not trusted or not within(address, trusted):
        return address
    hops = [h.strip() for line in forwarded_for for h in line.split(",") if h.strip()]
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            break
        address = ip
        if not within(ip, trusted):
            break
    return address


def _ip(hop: str) -> str | None:
    """The IP address of one X-Forwarded-For hop (``1.2.3.4``, ``[2001:db8::1]:443``...)."""
    text = hop[:64]
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    ip = plain_ip(text)
    return None if ip is None else str(ip)


def _text(status: int, line: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(line + "\n", status_code=status, headers=headers)


class LiveEndpoint:
    """The ASGI app Aljex posts to; ``journal`` does the writing."""

    def __init__(
        self,
        settings: LiveSettings,
        journal: Writer,
        check: PasswordCheck | None = None,
        *,
        probes: tuple[Probe, ...] = (),
        details: Callable[[], list[str]] | None = None,
        busy: Callable[[], str | None] | None = None,
        refusals: metrics.WriteRefusals | None = None,
        failed_logins: FailedLogins | None = None,
    ) -> None:
        """``refusals``: where the requests the database refused are recorded, for
        /healthz and /metrics to read alike (``metrics.write_refusals``); ``failed_logins``,
        where refused logins are counted for ``status``."""
        self.failed_logins = failed_logins
        self.settings = settings
        self.journal = journal
        self.check = check or PasswordCheck(
            settings.username, password=settings.password, password_hash=settings.password_hash
        )
        # Slow password hashes run in threads, a few at a time, fairly (see logins.py).
        self.logins = Logins(
            max_failures=settings.max_failed_logins, window=settings.failed_login_window
        )
        self.probes = probes
        self.details = details  # more lines for a 200 (the feeds' health: alerts.py)
        # What of this service holds SQLite's write lock for long (a morning load), if any:
        # the database is busy then, not down, and /healthz must not get the service
        # restarted in the middle of the load.
        self.busy = busy or (lambda: None)
        # The probes only read, and a full disk refuses only writes: the requests it refused
        # turn /healthz to 503 (and aljex_sync_database_up to 0) until one lands.
        self.refusals = refusals if refusals is not None else metrics.WriteRefusals()
        self.refused_lines = refused_lines()
        self._stopping = False

    def stopping(self) -> None:
        """The service has begun to stop: /healthz answers 503 from now on, so that a load
        balancer or monitor turns away while what is in flight finishes. Live Sync
        requests are still taken and answered until the server closes."""
        self._stopping = True

    def app(self, *, extra_routes: list[Route] | None = None) -> Starlette:
        routes = [
            # Every method reaches the handler, which answers 405 itself with one line.
            Route(self.settings.path, self.handle, methods=list(ALL_METHODS)),
            Route("/healthz", self.health, methods=["GET"]),
            *(extra_routes or []),
        ]
        app = Starlette(routes=routes, exception_handlers={404: self.not_found})
        # A path with a slash added or taken away is a wrong path, answered as one (404),
        # not redirected: a redirect is built from the client's Host header, unlogged, and
        # many senders do not follow one for a POST, or follow it in clear behind a proxy.
        app.router.redirect_slashes = False
        return app

    async def not_found(self, request: Request, _error: Exception) -> Response:
        """404. A POST to a path that is not Live Sync's is most likely Aljex sent to a
        wrong URL, and no record arrives until it is fixed. It is checked as a Live Sync
        request is (address, credentials, size), so a stranger gets the 403 or 401 a
        stranger gets; an authenticated one is journaled as rejected, with a WARNING line
        naming the path it came to and the one Live Sync listens on, and shows in
        ``status``. Other methods are left unlogged, as the probes of the internet's
        scanners are."""
        if request.method != "POST":
            return _text(404, "not found")
        source = self._source(request)
        line = _RequestLogLine(source, time.perf_counter())
        tried = repr(request.url.path[:MAX_LOGGED])
        wrong = WrongPath(f"not found: {tried} is not the Live Sync path {self.settings.path!r}")
        return await self._handle(request, source, line, wrong)

    async def health(self, request: Request) -> Response:
        """200 "ok" while every probe (the database, the writer) answers, else 503 and why;
        503 "stopping" once the service has begun to stop (a stop can last while a morning
        load finishes, and the service is going away).

        A 200 carries, after "ok", one line per watched feed; a silent feed never makes it
        a 503, so a quiet night does not get the service restarted.
        """
        if self._stopping:
            return _text(503, STOPPING)
        busy = self.busy()
        refused = self.refusals.current()
        if refused is not None and not (busy and LOCKED in refused):
            line = " ".join(
                f"database unavailable: the last request was not stored: {refused}".split()
            )
            log.warning("health check: %s", line[:300])
            return _text(503, line[:300])
        for probe in self.probes:
            problem = await probe()
            if problem is not None and not (busy and LOCKED in problem):
                line = " ".join(problem.split())[:300]
                log.warning("health check: %s", line)
                return _text(503, line)
        extra = self.details() if self.details is not None else []
        if busy:
            extra.append(f"database busy: {busy} holds the write lock")
        return _text(200, "\n".join(["ok", *extra]))

    async def handle(self, request: Request) -> Response:
        source = self._source(request)
        line = _RequestLogLine(source, time.perf_counter())
        response = await self._handle(request, source, line)
        return response

    def _source(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        forwarded = request.headers.getlist("x-forwarded-for")
        return client_address(peer, forwarded, self.settings.trusted_proxies)

    async def _handle(
        self,
        request: Request,
        source: str,
        line: _RequestLogLine,
        wrong_path: WrongPath | None = None,
    ) -> Response:
        """The reply to a request to the Live Sync path, or, with ``wrong_path``, to a POST
        that came to another path: checked alike, then journaled as rejected."""
        settings = self.settings
        line.refused = self.refused_lines  # until the credentials are accepted
        if request.method != "POST":
            line.emit(405, "method not allowed")
            return _text(405, "only POST is accepted here", {"Allow": "POST"})
        if settings.allow_ips and not within(source, settings.allow_ips):
            line.emit(403, "address not allowed", level=logging.WARNING)
            return _text(403, f"address {source} is not allowed")
        refused = await self._authenticate(request, source, line)
        if refused is not None:
            return refused
        line.refused = None  # let in: its line is written whatever comes of it
        received_at = utcnow()
        try:
            body = await self._read_body(request)
        except RequestTooLarge as e:
            return await self._reject(e, b"", source, received_at, line, close=True)
        except ClientDisconnect:
            cut = http_server.cut_short(request.scope)
            if cut is not None:  # the server stopped waiting for it (body_timeout)
                # Journaled without what came of it, as a body over the limit is: a record
                # cut short must never be replayed. 408 in the log; no reply goes out.
                cut_error = MalformedRequest(cut)
                return await self._reject(cut_error, b"", source, received_at, line, status=408)
            line.emit(400, "client disconnected")
            return _text(400, "client disconnected")
        if wrong_path is not None:
            return await self._reject(wrong_path, body, source, received_at, line)
        content_type = request.headers.get("content-type")
        if content_type is not None and content_type.split(";")[0].strip().lower() != FORM:
            error = UnsupportedMediaType(f"content type {content_type[:80]!r} is not {FORM}")
            return await self._reject(error, body, source, received_at, line)
        busy = self.busy()  # as the request came: a load may end while the request waits
        try:
            outcome = await self.journal.write(Received(body, source, received_at))
        except DatabaseUnavailable as e:
            self.refusals.refused(str(e))
            # Not down: it waited its time for a lock this service's own work holds.
            if busy and locked(e):
                reason = f"database busy: {busy} holds the write lock"
                hint = "[database] timeout is how long a request waits for it"
                line.emit(503, f"{reason} ({hint})", level=logging.WARNING)
                return _text(503, f"{reason}; nothing was stored, send again")
            line.emit(503, f"database unavailable: {e}"[:300], level=logging.ERROR)
            return _text(503, f"database unavailable, nothing was stored: {e}"[:300])
        self.refusals.landed()
        return self._reply(outcome, line)

    def _reply(self, outcome: Outcome, line: _RequestLogLine) -> Response:
        if outcome.rejection is not None:
            return self._refuse(outcome.rejection, line)
        line.table, line.action = outcome.table or "-", outcome.action or "-"
        line.key = outcome.key
        if outcome.status == "held":
            line.emit(200, f"held: {outcome.reason}", level=logging.WARNING)
            return _text(200, f"held as event {outcome.event_id}: {outcome.reason}"[:300])
        line.emit(200, outcome.status)
        return _text(200, f"{outcome.status} as event {outcome.event_id}")

    async def _authenticate(
        self, request: Request, source: str, line: _RequestLogLine
    ) -> Response | None:
        """None for the right credentials, else the 401 or 429 to answer.

        An address over its failure limit is refused before its password is looked at.
        A password only the slow hash can decide waits for its address's turn (see
        logins.py); the limit is checked again once the turn comes, since the requests
        ahead of it may have failed.
        """
        credentials = basic_credentials(request.headers.get("authorization"))
        if credentials is None:
            self._refused(source, "")
            return self._unauthorized(line, wrong=False)
        verdict = await self.logins.login(source, *credentials, self.check)
        if verdict.ok:
            return None
        self._refused(source, credentials[0])
        if verdict.retry_after is not None:
            return self._too_many(verdict.retry_after, line)
        return self._unauthorized(line, wrong=True)

    def _refused(self, source: str, username: str) -> None:
        if self.failed_logins is not None:
            self.failed_logins.note(source, username)

    @staticmethod
    def _unauthorized(line: _RequestLogLine, *, wrong: bool) -> Response:
        """401: a wrong password is a WARNING (Aljex's records cannot land until it is
        fixed); a request with no credentials at all, as a browser's first try, is INFO."""
        if wrong:
            line.emit(401, "wrong username or password", level=logging.WARNING)
        else:
            line.emit(401, "no credentials")
        return _text(
            401,
            "wrong username or password" if wrong else "username and password required",
            {"WWW-Authenticate": 'Basic realm="aljex-sync", charset="UTF-8"'},
        )

    @staticmethod
    def _too_many(wait: int, line: _RequestLogLine) -> Response:
        line.emit(429, "too many failed logins", level=logging.WARNING)
        return _text(
            429,
            f"too many failed logins from this address; retry in {wait} s",
            {"Retry-After": str(wait)},
        )

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
        line: _RequestLogLine,
        *,
        close: bool = False,
        status: int | None = None,
    ) -> Response:
        """Answer a 4xx, after journaling the request as rejected (best effort)."""
        received = Received(body, source, received_at, rejection=error)
        try:
            await self.journal.write(received)
        except DatabaseUnavailable as e:
            log.warning("could not journal a rejected request: %s", e)
        return self._refuse(error, line, close=close, status=status)

    @staticmethod
    def _refuse(
        error: WireError,
        line: _RequestLogLine,
        *,
        close: bool = False,
        status: int | None = None,
    ) -> Response:
        """The 4xx reply for a refused request, and its log line; ``status`` when the
        error's own (``STATUS_OF``) does not say it."""
        status = status or STATUS_OF.get(type(error), 400)
        line.table = error.table or "-"
        line.action = error.action or "-"
        line.emit(status, error.reason, level=logging.WARNING)
        headers = {"Connection": "close"} if close else None
        return _text(status, error.reason[:300], headers)
