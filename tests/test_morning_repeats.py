"""A morning file that gives a key more than once: its last row is kept, and the rows left
out are counted and told (log line, ``_aljex_files``, ``load``, ``status``, the dashboard).

Through the real loader on SQLite, PostgreSQL and MariaDB; one file through OpenSSH's sftp.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import httpx
from click.testing import CliRunner
from sqlalchemy import insert

from aljex_sync.cli import main
from aljex_sync.clock import utcnow
from aljex_sync.store.schema import tombstones

from .admin_support import ADMIN_AUTH, admin_settings
from .support import RunningService, sftp_upload
from .test_morning import Receiver, file_log, table_rows, write_csv
from .test_operations import write_config

NOTE = "a key given earlier in the file; the last row of each key was kept"


def cut_and_concatenated(kept: int, repeated: int) -> list[list[str]]:
    """A Loads file whose first ``repeated`` keys come again, with new values, at its end:
    a file cut and concatenated. More rows than one staging batch."""
    rows = [[str(i), "OPEN", f"first {i}"] for i in range(kept)]
    return rows + [[str(i), "COVERED", f"again {i}"] for i in range(repeated)]


def test_rows_that_repeat_a_key_are_counted_and_logged_as_a_warning(database_url, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aljex_sync.morning")
    r = Receiver(database_url, tmp_path)
    rows = cut_and_concatenated(1500, 300)
    path = write_csv(tmp_path / "Loads.csv", ["id", "status", "note"], rows)
    report = r.load(path)
    assert report.status == "loaded", report.error
    assert (report.rows_read, report.counts.repeated, report.counts.inserted) == (1800, 300, 1500)
    [line] = [rec for rec in caplog.records if rec.name == "aljex_sync.morning"]
    assert line.levelname == "WARNING"
    assert line.getMessage().startswith("Loads.csv -> loads (window) loaded: 1800 rows read,")
    assert line.getMessage().endswith(f"; 300 rows repeat {NOTE}")
    [logged] = file_log(r.engine)
    assert (logged["status"], logged["rows_read"], logged["inserted"]) == ("loaded", 1800, 1500)
    assert logged["error"] == f"300 rows repeat {NOTE}"
    # Which row wins is unchanged: each key's last.
    loaded = table_rows(r.engine, "SELECT id, status, note FROM loads")
    assert len(loaded) == 1500
    by_key = {row["id"]: (row["status"], row["note"]) for row in loaded}
    assert by_key["0"] == ("COVERED", "again 0") and by_key["299"] == ("COVERED", "again 299")
    assert by_key["300"] == ("OPEN", "first 300")
    r.engine.dispose()


def test_a_file_without_repeats_warns_of_none(database_url, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aljex_sync.morning")
    r = Receiver(database_url, tmp_path)
    path = write_csv(tmp_path / "Loads.csv", ["id", "status"], [["1", "OPEN"], ["2", "OPEN"]])
    report = r.load(path)
    assert (report.status, report.counts.repeated, report.warning_text()) == ("loaded", 0, "")
    assert [rec.levelname for rec in caplog.records if rec.name == "aljex_sync.morning"] == ["INFO"]
    assert file_log(r.engine)[0]["error"] is None
    r.engine.dispose()


def test_a_key_given_three_times_counts_two_repeats_and_keeps_its_last_row(database_url, tmp_path):
    r = Receiver(database_url, tmp_path)
    rows = [["K1", "a"], ["K2", "b"], ["K1", "c"], ["K3", "d"], ["K1", "e"]]
    report = r.load(write_csv(tmp_path / "Carriers.csv", ["id", "name"], rows))
    assert (report.status, report.counts.repeated) == ("loaded", 2)
    assert report.warning_text() == f"2 rows repeat {NOTE}"
    loaded = table_rows(r.engine, "SELECT id, name FROM carriers ORDER BY id")
    assert loaded == [
        {"id": "K1", "name": "e"},
        {"id": "K2", "name": "b"},
        {"id": "K3", "name": "d"},
    ]
    r.engine.dispose()


def test_one_repeated_row_is_told_in_the_singular(database_url, tmp_path):
    r = Receiver(database_url, tmp_path)
    rows = [["K1", "a"], ["K1", "b"]]
    report = r.load(write_csv(tmp_path / "Carriers.csv", ["id", "name"], rows))
    assert report.warning_text() == f"1 row repeats {NOTE}"
    r.engine.dispose()


def test_a_later_unchanged_row_of_a_key_wins_over_an_earlier_changed_one(database_url, tmp_path):
    """SQLite stages rows the table holds as they are apart from the others: the file's
    order must still decide, so the row the table already holds stays."""
    r = Receiver(database_url, tmp_path)
    header = ["id", "name"]
    assert r.load(write_csv(tmp_path / "a" / "Carriers.csv", header, [["K1", "old"]])).status == (
        "loaded"
    )
    again = [["K1", "new"], ["K2", "x"], ["K1", "old"]]
    report = r.load(write_csv(tmp_path / "b" / "Carriers.csv", header, again))
    assert (report.status, report.counts.repeated, report.counts.differing) == ("loaded", 1, 0)
    loaded = table_rows(r.engine, "SELECT id, name FROM carriers ORDER BY id")
    assert loaded == [{"id": "K1", "name": "old"}, {"id": "K2", "name": "x"}]
    r.engine.dispose()


def test_repeats_of_a_composite_key_are_counted(database_url, tmp_path):
    stops = {"key": ["load_id", "stop"], "mode": "full", "files": ["stops*.csv"]}
    r = Receiver(database_url, tmp_path, tables={"stops": stops})
    rows = [["L1", "1", "Newark"], ["L1", "2", "Camden"], ["L2", "1", "Trenton"]]
    rows += [["L1", "2", "Edison"], ["L2", "2", "Paterson"], ["L1", "1", "Hoboken"]]
    report = r.load(write_csv(tmp_path / "stops_1.csv", ["load_id", "stop", "city"], rows))
    assert (report.status, report.counts.repeated, report.counts.inserted) == ("loaded", 2, 4)
    r.engine.dispose()


def test_repeats_are_counted_apart_from_keys_a_live_delete_keeps_out(database_url, tmp_path):
    """A key live sync deleted after the export leaves the stage too: not a repeat."""
    r = Receiver(database_url, tmp_path)
    a_day = timedelta(days=1)
    with r.engine.begin() as conn:
        conn.execute(
            insert(tombstones),
            [{"table_name": "carriers", "record_key": "K2", "deleted_at": utcnow() + a_day}],
        )
    rows = [["K1", "a"], ["K2", "b"], ["K2", "c"], ["K3", "d"], ["K1", "e"]]
    report = r.load(write_csv(tmp_path / "Carriers.csv", ["id", "name"], rows))
    assert (report.status, report.counts.repeated, report.counts.inserted) == ("loaded", 2, 2)
    assert report.counts.skipped_newer == 1
    r.engine.dispose()


def test_a_dry_run_counts_the_repeats_too(database_url, tmp_path):
    r = Receiver(database_url, tmp_path)
    rows = [["K1", "a"], ["K1", "b"], ["K2", "c"]]
    report = r.load(write_csv(tmp_path / "Carriers.csv", ["id", "name"], rows), dry_run=True)
    assert (report.status, report.counts.repeated) == ("dry-run", 1)
    assert f"1 row repeats {NOTE}" in report.summary()
    r.engine.dispose()


def test_load_command_status_and_files_show_the_repeats(database_url, tmp_path):
    config = write_config(tmp_path, database_url)
    rows = [["K1", "a"], ["K2", "b"], ["K1", "c"], ["K2", "d"], ["K3", "e"]]
    path = write_csv(tmp_path / "out" / "Carriers.csv", ["id", "name"], rows)
    runner = CliRunner()
    loaded = runner.invoke(main, ["-c", str(config), "load", str(path)])
    assert loaded.exit_code == 0, loaded.output
    assert "Carriers.csv -> carriers (full): loaded" in loaded.output
    assert f"  warning: 2 rows repeat {NOTE}" in loaded.output
    assert "rows read" in loaded.output and "│ 5 " in loaded.output
    status = runner.invoke(main, ["-c", str(config), "status", "--json"])
    assert status.exit_code == 0, status.output
    [recent] = json.loads(status.output)["files"]
    assert (recent["status"], recent["error"]) == ("loaded", f"2 rows repeat {NOTE}")
    listed = runner.invoke(main, ["-c", str(config), "files", "--json"])
    assert json.loads(listed.output)[0]["reason"] == f"2 rows repeat {NOTE}"
    shown = runner.invoke(main, ["-c", str(config), "status"])
    assert "notes" in shown.output and "repeat" in shown.output  # folded to the width


def test_an_upload_by_sftp_with_repeats_is_told_in_the_log_and_on_the_dashboard(
    sqlite_url, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="aljex_sync.morning")
    settings = admin_settings(sqlite_url, tmp_path)
    local = write_csv(tmp_path / "out" / "Loads.csv", ["id", "status"], [["1", "A"], ["1", "B"]])
    with RunningService(settings) as running:
        result = sftp_upload(running.service.sftp.port, [f"put {local}"], tmp_path / "client")
        assert result.returncode == 0, result.stderr
        assert running.service.loads.wait_idle(30)
        page = httpx.get(
            f"http://127.0.0.1:{running.service.http_port}/admin/", auth=ADMIN_AUTH, timeout=30
        ).text
        engine = running.engine()
        assert table_rows(engine, "SELECT id, status FROM loads") == [{"id": "1", "status": "B"}]
        [logged] = file_log(engine)
        engine.dispose()
    assert logged["error"] == f"1 row repeats {NOTE}"
    assert f"<td>1 row repeats {NOTE}</td>" in page
    warned = [rec for rec in caplog.records if rec.levelname == "WARNING"]
    assert [rec.getMessage().split(": ")[0] for rec in warned] == [
        "Loads.csv -> loads (window) loaded"
    ]
    assert warned[0].getMessage().endswith(f"; 1 row repeats {NOTE}")
