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
- ``superseded``: a record older than what its row already holds, or than a delete of its
  record: a replayed one, or one journaled after a change to its record received later
  (several receivers); answered 200.

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
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import SQLAlchemyError

from .config import Settings
from .errors import DatabaseUnavailable, NotReplayable, RecordNotApplicable
from .journal_plan import Plan, Planner
from .journal_write import LIVE, NAME_WIDTH, TEXT_CUT, EventWriter
from .messages import Outcome, Received
from .store.database import LOCKED, WalCheckpointer, deadlocked, reading, translate
from .store.schema import Schema, events
from .store.statuses import status_in
from .store.views import TypedViews

MAX_BATCH = 512
DEADLOCK_TRIES = 3  # a group the database rolled back to break a deadlock, written again
DEADLOCK_PAUSE = 0.01  # seconds before the next try, times the deadlocks so far
IDLE_RECHECK = 1.0  # seconds without a write before the writer's connection is re-checked

log = logging.getLogger("aljex_sync.journal")

# A request to write, and the event it replays (None for a new request).
_RequestToWrite = tuple[Received, int | None]


class Journal:
    """Writes requests and their effects, one transaction per group of waiting requests."""

    def __init__(self, engine: Engine, settings: Settings, *, hands_off: bool = False) -> None:
        self.engine = engine
        self.settings = settings
        # An inline journal (journal_inline) hands a request it finds the write lock taken
        # for to the journal process: that is no failure, and not logged as one.
        self.hands_off = hands_off
        self.schema = Schema(engine)
        self.schema.on_columns_added = TypedViews(engine, settings.field_types).columns_added
        self.schema.keeps_history = settings.keeps_history
        self.planner = Planner(self.schema, settings)
        self.writer = EventWriter(engine, self.planner)
        # The writer's connection; the lock serializes groups from more than one thread.
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._last_used = 0.0
        self._checkpointer: WalCheckpointer | None = None

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
            self._checkpointer.committed(len(received))
        return results

    def _process(self, batch: Sequence[_RequestToWrite]) -> list[Outcome | BaseException]:
        with self._lock:
            plans: list[Plan] = []
            results: list[Outcome | BaseException | None] = []
            for received, replay_of in batch:
                try:
                    found = self._journaled(received) if received.resent else None
                    if found is not None:
                        results.append(found)
                        continue
                    plans.append(self.planner.plan(received, replay_of))
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
            rejection = self.planner.plan(received, None).rejection
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
            if self.hands_off and locked(error):
                log.debug("the write lock is taken, handing %d request(s) on: %s", count, error)
                return error
            if locked(error):  # busy, not down: the edge says at what level (a load's, or not)
                log.warning("database busy, %d request(s) not acknowledged: %s", count, error)
                return error
            log.error("database unavailable, %d request(s) not acknowledged: %s", count, error)
        else:  # a bug: fail the requests, keep the writer alive
            log.error("journal writer failed", exc_info=error)
        return error

    def _one_by_one(self, plans: Sequence[Plan]) -> list[Outcome | BaseException]:
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

    def _commit_group(self, plans: Sequence[Plan]) -> list[Outcome]:
        """Write a group in one transaction and commit it.

        The kept connection can turn out lost (a server restart, an idle timeout) at the
        first statement. Nothing was committed then, so the group is written once more on
        a new connection rather than answered 503. A connection lost at COMMIT is not
        retried: the commit may have happened, and ``_commit`` finds out which.

        Receivers sharing a database can deadlock on each other's row locks (MariaDB's gap
        locks, two groups touching two keys in turn); the database then rolls one group
        back, which is written again, up to :data:`DEADLOCK_TRIES` times in all.
        """
        reconnected = False
        deadlocks = 0
        while True:
            conn = self._connection()
            transaction = conn.begin()
            try:
                outcomes = self.writer.write_group(conn, plans)
            except SQLAlchemyError as e:
                lost = conn.invalidated
                with contextlib.suppress(SQLAlchemyError):
                    transaction.rollback()
                if lost and not reconnected:
                    log.warning("the database connection was lost; writing the group again")
                    self._release()
                    reconnected = True
                    continue
                if deadlocked(e) and deadlocks + 1 < DEADLOCK_TRIES:
                    deadlocks += 1
                    log.warning("a deadlock ended the group's transaction; writing it again")
                    time.sleep(DEADLOCK_PAUSE * deadlocks)
                    continue
                raise
            self._commit(transaction, plans, outcomes)
            return outcomes

    def _commit(self, transaction: Any, plans: Sequence[Plan], outcomes: Sequence[Outcome]) -> None:
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

    def _events_committed(self, plans: Sequence[Plan], outcomes: Sequence[Outcome]) -> bool:
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

    def _write_alone(self, plan: Plan) -> Outcome:
        """Write one request in its own transaction; hold it if the database refuses it.

        If the database refuses the record, it is journaled as held with the reason; if
        it refuses even that event, the event is written bare (status, reason, body).
        Raises DatabaseUnavailable, or the error of a bug, for the caller to report.
        """
        for attempt in ("as planned", "held", "bare"):
            conn = self._connection()
            transaction = conn.begin()
            try:
                outcome = self.writer.write(conn, plan)
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

    def _held_after(self, plan: Plan, reason: str) -> None:
        """Mark a plan held for what the database said, keeping a rejection a rejection."""
        if plan.status != "rejected":
            plan.status = "held"
        plan.reason = reason[:TEXT_CUT]

    def replay(
        self,
        *,
        table: str | None = None,
        event_ids: Sequence[int] = (),
        include_rejected: bool = False,
    ) -> Iterator[Outcome]:
        """Re-apply held events in the order they came, with today's configuration.

        Each event is re-read from its raw body and written in its own transaction, in
        this thread; the service may keep running meanwhile. ``event_ids`` narrows the
        choice, never widens it: naming an event that is applied or superseded (or
        rejected, without ``include_rejected``), or none at all, raises NotReplayable
        before anything is written, since applying it again would make a second history
        version, a second notice, or undo a later change's supersession.
        """
        self.install()
        statuses = ["held", "rejected"] if include_rejected else ["held"]
        query = select(
            events.c.id, events.c.body, events.c.remote_addr, events.c.received_at
        ).order_by(events.c.id)
        if event_ids:
            self._check_replayable(event_ids, statuses)
            query = query.where(events.c.id.in_(list(event_ids)))
        query = query.where(status_in(*statuses))
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

    def _check_replayable(self, event_ids: Sequence[int], statuses: Sequence[str]) -> None:
        """Raise NotReplayable naming each of ``event_ids`` that is missing or whose status
        is not one of ``statuses``."""
        query = select(events.c.id, events.c.status).where(events.c.id.in_(list(event_ids)))
        with reading(self.engine) as conn:
            found = {int(r.id): str(r.status) for r in conn.execute(query)}
        refused = {i: found.get(i) for i in sorted(set(event_ids)) if found.get(i) not in statuses}
        if refused:
            raise NotReplayable(refused)


def locked(error: BaseException) -> bool:
    """True for SQLite's refusal to wait for a write lock held elsewhere (SQLITE_BUSY).

    It comes at BEGIN IMMEDIATE or at DDL, before anything of the transaction is written.
    """
    return isinstance(error, DatabaseUnavailable) and LOCKED in str(error)


def _classify(error: BaseException) -> Exception:
    """A failure as DatabaseUnavailable (transient), or the record's or a bug's own error."""
    if isinstance(error, DatabaseUnavailable):
        return error
    if isinstance(error, SQLAlchemyError | OSError):
        translated = translate(error)
        return translated
    return error if isinstance(error, Exception) else RuntimeError(str(error))
