"""The DDL statements that grow the synced tables, where the databases differ.

``schema.py`` decides what a table needs; this module says it to each database: the
PostgreSQL sequence a history table's version gets a name of aljex-sync's own, and columns
are added one statement per table where the database allows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Connection, Table

from .identifiers import internal


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


def add_columns(conn: Connection, table: str, columns: Sequence[Column[Any]]) -> None:
    """ALTER TABLE ... ADD COLUMN for checked column names, quoted by the dialect.

    Names reaching here are the table name the wire checked and columns made by
    ``column_for``; the dialect's preparer quotes them all the same.
    """
    if not columns:
        return
    preparer = conn.dialect.identifier_preparer
    quoted_table = preparer.quote(table)
    clauses = [
        f"ADD COLUMN {preparer.quote(c.name)} {c.type.compile(dialect=conn.dialect)}"
        for c in columns
    ]
    if conn.dialect.name == "sqlite":  # one column per statement
        for clause in clauses:
            conn.exec_driver_sql(f"ALTER TABLE {quoted_table} {clause}")
    else:
        conn.exec_driver_sql(f"ALTER TABLE {quoted_table} {', '.join(clauses)}")
