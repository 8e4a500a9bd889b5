"""``aljex-sync demo``: the service against the emulator, on a scratch SQLite database."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import Progress, TextColumn
from rich.table import Table

from ..demo import run_demo
from ..emulate.sender import LiveReport
from .common import console


@click.command()
@click.option("--seconds", default=60.0, show_default=True, help="How long to send live changes.")
@click.option("--rate", default=100.0, show_default=True, help="Live changes per second.")
@click.option("--seed", default=7, show_default=True, help="Seed of the emulated brokerage.")
@click.option(
    "--folder",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the database and files here (default: a new temporary folder).",
)
def demo(seconds: float, rate: float, seed: int, folder: Path | None) -> None:
    """See the whole product work: emulated Aljex feeds into a scratch SQLite database.

    Starts the service with its SFTP server, uploads a morning export, sends live changes,
    prints the rows per table, and ends with the check of every row against the
    emulator's ground truth. Needs no config file.
    """
    logging.getLogger("aljex_sync").setLevel(logging.WARNING)  # the steps tell the story
    with Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.fields[sent]} sent"),
        TextColumn("{task.fields[rate]:.0f}/s"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("live changes", sent=0, rate=0.0)

        def live_progress(report: LiveReport) -> None:
            bar.update(task, sent=report.delivered, rate=report.per_second)

        result = run_demo(
            folder,
            seconds=seconds,
            rate=rate,
            seed=seed,
            step=lambda text: console.print(
                f"[bold]>[/] {escape(text)}", markup=True, highlight=False
            ),
            live_progress=live_progress,
        )
    loaded = sum(f.status == "loaded" for f in result.files)
    console.print(f"  morning: {len(result.morning.files)} files uploaded, {loaded} loaded")
    console.print(
        f"  live: {result.live.delivered} changes delivered, {result.live.failed} failed,"
        f" {result.live.per_second:.0f}/s"
    )
    counts = Table("table", "rows in the database", "rows Aljex has", "differences")
    for t in result.verify.tables:
        counts.add_row(
            t.table,
            str(result.row_counts.get(t.table, 0)),
            str(t.expected_rows),
            str(t.missing + t.extra + t.differing),
        )
    console.print(counts)
    if result.verify.ok:
        console.print(
            "[bold green]verify: zero differences[/] — the database is true to Aljex.",
            markup=True,
        )
    else:
        console.print(f"[bold red]verify: {result.verify.differences} differences[/]", markup=True)
        for example in result.verify.examples[:10]:
            console.print(f"  {example}", highlight=False)
    console.print(f"Database and files: {result.folder}")
    if not result.verify.ok:
        sys.exit(1)
