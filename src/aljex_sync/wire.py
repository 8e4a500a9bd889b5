"""The Live Sync wire format: the bytes of one POST body in, a ``Change`` out.

Aljex sends ``application/x-www-form-urlencoded`` per HTML 4.01 section 17.13.4.1: pairs
joined by ``&``, name and value by ``=``, ``+`` for a space and ``%XX`` for any other byte.
The decoder is strict where the standard library is lenient: a broken ``%`` escape or a NUL
is an error, never passed on. Each name and value is decoded by ``charset.decode``: valid
UTF-8 as UTF-8, each byte outside a valid sequence by a legacy charset (Aljex is an old
system, and one value can mix both); nothing is ever replaced with U+FFFD.

Field names are case-insensitive (``Osd``, ``osd`` and ``OSD`` are one field): a record
that carries two case variants keeps the last, with a warning, as for a field sent twice.
``web_sync_table_name`` and ``web_sync_action`` sent twice are refused: which table or
action was meant cannot be guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote_to_bytes

from .charset import decode
from .errors import MalformedRequest, RequestTooLarge, UnknownAction
from .store.identifiers import INTERNAL_PREFIX

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
# Names the databases keep for themselves, refused on every backend alike: on PostgreSQL a
# table ``pg_class`` would be made in ``public`` but read and written in ``pg_catalog``,
# which the search path always puts first. ``information_schema`` is a schema, never on
# the search path, and MariaDB keeps its own tables in other databases: both are safe.
# The journal's and the files' own indexes are ``ix_aljex_*`` (store/schema.py), and index
# names share the tables' namespace on SQLite and PostgreSQL.
RESERVED_TABLE_PREFIXES = (INTERNAL_PREFIX, "ix_aljex_", "sqlite_", "pg_")
# store/schema.py: a table's history is <table>__history; store/views.py: its typed view
# is <table>_typed (a table of that name would clash with the view, on every database).
RESERVED_TABLE_SUFFIXES = ("__history", "_typed")
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

    Raises MalformedRequest for a broken escape or a NUL byte.
    """
    return _Pairs(legacy_charset).read(body)


class _Pairs:
    """Decodes the pairs of one body, counting the names and values that were not UTF-8."""

    def __init__(self, legacy_charset: str) -> None:
        self.legacy_charset = legacy_charset
        self.mixed = 0  # names and values with bytes read by the legacy charset

    def read(self, body: bytes) -> list[tuple[str, str]]:
        if b"\x00" in body:
            raise MalformedRequest("the body contains a NUL byte")
        if _BAD_ESCAPE.search(body):
            raise MalformedRequest("the body has a broken %-escape")
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:  # raw non-ASCII bytes: not encoded as the standard says
            return [
                (self.decode(name, "a field name"), self.decode(value, ""))
                for name, _, value in (p.partition(b"=") for p in body.split(b"&") if p)
            ]
        # "+" is a space wherever it is ("%2B" is a plus): replaced once for the whole body.
        parts = [p.partition("=") for p in text.replace("+", " ").split("&") if p]
        if "%" not in text:  # most bodies have no escape in any name: no per-pair work
            return [(name, value) for name, _, value in parts]
        pairs: list[tuple[str, str]] = []
        for name, _, value in parts:
            # Most of Aljex's names and values have no %-escape: skip the byte round trip.
            if "%" in name:
                name = self.decode(name.encode(), "a field name")
            if "%" in value:
                value = self.decode(value.encode(), f"field {name!r}")
            pairs.append((name, value))
        return pairs

    def decode(self, raw: bytes, what: str) -> str:
        data = unquote_to_bytes(raw.replace(b"+", b" ")) if raw else b""
        if b"\x00" in data:
            raise MalformedRequest(f"{what or 'a value'} contains a NUL byte")
        text, fixes = decode(data, self.legacy_charset)
        if fixes:
            self.mixed += 1
        return text


def parse_body(body: bytes, *, legacy_charset: str = "cp1252", max_fields: int = 1000) -> Change:
    """Read one Live Sync request body as a Change, or raise the WireError that says why."""
    reader = _Pairs(legacy_charset)
    pairs = reader.read(body)
    warnings: list[str] = []
    # Each name once, as almost every body has it: one dict() in C, no loop in Python.
    fields = dict(pairs)
    table = fields.pop(TABLE_PARAM, None)
    action_text = fields.pop(ACTION_PARAM, None)
    if len(fields) + (table is not None) + (action_text is not None) != len(pairs):
        table, action_text, fields = _fields_of(pairs, warnings)  # a name sent twice
    if len(fields) > max_fields:
        raise RequestTooLarge(f"{len(fields)} fields, more than the limit of {max_fields}")
    table_name = check_table_name(table)
    if action_text is None or not action_text.strip():
        raise MalformedRequest(f"no action: {ACTION_PARAM} is missing or empty", table=table_name)
    action = ACTIONS.get(action_text.strip().lower())
    if action is None:
        raise UnknownAction(
            f"unknown action {action_text.strip()[:80]!r}; expected create, update or delete",
            table=table_name,
            action=action_text,
        )
    if "" in fields:
        warnings.append("a field with an empty name was ignored")
        del fields[""]
    names = "\n".join(fields)  # names with no capital letter cannot collide by case
    if names != names.lower():
        lowered = {name.lower() for name in fields}
        for param in (TABLE_PARAM, ACTION_PARAM):
            if param in lowered:  # not a data column beside the action that says otherwise
                raise MalformedRequest(
                    f"{param} was sent more than once (also in other capitals)", table=table_name
                )
        if len(lowered) != len(fields):
            fields = _fold_case(fields, warnings)
    if reader.mixed:
        warnings.append(
            f"{reader.mixed} name(s) or value(s) were not all UTF-8; "
            f"their other bytes were read as {legacy_charset}"
        )
    return Change(table_name, action, action_text, fields, tuple(warnings))


def _fields_of(
    pairs: list[tuple[str, str]], warnings: list[str]
) -> tuple[str | None, str | None, dict[str, str]]:
    """The table, the action and the fields of pairs in which some name comes twice."""
    table = action_text = None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name == TABLE_PARAM:
            if table is not None:
                raise MalformedRequest(f"{TABLE_PARAM} was sent more than once")
            table = value
        elif name == ACTION_PARAM:
            if action_text is not None:
                raise MalformedRequest(f"{ACTION_PARAM} was sent more than once")
            action_text = value
        else:
            if name in fields:
                warnings.append(f"field {name[:80]!r} was sent more than once; the last value won")
            fields[name] = value
    return table, action_text, fields


def _fold_case(fields: dict[str, str], warnings: list[str]) -> dict[str, str]:
    """One field per name regardless of case: the last variant sent wins, with a warning."""
    folded: dict[str, tuple[str, str]] = {}
    for name, value in fields.items():
        lowered = name.lower()
        earlier = folded.pop(lowered, None)
        if earlier is not None:
            warnings.append(
                f"field {name[:80]!r} was also sent as {earlier[0][:80]!r}; the last value won"
            )
        folded[lowered] = (name, value)
    return dict(folded.values())


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
    if lowered.startswith(RESERVED_TABLE_PREFIXES) or lowered.endswith(RESERVED_TABLE_SUFFIXES):
        raise MalformedRequest(f"table name {name!r} is reserved")
    return lowered
