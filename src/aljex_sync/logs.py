"""Log lines a person can read: UTC time, level, where, and one line of what happened.

Much of what is logged comes from the network (a table, an action, a key, an address). A
newline in one of them would start a line the attacker wrote, so the formatter escapes
every control character of the message (``\\n`` becomes ``\\\\n``), once, here, for every
module. A traceback keeps its lines: it is written by Python, not by the network.

``--log-format json`` writes one JSON object per line instead (:class:`JsonFormatter`:
``time``, ``level``, ``logger``, ``message``, and ``exception`` with a traceback), for log
collectors; JSON's own escaping keeps each record on one line there.

Errors that repeat at machine speed (``socket.accept`` out of file descriptors, say) are
logged once per ``REPEAT_INTERVAL`` with a count of the ones left out. A line logged with
``extra=EVERY_TIME`` (one per Live Sync request: the operator counts on one line per
request that did not land) is never held back.

Lines of a kind an attacker can make come at will (a connection refused, a request without
credentials) are written once and counted after (:class:`CountedRepeats`): the first of
each kind at once, the rest as one line per kind and minute, with a bound on the kinds kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

REPEAT_INTERVAL = 10.0
_EVERY_TIME = "aljex_every_time"
EVERY_TIME = {_EVERY_TIME: True}
"""``extra`` for a line :class:`RepeatFilter` must let through however often it comes."""

# Every C0 and C1 control character, DEL, and the Unicode line and paragraph separators.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def escape(text: str) -> str:
    """``text`` with its control characters written as escapes: it stays on one line."""
    return text.translate(_ESCAPES)


class OneLineFormatter(logging.Formatter):
    """UTC times, and a message whose control characters are escaped."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        # The message is rendered and escaped on the record's way through this formatter
        # only; other handlers see the record as it was.
        msg, args = record.msg, record.args
        record.msg, record.args = escape(record.getMessage()), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = msg, args


