"""The state every part of a brokerage shares: its records, the clock, the seeded dice.

A :class:`World` holds what the brokerage's departments (people, companies, loads,
accounting, sales) read and change: every record as Aljex holds it, what the morning rules
need to know about it (:class:`RecordMeta`), the id counters, the pools the live feed picks
from, and the one ``random.Random`` that every draw comes from, in a fixed order, so that a
seed always gives the same brokerage.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from ..catalog import key_for
from .fields import FIELDS, MONEY_FIELDS
from .values import charset_for, parse_date
from .vocabulary import ACCENTED_PEOPLE, FIRST_NAMES, LAST_NAMES

Record = dict[str, str]
Key = tuple[str, ...]

LOAD_STATUSES = ("OPEN", "ASSIGNED", "COVERED", "DISPATCHED", "LOADED", "DELIVERED", "VOID")
CLOSED_STATUSES = frozenset({"DELIVERED", "VOID"})

# What the live feed picks from: records in a state where the next step can happen to them.
POOLS = (
    "active_loads",
    "active_customers",
    "active_carriers",
    "unbilled_loads",
    "unpaid_payables",
    "open_invoices",
    "quotes",
    "spots",
)


@dataclass(frozen=True)
class Scale:
    """How many records of each kind a brokerage starts with.

    Invoicing, payable, payments and payments received have no count: they follow from the
    loads' history (delivered loads are invoiced, most are billed by their carrier and paid).
    ``history_days`` is how far back the earliest pickups lie.
    """

    employees: int
    salesreps: int
    customers: int
    carriers: int
    loads: int
    quotes: int
    spots: int
    new_purchases: int
    debits: int
    credits: int
    history_days: int = 45

    def __post_init__(self) -> None:
        if min(self.employees, self.salesreps, self.customers, self.carriers) < 1:
            raise ValueError("a brokerage needs at least one employee, salesrep, customer, carrier")
        if self.salesreps > self.employees:
            raise ValueError("salesreps are employees: salesreps cannot exceed employees")
        counts = (self.loads, self.quotes, self.spots, self.new_purchases, self.debits)
        if min(*counts, self.credits, self.history_days) < 0:
            raise ValueError("counts cannot be negative")


SCALES: dict[str, Scale] = {
    "tiny": Scale(5, 3, 8, 8, 30, 6, 4, 4, 3, 3),
    "small": Scale(20, 6, 60, 50, 300, 40, 15, 20, 15, 15),
}


def resolve_scale(size: str | Scale) -> Scale:
    if isinstance(size, Scale):
        return size
    try:
        return SCALES[size]
    except KeyError:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SCALES)}") from None


@dataclass(frozen=True)
class LiveChange:
    """One Live Sync request: the table, the action and every field of the record.

    ``charset`` is how the sender must encode the values: ``cp1252`` when the record holds
    an accented name that Aljex sends in Windows-1252, else ``utf-8``.
    """

    table: str
    action: str
    fields: dict[str, str]
    charset: str = "utf-8"


def change(table: str, action: str, record: Record) -> LiveChange:
    """The request that sends ``record``: a copy of all its fields and its charset."""
    return LiveChange(table, action, dict(record), charset_for(record))


@dataclass
class RecordMeta:
    """What the morning rules need to know about a record beyond its fields."""

    created: datetime
    updated: datetime
    ship_date: date | None = None
    invoice_date: date | None = None
    active: bool = True


class Pool:
    """An ordered set with O(1) add, discard and seeded random pick."""

    def __init__(self) -> None:
        self._items: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        position = self._index.pop(item, None)
        if position is None:
            return
        last = self._items.pop()
        if position < len(self._items):
            self._items[position] = last
            self._index[last] = position

    def pick(self, rng: random.Random) -> str | None:
        return rng.choice(self._items) if self._items else None

    def __len__(self) -> int:
        return len(self._items)


class World:
    """The records, the clock and the dice of one brokerage, shared by its departments.

    Stored records never change in place: :meth:`get` hands out a copy to change and
    :meth:`store` again. The clock (``now``) is naive Eastern time.
    """

    def __init__(self, seed: int, today: date, scale: Scale) -> None:
        self.scale = scale
        self.today = today
        self.now = datetime.combine(today, time(7, 0))
        self.rng = random.Random(seed)
        self.data: dict[str, dict[Key, Record]] = {table: {} for table in FIELDS}
        self.meta: dict[str, dict[Key, RecordMeta]] = {table: {} for table in FIELDS}
        self._blank: dict[str, Record] = {t: dict.fromkeys(f, "") for t, f in FIELDS.items()}
        self._counters = {"loads": self.rng.randint(1_100_000, 1_300_000), "carriers": 10_000}
        self._counters |= {"payments": 40_000, "payments_received": 70_000, "debits": 9_000}
        self._counters |= {"credits": 6_000, "quotes": 300_000, "payable": 20_000}
        self._counters |= {"new_purchases": 5_000, "spots": 800_000}
        self.employees: list[str] = []
        self.salesreps: list[str] = []
        self.customers: list[str] = []
        self.carriers: list[str] = []
        self.invoices: list[str] = []
        self.pools = {name: Pool() for name in POOLS}
        self.exposure: dict[str, int] = {}  # customer id: open invoices, in cents

    # -- records ----------------------------------------------------------------------------

    def key_of(self, table: str, record: Mapping[str, str]) -> Key:
        return tuple(record[name] for name in key_for(table))

    def get(self, table: str, *key: str) -> Record:
        """A copy of a stored record, to change and store again (stored ones never change)."""
        return dict(self.data[table][key])

    def store(self, table: str, record: Record, at: datetime) -> Key:
        """Keep ``record`` as the truth, created or updated at ``at``."""
        key = self.key_of(table, record)
        meta = self.meta[table].get(key)
        if meta is None:
            meta = self.meta[table][key] = RecordMeta(created=at, updated=at)
        meta.updated = at
        if table == "loads":
            meta.ship_date = parse_date(record["pickup_date"])
            meta.active = record["status"] not in CLOSED_STATUSES
        elif table == "invoicing":
            meta.ship_date = parse_date(record["ship_date"])
            meta.invoice_date = parse_date(record["inv_date"])
        self.data[table][key] = record
        return key

    def emit(self, table: str, action: str, record: Record) -> LiveChange:
        """Store ``record`` now and return the change that tells the receiver so."""
        self.store(table, record, self.now)
        return change(table, action, record)

    def delete(self, table: str, key: Key) -> LiveChange:
        record = self.data[table].pop(key)
        del self.meta[table][key]
        return change(table, "delete", record)

    def new(self, table: str, **values: str) -> Record:
        """A record of ``table`` with every field empty but ``values``."""
        record = dict(self._blank[table])
        record.update(values)
        return record

    def next_id(self, table: str) -> str:
        self._counters[table] += 1
        return str(self._counters[table])

    def unique(self, table: str, stem: str) -> str:
        """``stem``, or ``stem`` plus the first number that makes it a new id of ``table``."""
        if (stem,) not in self.data[table]:
            return stem
        n = 2
        while (f"{stem}{n}",) in self.data[table]:
            n += 1
        return f"{stem}{n}"

    # -- the dice ---------------------------------------------------------------------------

    def between(self, start: datetime, end: datetime) -> datetime:
        """A moment in [start, end], or ``start`` when the span is empty."""
        span = int((end - start).total_seconds())
        return start if span <= 0 else start + timedelta(seconds=self.rng.randint(0, span))

    def office_hours(self, day: date) -> datetime:
        return datetime.combine(day, time(self.rng.randint(7, 17), self.rng.randint(0, 59)))

    def appointment(self, day: date) -> datetime:
        return datetime.combine(day, time(self.rng.randint(6, 16), self.rng.choice((0, 30))))

    def phone(self) -> str:
        return f"{self.rng.randint(201, 989)}{self.rng.randint(2_000_000, 9_999_999)}"

    def person(self) -> str:
        if self.rng.random() < 0.08:
            return self.rng.choice(ACCENTED_PEOPLE)
        return f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(LAST_NAMES)}"

    def maybe_colon(self, table: str, record: Record, chance: float) -> None:
        """Now and then, an empty money field holding ``:`` as real feeds show."""
        if self.rng.random() < chance:
            empty = [name for name in MONEY_FIELDS[table] if record[name] == ""]
            if empty:
                record[self.rng.choice(empty)] = ":"

    def digits(self, count: int) -> str:
        """A reference number of ``count`` digits, as shippers and carriers hand them out."""
        return str(self.rng.randint(10 ** (count - 1), 10**count - 1))

    def sometimes(self, choices: tuple[str, ...], chance: float) -> str:
        """One of ``choices`` with probability ``chance``, else an empty field."""
        return self.rng.choice(choices) if self.rng.random() < chance else ""
