"""Notifications survive a crash: `aljex-sync serve` killed mid-stream resumes from its cursor.

A real `serve` process, SIGKILLed while records are being posted, then started again: every
change the journal applied must reach the webhook and JetStream at least once, and for
each record in the order the journal applied them.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections import defaultdict
from urllib.parse import urlencode

import httpx
from sqlalchemy import select

from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import events

from .notify_support import (
    NATS_URL,
    SECRET,
    WebhookReceiver,
    delete_stream,
    read_stream,
    require_nats,
    stream_count,
    unique_stream,
    wait_until,
)
from .test_serve import serving

RECORDS = 240
KEYS = 12


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Poster:
    """Posts RECORDS changes over KEYS records, each until it gets its 200, as Aljex resends."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/aljex/sync"
        self.acknowledged = 0
        self.failed_tries = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(auth=("aljex", "live-secret"), timeout=10) as client:
            for i in range(RECORDS):
                key = f"K{i % KEYS}"
                action = "create" if i < KEYS else "update"
                body = urlencode(
                    {"web_sync_table_name": "loads", "web_sync_action": action, "id": key, "seq": i}
                )
                while True:
                    try:
                        reply = client.post(
                            self.url,
                            content=body,
                            headers={"Content-Type": "application/x-www-form-urlencoded"},
                        )
                        if reply.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    self.failed_tries += 1
                    threading.Event().wait(0.05)
                self.acknowledged += 1


def applied(url: str) -> list[tuple[int, str]]:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            query = (
                select(events.c.id, events.c.record_key)
                .where(events.c.status == "applied")
                .order_by(events.c.id)
            )
            return [(int(i), str(k)) for i, k in conn.execute(query)]
    finally:
        engine.dispose()


def in_order_per_key(delivered: list[int], key_of: dict[int, str]) -> bool:
    """Each record's changes first arrive in journal order (repeats after a restart allowed)."""
    first: dict[str, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for event_id in delivered:
        if event_id not in seen:
            seen.add(event_id)
            first[key_of[event_id]].append(event_id)
    return all(ids == sorted(ids) for ids in first.values())


def test_every_applied_change_is_delivered_after_serve_is_killed_mid_stream(database_url, tmp_path):
    require_nats()
    stream, prefix = unique_stream()
    port = free_port()
    with WebhookReceiver() as hook:
        config = tmp_path / "aljex-sync.toml"
        config.write_text(
            f"""[database]
url = "{database_url}"
[live]
listen = "127.0.0.1:{port}"
password = "live-secret"
[morning]
enabled = false
[notify]
webhook = "{hook.url}"
secret = "{SECRET}"
nats = "{NATS_URL}"
nats_stream = "{stream}"
nats_prefix = "{prefix}"
poll_seconds = 0.05
max_backoff_seconds = 0.5
"""
        )
        poster = Poster(port)
        try:
            with serving(config, level="info") as first:
                started = {first.wait_for_line("start after event") for _ in range(2)}
                assert {line.split("notifications to ")[1].split()[0] for line in started} == {
                    "webhook",
                    "nats",
                }
                poster.thread.start()
                wait_until("deliveries under way", lambda: len(hook.received) >= 40)
                os.killpg(first.process.pid, signal.SIGKILL)
                first.process.wait()
            killed_at = poster.acknowledged
            with serving(config, level="info") as second:
                second.wait_for_line("live sync listening")
                poster.thread.join(timeout=120)
                assert not poster.thread.is_alive(), "the poster did not finish"
                journal = applied(database_url)
                wanted = {event_id for event_id, _ in journal}
                wait_until(
                    "every applied change at the webhook",
                    lambda: wanted <= {p["event_id"] for p in hook.payloads()},
                )
                wait_until(
                    "every applied change in JetStream", lambda: stream_count(stream) >= len(wanted)
                )
                second.process.send_signal(signal.SIGTERM)
                assert second.process.wait(timeout=30) == 0
            messages = read_stream(stream)
        finally:
            delete_stream(stream)

    assert 0 < killed_at < RECORDS, "the kill did not come mid-stream"
    assert poster.failed_tries > 0  # the requests made while it was down were sent again
    assert len(journal) >= RECORDS
    key_of = dict(journal)
    at_hook = [p["event_id"] for p in hook.payloads()]
    assert set(at_hook) == wanted
    assert in_order_per_key(at_hook, key_of)
    in_stream = [int(headers["Nats-Msg-Id"]) for _, headers, _ in messages]
    assert set(in_stream) == wanted
    assert in_order_per_key(in_stream, key_of)
    assert {subject for subject, _, _ in messages} == {
        f"{prefix}.loads.create",
        f"{prefix}.loads.update",
    }
