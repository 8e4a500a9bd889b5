"""``aljex-sync check``: would ``serve`` start? Every problem, one line each."""

from __future__ import annotations

import sys

import click

from .. import config, preflight
from ..errors import ConfigError
from .common import Context


@click.command()
@click.pass_obj
def check(obj: Context) -> None:
    """Check that `serve` can start: the config and environment, the database (reachable
    and writable), no serve already running on the SQLite database or the inbox, the ports
    (free), the inbox (made and written in, as serve would), the SFTP host key (read, or
    said to be created by serve) and the TLS files.

    Prints one line per problem and exits with status 1 on any; leaves nothing behind.
    """
    try:
        settings = config.load(obj.path)
    except ConfigError as e:
        click.echo(f"problem: {config.describe(e, obj.path)}")
        sys.exit(1)
    report = preflight.run(settings)
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    if report.problems:
        sys.exit(1)
    click.echo(f"ok: {obj.path} and the environment")
    for passed in report.passed:
        click.echo(f"ok: {passed}")
