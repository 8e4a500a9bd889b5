"""The typed views: ``<table>_typed`` for each synced table, with types and readable names.

A synced table keeps Aljex's values as text; its view casts each column to the type its
field holds (``field_types.py``: the configuration, else the catalog, else inferred from
the values) with the guarded casts of ``casts.py``, names it readably (``Pickup Date`` is
``pickup_date``), turns empty strings into NULL, and passes the ``_aljex_*`` columns on.

``_aljex_views`` remembers each view: its columns with their types and where each type
came from, and a signature of its definition, so a view is only replaced when its
definition changes. A type inferred from values sticks: later values that do not fit it
become NULL (``status --types`` counts them) rather than change the view under the
dashboards built on it. A column with no values yet is text until values arrive.

Views are (re)built at start-up (:meth:`TypedViews.refresh_all`), when the live feed adds
columns (:meth:`TypedViews.columns_added`: no scan of the data, new columns take their
catalog or configured type, or wait as text) and after each morning load
(:meth:`TypedViews.after_load`: infers the columns that wait, one aggregate query for the
table). A view that cannot be built is logged and left as it was: the views are for the
readers, and never hold up a record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Dialect

from ..clock import utcnow as _utcnow
from ..field_types import FIELD_TYPES, INFERRED, FieldType, known_type
from . import locks
from .casts import PLACEHOLDER, sql_template
from .database import reading
from .identifiers import MAX_IDENTIFIER, suffixed
from .schema import META_COLUMNS, MYSQL_TABLE, Name, Timestamp, columns_table, tables_table

log = logging.getLogger("aljex_sync.views")

VIEW_SUFFIX = "_typed"
CONFIG, CATALOG, INFERRED_FROM_VALUES, NO_VALUES_YET = "config", "catalog", "inferred", "empty"

VIEWS = MetaData()
views_table = Table(
    "_aljex_views",
    VIEWS,
    Column("table_name", Name, primary_key=True),
    Column("view_name", Name, nullable=False),
    Column("signature", String(64), nullable=False),
    Column("columns", Text, nullable=False),  # JSON: a list of ViewColumn
    Column("built_at", Timestamp, nullable=False),
    **MYSQL_TABLE,
)


INFER_SAMPLE = 2000
"""Rows a column's values are first checked on, to rule types out before the full pass."""


def view_name(table: str) -> str:
    """``<table>_typed``, shortened with a hash of the table's name past 63 characters."""
    return suffixed(table, VIEW_SUFFIX)


def readable_name(field: str) -> str:
    """A field's name as a view column: lowercase, runs of other characters made one ``_``.

    ``Pickup Date`` is ``pickup_date``, ``Pro #`` is ``pro``; a name left empty is ``field``,
    one that would start with a digit starts with ``f_``.
    """
    name = re.sub(r"[^a-z0-9]+", "_", field.lower()).strip("_") or "field"
    if name[0].isdigit():
        name = f"f_{name}"
    return name[:MAX_IDENTIFIER].rstrip("_")


def readable_names(fields: Iterable[str]) -> list[str]:
    """Readable names for fields in table order, with ``_2``, ``_3`` only where two collide.

    Earlier fields keep their names: a field added later never renames one already shown.
    """
    taken: set[str] = set()
    names: list[str] = []
    for field in fields:
        stem = readable_name(field)
        name, n = stem, 1
        while name in taken:
            n += 1
            suffix = f"_{n}"
            name = stem[: MAX_IDENTIFIER - len(suffix)] + suffix
        taken.add(name)
        names.append(name)
    return names


@dataclass(frozen=True)
class ViewColumn:
    """One column of a typed view: the table's column, its name in the view, its type."""

    column: str
    name: str
    type: FieldType
    source: str  # CONFIG, CATALOG, INFERRED_FROM_VALUES or NO_VALUES_YET


@dataclass(frozen=True)
class Misfits:
    """Stored values of one typed column that do not fit its type (NULL in the view)."""

    table: str
    view: str
    name: str
    type: FieldType
    values: int


