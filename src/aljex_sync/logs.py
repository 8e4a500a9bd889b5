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
"""

from __future__ import annotations

import json
import logging
import time

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
