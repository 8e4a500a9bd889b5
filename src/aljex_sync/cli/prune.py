"""``aljex-sync prune``: applied events past ``[journal] keep_days`` leave the journal."""

from __future__ import annotations

import click

from .. import retention
from .common import Context, console, database, fail


@click.command()
@click.option("--keep-days", type=click.IntRange(min=1), help="Default: [journal] keep_days.")
@click.option("--dry-run", is_flag=True, help="Count what would go; remove nothing.")
@click.pass_obj
def prune(obj: Context, keep_days: int | None, dry_run: bool) -> None:
    """Remove applied events older than [journal] keep_days from the journal.

    Held and rejected events are kept until a replay applies them. `serve` prunes once a
    day by itself; this is for a first clean-up or a shorter span. Safe while `serve` runs.
    """
    settings = obj.settings
    days = keep_days if keep_days is not None else settings.journal.keep_days
    if not days:
        fail("[journal] keep_days is 0 (keep forever): give --keep-days N to prune")
    with database(settings) as engine:
        report = retention.prune(engine, days, dry_run=dry_run)
    verb = "Would remove" if dry_run else "Removed"
    console.print(
        f"{verb} {report.removed} applied event{'s' if report.removed != 1 else ''}"
        f" received before {report.cutoff:%Y-%m-%d %H:%M} UTC ({days} days kept).",
        highlight=False,
    )
