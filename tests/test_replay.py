"""Replays at the same time: two operators, or cron and a hand run, or a hand run and the
admin page's button. Each held event is applied once, and makes one history version.

Real journals and real `aljex-sync replay` processes on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy import Engine, text

from aljex_sync import config
from aljex_sync.clock import utcnow
from aljex_sync.journal import Journal
from aljex_sync.messages import Outcome, Received
from aljex_sync.replay_lock import only_replay
from aljex_sync.store.database import open_engine

from .admin_support import ADMIN_AUTH, admin_settings, post, record
from .support import RunningService
from .test_admin import get, press_replay, token_of
from .test_operations import run, write_config

HELD = 400  # enough that a replay of them all outlasts a second process's start


def loads_without_their_key(count: int) -> list[bytes]:
    """Loads records that name no ``id``, Loads' key: each is held, until ``key = ["pro"]``."""
    return [
        f"web_sync_table_name=loads&web_sync_action=create&pro=P{i}&status=OPEN".encode()
        for i in range(count)
    ]


def journal_held(config_path: Path, count: int) -> None:
    settings = config.load(config_path, env={})
    journal = Journal(open_engine(settings.database.url), settings)
    journal.start()
    now = utcnow()
    outcomes = journal.write_group(
        [Received(body, "127.0.0.1", now) for body in loads_without_their_key(count)]
    )
    journal.close()
    assert all(isinstance(o, Outcome) and o.status == "held" for o in outcomes)


def fix_the_key(config_path: Path) -> None:
    config_path.write_text(config_path.read_text() + '\n[tables.loads]\nkey = ["pro"]\n')


def scalar(engine: Engine, sql: str) -> object:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def assert_each_applied_once(engine: Engine, count: int) -> None:
    events = scalar(engine, "SELECT COUNT(*) FROM _aljex_events WHERE status = 'applied'")
    assert events == count
    assert scalar(engine, "SELECT COUNT(*) FROM _aljex_events") == count
    assert scalar(engine, "SELECT COUNT(*) FROM loads") == count
    versions = "SELECT COUNT(*) FROM loads__history"
    assert scalar(engine, versions) == count  # one version a record: none applied twice
    most = "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM loads__history GROUP BY pro) AS v"
    assert scalar(engine, most) == 1


def replayed(output: str) -> dict[str, int]:
    """The counts of a replay's last line, ``Replayed: 3 applied, 1 held``."""
    found = re.search(r"^Replayed: (.*)$", output, re.M)
    if found is None:
        return {}
    return {s: int(n) for n, s in (part.split(" ", 1) for part in found[1].split(", "))}


def test_two_replays_started_together_apply_each_held_event_once(database_url, tmp_path):
    path = write_config(tmp_path, database_url)
    journal_held(path, HELD)
    fix_the_key(path)
    command = [sys.executable, "-m", "aljex_sync.cli", "-c", str(path), "replay"]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    results = [(p.pid, *p.communicate(timeout=300)[:1], p.returncode) for p in processes]
    refused = [(pid, out, code) for pid, out, code in results if "another replay is running" in out]
    ran = [(pid, out, code) for pid, out, code in results if (pid, out, code) not in refused]
    # Started together, the second finds the first at work (on a slow machine it may
    # find nothing left to do instead): either way nothing is applied twice.
    for _, out, code in refused:
        [other] = [p for p, _, _ in ran]
        assert code == 1
        assert out == f"error: another replay is running (pid {other}); try again when it ends\n"
    for _, out, code in ran:
        assert code == 0, out
    assert sum(replayed(out).get("applied", 0) for _, out, _ in ran) == HELD
    engine = open_engine(database_url)
    assert_each_applied_once(engine, HELD)
    engine.dispose()


def test_journals_replaying_at_once_each_take_an_event_the_other_did_not(database_url, tmp_path):
    """Below the replay lock (a second host on an older version, the admin page's button
    of another receiver): each event is claimed in its own write, so one journal applies it,
    and the other is told that another replay took it."""
    path = write_config(tmp_path, database_url)
    journal_held(path, HELD)
    fix_the_key(path)
    settings = config.load(path, env={})
    journals = [Journal(open_engine(settings.database.url), settings) for _ in range(2)]
    outcomes: list[list[Outcome]] = [[], []]
    start = threading.Barrier(2)

    def replay(i: int) -> None:
        start.wait()
        outcomes[i] = list(journals[i].replay())

    threads = [threading.Thread(target=replay, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for journal in journals:
        journal.close()
    applied = [o.event_id for found in outcomes for o in found if o.status == "applied"]
    assert sorted(applied) == list(range(1, HELD + 1))
    taken = [o for found in outcomes for o in found if o.status != "applied"]
    assert {(o.status, o.reason) for o in taken} <= {("taken", "replayed by another replay")}
    engine = open_engine(database_url)
    assert_each_applied_once(engine, HELD)
    engine.dispose()


def test_a_replay_while_another_runs_is_refused_at_once_with_its_pid(database_url, tmp_path):
    path = write_config(tmp_path, database_url)
    journal_held(path, 3)
    fix_the_key(path)
    engine = open_engine(database_url)
    with only_replay(engine):  # a replay at work, in this process
        code, out = run("-c", str(path), "replay")
    assert (code, out) == (
        1,
        f"error: another replay is running (pid {os.getpid()}); try again when it ends\n",
    )
    assert scalar(engine, "SELECT COUNT(*) FROM _aljex_events WHERE status = 'held'") == 3
    code, out = run("-c", str(path), "replay")  # once it has ended
    assert (code, out.splitlines()[-1]) == (0, "Replayed: 3 applied")
    engine.dispose()


def test_the_admin_button_while_a_hand_replay_runs_says_so_and_changes_nothing(
    database_url, tmp_path
):
    """serve replays only when the button is pressed; then it takes the same lock."""
    fixed = admin_settings(database_url, tmp_path, tables={"invoicing": {"key": ["id"]}})
    with RunningService(fixed) as running:
        assert post(running, record("invoicing", "create", total="5")).status_code == 200
        engine = running.engine()
        token = token_of(get(running, "/admin/", auth=ADMIN_AUTH).text)
        with only_replay(engine):
            refused = press_replay(running, {"token": token})
        assert refused.status_code == 409
        assert f"another replay is running (pid {os.getpid()}); try again when it ends" in (
            refused.text
        )
        assert scalar(engine, "SELECT COUNT(*) FROM _aljex_events WHERE status = 'held'") == 1
        assert press_replay(running, {"token": token}).status_code == 200  # once it ended
        engine.dispose()
