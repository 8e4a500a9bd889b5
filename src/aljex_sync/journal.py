"""The journal: every authenticated request, kept as it came, with what became of it.

Each request is written to ``_aljex_events`` in the same transaction as its effect on the
synced table, and the caller is answered only after that transaction commits. Requests
are written in groups, one transaction each (group commit): the Live Sync writer
(``journal_process``) hands over whatever requests are waiting, so a lone request is
committed at once and under load one fsync serves many. The journal parses each body
itself, so the HTTP edge only checks who sends and how much. It keeps its connection
between groups and sends its statements straight to the driver (``store/prepared.py``);
on SQLite another thread checkpoints the WAL, so no commit has to.

Statuses:

- ``applied``: the record is in its table (or a delete took it out);
- ``held``: the record was well-formed but could not be applied (no key, or the database
  refused it); ``aljex-sync replay`` re-applies it once the cause is fixed;
- ``rejected``: the request was malformed (a 4xx reply); kept for the record;
- ``superseded``: a replayed record older than what the table already holds.

One record's failure stays its own: a group the database refuses is written again one
record per transaction, and a record the database refuses for its own sake (a value too
long, too many columns) is held with the reason, its raw body kept. Values bound for the
journal's fixed-width columns are cut first (the body keeps them whole). Only a database
that cannot be reached gives 503, and never for a record whose commit is known: a commit
whose reply is lost is looked up before anything is answered.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.expression import ClauseElement

from .config import Settings, TableSettings
from .errors import DatabaseUnavailable, RecordNotApplicable, TableNotAccepted, WireError
from .store.database import WalCheckpointer, reading, translate
from .store.prepared import Prepared
from .store.rows import RowMeta, RowWriter, record_key
from .store.schema import Schema, SyncedTable, events, utcnow
from .store.views import TypedViews
from .wire import Change, parse_body

Status = Literal["applied", "held", "rejected", "superseded"]
LIVE = "live"
MAX_BATCH = 512
MAX_SHAPES = 4096
IDLE_RECHECK = 1.0  # seconds without a write before the writer's connection is re-checked
# The widths of the journal's and the synced tables' fixed-width columns (store/schema.py).
NAME_WIDTH = 64  # remote_addr, raw_action, table_name
TEXT_CUT = 4000  # record_key and warnings: TEXT on MySQL holds 65,535 bytes
KEY_WIDTH = 255  # a key column of a synced table
TOMBSTONE_KEY_WIDTH = 700

log = logging.getLogger("aljex_sync.journal")


@dataclass(frozen=True)
class Received:
    """One authenticated request as the HTTP edge read it.

    The journal parses ``body``; ``rejection`` is set when the edge already refused the
    request (too large, wrong content type), and the request is then only recorded.
    ``resent`` marks a request whose writer died before answering: if its event is in the
    journal, it was committed, and that outcome is the answer.
    """

    body: bytes
    remote_addr: str
    received_at: datetime
    rejection: WireError | None = None
    # Sent again after the writer died with it in hand: it may have been committed.
    resent: bool = False


@dataclass(frozen=True)
class Outcome:
    """What the journal did with a request; the edge turns it into a reply."""

    event_id: int
    status: Status
    reason: str = ""
    table: str | None = None
    action: str | None = None
    key: str = ""
    rejection: WireError | None = None  # why a ``rejected`` request was refused


@dataclass(slots=True)
class _Plan:
    received: Received
    change: Change | None
    rejection: WireError | None
    status: Status
    reason: str = ""
    key: str = ""
    synced: SyncedTable | None = None
    key_values: dict[str, str] = field(default_factory=dict)
    columns: tuple[str, ...] = ()  # the record's columns, and its values in their order
    values: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    replay_of: int | None = None
    bare: bool = False  # journal the request with its body and reason only

    @property
    def table(self) -> str | None:
        if self.change is not None:
            return self.change.table
        return self.rejection.table if self.rejection else None

    @property
    def action(self) -> str | None:
        if self.change is not None:
            return self.change.action
        return self.rejection.action if self.rejection else None


# A request to write, and the event it replays (None for a new request).
_Item = tuple[Received, int | None]

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


def _event_values(plan: _Plan, now: datetime) -> tuple[Any, ...]:
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


class Journal:
    """Writes requests and their effects, one transaction per group of waiting requests."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.schema = Schema(engine)
        self.schema.on_columns_added = TypedViews(engine, settings.field_types).columns_added
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
        # The writer's connection; the lock serializes groups from more than one thread.
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._last_used = 0.0
        self._checkpointer: WalCheckpointer | None = None
        # The columns of each (table, field names) the writer has seen: Aljex sends the
        # same fields for every record of a table, and a field's column never changes once
        # made, so a known shape needs neither ensure() nor a lookup per field.
        self._columns: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        self._settings_of: dict[str, TableSettings] = {}

    # -- life cycle ---------------------------------------------------------------------

    def install(self) -> None:
        """Create the system tables and load the schema; DatabaseUnavailable if it cannot."""
        try:
            self.schema.install()
        except SQLAlchemyError as e:
            raise DatabaseUnavailable(f"cannot open the database: {translate(e)}") from e

    def start(self) -> None:
        """Install, and on SQLite start checkpointing the WAL in the background."""
        self.install()
        if self.engine.dialect.name == "sqlite":
            self._checkpointer = WalCheckpointer(self.engine)
            self._checkpointer.start()

    def close(self) -> None:
        """Stop the checkpointer and close the database."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        with self._lock:
            self._release()
        self.engine.dispose()

    # -- writing ------------------------------------------------------------------------

    def write_group(self, received: Sequence[Received]) -> list[Outcome | BaseException]:
        """Write requests as one group, in one transaction; each gets its outcome or error.

        The outcomes come after the commit. If one record makes the group fail, each is
        written alone so only that one is held. If the database is unavailable, the
        requests not yet committed get DatabaseUnavailable and are not acknowledged.
        """
        results = self._process([(r, None) for r in received])
        if self._checkpointer is not None:
            self._checkpointer.committed()
        return results

    def _process(self, batch: Sequence[_Item]) -> list[Outcome | BaseException]:
        with self._lock:
            plans: list[_Plan] = []
            results: list[Outcome | BaseException | None] = []
            for received, replay_of in batch:
                try:
                    found = self._journaled(received) if received.resent else None
                    if found is not None:
                        results.append(found)
                        continue
                    plans.append(self._plan(received, replay_of))
                    results.append(None)
                except Exception as e:
                    error = self._failed(e, 1)
                    if isinstance(error, DatabaseUnavailable):  # nothing is written yet
                        return [error] * len(batch)
                    results.append(error)  # a bug, about this request alone
            written: list[Outcome | BaseException] | None = None
            try:
                written = list(self._commit_group(plans)) if plans else []
            except Exception as e:
                error = _classify(e)
                if isinstance(error, DatabaseUnavailable):  # nothing of the group committed
                    return [self._failed(error, len(batch))] * len(batch)
                if len(plans) > 1:
                    log.warning("a group of %d failed (%s); writing each alone", len(plans), error)
            if written is None:
                written = self._one_by_one(plans)
            outcomes = iter(written)
            return [next(outcomes) if r is None else r for r in results]

    def _journaled(self, received: Received) -> Outcome | None:
        """The outcome of a request already in the journal, or None if it is not there.

        A request is known by when it was received, from where, and its body.
        """
        c = events.c
        query = select(
            c.id, c.status, c.error, c.table_name, c.action, c.raw_action, c.record_key, c.body
        ).where(
            c.received_at == received.received_at,
            c.remote_addr == received.remote_addr[:NAME_WIDTH],
            c.source == LIVE,
        )
        with reading(self.engine) as conn:
            row = next((r for r in conn.execute(query) if bytes(r.body) == received.body), None)
        if row is None:
            return None
        log.warning("a request the last writer had in hand was committed as event %d", row.id)
        rejection = None
        if row.status == "rejected":
            rejection = self._plan(received, None).rejection
        action = row.action or (rejection.action if rejection else None)
        return Outcome(
            int(row.id),
            row.status,
            row.error or "",
            row.table_name,
            action,
            row.record_key or "",
            rejection,
        )

    def _failed(self, error: BaseException, count: int) -> Exception:
        """Log why ``count`` requests are not acknowledged; the error each of them gets."""
        self._release()
        error = _classify(error)
        if isinstance(error, DatabaseUnavailable):
            log.error("database unavailable, %d request(s) not acknowledged: %s", count, error)
        else:  # a bug: fail the requests, keep the writer alive
            log.error("journal writer failed", exc_info=error)
        return error

    def _one_by_one(self, plans: Sequence[_Plan]) -> list[Outcome | BaseException]:
        """Write each plan in its own transaction: a failure is that record's alone.

        If the database becomes unavailable, the records already committed keep their
        outcomes and only the rest get DatabaseUnavailable.
        """
        results: list[Outcome | BaseException] = []
        for i, plan in enumerate(plans):
            try:
                results.append(self._write_alone(plan))
            except Exception as e:
                error = self._failed(e, len(plans) - i)
                if isinstance(error, DatabaseUnavailable):
                    results += [error] * (len(plans) - i)
                    break
                results.append(error)
        return results

    def _commit_group(self, plans: Sequence[_Plan]) -> list[Outcome]:
        """Write a group in one transaction and commit it.

        The kept connection can turn out lost (a server restart, an idle timeout) at the
        first statement. Nothing was committed then, so the group is written once more on
        a new connection rather than answered 503. A connection lost at COMMIT is not
        retried: the commit may have happened, and ``_commit`` finds out which.
        """
        for attempt in (1, 2):
            conn = self._connection()
            transaction = conn.begin()
            try:
                outcomes = self._write_group(conn, plans)
            except SQLAlchemyError:
                lost = conn.invalidated
                with contextlib.suppress(SQLAlchemyError):
                    transaction.rollback()
                if lost and attempt == 1:
                    log.warning("the database connection was lost; writing the group again")
                    self._release()
                    continue
                raise
            self._commit(transaction, plans, outcomes)
            return outcomes
        raise AssertionError("unreachable")

    def _commit(
        self, transaction: Any, plans: Sequence[_Plan], outcomes: Sequence[Outcome]
    ) -> None:
        """Commit; if the reply to COMMIT is lost, look the events up before giving up.

        A connection that drops during COMMIT leaves it unknown whether the commit
        happened. Answering 503 for a committed record would make Aljex send it again and
        journal it twice; answering 200 for one that was not would lose it. So the events
        are looked up on a new connection: all there means committed.
        """
        try:
            transaction.commit()
        except SQLAlchemyError as e:
            if not isinstance(translate(e), DatabaseUnavailable):
                raise
            self._release()
            if self._events_committed(plans, outcomes):
                log.warning("the reply to COMMIT was lost, but the group had committed")
                return
            raise

    def _events_committed(self, plans: Sequence[_Plan], outcomes: Sequence[Outcome]) -> bool:
        """True when every event of a group is in the journal as it was written."""
        if any(plan.replay_of is not None for plan in plans):
            return False  # a replay updates its event: nothing new to look for
        wanted = {
            o.event_id: (p.received.received_at, p.received.remote_addr[:NAME_WIDTH])
            for p, o in zip(plans, outcomes, strict=True)
        }
        query = select(events.c.id, events.c.received_at, events.c.remote_addr).where(
            events.c.id.in_(list(wanted))
        )
        try:
            with reading(self.engine) as conn:
                found = {r.id: (r.received_at, r.remote_addr) for r in conn.execute(query)}
        except SQLAlchemyError as e:
            log.error("cannot tell whether the group committed: %s", translate(e))
            return False
        return found == wanted

    def _connection(self) -> Connection:
        """The writer's connection, kept from one group to the next.

        A pool checkout and return per group costs more than the statements of a small
        group. After an idle spell the connection goes back to the pool and is checked out
        again, so the pool's pre-ping still finds one the server closed meanwhile; after a
        failure it is dropped.
        """
        now = time.monotonic()
        if self._conn is not None and (
            self._conn.invalidated or now - self._last_used > IDLE_RECHECK
        ):
            self._release()
        if self._conn is None:
            self._conn = self.engine.connect()
        self._last_used = now
        return self._conn

    def _release(self) -> None:
        """Give the writer's connection back to the pool (a lost one is discarded there)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except SQLAlchemyError as e:
                log.warning("could not return the writer's connection: %s", translate(e))

    def _plan(self, received: Received, replay_of: int | None) -> _Plan:
        """Parse a request and decide what to do with it; creates tables and columns it needs."""
        rejection = received.rejection
        if rejection is None:
            live = self.settings.live
            try:
                change = parse_body(
                    received.body, legacy_charset=live.legacy_charset, max_fields=live.max_fields
                )
            except WireError as e:
                rejection = e
        if rejection is None:
            existing = self.schema.tables.get(change.table)
            if existing is None:
                existing, rejection = self._new_table(change)
        if rejection is not None:
            return _Plan(
                received, None, rejection, "rejected", rejection.reason, replay_of=replay_of
            )
        settings = self._table_settings(change.table)
        plan = _Plan(
            received, change, None, "applied", warnings=change.warnings, replay_of=replay_of
        )
        key_fields = settings.key
        if existing is not None and [k.lower() for k in existing.key_fields] != [
            k.lower() for k in key_fields
        ]:
            return self._held(
                plan,
                f"table {change.table} was created with key ({', '.join(existing.key_fields)}) "
                f"but the configuration says ({', '.join(key_fields)})",
            )
        fields = change.fields
        key_values: list[str] = []
        for key_field in key_fields:
            sent = (
                key_field
                if key_field in fields
                else SyncedTable.key_field_for_names(fields, key_field)
            )
            if sent is None:
                return self._held(plan, f"key field {key_field!r} is missing")
            value = fields[sent]
            if value == "":
                return self._held(plan, f"key field {key_field!r} is empty")
            if len(value) > KEY_WIDTH:
                return self._held(plan, f"key field {key_field!r} is over {KEY_WIDTH} characters")
            if sent != key_field:  # sent in another case: keep it under the configured name
                fields = {n: v for n, v in fields.items() if n != sent}
                fields[key_field] = value
            key_values.append(value)
        plan.key = record_key(key_values)
        if change.action == "delete":
            if len(plan.key) > TOMBSTONE_KEY_WIDTH:
                return self._held(plan, f"the key is over {TOMBSTONE_KEY_WIDTH} characters")
            if existing is None:  # no row to delete, but a tombstone all the same
                plan.reason = "no such table yet; nothing to delete"
                return plan
            plan.synced = existing
            plan.key_values = {existing.columns[k]: fields[k] for k in key_fields}
            return plan
        names = tuple(fields)
        columns = self._columns.get((change.table, names)) if existing is not None else None
        if columns is None:
            too_wide = self.schema.too_wide(change.table, key_fields, names)
            if too_wide:
                return self._held(plan, too_wide)
            try:
                existing = self.schema.ensure(change.table, key_fields, fields)
            except SQLAlchemyError as e:
                error = translate(e, change.table)
                if isinstance(error, DatabaseUnavailable):
                    raise error from e
                return self._held(plan, str(error))
            columns = tuple(existing.columns[f] for f in names)
            if len(self._columns) >= MAX_SHAPES:
                self._columns.clear()
            self._columns[change.table, names] = columns
        assert existing is not None
        plan.synced = existing
        plan.key_values = {existing.columns[k]: fields[k] for k in key_fields}
        plan.columns = columns
        plan.values = tuple(fields.values())
        return plan

    def _new_table(self, change: Change) -> tuple[SyncedTable | None, WireError | None]:
        """A table this writer has not seen: made meanwhile elsewhere, or may it be made?

        ``[live] accept_tables`` and ``max_tables`` are checked here, so that Live Sync
        cannot fill the database with tables. The refusal is a 403; the request is
        journaled as rejected and can be replayed once the configuration allows it.
        """
        live = self.settings.live
        if live.accept_tables and change.table not in live.accept_tables:
            return None, TableNotAccepted(
                f"table {change.table} is not in [live] accept_tables",
                table=change.table,
                action=change.action,
            )
        if change.action == "delete" or len(self.schema.tables) >= live.max_tables:
            # Made by a morning load or another process since this copy was read?
            self.schema.reload()
            existing = self.schema.tables.get(change.table)
            if existing is not None:
                return existing, None
        if change.action != "delete" and len(self.schema.tables) >= live.max_tables:
            return None, TableNotAccepted(
                f"table {change.table} would be a new table beyond "
                f"[live] max_tables = {live.max_tables}",
                table=change.table,
                action=change.action,
            )
        return None, None

    def _table_settings(self, table: str) -> TableSettings:
        """``settings.table(table)``, made once per table: it builds a new object each call."""
        found = self._settings_of.get(table)
        if found is None:
            found = self._settings_of[table] = self.settings.table(table)
        return found

    @staticmethod
    def _held(plan: _Plan, reason: str) -> _Plan:
        plan.status = "held"
        plan.reason = reason
        return plan

    def _write(self, conn: Connection, plan: _Plan) -> Outcome:
        received = plan.received
        event_id = self._write_event(conn, plan)
        if plan.status == "applied" and plan.change is not None:
            meta = RowMeta(received.received_at, LIVE, event_id)
            if plan.replay_of is not None and plan.synced is not None:
                newer = self.rows.synced_at(conn, plan.synced, plan.key_values)
                if newer is not None and newer > received.received_at:
                    plan.status = "superseded"
                    plan.reason = f"the row already holds a change from {newer:%Y-%m-%d %H:%M:%S}"
                    self._write_event(conn, plan)
                    return self._outcome(plan, event_id)
            if plan.change.action == "delete":
                self._delete(conn, plan, meta)
            elif plan.synced is not None:
                self.rows.upsert(conn, plan.synced, plan.columns, [(plan.values, meta)])
        return self._outcome(plan, event_id)

    def _delete(self, conn: Connection, plan: _Plan, meta: RowMeta) -> None:
        """Delete a record, or for a table not made yet leave only its tombstone.

        The tombstone is what keeps a morning file taken before the delete from bringing
        the record back, so it cannot wait for the table to exist.
        """
        change = plan.change
        assert change is not None
        if plan.synced is None:
            self.rows.tombstone(conn, change.table, plan.key, meta)
            return
        soft = self._table_settings(change.table).delete == "soft"
        if not self.rows.delete(conn, plan.synced, plan.key_values, meta, soft=soft):
            plan.reason = "no such record; nothing to delete"

    def _write_group(self, conn: Connection, plans: Sequence[_Plan]) -> list[Outcome]:
        """Write a group: its events, then its effects in the order the requests came.

        A statement's round trip through Python and the driver costs more than SQLite's
        work on a small row, so the events go in as one executemany (on SQLite), and each
        run of upserts into one table with one set of columns as another; a later record
        for a key still lands after an earlier one. Replays go one by one, since each
        checks the age of its row first.
        """
        if any(plan.replay_of is not None for plan in plans):
            return [self._write(conn, plan) for plan in plans]
        event_ids = self._insert_events(conn, plans)
        run: list[tuple[Sequence[str], RowMeta]] = []
        run_of: tuple[SyncedTable, tuple[str, ...]] | None = None
        for plan, event_id in zip(plans, event_ids, strict=True):
            synced, change = plan.synced, plan.change
            if plan.status != "applied" or change is None:
                continue
            meta = RowMeta(plan.received.received_at, LIVE, event_id)
            if change.action != "delete":
                assert synced is not None
                if run_of is None or run_of[0] is not synced or run_of[1] is not plan.columns:
                    if run_of is not None:
                        self.rows.upsert(conn, run_of[0], run_of[1], run)
                    run, run_of = [], (synced, plan.columns)
                run.append((plan.values, meta))
                continue
            if run_of is not None:
                self.rows.upsert(conn, run_of[0], run_of[1], run)
                run, run_of = [], None
            self._delete(conn, plan, meta)
        if run_of is not None:
            self.rows.upsert(conn, run_of[0], run_of[1], run)
        return [
            self._outcome(plan, event_id) for plan, event_id in zip(plans, event_ids, strict=True)
        ]

    def _insert_events(self, conn: Connection, plans: Sequence[_Plan]) -> list[int]:
        """Insert the events of a group, in order; return their ids."""
        now = utcnow()
        rows = [_event_values(plan, now) for plan in plans]
        if self._grouped_events is None or len(rows) == 1:
            return [self._insert_event.insert_values(conn, row) for row in rows]
        last_id, insert_with_ids = self._grouped_events
        first = int(last_id.scalar(conn) or 0) + 1
        ids = list(range(first, first + len(rows)))
        insert_with_ids.execute_values(conn, [(i, *row) for i, row in zip(ids, rows, strict=True)])
        return ids

    def _write_alone(self, plan: _Plan) -> Outcome:
        """Write one request in its own transaction; hold it if the database refuses it.

        If the database refuses the record, it is journaled as held with the reason; if
        it refuses even that event, the event is written bare (status, reason, body).
        Raises DatabaseUnavailable, or the error of a bug, for the caller to report.
        """
        for attempt in ("as planned", "held", "bare"):
            conn = self._connection()
            transaction = conn.begin()
            try:
                outcome = self._write(conn, plan)
            except SQLAlchemyError as e:
                with contextlib.suppress(SQLAlchemyError):
                    transaction.rollback()
                error = translate(e, plan.table or "")
                if isinstance(error, DatabaseUnavailable):
                    raise error from e
                reason = error.reason if isinstance(error, RecordNotApplicable) else str(error)
                log.warning("%s: %s", plan.table or "-", reason)
                if attempt == "held" or plan.status != "applied":
                    plan.bare = True
                self._held_after(plan, reason)
                continue
            self._commit(transaction, [plan], [outcome])
            return outcome
        raise RecordNotApplicable(
            plan.table or "", f"not even its journal entry fits: {plan.reason}"
        )

    def _held_after(self, plan: _Plan, reason: str) -> None:
        """Mark a plan held for what the database said, keeping a rejection a rejection."""
        if plan.status != "rejected":
            plan.status = "held"
        plan.reason = reason[:TEXT_CUT]

    def _write_event(self, conn: Connection, plan: _Plan) -> int:
        now = utcnow()
        if plan.replay_of is not None:
            row = {
                "status": plan.status,
                "error": plan.reason or None,
                "applied_at": now if plan.status == "applied" else None,
            }
            conn.execute(update(events).where(events.c.id == plan.replay_of).values(row))
            return plan.replay_of
        return self._insert_event.insert_values(conn, _event_values(plan, now))

    @staticmethod
    def _outcome(plan: _Plan, event_id: int) -> Outcome:
        return Outcome(
            event_id, plan.status, plan.reason, plan.table, plan.action, plan.key, plan.rejection
        )

    # -- replay -------------------------------------------------------------------------

    def replay(
        self,
        *,
        table: str | None = None,
        event_ids: Sequence[int] = (),
        include_rejected: bool = False,
    ) -> Iterator[Outcome]:
        """Re-apply held events in the order they came, with today's configuration.

        Each event is re-read from its raw body and written in its own transaction, in
        this thread; the service may keep running meanwhile.
        """
        self.install()
        statuses = ["held", "rejected"] if include_rejected else ["held"]
        query = select(
            events.c.id, events.c.body, events.c.remote_addr, events.c.received_at
        ).order_by(events.c.id)
        if event_ids:
            query = query.where(events.c.id.in_(list(event_ids)))
        else:
            query = query.where(events.c.status.in_(statuses))
        if table:
            query = query.where(events.c.table_name == table.lower())
        with reading(self.engine) as conn:
            rows = conn.execute(query).all()
        for row in rows:
            received = Received(row.body, row.remote_addr, row.received_at)
            (result,) = self._process([(received, int(row.id))])
            if isinstance(result, BaseException):
                raise result
            yield result


