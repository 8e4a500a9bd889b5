"""Log lines: one line per event whatever the network sends, and no flood of repeats."""

from __future__ import annotations

import asyncio
import io
import logging
import time
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


class Lines:
    """What a ``CountedRepeats`` wrote: each first line and each summary, in order."""

    def __init__(self) -> None:
        self.written: list[tuple[str, object, int]] = []  # ("first"|"summary", key, count)
        self.most_from: dict[object, str | None] = {}

    def repeats(self, interval: float, max_keys: int = 100) -> logs.CountedRepeats[str]:
        return logs.CountedRepeats(
            self.summary,
            first=lambda key, _source: self.written.append(("first", key, 1)),
            interval=interval,
            max_keys=max_keys,
            overflow=lambda _key: "other",
        )

    def summary(self, summary: logs.Summary[str]) -> None:
        self.written.append(("summary", summary.key, summary.count))
        self.most_from[summary.key] = summary.most_from

    def total(self) -> int:
        return sum(n for _, _, n in self.written)


def test_the_first_of_a_kind_is_written_at_once_and_the_rest_in_one_line_an_interval_later():
    lines = Lines()

    async def flood() -> list[bool]:
        repeats = lines.repeats(interval=0.3)
        now = [repeats.count("a"), *(repeats.count("a") for _ in range(4)), repeats.count("b")]
        assert lines.written == [("first", "a", 1), ("first", "b", 1)]
        await asyncio.sleep(0.2)
        assert len(lines.written) == 2  # nothing before the interval is over
        await asyncio.sleep(0.3)
        return now

    assert asyncio.run(flood()) == [True, False, False, False, False, True]
    assert lines.written[2:] == [("summary", "a", 4)]


def test_after_a_summary_the_next_of_its_kind_is_counted_not_written_at_once():
    """A summary is the kind's line of its interval: a steady flood writes one line per
    interval, never a first line and a summary in the same interval."""
    lines = Lines()

    async def steady_flood() -> float:
        repeats = lines.repeats(interval=0.2)
        started = time.monotonic()
        for _ in range(50):  # about 1 s: 5 intervals
            repeats.count("a")
            await asyncio.sleep(0.02)
        repeats.flush()
        return time.monotonic() - started

    took = asyncio.run(steady_flood())
    kinds = [kind for kind, _, _ in lines.written]
    assert kinds[0] == "first"
    assert set(kinds[1:]) == {"summary"}
    assert 3 <= len(kinds) - 1 <= took / 0.2 + 1, lines.written  # one an interval, and the flush
    assert lines.total() == 50


def test_a_kind_back_after_a_quiet_interval_is_written_at_once():
    lines = Lines()

    async def twice() -> None:
        repeats = lines.repeats(interval=0.2)
        repeats.count("a")
        await asyncio.sleep(0.25)
        repeats.count("a")

    asyncio.run(twice())
    assert lines.written == [("first", "a", 1), ("first", "a", 1)]


def test_kinds_past_the_bound_are_counted_under_the_overflow_kind_and_none_is_lost():
    """An attacker with many addresses gets ``max_keys`` first lines, not one each."""
    lines = Lines()

    async def many_addresses() -> None:
        repeats = lines.repeats(interval=60, max_keys=10)
        for n in range(1000):
            repeats.count(f"address 203.0.113.{n} not allowed")
            repeats.count(f"address 203.0.113.{n} not allowed")
        repeats.flush()

    asyncio.run(many_addresses())
    firsts = [key for kind, key, _ in lines.written if kind == "first"]
    summaries = [(key, n) for kind, key, n in lines.written if kind == "summary"]
    assert len(firsts) == 10
    assert len(summaries) == 11  # one per kind kept, and one for all the others
    assert ("other", 2000 - 20) in summaries
    assert lines.total() == 2000


def test_kinds_an_interval_old_give_their_place_to_new_ones():
    lines = Lines()

    async def two_waves() -> None:
        repeats = lines.repeats(interval=0.2, max_keys=3)
        for key in "abc":
            repeats.count(key)
        await asyncio.sleep(0.25)
        for key in "def":
            repeats.count(key)

    asyncio.run(two_waves())
    assert [key for _, key, _ in lines.written] == list("abcdef")


def test_the_summary_names_the_source_most_came_from_past_the_sources_kept_apart():
    lines = Lines()

    async def many_then_one() -> None:
        repeats = lines.repeats(interval=60)
        repeats.count("over 3 connections", "198.51.100.1")
        for n in range(200):  # more sources than are kept apart, once each
            repeats.count("over 3 connections", f"203.0.113.{n}")
        for _ in range(20):
            repeats.count("over 3 connections", "192.0.2.7")
        repeats.flush()

    asyncio.run(many_then_one())
    assert lines.written[-1] == ("summary", "over 3 connections", 220)
    assert lines.most_from["over 3 connections"] == "192.0.2.7"


def test_a_flush_writes_what_is_counted_and_no_summary_comes_after_it():
    lines = Lines()

    async def stop_early() -> None:
        repeats = lines.repeats(interval=0.2)
        for _ in range(3):
            repeats.count("a")
        repeats.flush()
        repeats.flush()  # a second stop finds nothing more
        await asyncio.sleep(0.3)

    asyncio.run(stop_early())
    assert lines.written == [("first", "a", 1), ("summary", "a", 2)]
