"""How long adding many columns to a table takes on SQLite, in a database of wide tables.

``python -m bench.wide_columns``: a SQLite database is given ``--tables`` tables of
``--width`` fields, each with its typed view (the schema SQLite re-reads at each change of
it), then one more table gets ``--add`` new fields, and ``--add`` more: the seconds each
``Schema.ensure`` takes are printed. That is the time the journal's writer holds the
database's write lock, every other write waiting (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from aljex_sync.store.database import open_engine
from aljex_sync.store.schema import Schema
from aljex_sync.store.views import TypedViews


def run(folder: Path, *, tables: int, width: int, add: int, rows: int) -> dict[str, float]:
    engine = open_engine(f"sqlite:///{folder / 'wide.db'}")
    schema = Schema(engine)
    schema.install()
    views = TypedViews(engine)
    for t in range(tables):
        name = f"wide{t}"
        schema.ensure(name, ["id"], ["id", *(f"f{t}_{i:04d}" for i in range(width))])
        views.refresh(name)
    schema.ensure("target", ["id"], ["id", "status"])
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO target (id, status) SELECT 'K' || i, 'OPEN' FROM n",
            (rows,),
        )
    views.refresh("target")
    timings: dict[str, float] = {}
    for step in ("first", "second"):
        fields = [f"{step}_{i:04d}" for i in range(add)]
        began = time.perf_counter()
        schema.ensure("target", ["id"], ["id", *fields])
        timings[step] = time.perf_counter() - began
    with engine.connect() as conn:
        timings["schema_bytes"] = float(
            conn.exec_driver_sql("SELECT sum(length(sql)) FROM sqlite_master").scalar_one()
        )
    engine.dispose()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=4, help="wide tables already there")
    parser.add_argument("--width", type=int, default=990, help="fields of each wide table")
    parser.add_argument("--add", type=int, default=500, help="fields added, twice")
    parser.add_argument("--rows", type=int, default=1000, help="rows of the growing table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        timings = run(
            Path(folder), tables=args.tables, width=args.width, add=args.add, rows=args.rows
        )
    print(
        f"{args.tables} tables of {args.width} fields and their views"
        f" ({timings['schema_bytes'] / 1e6:.1f} MB of schema at the end), a table of"
        f" {args.rows} rows: {args.add} columns added in {timings['first']:.2f} s,"
        f" {args.add} more in {timings['second']:.2f} s"
    )


if __name__ == "__main__":
    main()
