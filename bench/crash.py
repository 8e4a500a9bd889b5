"""`make crash-test`: SIGKILL the server under load, again and again; lose nothing acknowledged.

For each backend and seed, the harness runs ``aljex-sync serve`` (in a process group of
its own: serve has a journal writer child and a fork server), feeds it with the
emulator's Live Sync senders (which retry through every restart), and SIGKILLs the whole
group at random moments: mostly while serving, some while still starting. After each
kill it restarts the server and times how long the first 200 takes. At the end it stops
the feed, stops the server, and checks every acknowledged record:

- its table holds the values it was acknowledged with, or those of a later change sent
  for the same key (a later change may have been committed without its reply arriving);
  an acknowledged delete leaves no live row unless a later change re-created it;
- its request body is in the journal (``_aljex_events``);
- on SQLite, ``PRAGMA integrity_check`` says ok.

A control proves the harness can see a loss: the same campaign against
``bench/ack_first.py``, a receiver that answers 200 before it commits, must lose records
on every seed. The exit status is 1 when any acknowledged record is lost (or the SQLite
file is damaged), 2 when the control went uncaught or a run could not be carried out.

    python -m bench.crash [--backends sqlite,postgresql] [--seeds 1,2,3,4,5] [--kills 8]

Results: a table on the terminal, and bench/results/crash.json and crash.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, MetaData, create_engine, inspect, select, text
from sqlalchemy import Table as SqlTable

from aljex_sync.catalog import key_for
from aljex_sync.emulate.sender import (
    LiveOptions,
    LiveReport,
    LiveTarget,
    encode_change,
    run_live,
)
from aljex_sync.emulate.state import load_state
from aljex_sync.emulate.world import LiveChange
from aljex_sync.store.database import normalize_url
from bench import scratch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RECEIVERS = ("aljex-sync", "ack-before-commit")
BACKENDS = ("sqlite", "postgresql")
USER, PASSWORD, PATH = "aljex", "crash-test", "/aljex/sync"
PROBE_TABLE = "crash_probe"
TODAY = date(2026, 11, 27)
START_TIMEOUT = 60.0  # a restart with no 200 by then is a failed run
STOP_TIMEOUT = 40.0  # SIGTERM, then SIGKILL
SETTLE_SECONDS = 2.0  # of feed after the last restart, so its retries land
MAX_EXAMPLES = 20

# Wide enough for the table when the output is a file or a pipe (make, CI).
console = Console(width=None if sys.stdout.isatty() else 140)


# -- the receiver under test -----------------------------------------------------------------


def _free_port() -> int:
    """A free port below the ephemeral range, so that no port-0 bind elsewhere on the
    machine takes it while the server is down between a kill and its restart."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(20000, 30000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 30000")


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


class Receiver:
    """The server process group: ``aljex-sync serve``, or the control in front of it."""

    def __init__(self, kind: str, work: Path, database_url: str, delay: float) -> None:
        self.kind = kind
        self.port = _free_port()
        inner = _free_port() if kind == "ack-before-commit" else self.port
        self.url = f"http://127.0.0.1:{self.port}{PATH}"
        self.config = work / "aljex-sync.toml"
        self.config.write_text(
            "\n".join(
                [
                    "[database]",
                    f"url = {json.dumps(database_url)}",
                    "[live]",
                    f'listen = "127.0.0.1:{inner}"',
                    f'path = "{PATH}"',
                    f'username = "{USER}"',
                    f'password = "{PASSWORD}"',
                    "[morning]",
                    "enabled = false",
                    "",
                ]
            )
        )
        serve = [
            str(Path(sys.executable).with_name("aljex-sync")),
            "-c",
            str(self.config),
            "--log-level",
            "warning",
            "serve",
        ]
        if kind == "ack-before-commit":
            serve = [
                sys.executable,
                "-m",
                "bench.ack_first",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--upstream",
                f"http://127.0.0.1:{inner}{PATH}",
                "--delay",
                str(delay),
                "--",
                *serve,
            ]
        self.command = serve
        self.log = (work / "serve.log").open("ab")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ALJEX_SYNC_")}
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> float:
        """Start the group; return the monotonic time it was started."""
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        return started

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group and wait until none of it runs."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._wait_group_gone(self.process.pid)
        self.process = None

    def stop(self) -> bool:
        """SIGTERM the group; True when it stopped by itself within STOP_TIMEOUT."""
        assert self.process is not None
        pid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        clean = True
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            clean = False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.process.wait()
        self._wait_group_gone(pid)
        self.process = None
        return clean

    @staticmethod
    def _wait_group_gone(pgid: int) -> None:
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        if self.running:
            self.kill()
        self.log.close()


