"""``aljex-sync replay``: held events applied again with today's configuration."""

from __future__ import annotations

import click

from ..errors import NotReplayable
from ..journal import Journal
from ..replay_lock import only_replay
from .common import Context, console, database, fail


@click.command()
@click.option("--table", help="Only events for this table.")
@click.option(
    "--event",
    "event_ids",
    type=int,
    multiple=True,
    help="Only this held event (rejected with --include-rejected); repeatable.",
)
@click.option("--include-rejected", is_flag=True, help="Also retry rejected requests.")
@click.pass_obj
def replay(
    obj: Context, table: str | None, event_ids: tuple[int, ...], include_rejected: bool
) -> None:
    """Re-apply held events, oldest first, after fixing what held them.

    For example, add `key = ["pro_num"]` under [tables.invoicing], then replay: the held
    invoicing records land. Safe while `serve` runs. An event named with --event that is
    applied or superseded is refused: it is never applied twice. One replay runs at a time:
    a second one (or the admin page's button) meanwhile is refused with the first's pid.
    """
    settings = obj.settings
    counts: dict[str, int] = {}
    still_held: dict[str, int] = {}
    with database(settings) as engine:
        journal = Journal(engine, settings)
        try:
            journal.install()
            # A second replay at once is refused here, naming the first (the exit is 1).
            with only_replay(engine):
                for outcome in journal.replay(
                    table=table, event_ids=event_ids, include_rejected=include_rejected
                ):
                    counts[outcome.status] = counts.get(outcome.status, 0) + 1
                    if outcome.status == "held":
                        still_held[outcome.reason] = still_held.get(outcome.reason, 0) + 1
                    detail = f": {outcome.reason}" if outcome.reason else ""
                    console.print(
                        f"event {outcome.event_id} {outcome.table or '-'} {outcome.key or '-'}"
                        f" -> {outcome.status}{detail}",
                        highlight=False,
                    )
        except NotReplayable as e:
            fail(
                f"{e}; replay applies only held events (and rejected ones with --include-rejected)"
            )
        finally:
            journal.close()
    if not counts:
        console.print("Nothing to replay.")
    else:
        console.print("Replayed: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if still_held:
        n = sum(still_held.values())
        console.print(f"{n} record{'s stay' if n != 1 else ' stays'} held:")
        for reason, count in sorted(still_held.items(), key=lambda item: (-item[1], item[0])):
            console.print(f"  {count} {reason}", highlight=False)
        console.print("Fix the cause (often a key under [tables.NAME]), then replay again.")
