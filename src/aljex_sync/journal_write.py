"""Writing planned requests: the journal's event rows and their effects on the synced tables.

Each request becomes one row of ``_aljex_events``, as it came, and, when applied, an upsert
or a delete (or a tombstone) in its table, within the caller's transaction. Values bound for
the journal's fixed-width columns are cut to fit; the body keeps them whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.sql.expression import ClauseElement

from .clock import utcnow
from .journal_plan import Plan, Planner
from .messages import Outcome
from .store.prepared import Prepared
from .store.rows import Later, RowMeta, RowWriter
from .store.schema import SyncedTable, events, files

LIVE = "live"
# The widths of the journal's fixed-width columns (store/schema.py).
NAME_WIDTH = 64  # remote_addr, raw_action, table_name
TEXT_CUT = 4000  # record_key and warnings: TEXT on MySQL holds 65,535 bytes

REPLAYABLE = ("held", "rejected")
TAKEN = "replayed by another replay"

EVENT_FIELDS = (
    "status",
    "error",
    "applied_at",
    "received_at",
    "source",
    "remote_addr",
    "table_name",
    "action",
    "raw_action",
    "record_key",
    "warnings",
    "body",
)


def _event_insert(dialect: str) -> ClauseElement:
    """INSERT of an event; PostgreSQL returns the new id, the others report lastrowid."""
    stmt = insert(events)
    return stmt.returning(events.c.id) if dialect == "postgresql" else stmt


def event_values(plan: Plan, now: datetime) -> tuple[Any, ...]:
    """An event row for a plan, in EVENT_FIELDS order.

    Values for fixed-width columns are cut to fit: they came from the network, and the
    raw body keeps them whole. A ``bare`` plan, whose event the database refused even so,
    keeps only its status, reason, address and body.
    """
    received, change = plan.received, plan.change
    remote_addr = received.remote_addr[:NAME_WIDTH]
    if plan.bare:
        reason = plan.reason[:TEXT_CUT] or None
        remote_addr = "".join(c for c in remote_addr if c.isprintable()) or "-"
        nothing = (None, None, None, None, None)  # table, action, raw action, key, warnings
        return (
            plan.status,
            reason,
            None,
            received.received_at,
            LIVE,
            remote_addr,
            *nothing,
            received.body,
        )
    raw_action = change.raw_action if change else plan.action or None
    warnings = "\n".join(plan.warnings)
    return (
        plan.status,
        plan.reason[:TEXT_CUT] or None,
        now if plan.status == "applied" else None,
        received.received_at,
        LIVE,
        remote_addr,
        plan.table[:NAME_WIDTH] if plan.table else None,
        change.action if change else None,
        raw_action[:NAME_WIDTH] if raw_action else None,
        plan.key[:TEXT_CUT] or None,
        warnings[:TEXT_CUT] or None,
        received.body,
    )


class EventWriter:
    """Writes plans on a connection it is given; the caller owns the transaction."""

    def __init__(self, engine: Engine, planner: Planner) -> None:
        self.planner = planner
        self.rows = RowWriter(engine.dialect)
        self._insert_event = Prepared.compile(
            _event_insert(engine.dialect.name), engine.dialect, EVENT_FIELDS
        )
        # SQLite inserts a group's events as one executemany, with the ids it would have
        # given them itself (max + 1, ...), which the write lock of BEGIN IMMEDIATE makes
        # safe. The servers' sequences are not to be second-guessed: one insert each.
        self._grouped_events: tuple[Prepared, Prepared] | None = None
        if engine.dialect.name == "sqlite":
            self._grouped_events = (
                Prepared.compile(select(func.max(events.c.id)), engine.dialect, ()),
                Prepared.compile(insert(events), engine.dialect, ("id", *EVENT_FIELDS)),
            )

    def write(self, conn: Connection, plan: Plan) -> Outcome:
        received = plan.received
        event_id = self._write_event(conn, plan)
        if event_id is None:  # a replay found its event claimed by another: nothing written
            assert plan.replay_of is not None
            return Outcome(plan.replay_of, "taken", TAKEN, plan.table, plan.action, plan.key)
        if plan.status == "applied" and plan.change is not None:
            meta = RowMeta(received.received_at, LIVE, event_id, plan.change.action)
            if plan.replay_of is not None and plan.synced is not None:
                # A morning file loaded since confirms the row; its live changes and
                # deletes are measured in the upsert and the delete, as for any change.
                confirmed = _confirmed_at(conn, plan.synced, received.received_at)
                if (
                    confirmed is not None
                    and self.rows.synced_at(conn, plan.synced, plan.key_values) is not None
                ):
                    self._supersede(conn, plan, event_id, Later(confirmed))
                    return self.outcome(plan, event_id)
            if plan.change.action == "delete":
                self._delete(conn, plan, meta)
            elif plan.synced is not None:
                rows = [(plan.values, meta)]
                for later in self.rows.upsert(conn, plan.synced, plan.columns, rows).values():
                    self._supersede(conn, plan, event_id, later)
        return self.outcome(plan, event_id)

    def _supersede(self, conn: Connection, plan: Plan, event_id: int, later: Later) -> None:
        """Journal a change its record did not take, being older than what it holds.

        With several receivers, a change can be journaled after one received later than it
        (docs/database.md); the row keeps the later change, or the record stays deleted,
        and the journal says so.
        """
        at = f"{later.at:%Y-%m-%d %H:%M:%S}"
        plan.status = "superseded"
        if not later.deleted:
            plan.reason = f"the row already holds a later change, from {at}"
        elif later.event_id is None:
            plan.reason = f"the record was deleted by a later change, from {at}"
        else:
            plan.reason = (
                f"the record was deleted by a later change, from {at} (event {later.event_id})"
            )
        row = {"status": plan.status, "error": plan.reason, "applied_at": None}
        conn.execute(update(events).where(events.c.id == event_id).values(row))

    def _delete(self, conn: Connection, plan: Plan, meta: RowMeta) -> None:
        """Delete a record, or for a table not made yet leave only its tombstone.

        The tombstone is what keeps a morning file taken before the delete, or a change
        received before it, from bringing the record back, so it cannot wait for the table
        to exist. A delete older than the row's last change, or than a delete of the key
        already recorded, changes nothing and is superseded.
        """
        change = plan.change
        assert change is not None and meta.event_id is not None
        if plan.synced is None:
            later = self.rows.forget(conn, change.table, plan.key, meta)
            if later is not None:
                self._supersede(conn, plan, meta.event_id, later)
            return
        soft = self.planner.table_settings(change.table).delete == "soft"
        deleted, later = self.rows.delete(conn, plan.synced, plan.key_values, meta, soft=soft)
        if later is not None:
            self._supersede(conn, plan, meta.event_id, later)
        elif not deleted:
            plan.reason = "no such record; nothing to delete"

    def write_group(self, conn: Connection, plans: Sequence[Plan]) -> list[Outcome]:
        """Write a group: its events, then its effects in the order the requests came.

        A statement's round trip through Python and the driver costs more than SQLite's
        work on a small row, so the events go in as one executemany (on SQLite), and each
        run of upserts into one table with one set of columns as another; a later record
        for a key still lands after an earlier one. Replays go one by one, since each
        checks the age of its row first.
        """
        if any(plan.replay_of is not None for plan in plans):
            return [self.write(conn, plan) for plan in plans]
        event_ids = self._insert_events(conn, plans)
        run: list[tuple[Sequence[str], RowMeta]] = []
        run_plans: list[Plan] = []
        run_of: tuple[SyncedTable, tuple[str, ...]] | None = None

        def upsert_run() -> None:
            assert run_of is not None
            not_taken = self.rows.upsert(conn, run_of[0], run_of[1], run)
            for i, later in not_taken.items():
                meta = run[i][1]
                assert meta.event_id is not None
                self._supersede(conn, run_plans[i], meta.event_id, later)

        for plan, event_id in zip(plans, event_ids, strict=True):
            synced, change = plan.synced, plan.change
            if plan.status != "applied" or change is None:
                continue
            meta = RowMeta(plan.received.received_at, LIVE, event_id, change.action)
            if change.action != "delete":
                assert synced is not None
                if run_of is None or run_of[0] is not synced or run_of[1] is not plan.columns:
                    if run_of is not None:
                        upsert_run()
                    run, run_plans, run_of = [], [], (synced, plan.columns)
                run.append((plan.values, meta))
                run_plans.append(plan)
                continue
            if run_of is not None:
                upsert_run()
                run, run_plans, run_of = [], [], None
            self._delete(conn, plan, meta)
        if run_of is not None:
            upsert_run()
        return [
            self.outcome(plan, event_id) for plan, event_id in zip(plans, event_ids, strict=True)
        ]

    def _insert_events(self, conn: Connection, plans: Sequence[Plan]) -> list[int]:
        """Insert the events of a group, in order; return their ids."""
        now = utcnow()
        rows = [event_values(plan, now) for plan in plans]
        if self._grouped_events is None or len(rows) == 1:
            return [self._insert_event.insert_values(conn, row) for row in rows]
        last_id, insert_with_ids = self._grouped_events
        first = int(last_id.scalar(conn) or 0) + 1
        ids = list(range(first, first + len(rows)))
        insert_with_ids.execute_values(conn, [(i, *row) for i, row in zip(ids, rows, strict=True)])
        return ids

    def _write_event(self, conn: Connection, plan: Plan) -> int | None:
        """Insert a request's event, or update a replayed one's; its id.

        A replayed event is claimed by this update, the first statement of its transaction:
        only while it is still held (or rejected). Two replays at once (two hosts, or a
        hand run and the admin page's button) read the same held events; the second to
        write one finds it applied, or waits for the first's row lock and then does, and
        gets None: it writes nothing, and no event is applied twice (a second history
        version, a second notice).
        """
        now = utcnow()
        if plan.replay_of is not None:
            row = {
                "status": plan.status,
                "error": plan.reason or None,
                "applied_at": now if plan.status == "applied" else None,
            }
            claim = update(events).where(
                events.c.id == plan.replay_of, events.c.status.in_(REPLAYABLE)
            )
            claimed = conn.execute(claim.values(row)).rowcount
            return plan.replay_of if claimed else None
        return self._insert_event.insert_values(conn, event_values(plan, now))

    @staticmethod
    def outcome(plan: Plan, event_id: int) -> Outcome:
        return Outcome(
            event_id, plan.status, plan.reason, plan.table, plan.action, plan.key, plan.rejection
        )

    # -- replay -------------------------------------------------------------------------


def _confirmed_at(conn: Connection, synced: SyncedTable, received_at: datetime) -> datetime | None:
    """The export time of the latest morning file loaded into the table, if it is later
    than a change received at ``received_at``; else None.

    A morning file leaves the rows it does not change alone (their ``_aljex_synced_at``
    stays), yet it confirms them as of its export time: a held change replayed later that is
    older than that time must be superseded, as it would be had the row been rewritten.
    (Whether the change is older than the row's last live change, or than a delete of its
    record, the upsert and the delete decide, as for any change.)
    """
    loaded = conn.execute(
        select(func.max(files.c.snapshot_at)).where(
            files.c.table_name == synced.name, files.c.status == "loaded"
        )
    ).scalar()
    return loaded if loaded is not None and loaded > received_at else None
