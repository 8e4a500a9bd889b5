"""The ``aljex-sync`` command: parse options, call the library, print. Nothing else.

One module per command (or group of commands), each a click command of its own; this
module holds the group and adds them to it. What they share is in ``common``: the
consoles, ``fail``, the config (``Context``) and the one way to open the database
(``database``), and the options every command takes before or after its name
(``shared_options``). A new command is a new module here and one line in the list below.
"""

from __future__ import annotations

from pathlib import Path

import click

from .. import __version__
from ..emulate.commands import emulate
from .check import check
from .common import group_options, shared_options, start
from .demo import demo
from .history import history
from .init import init
from .journal_lists import events, files
from .load import load
from .prune import prune
from .replay import replay
from .serve import serve
from .status import status


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@group_options
@click.version_option(__version__, prog_name="aljex-sync")
@click.pass_context
def main(
    ctx: click.Context, config_path: Path | None, log_level: str | None, log_format: str | None
) -> None:
    """Keep your own database true to Aljex.

    aljex-sync receives Aljex's Database Synchronization feeds, the Live Sync HTTP posts
    and the Morning Sync CSV files, and writes every record into SQLite, PostgreSQL or
    MySQL/MariaDB.

    Start with `aljex-sync init`, send Aljex what it prints, then run `aljex-sync serve`.
    """
    start(ctx, config_path, log_level, log_format)


for command in (
    init,
    serve,
    check,
    status,
    events,
    files,
    load,
    replay,
    prune,
    demo,
    emulate,
    history,
):
    main.add_command(shared_options(command))
