"""Morning Sync load speed and memory against ``sqlite3 .import`` and PostgreSQL COPY.

A generated CSV of 200,000 rows x 40 columns (about 100 MB, with quoted commas and line
breaks) is loaded in full mode into a table that already holds the same keys, so every row
is updated. Baselines, in the same run: the sqlite3 shell's ``.import --csv`` of the same
file into an empty table, and on PostgreSQL, COPY into a staging table plus ``INSERT ... ON
CONFLICT DO UPDATE``. Targets: >= 0.8x the SQLite baseline's speed, >= 0.9x PostgreSQL's,
peak RSS under 150 MB whatever the file size (a file of about 1 GB is loaded too).

Each figure is the best of ``repeats`` runs, baseline and aljex-sync alternating, since the
machine may be doing other work; every aljex-sync run loads a file with new values, so each
one updates every row. Loads run in a child process, which reports its own peak RSS. On
PostgreSQL everything happens in a scratch database, created and dropped here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

COLUMNS = 40
BIG_ROW_LIMIT = 20_000_000


def write_csv(path: Path, rows: int, *, variant: int = 0) -> int:
    """Write the benchmark file; ``variant`` changes values but not keys. Returns bytes.

    Every row has 36 short values, a quoted comma, a quoted CR LF and a date. Rows come from
    one format string, which keeps writing the 1 GB file to about 20 seconds.
    """
    header = ["id"] + [f"field_{i}" for i in range(1, COLUMNS)]
    values = ["{k}"] + [f"v{variant}-{{n}}-{i}" for i in range(1, COLUMNS - 3)]
    values += ['"Acme, Inc. #{a}"', '"line one\r\nline two {b}"', "2026-11-27"]
    row = (",".join(values) + "\r\n").format
    with path.open("w", newline="") as f:
        f.write(",".join(header) + "\r\n")
        for start in range(0, rows, 5000):
            block = range(start, min(start + 5000, rows))
            f.write("".join([row(k=100000 + n, n=n, a=n % 97, b=n % 13) for n in block]))
    return path.stat().st_size


# One load, in a child process: its peak RSS is the loader's alone. The export time is
# "now" (less the margin), so that each load is newer than the one before and updates
# every row, whatever the files' modification times.
LOAD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from aljex_sync import config
    from aljex_sync.journal import Journal
    from aljex_sync.morning import MorningLoader
    from aljex_sync.store.database import open_engine
    from aljex_sync.clock import utcnow

    url, path = sys.argv[1], Path(sys.argv[2])
    settings = config.parse({"database": {"url": url}, "live": {"password": "x"},
                             "morning": {"sftp": False}})
    journal = Journal(open_engine(url), settings)
    journal.install()
    loader = MorningLoader(journal.engine, settings, journal.schema)
    started = time.perf_counter()
    report = loader.load(path, table="bench", mode="full", force=True, started_at=utcnow())
    seconds = time.perf_counter() - started
    journal.close()
    status = Path("/proc/self/status").read_text()
    peak = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM")))
    c = report.counts
    print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "status": report.status,
                      "rows": report.rows_read, "inserted": c.inserted, "updated": c.updated,
                      "deleted": c.deleted, "error": report.error}))
    """
)


def _load(url: str, path: Path) -> dict[str, Any]:
    """Load ``path`` in full mode into table ``bench`` at ``url``; never raises."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", LOAD, url, str(path)],
            capture_output=True,
            text=True,
            timeout=3600,
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": "timed out after an hour"}
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        error = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "failed", "error": f"exit {out.returncode}: {error}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest successful run (peak RSS: the highest of all), or the first failure."""
    failed = [r for r in runs if r.get("status") != "loaded"]
    if failed:
        return failed[0]
    best = dict(min(runs, key=lambda r: float(r["seconds"])))
    best["peak_mb"] = max(float(r["peak_mb"]) for r in runs)
    best["runs"] = len(runs)
    return best


