"""The Live Sync wire format: the bytes of one POST body in, a ``Change`` out.

Aljex sends ``application/x-www-form-urlencoded`` per HTML 4.01 section 17.13.4.1: pairs
joined by ``&``, name and value by ``=``, ``+`` for a space and ``%XX`` for any other byte.
The decoder is strict where the standard library is lenient: a broken ``%`` escape or a NUL
is an error, never passed on. Each name and value is decoded as UTF-8, or, when that fails,
with a legacy charset (Aljex is an old system); nothing is ever replaced with U+FFFD.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote_to_bytes

from .errors import MalformedRequest, RequestTooLarge, UnknownAction

Action = Literal["create", "update", "delete"]

TABLE_PARAM = "web_sync_table_name"
ACTION_PARAM = "web_sync_action"

# Receivers in the field have seen these besides the three the document names.
ACTIONS: dict[str, Action] = {
    "create": "create",
    "insert": "create",
    "update": "update",
    "delete": "delete",
    "deleted": "delete",
    "remove": "delete",
    "d": "delete",
}

TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's limit, the smallest of the three databases
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class Change:
    """One record as Aljex sent it: which table, what to do, and its fields.

    ``fields`` keeps each name exactly as sent (``Osd`` stays ``Osd``); the store decides
    columns. ``warnings`` notes what was accepted but odd, such as a field sent twice.
    """

    table: str
    action: Action
    raw_action: str
    fields: dict[str, str]
    warnings: tuple[str, ...] = field(default=())


def decode_pairs(body: bytes, *, legacy_charset: str = "cp1252") -> list[tuple[str, str]]:
    """Split and decode a form-urlencoded body into (name, value) pairs, in order.

    Raises MalformedRequest for a broken escape, a NUL byte, or text that is valid in
    neither UTF-8 nor the legacy charset.
    """
    if b"\x00" in body:
        raise MalformedRequest("the body contains a NUL byte")
    if _BAD_ESCAPE.search(body):
        raise MalformedRequest("the body has a broken %-escape")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:  # raw non-ASCII bytes: not encoded as the standard says
        return [
            (_decode(name, legacy_charset, "a field name"), _decode(value, legacy_charset, ""))
            for name, _, value in (p.partition(b"=") for p in body.split(b"&") if p)
        ]
    pairs: list[tuple[str, str]] = []
    for part in text.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        # Most of Aljex's names and values have no %-escape: skip the byte round trip.
        if "%" in name:
            name = _decode(name.encode(), legacy_charset, "a field name")
        else:
            name = name.replace("+", " ")
        if "%" in value:
            value = _decode(value.encode(), legacy_charset, f"field {name!r}")
        else:
            value = value.replace("+", " ")
        pairs.append((name, value))
    return pairs


def _decode(raw: bytes, legacy_charset: str, what: str) -> str:
    data = unquote_to_bytes(raw.replace(b"+", b" ")) if raw else b""
    if b"\x00" in data:
        raise MalformedRequest(f"{what or 'a value'} contains a NUL byte")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode(legacy_charset)
    except UnicodeDecodeError:
        raise MalformedRequest(
            f"{what or 'a value'} is neither UTF-8 nor {legacy_charset}"
        ) from None


def parse_body(body: bytes, *, legacy_charset: str = "cp1252", max_fields: int = 2000) -> Change:
    """Read one Live Sync request body as a Change, or raise the WireError that says why."""
    pairs = decode_pairs(body, legacy_charset=legacy_charset)
    table = action_text = None
    fields: dict[str, str] = {}
    warnings: list[str] = []
    for name, value in pairs:
        if name == TABLE_PARAM:
            table = value
        elif name == ACTION_PARAM:
            action_text = value
        else:
            if name in fields:
                warnings.append(f"field {name!r} was sent more than once; the last value won")
            fields[name] = value
    if len(fields) > max_fields:
        raise RequestTooLarge(f"{len(fields)} fields, more than the limit of {max_fields}")
    table_name = check_table_name(table)
    if action_text is None or not action_text.strip():
        raise MalformedRequest(f"no action: {ACTION_PARAM} is missing or empty", table=table_name)
    action = ACTIONS.get(action_text.strip().lower())
    if action is None:
        raise UnknownAction(
            f"unknown action {action_text.strip()!r}; expected create, update or delete",
            table=table_name,
            action=action_text,
        )
    if any(not name for name in fields):
        warnings.append("a field with an empty name was ignored")
        fields.pop("", None)
    return Change(table_name, action, action_text, fields, tuple(warnings))


def check_table_name(table: str | None) -> str:
    """The lowercased table name, or MalformedRequest when it is not a safe identifier."""
    if table is None or not table.strip():
        raise MalformedRequest(f"no table name: {TABLE_PARAM} is missing or empty")
    name = table.strip()
    if not TABLE_NAME.fullmatch(name):
        raise MalformedRequest(f"invalid table name {name[:80]!r}")
    if len(name) > MAX_IDENTIFIER_BYTES:
        raise MalformedRequest(f"table name longer than {MAX_IDENTIFIER_BYTES} characters")
    lowered = name.lower()
    if lowered.startswith(("_aljex", "sqlite_")):
        raise MalformedRequest(f"table name {name!r} is reserved")
    return lowered