class Probe:
    """Posts records of its own table until one is acknowledged: the restart-to-first-200
    clock. Every probe record acknowledged is checked like the feed's."""

    def __init__(self, url: str, seed: int) -> None:
        self.host, port = url.split("/")[2].split(":")
        self.port = int(port)
        self.seed = seed
        self.count = 0
        self.acked: list[LiveChange] = []
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.headers = {
            "Authorization": f"Basic {auth}",
            "Content-Type": "application/x-www-form-urlencoded",
        }

    def first_200(self, receiver: Receiver, deadline: float) -> float | None:
        """Post until a 200 (its monotonic time), the deadline, or the server's death."""
        while time.monotonic() < deadline and receiver.running:
            self.count += 1
            change = LiveChange(
                PROBE_TABLE,
                "create",
                {"id": f"{self.seed}-{self.count}", "sent_at": f"{time.time():.6f}"},
            )
            with contextlib.suppress(OSError, http.client.HTTPException):
                timeout = max(0.05, min(5.0, deadline - time.monotonic()))
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
                try:
                    conn.request("POST", PATH, body=encode_change(change), headers=self.headers)
                    response = conn.getresponse()
                    response.read()
                finally:
                    conn.close()
                if response.status == 200:
                    self.acked.append(change)
                    return time.monotonic()
            time.sleep(0.01)
        return None


# -- one seed ----------------------------------------------------------------------------------


@dataclass
class Kill:
    number: int
    phase: str  # "starting" (no 200 yet since the restart) or "serving"
    after_spawn: float  # seconds
    at: float  # seconds since the run started


@dataclass
class Loss:
    table: str
    key: str
    index: int | None  # in the feed; None for a probe record
    kind: str  # missing, stale, delete undone, not journaled
    detail: str = ""
    near_kill: str = ""


@dataclass
class SeedResult:
    receiver: str
    backend: str
    seed: int
    planned_kills: int = 0
    kills: int = 0
    kills_while_starting: int = 0
    sent: int = 0
    acknowledged: int = 0
    lost: int = 0
    not_journaled: int = 0
    integrity: str = "n/a"
    restart_seconds: list[float] = field(default_factory=list)
    feed_resumed_seconds: list[float] = field(default_factory=list)  # to the senders' 200
    clean_stop: bool = True
    feed: dict[str, Any] = field(default_factory=dict)
    losses: list[Loss] = field(default_factory=list)
    kill_log: list[Kill] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.not_journaled or self.integrity not in ("ok", "n/a"))


class FeedWatch:
    """The emulator's progress snapshots (about ten a second): when each change was made,
    and whether the senders have had a record acknowledged since a given count."""

    def __init__(self) -> None:
        self.progress: list[tuple[float, int]] = []  # (monotonic time, changes made)
        self.delivered = 0

    def update(self, report: LiveReport) -> None:
        self.progress.append((time.monotonic(), report.generated))
        self.delivered = report.delivered

    def delivery_after(self, count: int, deadline: float) -> float | None:
        """Wait until more than ``count`` records are acknowledged; when it was seen."""
        while time.monotonic() < deadline:
            if self.delivered > count:
                return time.monotonic()
            time.sleep(0.01)
        return None


@dataclass(frozen=True)
class Plan:
    receiver: str
    backend: str
    seed: int
    kills: int
    interval: tuple[float, float]
    early: float  # share of kills aimed at start-up
    rate: float
    concurrency: int
    delay: float
    postgres: str


@contextlib.contextmanager
def scratch_database(plan: Plan, work: Path) -> Iterator[str]:
    """A database of this seed's own: a SQLite file, or a PostgreSQL database dropped after."""
    if plan.backend == "sqlite":
        yield f"sqlite:///{work / 'aljex.db'}"
        return
    name = f"aljex_crash_{os.getpid()}_{plan.receiver.replace('-', '_')}_{plan.seed}"
    with scratch.scratch_database(plan.postgres, name) as url:
        yield url


