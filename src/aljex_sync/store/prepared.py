"""Statements compiled once and executed with plain driver parameters: the hot path.

SQLAlchemy Core builds every statement from checked names; compiling it and processing
its parameters on each call is what costs, and for a 400-field record it costs more than
the commit. A ``Prepared`` keeps the compiled SQL text, the order of its parameters and the
few type conversions it needs (timestamps), and sends each row straight to the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement


@dataclass(frozen=True)
class Prepared:
    """A statement compiled for one dialect, for a fixed set of parameter names."""

    sql: str
    order: tuple[str, ...] | None  # positional parameter order, None for named styles
    processors: Mapping[str, Callable[[Any], Any]]

    @classmethod
    def compile(cls, stmt: ClauseElement, dialect: Dialect, names: Sequence[str]) -> Prepared:
        compiled = cast(SQLCompiler, stmt.compile(dialect=dialect, column_keys=list(names)))
        processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[name] = processor
        order = tuple(compiled.positiontup) if compiled.positiontup is not None else None
        return cls(compiled.string, order, processors)

    def parameters(self, row: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        if self.processors:
            row = {**row, **{n: p(row[n]) for n, p in self.processors.items() if n in row}}
        if self.order is None:
            return dict(row)
        return tuple(row[name] for name in self.order)

    def execute(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> CursorResult[Any]:
        """Run for one row, or as executemany for several."""
        if len(rows) == 1:
            return conn.exec_driver_sql(self.sql, self.parameters(rows[0]))
        return conn.exec_driver_sql(self.sql, [self.parameters(r) for r in rows])
