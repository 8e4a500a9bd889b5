"""``aljex-sync history TABLE KEY``: every version of one record, from ``<table>__history``.

Only reads. A version shows when it was true, what made it, and the fields it changed
(the first one, every field with a value), not all 400: each line fits 80 columns.
"""

from __future__ import annotations

import json
from datetime import datetime

import click

from ..store.history import Version, versions
from ..store.rows import record_key
from ..store.schema import Schema, history_name
from .common import Context, database, fail

WIDTH = 80


@click.command()
@click.argument("table")
@click.argument("key", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON, every field of every version.")
@click.pass_obj
def history(obj: Context, table: str, key: tuple[str, ...], as_json: bool) -> None:
    """Show every version of the record of TABLE with KEY, oldest first: when each was
    true, what made it (a live event or a morning file), and which fields it changed.

    A table with a key of several fields takes them in order: `history quotes Q1 2`.
    Needs `[tables.TABLE] history = true` (on for loads). Changes nothing.
    """
    table = table.lower()
    with database(obj.settings) as engine:
        schema = Schema(engine)
        schema.reload()
        synced = schema.tables.get(table)
        if synced is None:
            fail(f"no table {table} in the database")
        if len(key) != len(synced.key_columns):
            fields = ", ".join(synced.key_fields)
            fail(f"table {table} has a key of {len(synced.key_columns)} field(s) ({fields})")
        found = versions(engine, synced, key)
    if found is None:
        fail(
            f"table {table} keeps no history ({history_name(table)} does not exist);"
            f" set [tables.{table}] history = true and restart"
        )
    if as_json:
        click.echo(json.dumps([vars(v) for v in found], indent=2, default=str))
        return
    name = f"{table} {record_key(list(key))}"
    if not found:
        click.echo(f"{name}: no versions")
        return
    click.echo(_fit(f"{name}: {len(found)} version(s), oldest first"))
    for version in found:
        for line in describe(version):
            click.echo(_fit(line))


def describe(version: Version) -> list[str]:
    """The lines of one version: a heading, then each changed field."""
    until = _when(version.valid_to) if version.valid_to is not None else "now"
    if version.action == "delete":
        span = f"at {_when(version.valid_from)}"
    else:
        span = f"{_when(version.valid_from)} -> {until}"
    by = f"event {version.event_id}" if version.event_id is not None else version.source or "?"
    lines = [f"#{version.version} {version.action} {span} ({by})"]
    if version.action == "delete":
        return lines
    for field in version.changed:
        now = _value(version.fields[field])
        was = f"{_value(version.was[field])} -> " if field in version.was else ""
        lines.append(f"    {field}: {was}{now}")
    if not version.changed:
        lines.append("    (no field changed)")
    return lines


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def _value(value: str | None) -> str:
    shown = "" if value is None else value
    return json.dumps(shown, ensure_ascii=False) if not shown.isprintable() or not shown else shown


def _fit(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."
