"""When each feed last delivered: the last applied Live Sync record, the last loaded file
(and, for telling a file sent again, what the last one of a table held).

The feed-health alerts and /metrics both ask at every check or scrape. Neither
``received_at`` nor ``finished_at`` carries an index, so a ``max()`` of them reads the
whole journal or file log each time; walking the primary keys backwards to the first
match costs a few rows however long the journal grows.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select

from .store.schema import events, files


def last_activity(conn: Connection) -> tuple[datetime | None, datetime | None]:
    """When the last applied live record was received and the last morning file loaded
    (naive UTC), or None where there is none."""
    live = conn.execute(
        select(events.c.received_at)
        .where(events.c.status == "applied", events.c.source == "live")
        .order_by(events.c.id.desc())
        .limit(1)
    ).scalar()
    morning = conn.execute(
        select(files.c.finished_at)
        .where(files.c.status == "loaded")
        .order_by(files.c.id.desc())
        .limit(1)
    ).scalar()
    return live, morning


def last_loaded_content(conn: Connection, table: str) -> str | None:
    """The SHA-256 of the last file loaded into ``table``, or None if none was."""
    return conn.execute(
        select(files.c.sha256)
        .where(files.c.table_name == table, files.c.status == "loaded")
        .order_by(files.c.id.desc())
        .limit(1)
    ).scalar()