def run_seed(plan: Plan) -> SeedResult:
    result = SeedResult(plan.receiver, plan.backend, plan.seed, plan.kills)
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f"aljex-crash-{plan.backend}-{plan.seed}-"))
    try:
        with scratch_database(plan, work) as url:
            _campaign(plan, work, url, result)
    except Exception as e:  # a run that could not be carried out is reported, not hidden
        result.error = f"{type(e).__name__}: {e}"
    finally:
        result.seconds = round(time.monotonic() - began, 1)
        if plan.receiver == "aljex-sync" and (result.error or result.failed):
            console.print(f"  kept {work} (database, emulator state, serve.log) to inspect")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _campaign(plan: Plan, work: Path, url: str, result: SeedResult) -> None:
    rng = random.Random(plan.seed)
    receiver = Receiver(plan.receiver, work, url, plan.delay)
    probe = Probe(receiver.url, plan.seed)
    state = load_state(work / "emulator.json", seed=plan.seed, today=TODAY, size="small")
    stop = threading.Event()
    watch = FeedWatch()
    progress = watch.progress
    reports: list[LiveReport] = []
    options = LiveOptions(rate=plan.rate, concurrency=plan.concurrency, retries=1000, backoff=0.05)
    target = LiveTarget(receiver.url, USER, PASSWORD, timeout=30.0)
    feed = threading.Thread(
        target=lambda: reports.append(
            run_live(
                state,
                target,
                options,
                progress=watch.update,
                stop=stop,
            )
        ),
        name="feed",
        daemon=True,
    )
    t0 = time.monotonic()
    kills: list[Kill] = []
    final: Kill | None = None  # the SIGTERM that ends the run, for telling when losses came
    startup = 1.0  # seconds to the first 200, the median of those measured so far
    spawned = t0
    try:
        spawned = receiver.spawn()
        if probe.first_200(receiver, spawned + START_TIMEOUT) is None:
            raise RuntimeError(f"the server gave no 200 within {START_TIMEOUT:.0f} s")
        feed.start()
        delivered = 0
        starting = False  # whether this kill is aimed at start-up
        for number in range(1, plan.kills + 1):
            phase = "serving"
            if starting:
                kill_at = spawned + rng.uniform(0.0, startup)
                ready = probe.first_200(receiver, kill_at)
                if ready is None:
                    phase = "starting"
                else:
                    result.restart_seconds.append(round(ready - spawned, 3))
            else:
                # Kill under load: once the senders, back from their backoff, have had
                # a record acknowledged by this server.
                resumed = watch.delivery_after(delivered, time.monotonic() + START_TIMEOUT)
                if resumed is not None:
                    result.feed_resumed_seconds.append(round(resumed - spawned, 3))
                kill_at = time.monotonic() + rng.uniform(*plan.interval)
            time.sleep(max(0.0, kill_at - time.monotonic()))
            now = time.monotonic()
            kills.append(Kill(number, phase, round(now - spawned, 3), round(now - t0, 3)))
            receiver.kill()
            delivered = watch.delivered
            spawned = receiver.spawn()
            starting = number < plan.kills and rng.random() < plan.early
            if not starting:
                ready = probe.first_200(receiver, spawned + START_TIMEOUT)
                if ready is None:
                    raise RuntimeError(f"no 200 within {START_TIMEOUT:.0f} s of restart {number}")
                result.restart_seconds.append(round(ready - spawned, 3))
                startup = statistics.median(result.restart_seconds)
        time.sleep(SETTLE_SECONDS)
    finally:
        stop.set()
        if feed.is_alive():
            feed.join(120)
        if receiver.running:
            stopped = time.monotonic()
            result.clean_stop = receiver.stop()
            final = Kill(
                len(kills) + 1, "stop", round(stopped - spawned, 3), round(stopped - t0, 3)
            )
        receiver.close()
    result.kill_log = kills
    result.kills = len(kills)
    result.kills_while_starting = sum(k.phase == "starting" for k in kills)
    report = reports[0] if reports else None
    if report is not None:
        result.feed = {
            "posted": report.posted,
            "delivered": report.delivered,
            "failed": report.failed,
            "abandoned": report.abandoned,
            "retries": report.retries,
            "problems": report.problems,
        }
    _check(url, state, probe, result, progress, [*kills, final] if final else kills, t0)


