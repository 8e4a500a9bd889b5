"""HTTPS on the Live Sync port: the server's TLS context, a self-signed pair for trials, and
the warning for a password sent in clear.

Aljex authenticates with HTTP Basic auth: the password travels in every request, readable
by anyone on the path unless the connection is TLS. ``[live] tls_cert`` and ``tls_key``
serve HTTPS directly; a proxy in front (``trusted_proxies``) is the other way. The files
are checked at start, each error one line naming the key, so a wrong file is found at
``serve``, not by Aljex's first failed handshake.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .config import LiveSettings
from .errors import ConfigError
from .settings import host_port

log = logging.getLogger("aljex_sync.tls")

SELF_SIGNED_DAYS = 825
"""How long a self-signed certificate from ``init --tls-self-signed`` is valid."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server's TLS context, TLS 1.2 at least; ConfigError naming the key at fault."""
    cert_pem = _read("live.tls_cert", cert)
    key_pem = _read("live.tls_key", key)
    try:
        certificate = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise ConfigError("live.tls_cert", f"{cert} holds no PEM certificate") from None
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            "live.tls_key", f"{key} holds no PEM private key (or it is encrypted)"
        ) from None
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    public = private_key.public_key().public_bytes(serialization.Encoding.PEM, raw)
    if certificate.public_key().public_bytes(serialization.Encoding.PEM, raw) != public:
        raise ConfigError("live.tls_key", f"{key} is not the key of the certificate {cert}")
    if certificate.not_valid_after_utc < dt.datetime.now(dt.UTC):
        log.warning(
            "live.tls_cert: %s expired on %s", cert, f"{certificate.not_valid_after_utc:%Y-%m-%d}"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError("live.tls_cert", f"{cert} cannot be used: {e}") from None
    return context


def _read(dotted: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(dotted, f"{path} does not exist") from None
    except OSError as e:
        raise ConfigError(dotted, f"cannot read {path}: {e.strerror}") from None


def plain_password_warning(live: LiveSettings) -> str | None:
    """What to say when the Live Sync password would cross a network in clear, else None.

    Plain HTTP is fine on loopback, and behind a TLS proxy (``trusted_proxies`` says one
    is in front); anywhere else Basic auth shows the password to anyone on the path.
    """
    if live.tls_cert is not None or live.trusted_proxies or _loopback(live.host):
        return None
    return (
        f"Live Sync is plain HTTP on {host_port(live.host, live.port)}: the password crosses the"
        " network readable by anyone on the way (HTTP Basic auth). Set [live] tls_cert and"
        " tls_key, or put an HTTPS proxy in front and list it in [live] trusted_proxies"
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_self_signed(cert: Path, key: Path, hosts: Sequence[str]) -> str:
    """Write a self-signed certificate for ``hosts`` and its key (mode 0600), for trials.

    Returns the certificate's SHA-256 fingerprint, which a client can pin. Names that
    are addresses go in as IP addresses, the others as DNS names.
    """
    private_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(private_key, hashes.SHA256())
    )
    key.parent.mkdir(parents=True, exist_ok=True)
    key.touch(mode=0o600)
    key.chmod(0o600)
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    digest = certificate.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
