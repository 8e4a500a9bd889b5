"""Morning Sync load speed and memory against the sqlite3 shell and PostgreSQL COPY.

A generated CSV of 200,000 rows x 40 columns (about 100 MB, with quoted commas and line
breaks) is loaded in full mode into a table that already holds the same keys, so every row
is updated. The same-work baselines, in the same run: the sqlite3 shell importing the file
into a temporary stage, then ``INSERT ... ON CONFLICT DO UPDATE`` into a keyed table, under
WAL and ``synchronous=FULL``; on PostgreSQL, COPY into a staging table plus the same upsert.
Targets: >= 0.8x the shell's speed on SQLite, >= 0.9x COPY + ON CONFLICT on PostgreSQL, peak
RSS under 150 MB whatever the file size (a file of about 1 GB is loaded too). The shell's
``.import`` into an empty table is reported too, as information: it is not the same work.

Real files change little: a second file shape has 2% of its rows changed against a table
that holds yesterday's version, where the baselines still upsert every row. Target on
SQLite: >= 2x the same-work shell.

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
FEW_EVERY = 50  # one row in 50 changes: 2%
BIG_ROW_LIMIT = 20_000_000


def _row_format(variant: int) -> Any:
    values = ["{k}"] + [f"v{variant}-{{n}}-{i}" for i in range(1, COLUMNS - 3)]
    values += ['"Acme, Inc. #{a}"', '"line one\r\nline two {b}"', "2026-11-27"]
    return (",".join(values) + "\r\n").format


def write_csv(path: Path, rows: int, *, variant: int = 0, every: int = 1) -> int:
    """Write the benchmark file; ``variant`` changes values but not keys. Returns bytes.

    With ``every`` > 1 only one row in ``every`` has the variant's values, the others those
    of variant 0: yesterday's file, bar a few rows. Every row has 36 short values, a quoted
    comma, a quoted CR LF and a date. Rows come from a format string, which keeps writing
    the 1 GB file to about 20 seconds.
    """
    header = ["id"] + [f"field_{i}" for i in range(1, COLUMNS)]
    changed, same = _row_format(variant), _row_format(0)
    with path.open("w", newline="") as f:
        f.write(",".join(header) + "\r\n")
        for start in range(0, rows, 5000):
            block = range(start, min(start + 5000, rows))
            f.write(
                "".join(
                    [
                        (changed if n % every == 0 else same)(k=100000 + n, n=n, a=n % 97, b=n % 13)
                        for n in block
                    ]
                )
            )
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


def _shell(db: Path, script: str) -> float | None:
    """Run a script in the sqlite3 shell; its wall time, or None if it failed."""
    started = time.perf_counter()
    done = subprocess.run(["sqlite3", str(db)], input=script, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    return seconds if done.returncode == 0 and not done.stderr.strip() else None


def sqlite_prime(path: Path, db: Path) -> None:
    """The same-work baseline's table: keyed, in WAL mode, filled from ``path``."""
    columns = ", ".join(f"field_{i} text" for i in range(1, COLUMNS))
    for name in (db.name, f"{db.name}-wal", f"{db.name}-shm"):
        (db.parent / name).unlink(missing_ok=True)
    script = (
        f"PRAGMA journal_mode=WAL;\nCREATE TABLE baseline (id text PRIMARY KEY, {columns});\n"
        f'.import --csv --skip 1 "{path}" baseline\n'
    )
    if _shell(db, script) is None:
        raise RuntimeError("the sqlite3 shell could not prime its table")


def sqlite_same_work(path: Path, db: Path) -> float | None:
    """The same-work baseline: the shell imports into a temporary stage, then upserts."""
    updates = ", ".join(f"field_{i} = excluded.field_{i}" for i in range(1, COLUMNS))
    script = (
        "PRAGMA synchronous=FULL;\n"
        f'.import --csv --schema temp "{path}" stage\n'
        "INSERT INTO baseline SELECT * FROM temp.stage WHERE true"
        f" ON CONFLICT (id) DO UPDATE SET {updates};\n"
    )
    return _shell(db, script)


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
    sqlite: bool = True,
) -> dict[str, Any]:
    """Measure; ``postgres`` is a server URL (a scratch database is made on it); without
    ``sqlite``, PostgreSQL alone."""
    results: dict[str, Any] = {"rows": rows, "columns": COLUMNS, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="aljex-bench-") as tmp:
        work = Path(tmp)
        first = work / "first.csv"
        write_csv(first, rows, variant=0)
        # Each timed load brings new values: alternate between two files.
        files = [work / "bench-1.csv", work / "bench-2.csv"]
        results["file_mb"] = write_csv(files[0], rows, variant=1) / 1e6
        write_csv(files[1], rows, variant=2)

        # Yesterday's file bar 2% of rows: the two files change alternate rows' values.
        few = [work / "few-1.csv", work / "few-2.csv"]
        write_csv(few[0], rows, variant=4, every=FEW_EVERY)
        write_csv(few[1], rows, variant=5, every=FEW_EVERY)

        shell = bool(shutil.which("sqlite3"))
        if shell and sqlite:
            imports = [sqlite_import(files[0], work / "baseline.db") for _ in range(repeats)]
            if None not in imports:
                results["sqlite_import_s"] = min(i for i in imports if i is not None)
        if sqlite:
            results.update(_sqlite(work, first, files, repeats, "", shell=shell))
            results.update(_sqlite(work, first, few, repeats, "_few", shell=shell))

        if postgres:
            try:
                results.update(_postgres(postgres, first, files, repeats))
                results.update(_postgres(postgres, first, few, repeats, "_few"))
            except Exception as e:  # a benchmark reports what failed and goes on
                results["postgres_error"] = f"{type(e).__name__}: {e}".splitlines()[0]

        if big_gb:
            for path in (first, *files, *few):
                path.unlink()
            big = work / "big.csv"
            big_rows = min(int(rows * big_gb * 1e9 / (results["file_mb"] * 1e6)), BIG_ROW_LIMIT)
            started = time.perf_counter()
            results["big_mb"] = write_csv(big, big_rows, variant=3) / 1e6
            results["big_write_s"] = time.perf_counter() - started
            results["big"] = _load(f"sqlite:///{work / 'big.db'}", big)
    return results


