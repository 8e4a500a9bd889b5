"""Casts from Aljex's text to SQL types that cannot fail: a value that does not fit is NULL.

Each type has a *fits* test and a conversion, and the conversion runs only under
``CASE WHEN <fits> THEN ...`` so that no query on a typed view can raise, whatever the
synced table holds (``:`` in a money field, ``DROP`` in a time, ``2026-02-30``). The tests
use no arithmetic and no casts themselves, only pattern matches and comparisons of digit
strings, so they cannot raise either, in whatever order the database evaluates them.

PostgreSQL and MariaDB test with regular expressions (``~``, ``REGEXP``). SQLite has no
REGEXP unless the application registers one, and the views must stay readable by any
SQLite client (the sqlite3 CLI, Metabase), so SQLite tests with ``GLOB``, ``substr`` and
``length`` alone, to the same rules. SQLite has no date, time or decimal types either: its
views give ISO text ``YYYY-MM-DD`` and ``HH:MM:SS`` (what SQLite's date functions read),
REAL for money and 0/1 for flags.

What fits (the same on all three databases):

- ``date``: ``YYYY-MM-DD`` or ``MM/DD/YYYY``, a real day of the calendar;
- ``time``: ``H:MM`` or ``HH:MM``, optionally ``:SS``, up to 23:59:59;
- ``int``: an integer of at most 18 digits without leading zeros (``007`` is a code, not 7);
- ``money``: at most 12 digits before the point, none or thousands separators
  (``1,234``), at most 2 after it, an optional ``-`` and ``$`` (``-$12.00``, ``$-12.00``);
  no leading zeros either;
- ``bool``: ``Y``/``N``, ``YES``/``NO``, ``T``/``F``, ``TRUE``/``FALSE``, ``1``/``0``, any case;
- ``text``: anything; the empty string is NULL in the view, for every type.
"""

from __future__ import annotations

import operator
from functools import reduce
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    Float,
    Numeric,
    Text,
    Time,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    true,
    type_coerce,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement

from ..field_types import FieldType

Value = ColumnElement[Any]

TRUE_WORDS = ("Y", "YES", "T", "TRUE", "1")
FALSE_WORDS = ("N", "NO", "F", "FALSE", "0")
MONEY = Numeric(14, 2)

_INT_RE = "^(0|-?[1-9][0-9]{0,17})$"
_MONEY_RE = "^(-?[$]?|[$]-)(0|[1-9][0-9]{0,11}|[1-9][0-9]{0,2}(,[0-9]{3}){1,3})([.][0-9]{1,2})?$"
_ISO_RE = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_US_RE = "^[0-9]{2}/[0-9]{2}/[0-9]{4}$"
_TIME_RE = "^([01]?[0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$"

_D = "[0-9]"
_ISO_GLOB = f"{_D * 4}-{_D * 2}-{_D * 2}"
_US_GLOB = f"{_D * 2}/{_D * 2}/{_D * 4}"
_TIME_GLOBS = tuple(
    f"{hour}:[0-5]{_D}{seconds}"
    for hour in (_D, f"[01]{_D}", "2[0-3]")
    for seconds in ("", f":[0-5]{_D}")
)
# 1,234 to 999,999,999,999: one to three digits, then one to three groups of three.
_GROUPED_GLOBS = tuple(
    "[1-9]" + _D * lead + f",{_D * 3}" * groups for lead in range(3) for groups in range(1, 4)
)
# The cents of money, and their length: none, or a point and one or two digits.
_CENTS = (("", 0), (f".{_D}", 2), (f".{_D * 2}", 3))
# A character that no money value holds (the prefix's - and $, digits, separators, point).
_NOT_MONEY_GLOB = "*[^0-9$,.-]*"
# Years whose last two digits make them leap years (and centuries whose first two do).
_BY_FOUR = tuple(f"{n:02d}" for n in range(0, 100, 4))


PLACEHOLDER = "aljex_value_placeholder"
_TEMPLATES: dict[tuple[str, FieldType, str], str] = {}


def sql_template(what: str, kind: FieldType, dialect: Dialect) -> str:
    """The SQL of ``typed`` (``what="typed"``) or ``misfit`` for a column ``PLACEHOLDER``.

    Compiling these expressions for a 400-column table takes SQLAlchemy seconds; compiled
    once per type, they are then filled in with each quoted column name.
    """
    key = (what, kind, dialect.name)
    found = _TEMPLATES.get(key)
    if found is None:
        value = type_coerce(literal_column(PLACEHOLDER), Text)
        expression = (typed if what == "typed" else misfit)(value, kind, dialect.name)
        compiled = expression.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        found = _TEMPLATES[key] = str(compiled)
    return found


def typed(value: Value, kind: FieldType, dialect: str) -> Value:
    """``value`` as ``kind``: NULL when empty or when it does not fit, never an error."""
    if kind == "text":
        return func.nullif(value, "")
    if kind == "date":
        iso, us = _iso_date(value, dialect), _us_date(value, dialect)
        as_iso = _concat(_part(value, 7, 4), "-", _part(value, 1, 2), "-", _part(value, 4, 2))
        return case((iso, _as_date(value, dialect)), (us, _as_date(as_iso, dialect)))
    if kind == "bool":
        upper = func.upper(value)
        return case((upper.in_(TRUE_WORDS), true()), (upper.in_(FALSE_WORDS), false()))
    return case((fits(value, kind, dialect), _convert(value, kind, dialect)), else_=null())


