"""A PostgreSQL database of a benchmark's own, made empty and dropped afterwards.

A benchmark that wrote into the server's ``test`` database would start each run from the
journal and tables the last one left, and leave them behind for the test suite's owner.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

from aljex_sync.store.database import normalize_url


@contextmanager
def scratch_database(server: str, name: str) -> Iterator[str]:
    """The URL of database ``name`` on ``server`` (a PostgreSQL URL, trust or with its
    password), new and empty; it is dropped on exit, whoever is still connected."""
    admin = create_engine(normalize_url(server), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield normalize_url(server).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
