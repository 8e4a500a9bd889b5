"""``aljex-sync init``: a new config file with random passwords, and what to send Aljex."""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
from pathlib import Path
from urllib.parse import urlsplit

import click

from .. import config
from ..credentials import generate_password, hash_password
from ..errors import ConfigError
from ..settings import host_port
from ..sftp_settings import host_key_fingerprint
from ..store.database import normalize_url
from ..tls import make_self_signed
from .common import Context, console, fail
from .config_file import config_text

TLS_FILES = {"tls_cert": "tls_cert.pem", "tls_key": "tls_key.pem"}
"""Where ``init --tls-self-signed`` writes the pair, beside the config file."""

# A DNS name, checked in its ASCII (IDNA) form: labels of letters, digits and inner hyphens.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


@click.command()
@click.option(
    "--database-url",
    default="sqlite:///aljex.db",
    show_default=True,
    help="SQLAlchemy URL, e.g. postgresql://user@host/db or mysql://user@host/db.",
)
@click.option(
    "--public-host",
    help="Host name or IP address Aljex reaches this machine at, alone (no port or path)."
    " Default: this machine's own network address.",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Live Sync HTTP port.",
)
@click.option(
    "--sftp-port",
    type=click.IntRange(0, 65535),
    default=2222,
    show_default=True,
    help="Morning Sync SFTP port.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.option(
    "--tls-self-signed",
    is_flag=True,
    help="Serve HTTPS with a new self-signed certificate (for trials; see docs/deploy.md).",
)
@click.option(
    "--then-serving",
    is_flag=True,
    hidden=True,
    help="Say the service starts next (`make serve` runs serve right after init).",
)
@click.pass_obj
def init(
    obj: Context,
    database_url: str,
    public_host: str | None,
    http_port: int,
    sftp_port: int,
    force: bool,
    tls_self_signed: bool,
    then_serving: bool,
) -> None:
    """Write a new config with random passwords, and print what to send Aljex.

    The passwords are stored only as hashes, so they are shown this once: send them to
    Aljex now, or run init again with --force to make new ones.
    """
    path = obj.path
    if path.exists() and not force:
        fail(f"{path} exists; use --force to replace it (its passwords will change)")
    try:
        normalize_url(database_url)
    except ConfigError as e:
        fail(f"--database-url: {e.reason}")
    taken_from_url = ""
    if public_host is not None:
        public_host, taken_from_url = checked_public_host(public_host)
    live_password, sftp_password = generate_password(), generate_password()
    text = config_text(
        {
            "database": {"url": database_url},
            "live": {
                "listen": f"0.0.0.0:{http_port}",
                "password_hash": hash_password(live_password),
                **(TLS_FILES if tls_self_signed else {}),
            },
            "morning": {
                "listen": f"0.0.0.0:{sftp_port}",
                "password_hash": hash_password(sftp_password),
            },
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    found = public_host or reachable_address()
    host = found or "HOST"
    settings = obj.settings
    tls_fingerprint = ""
    if settings.live.tls_cert is not None and settings.live.tls_key is not None:
        names = list(dict.fromkeys(n for n in (found, "localhost", "127.0.0.1") if n))
        tls_fingerprint = make_self_signed(settings.live.tls_cert, settings.live.tls_key, names)
    scheme = "https" if tls_fingerprint else "http"
    # Made (and logged) before the block Aljex is sent, so no log line lands inside it.
    fingerprint = host_key_fingerprint(settings.morning.host_key)
    console.print(f"Wrote {path}.\n")
    console.print("[bold]Send Aljex the following.[/]\n", markup=True)
    console.print("Live Sync (HTTP POST):")
    console.print(
        f"  URL:      {scheme}://{host_port(host, settings.live.port)}{settings.live.path}"
    )
    console.print(f"  Username: {settings.live.username}")
    console.print(f"  Password: {live_password}", highlight=False)
    if tls_fingerprint:
        console.print(  # no emoji: rich would make ":AB:" an emoji
            f"  TLS:      self-signed, SHA-256 {tls_fingerprint}",
            soft_wrap=True,
            highlight=False,
            emoji=False,
        )
    console.print("\nMorning Sync (SFTP upload):")
    console.print(f"  Host:     {host}")
    console.print(f"  Port:     {settings.morning.port}")
    console.print(f"  Username: {settings.morning.username}")
    console.print(f"  Password: {sftp_password}", highlight=False)
    console.print("  Folder:   /")
    console.print(f"  Host key: {fingerprint} (ed25519)", highlight=False)
    console.print()
    if taken_from_url:
        console.print(
            f"--public-host {taken_from_url}: took its host, {host}; the URL above is the"
            " one to send.",
            highlight=False,
        )
    advice = _host_advice(found) if public_host is None else _public_host_advice(host)
    if advice:
        console.print(advice, highlight=False)
    if tls_fingerprint:
        console.print(
            f"The certificate {settings.live.tls_cert} is self-signed, for trials: a sender"
            " that checks certificates refuses it. Use one from a certificate authority"
            " for real use (docs/deploy.md).",
            highlight=False,
        )
    console.print("The passwords are stored only as hashes and will not be shown again.")
    if then_serving:
        console.print("Starting the service now; stop it with Ctrl-C.")
    else:
        console.print(f"Start the service with: {_serve_command(path)}", highlight=False)


def _serve_command(path: Path) -> str:
    """``aljex-sync serve``, with ``-c PATH`` when serve would not find the config itself."""
    if path.resolve() == config.config_path().resolve():
        return "aljex-sync serve"
    return f"aljex-sync serve -c {shlex.quote(str(path))}"


def checked_public_host(value: str) -> tuple[str, str]:
    """The host of ``--public-host``, and the URL it was taken from ('' if none).

    A host name or an IP address (IPv6 with or without brackets) is taken as it is. So is
    the host of a URL that holds nothing else (``http://sync.example.com/``): what it
    meant is plain. Anything more (a port, a path, spaces) would be dropped unseen, so it
    is refused with what to give instead.
    """
    given = value.strip()
    unbracketed = given[1:-1] if given.startswith("[") and given.endswith("]") else given
    if _is_host(unbracketed):
        return unbracketed, ""
    parts = urlsplit(given if "://" in given else f"//{given}")
    try:
        host, port = parts.hostname or "", parts.port
    except ValueError:  # a port that is not a number
        host, port = "", None
    if any(c.isspace() for c in given) or not _is_host(host):
        why, host = "", "sync.example.com"
    elif port is not None:
        why = " (the ports are --http-port and --sftp-port)"
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        why = " (the path is [live] path in the config)"
    elif parts.username is not None or parts.scheme not in ("http", "https"):
        why = ""
    else:
        return host, given
    raise click.BadParameter(
        f"{given!r} is not a host name or IP address: give the one Aljex reaches this"
        f" machine at, e.g. --public-host {host}{why}",
        param_hint="'--public-host'",
    )


def _is_host(host: str) -> bool:
    """True for an IP address or a well-formed DNS name (an internationalized one too)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        ascii_name = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return len(ascii_name) <= 253 and _HOST_NAME.fullmatch(ascii_name) is not None


def _public_host_advice(host: str) -> str:
    """A warning for a --public-host Aljex cannot reach from the internet ('' if none):
    the same as for an address init found itself, and localhost too."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower().rstrip(".")
        if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
            return _unreachable(host, "this machine's own name, for itself alone (loopback)")
        return ""
    if ip.is_loopback:
        return _unreachable(host, "this machine's loopback address, for itself alone")
    if ip.is_unspecified:
        return _unreachable(host, "the address of no machine (it means all, to listen on)")
    if ip.is_private or ip.is_link_local:
        return _unreachable(host, "an address on a private network")
    return ""


def _unreachable(host: str, what: str) -> str:
    """The warning for a host Aljex cannot reach, ``what`` saying what it is."""
    return (
        f"Warning: {host} is {what}, which Aljex cannot reach from the internet: send Aljex"
        " your public host name or address instead (run init again with --force"
        " --public-host HOST to print it, with new passwords)."
    )


def _host_advice(found: str | None) -> str:
    """What to say about a host init worked out itself: Aljex must reach it from outside."""
    if found is None:
        return (
            "HOST above: this machine has no network address but loopback. Replace HOST"
            " with the name or address Aljex reaches this machine at"
            " (or run init again with --force --public-host HOST)."
        )
    if ipaddress.ip_address(found).is_private:
        return _unreachable(found, "this machine's address on a private network")
    return (
        f"{found} is this machine's own address. If Aljex reaches it by another name"
        " (a DNS name, a proxy), send Aljex that instead."
    )


def reachable_address() -> str | None:
    """The address this machine's traffic to the internet leaves from, if not loopback.

    Connecting a UDP socket sends nothing: it only makes the system choose the route, and
    so the local address, it would use for a documentation address (RFC 5737 / 3849).
    """
    for family, target in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                address = str(probe.getsockname()[0]).split("%")[0]
        except OSError:
            continue
        ip = ipaddress.ip_address(address)
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
            return address
    return None