def misfit(value: Value, kind: FieldType, dialect: str) -> ColumnElement[int]:
    """1 when ``value`` is neither NULL, nor empty, nor fits ``kind``; else 0."""
    if kind == "text":
        return literal(0)
    empty = (or_(value.is_(None), value == ""), 0)
    if kind == "money" and dialect == "sqlite":
        # Ruled out at once by a character no money has: a third of the cost of the test.
        return case(
            empty, (_glob(value, _NOT_MONEY_GLOB), 1), (fits(value, kind, dialect), 0), else_=1
        )
    return case(empty, (fits(value, kind, dialect), 0), else_=1)


def fits(value: Value, kind: FieldType, dialect: str) -> ColumnElement[bool]:
    """Whether a non-empty ``value`` can be cast to ``kind`` (see the module's rules)."""
    sqlite = dialect == "sqlite"
    if kind == "text":
        return true()
    if kind == "bool":
        return func.upper(value).in_(TRUE_WORDS + FALSE_WORDS)
    if kind == "date":
        return or_(_iso_date(value, dialect), _us_date(value, dialect))
    if kind == "time":
        if sqlite:
            return or_(*(_glob(value, pattern) for pattern in _TIME_GLOBS))
        return value.regexp_match(_TIME_RE)
    if kind == "int":
        return _sqlite_int(value) if sqlite else value.regexp_match(_INT_RE)
    if kind == "money":
        return _sqlite_money(value) if sqlite else value.regexp_match(_MONEY_RE)
    raise ValueError(f"unknown field type {kind!r}")


def _convert(value: Value, kind: FieldType, dialect: str) -> Value:
    """The conversion of a value that fits ``kind`` (time, int or money)."""
    sqlite = dialect == "sqlite"
    if kind == "time":
        length = func.length(value)
        normal = case(
            (length == 4, _concat("0", value, ":00")),
            (length == 5, _concat(value, ":00")),
            (length == 7, _concat("0", value)),
            else_=value,
        )
        return normal if sqlite else cast(normal, Time)
    if kind == "int":
        return cast(value, BigInteger)
    plain = func.replace(func.replace(value, "$", ""), ",", "")
    return cast(plain, Float if sqlite else MONEY)


def _iso_date(value: Value, dialect: str) -> ColumnElement[bool]:
    pattern = _glob(value, _ISO_GLOB) if dialect == "sqlite" else value.regexp_match(_ISO_RE)
    return and_(pattern, _on_calendar(_part(value, 1, 4), _part(value, 6, 2), _part(value, 9, 2)))


def _us_date(value: Value, dialect: str) -> ColumnElement[bool]:
    pattern = _glob(value, _US_GLOB) if dialect == "sqlite" else value.regexp_match(_US_RE)
    return and_(pattern, _on_calendar(_part(value, 7, 4), _part(value, 1, 2), _part(value, 4, 2)))


def _on_calendar(year: Value, month: Value, day: Value) -> ColumnElement[bool]:
    """Whether digit strings YYYY, MM, DD name a real day, by comparing strings only."""
    leap = and_(
        _part(year, 3, 2).in_(_BY_FOUR),
        or_(_part(year, 3, 2) != "00", _part(year, 1, 2).in_(_BY_FOUR)),
    )
    last = case(
        (month == "02", case((leap, "29"), else_="28")),
        (month.in_(("04", "06", "09", "11")), "30"),
        else_="31",
    )
    return and_(year >= "0001", month >= "01", month <= "12", day >= "01", day <= last)


def _as_date(iso: Value, dialect: str) -> Value:
    return iso if dialect == "sqlite" else cast(iso, Date)


def _sqlite_int(value: Value) -> ColumnElement[bool]:
    digits_after_first = ~_glob(func.substr(value, 2), "*[^0-9]*")
    return or_(
        value == "0",
        and_(
            or_(
                and_(_glob(value, "[1-9]*"), func.length(value) <= 18),
                and_(_glob(value, "-[1-9]*"), func.length(value) <= 19),
            ),
            digits_after_first,
        ),
    )


def _sqlite_money(value: Value) -> ColumnElement[bool]:
    """The money rule with GLOB: the sign and ``$``, then the number that follows them.

    The number is a whole part and cents (none, or a point and one or two digits). Each
    shape of the cents is tested as a pattern of its own, so the whole part is never cut
    out of the number: that took a nest of string functions, evaluated anew at each use.
    """
    number = func.ltrim(value, "-$")
    prefix = func.substr(value, 1, func.length(value) - func.length(number))
    length = func.length(number)
    zero = [number == "0", *(_glob(number, f"0{cents}") for cents, _ in _CENTS[1:])]
    plain = [  # a whole part of at most 12 digits and no separators, then the cents
        and_(~_glob(number, "*[^0-9]*"), length <= 12),
        *(
            and_(
                _glob(number, f"*{cents}"),
                ~_glob(func.substr(number, 1, length - size), "*[^0-9]*"),
                length <= 12 + size,
            )
            for cents, size in _CENTS[1:]
        ),
    ]
    grouped = [_glob(number, whole + cents) for whole in _GROUPED_GLOBS for cents, _ in _CENTS]
    return and_(
        prefix.in_(("", "-", "$", "-$", "$-")),
        or_(
            *zero,
            and_(_glob(number, "[1-9]*"), or_(*plain)),
            and_(_glob(number, "[1-9]*,*"), or_(*grouped)),
        ),
    )


def _glob(value: Value, pattern: str) -> ColumnElement[bool]:
    return value.op("GLOB", is_comparison=True)(literal(pattern, Text))


def _part(value: Value, start: int, length: int) -> Value:
    return func.substr(value, start, length, type_=Text)


def _concat(*parts: Value | str) -> Value:
    """Text concatenation: ``||`` on PostgreSQL and SQLite, ``concat()`` on MariaDB."""
    typed_parts = [
        type_coerce(p, Text) if not isinstance(p, str) else literal(p, Text) for p in parts
    ]
    return reduce(operator.add, typed_parts)
