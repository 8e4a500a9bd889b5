"""The journal: every authenticated request, kept as it came, with what became of it.

Each request is written to ``_aljex_events`` in the same transaction as its effect on the
synced table, and the caller is answered only after that transaction commits. One writer
thread does all the writing and commits whatever requests are waiting together (group
commit): a lone request is committed at once, and under load one fsync serves many.

Statuses:

- ``applied``: the record is in its table (or a delete took it out);
- ``held``: the record was well-formed but could not be applied (no key, or the database
  refused it); ``aljex-sync replay`` re-applies it once the cause is fixed;
- ``rejected``: the request was malformed (a 4xx reply); kept for the record;
- ``superseded``: a replayed record older than what the table already holds.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.expression import ClauseElement

from .config import Settings
from .errors import DatabaseUnavailable, WireError
from .store.database import translate
from .store.prepared import Prepared
from .store.rows import RowMeta, RowWriter, record_key
from .store.schema import Schema, SyncedTable, events, utcnow
from .wire import Change, parse_body

Status = Literal["applied", "held", "rejected", "superseded"]
LIVE = "live"
MAX_BATCH = 512

log = logging.getLogger("aljex_sync.journal")


@dataclass(frozen=True)
class Received:
    """One authenticated request as the HTTP edge read it.

    Exactly one of ``change`` (it parsed) and ``rejection`` (it did not) is set.
    """

    body: bytes
    remote_addr: str
    received_at: datetime
    change: Change | None = None
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


@dataclass
class _Plan:
    received: Received
    status: Status
    reason: str = ""
    key: str = ""
    synced: SyncedTable | None = None
    key_values: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    replay_of: int | None = None

    @property
    def table(self) -> str | None:
        if self.received.change is not None:
            return self.received.change.table
        return self.received.rejection.table if self.received.rejection else None

    @property
    def action(self) -> str | None:
        if self.received.change is not None:
            return self.received.change.action
        return self.received.rejection.action if self.received.rejection else None


_Item = tuple[Received, int | None, "Future[Outcome]"]

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
        self.counts: Counter[str] = Counter()
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------

    def install(self) -> None:
        """Create the system tables and load the schema; DatabaseUnavailable if it cannot."""
        try:
            self.schema.install()
        except SQLAlchemyError as e:
            raise DatabaseUnavailable(f"cannot open the database: {translate(e)}") from e

    def start(self) -> None:
        """Install, then start the writer thread."""
        self.install()
        self._thread = threading.Thread(target=self._run, name="aljex-journal", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finish what is queued, stop the writer and close the database."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self.engine.dispose()

    def submit(self, received: Received) -> Future[Outcome]:
        """Queue a request for the writer; the future resolves after its commit."""
        future: Future[Outcome] = Future()
        self._queue.put((received, None, future))
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self.process(batch)
            if stop:
                return

    # -- writing ------------------------------------------------------------------------

    def process(self, batch: Sequence[_Item]) -> None:
        """Write a group of requests in one transaction and resolve their futures.

        If one record makes the group fail, each is retried alone so only that one is
        held. If the database is unavailable, every future gets DatabaseUnavailable and
        nothing is acknowledged.
        """
        try:
            with self.engine.connect() as conn:
                plans = [self._plan(received, replay_of) for received, replay_of, _ in batch]
                try:
                    with conn.begin():
                        outcomes = [self._write(conn, plan) for plan in plans]
                except SQLAlchemyError as e:
                    if isinstance(translate(e), DatabaseUnavailable):
                        raise
                    outcomes = [self._write_alone(conn, plan) for plan in plans]
        except (SQLAlchemyError, DatabaseUnavailable, OSError) as e:
            error = translate(e) if not isinstance(e, DatabaseUnavailable) else e
            if not isinstance(error, DatabaseUnavailable):
                error = DatabaseUnavailable(str(error))
            log.error("database unavailable, %d request(s) not acknowledged: %s", len(batch), error)
            for _, _, future in batch:
                future.set_exception(error)
            return
        except Exception as e:  # a bug: fail the requests, keep the writer alive
            log.exception("journal writer failed")
            for _, _, future in batch:
                future.set_exception(e)
            return
        for (_, _, future), outcome in zip(batch, outcomes, strict=True):
            self.counts[outcome.status] += 1
            future.set_result(outcome)

    def _plan(self, received: Received, replay_of: int | None) -> _Plan:
        """Decide what to do with a request; creates tables and columns it needs."""
        if received.rejection is not None:
            return _Plan(received, "rejected", received.rejection.reason, replay_of=replay_of)
        change = received.change
        assert change is not None
        settings = self.settings.table(change.table)
        plan = _Plan(received, "applied", warnings=change.warnings, replay_of=replay_of)
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
        fields = dict(change.fields)
        key_values: list[str] = []
        for key_field in key_fields:
            sent = SyncedTable.key_field_for_names(fields, key_field)
            if sent is None:
                return self._held(plan, f"key field {key_field!r} is missing")
            value = fields.pop(sent)
            if value == "":
                return self._held(plan, f"key field {key_field!r} is empty")
            fields[key_field] = value
            key_values.append(value)
        plan.key = record_key(key_values)
        if change.action == "delete" and existing is None:
            plan.reason = "no such table yet; nothing to delete"
            return plan
        try:
            synced = existing
            if change.action != "delete" or synced is None:
                synced = self.schema.ensure(change.table, key_fields, fields)
        except SQLAlchemyError as e:
            error = translate(e, change.table)
            if isinstance(error, DatabaseUnavailable):
                raise error from e
            return self._held(plan, str(error))
        assert synced is not None
        plan.synced = synced
        plan.key_values = {synced.columns[k]: fields[k] for k in key_fields}
        if change.action != "delete":
            plan.values = {synced.columns[f]: v for f, v in fields.items()}
        return plan

    @staticmethod
    def _held(plan: _Plan, reason: str) -> _Plan:
        plan.status = "held"
        plan.reason = reason
        return plan

    def _write(self, conn: Connection, plan: _Plan) -> Outcome:
        received = plan.received
        event_id = self._write_event(conn, plan)
        if plan.status == "applied" and plan.synced is not None:
            change = received.change
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
                soft = self.settings.table(change.table).delete == "soft"
                if not self.rows.delete(conn, plan.synced, plan.key_values, meta, soft=soft):
                    plan.reason = "no such record; nothing to delete"
            else:
                self.rows.upsert(conn, plan.synced, [plan.values], meta)
        return self._outcome(plan, event_id)

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
        received = plan.received
        now = utcnow()
        row = {
            "status": plan.status,
            "error": plan.reason or None,
            "applied_at": now if plan.status == "applied" else None,
        }
        if plan.replay_of is not None:
            conn.execute(update(events).where(events.c.id == plan.replay_of).values(row))
            return plan.replay_of
        change = received.change
        result = self._insert_event.execute(
            conn,
            [
                {
                    **row,
                    "received_at": received.received_at,
                    "source": LIVE,
                    "remote_addr": received.remote_addr,
                    "table_name": plan.table,
                    "action": change.action if change else None,
                    "raw_action": (change.raw_action if change else plan.action or None),
                    "record_key": plan.key or None,
                    "warnings": "\n".join(plan.warnings) or None,
                    "body": received.body,
                }
            ],
        )
        if result.returns_rows:
            return int(result.scalar_one())
        return int(result.lastrowid)

    @staticmethod
    def _outcome(plan: _Plan, event_id: int) -> Outcome:
        return Outcome(event_id, plan.status, plan.reason, plan.table, plan.action, plan.key)

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
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        for row in rows:
            received = self._reread(row.body, row.remote_addr, row.received_at)
            future: Future[Outcome] = Future()
            self.process([(received, int(row.id), future)])
            yield future.result()

    def _reread(self, body: bytes, remote_addr: str, received_at: datetime) -> Received:
        live = self.settings.live
        try:
            change = parse_body(
                body, legacy_charset=live.legacy_charset, max_fields=live.max_fields
            )
        except WireError as e:
            return Received(body, remote_addr, received_at, rejection=e)
        return Received(body, remote_addr, received_at, change=change)


@dataclass(frozen=True)
class Summary:
    """What ``aljex-sync status`` shows: counts per status and table, and recent holds."""

    by_status: dict[str, int]
    by_table: list[tuple[str, str, int, datetime]]  # table, status, count, last received
    held_reasons: list[tuple[str, str, int]]  # table, reason, count
    last_received: datetime | None


def summarize(engine: Engine) -> Summary:
    """Read the journal's counts; needs nothing but the database."""
    with engine.connect() as conn:
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
