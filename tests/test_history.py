"""Change history: `<table>__history` keeps every version of each record, on SQLite,
PostgreSQL and MariaDB, written by live sync and by morning files in the change's own
transaction; `aljex-sync history` prints it; docs/database.md's example queries run on it.

Live changes go through the journal (the writer the service uses, with times set here) or
over HTTP to the running service; morning files through the MorningLoader.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, MetaData, Table, inspect, select, text

from aljex_sync.cli import main
from aljex_sync.errors import MalformedRequest
from aljex_sync.messages import Outcome, Received
from aljex_sync.wire import check_table_name

from . import test_morning
from .support import TEST_PASSWORD, make_settings
from .test_typed_views import write_csv

T0 = datetime(2026, 3, 2, 8, 0)
COLUMNS = (
    "_aljex_action",
    "_aljex_valid_from",
    "_aljex_valid_to",
    "_aljex_source",
    "_aljex_event_id",
)


class Receiver(test_morning.Receiver):
    """The journal and the MorningLoader on one database, as the service has them."""

    def live(
        self, *records: dict[str, str], at: datetime = T0, status: str = "applied"
    ) -> list[Outcome]:
        """Write live records as one group, received at ``at``, ``at`` + 1s, ...; each
        must be journaled with ``status``."""
        received = [
            Received(urlencode(r).encode(), "203.0.113.10", at + timedelta(seconds=i))
            for i, r in enumerate(records)
        ]
        outcomes = self.journal.write_group(received)
        for outcome in outcomes:
            assert isinstance(outcome, Outcome) and outcome.status == status, outcome
        return outcomes  # type: ignore[return-value]

    def morning(self, name: str, header: list[str], data: list[list[str]], started: datetime):
        path = write_csv(self.settings.morning.inbox.parent / name, header, data)
        report = self.loader.load(path, started_at=started)
        assert report.status == "loaded", report.error
        return report


@pytest.fixture
def receiver(database_url, tmp_path):
    r = Receiver(database_url, tmp_path)
    yield r
    r.journal.close()


def record(table: str, action: str, **fields: str) -> dict[str, str]:
    return {"web_sync_table_name": table, "web_sync_action": action, **fields}


def rows(engine: Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text(sql))]


def versions(engine: Engine, table: str, *columns: str) -> list[tuple[Any, ...]]:
    """Each version as (id, *columns, action, from, to, source, event id), in order.

    Read through the reflected table, so that SQLite's timestamps come back as datetimes.
    """
    history = Table(f"{table}__history", MetaData(), autoload_with=engine)
    names = ["id", *columns, *COLUMNS]
    query = select(*(history.c[n] for n in names)).order_by(history.c._aljex_version)
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_live_changes_make_whole_versions_each_closed_by_the_next(receiver):
    (created,) = receiver.live(record("loads", "create", id="1", status="OPEN", weight="100"))
    t1, t2 = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    (updated,) = receiver.live(record("loads", "update", id="1", status="COVERED"), at=t1)
    (deleted,) = receiver.live(record("loads", "delete", id="1"), at=t2)
    assert versions(receiver.engine, "loads", "status", "weight") == [
        ("1", "OPEN", "100", "create", T0, t1, "live", created.event_id),
        # The update sent one field: its version holds the whole record all the same.
        ("1", "COVERED", "100", "update", t1, t2, "live", updated.event_id),
        ("1", "COVERED", "100", "delete", t2, t2, "live", deleted.event_id),
    ]
    assert [v[1] for v in versions(receiver.engine, "loads", "_aljex_deleted_at")] == [
        None,
        None,
        t2,
    ]


def test_a_group_with_a_key_twice_versions_each_of_its_changes(receiver):
    receiver.live(
        record("loads", "create", id="1", status="OPEN"),
        record("loads", "create", id="2", status="OPEN"),
        record("loads", "update", id="1", status="COVERED"),
        record("loads", "update", id="1", status="DELIVERED"),
    )
    s = timedelta(seconds=1)
    assert [v[:6] for v in versions(receiver.engine, "loads", "status")] == [
        ("1", "OPEN", "create", T0, T0 + 2 * s, "live"),
        ("2", "OPEN", "create", T0 + s, None, "live"),
        ("1", "COVERED", "update", T0 + 2 * s, T0 + 3 * s, "live"),
        ("1", "DELIVERED", "update", T0 + 3 * s, None, "live"),
    ]


def test_a_soft_delete_is_versioned_as_a_hard_one(database_url, tmp_path):
    r = Receiver(database_url, tmp_path, tables={"quotes": {"delete": "soft", "history": True}})
    try:
        r.live(record("quotes", "create", id="Q1", status="OPEN"))
        r.live(record("quotes", "delete", id="Q1"), at=T0 + timedelta(hours=1))
        t1 = T0 + timedelta(hours=1)
        assert [v[:5] for v in versions(r.engine, "quotes", "status")] == [
            ("Q1", "OPEN", "create", T0, t1),
            ("Q1", "OPEN", "delete", t1, t1),
        ]
    finally:
        r.journal.close()


# With several receivers, a change received earlier can be journaled after one received
# later (docs/database.md, "Concurrent changes to one key"): the row does not take it, and
# it makes no version.


def test_an_older_update_the_row_did_not_take_makes_no_version(receiver):
    (created,) = receiver.live(record("loads", "create", id="1", status="OPEN"))
    t2 = T0 + timedelta(hours=2)
    (updated,) = receiver.live(record("loads", "update", id="1", status="COVERED"), at=t2)
    older = record("loads", "update", id="1", status="BOOKED")
    receiver.live(older, at=T0 + timedelta(hours=1), status="superseded")
    assert versions(receiver.engine, "loads", "status") == [
        ("1", "OPEN", "create", T0, t2, "live", created.event_id),
        ("1", "COVERED", "update", t2, None, "live", updated.event_id),
    ]


@pytest.mark.parametrize("delete", ["hard", "soft"])
def test_an_older_delete_that_deletes_nothing_makes_no_version(database_url, tmp_path, delete):
    r = Receiver(database_url, tmp_path, tables={"quotes": {"delete": delete, "history": True}})
    try:
        (created,) = r.live(record("quotes", "create", id="Q1", status="OPEN"))
        t2 = T0 + timedelta(hours=2)
        (updated,) = r.live(record("quotes", "update", id="Q1", status="WON"), at=t2)
        r.live(record("quotes", "delete", id="Q1"), at=T0 + timedelta(hours=1), status="superseded")
        assert versions(r.engine, "quotes", "status", "_aljex_deleted_at") == [
            ("Q1", "OPEN", None, "create", T0, t2, "live", created.event_id),
            ("Q1", "WON", None, "update", t2, None, "live", updated.event_id),
        ]
        # A newer delete still deletes, and is versioned.
        t3 = T0 + timedelta(hours=3)
        (deleted,) = r.live(record("quotes", "delete", id="Q1"), at=t3)
        assert versions(r.engine, "quotes", "status")[1:] == [
            ("Q1", "WON", "update", t2, t3, "live", updated.event_id),
            ("Q1", "WON", "delete", t3, t3, "live", deleted.event_id),
        ]
    finally:
        r.journal.close()


def test_morning_files_version_only_the_rows_they_change(receiver):
    header = ["id", "status"]
    first = receiver.morning("Loads.csv", header, [["1", "OPEN"], ["2", "OPEN"]], T0)
    day2 = T0 + timedelta(days=1)
    data = [["1", "COVERED"], ["2", "OPEN"], ["3", "OPEN"]]
    second = receiver.morning("Loads_0303.csv", header, data, day2)
    t1, t2 = first.snapshot_at, second.snapshot_at
    assert second.counts.inserted == 1 and second.counts.updated == 2
    assert [v[:6] for v in versions(receiver.engine, "loads", "status")] == [
        ("1", "OPEN", "insert", t1, t2, "Loads.csv"),
        ("2", "OPEN", "insert", t1, None, "Loads.csv"),  # unchanged: no second version
        ("1", "COVERED", "update", t2, None, "Loads_0303.csv"),
        ("3", "OPEN", "insert", t2, None, "Loads_0303.csv"),
    ]
    # The same file again, forced: it changes nothing, and adds no version.
    again = receiver.loader.load(
        receiver.settings.morning.inbox.parent / "Loads_0303.csv", force=True, started_at=day2
    )
    assert again.status == "loaded"
    assert len(versions(receiver.engine, "loads")) == 4


def test_morning_and_live_versions_follow_each_other(receiver):
    first = receiver.morning("Loads.csv", ["id", "status"], [["1", "OPEN"]], T0)
    later = first.snapshot_at + timedelta(hours=2)
    (live,) = receiver.live(record("loads", "update", id="1", status="COVERED"), at=later)
    # A file exported before that live change leaves the row, and makes no version.
    stale = receiver.morning("Loads_0304.csv", ["id", "status"], [["1", "OPEN"], ["2", "X"]], later)
    assert stale.counts.skipped_newer == 1
    assert versions(receiver.engine, "loads", "status") == [
        ("1", "OPEN", "insert", first.snapshot_at, later, "Loads.csv", None),
        ("1", "COVERED", "update", later, None, "live", live.event_id),
        ("2", "X", "insert", stale.snapshot_at, None, "Loads_0304.csv", None),
    ]


@pytest.mark.parametrize("delete", ["hard", "soft"])
def test_a_full_file_versions_the_rows_it_deletes(database_url, tmp_path, delete):
    tables_ = {"customers": {"history": True, "delete": delete}}
    r = Receiver(database_url, tmp_path, tables=tables_)
    try:
        header = ["id", "name"]
        first = r.morning("Customers.csv", header, [["A", "Acme"], ["B", "Bolt"]], T0)
        day2 = T0 + timedelta(days=1)
        second = r.morning("Customers_2.csv", header, [["A", "Acme"]], day2)
        t1, t2 = first.snapshot_at, second.snapshot_at
        assert second.counts.deleted == 1
        assert versions(r.engine, "customers", "name") == [
            ("A", "Acme", "insert", t1, None, "Customers.csv", None),
            ("B", "Bolt", "insert", t1, t2, "Customers.csv", None),
            ("B", "Bolt", "delete", t2, t2, "Customers_2.csv", None),
        ]
    finally:
        r.journal.close()


def test_columns_added_to_a_table_are_added_to_its_history(receiver):
    receiver.live(record("loads", "create", id="1", status="OPEN"))
    fields = {"status": "OPEN", "dock": "12"}
    receiver.live(record("loads", "update", id="1", **fields), at=T0 + timedelta(hours=1))
    history = {c["name"] for c in inspect(receiver.engine).get_columns("loads__history")}
    assert "dock" in history
    found = rows(receiver.engine, "SELECT dock FROM loads__history ORDER BY _aljex_version")
    assert found == [{"dock": None}, {"dock": "12"}]


def test_tables_keep_no_history_unless_configured(receiver):
    receiver.live(record("customers", "create", id="C1", name="Acme"))
    receiver.live(record("loads", "create", id="1", status="OPEN"))
    assert "loads__history" in tables(receiver.engine)
    assert "customers__history" not in tables(receiver.engine)
    assert receiver.settings.keeps_history("loads")
    assert not receiver.settings.keeps_history("customers")
    off = make_settings("sqlite://", receiver.settings.morning.inbox.parent, tables={})
    assert off.keeps_history("loads")
    off = make_settings("sqlite://", Path("."), tables={"loads": {"history": False}})
    assert not off.keeps_history("loads")


def test_turning_history_on_gives_the_rows_a_table_holds_a_first_version(database_url, tmp_path):
    r = Receiver(database_url, tmp_path)
    try:
        r.live(record("customers", "create", id="C1", name="Acme"))
        r.live(record("customers", "create", id="C2", name="Bolt"), at=T0 + timedelta(hours=1))
        r.live(record("customers", "delete", id="C2"), at=T0 + timedelta(hours=2))
    finally:
        r.journal.close()
    on = Receiver(database_url, tmp_path, tables={"customers": {"history": True}})
    try:
        assert versions(on.engine, "customers", "name") == [
            ("C1", "Acme", "existing", T0, None, "live", 1),
        ]
        later = T0 + timedelta(hours=3)
        on.live(record("customers", "update", id="C1", name="Acme Inc"), at=later)
        assert [v[:5] for v in versions(on.engine, "customers", "name")][1:] == [
            ("C1", "Acme Inc", "update", later, None),
        ]
    finally:
        on.journal.close()


def test_history_names_are_refused_as_table_names():
    with pytest.raises(MalformedRequest, match="reserved"):
        check_table_name("Loads__History")
    assert check_table_name("history") == "history"


def test_the_service_versions_what_it_receives_over_http(service):
    post = {"web_sync_table_name": "loads", "id": "7"}
    for action, status in (("create", "OPEN"), ("update", "COVERED")):
        reply = httpx.post(
            service.url,
            data=post | {"web_sync_action": action, "status": status},
            auth=("aljex", TEST_PASSWORD),
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
    engine = service.engine()
    try:
        found = versions(engine, "loads", "status")
        assert [v[:3] for v in found] == [("7", "OPEN", "create"), ("7", "COVERED", "update")]
        assert found[0][4] == found[1][3]  # closed when the next began
    finally:
        engine.dispose()


# -- the command ---------------------------------------------------------------------


def config_file(receiver: Receiver, tmp_path: Path) -> Path:
    path = tmp_path / "aljex-sync.toml"
    path.write_text(
        f'[database]\nurl = "{receiver.settings.database.url}"\n'
        '[live]\npassword = "x"\n[morning]\npassword = "x"\n'
    )
    return path


def test_history_command_prints_each_version_and_what_it_changed(receiver, tmp_path):
    receiver.live(record("loads", "create", id="1", status="OPEN", weight="100", miles=""))
    receiver.live(
        record("loads", "update", id="1", status="COVERED", notes="x" * 200),
        at=T0 + timedelta(hours=1),
    )
    receiver.live(record("loads", "delete", id="1"), at=T0 + timedelta(hours=2))
    receiver.journal.close()
    config = config_file(receiver, tmp_path)
    result = CliRunner().invoke(main, ["-c", str(config), "history", "loads", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:4] == [
        "loads 1: 3 version(s), oldest first",
        "#1 create 2026-03-02 08:00:00 -> 2026-03-02 09:00:00 (event 1)",
        "    id: 1",
        "    status: OPEN",
    ]
    assert "    weight: 100" in lines and "    miles: " not in lines
    assert "    status: OPEN -> COVERED" in lines
    assert lines[-1] == "#3 delete at 2026-03-02 10:00:00 (event 3)"
    assert all(len(line) <= 80 for line in lines)
    as_json = CliRunner().invoke(main, ["-c", str(config), "history", "loads", "1", "--json"])
    found = json.loads(as_json.output)
    assert [v["action"] for v in found] == ["create", "update", "delete"]
    assert found[1]["changed"] == ["status", "notes"]
    assert found[1]["fields"]["weight"] == "100"


def test_replaying_an_applied_event_by_id_is_refused_and_makes_no_version(receiver, tmp_path):
    receiver.live(record("loads", "create", id="1", status="OPEN"))
    receiver.live(record("loads", "update", id="1", status="COVERED"), at=T0 + timedelta(hours=1))
    receiver.journal.close()
    config = config_file(receiver, tmp_path)
    for event in ("1", "2"):
        result = CliRunner().invoke(main, ["-c", str(config), "replay", "--event", event])
        assert (result.exit_code, result.output) == (
            1,
            f"error: event {event} is applied; replay applies only held events"
            " (and rejected ones with --include-rejected)\n",
        )
    as_json = CliRunner().invoke(main, ["-c", str(config), "history", "loads", "1", "--json"])
    assert [v["action"] for v in json.loads(as_json.output)] == ["create", "update"]
    journaled = rows(receiver.engine, "SELECT status, applied_at FROM _aljex_events ORDER BY id")
    assert [(r["status"], r["applied_at"] is not None) for r in journaled] == [
        ("applied", True),
        ("applied", True),
    ]


def test_history_command_says_why_it_has_nothing_to_show(receiver, tmp_path):
    receiver.live(record("customers", "create", id="C1", name="Acme"))
    receiver.live(record("loads", "create", id="1", status="OPEN"))
    receiver.journal.close()
    config = str(config_file(receiver, tmp_path))
    cases = {
        ("nosuch", "1"): "no table nosuch in the database",
        ("customers", "C1"): "table customers keeps no history",
        ("loads", "1", "2"): "table loads has a key of 1 field(s) (id)",
    }
    for args, message in cases.items():
        result = CliRunner().invoke(main, ["-c", config, "history", *args])
        assert result.exit_code == 1 and message in result.output, result.output
    result = CliRunner().invoke(main, ["-c", config, "history", "loads", "404"])
    assert result.exit_code == 0 and result.output == "loads 404: no versions\n"


# -- docs/database.md ----------------------------------------------------------------


def documented_queries(dialect: str) -> tuple[str, str, str]:
    """docs/database.md's history queries: status changes, changes per day, time in status."""
    docs = (Path(__file__).parent.parent / "docs" / "database.md").read_text()
    section = docs.split("## Change history")[1].split("\n## ")[0]
    changes, per_day, in_status = [b.split("```")[0] for b in section.split("```sql")[1:4]]
    heading = {"postgresql": "-- PostgreSQL", "sqlite": "-- SQLite"}.get(
        dialect, "-- MariaDB / MySQL"
    )
    return changes, per_day, in_status.split(heading)[1].split("\n\n")[0]


