"""Statements compiled once and executed with plain driver parameters: the hot path.

SQLAlchemy Core builds every statement from checked names; compiling it and processing
its parameters on each call is what costs, and for a 400-field record it costs more than
the commit. A ``Prepared`` keeps the compiled SQL text, the order of its parameters and the
few type conversions it needs (timestamps), and sends rows straight to the driver's cursor
(``database.run_on_driver``, which still raises SQLAlchemy's exceptions).

Rows are given as sequences of values in the order of the names the statement was compiled
for: no dictionary per row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Connection, Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from .database import run_on_driver

Parameters = Sequence[Any] | dict[str, Any]


def _picker(indexes: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """The values at ``indexes``, as a tuple, in one C call."""
    if len(indexes) > 1:
        return itemgetter(*indexes)
    if indexes:
        index = indexes[0]
        return lambda values: (values[index],)
    return lambda values: ()


_PROBE = datetime(2001, 2, 3, 4, 5, 6, 7)


def _as_isoformat(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """SQLite's processor for timestamps, with naive datetimes written by ``isoformat``.

    SQLAlchemy writes SQLite's DATETIME text with a %-format in Python, 2 us a value; a
    Live Sync write binds three. Where ``isoformat`` gives the same text (checked here),
    it writes it in C; other values (None, aware datetimes, dates) go to the processor.
    """
    try:
        same = processor(_PROBE) == _PROBE.isoformat(" ", "microseconds")
    except Exception:  # not a processor of datetimes
        same = False
    if not same:
        return processor

    def process(value: Any) -> Any:
        if value.__class__ is datetime and value.tzinfo is None:
            return value.isoformat(" ", "microseconds")
        return processor(value)

    return process


class Prepared:
    """A statement compiled for one dialect, for a fixed list of parameter names."""

    __slots__ = ("_converters", "_pick", "names", "order", "returning", "sql")

    def __init__(
        self,
        sql: str,
        names: Sequence[str],
        order: Sequence[str] | None,
        processors: Mapping[str, Callable[[Any], Any]],
        *,
        returning: bool = False,
    ) -> None:
        self.sql = sql
        self.names = tuple(names)
        self.order = tuple(order) if order is not None else None  # positional styles only
        self.returning = returning
        index = {name: i for i, name in enumerate(self.names)}
        unnamed = [n for n in self.order or () if n not in index]
        if unnamed:
            raise ValueError(f"the statement has parameters it was not compiled for: {unnamed}")
        # For rows given as values: where each positional parameter comes from, and which
        # values need converting (a processor per index).
        self._pick = _picker([index[n] for n in self.order]) if self.order is not None else None
        self._converters = [(index[n], p) for n, p in processors.items() if n in index]

    @classmethod
    def compile(cls, stmt: ClauseElement, dialect: Dialect, names: Sequence[str]) -> Prepared:
        compiled = cast(SQLCompiler, stmt.compile(dialect=dialect, column_keys=list(names)))
        processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[name] = _as_isoformat(processor)
        order = tuple(compiled.positiontup) if compiled.positiontup is not None else None
        returning = bool(compiled.effective_returning)
        return cls(compiled.string, names, order, processors, returning=returning)

    # -- rows as values in the order of ``names`` ---------------------------------------

    def values_parameters(self, values: Sequence[Any]) -> Parameters:
        """The driver's parameters for one row given as values in the order of ``names``."""
        if self._converters:
            values = list(values)
            for i, convert in self._converters:
                values[i] = convert(values[i])
        if self._pick is not None:
            return self._pick(values)
        return dict(zip(self.names, values, strict=True))

    def execute_values(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Run for rows given as values, as one executemany when there are several."""
        self._run(conn, [self.values_parameters(r) for r in rows])

    def insert_values(self, conn: Connection, values: Sequence[Any]) -> int:
        """Run an INSERT of one row given as values and return the new row's id.

        From its RETURNING clause where it has one (PostgreSQL), else from the driver's
        ``lastrowid`` (SQLite, MySQL).
        """
        cursor = run_on_driver(conn, self.sql, self.values_parameters(values))
        try:
            if self.returning:
                returned = cursor.fetchone()
                assert returned is not None
                return int(returned[0])
            return int(cursor.lastrowid)
        finally:
            cursor.close()

    def fetch_values(self, conn: Connection, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run a query for one row of parameters given as values; return its rows as the
        driver gives them (no result types applied: for ids and text)."""
        cursor = run_on_driver(conn, self.sql, self.values_parameters(values))
        try:
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def scalar(self, conn: Connection) -> Any:
        """Run a query without parameters and return the first column of its first row."""
        cursor = run_on_driver(conn, self.sql)
        try:
            row = cursor.fetchone()
            return None if row is None else row[0]
        finally:
            cursor.close()

    def _run(self, conn: Connection, params: list[Parameters]) -> None:
        if len(params) == 1:
            run_on_driver(conn, self.sql, params[0]).close()
        elif params:
            run_on_driver(conn, self.sql, params, many=True).close()
