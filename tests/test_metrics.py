"""/metrics: the hook API, the database read at scrape, and the Prometheus exposition."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from aljex_sync import metrics
from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import events, files

from .admin_support import (
    ADMIN_AUTH,
    LIVE_AUTH,
    a_day,
    admin_settings,
    count_events,
    count_files,
    scalar,
)
from .support import RunningService, full_disk, post_note


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def hooks() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(metrics.generate_latest(metrics.HOOKS).decode())


def value(found, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_observe_request_counts_requests_and_their_latency_by_table_action_status():
    labels = {"table": "loads", "action": "update", "status": "200"}
    before = hooks()
    metrics.observe_request("loads", "update", 200, 0.0015)
    metrics.observe_request("loads", "update", 200, 0.2)
    after = hooks()
    for name, delta in (
        ("aljex_sync_live_requests_total", 2),
        ("aljex_sync_live_request_seconds_count", 2),
    ):
        assert value(after, name, **labels) - value(before, name, **labels) == delta
    assert value(after, "aljex_sync_live_request_seconds_sum", **labels) - value(
        before, "aljex_sync_live_request_seconds_sum", **labels
    ) == pytest.approx(0.2015)
    bucket = "aljex_sync_live_request_seconds_bucket"
    assert value(after, bucket, le="0.002", **labels) - value(
        before, bucket, le="0.002", **labels
    ) == (1)


def test_odd_table_names_and_actions_are_counted_as_other():
    before = hooks()
    metrics.observe_request("Robert'); DROP", "explode", 422, 0.001)
    after = hooks()
    labels = {"table": "other", "action": "other", "status": "422"}
    name = "aljex_sync_live_requests_total"
    assert value(after, name, **labels) - value(before, name, **labels) == 1


def test_observe_group_and_set_queue():
    before = hooks()
    metrics.observe_group(3)
    metrics.set_queue(7)
    after = hooks()
    name = "aljex_sync_journal_group_size"
    assert value(after, f"{name}_count") - value(before, f"{name}_count") == 1
    assert value(after, f"{name}_bucket", le="4.0") - value(before, f"{name}_bucket", le="4.0") == 1
    assert value(after, "aljex_sync_journal_queue_depth") == 7
    metrics.set_queue(0)


def test_metrics_report_the_journal_and_the_morning_files_from_the_database(database_url, tmp_path):
    with RunningService(admin_settings(database_url, tmp_path)) as running:
        a_day(running, tmp_path)
        reply = httpx.get(
            f"http://127.0.0.1:{running.service.http_port}/metrics", auth=ADMIN_AUTH, timeout=30
        )
        engine = running.engine()
        try:
            last_live = scalar(
                engine, select(func.max(events.c.received_at)).where(events.c.status == "applied")
            )
            last_file = scalar(
                engine, select(func.max(files.c.finished_at)).where(files.c.status == "loaded")
            )
            held = count_events(engine, events.c.status == "held")
            rejected = count_events(engine, events.c.status == "rejected")
            failed = count_files(engine, files.c.status == "failed")
            missing = scalar(
                engine, select(files.c.missing_in_db).where(files.c.status == "loaded")
            )
        finally:
            engine.dispose()
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(reply.text)
    assert value(found, "aljex_sync_database_up") == 1
    journal = "aljex_sync_journal_events"
    assert value(found, journal, table="employees", action="create", status="applied") == 3
    assert value(found, journal, table="employees", action="update", status="applied") == 1
    assert value(found, journal, table="invoicing", action="create", status="held") == held == 1
    assert value(found, journal, table="loads", action="-", status="rejected") == rejected == 1
    assert value(found, "aljex_sync_held_records", table="invoicing") == 1
    assert value(found, "aljex_sync_morning_files", status="loaded") == 1
    assert value(found, "aljex_sync_morning_files", status="failed") == failed == 1
    assert value(found, "aljex_sync_morning_rows_total", outcome="read") == 2
    assert value(found, "aljex_sync_morning_rows_total", outcome="inserted") == 2
    health = "aljex_sync_morning_feed_differences"
    # The first file of a table finds all its rows missing: live sync had sent none.
    assert value(found, health, table="customers", kind="missing_in_db") == missing == 2
    assert value(found, "aljex_sync_last_live_event_timestamp_seconds") == pytest.approx(
        metrics._seconds(last_live)
    )
    assert value(found, "aljex_sync_last_morning_file_timestamp_seconds") == pytest.approx(
        metrics._seconds(last_file)
    )
    # The hooks are part of the same exposition.
    assert any(name == "aljex_sync_journal_queue_depth" for name, _ in found)


def test_metrics_need_the_admin_credentials(sqlite_url, tmp_path):
    with RunningService(admin_settings(sqlite_url, tmp_path)) as running:
        url = f"http://127.0.0.1:{running.service.http_port}/metrics"
        assert httpx.get(url, timeout=30).status_code == 401
        assert httpx.get(url, auth=LIVE_AUTH, timeout=30).status_code == 401


def test_metrics_say_the_database_is_down_and_still_answer(tmp_path):
    engine = open_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'folder.db'}")
    try:
        found = samples(metrics.exposition(metrics.registry_for(engine)).decode())
    finally:
        engine.dispose()
    assert value(found, "aljex_sync_database_up") == 0
    assert not any(name.startswith("aljex_sync_journal_events") for name, _ in found)


def test_a_served_request_shows_in_the_request_group_and_queue_metrics(sqlite_url, tmp_path):
    labels = {"table": "metered", "action": "create", "status": "200"}
    with RunningService(admin_settings(sqlite_url, tmp_path)) as running:
        before = samples(
            httpx.get(
                f"http://127.0.0.1:{running.service.http_port}/metrics",
                auth=ADMIN_AUTH,
                timeout=30,
            ).text
        )
        reply = httpx.post(
            running.url,
            content=b"web_sync_table_name=metered&web_sync_action=create&id=1",
            auth=LIVE_AUTH,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=30,
        )
        assert reply.status_code == 200
        found = samples(
            httpx.get(
                f"http://127.0.0.1:{running.service.http_port}/metrics",
                auth=ADMIN_AUTH,
                timeout=30,
            ).text
        )
    requests = "aljex_sync_live_requests_total"
    assert value(found, requests, **labels) - value(before, requests, **labels) == 1
    latency = "aljex_sync_live_request_seconds_count"
    assert value(found, latency, **labels) - value(before, latency, **labels) == 1
    groups = "aljex_sync_journal_group_size_count"
    assert value(found, groups) > value(before, groups)
    assert value(found, "aljex_sync_journal_queue_depth") == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_database_up_is_0_while_the_database_refuses_every_write_as_healthz_is_503(
    database_url, tmp_path
):
    """A full disk: every read works, every request gets 503. The metric says what
    /healthz says, from the same record of the refused request, until one lands."""
    with RunningService(admin_settings(database_url, tmp_path)) as running:
        base = f"http://127.0.0.1:{running.service.http_port}"

        def up() -> float:
            scrape = httpx.get(f"{base}/metrics", auth=ADMIN_AUTH, timeout=30)
            return value(samples(scrape.text), "aljex_sync_database_up")

        def health() -> int:
            return httpx.get(f"{base}/healthz", timeout=30).status_code

        assert (up(), health()) == (1, 200)
        engine = running.engine()
        with full_disk(engine):
            assert post_note(running, "1") == 503
            refused = (up(), health())
            found = samples(httpx.get(f"{base}/metrics", auth=ADMIN_AUTH, timeout=30).text)
        engine.dispose()
        assert refused == (0, 503)
        # What can be read still is: the database is not gone, it refuses to write.
        assert any(name == "aljex_sync_morning_rows_total" for name, _ in found)
        assert post_note(running, "2") == 200
        assert (up(), health()) == (1, 200)
