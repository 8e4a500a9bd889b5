"""The floors under the speed targets of issues 12 and 14, measured in one run.

A target can be met only if the work no design can skip fits in the time it allows. This
measures that work on the machine at hand, beside the baselines the targets are set
against, and prints, for each target, the time it allows and the floor under it:

- **Live Sync, one connection** (p50 <= 1.1x the naive receiver's). The parse-only
  ceiling is aljex-sync's own endpoint with no database, so 1.1x the naive receiver's p50
  less the ceiling's p50 is what the target leaves for the write: the journal's event (the
  raw body), the row and one durable commit. The floor under that write is the naive
  journaling receiver's write (``parse_qsl``, the raw body inserted and the row upserted in
  one fsynced commit: bench/naive.py), timed in-process on the same bodies, taking turns
  with the naive receiver's own write and aljex-sync's (``Journal.write_group``, as the
  inline path runs it).
- **Live Sync, 16 connections** (>= 2x the naive receiver's records/s): the parse-only
  ceiling, which writes nothing, is the floor; the target cannot be met where 2x the
  naive receiver's rate is above the ceiling's.
- **Morning Sync on SQLite, every row changed** (>= 0.8x the same-work shell): a load must
  at least parse the file in Python, bind every value into a stage and upsert every row;
  the floor is the ``csv`` module's parse, plus binding the parsed rows into a temporary
  table with ``executemany`` in the loader's batches, plus the shell's own upsert (timed
  alone, from the shell's stage).
- **Morning Sync on SQLite, 2% of rows changed** (>= 2x the same-work shell): a load must
  at least parse every row and tell which changed; the floor is the parse plus the row
  hash, with nothing written.

Each figure is the best of ``--repeats`` runs. Prints a markdown table and writes
bench/results/floors.json and floors.md.

    python -m bench.floors [--rows 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aljex_sync import config
from aljex_sync.clock import utcnow
from aljex_sync.journal import Journal
from aljex_sync.messages import Received
from aljex_sync.store.database import open_engine
from aljex_sync.store.stage import row_hasher
from bench import live, morning, naive
from bench.__main__ import RESULTS, brokerage_records

WRITES = 3000
WARM = 300
BATCH = 500  # the loader's batch (morning.PARSE_ROWS)


def _median_us(times: list[float]) -> float:
    return statistics.median(times) * 1e6


def journal_writer(work: Path) -> tuple[Callable[[bytes], object], Callable[[], None]]:
    """aljex-sync's write of one request alone, as the inline path runs it; and its close."""
    url = f"sqlite:///{work / 'journal.db'}"
    settings = config.parse(
        {
            "database": {"url": url},
            "live": {"listen": "127.0.0.1:0", "password": "x"},
            "morning": {"enabled": False, "sftp": False},
        },
        base=work,
    )
    installer = Journal(open_engine(url), settings)
    installer.install()
    installer.close()
    journal = Journal(open_engine(url, timeout=0), settings, hands_off=True)
    journal.start()
    return (
        lambda body: journal.write_group([Received(body, "127.0.0.1", utcnow())]),
        journal.close,
    )


def writes_us(work: Path, bodies: list[bytes], key: str) -> dict[str, float]:
    """The median write of one request by the naive receiver, the naive journaling
    receiver and aljex-sync (as its inline path writes), in us.

    The three take turns, one body each, each on a database of its own, so a noisy spell
    of the machine or its disk falls on all three alike. Timed in turn, each runs between
    the others' writes, with cold caches, as it does between requests in a server.
    """
    work.mkdir()
    naive_ = naive.Writer(work / "naive.db", key)
    journaled = naive.Writer(work / "journaled.db", key, journal=True)
    ours, close = journal_writer(work)
    writers: dict[str, Callable[[bytes], object]] = {
        "naive": lambda body: naive_.write(body, "127.0.0.1"),
        "journaled": lambda body: journaled.write(body, "127.0.0.1"),
        "ours": ours,
    }
    times: dict[str, list[float]] = {side: [] for side in writers}
    try:
        for i, body in enumerate(bodies):
            for side, write in writers.items():
                started = time.perf_counter()
                write(body)
                if i >= WARM:
                    times[side].append(time.perf_counter() - started)
    finally:
        naive_.close()
        journaled.close()
        close()
    return {side: _median_us(t) for side, t in times.items()}


def live_floors(repeats: int) -> dict[str, Any]:
    records = brokerage_records(live.NAIVE_FIELDS, WRITES)
    bodies = [
        urlencode({"web_sync_table_name": t, "web_sync_action": "update", **f}).encode()
        for t, f in records
    ]
    key = next(iter(records[0][1]))
    with tempfile.TemporaryDirectory(prefix="aljex-floors-") as tmp:
        work = Path(tmp)
        runs = [writes_us(work / f"w{i}", bodies, key) for i in range(repeats)]
    served = live.run(
        brokerage_records, sequential=2000, concurrent=6000, repeats=repeats, field_counts=(40,)
    )
    one, sixteen = served
    return {
        "naive_write_us": min(r["naive"] for r in runs),
        "journaled_write_us": min(r["journaled"] for r in runs),
        "journal_write_us": min(r["ours"] for r in runs),
        "p50_ms": {
            side: one[side]["p50_ms"] for side in ("naive", "journaled", "ceiling", "sqlite")
        },
        "per_second": {
            side: sixteen[side]["per_second"] for side in ("naive", "ceiling", "sqlite")
        },
    }


def _timed(step: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def _batches(path: Path) -> Any:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, strict=True)
        header = next(reader)
        while batch := list(islice(reader, BATCH)):
            yield header, batch