def _classify(error: BaseException) -> Exception:
    """A failure as DatabaseUnavailable (transient), or the record's or a bug's own error."""
    if isinstance(error, DatabaseUnavailable):
        return error
    if isinstance(error, SQLAlchemyError | OSError):
        translated = translate(error)
        return translated
    return error if isinstance(error, Exception) else RuntimeError(str(error))


@dataclass(frozen=True)
class Summary:
    """What ``aljex-sync status`` shows: counts per status and table, and recent holds."""

    by_status: dict[str, int]
    by_table: list[tuple[str, str, int, datetime]]  # table, status, count, last received
    held_reasons: list[tuple[str, str, int]]  # table, reason, count
    last_received: datetime | None


def summarize(engine: Engine) -> Summary:
    """Read the journal's counts; needs nothing but the database."""
    with reading(engine) as conn:
        by_status = {
            str(s): int(n)
            for s, n in conn.execute(
                select(events.c.status, func.count()).group_by(events.c.status)
            )
        }
        by_table = [
            (str(t or "-"), str(s), int(n), last)
            for t, s, n, last in conn.execute(
                select(
                    events.c.table_name,
                    events.c.status,
                    func.count(),
                    func.max(events.c.received_at),
                )
                .group_by(events.c.table_name, events.c.status)
                .order_by(events.c.table_name, events.c.status)
            )
        ]
        held = [
            (str(t or "-"), str(e or ""), int(n))
            for t, e, n in conn.execute(
                select(events.c.table_name, events.c.error, func.count())
                .where(events.c.status == "held")
                .group_by(events.c.table_name, events.c.error)
                .order_by(func.count().desc())
                .limit(10)
            )
        ]
        last = conn.execute(select(func.max(events.c.received_at))).scalar()
    return Summary(by_status, by_table, held, last)