def view_sql(
    table: str, columns: Sequence[ViewColumn], physical: Sequence[str], dialect: Dialect
) -> str:
    """The SELECT of the view, for ``dialect``, with every identifier quoted by it.

    Columns come in the table's order, the ``_aljex_*`` ones passed on as they are: a
    column added to the table is then added at the end of the view too.
    """
    quote = dialect.identifier_preparer.quote
    by_column = {c.column: c for c in columns}
    selected: list[str] = []
    for name in physical:
        shown = by_column.get(name)
        if shown is not None:
            cast = sql_template("typed", shown.type, dialect).replace(PLACEHOLDER, quote(name))
            selected.append(f"{cast} AS {quote(shown.name)}")
        elif name in META_COLUMNS:
            selected.append(quote(name))
    return f"SELECT {', '.join(selected)} FROM {quote(table)}"


def aggregate_sql(
    table: str,
    checks: Sequence[tuple[str, str, FieldType]],
    dialect: Dialect,
    *,
    sample: int | None = None,
) -> str:
    """One SELECT over ``table`` of ``(function, column, type)`` checks: ``count`` counts
    the non-empty values, ``sum`` the values that do not fit the type. With ``sample``,
    over only that many of its rows."""
    quote = dialect.identifier_preparer.quote
    parts = []
    for function, column, kind in checks:
        if function == "count":
            parts.append(f"COUNT(NULLIF({quote(column)}, ''))")
        else:
            misfits = sql_template("misfit", kind, dialect).replace(PLACEHOLDER, quote(column))
            parts.append(f"SUM({misfits})")
    source = quote(table)
    if sample is not None:
        columns = ", ".join(quote(c) for c in dict.fromkeys(column for _, column, _ in checks))
        source = f"(SELECT {columns} FROM {quote(table)} LIMIT {int(sample)}) AS sampled"
    return f"SELECT {', '.join(parts)} FROM {source}"


