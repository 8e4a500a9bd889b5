"""Change notifications: each applied change, sent at least once, in journal order.

Each sink of ``[notify]`` (``notify_sinks``: a signed webhook, NATS JetStream) has its own
task and its own cursor, kept in ``_aljex_meta`` so that a restart resumes where delivery
stopped, without gaps:

- ``notify.<sink>.event``: the last journal event dealt with (sent, or not to be sent);
- ``notify.<sink>.file``: the last morning file dealt with;
- ``notify.<sink>.held``: held events passed by, sent once a replay applies them;
- ``notify.<sink>.error``: the last failure, for ``status``.

The cursor moves only after the sink has a notice (a 2xx, a JetStream ack), so a crash
between the two sends that notice again: at least once, never lost. A new sink starts at
the journal's end as it is then: it is not sent the past.

Journal ids are handed out before commit, so on PostgreSQL and MariaDB an id can commit
after a higher one, and an id rolled back never commits at all. A missing id therefore
holds delivery back until it shows up or ``GAP_WAIT`` seconds have passed since it was
first missed; only then is it taken for rolled back. Held events that ``replay`` applies
later keep their old id: they are looked up again at each turn, and sent when applied.

A morning file changes many rows at once: it is notified as one summary per loaded file
(action ``morning``), with its counts, not one message per row. Files have their own
cursor: their summaries are in file order, but not interleaved with live changes.

A failure is logged at WARNING (at ERROR once the pause between tries reaches its cap),
counted in ``aljex_sync_notify_failures_total``, kept for ``status``, and tried again
after a pause that doubles up to ``[notify] max_backoff_seconds``. Delivery runs beside
serving and never holds it up, in one process at a time (``notifier.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, inspect, select

from . import metrics, wire
from .clock import utcnow
from .config import Settings
from .errors import WireError
from .notify_sinks import DeliveryFailed, NatsSink, Notice, Sink, WebhookSink
from .store.database import reading
from .store.migrations import meta, write_meta
from .store.schema import events, files

log = logging.getLogger("aljex_sync.notify")

BATCH = 200  # journal rows read per turn
GAP_WAIT = 15.0  # seconds a missing journal id may take to commit before it is passed
MAX_HELD = 10_000  # held events remembered per sink for a later replay
FIRST_PAUSE = 1.0  # seconds before the first retry; doubled at each failure
PREFIX = "notify."


@dataclass(frozen=True)
class Cursor:
    """How far a sink has been sent: last event and file dealt with, held events to watch."""

    event: int
    file: int
    held: tuple[int, ...] = ()


@dataclass(frozen=True)
class Pending:
    """A notice, and the cursor to keep once it (and every one before it) is delivered."""

    notice: Notice
    after: Cursor


@dataclass(frozen=True)
class SinkState:
    """One sink as ``status`` shows it."""

    sink: str
    cursor: int
    file_cursor: int
    lag: int
    last_error: str
    last_error_at: str
    failing: int  # failures in a row; 0 once a delivery succeeds

    def line(self) -> str:
        error = (
            f"last error {self.last_error_at[:19].replace('T', ' ')} UTC: {self.last_error}"
            if self.last_error
            else "no error"
        )
        state = f"failing ({self.failing} tries)" if self.failing else "ok"
        return (
            f"{self.sink}: {state}, cursor event {self.cursor} (file {self.file_cursor}),"
            f" lag {self.lag} event(s), {error}"
        )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


class ChangeFeed:
    """Reads what a sink is owed from the journal and the file log; keeps its cursor."""

    def __init__(self, engine: Engine, legacy_charset: str = "cp1252") -> None:
        self.engine = engine
        self.legacy_charset = legacy_charset
        self._gaps: dict[tuple[str, int], float] = {}  # (log, missing id): first missed

    # -- the cursor, in _aljex_meta ------------------------------------------------------

    def cursor(self, sink: str) -> Cursor:
        """The sink's cursor; a sink seen for the first time starts at the journal's end."""
        with reading(self.engine) as conn:
            kept = _read_meta(conn, sink)
        if f"{PREFIX}{sink}.event" in kept:
            return Cursor(
                int(kept[f"{PREFIX}{sink}.event"]),
                int(kept.get(f"{PREFIX}{sink}.file", "0")),
                tuple(json.loads(kept.get(f"{PREFIX}{sink}.held", "[]"))),
            )
        with reading(self.engine) as conn:
            last_event = conn.execute(select(func.max(events.c.id))).scalar() or 0
            last_file = conn.execute(select(func.max(files.c.id))).scalar() or 0
        start = Cursor(int(last_event), int(last_file))
        self.save(sink, start, None)
        log.info("notifications to %s start after event %d", sink, start.event)
        return start

    def save(self, sink: str, cursor: Cursor, before: Cursor | None) -> None:
        """Keep ``cursor`` (only what changed since ``before``)."""
        values = {
            "event": str(cursor.event),
            "file": str(cursor.file),
            "held": json.dumps(list(cursor.held)),
        }
        if before is not None:
            old = {"event": str(before.event), "file": str(before.file)}
            old["held"] = json.dumps(list(before.held))
            values = {k: v for k, v in values.items() if old[k] != v}
        if values:
            write_meta(self.engine, {f"{PREFIX}{sink}.{k}": v for k, v in values.items()})

    def record_error(self, sink: str, error: str, failing: int) -> None:
        """Keep the sink's last failure (or, with ``failing`` 0, that it recovered)."""
        with reading(self.engine) as conn:
            kept = _read_meta(conn, sink).get(f"{PREFIX}{sink}.error")
        state = json.loads(kept) if kept else {}
        if error:
            state = {"error": error[:500], "at": _iso(utcnow()), "failing": failing}
        else:
            state["failing"] = 0
        write_meta(self.engine, {f"{PREFIX}{sink}.error": json.dumps(state)})

    def lag(self, cursor: Cursor) -> int:
        """Applied changes after the cursor (held ones replayed since are not counted)."""
        with reading(self.engine) as conn:
            return _lag(conn, cursor.event)

    # -- what is owed ----------------------------------------------------------------------

    def pending(self, cursor: Cursor) -> tuple[list[Pending], Cursor]:
        """The notices owed after ``cursor``, in order, and the cursor once all are sent.

        The final cursor can be ahead of the last notice's: rows that need no notice
        (rejected, superseded) move it too.
        """
        found: list[Pending] = []
        now = time.monotonic()
        with reading(self.engine) as conn:
            held = list(cursor.held)
            if held:
                replayed = self._replayed(conn, held[:BATCH])
                for event_id in list(held[:BATCH]):
                    row = replayed.get(event_id)
                    if row is not None and row.status == "held":
                        continue
                    held.remove(event_id)  # applied now, or gone (superseded, pruned)
                    if row is not None and row.status == "applied":
                        found.append(Pending(self._event(row), replace(cursor, held=tuple(held))))
            state = replace(cursor, held=tuple(held))
            rows = conn.execute(
                _event_query().where(events.c.id > cursor.event).order_by(events.c.id).limit(BATCH)
            ).all()
            last = cursor.event
            for row in rows:
                if not self._may_pass("event", last, int(row.id), now):
                    break
                last = int(row.id)
                if row.status == "held":
                    held = [*held, last][-MAX_HELD:]
                state = replace(state, event=last, held=tuple(held))
                if row.status == "applied":
                    found.append(Pending(self._event(row), state))
            loaded = conn.execute(
                select(files).where(files.c.id > cursor.file).order_by(files.c.id).limit(BATCH)
            ).all()
            for row in loaded:
                if not self._may_pass("file", state.file, int(row.id), now):
                    break
                state = replace(state, file=int(row.id))
                if row.status == "loaded" and row.table_name:
                    found.append(Pending(_file_notice(row), state))
        return found, state

    def _may_pass(self, log_name: str, last: int, next_id: int, now: float) -> bool:
        """Whether ``next_id`` may be dealt with: it follows ``last``, or the gap is old."""
        if next_id == last + 1:
            return True
        missed = self._gaps.setdefault((log_name, last + 1), now)
        if now - missed < GAP_WAIT:
            return False
        log.debug("%s ids %d to %d never committed; passing them", log_name, last + 1, next_id - 1)
        del self._gaps[(log_name, last + 1)]
        return True

    def _replayed(self, conn: Connection, ids: Sequence[int]) -> dict[int, Any]:
        rows = conn.execute(_event_query().where(events.c.id.in_(list(ids)))).all()
        return {int(row.id): row for row in rows}

    def _event(self, row: Any) -> Notice:
        """A live change as its notice: the journal's facts, and the fields as sent."""
        try:
            change = wire.parse_body(
                bytes(row.body), legacy_charset=self.legacy_charset, max_fields=1_000_000
            )
            fields: dict[str, str] = change.fields
        except WireError:  # an applied event was parsed once; this is belt and braces
            fields = {}
        payload = {
            "event_id": int(row.id),
            "table": row.table_name,
            "action": row.action,
            "key": row.record_key,
            "received_at": _iso(row.received_at),
            "source": row.source,
            "fields": fields,
        }
        return Notice(str(row.id), row.table_name, row.action, _json(payload))


