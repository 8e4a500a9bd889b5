"""What every command shares: the consoles, the one-line failure, the config and logging
options, the database."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from .. import config, logs, overview
from ..config import Settings
from ..errors import AljexSyncError, ConfigError
from ..store.database import display_url, open_engine, translate
from ..store.schema import Schema

# Markup off: what the commands print comes from the network and from file names (a table
# named "[/x]" must print as sent, not end the command); a styled line asks for markup=True.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 1."""
    line = " ".join(message.split())
    err_console.print(
        f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True
    )
    sys.exit(1)


def fitting_table(title: str, *headers: str) -> Table:
    """A table whose long cells (file names, reasons) wrap, and no word is cut short."""
    table = Table(title=title)
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


class Context:
    """What every command gets: where the config is, loaded on first use, and how it logs."""

    def __init__(self, path: Path, log_level: str = "info", log_format: str = "text") -> None:
        self.path = path
        self.log_level = log_level
        self.log_format = log_format
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = config.load(self.path)
            except ConfigError as e:
                fail(config.describe(e, self.path))
        return self._settings


# -c/--config, --log-level and --log-format: taken by the group and by every command, so
# that `aljex-sync -c X serve` and `aljex-sync serve -c X` both work. Unset unless given,
# so that a command can tell its own value (which wins) from the group's.
_SHARED_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (
        ("-c", "--config", "config_path"),
        {
            "type": click.Path(dir_okay=False, path_type=Path),
            "help": "Config file. Default: $ALJEX_SYNC_CONFIG, else ./aljex-sync.toml.",
        },
    ),
    (
        ("--log-level",),
        {
            "type": click.Choice(["debug", "info", "warning", "error"]),
            "help": "How much to log.  [default: info]",
        },
    ),
    (
        ("--log-format",),
        {
            "type": click.Choice(logs.FORMATS),
            "help": "Log lines as readable text, or one JSON object per line.  [default: text]",
        },
    ),
)
F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=click.Command)


def group_options(function: F) -> F:
    """The shared options on the group's own function, as ``config_path``, ``log_level``
    and ``log_format`` (None when not given); :func:`start` makes the Context of them."""
    for declarations, attributes in reversed(_SHARED_OPTIONS):
        function = click.option(*declarations, **attributes)(function)
    return function


def start(ctx: click.Context, config_path: Path | None, level: str | None, fmt: str | None) -> None:
    """What the group does before any command: find the config, set up logging."""
    ctx.obj = Context(config.config_path(config_path), level or "info", fmt or "text")
    logs.setup(ctx.obj.log_level, ctx.obj.log_format)


def shared_options(command: C) -> C:
    """Give ``command`` (and, for a group, each of its commands) the shared options, shown
    in its --help; a value given after the command's name wins over the group's.

    The options are taken off before the command's own function is called, so a command
    reads the config from its Context as before.
    """
    command.params.extend(
        click.Option(list(declarations), **attributes)
        for declarations, attributes in _SHARED_OPTIONS
    )
    run = command.callback

    def settle_then_run(
        *args: Any,
        config_path: Path | None = None,
        log_level: str | None = None,
        log_format: str | None = None,
        **kwargs: Any,
    ) -> Any:
        _settle(config_path, log_level, log_format)
        return run(*args, **kwargs) if run is not None else None

    if run is not None:
        functools.update_wrapper(settle_then_run, run)
    command.callback = settle_then_run
    if isinstance(command, click.Group):
        for subcommand in command.commands.values():
            shared_options(subcommand)
    return command


def _settle(config_path: Path | None, level: str | None, fmt: str | None) -> None:
    """Let a command's own shared options override the group's."""
    obj = click.get_current_context().find_object(Context)
    if obj is not None and config_path is not None:
        obj.path = config_path
    if level is None and fmt is None:
        return
    if obj is None:  # a command run on its own (tests run `emulate` so), not under the group
        logs.setup(level or "info", fmt or "text")
        return
    obj.log_level = level or obj.log_level
    obj.log_format = fmt or obj.log_format
    logs.setup(obj.log_level, obj.log_format)


@contextmanager
def database(settings: Settings, *, create: bool = False) -> Iterator[Engine]:
    """The database of ``settings``, for one command; disposed of when it is done.

    By default it must be one aljex-sync has set up, and nothing is created, not even a
    SQLite file: the command exits with one line if it is not. With ``create`` its system
    tables are made if missing. An error of the library or the database inside the block
    also ends the command with one line.
    """
    engine = _open_existing(settings) if not create else _open_created(settings)
    try:
        yield engine
    except AljexSyncError as e:
        fail(str(e))
    except SQLAlchemyError as e:
        fail(str(translate(e)))
    finally:
        engine.dispose()


def _open_created(settings: Settings) -> Engine:
    """An engine on the database, its system tables made if they are missing."""
    engine = open_engine(settings.database.url, timeout=settings.database.timeout)
    try:
        Schema(engine).install()
    except SQLAlchemyError as e:
        engine.dispose()
        fail(f"cannot open the database: {translate(e)}")
    return engine


def _open_existing(settings: Settings) -> Engine:
    """An engine on a database aljex-sync has set up; exits with one line if it has not."""
    url = settings.database.url
    where = display_url(url)
    if overview.database_file_missing(url):
        fail(f"{overview.NO_TABLES}: {where} does not exist")
    engine = open_engine(url, timeout=settings.database.timeout)
    try:
        present = overview.find_tables(engine)
    except SQLAlchemyError as e:
        engine.dispose()
        fail(f"cannot open the database: {translate(e)}")
    if not present:
        engine.dispose()
        fail(f"{overview.NO_TABLES} ({where}); `aljex-sync serve` creates them")
    return engine