# -- the check ---------------------------------------------------------------------------------


@dataclass
class Version:
    index: int | None
    change: LiveChange
    acked: bool


def _sent_versions(state: Any, probe: Probe) -> dict[tuple[str, str], list[Version]]:
    """Every change sent (or queued to send), per (table, key), in the order sent."""
    versions: dict[tuple[str, str], list[Version]] = {}
    brokerage = state.new_brokerage()
    for run in state.events:
        undelivered = set(run.undelivered)
        for index in range(run.first, run.first + run.count):
            change = brokerage.next_change()
            key = "|".join(change.fields.get(name, "") for name in key_for(change.table))
            versions.setdefault((change.table, key), []).append(
                Version(index, change, index not in undelivered)
            )
    for change in probe.acked:
        versions.setdefault((PROBE_TABLE, change.fields["id"]), []).append(
            Version(None, change, True)
        )
    return versions


Row = dict[str, str | None]  # column to value


@dataclass
class Stored:
    """What the database holds: live rows by (table, key), and each table's field map."""

    rows: dict[tuple[str, str], Row]
    columns: dict[str, dict[str, str]]  # table to (field name to column)

    def column(self, table: str, name: str) -> str:
        """The column of a field: as ``_aljex_columns`` maps it, else its lowercase name."""
        fields = self.columns.get(table, {})
        if name in fields:
            return fields[name]
        lower = {f.lower(): c for f, c in fields.items()}
        return lower.get(name.lower(), name.lower())


def _stored(engine: Engine, tables: set[str]) -> Stored:
    """The live rows of ``tables`` (soft-deleted ones left out), keyed as the harness keys."""
    meta = MetaData()
    meta.reflect(engine)
    stored = Stored({}, {})
    if "_aljex_columns" in meta.tables:
        cols = meta.tables["_aljex_columns"]
        query = select(cols.c.table_name, cols.c.column_name, cols.c.field_name)
        with engine.connect() as conn:
            for row in conn.execute(query):
                stored.columns.setdefault(row.table_name, {})[row.field_name] = row.column_name
    for name in sorted(tables & set(meta.tables)):
        source: SqlTable = meta.tables[name]
        key_columns = [stored.column(name, f) for f in key_for(name)]
        with engine.connect() as conn:
            for row in conn.execute(select(source)):
                values = row._mapping
                if values.get("_aljex_deleted_at") is not None:
                    continue
                key = "|".join(str(values[c]) for c in key_columns)
                stored.rows[name, key] = {
                    str(c): None if v is None else str(v) for c, v in values.items()
                }
    return stored


def _journal(engine: Engine) -> set[bytes]:
    """The SHA-256 of every request body in the journal (none when there is no journal)."""
    if not inspect(engine).has_table("_aljex_events"):
        return set()
    with engine.connect() as conn:
        return {
            hashlib.sha256(bytes(body)).digest()
            for (body,) in conn.execute(text("SELECT body FROM _aljex_events"))
        }


def _matches(stored: Stored, change: LiveChange, row: Row | None) -> bool:
    """Whether the row is what this change leaves (field by field for the fields it carries)."""
    if change.action == "delete":
        return row is None
    return row is not None and all(
        row.get(stored.column(change.table, name)) == value for name, value in change.fields.items()
    )


def _differences(stored: Stored, change: LiveChange, row: Row) -> str:
    shown = []
    for name, value in change.fields.items():
        actual = row.get(stored.column(change.table, name))
        if actual != value:
            shown.append(f"{name}: acknowledged {value!r}, stored {actual!r}")
    return "; ".join(shown[:3])


def _near_kill(
    index: int | None, progress: list[tuple[float, int]], kills: list[Kill], t0: float
) -> str:
    """Roughly when change ``index`` was made, against the nearest kill (the feed's progress
    snapshots come ten times a second)."""
    if index is None or not progress:
        return ""
    made = [generated for _, generated in progress]
    at = progress[min(bisect_right(made, index), len(progress) - 1)][0] - t0
    if not kills:
        return f"made about {at:.1f} s into the run"
    nearest = min(kills, key=lambda k: abs(k.at - at))
    if nearest.phase == "stop":
        return f"made about {at - nearest.at:+.1f} s from the final SIGTERM"
    return f"made about {at - nearest.at:+.1f} s from kill {nearest.number} ({nearest.phase})"


