"""A group the database rolled back to break a deadlock is written again, not answered 503.

Receivers sharing PostgreSQL or MariaDB lock rows in whatever order their groups come.
Two transactions each waiting for a row the other holds is a deadlock: the database ends
one of them, and the journal's writer then writes its group again.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from sqlalchemy import Engine, text

from aljex_sync.clock import utcnow
from aljex_sync.journal import Journal
from aljex_sync.messages import Outcome, Received
from aljex_sync.store.database import open_engine

from .support import make_settings

HEAVY = 50  # rows the other transaction changes first, so the database picks the writer


def _received(key: str, city: str) -> Received:
    fields = {"web_sync_table_name": "notes", "web_sync_action": "update", "id": key}
    return Received(urlencode({**fields, "city": city}).encode(), "203.0.113.9", utcnow())


def _wait_for_a_lock_wait(engine: Engine, timeout: float = 20.0) -> None:
    """Until a transaction of the database waits for a row lock (the writer's)."""
    if engine.dialect.name == "postgresql":
        sql = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
    else:
        sql = (  # this database's own: other test processes may be waiting on theirs
            "SELECT count(*) FROM information_schema.innodb_trx t"
            " JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id"
            " WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()"
        )
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while not conn.execute(text(sql)).scalar():
            assert time.monotonic() < deadline, "the writer never waited for the lock"
            conn.rollback()
            time.sleep(0.05)


def test_a_group_ended_by_a_deadlock_is_written_again(server_url, caplog):
    settings = make_settings(server_url, Path("."))
    journal = Journal(open_engine(settings.database.url), settings)
    journal.install()
    keys = ["1", "2", *(f"x{n}" for n in range(HEAVY))]
    journal.write_group([_received(key, "before") for key in keys])
    other = open_engine(settings.database.url)
    results: list[object] = []
    try:
        with other.connect() as conn:
            if other.dialect.name == "postgresql":
                # PostgreSQL ends the transaction that looks for a deadlock first: the one
                # waiting deadlock_timeout (1 s) first. This one looks after 30 s.
                conn.execute(text("SET deadlock_timeout = '30s'"))
            conn.execute(text("UPDATE notes SET city = 'other' WHERE id LIKE 'x%'"))
            conn.execute(text("UPDATE notes SET city = 'other' WHERE id = '1'"))
            # The writer takes key 2, then waits for key 1, which this transaction holds.
            writer = threading.Thread(
                target=lambda: results.extend(
                    journal.write_group([_received("2", "writer"), _received("1", "writer")])
                )
            )
            with caplog.at_level(logging.WARNING, logger="aljex_sync.journal"):
                writer.start()
                _wait_for_a_lock_wait(other)
                # Now this one waits for key 2: a deadlock. The database ends the writer's
                # transaction (the lighter one) and this one goes on.
                conn.execute(text("UPDATE notes SET city = 'other' WHERE id = '2'"))
                conn.commit()
                writer.join(timeout=30)
        assert not writer.is_alive()
        assert all(isinstance(r, Outcome) and r.status == "applied" for r in results), results
        assert "a deadlock ended the group's transaction; writing it again" in caplog.text
        with other.connect() as conn:
            found = conn.execute(text("SELECT id, city FROM notes WHERE id IN ('1', '2')"))
            cities = {row.id: row.city for row in found}
        assert cities == {"1": "writer", "2": "writer"}  # written after the other committed
    finally:
        other.dispose()
        journal.close()