def last_month() -> datetime:
    """Midnight UTC of the first day of last month."""
    today = datetime.now(UTC).replace(tzinfo=None)
    first = today.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=1)


def test_the_documented_queries_run_and_count_time_in_each_status(receiver):
    m = last_month()
    day, hour = timedelta(days=1), timedelta(hours=1)
    changes = [
        ("1", "create", "OPEN", m + day),
        ("1", "update", "COVERED", m + 2 * day),
        ("1", "update", "COVERED", m + 2 * day + 2 * hour),  # another field: same status
        ("1", "update", "DELIVERED", m + 2 * day + 6 * hour),
        ("2", "create", "COVERED", m + 3 * day),
        ("2", "update", "DELIVERED", m + 4 * day),
        ("2", "delete", "", m + 5 * day),
    ]
    for n, (key, action, status, at) in enumerate(changes):
        fields = {"status": status, "note": str(n)} if status else {}
        receiver.live(record("loads", action, id=key, **fields), at=at)
    status_changes, per_day, in_status = documented_queries(receiver.engine.dialect.name)
    found = [
        (r["id"], r["previous_status"], r["status"]) for r in rows(receiver.engine, status_changes)
    ]
    assert found == [
        ("1", None, "OPEN"),
        ("1", "OPEN", "COVERED"),
        ("1", "COVERED", "DELIVERED"),
        ("2", None, "COVERED"),
        ("2", "COVERED", "DELIVERED"),
    ]
    counted = {
        (str(r["day"])[:10], r["action"]): r["changes"] for r in rows(receiver.engine, per_day)
    }
    assert counted == {
        (f"{m + day:%Y-%m-%d}", "create"): 1,
        (f"{m + 2 * day:%Y-%m-%d}", "update"): 3,
        (f"{m + 3 * day:%Y-%m-%d}", "create"): 1,
        (f"{m + 4 * day:%Y-%m-%d}", "update"): 1,
        (f"{m + 5 * day:%Y-%m-%d}", "delete"): 1,
    }
    by_status = {r["status"]: r for r in rows(receiver.engine, in_status)}
    covered = by_status["COVERED"]
    assert covered["loads"] == 2
    assert round(float(covered["hours"]), 3) == 6 + 24  # load 1: 2 h + 4 h; load 2: a day
    assert round(float(covered["hours_per_load"]), 3) == 15
    assert round(float(by_status["OPEN"]["hours"]), 3) == 24
