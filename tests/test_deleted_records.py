"""A deleted record stays deleted against every change older than its delete, on SQLite,
PostgreSQL and MariaDB: from another receiver, or replayed from the journal.

Within one key a change never overwrites one journaled after it (docs/database.md,
"Concurrent changes to one key"). A record's last live change is on its row; once the row
is deleted, it is on the key's tombstone, and an older create or update is measured
against that: journaled ``superseded``, answered 200, no history version, no notice.
"""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta
from urllib.parse import urlencode

import pytest
from sqlalchemy import text

from aljex_sync.journal import Journal
from aljex_sync.messages import Outcome, Received
from aljex_sync.store.database import open_engine

from .support import make_settings
from .test_history import versions
from .test_receivers import T0, body, journal, journaled, notified, row, supersede, write

SECOND = timedelta(seconds=1)


def deleted_later(at: datetime, event: int) -> str:
    """The reason a change older than its record's delete is superseded."""
    return f"the record was deleted by a later change, from {at:%Y-%m-%d %H:%M:%S} (event {event})"


def sent(table: str, action: str, **fields: str) -> bytes:
    """A Live Sync body for a record of ``table``."""
    pairs = {"web_sync_table_name": table, "web_sync_action": action, **fields}
    return urlencode(pairs).encode()