def parse(path: Path) -> None:
    for _ in _batches(path):
        pass


def parse_and_hash(path: Path) -> None:
    hashes = None
    for header, batch in _batches(path):
        hashes = hashes or row_hasher(header)
        hashes(batch)


def parse_and_bind(path: Path, work: Path) -> None:
    """Parse, and bind every value into a temporary stage, as a load stages every row."""
    db = sqlite3.connect(work / "bind.db", isolation_level=None)
    try:
        db.execute("BEGIN")
        sql = ""
        for header, batch in _batches(path):
            if not sql:
                db.execute(
                    f"CREATE TEMP TABLE stage ({', '.join(f'c{i}' for i in range(len(header)))})"
                )
                sql = f"INSERT INTO stage VALUES ({', '.join('?' * len(header))})"
            db.executemany(sql, batch)
        db.execute("COMMIT")
    finally:
        db.close()


def shell_upsert_s(path: Path, db: Path) -> float:
    """The same-work shell's upsert alone, from its own stage (``.timer``)."""
    updates = ", ".join(f"field_{i} = excluded.field_{i}" for i in range(1, morning.COLUMNS))
    script = (
        "PRAGMA synchronous=FULL;\n"
        f'.import --csv --schema temp "{path}" stage\n.timer on\n'
        "INSERT INTO baseline SELECT * FROM temp.stage WHERE true"
        f" ON CONFLICT (id) DO UPDATE SET {updates};\n"
    )
    out = subprocess.run(["sqlite3", str(db)], input=script, capture_output=True, text=True)
    found = re.search(r"Run Time: real ([0-9.]+)", out.stdout)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"the sqlite3 shell failed: {out.stderr.strip()}")
    return float(found.group(1))


def morning_floors(rows: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aljex-floors-") as tmp:
        work = Path(tmp)
        first, every, few = work / "first.csv", work / "every.csv", work / "few.csv"
        morning.write_csv(first, rows)
        morning.write_csv(every, rows, variant=1)
        morning.write_csv(few, rows, variant=2, every=morning.FEW_EVERY)
        base = work / "base.db"
        morning.sqlite_prime(first, base)
        shell = {}
        for name, path in (("every", every), ("few", few)):
            times = [morning.sqlite_same_work(path, base) for _ in range(repeats)]
            shell[name] = min(t for t in times if t is not None)
        return {
            "rows": rows,
            "shell_same_work_s": shell,
            "shell_upsert_s": min(shell_upsert_s(every, base) for _ in range(repeats)),
            "parse_s": _timed(lambda: parse(every), repeats),
            "parse_hash_s": _timed(lambda: parse_and_hash(few), repeats),
            "parse_bind_s": _timed(lambda: parse_and_bind(every, work), repeats),
        }


def table(live_r: dict[str, Any], morning_r: dict[str, Any]) -> list[str]:
    p50, rate = live_r["p50_ms"], live_r["per_second"]
    budget_us = (1.1 * p50["naive"] - p50["ceiling"]) * 1000
    m = morning_r
    every_allowed = m["shell_same_work_s"]["every"] / 0.8
    every_floor = m["parse_bind_s"] + m["shell_upsert_s"]
    few_allowed = m["shell_same_work_s"]["few"] / 2
    few_floor = m["parse_hash_s"]

    def row(target: str, allowed: str, floor: str, ours: str, ok: bool) -> str:
        return f"| {target} | {allowed} | {floor} | {ours} | {'yes' if ok else 'NO'} |"

    return [
        "| target | what it allows | floor under it | aljex-sync's part | room? |",
        "|---|---|---|---|---|",
        row(
            "Live, 1 conn.: p50 <= 1.1x naive",
            f"{budget_us:.0f} us for the write (1.1 x {p50['naive']:.3f} ms"
            f" - ceiling {p50['ceiling']:.3f} ms)",
            f"{live_r['journaled_write_us']:.0f} us (the naive receiver's write with the raw"
            f" body in the same commit; without: {live_r['naive_write_us']:.0f} us)",
            f"{live_r['journal_write_us']:.0f} us (journal write)",
            live_r["journaled_write_us"] <= budget_us,
        ),
        row(
            "Live, 16 conn.: >= 2x naive",
            f"{2 * rate['naive']:.0f} records/s",
            f"ceiling {rate['ceiling']:.0f} records/s (no database)",
            f"{rate['sqlite']:.0f} records/s",
            rate["ceiling"] >= 2 * rate["naive"],
        ),
        row(
            "Morning, SQLite, every row: >= 0.8x shell",
            f"{every_allowed:.2f} s (shell {m['shell_same_work_s']['every']:.2f} s / 0.8)",
            f"{every_floor:.2f} s (parse + bind {m['parse_bind_s']:.2f} s,"
            f" upsert {m['shell_upsert_s']:.2f} s)",
            f"parse alone {m['parse_s']:.2f} s",
            every_floor <= every_allowed,
        ),
        row(
            "Morning, SQLite, 2% of rows: >= 2x shell",
            f"{few_allowed:.2f} s (shell {m['shell_same_work_s']['few']:.2f} s / 2)",
            f"{few_floor:.2f} s (parse + row hash, nothing written)",
            f"parse alone {m['parse_s']:.2f} s",
            few_floor <= few_allowed,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floors", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the morning file")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (best kept)")
    args = parser.parse_args()
    live_r = live_floors(args.repeats)
    morning_r = morning_floors(args.rows, args.repeats)
    lines = table(live_r, morning_r)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "floors.json").write_text(
        json.dumps({"live": live_r, "morning": morning_r}, indent=1)
    )
    (RESULTS / "floors.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