def _event_query() -> Any:
    c = events.c
    return select(
        c.id, c.status, c.table_name, c.action, c.record_key, c.received_at, c.source, c.body
    )


def _file_notice(row: Any) -> Notice:
    """A loaded morning file as one summary notice, with what it did to the table."""
    counts = ("rows_read", "inserted", "updated", "deleted", "skipped_newer")
    payload: dict[str, object] = {
        "file_id": int(row.id),
        "table": row.table_name,
        "action": "morning",
        "file": row.name,
        "sha256": row.sha256,
        "mode": row.mode,
        "snapshot_at": _iso(row.snapshot_at),
        "finished_at": _iso(row.finished_at),
        **{name: int(getattr(row, name)) for name in counts},
    }
    return Notice(f"file-{row.id}", row.table_name, "morning", _json(payload))


def _json(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _read_meta(conn: Connection, sink: str | None) -> dict[str, str]:
    pattern = f"{PREFIX}{sink}.%" if sink else f"{PREFIX}%"
    query = select(meta.c.name, meta.c.value).where(meta.c.name.like(pattern))
    return {str(name): str(value) for name, value in conn.execute(query)}


def _lag(conn: Connection, event: int) -> int:
    """Applied changes after event ``event``: what a sink at that cursor is owed."""
    query = select(func.count()).where(events.c.id > event, events.c.status == "applied")
    return int(conn.execute(query).scalar() or 0)


class Delivery:
    """One sink's loop: read what is owed, send it in order, move the cursor, retry."""

    def __init__(self, feed: ChangeFeed, sink: Sink, poll: float, max_pause: float) -> None:
        self.feed = feed
        self.sink = sink
        self.poll = poll
        self.max_pause = max_pause
        self.failing = 0
        self.cursor: Cursor | None = None  # as kept in the database

    async def run(self) -> None:
        """Deliver until cancelled; every failure is logged, and tried again later."""
        name = self.sink.name
        first_pause = min(FIRST_PAUSE, self.max_pause)
        pause = first_pause
        try:
            while True:
                try:
                    if self.cursor is None:
                        self.cursor = await asyncio.to_thread(self.feed.cursor, name)
                    sent = await self._turn(self.cursor)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    await self._failed(e, pause)
                    with contextlib.suppress(Exception):  # the database may be what failed
                        await self._report_lag()
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, self.max_pause)
                    continue
                pause = first_pause
                if self.failing:
                    self.failing = 0
                    log.warning("notifications to %s delivered again", name)
                    await asyncio.to_thread(self.feed.record_error, name, "", 0)
                if not sent:
                    await asyncio.sleep(self.poll)
        finally:
            with contextlib.suppress(Exception):
                await self.sink.close()

    async def _turn(self, cursor: Cursor) -> int:
        """Send what is owed; keep the cursor of what was delivered, even on a failure."""
        owed, final = await asyncio.to_thread(self.feed.pending, cursor)
        reached, sent = cursor, 0
        try:
            for pending in owed:
                await self.sink.send(pending.notice)
                reached, sent = pending.after, sent + 1
            reached = final
        finally:
            if reached != cursor:
                await asyncio.to_thread(self.feed.save, self.sink.name, reached, cursor)
                self.cursor = reached
        await self._report_lag()
        return sent

    async def _report_lag(self) -> None:
        if self.cursor is not None:
            lag = await asyncio.to_thread(self.feed.lag, self.cursor)
            metrics.set_notify_lag(self.sink.name, lag)

    async def _failed(self, error: Exception, pause: float) -> None:
        self.failing += 1
        name = self.sink.name
        metrics.count_notify_failure(name)
        reason = (
            str(error) if isinstance(error, DeliveryFailed) else f"{type(error).__name__}: {error}"
        )
        level = logging.ERROR if pause >= self.max_pause else logging.WARNING
        log.log(
            level,
            "notifications to %s failed (%d in a row): %s; trying again in %g s",
            name,
            self.failing,
            reason,
            pause,
        )
        try:
            await asyncio.to_thread(self.feed.record_error, name, reason, self.failing)
        except Exception as e:  # the database itself may be what failed
            log.warning("could not record the failure of %s: %s", name, e)


