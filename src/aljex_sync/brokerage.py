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

import csv
import itertools
import math
import random
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import NamedTuple

from aljex_sync.brokerage_fields import (
    ACCESSORIAL_COUNT,
    CHECK_CALL_COUNT,
    FIELDS,
    INVOICE_LINE_COUNT,
    MONEY_FIELDS,
    STOP_COUNT,
)
from aljex_sync.catalog import BY_TABLE, CATALOG, key_for

Record = dict[str, str]
Key = tuple[str, ...]

LOAD_STATUSES = ("OPEN", "ASSIGNED", "COVERED", "DISPATCHED", "LOADED", "DELIVERED", "VOID")
CLOSED_STATUSES = frozenset({"DELIVERED", "VOID"})
MORNING_TABLES = tuple(entry.table for entry in CATALOG if entry.table != "spots")

# Window lengths of section 1: "starting 3 days in the past" and "7 days in the past".
LOAD_WINDOW = timedelta(days=3)
CREATED_WINDOW = timedelta(days=7)


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


@dataclass
class RecordMeta:
    """What the morning rules need to know about a record beyond its fields."""

    created: datetime
    updated: datetime
    ship_date: date | None = None
    invoice_date: date | None = None
    active: bool = True


class _City(NamedTuple):
    name: str
    state: str
    zip: str
    lat: float
    lon: float


def _cities(table: str) -> tuple[_City, ...]:
    rows = (line.split("|") for line in table.strip().splitlines())
    return tuple(_City(n, s, z, float(la), float(lo)) for n, s, z, la, lo in rows)


CITIES = _cities("""
Chicago|IL|60607|41.88|-87.63
Atlanta|GA|30303|33.75|-84.39
Dallas|TX|75201|32.78|-96.80
Los Angeles|CA|90021|34.03|-118.24
Newark|NJ|07105|40.72|-74.17
Memphis|TN|38118|35.05|-89.93
Columbus|OH|43215|39.96|-83.00
Indianapolis|IN|46225|39.76|-86.16
Kansas City|MO|64120|39.10|-94.58
Denver|CO|80216|39.74|-104.99
Phoenix|AZ|85043|33.45|-112.07
Seattle|WA|98108|47.55|-122.32
Charlotte|NC|28206|35.23|-80.84
Jacksonville|FL|32254|30.33|-81.66
Laredo|TX|78045|27.53|-99.48
Salinas|CA|93901|36.68|-121.66
Harrisburg|PA|17111|40.27|-76.88
Nashville|TN|37210|36.16|-86.78
Louisville|KY|40213|38.25|-85.76
Minneapolis|MN|55413|44.98|-93.27
Omaha|NE|68107|41.26|-95.94
St. Louis|MO|63147|38.63|-90.20
Houston|TX|77029|29.76|-95.37
Savannah|GA|31408|32.08|-81.09
Reno|NV|89502|39.53|-119.81
Salt Lake City|UT|84104|40.76|-111.89
Fresno|CA|93706|36.74|-119.79
Allentown|PA|18109|40.60|-75.49
Buffalo|NY|14206|42.89|-78.88
Detroit|MI|48209|42.33|-83.05
Green Bay|WI|54303|44.51|-88.02
Des Moines|IA|50313|41.59|-93.62
Oklahoma City|OK|73129|35.47|-97.52
Albuquerque|NM|87105|35.08|-106.65
Portland|OR|97217|45.52|-122.68
Little Rock|AR|72206|34.75|-92.29
Birmingham|AL|35210|33.52|-86.80
Baltimore|MD|21224|39.29|-76.61
Edison|NJ|08817|40.52|-74.41
McAllen|TX|78503|26.20|-98.23
""")


def _words(text: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in text.split("|"))


FIRST_NAMES = _words(
    "Bill|Maria|James|Linda|Robert|Patricia|Michael|Jennifer|David|Susan|Kevin|Angela|Tom|"
    "Karen|Brian|Nicole|Steve|Lisa|Mark|Dana|Chris|Megan|Tony|Rachel"
)
LAST_NAMES = _words(
    "Smith|Johnson|Williams|Brown|Jones|Miller|Davis|Garcia|Wilson|Moore|Taylor|Anderson|"
    "Thomas|Jackson|White|Harris|Martin|Thompson|Lewis|Walker|Young|Allen|King|Wright"
)
ACCENTED_PEOPLE = _words("José Peña|Zoë Castañeda|René Lefèvre|Ana Núñez|Jürgen Köhler")
COMPANY_WORDS = _words(
    "Blue Ridge|Summit|Great Lakes|Prairie|Harbor|Keystone|Lone Star|Pioneer|Northern|"
    "Coastal|Red River|Iron Horse|Golden State|Evergreen|Liberty|Cedar|Granite|Sunbelt"
)
COMPANY_KINDS = _words(
    "Foods|Paper Co|Steel|Plastics|Produce|Beverage|Building Supply|Chemicals|Packaging|"
    "Furniture|Auto Parts|Distributors|Brewing|Farms"
)
ODD_COMPANIES = _words("Smith & Sons Produce|A+ Packaging Inc|100% Juice Co|R&D Plastics")
ACCENTED_CUSTOMERS = _words(
    "Café Logística|Crème Brûlée Bakery|Señor Frío Foods|Bäckerei Müller USA|Peñasco Produce"
)
CARRIER_KINDS = _words("Trucking|Transport|Logistics|Freight|Express|Carriers|Hauling")
# Łukasz is not in cp1252: a carrier the sender has to send in UTF-8 despite the accent.
ACCENTED_CARRIERS = _words("Müller Trucking|Transportes Guzmán|Górski Express|Łukasz Freight")
INSURERS = _words("Progressive|Great West Casualty|Northland|Sentry|Canal Insurance|Berkley")
FACTORS = _words("RTS Financial|Triumph Pay|OTR Capital|Apex Capital")
STREETS = _words("Industrial Pkwy|Commerce Dr|Warehouse Rd|Logistics Way|Main St|Export Blvd")
COMMODITIES = _words(
    "Dry Groceries|Frozen Foods|Produce|Paper Products|Steel Coils|Lumber|Beverages|"
    "Auto Parts|Plastic Resin|Furniture|Building Materials|General Merchandise"
)
NOTES = _words(
    "Call 1 hr ahead|Lumper = $150 & driver assist|FCFS 7:00-15:00|"
    "Check in at guard shack\r\nDock 12|No touch freight|Appt# 55102 & PO 7781|"
    "Rate = linehaul + FSC|Temp 34F +/- 2|Tarps & chains required|Deliver 100% of order"
)
# Every quirk character in one value, so each brokerage carries them at least once.
QUIRK_NOTE = "Dock 3 & 4\r\nLumper = 5% + $25"
EQUIPMENT = {"V": (50, 235), "R": (25, 285), "F": (12, 275), "FT": (3, 290), "SB": (5, 320)}
EQUIPMENT |= {"PO": (5, 190)}  # code: (weight in the mix, rate per mile in cents)
ACCESSORIALS = {"LUMPER": (15000, 40000), "DETENTION": (5000, 20000), "TARP": (7500, 15000)}
ACCESSORIALS |= {"DRIVER ASSIST": (5000, 10000), "PALLET EXCHANGE": (2500, 6000)}
OFFICES = ("NJ1", "CHI", "DAL")
EMPLOYEE_TYPES = ("dispatch", "dispatch", "accounting", "admin")
TERMS = {"NET 30": 30, "NET 15": 15, "NET 45": 45, "QUICK PAY": 2}
VENDORS = _words("Staples|Verizon Wireless|DAT Solutions|Truckstop.com|Uline|Dell|Comcast")
PURCHASES = _words("Load board subscription|Office supplies|Laptop|Phones|Pallet jack|Toner")
DEBIT_REASONS = _words("ADDITIONAL DETENTION|LUMPER REBILL|LAYOVER|REDELIVERY")
CREDIT_REASONS = _words("SHORT PAY|RATE ADJUSTMENT|DAMAGE CLAIM|DUPLICATE BILLING")
DOMAIN = "summitfreight.com"


