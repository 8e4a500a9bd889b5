"""A lone Live Sync request is journaled on the edge's own connection (SQLite), the rest by
the writer process; either way the journal and the synced table end up the same. Real
server, real HTTP, real databases."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from .support import RunningService, make_settings
from .test_live import journal, post, record, rows

# The columns of an event that do not depend on when, or through which path, it came.
SAME = ("source", "remote_addr", "table_name", "action", "raw_action", "status", "error")


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.01)


def test_a_lone_request_is_written_inline_or_by_the_writer_process_alike(service):
    """On SQLite the edge writes a lone request itself; PostgreSQL and MariaDB hand every
    request to the writer process. The reply, event and row are the same."""
    response = post(service, record("notes", "create", id="1", text="first"))
    assert (response.status_code, response.text) == (200, "applied as event 1\n")
    writer = service.service.writer
    inline = service.settings.database.url.startswith("sqlite")
    assert (writer.written_inline, writer.handed_off) == ((1, 0) if inline else (0, 1))
    engine = service.engine()
    [event] = journal(engine)
    assert (event["status"], event["record_key"], event["table_name"]) == ("applied", "1", "notes")
    assert rows(engine, "SELECT id, text, _aljex_event_id FROM notes") == [
        {"id": "1", "text": "first", "_aljex_event_id": 1}
    ]
    engine.dispose()


def test_a_request_that_finds_the_write_lock_taken_goes_to_the_writer_process(tmp_path, sqlite_url):
    """The event loop never waits on a lock held elsewhere (a morning load, the CLI): the
    request is handed off at once, waits in the writer process, and is journaled exactly
    as the one written inline."""
    settings = make_settings(sqlite_url, tmp_path, database={"timeout": 30})
    with RunningService(settings) as running:
        writer = running.service.writer
        assert post(running, record("notes", "create", id="1", text="a")).status_code == 200
        assert (writer.written_inline, writer.handed_off) == (1, 0)
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        replies: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: replies.append(post(running, record("notes", "create", id="2")))
        )
        sender.start()
        wait_until(lambda: writer.handed_off == 1, "the request to be handed off")
        assert not replies  # it waits for the lock in the writer process, not here
        blocker.execute("ROLLBACK")
        blocker.close()
        sender.join(timeout=30)
        assert (replies[0].status_code, replies[0].text) == (200, "applied as event 2\n")
        assert writer.written_inline == 1
        engine = running.engine()
        first, second = journal(engine)
        assert [first[c] for c in SAME] == [second[c] for c in SAME]
        assert (first["record_key"], second["record_key"]) == ("1", "2")
        assert second["body"] == b"web_sync_table_name=notes&web_sync_action=create&id=2"
        assert [r["_aljex_event_id"] for r in rows(engine, "SELECT * FROM notes ORDER BY id")] == [
            1,
            2,
        ]
        engine.dispose()


def test_requests_at_once_share_one_numbering_of_events(service):
    """Inline and handed-off requests, many at a time: every one journaled once, its row
    pointing at its own event, the events numbered without a gap or a repeat."""
    keys = [str(i) for i in range(120)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda k: post(service, record("notes", "update", id=k)), keys))
    assert {r.status_code for r in replies} == {200}
    writer = service.service.writer
    assert writer.written_inline + writer.handed_off == len(keys)
    engine = service.engine()
    events = journal(engine)
    assert sorted(e["record_key"] for e in events) == sorted(keys)
    assert [e["id"] for e in events] == list(range(1, len(keys) + 1))
    by_key = {e["record_key"]: e["id"] for e in events}
    landed = rows(engine, "SELECT id, _aljex_event_id FROM notes")
    assert {r["id"]: r["_aljex_event_id"] for r in landed} == by_key
    replied = sorted(int(r.text.split()[-1]) for r in replies)
    assert replied == list(range(1, len(keys) + 1))
    engine.dispose()
