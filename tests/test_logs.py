"""Log lines: one line per event whatever the network sends, and no flood of repeats."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest

from aljex_sync import logs

from .support import TEST_PASSWORD, RunningService

FORGED = "\n2026-01-01T00:00:00.000Z INFO  aljex_sync.live: 203.0.113.1 notes create X 200 applied"


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """What aljex-sync's own formatter writes for the Live Sync logger."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter())
    logger = logging.getLogger("aljex_sync.live")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def post(running: RunningService, fields: dict[str, str]) -> int:
    return httpx.post(
        running.url,
        content=urlencode(fields),
        auth=("aljex", TEST_PASSWORD),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    ).status_code


def test_a_newline_in_a_key_or_an_action_cannot_forge_a_log_line(service, written):
    table = "notes"
    assert (
        post(
            service,
            {"web_sync_table_name": table, "web_sync_action": "create", "id": "K1" + FORGED},
        )
        == 200
    )
    assert (
        post(
            service,
            {"web_sync_table_name": table, "web_sync_action": "create\r\nERROR forged", "id": "K2"},
        )
        == 422
    )
    lines = written.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert " notes create K1\\n2026-01-01T00:00:00.000Z INFO" in lines[0]
    assert " create\\r\\nERROR forged - 422 " in lines[1]


def test_every_control_character_is_escaped():
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "key %s", ("a\x00b\x1b[31mc\u2028d\x85",), None
    )
    assert logs.formatter().format(record).endswith("key a\\x00b\\x1b[31mc\\u2028d\\x85")
    assert (
        record.getMessage() == "key a\x00b\x1b[31mc\u2028d\x85"
    )  # other handlers see it as it was


def test_a_repeated_error_is_written_once_per_interval_with_a_count():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter())
    repeats = logs.RepeatFilter(interval=3600)
    handler.addFilter(repeats)
    logger = logging.getLogger("test_logs.repeats")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        for n in range(1000):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                # asyncio's own lines differ in a timer's address; the exception is the same.
                logger.error("Exception in callback <TimerHandle when=%d>", n, exc_info=True)
        logger.info("an info line is never held back")
        logger.info("an info line is never held back")
        repeats.interval = 0
        logger.error(
            "Exception in callback <TimerHandle when=0>",
            exc_info=OSError(24, "Too many open files"),
        )
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("Exception in callback") == 2
    assert text.count("Traceback") == 1
    assert text.count("an info line") == 2
    assert "(and 999 more like it left out)" in text


def test_a_line_logged_every_time_is_never_held_back():
    repeats = logs.RepeatFilter(interval=3600)
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "401 wrong password", (), None)
    assert repeats.filter(record)
    assert not repeats.filter(record)
    every = logging.makeLogRecord({**record.__dict__, **logs.EVERY_TIME})
    assert all(repeats.filter(every) for _ in range(3))