class RepeatFilter(logging.Filter):
    """Lets a warning or error through once per interval; counts the repeats left out.

    A repeat is the same logger and level with the same exception (type and text) or, for
    a record without one, the same rendered message: asyncio's own error lines differ in
    a timer's address while their exception is the same. Info lines, and lines logged
    with ``extra=EVERY_TIME`` (one per request), are never held back.
    """

    def __init__(self, interval: float = REPEAT_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, _EVERY_TIME, False):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        what = f"{type(exc).__name__}: {exc}" if exc is not None else record.getMessage()
        key = (record.name, record.levelno, what)
        now = time.monotonic()
        last, left_out = self._seen.get(key, (-self.interval, 0))
        if now - last < self.interval:
            self._seen[key] = (last, left_out + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if left_out:
            record.msg = f"{record.getMessage()} (and {left_out} more like it left out)"
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message; exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": OneLineFormatter().formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)  # non-ASCII escaped too: U+2028 breaks lines for some


K = TypeVar("K", bound=Hashable)
MAX_SOURCES = 16  # sources a kind's count keeps apart, to name the one most came from


@dataclass(frozen=True)
class Summary(Generic[K]):
    """What :class:`CountedRepeats` counted of one kind since its last line."""

    key: K
    count: int
    seconds: float  # since the first of the batch was counted (the interval, or less at a stop)
    most_from: str | None  # the source most of them came from, if sources were given


class CountedRepeats(Generic[K]):
    """Lines of one kind (``key``) logged once, then counted: the first at once, the rest
    added up and written as one summary line per kind when ``interval`` is over, and by
    :meth:`flush` when the service stops, so that no count is lost.

    What is counted comes from the network at an attacker's pace; one line each filled a
    disk (40 GB a day from one client).

    A summary is the kind's line of its interval: the next one after it is counted too,
    not written at once. Writing it at once would cost a steady flood two lines per kind
    and interval (a summary and a first line again) and tell nothing the summary did not.
    So a line is written at once only for a kind with none waiting to be summed up whose
    last line (first or summary) is an interval old: a kind that comes back after a quiet
    interval is seen at once.

    Kinds name addresses, and an attacker has many: at most ``max_keys`` are remembered
    and counted apart (those whose last line is an interval old are forgotten first); one
    more is counted under ``overflow(key)``, a kind that names none, and never written at
    once. Per kind, ``MAX_SOURCES`` sources are counted apart (:class:`_Counted`).

    ``first(key, source)`` writes the first line, or the caller does when ``count`` says
    so (a request's line carries more than its kind). ``summary`` writes the summary.
    """

    def __init__(
        self,
        summary: Callable[[Summary[K]], None],
        *,
        interval: float,
        max_keys: int,
        overflow: Callable[[K], K],
        first: Callable[[K, str | None], None] | None = None,
    ) -> None:
        self.interval = interval
        self._summary = summary
        self._first = first
        self._max_keys = max_keys
        self._overflow = overflow
        self._last: OrderedDict[K, float] = OrderedDict()  # each kind's last line, oldest first
        self._counts: dict[K, _Counted] = {}
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def count(self, key: K, source: str | None = None) -> bool:
        """True if this one's line is written now (by ``first``, if given, else by the
        caller); else it is counted into ``key``'s summary. ``source``: where it came
        from, for the summary to name the one most came from."""
        now = time.monotonic()
        if key not in self._counts:  # none waits for its summary
            last = self._last.get(key)
            if last is None:
                self._forget_before(now - self.interval)
                if len(self._last) < self._max_keys:
                    return self._write(key, source, now)
            elif now - last >= self.interval:
                return self._write(key, source, now)
            if last is None or len(self._counts) >= self._max_keys:
                key = self._overflow(key)
        if not self._counts:
            self._since = now
            self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)
        self._counts.setdefault(key, _Counted()).add(source)
        return False

    def flush(self) -> None:
        """Write the summary of each kind counted since its last line."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, self._counts = self._counts, {}
        now = time.monotonic()
        for key, counted in counts.items():
            if key in self._last:
                self._last[key] = now
                self._last.move_to_end(key)
            self._summary(Summary(key, counted.n, now - self._since, counted.most()))

    def _write(self, key: K, source: str | None, now: float) -> bool:
        self._last[key] = now
        self._last.move_to_end(key)
        if self._first is not None:
            self._first(key, source)
        return True

    def _forget_before(self, cutoff: float) -> None:
        """Forget the kinds whose last line is older than ``cutoff``: their next is
        written at once anyway. Oldest first, so each is looked at once."""
        while self._last:
            key, last = next(iter(self._last.items()))
            if last > cutoff:
                return
            del self._last[key]


class _Counted:
    """A kind's count since its last line, and the sources it came from.

    At most ``MAX_SOURCES`` sources are kept: a new one past them takes the place of the
    least counted, with its count plus one (the Space-Saving count), so a source that sent
    more than one in ``MAX_SOURCES`` of them is never lost from it.
    """

    __slots__ = ("n", "sources")

    def __init__(self) -> None:
        self.n = 0
        self.sources: dict[str, int] = {}

    def add(self, source: str | None) -> None:
        self.n += 1
        if source is None:
            return
        sources = self.sources
        if source in sources or len(sources) < MAX_SOURCES:
            sources[source] = sources.get(source, 0) + 1
        else:
            least = min(sources, key=sources.__getitem__)
            sources[source] = sources.pop(least) + 1

    def most(self) -> str | None:
        return max(self.sources, key=self.sources.__getitem__) if self.sources else None


FORMATS = ("text", "json")


def formatter(fmt: str = "text") -> logging.Formatter:
    """The formatter of aljex-sync's log lines: ``text`` (one readable line) or ``json``."""
    if fmt == "json":
        return JsonFormatter()
    return OneLineFormatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s")


def setup(level: str = "info", fmt: str = "text") -> None:
    """Send aljex-sync's log lines to standard error at ``level``, as ``text`` or ``json``."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncssh and uvicorn are chatty at info; their warnings still show.
    for noisy in ("asyncssh", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
