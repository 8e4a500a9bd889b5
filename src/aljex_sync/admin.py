"""The admin area: the status page under ``/admin/`` and ``/metrics``, on the Live Sync port.

Off unless ``[admin] username`` and a password are set (then these routes do not exist
and answer 404). Each request passes the same gates as Live Sync, with credentials of its
own: the source address against ``[live] allow_ips`` (403), the address's failed admin
logins against ``[live] max_failed_logins`` (429, see logins.py), then HTTP Basic against
``[admin]`` (401). Failed admin logins are counted apart from Live Sync's and shown apart
by ``status`` (login_failures.py). Pages only read the database (``dashboard``); the one
action, replaying held records, is a POST that must carry a token only the status page
knows, so another site cannot make a logged-in browser press it (browsers resend Basic
credentials on their own). Replay opens the journal itself, as ``aljex-sync replay`` does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from . import admin_page, metrics
from .alerts import HealthWatch
from .config import Settings
from .credentials import PasswordCheck
from .dashboard import read_event, read_overview
from .errors import AljexSyncError, ReplayRunning
from .journal import Journal
from .live import client_address
from .login_failures import FailedLogins
from .logins import SLOW_SLOTS, Logins, SlowSlots, basic_credentials
from .messages import Outcome
from .replay_lock import only_replay
from .settings import within
from .store.database import open_engine, translate

log = logging.getLogger("aljex_sync.admin")

REALM = 'Basic realm="aljex-sync admin", charset="UTF-8"'
MAX_FORM_BYTES = 4096
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # No script at all; inline CSS and SVG only; forms post back here only.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class ReplayResult:
    """What one press of the replay button did."""

    counts: dict[str, int] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)  # the first LIST_LIMIT


class AdminArea:
    """The admin routes for one service: status page, event bodies, replay, metrics."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        health: HealthWatch | None = None,
        *,
        failed_logins: FailedLogins | None = None,
        slots: SlowSlots | None = None,
    ) -> None:
        """``failed_logins``: where refused logins are counted for ``status``; ``slots``:
        the slow password checks' slots, Live Sync's, so admin guesses queue behind Aljex."""
        admin = settings.admin
        self.health = health
        self.settings = settings
        self.engine = engine
        self.check = PasswordCheck(
            admin.username, password=admin.password, password_hash=admin.password_hash
        )
        self.logins = Logins(
            max_failures=settings.live.max_failed_logins,
            window=settings.live.failed_login_window,
            slots=slots if slots is not None else SLOW_SLOTS,
        )
        self.failed_logins = failed_logins
        self.registry = metrics.registry_for(engine)
        self._replaying = asyncio.Lock()
        # The replay form's token: a MAC under a key that lives only in this process.
        self._token = hmac.new(secrets.token_bytes(32), b"replay", hashlib.sha256).hexdigest()

    def routes(self) -> list[Route]:
        return [
            Route("/admin/", self._guard(self.status), methods=["GET"]),
            # Typed without its slash. Relative: never built from the client's Host header.
            Route("/admin", lambda _: RedirectResponse("/admin/", 308), methods=["GET"]),
            Route("/admin/events/{event_id:int}", self._guard(self.event), methods=["GET"]),
            Route("/admin/replay", self._guard(self.replay), methods=["POST"]),
            Route("/metrics", self._guard(self.metrics), methods=["GET"]),
        ]

    # -- the gates ------------------------------------------------------------------------

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            live = self.settings.live
            peer = request.client.host if request.client else None
            source = client_address(
                peer, request.headers.getlist("x-forwarded-for"), live.trusted_proxies
            )
            if live.allow_ips and not within(source, live.allow_ips):
                log.warning("admin: %s %s from %s: address not allowed", *_what(request), source)
                return _html(403, admin_page.message_page("Forbidden", "address not allowed"))
            refused = await self._authenticate(request, source)
            if refused is not None:
                return refused
            return await handler(request)

        return guarded

    async def _authenticate(self, request: Request, source: str) -> Response | None:
        """None for the admin credentials, else the 401 or 429 to answer.

        A request without credentials (a browser's first try, before it asks for them) is
        neither logged nor counted; a wrong login or one from an address over the limit
        is logged at WARNING and counted for ``status``.
        """
        credentials = basic_credentials(request.headers.get("authorization"))
        if credentials is None:
            return _unauthorized("admin user and password required")
        verdict = await self.logins.login(source, *credentials, self.check)
        if verdict.ok:
            return None
        if self.failed_logins is not None:
            self.failed_logins.note(source, credentials[0], admin=True)
        if verdict.retry_after is not None:
            wait = verdict.retry_after
            log.warning("admin: %s %s from %s: too many failed logins", *_what(request), source)
            return _html(
                429,
                admin_page.message_page(
                    "Too many failed logins",
                    f"too many failed logins from this address; retry in {wait} s",
                ),
                {"Retry-After": str(wait)},
            )
        log.warning("admin: %s %s from %s: wrong credentials", *_what(request), source)
        return _unauthorized("wrong admin user or password")

    # -- the pages ------------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        try:
            overview = await asyncio.to_thread(read_overview, self.engine)
        except SQLAlchemyError as e:
            return _unavailable(e)
        feeds = dict(self.health.current) if self.health is not None else {}
        return _html(200, admin_page.status_page(overview, self._token, feeds))

    async def event(self, request: Request) -> Response:
        event_id = int(request.path_params["event_id"])
        try:
            found = await asyncio.to_thread(read_event, self.engine, event_id)
        except SQLAlchemyError as e:
            return _unavailable(e)
        if found is None:
            return _html(404, admin_page.message_page("Not found", f"no event {event_id}"))
        live = self.settings.live
        return _html(200, admin_page.event_page(found, live.legacy_charset, live.max_fields))

    async def replay(self, request: Request) -> Response:
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return _html(403, admin_page.message_page("Forbidden", "cross-site request"))
        form = await _form(request)
        if form is None:
            return _html(400, admin_page.message_page("Bad request", "not a small form"))
        if not hmac.compare_digest(form.get("token", ""), self._token):
            return _html(
                403,
                admin_page.message_page(
                    "Forbidden", "the form is out of date: reload the status page and try again"
                ),
            )
        table = form.get("table") or None
        async with self._replaying:  # one replay at a time in this process
            try:
                result = await asyncio.to_thread(self._replay, table)
            except ReplayRunning as e:  # and in the others: `aljex-sync replay`, other hosts
                log.warning("admin: replay refused: %s", e)
                return _html(409, admin_page.message_page("Replay not started", str(e)))
            except (AljexSyncError, SQLAlchemyError) as e:
                return _unavailable(e)
        log.info(
            "admin: replay%s: %s",
            f" of {table}" if table else "",
            ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items())) or "nothing held",
        )
        return _html(200, admin_page.replay_page(result.counts, result.outcomes, table))

    def _replay(self, table: str | None) -> ReplayResult:
        """Re-apply held records as ``aljex-sync replay`` does: with a journal of its own."""
        settings = self.settings
        journal = Journal(
            open_engine(settings.database.url, timeout=settings.database.timeout), settings
        )
        result = ReplayResult()
        try:
            journal.install()
            with only_replay(journal.engine):
                for outcome in journal.replay(table=table):
                    result.counts[outcome.status] = result.counts.get(outcome.status, 0) + 1
                    if len(result.outcomes) < admin_page.LIST_LIMIT:
                        result.outcomes.append(outcome)
        finally:
            journal.close()
        return result

    async def metrics(self, request: Request) -> Response:
        body = await asyncio.to_thread(metrics.exposition, self.registry)
        return Response(
            body, media_type=metrics.CONTENT_TYPE, headers={"Cache-Control": "no-store"}
        )


