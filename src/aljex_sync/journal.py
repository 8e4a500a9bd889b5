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
from .errors import DatabaseUnavailable, WireError
from .store.database import WalCheckpointer, reading, translate
from .store.prepared import Prepared
from .store.rows import RowMeta, RowWriter, record_key
from .store.schema import Schema, SyncedTable, events, utcnow
from .wire import Change, parse_body

Status = Literal["applied", "held", "rejected", "superseded"]
LIVE = "live"
MAX_BATCH = 512
MAX_SHAPES = 4096
IDLE_RECHECK = 1.0  # seconds without a write before the writer's connection is re-checked

log = logging.getLogger("aljex_sync.journal")


@dataclass(frozen=True)
class Received:
    """One authenticated request as the HTTP edge read it.

    The journal parses ``body``; ``rejection`` is set when the edge already refused the
    request (too large, wrong content type), and the request is then only recorded.
    """

    body: bytes
    remote_addr: str
    received_at: datetime
    rejection: WireError | None = None


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
    """An event row for a plan, in EVENT_FIELDS order."""
    received, change = plan.received, plan.change
    return (
        plan.status,
        plan.reason or None,
        now if plan.status == "applied" else None,
        received.received_at,
        LIVE,
        received.remote_addr,
        plan.table,
        change.action if change else None,
        change.raw_action if change else plan.action or None,
        plan.key or None,
        "\n".join(plan.warnings) or None,
        received.body,
    )


class Journal:
    """Writes requests and their effects, one transaction per group of waiting requests."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.schema = Schema(engine)
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
        retried alone so only that one is held. If the database is unavailable, each gets
        DatabaseUnavailable and nothing is acknowledged.
        """
        results = self._process([(r, None) for r in received])
        if self._checkpointer is not None:
            self._checkpointer.committed()
        return results

    def _process(self, batch: Sequence[_Item]) -> list[Outcome | BaseException]:
        with self._lock:
            try:
                plans = [self._plan(received, replay_of) for received, replay_of in batch]
                try:
                    outcomes = self._commit_group(plans)
                except SQLAlchemyError as e:
                    if isinstance(translate(e), DatabaseUnavailable):
                        raise
                    conn = self._connection()
                    outcomes = [self._write_alone(conn, plan) for plan in plans]
            except (SQLAlchemyError, DatabaseUnavailable, OSError) as e:
                self._release()
                error = translate(e) if not isinstance(e, DatabaseUnavailable) else e
                if not isinstance(error, DatabaseUnavailable):
                    error = DatabaseUnavailable(str(error))
                log.error(
                    "database unavailable, %d request(s) not acknowledged: %s", len(batch), error
                )
                return [error] * len(batch)
            except Exception as e:  # a bug: fail the requests, keep the writer alive
                self._release()
                log.exception("journal writer failed")
                return [e] * len(batch)
        return list(outcomes)

    def _commit_group(self, plans: Sequence[_Plan]) -> list[Outcome]:
        """Write a group in one transaction and commit it.

        The kept connection can turn out lost (a server restart, an idle timeout) at the
        first statement. Nothing was committed then, so the group is written once more on
        a new connection rather than answered 503. A connection lost at COMMIT is not
        retried: the commit may have happened.
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
            transaction.commit()
            return outcomes
        raise AssertionError("unreachable")

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
        if rejection is not None:
            return _Plan(
                received, None, rejection, "rejected", rejection.reason, replay_of=replay_of
            )
        settings = self._table_settings(change.table)
        plan = _Plan(
            received, change, None, "applied", warnings=change.warnings, replay_of=replay_of
        )
        existing = self.schema.tables.get(change.table)
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
            if sent != key_field:  # sent in another case: keep it under the configured name
                fields = {n: v for n, v in fields.items() if n != sent}
                fields[key_field] = value
            key_values.append(value)
        plan.key = record_key(key_values)
        if change.action == "delete":
            if existing is None:
                plan.reason = "no such table yet; nothing to delete"
                return plan
            plan.synced = existing
            plan.key_values = {existing.columns[k]: fields[k] for k in key_fields}
            return plan
        names = tuple(fields)
        columns = self._columns.get((change.table, names)) if existing is not None else None
        if columns is None:
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
        if plan.status == "applied" and plan.synced is not None:
            change = plan.change
            assert change is not None
            meta = RowMeta(received.received_at, LIVE, event_id)
            if plan.replay_of is not None:
                newer = self.rows.synced_at(conn, plan.synced, plan.key_values)
                if newer is not None and newer > received.received_at:
                    plan.status = "superseded"
                    plan.reason = f"the row already holds a change from {newer:%Y-%m-%d %H:%M:%S}"
                    self._write_event(conn, plan)
                    return self._outcome(plan, event_id)
            if change.action == "delete":
                soft = self._table_settings(change.table).delete == "soft"
                if not self.rows.delete(conn, plan.synced, plan.key_values, meta, soft=soft):
                    plan.reason = "no such record; nothing to delete"
            else:
                self.rows.upsert(conn, plan.synced, plan.columns, [(plan.values, meta)])
        return self._outcome(plan, event_id)

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
            if plan.status != "applied" or synced is None or change is None:
                continue
            meta = RowMeta(plan.received.received_at, LIVE, event_id)
            if change.action != "delete":
                if run_of is None or run_of[0] is not synced or run_of[1] is not plan.columns:
                    if run_of is not None:
                        self.rows.upsert(conn, run_of[0], run_of[1], run)
                    run, run_of = [], (synced, plan.columns)
                run.append((plan.values, meta))
                continue
            if run_of is not None:
                self.rows.upsert(conn, run_of[0], run_of[1], run)
                run, run_of = [], None
            soft = self._table_settings(change.table).delete == "soft"
            if not self.rows.delete(conn, synced, plan.key_values, meta, soft=soft):
                plan.reason = "no such record; nothing to delete"
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

    def _write_alone(self, conn: Connection, plan: _Plan) -> Outcome:
        """Write one request in its own transaction; hold it if the database refuses it."""
        try:
            with conn.begin():
                return self._write(conn, plan)
        except SQLAlchemyError as e:
            error = translate(e, plan.table or "")
            if isinstance(error, DatabaseUnavailable):
                raise error from e
            self._held(plan, str(error))
            with conn.begin():
                return self._write(conn, plan)

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
