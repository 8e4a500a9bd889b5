"""A column's type inferred from its stored values, for the typed views (``views.py``).

The rule (docs/database.md): the first of ``INFERRED`` (date, time, int, money, bool) that
**every** stored non-empty value fits, else text. The checks are the views' own guarded
``misfit`` tests (``casts.py``), summed in aggregate queries over the table.

Checking every type on every value of a wide table costs minutes on SQLite, whose tests are
patterns and string functions, so the checks go in the rule's order and stop early:

- each column's next type is first checked on a sample of ``INFER_SAMPLE`` rows, where a
  text column fails every type in its first values; a type it fails there is dropped, and
  the next one checked, in one more pass over the sample for the columns that need it;
- only the first type that fits the sample is then checked on every row; when it fits, the
  later ones are never checked at all (an int column is never checked as money or bool);
- a table no bigger than the sample is decided by the sample alone.

The answer is the one checking every type on every row gives. The queries hold at most
``MAX_CHECKS`` expressions each: PostgreSQL refuses more than 1664 in one SELECT, SQLite
more than 2000, and a table may have 1,000 columns.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, func, literal, select, table
from sqlalchemy.engine import Dialect

from ..field_types import INFERRED, FieldType
from .casts import PLACEHOLDER, sql_template

INFER_SAMPLE = 500
"""Rows each type is first checked on, to rule it out before a pass over every row."""

MAX_CHECKS = 500
"""Expressions in one aggregate query; more checks take more queries."""

Check = tuple[str, str, FieldType]
"""``("count", column, "text")`` counts a column's non-empty values; ``("sum", column,
kind)`` the values that do not fit ``kind``."""


def aggregate_sql(
    table_name: str, checks: Sequence[Check], dialect: Dialect, *, sample: int | None = None
) -> str:
    """One SELECT over ``table_name`` of ``checks``; with ``sample``, over only that many of
    its rows. Every identifier is quoted by ``dialect``."""
    quote = dialect.identifier_preparer.quote
    parts = []
    for function, column, kind in checks:
        if function == "count":
            parts.append(f"COUNT(NULLIF({quote(column)}, ''))")
        else:
            misfits = sql_template("misfit", kind, dialect).replace(PLACEHOLDER, quote(column))
            parts.append(f"SUM({misfits})")
    source = quote(table_name)
    if sample is not None:
        columns = ", ".join(quote(c) for c in dict.fromkeys(column for _, column, _ in checks))
        source = f"(SELECT {columns} FROM {quote(table_name)} LIMIT {int(sample)}) AS sampled"
    return f"SELECT {', '.join(parts)} FROM {source}"


def aggregate(
    conn: Connection, table_name: str, checks: Sequence[Check], *, sample: int | None = None
) -> list[int]:
    """The value of each check, in order, in as few queries as ``MAX_CHECKS`` allows."""
    found: list[int] = []
    for start in range(0, len(checks), MAX_CHECKS):
        chunk = checks[start : start + MAX_CHECKS]
        sql = aggregate_sql(table_name, chunk, conn.dialect, sample=sample)
        found += [int(n or 0) for n in conn.exec_driver_sql(sql).one()]
    return found


def infer_types(conn: Connection, table_name: str, columns: Sequence[str]) -> dict[str, FieldType]:
    """The inferred type of each of ``columns`` that holds a non-empty value; the columns
    with none are left out (they wait, as text, for values)."""
    counts = aggregate(conn, table_name, [("count", c, "text") for c in columns])
    left = {c: list(INFERRED) for c, n in zip(columns, counts, strict=True) if n}
    if not left:
        return {}
    sampled_rows = select(literal(1)).select_from(table(table_name)).limit(INFER_SAMPLE + 1)
    rows = conn.execute(select(func.count()).select_from(sampled_rows.subquery())).scalar_one()
    whole_table_sampled = rows <= INFER_SAMPLE
    found: dict[str, FieldType] = {}

    def drop_first(column: str) -> None:
        """The column's next type failed: try the one after, or settle on text."""
        left[column].pop(0)
        if not left[column]:
            found[column] = "text"
            del left[column]

    unchecked = list(left)
    while left:
        # On the sample: drop each column's first type until one fits the sample.
        while unchecked:
            heads: list[Check] = [("sum", c, left[c][0]) for c in unchecked]
            misfits = aggregate(conn, table_name, heads, sample=INFER_SAMPLE)
            unchecked = [c for (_, c, _), n in zip(heads, misfits, strict=True) if n]
            for column in unchecked:
                drop_first(column)
            unchecked = [c for c in unchecked if c in left]
        if whole_table_sampled:
            found.update((c, kinds[0]) for c, kinds in left.items())
            break
        # On every row: the first type that fits the sample wins if it fits them all.
        heads = [("sum", c, kinds[0]) for c, kinds in left.items()]
        misfits = aggregate(conn, table_name, heads)
        for (_, column, kind), n in zip(heads, misfits, strict=True):
            if n:
                drop_first(column)
            else:
                found[column] = kind
                del left[column]
        unchecked = list(left)
    return found
