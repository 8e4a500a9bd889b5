"""Log lines a person can read: UTC time, level, where, and one line of what happened."""

from __future__ import annotations

import logging
import time


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def setup(level: str = "info") -> None:
    """Send aljex-sync's log lines to standard error at ``level``."""
    handler = logging.StreamHandler()
    handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncssh and uvicorn are chatty at info; their warnings still show.
    for noisy in ("asyncssh", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
