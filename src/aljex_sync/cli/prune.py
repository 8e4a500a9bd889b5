"""``aljex-sync prune``: applied events past ``[journal] keep_days`` leave the journal, and
tombstones past ``[journal] tombstone_days`` leave ``_aljex_tombstones``."""

from __future__ import annotations

import click

from .. import retention
from ..config import tombstone_days_problem
from .common import Context, console, database, fail


@click.command()
@click.option(
    "--keep-days",
    type=click.IntRange(min=0),
    help="Default: [journal] keep_days. 0: keep them all.",
)
@click.option(
    "--tombstone-days",
    type=click.IntRange(min=0),
    help="Default: [journal] tombstone_days. 0 (keep them all) or at least 2.",
)
@click.option("--dry-run", is_flag=True, help="Count what would go; remove nothing.")
@click.pass_obj
def prune(obj: Context, keep_days: int | None, tombstone_days: int | None, dry_run: bool) -> None:
    """Remove applied events older than [journal] keep_days from the journal, and the
    tombstones of deletes older than [journal] tombstone_days.

    Held and rejected events are kept until a replay applies them. `serve` prunes once a
    day by itself; this is for a first clean-up or a shorter span. Safe while `serve` runs.
    """
    settings = obj.settings
    days = keep_days if keep_days is not None else settings.journal.keep_days
    tomb_days = tombstone_days if tombstone_days is not None else settings.journal.tombstone_days
    problem = tombstone_days_problem(tomb_days, settings.morning.snapshot_margin)
    if problem:
        fail(f"--tombstone-days {problem}")
    # Where a 0 (keep forever) came from, to say so.
    days_from = "--keep-days 0" if keep_days is not None else "[journal] keep_days = 0"
    tomb_from = (
        "--tombstone-days 0" if tombstone_days is not None else "[journal] tombstone_days = 0"
    )
    if not days and not tomb_days:
        fail(
            f"nothing to prune: {days_from} and {tomb_from} keep everything;"
            " give --keep-days N or --tombstone-days N"
        )
    verb = "Would remove" if dry_run else "Removed"
    lines = []
    with database(settings) as engine:
        if days:
            report = retention.prune(engine, days, dry_run=dry_run)
            lines.append(
                f"{verb} {report.removed} applied event{'s' if report.removed != 1 else ''}"
                f" received before {report.cutoff:%Y-%m-%d %H:%M} UTC ({days} days kept)."
            )
        else:
            lines.append(f"Applied events are kept forever ({days_from}).")
        if tomb_days:
            report = retention.prune_tombstones(engine, tomb_days, dry_run=dry_run)
            lines.append(
                f"{verb} {report.removed} tombstone{'s' if report.removed != 1 else ''}"
                f" of deletes before {report.cutoff:%Y-%m-%d %H:%M} UTC"
                f" ({tomb_days} days kept)."
            )
        else:
            lines.append(f"Tombstones are kept forever ({tomb_from}).")
    for line in lines:  # one line each, unwrapped: scripts read them
        console.print(line, markup=False, highlight=False, soft_wrap=True)