def _check(
    url: str,
    state: Any,
    probe: Probe,
    result: SeedResult,
    progress: list[tuple[float, int]],
    kills: list[Kill],
    t0: float,
) -> None:
    versions = _sent_versions(state, probe)
    engine = create_engine(normalize_url(url))
    try:
        stored = _stored(engine, {table for table, _ in versions})
        journal = _journal(engine)
    finally:
        engine.dispose()
    for (table, key), sent in versions.items():
        result.sent += len(sent)
        acked = [n for n, version in enumerate(sent) if version.acked]
        result.acknowledged += len(acked)
        for n in acked:
            if hashlib.sha256(encode_change(sent[n].change)).digest() not in journal:
                result.not_journaled += 1
                _note(result, Loss(table, key, sent[n].index, "not journaled"), progress, kills, t0)
        if not acked:
            continue
        last = acked[-1]
        row = stored.rows.get((table, key))
        if any(_matches(stored, version.change, row) for version in sent[last:]):
            continue
        change = sent[last].change
        if row is None:
            loss = Loss(table, key, sent[last].index, "missing", f"{change.action} acknowledged")
        elif change.action == "delete":
            loss = Loss(table, key, sent[last].index, "delete undone", "row still there")
        else:
            loss = Loss(table, key, sent[last].index, "stale", _differences(stored, change, row))
        result.lost += 1
        _note(result, loss, progress, kills, t0)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not Path(path).exists():  # never created: nothing to damage
            return
        with contextlib.closing(sqlite3.connect(path)) as conn:
            found = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        result.integrity = "ok" if found == ["ok"] else "; ".join(found[:5])


def _note(
    result: SeedResult,
    loss: Loss,
    progress: list[tuple[float, int]],
    kills: list[Kill],
    t0: float,
) -> None:
    if len(result.losses) < MAX_EXAMPLES:
        loss.near_kill = _near_kill(loss.index, progress, kills, t0)
        result.losses.append(loss)


# -- the campaign and its report -----------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarize(
    results: list[SeedResult], reproduce: Callable[[str, str, list[int], int], str]
) -> list[dict[str, Any]]:
    """One line per receiver and backend, and one per seed under it, each with the
    command that reproduces it."""
    lines: list[dict[str, Any]] = []
    groups: dict[tuple[str, str], list[SeedResult]] = {}
    for r in results:
        groups.setdefault((r.receiver, r.backend), []).append(r)
    for (receiver, backend), group in groups.items():
        restarts = [s for r in group for s in r.restart_seconds]
        for r in [*group, None]:
            scope = group if r is None else [r]
            times = restarts if r is None else r.restart_seconds
            lines.append(
                {
                    "receiver": receiver,
                    "backend": backend,
                    "seed": "all" if r is None else str(r.seed),
                    "kills": sum(x.kills for x in scope),
                    "kills_while_starting": sum(x.kills_while_starting for x in scope),
                    "acknowledged": sum(x.acknowledged for x in scope),
                    "lost": sum(x.lost for x in scope),
                    "not_journaled": sum(x.not_journaled for x in scope),
                    "integrity": ", ".join(sorted({x.integrity for x in scope})),
                    "restart_median_s": _median(times),
                    "restart_max_s": round(max(times), 3) if times else None,
                    "error": "; ".join(x.error for x in scope if x.error),
                    "command": reproduce(
                        receiver, backend, [x.seed for x in scope], scope[0].planned_kills
                    ),
                }
            )
    return lines


