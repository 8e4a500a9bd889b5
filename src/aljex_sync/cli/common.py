"""What every command shares: the consoles, the one-line failure, the config, the database."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from .. import config, overview
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
    """What every command gets: where the config is, loaded on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = config.load(self.path)
            except ConfigError as e:
                fail(config.describe(e, self.path))
        return self._settings


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
