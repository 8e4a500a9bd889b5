"""The oracle and the check: what a receiver must hold after what the emulator sent, and a
field-by-field comparison with its database. The only module of the emulator that reads
the receiver's store.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import Engine, column, inspect, select, table
from sqlalchemy.exc import SQLAlchemyError

from ..catalog import key_for, mode_for
from ..store.database import display_url, open_engine, reading
from ..store.schema import DELETED_AT, columns_table
from .brokerage import Brokerage
from .state import EmulatorError, EmulatorState, LiveRun, MorningUpload, check_tables
from .world import Key

Record = dict[str, str]
Records = dict[Key, Record]


def _key(table_name: str, record: Mapping[str, str]) -> Key:
    return tuple(record.get(name, "") for name in key_for(table_name))


def _upsert(records: Records, table_name: str, record: Mapping[str, str]) -> None:
    """What the receiver does with a created or updated record: write the fields it carries."""
    key = _key(table_name, record)
    records[key] = {**records.get(key, {}), **record}


def _replay_run(brokerage: Brokerage, run: LiveRun, expected: dict[str, Records]) -> None:
    undelivered = set(run.undelivered)
    for index in range(run.first, run.first + run.count):
        change = brokerage.next_change()
        if not run.sends(change.table) or index in undelivered:
            continue
        records = expected.setdefault(change.table, {})
        if change.action == "delete":
            records.pop(_key(change.table, change.fields), None)
        else:
            _upsert(records, change.table, change.fields)


def _replay_morning(
    brokerage: Brokerage, upload: MorningUpload, expected: dict[str, Records]
) -> None:
    for table_name in upload.tables:
        records = expected.setdefault(table_name, {})
        if mode_for(table_name) == "full":  # the file is the whole table
            records.clear()
        for record in brokerage.morning_records(table_name, upload.day):
            _upsert(records, table_name, record)


def expected_records(
    state: EmulatorState, tables: Collection[str] | None = None
) -> dict[str, Records]:
    """What the receiver must hold now, table by table: key to record.

    Replays the feed: a delivered create or update puts the record as sent, a delivered
    delete takes it away, a full morning file makes the table exactly its records and a
    window file adds or updates its records. Records never sent are not expected. Every
    table anything was sent to is present, even when it is expected to be empty.
    """
    brokerage = state.new_brokerage()
    expected: dict[str, Records] = {name: {} for name in state.covered_tables()}
    for event in state.events:
        if isinstance(event, LiveRun):
            _replay_run(brokerage, event, expected)
        else:
            _replay_morning(brokerage, event, expected)
    return {name: records for name, records in expected.items() if tables is None or name in tables}


@dataclass(frozen=True)
class Difference:
    """One row that is not as expected.

    ``missing``: expected, absent (or soft-deleted); ``extra``: present, not expected;
    ``differs``: present with ``fields`` as (field, expected, actual) where they differ.
    """

    table: str
    key: Key
    kind: Literal["missing", "extra", "differs"]
    fields: tuple[tuple[str, str | None, str | None], ...] = ()


@dataclass
class TableReport:
    """One table compared: row counts, differences counted, and the first few of them."""

    table: str
    expected_rows: int
    actual_rows: int = 0  # rows present, soft-deleted ones left out
    missing: int = 0
    extra: int = 0
    differing: int = 0  # rows present as expected but with a differing field
    examples: list[Difference] = field(default_factory=list)

    @property
    def differences(self) -> int:
        return self.missing + self.extra + self.differing


@dataclass
class VerifyReport:
    """The receiver's database compared with what the emulator sent, table by table."""

    database: str  # its URL as shown to people: the password masked
    tables: list[TableReport]

    @property
    def differences(self) -> int:
        return sum(t.differences for t in self.tables)

    @property
    def ok(self) -> bool:
        return self.differences == 0

    @property
    def examples(self) -> list[Difference]:
        return [example for t in self.tables for example in t.examples]

    def table(self, name: str) -> TableReport:
        return next(t for t in self.tables if t.table == name)


def verify(
    url: str,
    state: EmulatorState,
    *,
    tables: Collection[str] | None = None,
    examples: int = 10,
) -> VerifyReport:
    """Compare the receiver's database at ``url`` with :func:`expected_records`.

    Fields are found through ``_aljex_columns``; every expected field is compared, columns
    the emulator never sent and the ``_aljex_*`` meta columns are not. A row with
    ``_aljex_deleted_at`` set counts as deleted. Keeps up to ``examples`` differences per
    table. Run it while the feed is quiet: tables are read one after the other.
    """
    check_tables(tables)
    expected = expected_records(state, tables)
    engine = open_engine(url)
    try:
        columns = _column_maps(engine)
        return VerifyReport(
            display_url(url),
            [
                _compare(engine, name, records, columns.get(name, {}), examples)
                for name, records in expected.items()
            ],
        )
    except SQLAlchemyError as e:
        raise EmulatorError(f"cannot read {display_url(url)}: {e}") from None
    finally:
        engine.dispose()


def _column_maps(engine: Engine) -> dict[str, dict[str, str]]:
    """Table to (field as sent to column), from the receiver's ``_aljex_columns``."""
    if not inspect(engine).has_table(columns_table.name):
        return {}
    maps: dict[str, dict[str, str]] = {}
    with reading(engine) as conn:
        c = columns_table.c
        for row in conn.execute(select(c.table_name, c.column_name, c.field_name)):
            maps.setdefault(row.table_name, {})[row.field_name] = row.column_name
    return maps


def _compare(
    engine: Engine, name: str, expected: Records, columns: Mapping[str, str], examples: int
) -> TableReport:
    report = TableReport(name, len(expected))
    remaining = dict(expected)

    def note(difference: Difference) -> None:
        if len(report.examples) < examples:
            report.examples.append(difference)

    for key, actual in _actual_rows(engine, name, expected, columns):
        report.actual_rows += 1
        record = remaining.pop(key, None)
        if record is None:
            report.extra += 1
            note(Difference(name, key, "extra"))
            continue
        differing = tuple(
            (f, value, actual.get(f)) for f, value in record.items() if actual.get(f) != value
        )
        if differing:
            report.differing += 1
            note(Difference(name, key, "differs", differing))
    report.missing = len(remaining)
    for key in remaining:
        note(Difference(name, key, "missing"))
    return report


def _actual_rows(
    engine: Engine, name: str, expected: Records, columns: Mapping[str, str]
) -> Iterator[tuple[Key, dict[str, str | None]]]:
    """The table's live rows as (key, field to value) for the expected fields it has."""
    key_fields = key_for(name)
    if not all(f in columns for f in key_fields):  # the receiver never made this table
        return
    wanted = dict.fromkeys([*key_fields, *(f for r in expected.values() for f in r)])
    fields = [f for f in wanted if f in columns]
    source = table(name, *(column(columns[f]) for f in fields), column(DELETED_AT))
    query = select(*(source.c[columns[f]] for f in fields), source.c[DELETED_AT])
    with reading(engine) as conn:
        for row in conn.execution_options(yield_per=500).execute(query):
            if row[-1] is not None:
                continue
            values = dict(zip(fields, row[:-1], strict=True))
            yield tuple(values[f] or "" for f in key_fields), values