def _iso(day: date) -> str:
    return day.isoformat()


def _hm(moment: datetime) -> str:
    """Aljex's time format: hour without a leading zero, ``9:05``, ``14:30``."""
    return f"{moment.hour}:{moment.minute:02d}"


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _cents(value: str) -> int:
    """A money field back in cents; quirks such as ``:`` and empty fields count as zero."""
    try:
        return round(float(value) * 100)
    except ValueError:
        return 0


def _ascii(text: str) -> str:
    """Letters and digits of ``text`` without accents, for ids, logins and e-mail names."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded if ch.isalnum())


def _parse_date(value: str) -> date | None:
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _miles(a: _City, b: _City) -> int:
    """Road miles between two cities: great-circle distance plus a fifth for the roads."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = math.sin((lat2 - lat1) / 2) ** 2
    h += math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return max(25, round(3959 * 2 * math.asin(math.sqrt(h)) * 1.2))


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


class _Pool:
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


def _change(table: str, action: str, record: Record) -> LiveChange:
    """The request that sends ``record``: a copy of all its fields and its charset."""
    return LiveChange(table, action, dict(record), charset_for(record))


def _resolve_scale(size: str | Scale) -> Scale:
    if isinstance(size, Scale):
        return size
    try:
        return SCALES[size]
    except KeyError:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SCALES)}") from None


