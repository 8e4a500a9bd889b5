"""How Aljex writes a value: dates ISO, times ``H:MM``, money with two decimals, and which
charset a record or a morning file goes out in."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from datetime import date, datetime


def iso(day: date) -> str:
    return day.isoformat()


def hm(moment: datetime) -> str:
    """Aljex's time format: hour without a leading zero, ``9:05``, ``14:30``."""
    return f"{moment.hour}:{moment.minute:02d}"


def money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def cents(value: str) -> int:
    """A money field back in cents; quirks such as ``:`` and empty fields count as zero."""
    try:
        return round(float(value) * 100)
    except ValueError:
        return 0


def ascii_letters(text: str) -> str:
    """Letters and digits of ``text`` without accents, for ids, logins and e-mail names."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded if ch.isalnum())


def parse_date(value: str) -> date | None:
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def charset_for(record: Mapping[str, str]) -> str:
    """How Aljex sends a record: ``cp1252`` when it holds a non-ASCII character that
    Windows-1252 can encode (and all of its characters can), else ``utf-8``."""
    text = "".join(record.values())
    if text.isascii():
        return "utf-8"
    try:
        text.encode("cp1252")
    except UnicodeEncodeError:
        return "utf-8"
    return "cp1252"


def file_charset(records: Iterable[Mapping[str, str]]) -> str:
    """The encoding of a morning file: ``cp1252`` when at least one of its records is
    flagged cp1252 and every record is cp1252-encodable, else ``utf-8``."""
    flagged = False
    for record in records:
        charset = charset_for(record)
        if charset == "cp1252":
            flagged = True
        elif not "".join(record.values()).isascii():
            return "utf-8"
    return "cp1252" if flagged else "utf-8"
