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

Views are (re)built by :meth:`TypedViews.refresh_all` (``serve`` runs it in the background
once it answers, ``view_refresh.py``), when the live feed adds columns
(:meth:`TypedViews.columns_added`: no scan of the data, new columns take their catalog or
configured type, or wait as text) and after each morning load (:meth:`TypedViews.after_load`:
infers the columns that wait, ``inference.py``; ``serve`` does it off the loader's path).
A view that cannot be built is logged and left as it was, and why is kept in
``_aljex_view_errors`` until a refresh succeeds (``status`` shows it): the views are for
the readers, and never hold up a record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    delete,
    exists,
    insert,
    inspect,
    select,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from ..clock import utcnow as _utcnow
from ..field_types import FIELD_TYPES, FieldType, known_type
from . import locks
from .casts import PLACEHOLDER, sql_template
from .database import reading
from .identifiers import MAX_IDENTIFIER, suffixed
from .inference import Check, aggregate, infer_types
from .schema import META_COLUMNS, MYSQL_TABLE, Name, Timestamp, columns_table, tables_table

log = logging.getLogger("aljex_sync.views")

VIEW_SUFFIX = "_typed"
CONFIG, CATALOG, INFERRED_FROM_VALUES, NO_VALUES_YET = "config", "catalog", "inferred", "empty"

# A view's columns described in JSON take about 90 bytes each, up to 200 with long names:
# over MariaDB's TEXT (64 KiB) from about 700 columns, and a table may have 1,013.
ColumnsText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

VIEWS = MetaData()
views_table = Table(
    "_aljex_views",
    VIEWS,
    Column("table_name", Name, primary_key=True),
    Column("view_name", Name, nullable=False),
    Column("signature", String(64), nullable=False),
    Column("columns", ColumnsText, nullable=False),  # JSON: a list of ViewColumn
    Column("built_at", Timestamp, nullable=False),
    **MYSQL_TABLE,
)


view_errors = Table(
    "_aljex_view_errors",
    VIEWS,
    Column("table_name", Name, primary_key=True),
    Column("view_name", Name, nullable=False),
    Column("error", Text, nullable=False),
    Column("failed_at", Timestamp, nullable=False),
    **MYSQL_TABLE,
)
"""The views whose last refresh failed, and why; a refresh that succeeds deletes the row."""

REFRESH_TRIES = 3
"""Times a refresh starts again when the table changed while its view was being planned."""


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
class ViewError:
    """A view that its last refresh failed to bring up to date (``status`` shows it)."""

    table: str
    view: str
    error: str
    failed_at: datetime


class _TableChanged(Exception):
    """The table gained columns between the planning of its view and its writing."""


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

    def after_load(self, table: str) -> bool:
        """After a morning load: show new columns, and infer those that had no values.

        True if the view was (re)created; a failure is logged and kept, never raised.
        """
        return self._safely(table, infer=True)

    def refresh_all(self) -> list[str]:
        """Build or refresh the view of every synced table; the tables whose view changed."""
        return [t for t in self.tables() if self._safely(t, infer=True)]

    def tables(self) -> list[str]:
        """The synced tables, each of which has a view."""
        with reading(self.engine) as conn:
            return sorted(conn.execute(select(tables_table.c.table_name)).scalars())

    def _safely(self, table: str, *, infer: bool) -> bool:
        try:
            return self.refresh(table, infer=infer)
        except Exception as e:  # the views serve readers; a failure must not stop a record
            reason = _reason(e)
            log.warning("typed view of %s not refreshed: %s", table, reason)
            self._record_error(table, reason)
            return False

    # -- building -----------------------------------------------------------------------

    def refresh(self, table: str, *, infer: bool = True) -> bool:
        """Bring ``<table>_typed`` up to date; True if it was (re)created.

        Raises SQLAlchemy's errors, and ValueError when the view's name is taken by a table.
        Receivers on several hosts refresh one view in turn (a database lock); a view planned
        while another process added columns to its table is planned again (SQLite takes no
        such lock).
        """
        self._install()
        with locks.held(self.engine, f"view {table}", wait=locks.DDL_WAIT):
            for _ in range(REFRESH_TRIES - 1):
                try:
                    return self._refresh(table, infer=infer)
                except _TableChanged:
                    continue
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
            failed_before = conn.execute(
                select(exists().where(view_errors.c.table_name == table))
            ).scalar()
            previous = {c.column: c for c in _decode(stored.columns)} if stored else {}
            columns = self._plan(table, physical, fields, previous)
            if infer:
                columns = self._infer(conn, table, columns)
            sql = view_sql(table, columns, physical, conn.dialect)
        signature = hashlib.sha256(sql.encode()).hexdigest()
        encoded = json.dumps([asdict(c) for c in columns])
        before = (stored.signature, stored.columns) if stored is not None else ("", "")
        rebuild = not view_exists or before[0] != signature
        if rebuild or before[1] != encoded:
            self._replace(table, name, physical, sql, signature, encoded, rebuild=rebuild)
        elif failed_before:
            with self.engine.begin() as conn:
                conn.execute(delete(view_errors).where(view_errors.c.table_name == table))
        return rebuild

    def _record_error(self, table: str, reason: str) -> None:
        """Keep why ``table``'s view was not refreshed, for ``status``; never raises."""
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(view_errors).where(view_errors.c.table_name == table))
                conn.execute(
                    insert(view_errors),
                    {
                        "table_name": table,
                        "view_name": view_name(table),
                        "error": reason,
                        "failed_at": _utcnow(),
                    },
                )
        except Exception as e:  # the database is down, most likely: the log has the failure
            log.warning("why the typed view of %s failed could not be kept: %s", table, _reason(e))

    def _install(self) -> None:
        if not self._installed:
            with (
                locks.held(self.engine, "install", wait=locks.DDL_WAIT),
                self.engine.begin() as conn,
            ):
                VIEWS.create_all(conn, checkfirst=True)
                _widen_columns_text(conn)
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

    @staticmethod
    def _infer(conn: Connection, table: str, columns: list[ViewColumn]) -> list[ViewColumn]:
        """Type the columns that wait, from every stored value (``inference.py``)."""
        waiting = {c.column: c for c in columns if c.source == NO_VALUES_YET}
        if not waiting:
            return columns
        inferred = infer_types(conn, table, list(waiting))
        found = {
            column: ViewColumn(column, waiting[column].name, kind, INFERRED_FROM_VALUES)
            for column, kind in inferred.items()
        }
        return [found.get(c.column, c) for c in columns]

    def _replace(
        self,
        table: str,
        name: str,
        physical: Sequence[str],
        sql: str,
        signature: str,
        encoded: str,
        *,
        rebuild: bool,
    ) -> None:
        """Create or replace the view, and record it, in one transaction where DDL allows;
        _TableChanged if the table no longer has the columns the view was planned on."""
        with self.engine.begin() as conn:
            if [c["name"] for c in inspect(conn).get_columns(table)] != list(physical):
                raise _TableChanged(f"{table} changed while its view was planned")
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
            conn.execute(delete(view_errors).where(view_errors.c.table_name == table))

    def errors(self) -> list[ViewError]:
        """The views whose last refresh failed, and why; reads only."""
        with reading(self.engine) as conn:
            if view_errors.name not in inspect(conn).get_table_names():
                return []
            rows = conn.execute(select(view_errors).order_by(view_errors.c.table_name)).all()
        return [ViewError(r.table_name, r.view_name, r.error, r.failed_at) for r in rows]

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
                checks: list[Check] = [("sum", c.column, c.type) for c in typed_columns]
                counts = aggregate(conn, table, checks)
                found += [
                    Misfits(table, view, c.name, c.type, n)
                    for c, n in zip(typed_columns, counts, strict=True)
                ]
        return found


