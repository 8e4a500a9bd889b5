"""Passwords: generating them, storing them hashed, checking them in constant time.

Aljex authenticates every Live Sync post with the same user and password, so checking a
slow password hash on each request would cost more than the whole database commit. A
successful check is therefore remembered as an HMAC under a key that lives only in this
process; later requests compare against it in constant time. Failed checks always pay the
full hash, which slows guessing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_ARGON2 = PasswordHasher()


def generate_password() -> str:
    """A random password strong enough for an internet-facing endpoint (144 bits)."""
    return secrets.token_urlsafe(18)


def hash_password(password: str) -> str:
    """Hash a password with argon2id, in the PHC string form (``$argon2id$...``)."""
    return _ARGON2.hash(password)


def is_supported_hash(encoded: str) -> bool:
    """True when ``encoded`` is an argon2 or scrypt hash this module can verify."""
    if encoded.startswith("$argon2"):
        return True
    return _parse_scrypt(encoded) is not None


def verify_password(encoded: str, password: str) -> bool:
    """Check a password against an argon2 (``$argon2id$...``) or scrypt hash.

    The scrypt form is ``$scrypt$ln=14,r=8,p=1$<salt base64>$<hash base64>``, as passlib
    writes it.
    """
    if encoded.startswith("$argon2"):
        try:
            return _ARGON2.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return False
    parsed = _parse_scrypt(encoded)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    actual = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=2**27
    )
    return hmac.compare_digest(actual, expected)


def _parse_scrypt(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "scrypt":
        return None
    try:
        params = dict(item.split("=", 1) for item in parts[2].split(","))
        n = 2 ** int(params["ln"])
        r, p = int(params["r"]), int(params["p"])
        salt = _b64decode(parts[3])
        expected = _b64decode(parts[4])
    except (KeyError, ValueError):
        return None
    return n, r, p, salt, expected


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text.replace(".", "+") + "=" * (-len(text) % 4), validate=False)


class PasswordCheck:
    """Checks one user name and password, fast after the first success.

    Built from either a plain ``password`` (kept only as a digest) or a ``password_hash``.
    Only a right user with a right password is ever decided fast; every failure takes the
    same path, whatever was wrong. A wrong user with the right password pays the full hash
    like any wrong password, so the time of a failure says nothing about which part was
    right. ``slow_checks`` counts the full hash checks run, for logs and tests.
    """

    def __init__(self, username: str, *, password: str = "", password_hash: str = "") -> None:
        self._key = secrets.token_bytes(32)
        self._username = self._digest(username)
        self._password_hash = password_hash
        self._lock = threading.Lock()
        self._known_good: bytes | None = None
        self.slow_checks = 0
        if password:
            self._known_good = self._digest(password)

    def _digest(self, text: str) -> bytes:
        return hmac.new(self._key, text.encode(), hashlib.sha256).digest()

    def username_matches(self, username: str) -> bool:
        """Constant-time comparison of the user name (of equal-length digests)."""
        return hmac.compare_digest(self._digest(username), self._username)

    def check_fast(self, username: str, password: str) -> bool | None:
        """True for the right user with a password known good; None when only the slow
        hash can decide; False (with no hash configured) for any failure."""
        user_ok = self.username_matches(username)
        known = self._known_good
        password_ok = known is not None and hmac.compare_digest(self._digest(password), known)
        if user_ok and password_ok:
            return True
        if not self._password_hash:
            return False
        return None

    def check(self, username: str, password: str) -> bool:
        """Full check; remembers a success so the next one is fast. May take ~50 ms.

        Every failure runs the hash: a wrong user as much as a wrong password.
        """
        if self.check_fast(username, password):
            return True
        if not self._password_hash:
            return False
        with self._lock:
            self.slow_checks += 1
        password_ok = verify_password(self._password_hash, password)
        user_ok = self.username_matches(username)
        if password_ok:
            with self._lock:
                self._known_good = self._digest(password)
        return password_ok and user_ok