def sinks_for(settings: Settings) -> list[Sink]:
    """The sinks ``[notify]`` configures, in a fixed order."""
    notify = settings.notify
    found: list[Sink] = []
    if notify.webhook:
        found.append(WebhookSink(notify.webhook, notify.secret))
    if notify.nats:
        found.append(NatsSink(notify.nats, notify.nats_stream, notify.nats_prefix))
    return found


def sink_states(engine: Engine) -> list[SinkState]:
    """Each sink with a cursor in the database, for ``status``; reads only."""
    with reading(engine) as conn:
        if meta.name not in inspect(conn).get_table_names():
            return []
        kept = _read_meta(conn, None)
        states = []
        sinks = sorted({name.split(".")[1] for name in kept if name.count(".") >= 2})
        for sink in sinks:
            if f"{PREFIX}{sink}.event" not in kept:
                continue
            cursor = int(kept[f"{PREFIX}{sink}.event"])
            error = json.loads(kept.get(f"{PREFIX}{sink}.error", "{}"))
            lag = _lag(conn, cursor)
            states.append(
                SinkState(
                    sink,
                    cursor,
                    int(kept.get(f"{PREFIX}{sink}.file", "0")),
                    lag,
                    str(error.get("error", "")),
                    str(error.get("at", "")),
                    int(error.get("failing", 0)),
                )
            )
    return states