def _widen_columns_text(conn: Connection) -> None:
    """``_aljex_views.columns`` as MEDIUMTEXT on MariaDB, where earlier versions made it
    TEXT, too small for a view of 700 columns; safe to run again."""
    if conn.dialect.name not in ("mysql", "mariadb"):
        return
    found = {c["name"]: c["type"] for c in inspect(conn).get_columns(views_table.name)}
    if type(found["columns"]) is not mysql.TEXT:
        return
    quote = conn.dialect.identifier_preparer.quote
    conn.exec_driver_sql(
        f"ALTER TABLE {quote(views_table.name)} MODIFY {quote('columns')} MEDIUMTEXT NOT NULL"
    )
    log.info("%s: columns widened to MEDIUMTEXT for wide tables", views_table.name)


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


def _reason(error: Exception) -> str:
    """An error as one short line: the database's own message, without the statement."""
    reason = str(error.orig) if isinstance(error, DBAPIError) else str(error)
    reason = " ".join(reason.split()) or type(error).__name__
    return reason if len(reason) <= 300 else reason[:297] + "..."


def _decode(encoded: str) -> list[ViewColumn]:
    return [ViewColumn(**c) for c in json.loads(encoded)]


def _field_type(name: str) -> FieldType:
    return next(kind for kind in FIELD_TYPES if kind == name)
