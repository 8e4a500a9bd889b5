"""Change notifications: every applied change reaches the webhook and JetStream, in order."""

from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlencode

import httpx
import pytest
from click.testing import CliRunner

from aljex_sync import metrics
from aljex_sync.cli import main
from aljex_sync.errors import ConfigError
from aljex_sync.morning import MorningLoader
from aljex_sync.notify import sink_states
from aljex_sync.notify_sinks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from aljex_sync.store.schema import Schema

from .notify_support import (
    NATS_URL,
    SECRET,
    WebhookReceiver,
    applied_event_ids,
    delete_stream,
    read_stream,
    require_nats,
    unique_stream,
    wait_until,
)
from .support import TEST_PASSWORD, RunningService, make_settings

AUTH = ("aljex", TEST_PASSWORD)
FAST = {"poll_seconds": 0.05, "max_backoff_seconds": 0.2}


def post(running: RunningService, table: str, action: str, **fields: str) -> httpx.Response:
    body = urlencode({"web_sync_table_name": table, "web_sync_action": action, **fields})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return httpx.post(running.url, content=body, auth=AUTH, headers=headers, timeout=30)


def test_each_applied_change_reaches_the_webhook_signed_in_journal_order(database_url, tmp_path):
    with WebhookReceiver() as hook:
        notify = {"webhook": hook.url, "secret": SECRET, **FAST}
        settings = make_settings(database_url, tmp_path, notify=notify)
        with RunningService(settings) as running:
            assert post(running, "loads", "create", id="1", Status="OPEN").status_code == 200
            assert post(running, "loads", "update", id="1", Status="COVERED").status_code == 200
            assert post(running, "loads", "bogus", id="2").status_code == 422
            assert post(running, "loads", "delete", id="1").status_code == 200
            wanted = applied_event_ids(running.settings.database.url)
            wait_until("three notices", lambda: len(hook.received) >= 3)

    assert len(wanted) == 3
    got = hook.payloads()
    assert [p["event_id"] for p in got] == wanted  # the rejected request is not notified
    assert [(p["action"], p["key"]) for p in got] == [
        ("create", "1"),
        ("update", "1"),
        ("delete", "1"),
    ]
    assert got[1]["table"] == "loads" and got[1]["fields"] == {"id": "1", "Status": "COVERED"}
    assert got[0]["received_at"].endswith("Z") and got[0]["source"] == "live"
    for received in hook.received:
        stamp = received.headers[TIMESTAMP_HEADER]
        signature = received.headers[SIGNATURE_HEADER]
        assert signature.startswith("sha256=")
        assert verify(SECRET, stamp, signature, received.body, now=time.time())
        assert not verify("another secret", stamp, signature, received.body, now=time.time())
        assert not verify(SECRET, str(int(stamp) - 3600), signature, received.body, now=time.time())


def test_a_refusing_webhook_is_retried_and_shows_in_status_and_metrics(sqlite_url, tmp_path):
    with WebhookReceiver() as hook:
        hook.refuse = True
        notify = {"webhook": hook.url, "secret": SECRET, **FAST}
        settings = make_settings(sqlite_url, tmp_path, notify=notify)
        failures_before = metrics.NOTIFY_FAILURES.labels("webhook")._value.get()
        with RunningService(settings) as running:
            assert post(running, "loads", "create", id="7").status_code == 200
            wait_until("three refusals", lambda: hook.refused >= 3)
            engine = running.engine()
            [state] = sink_states(engine)
            assert state.sink == "webhook" and state.failing >= 1 and state.lag == 1
            assert "answered 500" in state.last_error
            result = CliRunner().invoke(main, ["-c", str(_config(tmp_path, sqlite_url)), "status"])
            shown = " ".join(result.output.split())
            assert "Notifications to webhook: failing" in shown and "lag 1 event(s)" in shown
            # The one process that sends: this one (the service runs in the test's process).
            sender = f"Notifications sent by {socket.gethostname()} pid {os.getpid()}, since"
            assert sender in shown
            assert metrics.NOTIFY_FAILURES.labels("webhook")._value.get() > failures_before
            assert metrics.NOTIFY_LAG.labels("webhook")._value.get() == 1

            hook.refuse = False
            wait_until("the change, once the receiver is back", lambda: len(hook.received) >= 1)
            wait_until("the recovery recorded", lambda: sink_states(engine)[0].failing == 0)
            [state] = sink_states(engine)
            assert state.lag == 0 and "answered 500" in state.last_error  # kept, for the record
            engine.dispose()
    assert [p["key"] for p in hook.payloads()] == ["7"]


def test_a_loaded_morning_file_is_notified_as_one_summary(sqlite_url, tmp_path):
    with WebhookReceiver() as hook:
        notify = {"webhook": hook.url, "secret": SECRET, **FAST}
        settings = make_settings(sqlite_url, tmp_path, notify=notify)
        with RunningService(settings) as running:
            path = tmp_path / "Carriers.csv"
            path.write_text("id,name\r\nK1,A\r\nK2,B\r\n")
            engine = running.engine()
            MorningLoader(engine, settings, Schema(engine)).load(path)
            wait_until("the file's summary", lambda: len(hook.received) >= 1)
            engine.dispose()
    [summary] = hook.payloads()
    assert summary["action"] == "morning" and summary["table"] == "carriers"
    assert (summary["file"], summary["rows_read"], summary["inserted"]) == ("Carriers.csv", 2, 2)


def test_changes_are_published_to_jetstream_by_table_and_action(database_url, tmp_path):
    require_nats()
    stream, prefix = unique_stream()
    notify = {"nats": NATS_URL, "nats_stream": stream, "nats_prefix": prefix, **FAST}
    settings = make_settings(database_url, tmp_path, notify=notify)
    try:
        with RunningService(settings) as running:
            assert post(running, "loads", "create", id="9").status_code == 200
            assert post(running, "carriers", "update", id="K1", name="B").status_code == 200
            wanted = applied_event_ids(running.settings.database.url)
            wait_until("two acks", lambda: sink_states(running.service.engine)[0].lag == 0)
        messages = read_stream(stream)
    finally:
        delete_stream(stream)
    assert [m[0] for m in messages] == [f"{prefix}.loads.create", f"{prefix}.carriers.update"]
    assert [m[1]["Nats-Msg-Id"] for m in messages] == [str(i) for i in wanted]
    assert messages[1][2]["fields"] == {"id": "K1", "name": "B"}


def test_notify_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"notify\.secret"):
        make_settings("sqlite://", tmp_path, notify={"webhook": "http://127.0.0.1/x"})
    with pytest.raises(ConfigError, match=r"notify\.nats"):
        make_settings("sqlite://", tmp_path, notify={"nats": "http://127.0.0.1:4222"})


def _config(tmp_path, url):
    path = tmp_path / "status.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n[live]\nenabled = false\n[morning]\nenabled = false\n'
    )
    return path


def test_an_unreachable_nats_is_retried_and_shows_in_status(sqlite_url, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    notify = {"nats": f"nats://127.0.0.1:{port}", **FAST}
    settings = make_settings(sqlite_url, tmp_path, notify=notify)
    with RunningService(settings) as running:
        assert post(running, "loads", "create", id="3").status_code == 200
        engine = running.engine()
        wait_until("two failed tries", lambda: sink_states(engine)[0].failing >= 2)
        [state] = sink_states(engine)
        assert state.sink == "nats" and state.lag == 1 and state.last_error
        engine.dispose()
