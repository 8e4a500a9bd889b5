"""Live Sync records/s with 1, 2 and 4 workers (`serve --workers N`) on PostgreSQL.

Each run starts `aljex-sync serve --workers N` on a fresh PostgreSQL database, warms it up
(which creates the table and its columns), then posts the same 40-field records on 16
keep-alive connections with the benchmark's client (bench/client.py), a few times, keeping
the best. The client runs on the same machine and competes with the workers for its CPUs:
read the figures with ``os.cpu_count()`` in mind.

    python -m bench.workers [--workers 1,2,4] [--records 6000] [--repeats 2]

Results: a table on the terminal, and bench/results/workers.json and workers.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.__main__ import POSTGRES, brokerage_records
from bench.live import PASSWORD, _bodies, _run_client
from bench.scratch import scratch_database

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
PATH = "/aljex/sync"
CONNECTIONS = 16


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(port: int, deadline: float) -> None:
    """Wait until the server answers a POST with 200 (a record of a table of its own)."""
    auth = base64.b64encode(f"aljex:{PASSWORD}".encode()).decode()
    headers = {
        "Authorization": f"Basic {auth}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    body = b"web_sync_table_name=bench_probe&web_sync_action=create&id=1"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("POST", PATH, body=body, headers=headers)
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        time.sleep(0.2)
    raise RuntimeError("the server did not answer in time")


@contextlib.contextmanager
def serving(url: str, workers: int, work: Path) -> Iterator[str]:
    port = _free_port()
    config = work / f"workers-{workers}.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n[live]\nlisten = "127.0.0.1:{port}"\npath = "{PATH}"\n'
        f'password = "{PASSWORD}"\n[morning]\nenabled = false\n'
    )
    command = [sys.executable, "-m", "aljex_sync.cli", "--log-level", "warning", "-c", str(config)]
    process = subprocess.Popen(
        [*command, "serve", "--workers", str(workers)], cwd=ROOT, start_new_session=True
    )
    try:
        _ready(port, time.monotonic() + 120)
        yield f"http://127.0.0.1:{port}{PATH}"
    finally:
        process.terminate()
        try:
            process.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)


def run(counts: list[int], records: int, repeats: int, server: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = brokerage_records(40, records)
        bodies = _bodies(rows, work / "bodies.txt")
        warm = _bodies(rows[: records // 10], work / "warm.txt")
        for workers in counts:
            with (
                scratch_database(server, f"aljex_bench_workers_{workers}") as url,
                serving(url, workers, work) as live,
            ):
                _run_client(live, warm, CONNECTIONS)
                runs = [_run_client(live, bodies, CONNECTIONS) for _ in range(repeats)]
            best = max(runs, key=lambda r: r["per_second"])
            results.append(
                {
                    "workers": workers,
                    "per_second": round(best["per_second"]),
                    "p50_ms": best["p50_ms"],
                    "p99_ms": best["p99_ms"],
                    "failures": sum(r["failures"] for r in runs),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    return results


def table(results: list[dict[str, Any]]) -> list[str]:
    one = results[0]["per_second"]
    lines = [
        f"Live Sync on PostgreSQL, 40-field records, {CONNECTIONS} connections,"
        f" {os.cpu_count()} CPUs shared with the client ({platform.machine()}).",
        "",
        "| workers | records/s | vs 1 worker | p50 | p99 | failures |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['workers']} | {r['per_second']} | {r['per_second'] / one:.2f}x |"
            f" {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['failures']} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--postgres", default=POSTGRES)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    results = run(counts, args.records, args.repeats, args.postgres)
    lines = table(results)
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "workers.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "workers.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