def _sqlite(
    work: Path, first: Path, files: list[Path], repeats: int, suffix: str, *, shell: bool
) -> dict[str, Any]:
    """aljex-sync and the same-work shell, each on a table filled from ``first``, then
    loading ``files`` in turn, alternating; results keyed ``sqlite{suffix}``."""
    db, base = work / "aljex.db", work / "baseline-keyed.db"
    for path in (db, base):
        for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
            (work / name).unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    ours_first = _load(url, first)  # the table holds the same keys before the timed loads
    if shell:
        sqlite_prime(first, base)
    baseline: list[float | None] = []
    ours: list[dict[str, Any]] = []
    for i in range(repeats):
        if shell:
            baseline.append(sqlite_same_work(files[i % 2], base))
        ours.append(_load(url, files[i % 2]) if ours_first["status"] == "loaded" else ours_first)
    results: dict[str, Any] = {f"sqlite{suffix}": _best(ours)}
    if baseline and None not in baseline:
        results[f"sqlite_shell{suffix}_s"] = min(b for b in baseline if b is not None)
    return results


def _postgres(
    server: str, first: Path, files: list[Path], repeats: int, suffix: str = ""
) -> dict[str, Any]:
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
        return {f"postgres_copy{suffix}_s": min(copies), f"postgres{suffix}": _best(ours)}


def _ratio(base: float, ours: dict[str, Any]) -> str:
    return f"{base / float(ours['seconds']):.2f}x" if ours.get("status") == "loaded" else "-"


def _ours(r: dict[str, Any]) -> str:
    if r.get("status") != "loaded":
        return f"{r.get('status', 'failed')}: {r.get('error', '')}"
    return f"{float(r['seconds']):.2f} s"


def _peak(r: dict[str, Any]) -> str:
    return f"{float(r['peak_mb']):.0f} MB" if "peak_mb" in r else "-"


def _row(
    name: str, ours: dict[str, Any], base: float | None, label: str, target: float | None
) -> str:
    """One line of the table; ``target`` is the least speed against the baseline, if any."""
    if base is None:
        return f"| {name} | {_ours(ours)} | no {label} to compare | | | {_peak(ours)} | ? |"
    loaded = ours.get("status") == "loaded"
    wanted = "" if target is None else f">= {target:g}x"
    met = ""
    if target is not None:
        ok = loaded and base / float(ours["seconds"]) >= target and ours["peak_mb"] < 150
        met = "yes" if ok else "NO"
    return (
        f"| {name} | {_ours(ours)} | {base:.2f} s ({label}) | {_ratio(base, ours)} |"
        f" {wanted} | {_peak(ours)} | {met} |"
    )


def table(r: dict[str, Any]) -> list[str]:
    """The results as markdown lines."""
    lines = [
        f"Full-mode loads of {r['rows']:,} rows x {r['columns']} columns "
        f"({r['file_mb']:.0f} MB) into a table holding the same keys, with every row changed"
        f" or 2% of them (best of {r.get('repeats', 1)}; peak RSS under 150 MB is a target"
        " everywhere):",
        "",
        "| load | aljex-sync | baseline | speed vs baseline | target | peak RSS | met |",
        "|---|---|---|---|---|---|---|",
    ]
    shell = "`sqlite3` shell: stage + upsert"
    for suffix, changed, target in (("", "every row", 0.8), ("_few", "2% of rows", 2.0)):
        if f"sqlite{suffix}" in r:
            name = f"SQLite, {changed} changed"
            base = r.get(f"sqlite_shell{suffix}_s")
            lines.append(_row(name, r[f"sqlite{suffix}"], base, shell, target))
    copy = "COPY + ON CONFLICT"
    for suffix, changed, target in (("", "every row", 0.9), ("_few", "2% of rows", None)):
        if f"postgres{suffix}" in r:
            name = f"PostgreSQL, {changed} changed"
            base = r.get(f"postgres_copy{suffix}_s")
            lines.append(_row(name, r[f"postgres{suffix}"], base, copy, target))
    if "postgres_error" in r:
        lines.append(f"| PostgreSQL | not measured: {r['postgres_error']} | | | >= 0.9x | | ? |")
    if "big" in r:
        big = r["big"]
        ok = big.get("status") == "loaded" and big["peak_mb"] < 150
        lines.append(
            f"| SQLite, {r['big_mb'] / 1000:.1f} GB file (empty table) | {_ours(big)} | | |"
            f" | {_peak(big)} | {'yes' if ok else 'NO'} |"
        )
    if "sqlite_import_s" in r and "sqlite" in r:
        lines += [
            "",
            f"For information, not the same work: `sqlite3 .import` of the file into an empty"
            f" table took {r['sqlite_import_s']:.2f} s"
            f" ({_ratio(r['sqlite_import_s'], r['sqlite'])} of it for the every-row load).",
        ]
    return lines