class TypedViews:
    """Builds and refreshes the typed views of one database.

    ``overrides`` is ``[tables.X.types]``: table name to field name (any case) to type.
    """

    def __init__(
        self, engine: Engine, overrides: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        self.engine = engine
        self.overrides = {
            table.lower(): {field.lower(): kind for field, kind in types.items()}
            for table, types in (overrides or {}).items()
        }
        self._installed = False

    # -- the hooks ----------------------------------------------------------------------

    def columns_added(self, table: str) -> None:
        """After the live feed added columns: show them, without reading the data."""
        self._safely(table, infer=False)

    def after_load(self, table: str) -> None:
        """After a morning load: show new columns, and infer those that had no values."""
        self._safely(table, infer=True)

    def refresh_all(self) -> list[str]:
        """Build or refresh the view of every synced table; the tables whose view changed."""
        with reading(self.engine) as conn:
            tables = list(conn.execute(select(tables_table.c.table_name)).scalars())
        return [t for t in sorted(tables) if self._safely(t, infer=True)]

    def _safely(self, table: str, *, infer: bool) -> bool:
        try:
            return self.refresh(table, infer=infer)
        except Exception as e:  # the views serve readers; a failure must not stop a record
            log.warning("typed view of %s not refreshed: %s", table, " ".join(str(e).split()))
            return False

    # -- building -----------------------------------------------------------------------

    def refresh(self, table: str, *, infer: bool = True) -> bool:
        """Bring ``<table>_typed`` up to date; True if it was (re)created.

        Raises SQLAlchemy's errors, and ValueError when the view's name is taken by a table.
        Receivers on several hosts refresh one view in turn (a database lock).
        """
        self._install()
        with locks.held(self.engine, f"view {table}", wait=locks.DDL_WAIT):
            return self._refresh(table, infer=infer)

    def _refresh(self, table: str, *, infer: bool) -> bool:
        name = view_name(table)
        with reading(self.engine) as conn:
            inspector = inspect(conn)
            present = set(inspector.get_table_names())
            if table not in present:
                return False
            if name in present:
                raise ValueError(f"{name} is a table, so the view cannot have that name")
            physical = [c["name"] for c in inspector.get_columns(table)]
            view_exists = name in inspector.get_view_names()
            fields = self._fields(conn, table)
            stored = conn.execute(
                select(views_table.c.signature, views_table.c.columns).where(
                    views_table.c.table_name == table
                )
            ).first()
            previous = {c.column: c for c in _decode(stored.columns)} if stored else {}
            columns = self._plan(table, physical, fields, previous)
            if infer:
                columns = self._infer(conn, table, columns)
            sql = view_sql(table, columns, physical, conn.dialect)
        signature = hashlib.sha256(sql.encode()).hexdigest()
        encoded = json.dumps([asdict(c) for c in columns])
        before = (stored.signature, stored.columns) if stored is not None else ("", "")
        rebuild = not view_exists or before[0] != signature
        if not rebuild and before[1] == encoded:
            return False
        self._replace(table, name, sql, signature, encoded, rebuild=rebuild)
        return rebuild

    def _install(self) -> None:
        if not self._installed:
            with (
                locks.held(self.engine, "install", wait=locks.DDL_WAIT),
                self.engine.begin() as conn,
            ):
                views_table.create(conn, checkfirst=True)
            self._installed = True

    @staticmethod
    def _fields(conn: Connection, table: str) -> dict[str, str]:
        """Column to the field it holds, as first sent."""
        rows = conn.execute(
            select(columns_table.c.column_name, columns_table.c.field_name)
            .where(columns_table.c.table_name == table)
            .order_by(columns_table.c.first_seen_at)
        )
        fields: dict[str, str] = {}
        for column, field in rows:
            fields.setdefault(column, field)
        return fields

    def _plan(
        self,
        table: str,
        physical: Sequence[str],
        fields: Mapping[str, str],
        previous: Mapping[str, ViewColumn],
    ) -> list[ViewColumn]:
        """Each value column's type, without reading the data; unknown ones wait as text."""
        overrides = self.overrides.get(table, {})
        value_columns = [c for c in physical if c not in META_COLUMNS]
        names = readable_names(fields.get(c, c) for c in value_columns)
        planned: list[ViewColumn] = []
        for column, name in zip(value_columns, names, strict=True):
            field = fields.get(column, column)
            configured = overrides.get(field.lower(), overrides.get(column))
            known = known_type(table, field)
            before = previous.get(column)
            if configured is not None and configured in FIELD_TYPES:
                kind, source = _field_type(configured), CONFIG
            elif known is not None:
                kind, source = known, CATALOG
            elif before is not None and before.source == INFERRED_FROM_VALUES:
                kind, source = before.type, INFERRED_FROM_VALUES
            else:
                kind, source = "text", NO_VALUES_YET
            planned.append(ViewColumn(column, name, kind, source))
        return planned

    def _infer(self, conn: Connection, table: str, columns: list[ViewColumn]) -> list[ViewColumn]:
        """Type the columns that wait, from every stored value.

        One query counts their values; a second, only for columns that now have some,
        checks every value against every type at once.
        """
        waiting = [c for c in columns if c.source == NO_VALUES_YET]
        if not waiting:
            return columns
        counted: list[tuple[str, str, FieldType]] = [("count", c.column, "text") for c in waiting]
        counts = conn.exec_driver_sql(aggregate_sql(table, counted, conn.dialect)).one()
        filled = [c for c, n in zip(waiting, counts, strict=True) if n]
        if not filled:
            return columns
        # A sample rules out most types of most columns cheaply (a text column fails them
        # all in its first rows); only the types that survive it are checked on every row.
        checks = [("sum", c.column, kind) for c in filled for kind in INFERRED]
        sampled = conn.exec_driver_sql(
            aggregate_sql(table, checks, conn.dialect, sample=INFER_SAMPLE)
        ).one()
        candidates = [
            (c, kind)
            for (_, _, kind), c, n in zip(checks, _each(filled), sampled, strict=True)
            if not n
        ]
        misfits: dict[tuple[str, FieldType], int] = {}
        if candidates:
            full = [("sum", c.column, kind) for c, kind in candidates]
            row = conn.exec_driver_sql(aggregate_sql(table, full, conn.dialect)).one()
            misfits = {(c.column, kind): n for (c, kind), n in zip(candidates, row, strict=True)}
        found: dict[str, ViewColumn] = {}
        for c in filled:
            kind: FieldType = next(
                (k for k in INFERRED if (c.column, k) in misfits and not misfits[c.column, k]),
                "text",
            )
            found[c.column] = ViewColumn(c.column, c.name, kind, INFERRED_FROM_VALUES)
        return [found.get(c.column, c) for c in columns]

    def _replace(
        self, table: str, name: str, sql: str, signature: str, encoded: str, *, rebuild: bool
    ) -> None:
        """Create or replace the view, and record it, in one transaction where DDL allows."""
        with self.engine.begin() as conn:
            if rebuild:
                _create_view(conn, name, sql)
                log.debug("typed view %s built", name)
            conn.execute(delete(views_table).where(views_table.c.table_name == table))
            conn.execute(
                insert(views_table),
                {
                    "table_name": table,
                    "view_name": name,
                    "signature": signature,
                    "columns": encoded,
                    "built_at": _utcnow(),
                },
            )

    # -- status --types -----------------------------------------------------------------

    def misfits(self) -> list[Misfits] | None:
        """Per typed column, the stored values that do not fit (NULL in the view).

        None when no view was built yet. Reads only; one query per table.
        """
        found: list[Misfits] = []
        with reading(self.engine) as conn:
            present = set(inspect(conn).get_table_names())
            if views_table.name not in present:
                return None
            rows = conn.execute(
                select(
                    views_table.c.table_name, views_table.c.view_name, views_table.c.columns
                ).order_by(views_table.c.table_name)
            ).all()
            for table, view, encoded in rows:
                typed_columns = [c for c in _decode(encoded) if c.type != "text"]
                if table not in present or not typed_columns:
                    continue
                checks = [("sum", c.column, c.type) for c in typed_columns]
                counts = conn.exec_driver_sql(aggregate_sql(table, checks, conn.dialect)).one()
                found += [
                    Misfits(table, view, c.name, c.type, int(n or 0))
                    for c, n in zip(typed_columns, counts, strict=True)
                ]
        return found


def _create_view(conn: Connection, name: str, sql: str) -> None:
    """Replace the view ``name``; names are checked and quoted by the dialect's preparer.

    MariaDB replaces a view in one statement. PostgreSQL's ``CREATE OR REPLACE`` keeps the
    views users built on ours, but only when columns are added at the end: otherwise the
    view is dropped and made again. SQLite has no ``OR REPLACE`` for views.
    """
    quoted = conn.dialect.identifier_preparer.quote(name)
    if conn.dialect.name in ("mysql", "mariadb"):
        conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {quoted} AS {sql}")
        return
    if conn.dialect.name == "postgresql":
        savepoint = conn.begin_nested()
        try:
            conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {quoted} AS {sql}")
            savepoint.commit()
            return
        except Exception:
            savepoint.rollback()
    conn.exec_driver_sql(f"DROP VIEW IF EXISTS {quoted}")
    conn.exec_driver_sql(f"CREATE VIEW {quoted} AS {sql}")


def _each(columns: Sequence[ViewColumn]) -> list[ViewColumn]:
    """Each column once per inferred type, in the order the checks list them."""
    return [c for c in columns for _ in INFERRED]


def _decode(encoded: str) -> list[ViewColumn]:
    return [ViewColumn(**c) for c in json.loads(encoded)]


def _field_type(name: str) -> FieldType:
    return next(kind for kind in FIELD_TYPES if kind == name)