def tombstone(url: str, key: str, table: str = "loads") -> tuple[datetime, int] | None:
    """The key's tombstone: when it was deleted, and by which event."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT deleted_at, event_id FROM _aljex_tombstones"
                    " WHERE table_name = :t AND record_key = :k"
                ),
                {"t": table, "k": key},
            ).first()
    finally:
        engine.dispose()
    if found is None:
        return None
    deleted_at = found[0]
    if isinstance(deleted_at, str):  # SQLite, read without the table's types
        deleted_at = datetime.fromisoformat(deleted_at)
    return deleted_at, int(found[1])


@pytest.mark.backend
def test_a_change_received_before_a_delete_does_not_bring_the_record_back(database_url, tmp_path):
    first, second = journal(database_url, tmp_path), journal(database_url, tmp_path)
    try:
        write(first, [Received(body("create", id="1", status="NEW"), "a", T0)])
        (deleted,) = write(first, [Received(body("delete", id="1"), "a", T0 + 2 * SECOND)])
        assert deleted.status == "applied"
        # Received before the delete by another receiver, journaled after it.
        (update,) = write(
            second, [Received(body("update", id="1", status="OPEN"), "b", T0 + SECOND)]
        )
        reason = deleted_later(T0 + 2 * SECOND, deleted.event_id)
        assert (update.status, update.reason) == ("superseded", reason)
        assert row(database_url, "1") is None
        # A create likewise, and in a group with a change to another record.
        create, other = write(
            second,
            [
                Received(body("create", id="1", status="OPEN"), "b", T0 + SECOND),
                Received(body("create", id="2", status="NEW"), "b", T0 + 3 * SECOND),
            ],
        )
        assert (create.status, create.reason) == ("superseded", reason)
        assert other.status == "applied"
        assert row(database_url, "1") is None
        assert tombstone(database_url, "1") == (T0 + 2 * SECOND, deleted.event_id)
        # A create received after the delete makes the record again.
        (again,) = write(
            second, [Received(body("create", id="1", status="AGAIN"), "b", T0 + 4 * SECOND)]
        )
        assert again.status == "applied"
        stored = row(database_url, "1")
        assert stored is not None and stored["status"] == "AGAIN"
        assert journaled(database_url) == [
            ("applied", None, True),
            ("applied", None, True),
            ("superseded", reason, False),
            ("superseded", reason, False),
            ("applied", None, True),
            ("applied", None, True),
        ]
        # The record's history: made, deleted, made again; nothing of the older changes.
        engine = open_engine(database_url)
        assert [v[1] for v in versions(engine, "loads") if v[0] == "1"] == [
            "create",
            "delete",
            "create",
        ]
        engine.dispose()
    finally:
        first.close()
        second.close()


@pytest.mark.backend
def test_an_older_delete_keeps_the_later_tombstone(database_url, tmp_path):
    first, second = journal(database_url, tmp_path), journal(database_url, tmp_path)
    try:
        write(first, [Received(body("create", id="1", status="NEW"), "a", T0)])
        (deleted,) = write(first, [Received(body("delete", id="1"), "a", T0 + 2 * SECOND)])
        (older,) = write(second, [Received(body("delete", id="1"), "b", T0 + SECOND)])
        reason = deleted_later(T0 + 2 * SECOND, deleted.event_id)
        assert (older.status, older.reason) == ("superseded", reason)
        assert tombstone(database_url, "1") == (T0 + 2 * SECOND, deleted.event_id)
        # A key with no row ever: the tombstone keeps the later delete all the same.
        (unknown,) = write(first, [Received(body("delete", id="9"), "a", T0 + 2 * SECOND)])
        assert (unknown.status, unknown.reason) == ("applied", "no such record; nothing to delete")
        (older,) = write(second, [Received(body("delete", id="9"), "b", T0 + SECOND)])
        assert older.status == "superseded"
        assert tombstone(database_url, "9") == (T0 + 2 * SECOND, unknown.event_id)
        # A later delete moves it forward.
        (later,) = write(second, [Received(body("delete", id="9"), "b", T0 + 3 * SECOND)])
        assert later.status == "applied"
        assert tombstone(database_url, "9") == (T0 + 3 * SECOND, later.event_id)
    finally:
        first.close()
        second.close()


@pytest.mark.backend
def test_on_a_soft_delete_table_the_rows_own_times_decide(database_url, tmp_path):
    tables = {"quotes": {"delete": "soft", "history": True}}

    def receiver() -> Journal:
        settings = make_settings(database_url, tmp_path, tables=tables)
        writer = Journal(open_engine(database_url), settings)
        writer.start()
        return writer

    def quote(action: str, **fields: str) -> bytes:
        return sent("quotes", action, **fields)

    first, second = receiver(), receiver()
    try:
        write(first, [Received(quote("create", id="Q1", status="OPEN"), "a", T0)])
        (deleted,) = write(first, [Received(quote("delete", id="Q1"), "a", T0 + 2 * SECOND)])
        assert deleted.status == "applied"
        (update,) = write(
            second, [Received(quote("update", id="Q1", status="WON"), "b", T0 + SECOND)]
        )
        # The row stays, marked deleted: its own time supersedes the older change.
        assert (update.status, update.reason) == (
            "superseded",
            "the row already holds a later change, from 2026-11-27 09:00:02",
        )
        (older_delete,) = write(second, [Received(quote("delete", id="Q1"), "b", T0 + SECOND)])
        assert older_delete.status == "superseded"
        engine = open_engine(database_url)
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT status, _aljex_deleted_at, _aljex_event_id FROM quotes")
            ).one()
        assert (stored[0], stored[2]) == ("OPEN", deleted.event_id)
        assert stored[1] is not None
        assert [v[1] for v in versions(engine, "quotes")] == ["create", "delete"]
        engine.dispose()
        # A key deleted while it had no row has only its tombstone to go by.
        (gone,) = write(first, [Received(quote("delete", id="Q2"), "a", T0 + 2 * SECOND)])
        (create,) = write(
            second, [Received(quote("create", id="Q2", status="OPEN"), "b", T0 + SECOND)]
        )
        assert (create.status, create.reason) == (
            "superseded",
            deleted_later(T0 + 2 * SECOND, gone.event_id),
        )
        assert tombstone(database_url, "Q2", "quotes") == (T0 + 2 * SECOND, gone.event_id)
    finally:
        first.close()
        second.close()


@pytest.mark.backend
def test_a_record_with_a_composite_key_stays_deleted_likewise(database_url, tmp_path):
    settings = make_settings(database_url, tmp_path, tables={"stops": {"key": ["load_id", "stop"]}})
    first, second = (Journal(open_engine(database_url), settings) for _ in range(2))
    first.start()
    second.start()
    try:
        keys = [("L1", "1"), ("L1", "2"), ("L2", "1")]
        made = [
            Received(sent("stops", "create", load_id=k, stop=n, city="A"), "a", T0) for k, n in keys
        ]
        write(first, made)
        (deleted,) = write(
            first, [Received(sent("stops", "delete", load_id="L1", stop="2"), "a", T0 + 2 * SECOND)]
        )
        changed = [
            Received(sent("stops", "update", load_id=k, stop=n, city="B"), "b", T0 + SECOND)
            for k, n in keys
        ]
        outcomes = write(second, changed)
        reason = deleted_later(T0 + 2 * SECOND, deleted.event_id)
        assert [(o.status, o.reason) for o in outcomes] == [
            ("applied", ""),
            ("superseded", reason),
            ("applied", ""),
        ]
        engine = open_engine(database_url)
        with engine.connect() as conn:
            query = text("SELECT load_id, stop, city FROM stops ORDER BY load_id, stop")
            assert [tuple(r) for r in conn.execute(query)] == [("L1", "1", "B"), ("L2", "1", "B")]
        engine.dispose()
        assert tombstone(database_url, '["L1", "2"]', "stops") == (
            T0 + 2 * SECOND,
            deleted.event_id,
        )
    finally:
        first.close()
        second.close()


@pytest.mark.backend
def test_a_rejected_change_replayed_after_its_record_was_deleted_is_superseded(
    database_url, tmp_path
):
    refusing = Journal(
        open_engine(database_url),
        make_settings(database_url, tmp_path, live={"accept_tables": ["customers"]}),
    )
    refusing.start()
    try:
        (refused,) = write(
            refusing, [Received(body("update", id="1", status="OPEN"), "a", T0 + SECOND)]
        )
    finally:
        refusing.close()
    assert refused.status == "rejected"
    writer = journal(database_url, tmp_path)
    try:
        write(writer, [Received(body("create", id="1", status="NEW"), "a", T0)])
        (deleted,) = write(writer, [Received(body("delete", id="1"), "a", T0 + 2 * SECOND)])
        (replayed,) = writer.replay(include_rejected=True)
    finally:
        writer.close()
    reason = deleted_later(T0 + 2 * SECOND, deleted.event_id)
    assert (replayed.event_id, replayed.status, replayed.reason) == (
        refused.event_id,
        "superseded",
        reason,
    )
    assert row(database_url, "1") is None
    assert journaled(database_url)[0] == ("superseded", reason, False)
    engine = open_engine(database_url)
    assert [v[1] for v in versions(engine, "loads")] == ["create", "delete"]
    engine.dispose()


@pytest.mark.backend
def test_a_change_older_than_its_records_delete_is_answered_200_and_not_notified(
    database_url, tmp_path
):
    with notified(database_url, tmp_path) as (hook, running, _):
        # Another receiver journals a delete received after the change posted next.
        supersede(running, hook, tmp_path, body("delete", id="1"), "COVERED")
    assert [(p["event_id"], p["action"], p["key"]) for p in hook.payloads()] == [
        (1, "create", "1"),
        (2, "delete", "1"),
        (4, "create", "2"),
    ]
    assert row(database_url, "1") is None


# -- two receivers at the same moment --------------------------------------------------------


class Open:
    """A receiver's group written on a transaction it keeps open until ``commit()``."""

    def __init__(self, writer: Journal, received: list[Received]) -> None:
        plans = [writer.planner.plan(r, None) for r in received]
        self.conn = writer.engine.connect()
        self.transaction = self.conn.begin()
        self.outcomes = writer.writer.write_group(self.conn, plans)

    def commit(self) -> list[Outcome]:
        self.transaction.commit()
        self.conn.close()
        return self.outcomes

    def close(self) -> None:
        """Roll back what is not committed (a failed test), so that nothing waits on it."""
        self.conn.close()


