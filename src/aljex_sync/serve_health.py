"""Whether ``serve`` runs, and is well, as ``status`` asks it: over its own ``/healthz``.

``status`` reads the database, which cannot tell whether the service is up, nor that it
answers Aljex 503 (a full disk refuses writes, not reads; a database that went away
shows nothing at all). The running service knows: ``status`` asks its health check on
the Live Sync port of the configuration, as a monitor would, and shows the answer.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import Message

from .settings import LiveSettings, host_port

TIMEOUT = 3.0  # seconds; a service that cannot answer /healthz in this is not well either
MOST_LINES = 20
# A service listening on every address is asked on loopback.
ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104


@dataclass(frozen=True)
class ServeHealth:
    """What ``/healthz`` said: ``healthy`` (200), ``unhealthy`` (another answer), or
    ``not running`` (no answer); its lines after the first (or the reason)."""

    url: str
    state: str
    lines: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for ``status``."""
        if self.state == "healthy":
            return f"healthy (serve answers at {self.url})"
        if self.state == "unhealthy":
            return f"NOT HEALTHY: {self.lines[0] if self.lines else '?'} ({self.url})"
        return f"not running: nothing answers at {self.url} ({self.lines[0]})"


def health_url(live: LiveSettings) -> str:
    """The health check's URL on this machine, for ``live``'s listen address."""
    host = ANY_ADDRESS.get(live.host, live.host)
    scheme = "https" if live.tls_cert is not None else "http"
    return f"{scheme}://{host_port(host, live.port)}/healthz"


def ask(live: LiveSettings, timeout: float = TIMEOUT) -> ServeHealth:
    """Ask the service on ``live``'s address how it is."""
    url = health_url(live)
    context = None
    if url.startswith("https"):
        # Its own certificate, often self-signed or for a public name: only read from.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    # Straight to this machine: never through the http_proxy a shell may have set.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=timeout) as reply:
            lines = _lines(reply.read())
            if lines[:1] != ["ok"] or not _ours(reply.headers):
                return _not_ours(url, reply.status)
            return ServeHealth(url, "healthy", lines[1:])
    except urllib.error.HTTPError as e:
        if e.code != 503 or not _ours(e.headers):
            return _not_ours(url, e.code)
        return ServeHealth(url, "unhealthy", _lines(e.read()) or [f"{e.code} {e.reason}"])
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        if isinstance(reason, TimeoutError):  # it took the connection: it runs, hung
            return ServeHealth(url, "unhealthy", [f"no answer within {timeout:g} s"])
        return ServeHealth(url, "not running", [str(reason)])


def _ours(headers: Message) -> bool:
    """Whether an answer looks like aljex-sync's health check: one plain-text body."""
    return str(headers.get("content-type", "")).startswith("text/plain")


def _not_ours(url: str, status: int) -> ServeHealth:
    reason = f"something other than aljex-sync answers there (HTTP {status})"
    return ServeHealth(url, "unhealthy", [reason])


def _lines(body: bytes) -> list[str]:
    text = body.decode("utf-8", "replace")
    return ["".join(c for c in line if c.isprintable()) for line in text.splitlines()][:MOST_LINES]
