"""``aljex-sync events`` and ``aljex-sync files``: what the journal and the file log hold.

Both only read, from a database aljex-sync has set up, and fit 80 columns; ``--json``
gives the same rows to scripts.
"""

from __future__ import annotations

import json

import click

from .. import journal_query
from ..errors import AljexSyncError
from .common import Context, console, database, fail, fitting_table

_limit = click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="List at most this many, newest first.",
)
_as_json = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.command()
@click.option("--status", type=click.Choice(journal_query.EVENT_STATUSES), help="Only this status.")
@click.option("--table", help="Only events for this table.")
@click.option(
    "--since", help="Only since: a duration (90m, 2h, 3d) or a UTC time (2026-03-02T06:30)."
)
@click.option(
    "--with-warnings",
    is_flag=True,
    help="Only requests accepted with a warning (a field sent twice, bytes not UTF-8).",
)
@_limit
@_as_json
@click.pass_obj
def events(
    obj: Context,
    status: str | None,
    table: str | None,
    since: str | None,
    with_warnings: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List the latest Live Sync requests in the journal, with what became of each and why,
    and the warnings of a request accepted with something odd in it.

    For example, `aljex-sync events --status held` shows the records waiting for a replay.
    Changes nothing.
    """
    try:
        start = journal_query.parse_since(since) if since else None
    except AljexSyncError as e:
        fail(str(e))
    except OverflowError:  # a duration reaching back past year 1
        fail(f"--since {since!r}: reaches back past the earliest date; give a shorter duration")
    with database(obj.settings) as engine:
        found = journal_query.list_events(
            engine,
            status=status,
            table=table,
            since=start,
            with_warnings=with_warnings,
            limit=limit,
        )
    if as_json:
        click.echo(json.dumps([vars(line) for line in found], indent=2, default=str))
        return
    listing = fitting_table(
        "Events, newest first", "id", "received (UTC)", "table", "action", "key", "status", "reason"
    )
    for line in found:
        listing.add_row(
            str(line.id),
            f"{line.received_at:%m-%d %H:%M:%S}",
            line.table or "-",
            line.action or "-",
            line.key or "-",
            line.status,
            _why(line),
        )
    console.print(listing if found else "No events match.")


SHOWN_WARNINGS = 3  # a request may carry hundreds (every field sent twice); --json has all


def _why(line: journal_query.EventLine) -> str:
    """The reason, then each warning on a line of its own under it."""
    notes = [f"warning: {w}" for w in line.warnings[:SHOWN_WARNINGS]]
    if len(line.warnings) > SHOWN_WARNINGS:
        notes.append(f"(and {len(line.warnings) - SHOWN_WARNINGS} more warnings; see --json)")
    return "\n".join([line.reason, *notes] if line.reason else notes) or "-"


@click.command()
@click.option("--status", type=click.Choice(journal_query.FILE_STATUSES), help="Only this status.")
@_limit
@_as_json
@click.pass_obj
def files(obj: Context, status: str | None, limit: int, as_json: bool) -> None:
    """List the latest morning files: what each loaded, or why it was not. Changes nothing."""
    with database(obj.settings) as engine:
        found = journal_query.list_files(engine, status=status, limit=limit)
    if as_json:
        rows = [
            {k: v for k, v in vars(f).items() if k != "error"} | {"reason": f.error} for f in found
        ]
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    listing = fitting_table(
        "Morning files, newest first", "file -> table", "status", "rows", "finished", "reason"
    )
    for f in found:
        listing.add_row(
            f"{f.name} -> {f.table or '?'}",
            f.status,
            f"{f.rows_read} +{f.inserted} ~{f.updated} -{f.deleted}",
            f"{f.finished_at:%m-%d %H:%M}",
            f.error or "-",
        )
    console.print(listing if found else "No files match.")
