"""A seeded, consistent little freight brokerage: what Aljex would hold and send about it.

The emulator of Aljex's sender, the tests and the benchmarks all need the same thing: records
that look like a real customer's (400-field loads, stray ``:`` in money fields, ``DROP`` in
time fields, accented names sent in cp1252, notes with ``&``, ``=`` and CR LF) and that hang
together (a load's customer exists, an invoice's pro number is a load's). A
:class:`Brokerage` makes them from a seed and a date, with no wall clock and no global random
state, so the same seed and day always give the same brokerage and the same live feed.

It is also the oracle: :meth:`Brokerage.records` is what a receiver's database should hold
after every change :meth:`Brokerage.next_change` has returned, and
:meth:`Brokerage.morning_export` is what each morning file holds under the rules of section 1
of the Database Synchronization API. All values are strings, as Aljex sends them: dates ISO,
times ``H:MM`` in Eastern time, money with two decimals, empty fields empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta

from ..catalog import BY_TABLE, CATALOG, key_for
from .activity import LiveActivity
from .departments import Departments
from .fields import FIELDS
from .history import History
from .world import Key, LiveChange, RecordMeta, Scale, World, resolve_scale

MORNING_TABLES = tuple(entry.table for entry in CATALOG if entry.table != "spots")

# Window lengths of section 1: "starting 3 days in the past" and "7 days in the past".
LOAD_WINDOW = timedelta(days=3)
CREATED_WINDOW = timedelta(days=7)


class Brokerage:
    """A freight brokerage generated from ``seed`` as of the morning of ``today``.

    The history (people, customers, carriers, loads over ``history_days`` with their
    invoices, bills and payments) is laid down at construction; the clock then stands at
    7:00 on ``today`` and :meth:`next_change` moves the brokerage on, one record at a time.
    The work is done by departments (people, companies, loads, accounting, sales) on one
    shared :class:`~.world.World`; this class is what the rest of the emulator sees.
    """

    def __init__(self, seed: int, *, today: date, size: str | Scale = "small") -> None:
        self.scale = resolve_scale(size)
        self.today = today
        self._world = World(seed, today, self.scale)
        departments = Departments.of(self._world)
        History(departments).lay_down()
        self._activity = LiveActivity(departments)

    @property
    def now(self) -> datetime:
        """The brokerage's clock: naive Eastern time, moved on by every change."""
        return self._world.now

    def tables(self) -> list[str]:
        """Every table the brokerage fills, in catalog order."""
        return [entry.table for entry in CATALOG]

    def key(self, table: str) -> tuple[str, ...]:
        """The fields that identify a record of ``table`` (the catalog key)."""
        return key_for(table)

    def records(self, table: str) -> dict[Key, dict[str, str]]:
        """The ground truth of ``table`` now: a copy, keyed by the key fields' values."""
        return {key: dict(record) for key, record in self._world.data[table].items()}

    def meta(self, table: str, key: Key) -> RecordMeta:
        """A copy of the metadata (created, updated, ship and invoice dates) of a record."""
        m = self._world.meta[table][key]
        return RecordMeta(m.created, m.updated, m.ship_date, m.invoice_date, m.active)

    def next_change(self) -> LiveChange:
        """Move the clock on 10 to 90 seconds, make one change and return it as sent."""
        return self._activity.next_change()

    def morning_columns(self, table: str) -> list[str]:
        """The header of ``table``'s morning CSV: the same names live sync uses."""
        return list(FIELDS[table])

    def morning_records(self, table: str, day: date) -> Iterator[dict[str, str]]:
        """The records of ``table``'s morning file for ``day``, one at a time (read-only).

        Full files hold every record. Loads hold the active ones plus those created,
        updated or shipping from three days before ``day`` on; invoicing those created,
        updated, shipped or invoiced from three days back; the other window files those
        created from seven days back. The file reflects the ground truth as it is now, so
        call this while the clock stands on the morning of ``day``.
        """
        if table not in MORNING_TABLES:
            raise ValueError(f"{table!r} has no morning file")
        metas = self._world.meta[table]
        for key, record in self._world.data[table].items():
            if _in_morning_file(table, metas[key], day):
                yield record

    def morning_export(self, day: date) -> dict[str, list[dict[str, str]]]:
        """Every morning file for ``day``: table name to the records it holds (copies)."""
        return {t: [dict(r) for r in self.morning_records(t, day)] for t in MORNING_TABLES}


def _in_morning_file(table: str, meta: RecordMeta, day: date) -> bool:
    """Section 1's rule for whether a record is in ``table``'s morning file for ``day``."""
    if BY_TABLE[table].mode == "full":
        return True
    if table in ("loads", "invoicing"):
        since = day - LOAD_WINDOW
        dates = (meta.created.date(), meta.updated.date(), meta.ship_date, meta.invoice_date)
        recent = any(d is not None and d >= since for d in dates)
        return recent or (table == "loads" and meta.active)
    return meta.created.date() >= day - CREATED_WINDOW
