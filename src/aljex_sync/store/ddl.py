"""The DDL statements that grow the synced tables, where the databases differ.

``schema.py`` decides what a table needs; this module says it to each database: the
PostgreSQL sequence a history table's version gets a name of aljex-sync's own; columns
are added one statement per table where the database allows it, and on SQLite, which
takes one column per statement, many at once in one change of the schema.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Connection, Table
from sqlalchemy.exc import DBAPIError

from .identifiers import internal

log = logging.getLogger("aljex_sync.store")


def create_table(conn: Connection, table: Table) -> None:
    """CREATE ``table``, with the sequence PostgreSQL makes for its serial column (a
    history's version) renamed from ``<table>_<column>_seq``, a name a sender's table
    could have, to one it cannot."""
    table.create(conn)
    serial = table.autoincrement_column
    if conn.dialect.name != "postgresql" or serial is None:
        return
    quote = conn.dialect.identifier_preparer.quote
    sequence = conn.exec_driver_sql(
        "SELECT pg_get_serial_sequence(%s, %s)", (quote(table.name), serial.name)
    ).scalar()
    if sequence is not None:
        conn.exec_driver_sql(
            f"ALTER SEQUENCE {sequence} RENAME TO {quote(internal('seq', table.name))}"
        )


SQLITE_BULK_FROM = 4
"""Columns added to a SQLite table at once from which they take one change of its schema."""


def add_columns(conn: Connection, table: str, columns: Sequence[Column[Any]]) -> None:
    """ALTER TABLE ... ADD COLUMN for checked column names, quoted by the dialect.

    Names reaching here are the table name the wire checked and columns made by
    ``column_for``; the dialect's preparer quotes them all the same. SQLite takes one
    column per statement, each re-reading the whole schema: many are added at once by
    :func:`_sqlite_add_columns`.
    """
    if not columns:
        return
    preparer = conn.dialect.identifier_preparer
    quoted_table = preparer.quote(table)
    definitions = [
        f"{preparer.quote(c.name)} {c.type.compile(dialect=conn.dialect)}" for c in columns
    ]
    if conn.dialect.name != "sqlite":
        clauses = ", ".join(f"ADD COLUMN {d}" for d in definitions)
        conn.exec_driver_sql(f"ALTER TABLE {quoted_table} {clauses}")
        return
    conn.exec_driver_sql(f"ALTER TABLE {quoted_table} ADD COLUMN {definitions[0]}")
    rest = definitions[1:]
    if len(definitions) >= SQLITE_BULK_FROM and _sqlite_add_columns(
        conn, table, definitions[0], rest, [c.name for c in columns]
    ):
        return
    for definition in rest:
        conn.exec_driver_sql(f"ALTER TABLE {quoted_table} ADD COLUMN {definition}")


class _NotAsPlanned(Exception):
    """The grown table's columns are not those it was to have."""


def _sqlite_add_columns(
    conn: Connection, table: str, first: str, rest: Sequence[str], names: Sequence[str]
) -> bool:
    """Add the columns ``rest`` to a SQLite table in one change of its schema; False (and
    nothing changed) where that cannot be done, for the caller to ALTER them one by one.

    SQLite's ADD COLUMN rewrites the table's CREATE statement in ``sqlite_schema`` and
    then re-reads the whole schema; 1,000 columns added to a table in a database of wide
    tables and their typed views took 40 s, every other write waiting (docs/benchmarks.md).
    ``first`` was just added by ALTER TABLE, which checked that the table takes columns
    and set the file format that rows of differing lengths need. The others are written
    into the statement ALTER left, right after ``first``'s definition, where further
    ALTERs would have put them, and the schema cookie is bumped once, as ALTER does:
    SQLite's own procedure for changes that leave the stored rows as they are
    (https://www.sqlite.org/lang_altertable.html#otheralter). Rows stored before read the
    new columns as NULL, as after ALTER. The statement is first checked in a scratch
    database, and the table's columns after; the whole is undone on any failure (a
    schema that may not be written, under ``SQLITE_DBCONFIG_DEFENSIVE``).
    """
    sql = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar_one()
    if sql.count(first) != 1:  # a hand-made table whose statement holds that text again
        return False
    grown = sql.replace(first, ", ".join([first, *rest]))
    before = _columns(conn, table)
    planned = [*before, *names[1:]]
    if _scratch_columns(grown, table) != planned:
        return False
    try:
        with conn.begin_nested():
            conn.exec_driver_sql("PRAGMA writable_schema = ON")
            try:
                conn.exec_driver_sql(
                    "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?",
                    (grown, table),
                )
                version = int(conn.exec_driver_sql("PRAGMA schema_version").scalar_one())
                conn.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
            finally:
                conn.exec_driver_sql("PRAGMA writable_schema = OFF")
            if _columns(conn, table) != planned:
                raise _NotAsPlanned(table)
    except (DBAPIError, _NotAsPlanned) as e:
        log.info("%s: columns added one by one: %s", table, str(e).splitlines()[0])
        return False
    return True


def _columns(conn: Connection, table: str) -> list[str]:
    quoted = conn.dialect.identifier_preparer.quote(table)
    return [row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({quoted})")]


def _scratch_columns(create: str, table: str) -> list[str]:
    """The columns ``create`` makes, made in a database of its own in memory; none if it
    is not a statement SQLite takes."""
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.execute(create)
        quoted = table.replace('"', '""')
        return [row[1] for row in scratch.execute(f'PRAGMA table_info("{quoted}")')]
    except sqlite3.Error:
        return []
    finally:
        scratch.close()