class Behind(threading.Thread):
    """A group written by another receiver meanwhile, which must wait for the open one."""

    def __init__(self, writer: Journal, received: list[Received]) -> None:
        super().__init__()
        self.writer, self.received = writer, received
        self.outcomes: list[Outcome] = []
        self.start()

    def run(self) -> None:
        self.outcomes = write(self.writer, self.received)

    def waits(self) -> bool:
        self.join(0.5)
        return self.is_alive()

    def finish(self) -> list[Outcome]:
        self.join(30)
        assert not self.is_alive()
        return self.outcomes


@pytest.mark.backend
@pytest.mark.parametrize("before", ["no row", "a row"])
def test_a_delete_waits_for_an_older_change_of_its_key_in_flight(database_url, tmp_path, before):
    """The later delete, written second, still deletes what the older change made."""
    first, second = journal(database_url, tmp_path), journal(database_url, tmp_path)
    try:
        write(first, [Received(body("create", id="0"), "a", T0)])  # the table, made
        if before == "a row":
            write(first, [Received(body("create", id="1", status="NEW"), "a", T0)])
        change = Open(first, [Received(body("update", id="1", status="OPEN"), "a", T0 + SECOND)])
        try:
            delete = Behind(second, [Received(body("delete", id="1"), "b", T0 + 2 * SECOND)])
            assert delete.waits()
            assert [o.status for o in change.commit()] == ["applied"]
        finally:
            change.close()
        (deleted,) = delete.finish()
        assert (deleted.status, deleted.reason) == ("applied", "")
        assert row(database_url, "1") is None
        assert tombstone(database_url, "1") == (T0 + 2 * SECOND, deleted.event_id)
    finally:
        first.close()
        second.close()


