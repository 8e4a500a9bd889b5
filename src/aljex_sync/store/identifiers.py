"""Safe SQL identifiers from names that come from the network.

Field names are Aljex's API names (``id``, ``Osd``, ``ps_city_12``), but a request can
carry anything. A name that is already a safe, portable identifier becomes its column
lowercased; any other is mapped by one fixed rule, so the same field always gets the same
column on SQLite, PostgreSQL and MariaDB, and two fields never share one. The mapping is
recorded in ``_aljex_columns``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection

from sqlalchemy.dialects.mysql import reserved_words as mysql_words
from sqlalchemy.dialects.postgresql import base as postgresql_base
from sqlalchemy.dialects.sqlite import base as sqlite_base

MAX_IDENTIFIER = 63  # PostgreSQL truncates at 63 bytes; MySQL allows 64 characters
SAFE = re.compile(r"[a-z][a-z0-9_]*")

RESERVED_WORDS: frozenset[str] = frozenset(
    postgresql_base.RESERVED_WORDS
    | mysql_words.RESERVED_WORDS_MYSQL
    | mysql_words.RESERVED_WORDS_MARIADB
    | sqlite_base.SQLiteIdentifierPreparer.reserved_words
)
SYSTEM_COLUMNS = frozenset({"oid", "tableoid", "xmin", "xmax", "cmin", "cmax", "ctid", "rowid"})
INTERNAL_PREFIX = "_aljex"


def is_safe_column(name: str) -> bool:
    """True when ``name`` can be a column as it is on all three databases."""
    return (
        SAFE.fullmatch(name) is not None
        and len(name) <= MAX_IDENTIFIER
        and name not in RESERVED_WORDS
        and name not in SYSTEM_COLUMNS
    )


def column_for(field: str, taken: Collection[str]) -> str:
    """The column for a field: its lowercased name when safe and free, else a mapped name.

    The mapped name is the field lowercased, with every character other than a-z, 0-9
    and ``_`` made ``_``, cut to fit, and ended with ``_`` and 8 hex digits of the field's
    SHA-256, so ``user`` becomes ``user_04f8996d`` and ``Pro#`` ``pro_5e3b0c44``.
    """
    lowered = field.lower()
    if is_safe_column(lowered) and lowered not in taken:
        return lowered
    digest = hashlib.sha256(field.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem = re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", lowered)).strip("_")
    if not stem or not stem[0].isalpha():
        stem = "f_" + stem
    stem = stem[: MAX_IDENTIFIER - 9].rstrip("_")
    candidate = f"{stem}_{digest}"
    n = 1
    while candidate in taken:  # two fields with the same hash prefix: vanishingly rare
        candidate = f"{stem[: MAX_IDENTIFIER - 12]}_{digest}{n:02d}"
        n += 1
    return candidate


def suffixed(table: str, suffix: str) -> str:
    """``<table><suffix>`` (a view, a history table), shortened with a hash of the table's
    name where it would pass the identifier limit."""
    name = f"{table}{suffix}"
    if len(name) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"{table[: MAX_IDENTIFIER - len(suffix) - 9]}_{digest}{suffix}"


def internal(kind: str, table: str) -> str:
    """``_aljex_<kind>_<table>``: the name of an object aljex-sync makes for ``table`` (an
    index, a constraint, a sequence), under the prefix no sender's table can have, so that
    a table can never take it nor be kept from being made by it.

    Past 63 characters the table's name is cut and a hash of it follows a double
    underscore, which a name that fits never has there (table names start with a letter).
    """
    name = f"{INTERNAL_PREFIX}_{kind}_{table}"
    if len(name) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    head = f"{INTERNAL_PREFIX}_{kind}__{digest}_"
    return head + table[: MAX_IDENTIFIER - len(head)]