def verdict(results: list[SeedResult], control: list[SeedResult]) -> tuple[int, list[str]]:
    """The exit status and the lines that explain it."""
    lines = []
    status = 0
    for r in results:
        if r.failed:
            status = 1
            lines.append(
                f"LOST: {r.receiver} on {r.backend}, seed {r.seed}: {r.lost} acknowledged"
                f" records lost, {r.not_journaled} not journaled, integrity {r.integrity}"
            )
    for r in results:
        if not r.clean_stop:
            lines.append(
                f"SLOW STOP: {r.receiver} on {r.backend}, seed {r.seed}: SIGTERM did not stop"
                f" the server within {STOP_TIMEOUT:.0f} s (it was then killed)"
            )
    for r in [*results, *control]:
        if r.error:
            status = status or 2
            lines.append(f"ERROR: {r.receiver} on {r.backend}, seed {r.seed}: {r.error}")
    uncaught = [r.seed for r in control if not r.failed and not r.error]
    if uncaught:
        status = status or 2
        lines.append(f"CONTROL NOT CAUGHT on seeds {uncaught}: the harness cannot see losses")
    elif control:
        lines.append(
            f"control caught: the ack-before-commit receiver lost records on"
            f" {sum(r.failed for r in control)} of {len(control)} seeds"
        )
    if not status:
        lines.append(
            f"no acknowledged record lost: {sum(r.kills for r in results)} kills,"
            f" {sum(r.acknowledged for r in results)} acknowledged records checked"
        )
    return status, lines


