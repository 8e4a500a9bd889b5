"""The version of aljex-sync's bookkeeping tables, and the steps that bring an older one up.

``_aljex_meta`` holds ``schema_version``. A database made before it existed (aljex-sync
0.1.0) is version 1. ``upgrade`` runs at start-up (from ``Schema.install``): a fresh
database gets the bookkeeping tables at their latest shape and the latest version; an
older one gets each missing step, in order; a newer one is refused, since this aljex-sync
cannot know what the newer one changed.

Each step is a small function of a connection, appended to ``STEPS`` with the version it
leads to. The whole upgrade is one transaction where DDL is transactional (SQLite,
PostgreSQL): it is all done or not at all. MariaDB and MySQL commit around every DDL
statement, so a step must be idempotent (look before it alters: ``add_column`` does), and
the version is recorded after each step, so an interrupted upgrade resumes where it
stopped. Tables missing altogether are made by ``create_all`` at their latest shape before
the steps run, which is one more reason for a step to look before it alters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .. import __version__
from ..errors import DatabaseTooNew
from . import locks
from .database import reading

log = logging.getLogger("aljex_sync.store")

VERSION_KEY = "schema_version"

meta = Table(
    "_aljex_meta",
    MetaData(),
    Column(
        "name",
        String(64).with_variant(mysql.VARCHAR(64, collation="utf8mb4_bin"), "mysql", "mariadb"),
        primary_key=True,
    ),
    Column("value", Text, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)


@dataclass(frozen=True)
class Step:
    """One change to the bookkeeping tables: ``apply`` takes a database to ``version``."""

    version: int
    what: str
    apply: Callable[[Connection], None]


def _record_the_version(conn: Connection) -> None:
    meta.create(conn, checkfirst=True)


def _add_row_hashes(conn: Connection) -> None:
    """Every synced table gets ``_aljex_row_hash`` (NULL: compare the values), which lets a
    morning file leave the rows it does not change alone (store/merge.py)."""
    synced = Table("_aljex_tables", MetaData(), Column("table_name", String(64)))
    present = set(inspect(conn).get_table_names())
    for (name,) in conn.execute(select(synced.c.table_name)):
        if name in present:
            add_column(conn, Table(name, MetaData()), Column("_aljex_row_hash", BigInteger))


def _index_no_applied_events(conn: Connection) -> None:
    """The journal's status index leaves applied events out, and its table-name index
    goes, on SQLite and PostgreSQL, so that a Live Sync commit writes two pages fewer
    (store/statuses.py). MariaDB has no partial indexes: it keeps both."""
    if conn.dialect.name not in ("sqlite", "postgresql"):
        return
    journal = Table("_aljex_events", MetaData(), Column("status", String(16)))
    for name in ("ix_aljex_events_table_name", "ix_aljex_events_status"):
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    unresolved = text("status <> 'applied'")
    Index(
        "ix_aljex_events_status",
        journal.c.status,
        sqlite_where=unresolved,
        postgresql_where=unresolved,
    ).create(conn)


STEPS: tuple[Step, ...] = (
    Step(2, "record the schema version in _aljex_meta", _record_the_version),
    Step(3, "add _aljex_row_hash to every synced table", _add_row_hashes),
    Step(4, "index only the journal's events not applied", _index_no_applied_events),
    # Next: Step(5, "what it does", a_function_of_conn), e.g. add_column(conn, table, Column).
)
LATEST = STEPS[-1].version


def add_column(conn: Connection, table: Table, column: Column[Any]) -> None:
    """ALTER TABLE ADD COLUMN, unless the column is there already (a step may run twice).

    Give the new column a server default or make it nullable: existing rows need a value.
    """
    if column.name in {c["name"] for c in inspect(conn).get_columns(table.name)}:
        return
    preparer = conn.dialect.identifier_preparer
    kind = column.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(
        f"ALTER TABLE {preparer.quote(table.name)} ADD COLUMN {preparer.quote(column.name)} {kind}"
    )


def read_version(conn: Connection, present: set[str]) -> int | None:
    """The database's schema version: None if it has no bookkeeping tables at all."""
    if meta.name in present:
        found = conn.execute(select(meta.c.value).where(meta.c.name == VERSION_KEY)).scalar()
        if found is not None:
            return int(found)
    return 1 if any(name.startswith("_aljex_") for name in present) else None


def current(engine: Engine) -> tuple[int | None, set[str]]:
    """The schema version and the table names, read without taking any lock."""
    with reading(engine) as conn:
        present = set(inspect(conn).get_table_names())
        return read_version(conn, present), present


def upgrade(engine: Engine, system: MetaData, steps: Sequence[Step] = STEPS) -> int:
    """Bring the bookkeeping tables to the latest version; return the version found.

    ``system`` is the latest shape of every bookkeeping table but ``_aljex_meta``. Raises
    DatabaseTooNew for a database a newer aljex-sync has upgraded.
    """
    latest = steps[-1].version
    try:
        # Receivers on several hosts may all start at once: one installs, the others
        # wait, then find the tables made.
        with locks.held(engine, "install", wait=locks.DDL_WAIT):
            return _upgrade(engine, system, steps, latest)
    except SQLAlchemyError:
        # Another process (the journal's writer, a `load`) upgraded it meanwhile.
        found, present = current(engine)
        if found == latest and present.issuperset(system.tables):
            return latest
        raise


def _upgrade(engine: Engine, system: MetaData, steps: Sequence[Step], latest: int) -> int:
    with engine.begin() as conn:
        present = set(inspect(conn).get_table_names())
        found = read_version(conn, present)
        refuse_newer(found, latest)
        system.create_all(conn)
        meta.create(conn, checkfirst=True)
        if found is None:  # a fresh database: the tables were just made at the latest shape
            _write_version(conn, latest)
            log.info("bookkeeping tables created, schema version %d", latest)
            return latest
        for step in steps:
            if step.version > found:
                log.info("schema version %d: %s", step.version, step.what)
                step.apply(conn)
                _write_version(conn, step.version)
    if found < latest:
        log.info("bookkeeping tables upgraded from schema version %d to %d", found, latest)
    return found


def refuse_newer(found: int | None, latest: int = LATEST) -> None:
    """Raise DatabaseTooNew if ``found`` is past what this aljex-sync knows."""
    if found is not None and found > latest:
        raise DatabaseTooNew(
            f"the database's bookkeeping tables are schema version {found}, newer than"
            f" this aljex-sync ({__version__}) knows (up to {latest}): upgrade aljex-sync"
        )


def _write_version(conn: Connection, version: int) -> None:
    done = conn.execute(
        update(meta).where(meta.c.name == VERSION_KEY).values(value=str(version))
    ).rowcount
    if not done:
        conn.execute(meta.insert().values(name=VERSION_KEY, value=str(version)))


def write_meta(engine: Engine, values: dict[str, str]) -> None:
    """Set ``_aljex_meta`` rows in one transaction, inserting those not there yet."""
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                for name, value in values.items():
                    change = update(meta).where(meta.c.name == name).values(value=value)
                    if not conn.execute(change).rowcount:
                        conn.execute(meta.insert().values(name=name, value=value))
            return
        except IntegrityError:  # inserted meanwhile by another process: update it
            if attempt == 2:
                raise
