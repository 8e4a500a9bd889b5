"""Alerts for silence: the rules at any moment, and what a silent feed shows where.

The moment is set, never waited for: the rules take ``now``, and the running service's
watch has a clock the tests set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aljex_sync import config
from aljex_sync.alerts import (
    FeedHealth,
    HealthWatch,
    Webhook,
    judged_day,
    live_health,
    morning_health,
)
from aljex_sync.config import AlertSettings
from aljex_sync.errors import ConfigError
from aljex_sync.morning import MorningLoader
from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import Schema, utcnow

from .admin_support import ADMIN_AUTH, admin_settings, post, record, write_csv
from .support import RunningService

CHICAGO = ZoneInfo("America/Chicago")


# -- the rules -------------------------------------------------------------------------------


def test_live_feed_is_unhealthy_after_the_quiet_minutes_without_an_applied_event():
    start = datetime(2026, 3, 2, 12, 0)
    last = datetime(2026, 3, 2, 13, 0)
    assert live_health(last, start, last + timedelta(minutes=29), 30).healthy
    quiet = live_health(last, start, last + timedelta(minutes=45), 30)
    assert quiet == FeedHealth("live", False, "no live event for 45 minutes")
    assert quiet.line() == "live: unhealthy: no live event for 45 minutes"


def test_live_quiet_counts_from_the_start_when_no_event_ever_came():
    start = datetime(2026, 3, 2, 12, 0)
    assert live_health(None, start, start + timedelta(minutes=10), 30).healthy
    late = live_health(None, start, start + timedelta(minutes=31), 30)
    assert not late.healthy
    assert late.reason == "no live event since the service started 31 minutes ago"


def test_morning_is_judged_on_today_after_the_deadline_and_on_yesterday_before_it():
    # 07:00 in Chicago on 2 March 2026 (CST, UTC-6) is 13:00 UTC.
    day, midnight, deadline = judged_day(datetime(2026, 3, 2, 13, 0), time(7, 0), CHICAGO)
    assert (day.isoformat(), midnight, deadline) == (
        "2026-03-02",
        datetime(2026, 3, 2, 6, 0),
        datetime(2026, 3, 2, 13, 0),
    )
    day, _, _ = judged_day(datetime(2026, 3, 2, 12, 59), time(7, 0), CHICAGO)
    assert day.isoformat() == "2026-03-01"


def test_morning_by_follows_daylight_saving_time_in_the_configured_zone():
    # 9 March 2026 is CDT (UTC-5): 07:00 local is 12:00 UTC.
    _, midnight, deadline = judged_day(datetime(2026, 3, 9, 15, 0), time(7, 0), CHICAGO)
    assert (midnight, deadline) == (datetime(2026, 3, 9, 5, 0), datetime(2026, 3, 9, 12, 0))


def test_morning_feed_is_unhealthy_when_no_file_loaded_by_the_deadline():
    by = time(7, 0)
    loaded_today = datetime(2026, 3, 2, 11, 30)  # 05:30 in Chicago
    after_deadline = datetime(2026, 3, 2, 13, 5)
    assert morning_health(loaded_today, after_deadline, by, CHICAGO).healthy
    yesterdays = datetime(2026, 3, 1, 11, 30)
    missed = morning_health(yesterdays, after_deadline, by, CHICAGO)
    assert missed == FeedHealth("morning", False, "no morning file loaded by 07:00 on 2026-03-02")
    # Before today's deadline, yesterday's file is what counts: no alarm at 06:00.
    assert morning_health(yesterdays, datetime(2026, 3, 2, 12, 0), by, CHICAGO).healthy
    # And a missed yesterday stays missed through the night, until a file loads.
    assert not morning_health(None, datetime(2026, 3, 2, 7, 0), by, CHICAGO).healthy


def test_alert_settings_are_checked_with_one_line_naming_the_key(tmp_path):
    def parse(**alerts: object) -> AlertSettings:
        off = {"enabled": False}
        raw = {"alerts": alerts, "live": off, "morning": off}
        return config.parse(raw, base=tmp_path).alerts

    assert parse() == AlertSettings()
    assert not parse().enabled
    found = parse(live_quiet_minutes=45, morning_by="7:05", time_zone="America/Chicago")
    assert (found.live_quiet_minutes, found.morning_by, found.time_zone) == (
        45.0,
        time(7, 5),
        "America/Chicago",
    )
    for key, value, reason in (
        ("morning_by", "25:00", "must be HH:MM"),
        ("morning_by", "7am", "must be HH:MM"),
        ("time_zone", "Mars/Olympus", "unknown time zone"),
        ("webhook", "ftp://example.com/x", "must be an http:// or https:// URL"),
        ("live_quiet_minutes", -1, "must not be negative"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse(**{key: value})
        assert caught.value.key == f"alerts.{key}"
        assert reason in str(caught.value)


# -- a tiny webhook receiver on loopback ----------------------------------------------------


class Receiver:
    """An HTTP server on loopback that keeps each JSON body; answers ``statuses`` in turn."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.bodies: list[dict[str, object]] = []
        self.statuses = list(statuses or [])
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                with receiver.arrived:
                    receiver.bodies.append(
                        {"status": status, "type": self.headers["Content-Type"], **json.loads(body)}
                    )
                    receiver.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?token=secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 30) -> list[dict[str, object]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.bodies) >= count, timeout)
        return list(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def test_webhook_retries_a_failing_receiver_and_logs_each_failure_at_warning(caplog):
    receiver = Receiver([500, 503])
    try:
        hook = Webhook(receiver.url, pause=0.01)
        payload = json.dumps({"feed": "live", "healthy": False}).encode()
        with caplog.at_level(logging.WARNING, "aljex_sync.alerts"):
            assert asyncio.run(hook.deliver(payload))
        assert [b["status"] for b in receiver.wait_for(3)] == [500, 503, 200]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2
        assert "attempt 1 of 3 failed: answered 500" in warnings[0]
        assert all("secret-token" not in w for w in warnings)  # the URL's token stays out
    finally:
        receiver.close()


def test_webhook_gives_up_after_its_attempts_without_raising(caplog):
    receiver = Receiver()
    url = receiver.url
    receiver.close()  # nothing listens there any more
    hook = Webhook(url, pause=0.01, timeout=2)
    with caplog.at_level(logging.WARNING, "aljex_sync.alerts"):
        assert not asyncio.run(hook.deliver(b"{}"))
    assert sum("attempt" in r.getMessage() for r in caplog.records) == 3


# -- a silent feed, through the real service ---------------------------------------------------


def healthz(running: RunningService) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{running.service.http_port}/healthz", timeout=30)


def feed_gauge(running: RunningService) -> dict[str, float]:
    text = httpx.get(
        f"http://127.0.0.1:{running.service.http_port}/metrics", auth=ADMIN_AUTH, timeout=30
    ).text
    return {
        s.labels["feed"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "aljex_sync_feed_healthy"
    }


def admin_page(running: RunningService) -> str:
    url = f"http://127.0.0.1:{running.service.http_port}/admin/"
    return httpx.get(url, auth=ADMIN_AUTH, timeout=30).text


def test_a_quiet_live_feed_shows_in_the_log_healthz_metrics_page_and_webhook(
    database_url, tmp_path, receiver, caplog
):
    settings = admin_settings(
        database_url,
        tmp_path,
        alerts={"live_quiet_minutes": 30, "webhook": receiver.url},
        morning={"enabled": False},
    )
    with caplog.at_level(logging.INFO), RunningService(settings) as running:
        watch = running.service.chores.health
        assert post(running, record("notes", "create", id="N1")).status_code == 200
        watch.check()
        assert healthz(running).text.startswith("ok\nlive: healthy: last live event")

        later = utcnow() + timedelta(minutes=45)
        watch.clock = lambda: later
        watch.check()  # (the watch's own task may have seen it first: same outcome)
        assert not watch.current["live"].healthy
        response = healthz(running)
        assert response.status_code == 200  # silence never fails the health check
        assert response.text == "ok\nlive: unhealthy: no live event for 45 minutes\n"
        assert feed_gauge(running)["live"] == 0.0
        page = admin_page(running)
        assert 'data-healthy="false"' in page and "no live event for 45 minutes" in page
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert [r.getMessage() for r in errors] == [
            "live feed unhealthy: no live event for 45 minutes"
        ]
        (sent,) = receiver.wait_for(1)
        assert sent["type"] == "application/json"
        assert (sent["service"], sent["feed"], sent["healthy"]) == ("aljex-sync", "live", False)
        assert sent["reason"] == "no live event for 45 minutes"

        assert watch.check() == []  # no change, no second alert
        assert sum(r.levelno == logging.ERROR for r in caplog.records) == 1
        watch.clock = utcnow
        assert post(running, record("notes", "create", id="N2")).status_code == 200
        watch.check()
        assert watch.current["live"].healthy
        assert feed_gauge(running)["live"] == 1.0
        assert 'data-healthy="true"' in admin_page(running)
        assert [b["healthy"] for b in receiver.wait_for(2)] == [False, True]
        assert any(
            r.levelno == logging.WARNING and r.getMessage().startswith("live feed recovered")
            for r in caplog.records
        )


def test_a_missed_morning_file_shows_until_a_file_loads(database_url, tmp_path):
    settings = admin_settings(
        database_url,
        tmp_path,
        alerts={"morning_by": "07:00", "time_zone": "America/Chicago"},
    )
    with RunningService(settings) as running:
        watch = running.service.chores.health
        # 08:00 in Chicago, tomorrow: no file has loaded that day.
        tomorrow = datetime.now(CHICAGO).date() + timedelta(days=1)
        eight = datetime.combine(tomorrow, time(8, 0), tzinfo=CHICAGO)
        at_eight = eight.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)
        watch.clock = lambda: at_eight
        watch.check()
        assert watch.current["morning"].line() == (
            f"morning: unhealthy: no morning file loaded by 07:00 on {tomorrow}"
        )
        assert "morning: unhealthy" in healthz(running).text
        assert feed_gauge(running)["morning"] == 0.0

        engine = running.service.engine
        loader = MorningLoader(engine, settings, Schema(engine))
        csv = write_csv(tmp_path / "day" / "Customers.csv", ["id", "name"], [["C1", "One"]])
        assert loader.load(csv).status == "loaded"
        # The file loaded now, today: by tomorrow's 08:00 it is a day old and counts not.
        watch.check()
        assert not watch.current["morning"].healthy
        watch.clock = utcnow
        # Today, it counts whatever the hour: before 07:00 yesterday's day is judged, and
        # a file loaded today is after yesterday's midnight too.
        watch.check()
        assert watch.current["morning"].healthy
        assert healthz(running).text.startswith("ok\nmorning: healthy: last file loaded")


def test_with_no_alerts_configured_healthz_says_only_ok_and_no_watch_runs(service):
    assert not service.service.chores.health.enabled
    assert healthz(service).text == "ok\n"


def test_the_watch_logs_a_failed_check_at_error_and_keeps_going(tmp_path, caplog):
    engine = open_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no journal tables: checks fail
    watch = HealthWatch(AlertSettings(live_quiet_minutes=1), engine)

    async def two_failures() -> None:
        task = asyncio.create_task(watch.run(interval=0.01))
        while sum(r.levelno == logging.ERROR for r in caplog.records) < 2:
            assert not task.done()
            await asyncio.sleep(0.01)
        task.cancel()

    with caplog.at_level(logging.ERROR, "aljex_sync.alerts"):
        asyncio.run(asyncio.wait_for(two_failures(), 60))
    engine.dispose()
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failed[0].getMessage().startswith("feed health check failed")
    assert failed[0].exc_info is not None