def sqlite_import(path: Path, db: Path) -> float | None:
    """The baseline: the sqlite3 shell importing the file into an empty table."""
    db.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run(
        ["sqlite3", str(db), "-cmd", f'.import --csv "{path}" baseline', ".exit"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    db.unlink(missing_ok=True)
    return seconds if done.returncode == 0 and not done.stderr.strip() else None


@contextmanager
def _scratch_postgres(url: str) -> Iterator[str | None]:
    """A database of its own on the server at ``url``, dropped afterwards; None if unusable."""
    try:
        import psycopg
        from sqlalchemy.engine import make_url
    except ImportError:
        yield None
        return
    server = make_url(url)
    admin_dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"aljex_bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        yield None
        return
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error as e:
            print(f"could not drop the scratch database {name}: {e}", file=sys.stderr)


def _vacuum(url: str, table: str) -> None:
    """VACUUM ANALYZE a table, as autovacuum does between one morning's load and the next.

    Without it, a table made a moment ago has no statistics, which no table in use lacks,
    and each timed load would meet the dead rows of the one before.
    """
    import psycopg

    with psycopg.connect(_dsn(url), autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {table}")


def _copy_sql(table: str) -> str:
    cols = ["id"] + [f"field_{i}" for i in range(1, COLUMNS)]
    return f"COPY {table} ({', '.join(cols)}) FROM STDIN WITH (FORMAT csv, HEADER true)"


def _send(conn: Any, path: Path, table: str) -> None:
    with path.open("rb") as f, conn.cursor().copy(_copy_sql(table)) as out:
        while data := f.read(1 << 20):
            out.write(data)


def _dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_prime(path: Path, url: str) -> None:
    """Make the baseline's table and fill it with the keys, as aljex-sync's first load does."""
    import psycopg

    columns = ", ".join(f"field_{i} text" for i in range(1, COLUMNS))
    with psycopg.connect(_dsn(url)) as conn, conn.transaction():
        conn.execute("DROP TABLE IF EXISTS baseline")
        conn.execute(f"CREATE TABLE baseline (id text PRIMARY KEY, {columns})")
        _send(conn, path, "baseline")


def postgres_copy(path: Path, url: str) -> float:
    """The PostgreSQL baseline: COPY into a staging table, then INSERT ... ON CONFLICT."""
    import psycopg

    updates = ", ".join(f"field_{i} = excluded.field_{i}" for i in range(1, COLUMNS))
    with psycopg.connect(_dsn(url)) as conn:
        started = time.perf_counter()
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE stage (LIKE baseline INCLUDING ALL) ON COMMIT DROP")
            _send(conn, path, "stage")
            conn.execute(
                f"INSERT INTO baseline SELECT * FROM stage ON CONFLICT (id) DO UPDATE SET {updates}"
            )
        return time.perf_counter() - started


def run(
    rows: int = 200_000,
    *,
    big_gb: float = 1.0,
    postgres: str | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Measure; ``postgres`` is a server URL (a scratch database is made on it)."""
    results: dict[str, Any] = {"rows": rows, "columns": COLUMNS, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="aljex-bench-") as tmp:
        work = Path(tmp)
        first = work / "first.csv"
        write_csv(first, rows, variant=0)
        # Each timed load brings new values: alternate between two files.
        files = [work / "bench-1.csv", work / "bench-2.csv"]
        results["file_mb"] = write_csv(files[0], rows, variant=1) / 1e6
        write_csv(files[1], rows, variant=2)

        baseline: list[float] = []
        ours: list[dict[str, Any]] = []
        url = f"sqlite:///{work / 'aljex.db'}"
        ours_first = _load(url, first)  # the table holds the same keys before the timed loads
        for i in range(repeats):
            if shutil.which("sqlite3"):
                seconds = sqlite_import(files[0], work / "baseline.db")
                if seconds is not None:
                    baseline.append(seconds)
            ours.append(
                _load(url, files[i % 2]) if ours_first["status"] == "loaded" else ours_first
            )
        if baseline:
            results["sqlite_import_s"] = min(baseline)
        results["sqlite"] = _best(ours)
        for name in ("aljex.db", "aljex.db-wal", "aljex.db-shm"):
            (work / name).unlink(missing_ok=True)

        if postgres:
            try:
                results.update(_postgres(postgres, first, files, repeats))
            except Exception as e:  # a benchmark reports what failed and goes on
                results["postgres_error"] = f"{type(e).__name__}: {e}".splitlines()[0]

        if big_gb:
            for path in (first, *files):
                path.unlink()
            big = work / "big.csv"
            big_rows = min(int(rows * big_gb * 1e9 / (results["file_mb"] * 1e6)), BIG_ROW_LIMIT)
            started = time.perf_counter()
            results["big_mb"] = write_csv(big, big_rows, variant=3) / 1e6
            results["big_write_s"] = time.perf_counter() - started
            results["big"] = _load(f"sqlite:///{work / 'big.db'}", big)
    return results


def _postgres(server: str, first: Path, files: list[Path], repeats: int) -> dict[str, Any]:
    """The PostgreSQL half of :func:`run`, in a scratch database on ``server``.

    Both tables go through the same history: filled with the keys, then updated with each
    file in turn, vacuumed before each update.
    """
    with _scratch_postgres(server) as scratch:
        if scratch is None:
            return {"postgres_error": "no scratch database: server unreachable or no CREATEDB"}
        postgres_prime(first, scratch)
        ours_first = _load(scratch, first)
        copies: list[float] = []
        ours: list[dict[str, Any]] = []
        for i in range(repeats):
            _vacuum(scratch, "baseline")
            copies.append(postgres_copy(files[i % 2], scratch))
            if ours_first["status"] != "loaded":
                ours.append(ours_first)
                continue
            _vacuum(scratch, "bench")
            ours.append(_load(scratch, files[i % 2]))
        return {"postgres_copy_s": min(copies), "postgres": _best(ours)}


def _ratio(base: float, ours: dict[str, Any]) -> str:
    return f"{base / float(ours['seconds']):.2f}x" if ours.get("status") == "loaded" else "-"


def _ours(r: dict[str, Any]) -> str:
    if r.get("status") != "loaded":
        return f"{r.get('status', 'failed')}: {r.get('error', '')}"
    return f"{float(r['seconds']):.2f} s"


def _peak(r: dict[str, Any]) -> str:
    return f"{float(r['peak_mb']):.0f} MB" if "peak_mb" in r else "-"


def table(r: dict[str, Any]) -> list[str]:
    """The results as markdown lines."""
    lines = [
        f"Full-mode load of {r['rows']:,} rows x {r['columns']} columns "
        f"({r['file_mb']:.0f} MB) into a table holding the same keys"
        f" (best of {r.get('repeats', 1)}):",
        "",
        "| database | aljex-sync | baseline | speed vs baseline | target | peak RSS | met |",
        "|---|---|---|---|---|---|---|",
    ]
    sqlite = r.get("sqlite", {})
    if "sqlite_import_s" in r:
        base = r["sqlite_import_s"]
        ok = (
            sqlite.get("status") == "loaded"
            and base / sqlite["seconds"] >= 0.8
            and sqlite["peak_mb"] < 150
        )
        lines.append(
            f"| SQLite | {_ours(sqlite)} | {base:.2f} s (`sqlite3 .import`) |"
            f" {_ratio(base, sqlite)} | >= 0.8x, < 150 MB | {_peak(sqlite)} |"
            f" {'yes' if ok else 'NO'} |"
        )
    elif sqlite:
        lines.append(
            f"| SQLite | {_ours(sqlite)} | no `sqlite3` shell to compare | | >= 0.8x,"
            f" < 150 MB | {_peak(sqlite)} | ? |"
        )
    if "postgres_copy_s" in r:
        pg, base = r["postgres"], r["postgres_copy_s"]
        ok = pg.get("status") == "loaded" and base / pg["seconds"] >= 0.9
        lines.append(
            f"| PostgreSQL | {_ours(pg)} | {base:.2f} s (COPY + ON CONFLICT) |"
            f" {_ratio(base, pg)} | >= 0.9x | {_peak(pg)} | {'yes' if ok else 'NO'} |"
        )
    elif "postgres_error" in r:
        lines.append(f"| PostgreSQL | not measured: {r['postgres_error']} | | | >= 0.9x | | ? |")
    if "big" in r:
        big = r["big"]
        ok = big.get("status") == "loaded" and big["peak_mb"] < 150
        lines.append(
            f"| SQLite, {r['big_mb'] / 1000:.1f} GB file (empty table) | {_ours(big)} | | |"
            f" < 150 MB | {_peak(big)} | {'yes' if ok else 'NO'} |"
        )
    return lines