@pytest.mark.backend
@pytest.mark.parametrize("before", ["no row", "a row"])
def test_an_older_change_waits_for_a_delete_of_its_key_in_flight(database_url, tmp_path, before):
    """The older change, written second, finds the later delete and makes nothing."""
    first, second = journal(database_url, tmp_path), journal(database_url, tmp_path)
    try:
        write(first, [Received(body("create", id="0"), "a", T0)])  # the table, made
        if before == "a row":
            write(first, [Received(body("create", id="1", status="NEW"), "a", T0)])
        delete = Open(first, [Received(body("delete", id="1"), "a", T0 + 2 * SECOND)])
        try:
            older = Received(body("create", id="1", status="OPEN"), "b", T0 + SECOND)
            change = Behind(second, [older])
            assert change.waits()
            (deleted,) = delete.commit()
        finally:
            delete.close()
        (superseded,) = change.finish()
        assert (superseded.status, superseded.reason) == (
            "superseded",
            deleted_later(T0 + 2 * SECOND, deleted.event_id),
        )
        assert row(database_url, "1") is None
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize("last", ["delete", "update"])
def test_receivers_changing_and_deleting_one_key_at_once_end_with_the_latest(
    database_url, tmp_path, last
):
    """Four receivers write creates, updates and deletes of one key at once, shuffled."""
    writers = [journal(database_url, tmp_path) for _ in range(4)]
    moments = list(range(1, 161))
    actions = {n: ("delete", "create", "update", "update")[n % 4] for n in moments}
    actions[160] = last
    random.Random(7).shuffle(moments)
    errors: list[BaseException] = []

    def run(writer: Journal, share: list[int]) -> None:
        try:
            for n in share:
                fields = {} if actions[n] == "delete" else {"status": f"v{n}"}
                at = T0 + timedelta(milliseconds=n)
                write(writer, [Received(body(actions[n], id="7", **fields), "r", at)])
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=run, args=(writer, moments[i::4]))
        for i, writer in enumerate(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for writer in writers:
        writer.close()
    assert not errors
    stored = row(database_url, "7")
    if last == "delete":
        assert stored is None
    else:
        assert stored is not None and stored["status"] == "v160"
    # The tombstone keeps the latest delete that deleted (one older than the row then
    # was superseded, and left the tombstone alone).
    engine = open_engine(database_url)
    with engine.connect() as conn:
        query = text(
            "SELECT received_at, id FROM _aljex_events"
            " WHERE action = 'delete' AND status = 'applied' ORDER BY received_at DESC"
        )
        latest_delete = conn.execute(query).first()
        statuses = set(conn.execute(text("SELECT status FROM _aljex_events")).scalars())
    engine.dispose()
    assert statuses == {"applied", "superseded"}
    assert latest_delete is not None
    assert tombstone(database_url, "7") == (latest_delete[0], latest_delete[1])
