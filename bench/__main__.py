"""`make bench`: every speed goal, against baselines measured in the same run.

Live Sync posts the emulator's records (invoicing trimmed to 40 fields, and Aljex's
400-field loads); Morning Sync loads a generated 100 MB file. Results go to
bench/results/ as JSON, a markdown table, and a plot of the latency distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from aljex_sync.emulate.brokerage import Brokerage
from bench import live, morning
from bench.scratch import scratch_database

RESULTS = Path(__file__).parent / "results"
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def brokerage_records(fields: int, count: int) -> list[tuple[str, dict[str, str]]]:
    """``count`` realistic records of about ``fields`` fields, each with its own key."""
    brokerage = Brokerage(7, today=date(2026, 11, 27), size="small")
    table, key = ("loads", "id") if fields > 40 else ("invoicing", "pro_num")
    source = list(brokerage.records(table).values())
    records = []
    for i in range(count):
        record = dict(source[i % len(source)])
        if fields <= 40:
            record = {key: record[key], **dict(list(record.items())[: fields - 1])}
        record[key] = f"{record[key]}-{i}"
        records.append((table, record))
    return records


@contextmanager
def scratch_postgres() -> Iterator[str | None]:
    """A database of the benchmark's own on the local PostgreSQL, dropped afterwards, or
    None if the server cannot be reached."""
    probe = create_engine(POSTGRES)
    try:
        with probe.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError:
        yield None
        return
    finally:
        probe.dispose()  # not left open in ``test`` for the whole run
    with scratch_database(POSTGRES, f"aljex_bench_{os.getpid()}") as url:
        yield url


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """The latency distribution at one connection, aljex-sync against the ceiling."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    percent = [i * 100 / 199 for i in range(200)]
    for r in results:
        if r["connections"] != 1:
            continue
        for who, style in (("sqlite", "-"), ("naive", "--"), ("journaled", "-."), ("ceiling", ":")):
            if who in r:
                label = f"{r['fields']} fields, {live.LABELS[who]}"
                ax.plot(r[who]["quantiles_ms"], percent, style, label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("latency per request, ms (one connection)")
    ax.set_ylabel("% of requests at or below")
    ax.axvline(1.5, color="grey", linewidth=0.5)
    ax.axvline(5.0, color="grey", linewidth=0.5)
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Live Sync latency, emulator records")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _previous(part: str) -> Any:
    """A part's results from the last run, kept when this run measures only the other."""
    try:
        return json.loads((RESULTS / "results.json").read_text()).get(part)
    except (OSError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, no 1 GB file")
    parser.add_argument(
        "--only",
        choices=("live", "morning"),
        help="measure one part; the other's figures are kept from the last run",
    )
    parser.add_argument("--no-big", action="store_true", help="skip the 1 GB Morning Sync file")
    parser.add_argument(
        "--postgres-only",
        action="store_true",
        help="Morning Sync on PostgreSQL alone, nothing written (with --only morning)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="Morning Sync runs of each load (default 3)"
    )
    parser.add_argument(
        "--live-only", action="store_true", help="Live Sync, 40 fields only, nothing written"
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with scratch_postgres() as postgres:
        _measure(args, postgres)


def _measure(args: argparse.Namespace, postgres: str | None) -> None:
    big_gb = 0 if args.quick or args.no_big or args.postgres_only else 1.0
    counts: dict[str, Any] = {"sequential": 300, "concurrent": 900, "repeats": 1}
    live_results = _previous("live") if args.only == "morning" else None
    morning_results = _previous("morning") if args.only == "live" else None
    if args.only != "morning":
        live_results = live.run(
            brokerage_records,
            postgres=postgres,
            field_counts=(40,) if args.live_only else (40, 400),
            **(counts if args.quick else {}),
        )
        if args.live_only:  # a quick look while working: nothing written to bench/results
            print("\n".join(live.table(live_results)))
            return
    if args.only != "live":
        rows, repeats = (20_000, 1) if args.quick else (200_000, 3)
        morning_results = morning.run(
            rows,
            big_gb=big_gb,
            postgres=postgres,
            repeats=args.repeats or repeats,
            sqlite=not args.postgres_only,
        )
        if args.postgres_only:  # a quick look while working: nothing written to bench/results
            print("\n".join(morning.table(morning_results)))
            return
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()},"
        f" Python {platform.python_version()}.",
        "",
    ]
    if live_results:
        lines += ["### Live Sync", "", *live.table(live_results), ""]
    if morning_results:
        lines += ["### Morning Sync", "", *morning.table(morning_results), ""]
    (RESULTS / "results.md").write_text("\n".join(lines))
    (RESULTS / "results.json").write_text(
        json.dumps({"live": live_results, "morning": morning_results}, indent=1)
    )
    if live_results:
        plot(live_results, RESULTS / "latency.png")
    print("\n".join(lines))
    print(f"Written: {RESULTS / 'results.md'}, results.json, latency.png")


if __name__ == "__main__":
    main()
