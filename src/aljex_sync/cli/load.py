"""``aljex-sync load``: Morning Sync files loaded by hand, with progress and a report each."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ..file_report import FileReport
from ..morning import MorningLoader
from ..store.locks import LOADING, FileLock, beside_sqlite
from ..store.schema import Schema
from .common import Context, console, database, err_console


@click.command()
@click.argument(
    "paths",
    metavar="FILE...",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--table", help="Load into this table instead of the one the name says.")
@click.option(
    "--mode",
    type=click.Choice(["full", "window"]),
    help="full: rows missing from the file are deleted; window: upsert only.",
)
@click.option("--force", is_flag=True, help="Load even if the guard holds it, or loaded before.")
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.pass_obj
def load(
    obj: Context,
    paths: tuple[Path, ...],
    table: str | None,
    mode: str | None,
    force: bool,
    dry_run: bool,
) -> None:
    """Load Morning Sync CSV files by hand, exactly as if they had been uploaded.

    The files stay where they are. The export time is taken from each file's modification
    time, so rows live sync changed since then are kept.
    """
    settings = obj.settings
    failed = False
    # Held while loading, so that a serve on the same SQLite database says "busy", not down.
    loading = None if dry_run else beside_sqlite(settings.database.url, LOADING)
    with suppress(OSError):
        if loading is not None:
            loading.take()
    # A dry run changes nothing, so it needs a database aljex-sync has set up.
    with closing_lock(loading), database(settings, create=not dry_run) as engine:
        schema = Schema(engine)
        schema.reload()
        loader = MorningLoader(engine, settings, schema)
        for path in paths:
            report = _load_with_progress(
                loader, path, table=table, mode=mode, force=force, dry_run=dry_run
            )
            _print_report(report)
            failed |= report.status in ("failed", "held", "unmatched")
    if failed:
        sys.exit(1)


def _load_with_progress(
    loader: MorningLoader,
    path: Path,
    *,
    table: str | None,
    mode: str | None,
    force: bool,
    dry_run: bool,
) -> FileReport:
    """Load one file, with a progress bar on a terminal."""
    size = path.stat().st_size
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[rows]} rows"),
        TimeRemainingColumn(),
    ]
    with Progress(
        *columns, console=err_console, transient=True, disable=not err_console.is_terminal
    ) as bar:
        task = bar.add_task(path.name, total=size, rows=0)

        def advance(done: int, rows: int) -> None:
            bar.update(task, completed=done, rows=rows)

        return loader.load(
            path, table=table, mode=mode, force=force, dry_run=dry_run, progress=advance
        )


def _print_report(report: FileReport) -> None:
    c = report.counts
    style = {"loaded": "green", "dry-run": "cyan", "duplicate": "yellow"}.get(report.status, "red")
    console.print(
        f"[bold]{escape(report.name)}[/] -> {escape(report.table or '?')}"
        f" ({report.mode or '-'}): [{style}]{report.status}[/]",
        markup=True,
        highlight=False,
    )
    if report.error:
        console.print(f"  {report.error}", highlight=False, soft_wrap=True)
    elif report.status in ("loaded", "dry-run"):
        for doubt in report.doubts():  # accepted, but the user should know (rows repeated)
            line = f"  [yellow]warning:[/] {escape(doubt)}"
            console.print(line, markup=True, highlight=False, soft_wrap=True)
    if report.status == "duplicate":
        console.print("  To load it again all the same, add --force.", highlight=False)
    if report.status in ("loaded", "dry-run"):
        table = Table(
            "rows read",
            "inserted",
            "updated",
            "deleted",
            "kept (newer live)",
            "missing in db",
            "extra in db",
            "differing",
        )
        table.add_row(
            *(
                str(n)
                for n in (
                    report.rows_read,
                    c.inserted,
                    c.updated,
                    c.deleted,
                    c.skipped_newer,
                    c.missing_in_db,
                    c.extra_in_db,
                    c.differing,
                )
            )
        )
        console.print(table)


@contextmanager
def closing_lock(lock: FileLock | None) -> Iterator[None]:
    """Let go of ``lock`` (if held) when the block ends."""
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