class Brokerage:
    """A freight brokerage generated from ``seed`` as of the morning of ``today``.

    The history (people, customers, carriers, loads over ``history_days`` with their
    invoices, bills and payments) is laid down at construction; the clock then stands at
    7:00 on ``today`` and :meth:`next_change` moves the brokerage on, one record at a time.
    """

    def __init__(self, seed: int, *, today: date, size: str | Scale = "small") -> None:
        self.scale = _resolve_scale(size)
        self.today = today
        self._now = datetime.combine(today, time(7, 0))
        self._rng = random.Random(seed)
        self._data: dict[str, dict[Key, Record]] = {table: {} for table in FIELDS}
        self._meta: dict[str, dict[Key, RecordMeta]] = {table: {} for table in FIELDS}
        self._blank: dict[str, Record] = {t: dict.fromkeys(f, "") for t, f in FIELDS.items()}
        self._counters = {"loads": self._rng.randint(1_100_000, 1_300_000), "carriers": 10_000}
        self._counters |= {"payments": 40_000, "payments_received": 70_000, "debits": 9_000}
        self._counters |= {"credits": 6_000, "quotes": 300_000, "payable": 20_000}
        self._counters |= {"new_purchases": 5_000, "spots": 800_000}
        self._pending: deque[Callable[[], LiveChange]] = deque()
        self._employees: list[str] = []
        self._salesreps: list[str] = []
        self._customers: list[str] = []
        self._carriers: list[str] = []
        self._invoices: list[str] = []
        self._pools = {name: _Pool() for name in _POOLS}
        self._exposure: dict[str, int] = {}
        self._generate_history()
        actions = self._actions()
        self._action_fns = tuple(fn for fn, _ in actions)
        self._action_cum = tuple(sum(w for _, w in actions[: i + 1]) for i in range(len(actions)))

    # -- public API -------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """The brokerage's clock: naive Eastern time, moved on by every change."""
        return self._now

    def tables(self) -> list[str]:
        """Every table the brokerage fills, in catalog order."""
        return [entry.table for entry in CATALOG]

    def key(self, table: str) -> tuple[str, ...]:
        """The fields that identify a record of ``table`` (the catalog key)."""
        return key_for(table)

    def records(self, table: str) -> dict[Key, dict[str, str]]:
        """The ground truth of ``table`` now: a copy, keyed by the key fields' values."""
        return {key: dict(record) for key, record in self._data[table].items()}

    def meta(self, table: str, key: Key) -> RecordMeta:
        """A copy of the metadata (created, updated, ship and invoice dates) of a record."""
        m = self._meta[table][key]
        return RecordMeta(m.created, m.updated, m.ship_date, m.invoice_date, m.active)

    def next_change(self) -> LiveChange:
        """Move the clock on 10 to 90 seconds, make one change and return it as sent."""
        self._now += timedelta(seconds=self._rng.randint(10, 90))
        if self._pending:
            return self._pending.popleft()()
        for _ in range(8):
            action = self._rng.choices(self._action_fns, cum_weights=self._action_cum)[0]
            change = action()
            if change is not None:
                return change
        return self._live_create_load()

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
        metas = self._meta[table]
        for key, record in self._data[table].items():
            if _in_morning_file(table, metas[key], day):
                yield record

    def morning_export(self, day: date) -> dict[str, list[dict[str, str]]]:
        """Every morning file for ``day``: table name to the records it holds (copies)."""
        return {t: [dict(r) for r in self.morning_records(t, day)] for t in MORNING_TABLES}

    # -- storage ----------------------------------------------------------------------------

    def _key_of(self, table: str, record: Mapping[str, str]) -> Key:
        return tuple(record[name] for name in key_for(table))

    def _get(self, table: str, *key: str) -> Record:
        """A copy of a stored record, to change and store again (stored ones never change)."""
        return dict(self._data[table][key])

    def _store(self, table: str, record: Record, at: datetime) -> Key:
        """Keep ``record`` as the truth, created or updated at ``at``."""
        key = self._key_of(table, record)
        meta = self._meta[table].get(key)
        if meta is None:
            meta = self._meta[table][key] = RecordMeta(created=at, updated=at)
        meta.updated = at
        if table == "loads":
            meta.ship_date = _parse_date(record["pickup_date"])
            meta.active = record["status"] not in CLOSED_STATUSES
        elif table == "invoicing":
            meta.ship_date = _parse_date(record["ship_date"])
            meta.invoice_date = _parse_date(record["inv_date"])
        self._data[table][key] = record
        return key

    def _emit(self, table: str, action: str, record: Record) -> LiveChange:
        """Store ``record`` now and return the change that tells the receiver so."""
        self._store(table, record, self._now)
        return _change(table, action, record)

    def _delete(self, table: str, key: Key) -> LiveChange:
        record = self._data[table].pop(key)
        del self._meta[table][key]
        return _change(table, "delete", record)

    def _new(self, table: str, **values: str) -> Record:
        record = dict(self._blank[table])
        record.update(values)
        return record

    def _next_id(self, table: str) -> str:
        self._counters[table] += 1
        return str(self._counters[table])

    # -- random helpers ---------------------------------------------------------------------

    def _between(self, start: datetime, end: datetime) -> datetime:
        """A moment in [start, end], or ``start`` when the span is empty."""
        span = int((end - start).total_seconds())
        return start if span <= 0 else start + timedelta(seconds=self._rng.randint(0, span))

    def _office_hours(self, day: date) -> datetime:
        return datetime.combine(day, time(self._rng.randint(7, 17), self._rng.randint(0, 59)))

    def _appointment(self, day: date) -> datetime:
        return datetime.combine(day, time(self._rng.randint(6, 16), self._rng.choice((0, 30))))

    def _phone(self) -> str:
        return f"{self._rng.randint(201, 989)}{self._rng.randint(2_000_000, 9_999_999)}"

    def _person(self) -> str:
        if self._rng.random() < 0.08:
            return self._rng.choice(ACCENTED_PEOPLE)
        return f"{self._rng.choice(FIRST_NAMES)} {self._rng.choice(LAST_NAMES)}"

    def _unique(self, table: str, stem: str) -> str:
        """``stem``, or ``stem`` plus the first number that makes it a new id of ``table``."""
        if (stem,) not in self._data[table]:
            return stem
        n = 2
        while (f"{stem}{n}",) in self._data[table]:
            n += 1
        return f"{stem}{n}"

    def _maybe_colon(self, table: str, record: Record, chance: float) -> None:
        """Now and then, an empty money field holding ``:`` as real feeds show."""
        if self._rng.random() < chance:
            empty = [name for name in MONEY_FIELDS[table] if record[name] == ""]
            if empty:
                record[self._rng.choice(empty)] = ":"

    def _digits(self, count: int) -> str:
        """A reference number of ``count`` digits, as shippers and carriers hand them out."""
        return str(self._rng.randint(10 ** (count - 1), 10**count - 1))

    def _sometimes(self, choices: tuple[str, ...], chance: float) -> str:
        """One of ``choices`` with probability ``chance``, else an empty field."""
        return self._rng.choice(choices) if self._rng.random() < chance else ""

    def _stamp(self, load: Record, letter: str, at: datetime, user: str) -> None:
        load[f"key_{letter}_date"], load[f"key_{letter}_time"] = _iso(at.date()), _hm(at)
        load[f"key_{letter}_user"] = user

    # -- people, customers, carriers --------------------------------------------------------

    def _new_employee(self, kind: str) -> Record:
        name = self._person()
        first, _, last = name.partition(" ")
        login = self._unique("employees", (_ascii(first)[:1] + _ascii(last)).lower())
        employee = self._new("employees", id=login, name=name, email=f"{login}@{DOMAIN}")
        employee.update(team=str(self._rng.randint(1, 4)), type=kind, phone=self._phone())
        employee.update(status="good", office=self._rng.choice(OFFICES))
        return employee

    def _new_salesrep(self, employee: Record, since: date) -> Record:
        salesrep = self._new("salesreps", status="active", start_date=_iso(since))
        for name in ("id", "name", "email", "phone", "office", "team"):
            salesrep[name] = employee[name]
        salesrep["commission_pct"] = str(self._rng.choice((15, 20, 25, 30)))
        return salesrep

    def _company_name(self, *, accented: bool) -> str:
        rng, roll = self._rng, self._rng.random()
        if accented or roll < 0.06:
            return rng.choice(ACCENTED_CUSTOMERS)
        if roll < 0.12:
            return rng.choice(ODD_COMPANIES)
        return f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_KINDS)}"

    def _new_customer(self, created: datetime, *, accented: bool = False) -> Record:
        rng, name = self._rng, self._company_name(accented=accented)
        code = self._unique("customers", _ascii(name).upper()[:5])
        city, domain = rng.choice(CITIES), _ascii(name).lower()[:12] + ".com"
        customer = self._new("customers", id=code, name=name, city=city.name, zip=city.zip)
        customer.update(
            state=city.state, address1=f"{rng.randint(100, 9999)} {rng.choice(STREETS)}"
        )
        customer.update(address2=rng.choice(("", "", "Suite 200", "Bldg B")), status="ACTIVE")
        customer.update(type=rng.choice(("SHIPPER", "SHIPPER", "3PL", "RETAIL")))
        customer.update(sales_rep=rng.choice(self._salesreps), terms=rng.choice(tuple(TERMS)))
        customer.update(credit_limit=_money(rng.randint(5, 50) * 500_000), total_exposure="0.00")
        customer.update(created_date=_iso(created.date()), notes=self._sometimes(NOTES, 0.1))
        for n in range(1, rng.randint(1, 4) + 1):
            contact = customer[f"contact{n}"] = self._person()
            customer[f"email{n}"] = f"{_ascii(contact).lower()}@{domain}"
            if n <= 3:
                customer[f"phone{n}"] = self._phone()
        return customer

    def _new_carrier(self, created: datetime) -> Record:
        rng = self._rng
        if rng.random() < 0.05:
            name = rng.choice(ACCENTED_CARRIERS)
        else:
            name = f"{rng.choice(LAST_NAMES + COMPANY_WORDS)} {rng.choice(CARRIER_KINDS)}"
        city, scac = rng.choice(CITIES), (_ascii(name).upper() + "XXX")[:3] + rng.choice("ABCXYZ")
        carrier = self._new("carriers", id=self._next_id("carriers"), name=name, scac=scac)
        carrier.update(legal_name=f"{name} {rng.choice(('LLC', 'Inc', 'Co'))}", status="ACTIVE")
        carrier.update(mc_num=str(rng.randint(100_000, 1_400_000)))
        carrier.update(dot_num=str(rng.randint(1_000_000, 3_999_999)))
        carrier.update(carrier_type=rng.choice(("TL", "TL", "LTL", "OO")))
        carrier.update(power_units=str(rng.randint(1, 250)), contact=self._person())
        carrier.update(address1=f"{rng.randint(1, 999)} {rng.choice(STREETS)}", zip=city.zip)
        carrier.update(city=city.name, state=city.state, phone=self._phone())
        carrier.update(email=f"dispatch@{_ascii(name).lower()[:12]}.com")
        carrier.update(created_date=_iso(created.date()))
        expires = _iso(self.today + timedelta(days=rng.randint(20, 400)))
        for kind, amount in (("liab", 100_000_000), ("cargo", 10_000_000)):
            carrier[f"{kind}_ins_company"] = rng.choice(INSURERS)
            carrier[f"{kind}_ins_policy"] = f"{scac[:2]}{rng.randint(100_000, 999_999)}"
            carrier[f"{kind}_ins_expires"], carrier[f"{kind}_ins_amount"] = expires, _money(amount)
        if rng.random() < 0.3:  # paid through a factoring company
            pay_city = rng.choice(CITIES)
            carrier["pay_to_name"] = rng.choice(FACTORS)
            carrier["pay_to_address1"] = f"PO Box {rng.randint(100, 9999)}"
        else:
            pay_city, carrier["pay_to_name"] = city, name
            carrier["pay_to_address1"] = carrier["address1"]
        carrier["pay_to_city"], carrier["pay_to_state"] = pay_city.name, pay_city.state
        carrier["pay_to_zip"] = pay_city.zip
        return carrier

    # -- loads ------------------------------------------------------------------------------

    def _new_load(self, created: datetime, pickup: date, customer: Record) -> Record:
        """An OPEN load booked at ``created`` for ``customer``, picking up on ``pickup``."""
        rng, rep = self._rng, customer["sales_rep"]
        equipment = rng.choices(tuple(EQUIPMENT), [w for w, _ in EQUIPMENT.values()])[0]
        load = self._new("loads", id=self._next_id("loads"), status="OPEN", mode="TL")
        load.update(office=rng.choice(OFFICES), dispatcher=rng.choice(self._employees))
        load.update(customer_id=customer["id"], customer_name=customer["name"])
        load.update(billto_id=customer["id"], billto_name=customer["name"])
        load.update(sales_rep=rep, booked_by=rep, tag_created_by=rep)
        load.update(tag_creation_date=_iso(created.date()), terms=customer["terms"])
        load.update(equipment=equipment, commodity=rng.choice(COMMODITIES))
        load.update(equipment_length="48" if equipment in ("F", "SB") else "53")
        load.update(weight=str(rng.randint(50, 440) * 100), pieces=str(rng.randint(1, 1200)))
        load.update(pallets=str(rng.randint(1, 26)), hazmat="N", Osd="N")
        load.update(team="Y" if rng.random() < 0.05 else "N", rate_type="F", currency="USD")
        load.update(bol_num=self._digits(7), po_num=f"PO{self._digits(6)}")
        load.update(pickup_num=self._digits(5), delivery_num=self._digits(5))
        load.update(customer_ref=f"{customer['id']}-{self._digits(4)}")
        load.update(Tord=f"T{self._digits(6)}" if rng.random() < 0.3 else "")
        load.update(notes=self._sometimes(NOTES, 0.25))
        load.update(special_instructions=self._sometimes(NOTES, 0.1))
        if equipment == "R":
            low = rng.randint(28, 36)
            load["temp_min"], load["temp_max"] = str(low), str(low + 4)
        for n in range(1, rng.randint(1, 3)):
            load[f"extra_ref_{n}"] = self._digits(6)
        stops = self._add_stops(load, pickup, customer)
        self._price(load, equipment, stops)
        self._stamp(load, "c", created, rep)
        self._stamp(load, "w", created, rep)
        self._maybe_colon("loads", load, 0.015)
        return load

    def _add_stops(self, load: Record, pickup: date, customer: Record) -> int:
        """Fill the ``ps`` stop fields, origin, destination and dates; return the stop count."""
        rng = self._rng
        pickups, drops = rng.choices((1, 2), (85, 15))[0], rng.choices((1, 2, 3), (75, 20, 5))[0]
        cities = rng.sample(CITIES, pickups + drops)
        miles = sum(_miles(a, b) for a, b in itertools.pairwise(cities))
        transit = max(1, math.ceil(miles / 550))
        for n, city in enumerate(cities, 1):
            is_pickup = n <= pickups
            day = (
                pickup
                if is_pickup
                else pickup + timedelta(days=max(1, transit * (n - pickups) // drops))
            )
            company = (
                customer["name"]
                if is_pickup
                else f"{rng.choice(COMPANY_WORDS)} DC {rng.randint(1, 99)}"
            )
            load[f"ps{n}"] = "P" if is_pickup else "S"
            load[f"ps_company_{n}"], load[f"ps_city_{n}"] = company, city.name
            load[f"ps_address_{n}"] = f"{rng.randint(100, 9999)} {rng.choice(STREETS)}"
            load[f"ps_state_{n}"], load[f"ps_zip_{n}"] = city.state, city.zip
            load[f"ps_ref_{n}"] = f"{'PU' if is_pickup else 'DEL'}#{rng.randint(10**4, 10**5)}"
            load[f"ps_appt_date_{n}"] = _iso(day)
            load[f"ps_appt_time_{n}"] = (
                "DROP" if rng.random() < 0.03 else _hm(self._appointment(day))
            )
        last = pickups + drops
        for end, n in (("origin", 1), ("dest", last)):
            load[f"{end}_company"], load[f"{end}_address"] = (
                load[f"ps_company_{n}"],
                load[f"ps_address_{n}"],
            )
            load[f"{end}_city"], load[f"{end}_state"] = load[f"ps_city_{n}"], load[f"ps_state_{n}"]
            load[f"{end}_zip"] = load[f"ps_zip_{n}"]
        load["pickup_date"], load["pickup_time"] = load["ps_appt_date_1"], load["ps_appt_time_1"]
        load["must_del_date"] = load[f"ps_appt_date_{last}"]
        load["must_del_time"] = load[f"ps_appt_time_{last}"]
        load["miles"] = str(miles)
        return last

    def _price(self, load: Record, equipment: str, stops: int) -> None:
        """The customer's side of the rate: line haul, fuel, accessorials, total."""
        rng, miles = self._rng, int(load["miles"])
        line_haul = max(45_000, miles * EQUIPMENT[equipment][1] * rng.randint(85, 115) // 100)
        line_haul = line_haul // 2500 * 2500
        fuel = miles * rng.randint(40, 60)
        charges = [("STOP OFF", 7500)] * (stops - 2)
        if rng.random() < 0.25:
            code = rng.choice(tuple(ACCESSORIALS))
            charges.append((code, rng.randint(*ACCESSORIALS[code]) // 100 * 100))
        for n, (code, amount) in enumerate(charges[:ACCESSORIAL_COUNT], 1):
            load[f"accessorial_desc{n}"], load[f"accessorial{n}"] = code, _money(amount)
        total = line_haul + fuel + sum(amount for _, amount in charges[:ACCESSORIAL_COUNT])
        load["line_haul"], load["fuel_surcharge"] = _money(line_haul), _money(fuel)
        load["invoice_total"] = _money(total)

    def _assign(self, load: Record, at: datetime, *, confirm: bool) -> None:
        """OPEN -> ASSIGNED (a carrier named) or COVERED (and its rate confirmation sent)."""
        rng = self._rng
        carrier_id = self._pools["active_carriers"].pick(rng) or rng.choice(self._carriers)
        carrier = self._data["carriers"][(carrier_id,)]
        load["carrier_id"], load["carrier_name"] = carrier_id, carrier["name"]
        load["carrier_mc"], load["carrier_phone"] = carrier["mc_num"], carrier["phone"]
        load["carrier_contact"] = carrier["contact"]
        revenue = _cents(load["line_haul"]) + _cents(load["fuel_surcharge"])
        line_haul = revenue * rng.randint(78, 90) // 100 // 2500 * 2500
        extras = 0
        for n in range(1, ACCESSORIAL_COUNT + 1):
            if load[f"accessorial_desc{n}"] in ("STOP OFF", "LUMPER", "TARP"):
                amount = _cents(load[f"accessorial{n}"]) * rng.randint(80, 100) // 100
                load[f"carrier_accessorial_desc{n}"] = load[f"accessorial_desc{n}"]
                load[f"carrier_accessorial{n}"], extras = _money(amount), extras + amount
        cost, total = line_haul + extras, _cents(load["invoice_total"])
        load["carrier_line_haul"], load["carrier_fuel"] = _money(line_haul), "0.00"
        load["carrier_total_rate"], load["margin"] = _money(cost), _money(total - cost)
        load["margin_pct"] = f"{100 * (total - cost) / total:.1f}" if total else "0.0"
        load["status"] = "COVERED" if confirm else "ASSIGNED"
        self._stamp(load, "h", at, load["dispatcher"])
        self._stamp(load, "w", at, load["dispatcher"])
        if confirm:
            self._confirm(load, at)

    def _confirm(self, load: Record, at: datetime) -> None:
        load["status"] = "COVERED"
        self._stamp(load, "r", at, load["dispatcher"])
        self._stamp(load, "w", at, load["dispatcher"])

    def _dispatch(self, load: Record, at: datetime) -> None:
        rng = self._rng
        load["status"], load["driver_name"] = "DISPATCHED", self._person()
        load["driver_phone"], load["truck_num"] = self._phone(), str(rng.randint(100, 9999))
        load["trailer_num"] = f"{rng.choice('ABCHJKLMRTUW')}{rng.randint(1000, 99999)}"
        self._stamp(load, "d", at, load["dispatcher"])
        self._stamp(load, "w", at, load["dispatcher"])

    def _check_call(self, load: Record, at: datetime, stop: int, status: str) -> None:
        for n in range(1, CHECK_CALL_COUNT + 1):
            if load[f"check_call_date_{n}"] == "":
                load[f"check_call_date_{n}"], load[f"check_call_time_{n}"] = (
                    _iso(at.date()),
                    _hm(at),
                )
                load[f"check_call_city_{n}"] = load[f"ps_city_{stop}"]
                load[f"check_call_state_{n}"] = load[f"ps_state_{stop}"]
                load[f"check_call_status_{n}"] = status
                return

    def _stops(self, load: Record, kind: str) -> list[int]:
        return [n for n in range(1, STOP_COUNT + 1) if load[f"ps{n}"] == kind]

    def _pick_up(self, load: Record, at: datetime) -> None:
        load["status"], load["seal_num"] = "LOADED", str(self._rng.randint(10**5, 10**6))
        for n in self._stops(load, "P"):
            load[f"ps_arrive_date_{n}"], load[f"ps_arrive_time_{n}"] = _iso(at.date()), _hm(at)
        self._check_call(load, at, 1, "LOADED")
        self._stamp(load, "l", at, load["dispatcher"])
        self._stamp(load, "w", at, load["dispatcher"])

    def _deliver(self, load: Record, at: datetime) -> None:
        drops = self._stops(load, "S")
        for n in drops:
            arrived = at - timedelta(hours=3 * (drops[-1] - n))
            load[f"ps_arrive_date_{n}"], load[f"ps_arrive_time_{n}"] = (
                _iso(arrived.date()),
                _hm(arrived),
            )
        load["status"], load["delivery_date"], load["delivery_time"] = (
            "DELIVERED",
            _iso(at.date()),
            _hm(at),
        )
        load["Osd"] = "Y" if self._rng.random() < 0.03 else "N"
        self._check_call(load, at, drops[-1], "DELIVERED")
        self._stamp(load, "p", at, load["dispatcher"])
        self._stamp(load, "w", at, load["dispatcher"])

    def _void(self, load: Record, at: datetime) -> None:
        load["status"] = "VOID"
        self._stamp(load, "w", at, load["dispatcher"])

    def _advance(self, load: Record, at: datetime) -> None:
        """One step along OPEN -> (ASSIGNED) -> COVERED -> DISPATCHED -> LOADED -> DELIVERED."""
        status, roll = load["status"], self._rng.random()
        if status == "OPEN" and roll < 0.04:
            self._void(load, at)
        elif status == "OPEN":
            self._assign(load, at, confirm=roll >= 0.14)
        elif status == "ASSIGNED":
            self._confirm(load, at)
        elif status == "COVERED":
            self._dispatch(load, at)
        elif status == "DISPATCHED":
            self._pick_up(load, at)
        elif status == "LOADED":
            self._deliver(load, at)

    # -- money after delivery ---------------------------------------------------------------

    def _new_invoice(self, load: Record, at: datetime) -> Record:
        customer = self._data["customers"][(load["customer_id"],)]
        due = at.date() + timedelta(days=TERMS.get(customer["terms"], 30))
        invoice = self._new("invoicing", pro_num=load["id"], ref_num=load["po_num"])
        invoice.update(customer_id=customer["id"], customer_name=customer["name"])
        invoice.update(billto_name=load["billto_name"], billto_address=customer["address1"])
        invoice.update(billto_city=customer["city"], billto_state=customer["state"])
        invoice.update(billto_zip=customer["zip"], terms=customer["terms"], status="OPEN")
        invoice.update(ship_date=load["pickup_date"], del_date=load["delivery_date"])
        invoice.update(inv_date=_iso(at.date()), due_date=_iso(due))
        lines = [("LINE HAUL", load["line_haul"]), ("FUEL SURCHARGE", load["fuel_surcharge"])]
        for n in range(1, ACCESSORIAL_COUNT + 1):
            if load[f"accessorial_desc{n}"]:
                lines.append((load[f"accessorial_desc{n}"], load[f"accessorial{n}"]))
        for n, (description, amount) in enumerate(lines[:INVOICE_LINE_COUNT], 1):
            invoice[f"description{n}"], invoice[f"amount{n}"] = description, amount
        total = _money(sum(_cents(amount) for _, amount in lines))
        invoice["total"] = invoice["balance"] = invoice["act_rev"] = total
        invoice["proj_rev"] = load["invoice_total"]
        self._maybe_colon("invoicing", invoice, 0.01)
        return invoice

    def _invoice_paid(self, pro_num: str) -> Record:
        invoice = self._get("invoicing", pro_num)
        invoice["balance"], invoice["status"] = "0.00", "PAID"
        return invoice

    def _new_payable(self, load: Record, at: datetime) -> Record:
        due = _iso(at.date() + timedelta(days=30))
        payable = self._new("payable", id=self._next_id("payable"), pro_num=load["id"])
        payable.update(carrier_id=load["carrier_id"], carrier_name=load["carrier_name"])
        payable.update(carrier_invoice_num=f"INV{self._digits(5)}", status="OPEN")
        payable.update(amount=load["carrier_total_rate"], due_date=due)
        payable.update(invoice_date=_iso(at.date()), created_date=_iso(at.date()))
        payable.update(approved_by=self._rng.choice(self._employees))
        return payable

    def _new_payment(self, payable: Record, at: datetime) -> Record:
        payment = self._new("payments", id=self._next_id("payments"), payable_id=payable["id"])
        for name in ("carrier_id", "carrier_name", "pro_num", "amount"):
            payment[name] = payable[name]
        payment.update(check_num=self._digits(5), check_date=_iso(at.date()))
        payment.update(pay_method=self._rng.choice(("CHECK", "ACH", "ACH", "QUICKPAY")))
        payment.update(memo=f"Pro {payable['pro_num']} / {payable['carrier_invoice_num']}")
        payment.update(created_date=_iso(at.date()), created_by=self._rng.choice(self._employees))
        return payment

    def _new_receipt(self, invoice: Record, at: datetime) -> Record:
        receipt = self._new("payments_received", id=self._next_id("payments_received"))
        for name in ("customer_id", "customer_name", "pro_num"):
            receipt[name] = invoice[name]
        receipt.update(amount=invoice["balance"], check_num=self._digits(6))
        receipt.update(received_date=_iso(at.date()), deposit_date=_iso(at.date()))
        receipt.update(pay_method=self._rng.choice(("CHECK", "ACH", "WIRE")))
        receipt.update(memo=f"Remit {invoice['ref_num']}", created_date=_iso(at.date()))
        receipt.update(created_by=self._rng.choice(self._employees))
        return receipt

    def _new_adjustment(self, table: str, invoice: Record, at: datetime) -> Record:
        """A debit or credit against an invoice."""
        reasons = DEBIT_REASONS if table == "debits" else CREDIT_REASONS
        adjustment = self._new(table, id=self._next_id(table), pro_num=invoice["pro_num"])
        adjustment.update(customer_id=invoice["customer_id"], memo=f"Pro {invoice['pro_num']}")
        adjustment.update(amount=_money(self._rng.randint(25, 400) * 100))
        adjustment.update(reason=self._rng.choice(reasons), created_date=_iso(at.date()))
        adjustment.update(created_by=self._rng.choice(self._employees))
        return adjustment

    # -- quotes, spots, purchases -----------------------------------------------------------

    def _lane(self, record: Record, *, zips: bool) -> int:
        """Fill a record's origin and destination with two cities; return the miles."""
        origin, dest = self._rng.sample(CITIES, 2)
        record.update(origin_city=origin.name, origin_state=origin.state)
        record.update(dest_city=dest.name, dest_state=dest.state)
        if zips:
            record.update(origin_zip=origin.zip, dest_zip=dest.zip)
        return _miles(origin, dest)

    def _new_quote(self, at: datetime) -> Record:
        rng = self._rng
        customer = self._data["customers"][(rng.choice(self._customers),)]
        quote = self._new("quotes", id=self._next_id("quotes"), customer_id=customer["id"])
        miles, equipment = self._lane(quote, zips=True), rng.choice(tuple(EQUIPMENT))
        rate, fuel = max(45_000, miles * EQUIPMENT[equipment][1]), miles * 50
        quote.update(customer_name=customer["name"], quoted_by=customer["sales_rep"])
        quote.update(equipment=equipment, weight=str(rng.randint(50, 440) * 100))
        quote.update(miles=str(miles), rate=_money(rate), fuel_surcharge=_money(fuel))
        quote.update(total=_money(rate + fuel), created_date=_iso(at.date()))
        quote.update(expires_date=_iso(at.date() + timedelta(days=rng.randint(3, 14))))
        quote.update(status=rng.choice(("OPEN", "OPEN", "WON", "LOST")))
        quote.update(notes=self._sometimes(NOTES, 0.2))
        return quote

    def _new_spot(self, at: datetime) -> Record:
        rng = self._rng
        spot = self._new("spots", spot_number=self._next_id("spots"), status="ACTIVE")
        miles = self._lane(spot, zips=False)
        spot.update(customer_id=rng.choice(self._customers), posted_by=rng.choice(self._salesreps))
        spot.update(equipment=rng.choice(tuple(EQUIPMENT)), rate=_money(max(40_000, miles * 260)))
        spot.update(weight=str(rng.randint(50, 440) * 100), created_date=_iso(at.date()))
        spot.update(expires_date=_iso(at.date() + timedelta(days=rng.randint(1, 5))))
        spot.update(notes=self._sometimes(NOTES, 0.2))
        return spot

    def _new_purchase(self, at: datetime) -> Record:
        rng = self._rng
        employee = self._data["employees"][(rng.choice(self._employees),)]
        purchase = self._new("new_purchases", id=self._next_id("new_purchases"))
        purchase.update(vendor_name=rng.choice(VENDORS), description=rng.choice(PURCHASES))
        purchase.update(amount=_money(rng.randint(500, 250_000)), purchase_date=_iso(at.date()))
        purchase.update(employee_id=employee["id"], office=employee["office"])
        purchase.update(gl_account=rng.choice(("6100", "6200", "6350", "7010")))
        purchase.update(created_date=_iso(at.date()))
        return purchase

    # -- history ----------------------------------------------------------------------------

    def _generate_history(self) -> None:
        """Lay down everything that happened before the clock's first tick."""
        scale, now = self.scale, self._now
        for n in range(scale.employees):
            since = now - timedelta(days=self._rng.randint(200, 2000))
            kind = "sales" if n < scale.salesreps else self._rng.choice(EMPLOYEE_TYPES)
            employee = self._new_employee(kind)
            self._add_employee(employee, since)
            if n < scale.salesreps:
                self._add_salesrep(self._new_salesrep(employee, since.date()), since)
        forced = self._rng.randrange(scale.customers)
        for n in range(scale.customers):
            when = now - timedelta(days=self._rng.randint(60, 1500))
            self._add_customer(self._new_customer(when, accented=n == forced), when)
        for _ in range(scale.carriers):
            when = now - timedelta(days=self._rng.randint(30, 1500))
            self._add_carrier(self._new_carrier(when), when)
        self._history_loads()
        self._history_extras()
        self._place_quirks()
        for customer_id in self._customers:
            customer = self._get("customers", customer_id)
            customer["total_exposure"] = _money(self._exposure.get(customer_id, 0))
            self._data["customers"][(customer_id,)] = customer

    def _add_employee(self, employee: Record, at: datetime) -> None:
        self._store("employees", employee, at)
        self._employees.append(employee["id"])

    def _add_salesrep(self, salesrep: Record, at: datetime) -> None:
        self._store("salesreps", salesrep, at)
        self._salesreps.append(salesrep["id"])

    def _add_customer(self, customer: Record, at: datetime) -> None:
        self._store("customers", customer, at)
        self._customers.append(customer["id"])
        self._pools["active_customers"].add(customer["id"])

    def _add_carrier(self, carrier: Record, at: datetime) -> None:
        self._store("carriers", carrier, at)
        self._carriers.append(carrier["id"])
        self._pools["active_carriers"].add(carrier["id"])

    def _history_loads(self) -> None:
        rng, now = self._rng, self._now
        plans = []
        for _ in range(self.scale.loads):
            pickup = self.today + timedelta(days=rng.randint(-self.scale.history_days, 6))
            created = self._office_hours(pickup - timedelta(days=rng.randint(1, 7)))
            if created >= now:
                created = now - timedelta(minutes=rng.randint(30, 900))
            plans.append((created, pickup, rng.choice(self._customers)))
        for created, pickup, customer_id in sorted(plans):
            load = self._new_load(created, pickup, self._data["customers"][(customer_id,)])
            updated = self._history_progress(load, created, pickup)
            self._store("loads", load, created)
            self._meta["loads"][(load["id"],)].updated = updated
            if load["status"] not in CLOSED_STATUSES:
                self._pools["active_loads"].add(load["id"])
            elif load["status"] == "DELIVERED":
                self._history_money(load, updated)

    def _history_target(self, load: Record, pickup: date) -> str:
        due = date.fromisoformat(load["must_del_date"])
        rng = self._rng
        if due < self.today:
            return "VOID" if rng.random() < 0.03 else "DELIVERED"
        if pickup < self.today:
            return "LOADED"
        if pickup == self.today:
            return rng.choice(("COVERED", "DISPATCHED", "DISPATCHED"))
        return rng.choices(("OPEN", "ASSIGNED", "COVERED", "DISPATCHED"), (45, 5, 35, 15))[0]

    def _history_progress(self, load: Record, created: datetime, pickup: date) -> datetime:
        """Move a history load to the status its dates call for; return its last update."""
        target, now = self._history_target(load, pickup), self._now
        at = created
        if target == "VOID":
            at = self._between(created, min(created + timedelta(hours=20), now))
            self._void(load, at)
            return at
        if target == "OPEN":
            return at
        pickup_at = self._appointment(pickup)
        at = self._between(at, min(pickup_at - timedelta(hours=2), now))
        self._assign(load, at, confirm=target != "ASSIGNED")
        if target in ("ASSIGNED", "COVERED"):
            return at
        at = self._between(at, min(pickup_at - timedelta(minutes=30), now))
        self._dispatch(load, at)
        if target == "DISPATCHED":
            return at
        at = max(at, pickup_at) + timedelta(minutes=self._rng.randint(0, 180))
        self._pick_up(load, at)
        if target == "LOADED":
            return at
        due_at = self._appointment(date.fromisoformat(load["must_del_date"]))
        at = min(max(at + timedelta(hours=2), due_at), now - timedelta(minutes=5))
        self._deliver(load, at)
        if self._rng.random() < 0.08:  # touched again later, e.g. paperwork
            at = self._between(at, now)
            self._stamp(load, "w", at, load["dispatcher"])
        return at

    def _history_money(self, load: Record, delivered: datetime) -> None:
        """Invoice a delivered history load; bill, pay and collect on it when time allows."""
        rng, now = self._rng, self._now
        at = self._between(
            delivered + timedelta(hours=1), min(delivered + timedelta(hours=30), now)
        )
        invoice = self._new_invoice(load, at)
        self._add_invoice(invoice, at)
        if at + timedelta(days=12) < now and rng.random() < 0.7:
            paid = self._between(at + timedelta(days=10), min(at + timedelta(days=40), now))
            self._store("payments_received", self._new_receipt(invoice, paid), paid)
            self._settle_invoice(invoice["pro_num"], paid)
        if delivered + timedelta(days=1) < now and rng.random() < 0.85:
            billed = self._between(
                delivered + timedelta(hours=4), min(delivered + timedelta(days=5), now)
            )
            payable = self._new_payable(load, billed)
            self._store("payable", payable, billed)
            if billed + timedelta(days=7) < now and rng.random() < 0.75:
                paid = self._between(
                    billed + timedelta(days=5), min(billed + timedelta(days=25), now)
                )
                self._store("payments", self._new_payment(payable, paid), paid)
                self._store("payable", {**payable, "status": "PAID"}, paid)
            else:
                self._pools["unpaid_payables"].add(payable["id"])
        else:
            self._pools["unbilled_loads"].add(load["id"])

    def _add_invoice(self, invoice: Record, at: datetime) -> None:
        self._store("invoicing", invoice, at)
        self._invoices.append(invoice["pro_num"])
        self._pools["open_invoices"].add(invoice["pro_num"])
        customer_id = invoice["customer_id"]
        self._exposure[customer_id] = self._exposure.get(customer_id, 0) + _cents(invoice["total"])

    def _settle_invoice(self, pro_num: str, at: datetime) -> Record:
        invoice = self._invoice_paid(pro_num)
        self._store("invoicing", invoice, at)
        self._pools["open_invoices"].discard(pro_num)
        customer_id = invoice["customer_id"]
        self._exposure[customer_id] -= _cents(self._data["invoicing"][(pro_num,)]["total"])
        return invoice

    def _history_extras(self) -> None:
        rng, now, scale = self._rng, self._now, self.scale
        for table, count in (("debits", scale.debits), ("credits", scale.credits)):
            for _ in range(count if self._invoices else 0):
                invoice = self._data["invoicing"][(rng.choice(self._invoices),)]
                at = self._between(self._meta["invoicing"][(invoice["pro_num"],)].created, now)
                self._store(table, self._new_adjustment(table, invoice, at), at)
        makers: list[tuple[str, int, int, Callable[[datetime], Record]]] = [
            ("quotes", scale.quotes, 20, self._new_quote),
            ("spots", scale.spots, 3, self._new_spot),
            ("new_purchases", scale.new_purchases, 25, self._new_purchase),
        ]
        for table, count, days, make in makers:
            for at in sorted(self._between(now - timedelta(days=days), now) for _ in range(count)):
                key = self._store(table, make(at), at)
                if table in self._pools:
                    self._pools[table].add(key[0])

    def _place_quirks(self) -> None:
        """Make sure every brokerage shows each feed quirk at least once in its loads."""
        rng, loads = self._rng, self._data["loads"]
        if not loads:
            return
        keys = list(loads)
        colon = dict(loads[rng.choice(keys)])
        slots = [f"accessorial{n}" for n in range(1, ACCESSORIAL_COUNT + 1)]
        colon[next(s for s in reversed(slots) if colon[s] == "")] = ":"
        loads[(colon["id"],)] = colon
        drop = dict(loads[rng.choice(keys)])
        drop[f"ps_appt_time_{rng.choice(self._stops(drop, 'S'))}"] = "DROP"
        loads[(drop["id"],)] = drop
        noted = dict(loads[rng.choice(keys)])
        noted["notes"] = QUIRK_NOTE
        loads[(noted["id"],)] = noted

    # -- live feed --------------------------------------------------------------------------

    def _actions(self) -> list[tuple[Callable[[], LiveChange | None], float]]:
        """What the live feed does, with how often: loads move most."""
        return [
            (self._live_create_load, 8),
            (self._live_advance_load, 40),
            (self._live_touch_load, 6),
            (self._live_bill_carrier, 6),
            (self._live_pay_carrier, 5),
            (self._live_receive_payment, 6),
            (partial(self._live_adjust, "debits"), 1),
            (partial(self._live_adjust, "credits"), 1),
            (partial(self._live_create, "quotes", self._new_quote), 5),
            (partial(self._live_delete, "quotes"), 2),
            (partial(self._live_create, "spots", self._new_spot), 4),
            (partial(self._live_delete, "spots"), 2),
            (self._live_update_spot, 1),
            (partial(self._live_create, "new_purchases", self._new_purchase), 2),
            (self._live_update_customer, 3),
            (self._live_create_customer, 1),
            (self._live_update_carrier, 3),
            (self._live_create_carrier, 1),
            (self._live_update_employee, 1),
            (self._live_create_employee, 0.3),
            (self._live_update_salesrep, 0.5),
        ]

    def _live_create_load(self) -> LiveChange:
        customer_id = self._pools["active_customers"].pick(self._rng) or self._customers[0]
        pickup = self._now.date() + timedelta(days=self._rng.randint(0, 3))
        load = self._new_load(self._now, pickup, self._data["customers"][(customer_id,)])
        self._pools["active_loads"].add(load["id"])
        return self._emit("loads", "create", load)

    def _live_advance_load(self) -> LiveChange | None:
        load_id = self._pools["active_loads"].pick(self._rng)
        if load_id is None:
            return None
        load = self._get("loads", load_id)
        if not self._next_step_due(load):
            return None
        self._advance(load, self._now)
        if load["status"] in CLOSED_STATUSES:
            self._pools["active_loads"].discard(load_id)
        if load["status"] == "DELIVERED":
            self._pending.append(partial(self._live_invoice, load_id))
            self._pools["unbilled_loads"].add(load_id)
        return self._emit("loads", "update", load)

    def _next_step_due(self, load: Record) -> bool:
        """Trucks wait for the calendar: loaded on the pickup day, delivered on the due day."""
        waits_for = {"DISPATCHED": "pickup_date", "LOADED": "must_del_date"}.get(load["status"])
        return waits_for is None or load[waits_for] <= _iso(self._now.date())

    def _live_touch_load(self) -> LiveChange | None:
        """A load edited without a status change: an appointment, notes or the weight."""
        rng, load_id = self._rng, self._pools["active_loads"].pick(self._rng)
        if load_id is None:
            return None
        load, roll = self._get("loads", load_id), rng.random()
        if roll < 0.4:
            stop = rng.choice(self._stops(load, "P") + self._stops(load, "S"))
            day = date.fromisoformat(load[f"ps_appt_date_{stop}"])
            moved = "DROP" if rng.random() < 0.1 else _hm(self._appointment(day))
            load[f"ps_appt_time_{stop}"] = moved
            if stop == 1:
                load["pickup_time"] = moved
            if stop == self._stops(load, "S")[-1]:
                load["must_del_time"] = moved
        elif roll < 0.7:
            load["notes"] = rng.choice((*NOTES, QUIRK_NOTE))
        else:
            load["weight"] = str(rng.randint(50, 440) * 100)
        self._maybe_colon("loads", load, 0.05)
        self._stamp(load, "w", self._now, load["dispatcher"])
        return self._emit("loads", "update", load)

    def _live_invoice(self, load_id: str) -> LiveChange:
        invoice = self._new_invoice(self._data["loads"][(load_id,)], self._now)
        self._add_invoice(invoice, self._now)
        return _change("invoicing", "create", invoice)

    def _live_bill_carrier(self) -> LiveChange | None:
        load_id = self._pools["unbilled_loads"].pick(self._rng)
        if load_id is None:
            return None
        self._pools["unbilled_loads"].discard(load_id)
        payable = self._new_payable(self._data["loads"][(load_id,)], self._now)
        self._pools["unpaid_payables"].add(payable["id"])
        return self._emit("payable", "create", payable)

    def _live_pay_carrier(self) -> LiveChange | None:
        payable_id = self._pools["unpaid_payables"].pick(self._rng)
        if payable_id is None:
            return None
        self._pools["unpaid_payables"].discard(payable_id)
        payable = self._get("payable", payable_id)
        self._pending.append(
            partial(self._emit, "payable", "update", {**payable, "status": "PAID"})
        )
        return self._emit("payments", "create", self._new_payment(payable, self._now))

    def _live_receive_payment(self) -> LiveChange | None:
        pro_num = self._pools["open_invoices"].pick(self._rng)
        if pro_num is None:
            return None
        receipt = self._new_receipt(self._data["invoicing"][(pro_num,)], self._now)
        self._pending.append(partial(self._live_settle, pro_num))
        self._pools["open_invoices"].discard(pro_num)
        return self._emit("payments_received", "create", receipt)

    def _live_settle(self, pro_num: str) -> LiveChange:
        return _change("invoicing", "update", self._settle_invoice(pro_num, self._now))

    def _live_adjust(self, table: str) -> LiveChange | None:
        if not self._invoices:
            return None
        invoice = self._data["invoicing"][(self._rng.choice(self._invoices),)]
        return self._emit(table, "create", self._new_adjustment(table, invoice, self._now))

    def _live_create(self, table: str, make: Callable[[datetime], Record]) -> LiveChange:
        record = make(self._now)
        if table in self._pools:
            self._pools[table].add(self._key_of(table, record)[0])
        return self._emit(table, "create", record)

    def _live_delete(self, table: str) -> LiveChange | None:
        key = self._pools[table].pick(self._rng)
        if key is None:
            return None
        self._pools[table].discard(key)
        return self._delete(table, (key,))

    def _live_update_spot(self) -> LiveChange | None:
        spot_number = self._pools["spots"].pick(self._rng)
        if spot_number is None:
            return None
        spot = self._get("spots", spot_number)
        spot["status"] = self._rng.choice(("ACTIVE", "COVERED", "EXPIRED"))
        spot["rate"] = _money(_cents(spot["rate"]) + self._rng.randint(-10, 10) * 2500)
        return self._emit("spots", "update", spot)

    def _live_update_customer(self) -> LiveChange:
        rng, customer_id = self._rng, self._rng.choice(self._customers)
        customer, roll = self._get("customers", customer_id), rng.random()
        active = self._pools["active_customers"]
        if roll < 0.3:
            customer["phone1"] = self._phone()
        elif roll < 0.5:
            customer["contact2"] = self._person()
            customer["email2"] = f"{_ascii(customer['contact2']).lower()}@{DOMAIN}"
        elif roll < 0.7:
            customer["credit_limit"] = _money(rng.randint(5, 50) * 500_000)
        elif roll < 0.85 or len(active) < 2:
            customer["total_exposure"] = _money(self._exposure.get(customer_id, 0))
        else:
            customer["status"] = "HOLD" if customer["status"] == "ACTIVE" else "ACTIVE"
            (active.discard if customer["status"] == "HOLD" else active.add)(customer_id)
        return self._emit("customers", "update", customer)

    def _live_create_customer(self) -> LiveChange:
        customer = self._new_customer(self._now)
        change = self._emit("customers", "create", customer)
        self._customers.append(customer["id"])
        self._pools["active_customers"].add(customer["id"])
        return change

    def _live_update_carrier(self) -> LiveChange:
        rng, carrier_id = self._rng, self._rng.choice(self._carriers)
        carrier, roll = self._get("carriers", carrier_id), rng.random()
        active = self._pools["active_carriers"]
        if roll < 0.4:
            renewed = self._now.date() + timedelta(days=365)
            carrier["liab_ins_expires"] = carrier["cargo_ins_expires"] = _iso(renewed)
            carrier["liab_ins_policy"] = f"{carrier['scac'][:2]}{rng.randint(100_000, 999_999)}"
        elif roll < 0.7:
            carrier["power_units"] = str(max(1, int(carrier["power_units"]) + rng.randint(-3, 5)))
        elif roll < 0.85 or len(active) < 2:
            carrier["phone"], carrier["contact"] = self._phone(), self._person()
        else:
            carrier["status"] = "INACTIVE" if carrier["status"] == "ACTIVE" else "ACTIVE"
            (active.discard if carrier["status"] == "INACTIVE" else active.add)(carrier_id)
        return self._emit("carriers", "update", carrier)

    def _live_create_carrier(self) -> LiveChange:
        carrier = self._new_carrier(self._now)
        change = self._emit("carriers", "create", carrier)
        self._carriers.append(carrier["id"])
        self._pools["active_carriers"].add(carrier["id"])
        return change

    def _live_update_employee(self) -> LiveChange:
        employee = self._get("employees", self._rng.choice(self._employees))
        if self._rng.random() < 0.5:
            employee["phone"] = self._phone()
        else:
            employee["team"] = str(self._rng.randint(1, 4))
        return self._emit("employees", "update", employee)

    def _live_create_employee(self) -> LiveChange:
        employee = self._new_employee(self._rng.choice(EMPLOYEE_TYPES))
        change = self._emit("employees", "create", employee)
        self._employees.append(employee["id"])
        return change

    def _live_update_salesrep(self) -> LiveChange:
        salesrep = self._get("salesreps", self._rng.choice(self._salesreps))
        salesrep["commission_pct"] = str(self._rng.choice((15, 20, 25, 30, 35)))
        return self._emit("salesreps", "update", salesrep)


_POOLS = (
    "active_loads",
    "active_customers",
    "active_carriers",
    "unbilled_loads",
    "unpaid_payables",
    "open_invoices",
    "quotes",
    "spots",
)


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


def write_morning_csvs(brokerage: Brokerage, day: date, out_dir: Path) -> list[Path]:
    """Write the morning files for ``day`` into ``out_dir`` as Aljex uploads them.

    One RFC 4180 CSV per Aljex file, named ``<catalog title>_<YYYYMMDD>.csv``, with a header
    row of field names and CR LF line ends. A file is written in cp1252 when at least one of
    its records is one Aljex sends in cp1252 and every record of the file is cp1252-encodable
    (see :func:`file_charset`); otherwise in UTF-8. Rows are streamed, never held whole.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in MORNING_TABLES:
        path = out_dir / f"{BY_TABLE[table].title}_{day:%Y%m%d}.csv"
        encoding = file_charset(brokerage.morning_records(table, day))
        with path.open("w", encoding=encoding, newline="") as handle:
            columns = brokerage.morning_columns(table)
            writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
            writer.writerow(columns)
            for record in brokerage.morning_records(table, day):
                writer.writerow([record[name] for name in columns])
        written.append(path)
    return written