def print_table(lines: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for name in (
        "receiver",
        "backend",
        "seed",
        "kills",
        "while starting",
        "acknowledged",
        "lost",
        "not journaled",
        "integrity",
        "restart to 200, median",
        "max",
    ):
        table.add_column(name, justify="left" if name in ("receiver", "backend") else "right")
    for line in lines:
        style = "bold" if line["seed"] == "all" else None
        table.add_row(
            line["receiver"],
            line["backend"],
            line["seed"],
            str(line["kills"]),
            str(line["kills_while_starting"]),
            str(line["acknowledged"]),
            str(line["lost"]),
            str(line["not_journaled"]),
            line["integrity"],
            _seconds(line["restart_median_s"]),
            _seconds(line["restart_max_s"]),
            style=style,
        )
    console.print(table)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def markdown(
    lines: list[dict[str, Any]], results: list[SeedResult], verdict_lines: list[str], command: str
) -> str:
    out = [
        "# Crash test",
        "",
        f"`{command}` — {datetime.now(UTC).isoformat(timespec='seconds')},"
        f" {platform.node() or 'this machine'}, {os.cpu_count()} cores.",
        "",
        "| receiver | backend | seed | kills | of which while starting | acknowledged | lost"
        " | not journaled | integrity | restart to first 200, median | max | reproduce |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for line in lines:
        seed = f"**{line['seed']}**" if line["seed"] == "all" else line["seed"]
        out.append(
            f"| {line['receiver']} | {line['backend']} | {seed} | {line['kills']}"
            f" | {line['kills_while_starting']} | {line['acknowledged']} | {line['lost']}"
            f" | {line['not_journaled']} | {line['integrity']}"
            f" | {_seconds(line['restart_median_s'])} | {_seconds(line['restart_max_s'])}"
            f" | `{line['command']}` |"
        )
    out += ["", *[f"- {line}" for line in verdict_lines]]
    examples = [(r, loss) for r in results for loss in r.losses[:5]]
    if examples:
        out += ["", "## Examples of lost records", ""]
        out += ["| receiver | backend | seed | table | key | kind | detail | when |"]
        out += ["|---|---|---|---|---|---|---|---|"]
        for r, loss in examples:
            out.append(
                f"| {r.receiver} | {r.backend} | {r.seed} | {loss.table} | {loss.key}"
                f" | {loss.kind} | {loss.detail} | {loss.near_kill} |"
            )
    return "\n".join(out) + "\n"


def _floats(text_: str) -> tuple[float, float]:
    low, _, high = text_.partition(":")
    return float(low), float(high or low)


def _ints(text_: str) -> list[int]:
    return [int(part) for part in text_.split(",") if part]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.crash",
        description="SIGKILL the Live Sync server under load; check nothing acknowledged is lost.",
    )
    parser.add_argument("--backends", default=",".join(BACKENDS), help="sqlite,postgresql")
    parser.add_argument("--seeds", type=_ints, default=[1, 2, 3, 4, 5], help="e.g. 1,2,3,4,5")
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs per seed (default 8)")
    parser.add_argument(
        "--interval",
        type=_floats,
        default=(0.2, 1.5),
        help="LOW:HIGH seconds of serving before a kill, drawn uniformly (default 0.2:1.5)",
    )
    parser.add_argument(
        "--early", type=float, default=0.2, help="share of kills aimed at start-up (default 0.2)"
    )
    parser.add_argument("--rate", type=float, default=250.0, help="records/s sent (default 250)")
    parser.add_argument("--concurrency", type=int, default=4, help="sender connections")
    parser.add_argument(
        "--receiver",
        choices=RECEIVERS,
        default="aljex-sync",
        help="what to test: the real server, or the control that acks before it commits",
    )
    parser.add_argument(
        "--control-kills",
        type=int,
        default=3,
        help="kills per seed of the ack-before-commit control on SQLite; 0 skips it",
    )
    parser.add_argument(
        "--delay", type=float, default=0.5, help="the control's seconds from 200 to commit"
    )
    parser.add_argument("--postgres", default=POSTGRES, help="PostgreSQL server (trust) URL")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where crash.json/md go")
    args = parser.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    for backend in args.backends:
        if backend not in BACKENDS:
            parser.error(f"unknown backend {backend!r}; expected some of {', '.join(BACKENDS)}")
    return args


def reproducer(args: argparse.Namespace) -> Callable[[str, str, list[int], int], str]:
    """The command that runs one receiver, backend, seeds and kills with these options."""
    defaults = parse_args([])

    def reproduce(receiver: str, backend: str, seeds: list[int], kills: int) -> str:
        parts = ["python -m bench.crash"]
        if receiver != "aljex-sync":
            parts += ["--receiver", receiver]
        parts += ["--backends", backend, "--seeds", ",".join(map(str, seeds))]
        parts += ["--kills", str(kills)]
        if receiver == "aljex-sync":
            parts += ["--control-kills", "0"]
        for name in ("interval", "early", "rate", "concurrency", "delay", "postgres"):
            value = getattr(args, name)
            if value != getattr(defaults, name):
                shown = ":".join(map(str, value)) if isinstance(value, tuple) else str(value)
                parts += [f"--{name}", shown]
        return " ".join(parts)

    return reproduce


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(["python -m bench.crash", *(sys.argv[1:] if argv is None else argv)])

    def plan(receiver: str, backend: str, seed: int, kills: int) -> Plan:
        return Plan(
            receiver,
            backend,
            seed,
            kills,
            args.interval,
            args.early,
            args.rate,
            args.concurrency,
            args.delay,
            args.postgres,
        )

    results: list[SeedResult] = []
    for backend in args.backends:
        for seed in args.seeds:
            console.print(f"> {args.receiver} on {backend}, seed {seed}: {args.kills} kills")
            results.append(run_seed(plan(args.receiver, backend, seed, args.kills)))
            _progress_line(results[-1])
    control: list[SeedResult] = []
    if args.receiver == "aljex-sync" and args.control_kills > 0:
        for seed in args.seeds:
            console.print(f"> control (ack-before-commit) on sqlite, seed {seed}")
            control.append(run_seed(plan("ack-before-commit", "sqlite", seed, args.control_kills)))
            _progress_line(control[-1])
    lines = summarize(results + control, reproducer(args))
    status, verdict_lines = verdict(results, control)
    print_table(lines, "Crash test: SIGKILL under load")
    for line in verdict_lines:
        console.print(line, style="red" if status and not line.startswith("control") else None)
    args.results.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "exit_status": status,
        "verdict": verdict_lines,
        "summary": lines,
        "runs": [asdict(r) for r in results + control],
    }
    (args.results / "crash.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.results / "crash.md").write_text(
        markdown(lines, results + control, verdict_lines, command)
    )
    console.print(f"results: {args.results / 'crash.md'}, {args.results / 'crash.json'}")
    return status


def _progress_line(r: SeedResult) -> None:
    restart = _median(r.restart_seconds)
    console.print(
        f"  {r.kills} kills ({r.kills_while_starting} while starting),"
        f" {r.acknowledged} acknowledged, {r.lost} lost, {r.not_journaled} not journaled,"
        f" integrity {r.integrity}, restart to first 200 median {_seconds(restart)},"
        f" {r.seconds:.0f} s" + (f" — {r.error}" if r.error else "")
    )


if __name__ == "__main__":
    sys.exit(main())
