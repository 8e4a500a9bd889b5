"""What the admin page reads, checked against the database with SQL of the test's own."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select

from aljex_sync.clock import utcnow
from aljex_sync.dashboard import HOURS, read_event, read_overview
from aljex_sync.store.schema import events

from .admin_support import (
    RAGGED,
    a_day,
    admin_settings,
    count_events,
    count_files,
    count_rows,
    scalar,
)
from .support import RunningService


@pytest.fixture
def day(database_url, tmp_path):
    with RunningService(admin_settings(database_url, tmp_path)) as running:
        a_day(running, tmp_path)
        engine = running.engine()
        yield engine
        engine.dispose()


def test_dashboard_counts_per_table_match_the_database(day):
    overview = read_overview(day)
    by_name = {t.name: t for t in overview.tables}
    assert by_name["employees"].rows == count_rows(day, "employees") == 3
    assert by_name["customers"].rows == count_rows(day, "customers") == 2
    last = scalar(
        day,
        select(func.max(events.c.received_at)).where(
            events.c.table_name == "employees", events.c.status == "applied"
        ),
    )
    assert by_name["employees"].last_live == last
    customers_file = by_name["customers"].last_file
    assert customers_file is not None
    assert (customers_file.name, customers_file.status) == ("Customers.csv", "loaded")
    assert (customers_file.rows_read, customers_file.inserted) == (2, 2)
    # A held record's table is listed though it was never created.
    assert by_name["invoicing"].held == 1 and by_name["invoicing"].rows is None
    assert overview.held == count_events(day, events.c.status == "held") == 1
    assert overview.held_by_reason == [("invoicing", "key field 'pro_num' is missing", 1)]


def test_dashboard_feeds_count_the_last_hour_and_day_and_rejections_by_reason(day):
    overview = read_overview(day)
    live, morning = overview.feeds
    journal = count_events(day)
    assert (live.name, live.last_hour, live.last_day) == ("live", journal, journal)
    assert sum(n for _, n in live.hourly) == journal == 6
    assert len(live.hourly) == HOURS and live.hourly[-1][1] == journal
    assert live.rejected == [("unknown action 'explode'; expected create, update or delete", 1)]
    assert (morning.last_hour, morning.last_day) == (2, 2) == (count_files(day),) * 2
    assert morning.rejected == [("failed: " + RAGGED, 1)]


def test_dashboard_lists_files_by_status_with_reasons_and_the_latest_events(day):
    overview = read_overview(day)
    assert overview.files_by_status == {"loaded": 1, "failed": 1}
    (problem,) = overview.problem_files
    assert (problem.name, problem.status, problem.error) == ("Carriers.csv", "failed", RAGGED)
    ids = [e.id for e in overview.events]
    assert ids == sorted(ids, reverse=True) and len(ids) == count_events(day)
    assert overview.events_by_status == {"applied": 4, "held": 1, "rejected": 1}


def test_hourly_chart_puts_each_event_in_its_hour_and_drops_older_ones(database_url, tmp_path):
    with RunningService(admin_settings(database_url, tmp_path)) as running:
        engine = running.engine()
        now = utcnow().replace(minute=30, second=0, microsecond=0)
        ages = [timedelta(minutes=10), timedelta(hours=5), timedelta(hours=5, minutes=5)]
        ages += [timedelta(hours=30), timedelta(hours=HOURS + 2)]
        with engine.begin() as conn:
            for age in ages:
                conn.execute(
                    insert(events).values(
                        received_at=now - age,
                        source="live",
                        remote_addr="127.0.0.1",
                        status="applied",
                        body=b"",
                    )
                )
        overview = read_overview(engine, now=now)
        engine.dispose()
    live = overview.feeds[0]
    counts = {hour: n for hour, n in live.hourly if n}
    hour = now.replace(minute=0)
    assert counts == {
        hour: 1,
        hour - timedelta(hours=5): 2,
        hour - timedelta(hours=30): 1,
    }
    assert (live.last_hour, live.last_day) == (1, 3)


def test_read_event_returns_the_raw_body_as_it_came(day):
    event_id = scalar(day, select(func.max(events.c.id)).where(events.c.action == "update"))
    event = read_event(day, event_id)
    assert event is not None and event.status == "applied" and event.table == "employees"
    assert b"%3Cscript%3E" in event.body
    assert read_event(day, 10**9) is None


def test_dashboard_of_an_empty_database_has_no_tables(database_url, tmp_path):
    with RunningService(admin_settings(database_url, tmp_path)) as running:
        engine = running.engine()
        overview = read_overview(engine)
        engine.dispose()
    assert overview.tables == [] and overview.events == [] and overview.held == 0
    assert all(n == 0 for feed in overview.feeds for _, n in feed.hourly)
