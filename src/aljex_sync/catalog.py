"""What aljex-sync knows about Aljex's files before any configuration.

One entry per Aljex file named in the Database Synchronization API, plus ``spots``, which
real receivers see on the live feed. Each entry gives the table that live sync fills, the
key Aljex identifies a record by, and whether its morning file is the whole table (``full``)
or only a recent window (``window``), as section 1 of the document says. ``[tables.X]`` in
the configuration overrides any of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Mode = Literal["full", "window"]

DEFAULT_KEY: tuple[str, ...] = ("id",)


@dataclass(frozen=True)
class AljexFile:
    """One Aljex file: its table, key, morning mode and the names its CSV may carry."""

    table: str
    title: str
    key: tuple[str, ...]
    mode: Mode
    file_names: tuple[str, ...]
    window: str = ""


CATALOG: tuple[AljexFile, ...] = (
    AljexFile("employees", "Employees", ("id",), "full", ("employees", "employee")),
    AljexFile("customers", "Customers", ("id",), "full", ("customers", "customer")),
    AljexFile("carriers", "Carriers", ("id",), "full", ("carriers", "carrier")),
    AljexFile(
        "loads",
        "Loads",
        ("id",),
        "window",
        ("loads", "load"),
        "all active loads, plus those created, updated, or with a ship date from 3 days back",
    ),
    AljexFile(
        "payments",
        "Payments (Accounts Payable)",
        ("id",),
        "full",
        ("payments", "paymentsaccountspayable", "accountspayable", "paymentsap"),
    ),
    AljexFile(
        "invoicing",
        "Invoicing",
        ("pro_num",),
        "window",
        ("invoicing", "invoices", "invoice"),
        "records created, updated, or with a ship or invoice date from 3 days back",
    ),
    AljexFile(
        "payments_received",
        "Payments Received (Accounts Receivable)",
        ("id",),
        "window",
        (
            "paymentsreceived",
            "paymentsreceivedaccountsreceivable",
            "accountsreceivable",
            "paymentsar",
        ),
        "records created in the last 7 days",
    ),
    AljexFile("debits", "Debits", ("id",), "window", ("debits",), "created in the last 7 days"),
    AljexFile("credits", "Credits", ("id",), "window", ("credits",), "created in the last 7 days"),
    AljexFile("salesreps", "Salesreps", ("id",), "full", ("salesreps", "salesrep")),
    AljexFile("quotes", "Quotes", ("id",), "window", ("quotes",), "created in the last 7 days"),
    AljexFile("payable", "Payable", ("id",), "full", ("payable",)),
    AljexFile(
        "new_purchases",
        "New Purchases",
        ("id",),
        "window",
        ("newpurchases",),
        "records created in the last 7 days",
    ),
    AljexFile("spots", "Spots", ("spot_number",), "window", ("spots",), "live sync only"),
)

BY_TABLE: dict[str, AljexFile] = {entry.table: entry for entry in CATALOG}

_STAMP = re.compile(
    r"""
    (?<!\d)(?:\d{4}[-_.]?\d{2}[-_.]?\d{2}|\d{2}[-_.]\d{2}[-_.]\d{4})  # 20261127, 11-27-2026
    (?:[T_ -]?\d{2}[:.]?\d{2}(?:[:.]?\d{2})?)?                       # optional time 0600, 06:00:00
    (?!\d)
    """,
    re.VERBOSE,
)


def normalize_file_name(name: str) -> str:
    """Reduce a CSV file name to the letters that identify its Aljex file.

    ``Payments Received (Accounts Receivable) 2026-11-27.csv`` and ``payments_received.csv``
    both become ``paymentsreceivedaccountsreceivable`` and ``paymentsreceived``, which the
    catalog knows. Date and time stamps, separators and the extension go.
    """
    stem = name.rsplit("/", 1)[-1]
    if "." in stem:
        stem = stem.rsplit(".", 1)[0]
    stem = _STAMP.sub("", stem)
    return re.sub(r"[^a-z]", "", stem.lower())


def table_for_file_name(name: str) -> str | None:
    """The catalog table whose Aljex file this name is, or None when it is none of them."""
    normalized = normalize_file_name(name)
    for entry in CATALOG:
        if normalized in entry.file_names:
            return entry.table
    return None


def key_for(table: str) -> tuple[str, ...]:
    """The catalog key of a table: the shipped one, else ``id``."""
    entry = BY_TABLE.get(table)
    return entry.key if entry else DEFAULT_KEY


def mode_for(table: str) -> Mode:
    """The catalog morning mode of a table; an unknown table is taken as a window."""
    entry = BY_TABLE.get(table)
    return entry.mode if entry else "window"


HISTORY_BY_DEFAULT = frozenset({"loads"})
"""Tables whose change history is kept unless ``[tables.X] history`` says otherwise: a load
moves through statuses, and how long it sat in each is what people ask about."""


def history_for(table: str) -> bool:
    """Whether a table keeps ``<table>__history`` by default."""
    return table in HISTORY_BY_DEFAULT