def admin_routes(
    settings: Settings,
    engine: Engine,
    *,
    health: HealthWatch | None = None,
    failed_logins: FailedLogins | None = None,
    slots: SlowSlots | None = None,
) -> list[Route]:
    """The admin area's routes, or none when ``[admin]`` is not configured."""
    if not settings.admin.enabled:
        return []
    return AdminArea(settings, engine, health, failed_logins=failed_logins, slots=slots).routes()


def _what(request: Request) -> tuple[str, str]:
    return request.method, request.url.path


def _unauthorized(reason: str) -> Response:
    return _html(401, admin_page.message_page("Unauthorized", reason), {"WWW-Authenticate": REALM})


def _html(status: int, text: str, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers={**HEADERS, **(headers or {})})


def _unavailable(error: Exception) -> Response:
    reason = translate(error) if isinstance(error, SQLAlchemyError) else error
    log.warning("admin: database unavailable: %s", reason)
    return _html(503, admin_page.message_page("Database unavailable", str(reason)[:300]))


async def _form(request: Request) -> dict[str, str] | None:
    """A small url-encoded form, each name's first value; None if it is not one."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
    try:
        parsed = parse_qs(b"".join(chunks).decode("ascii"), max_num_fields=10)
    except ValueError:  # UnicodeDecodeError is one
        return None
    return {name: values[0] for name, values in parsed.items()}
