"""Planning one request for the journal: parse it, check its table and key, make its columns.

A plan says what is to become of one request before anything is written: applied (with the
table, the key and the values in column order), held with a reason, or rejected. Making
the plan may create a table or add columns (``Schema.ensure``), so that the group's
transaction has only rows to write. ``[live] accept_tables`` and ``max_tables`` are
checked here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from .config import Settings, TableSettings
from .errors import DatabaseUnavailable, TableNotAccepted, WireError, WrongPath
from .messages import Received, Status
from .store.database import translate
from .store.rows import record_key
from .store.schema import Schema, SyncedTable
from .wire import Change, parse_body

MAX_SHAPES = 4096
KEY_WIDTH = 255  # a key column of a synced table
TOMBSTONE_KEY_WIDTH = 700


@dataclass(slots=True)
class Plan:
    """What is to become of one request, and what writing it needs."""

    received: Received
    change: Change | None
    rejection: WireError | None
    status: Status
    reason: str = ""
    key: str = ""
    synced: SyncedTable | None = None
    key_values: dict[str, str] = field(default_factory=dict)
    columns: tuple[str, ...] = ()  # the record's columns, and its values in their order
    values: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    replay_of: int | None = None
    bare: bool = False  # journal the request with its body and reason only

    @property
    def table(self) -> str | None:
        if self.change is not None:
            return self.change.table
        return self.rejection.table if self.rejection else None

    @property
    def action(self) -> str | None:
        if self.change is not None:
            return self.change.action
        return self.rejection.action if self.rejection else None


def hold(plan: Plan, reason: str) -> Plan:
    """The plan, now held for ``reason``."""
    plan.status = "held"
    plan.reason = reason
    return plan


class Planner:
    """Makes plans with one schema and one configuration, remembering the shapes it saw."""

    def __init__(self, schema: Schema, settings: Settings) -> None:
        self.schema = schema
        self.settings = settings
        # The columns of each (table, field names) the writer has seen: Aljex sends the
        # same fields for every record of a table, and a field's column never changes once
        # made, so a known shape needs neither ensure() nor a lookup per field.
        self._columns: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        self._settings_of: dict[str, TableSettings] = {}

    def _astray(self, received: Received, wrong: WrongPath, replay_of: int | None) -> Plan:
        """A request posted to a wrong path, rejected, but journaled with the table, action
        and key its body names (if it reads), so ``status``, ``events --table`` and ``replay
        --table`` find the records that went astray."""
        live = self.settings.live
        try:
            change = parse_body(
                received.body, legacy_charset=live.legacy_charset, max_fields=live.max_fields
            )
        except WireError:
            return Plan(received, None, wrong, "rejected", wrong.reason, replay_of=replay_of)
        plan = Plan(received, change, wrong, "rejected", wrong.reason, replay_of=replay_of)
        names = [
            SyncedTable.key_field_for_names(change.fields, k)
            for k in self.table_settings(change.table).key
        ]
        if all(names):
            plan.key = record_key([change.fields[n] for n in names if n is not None])
        return plan

    def plan(self, received: Received, replay_of: int | None) -> Plan:
        """Parse a request and decide what to do with it; creates tables and columns it needs."""
        rejection = received.rejection
        if rejection is None:
            live = self.settings.live
            try:
                change = parse_body(
                    received.body, legacy_charset=live.legacy_charset, max_fields=live.max_fields
                )
            except WireError as e:
                rejection = e
        if rejection is None:
            existing = self.schema.tables.get(change.table)
            if existing is None:
                existing, rejection = self._new_table(change)
        if isinstance(rejection, WrongPath):
            return self._astray(received, rejection, replay_of)
        if rejection is not None:
            return Plan(
                received, None, rejection, "rejected", rejection.reason, replay_of=replay_of
            )
        settings = self.table_settings(change.table)
        plan = Plan(
            received, change, None, "applied", warnings=change.warnings, replay_of=replay_of
        )
        key_fields = settings.key
        if existing is not None and [k.lower() for k in existing.key_fields] != [
            k.lower() for k in key_fields
        ]:
            return hold(
                plan,
                f"table {change.table} was created with key ({', '.join(existing.key_fields)}) "
                f"but the configuration says ({', '.join(key_fields)})",
            )
        fields = change.fields
        key_values: list[str] = []
        for key_field in key_fields:
            sent = (
                key_field
                if key_field in fields
                else SyncedTable.key_field_for_names(fields, key_field)
            )
            if sent is None:
                return hold(plan, f"key field {key_field!r} is missing")
            value = fields[sent]
            if value == "":
                return hold(plan, f"key field {key_field!r} is empty")
            if len(value) > KEY_WIDTH:
                return hold(plan, f"key field {key_field!r} is over {KEY_WIDTH} characters")
            if sent != key_field:  # sent in another case: keep it under the configured name
                fields = {n: v for n, v in fields.items() if n != sent}
                fields[key_field] = value
            key_values.append(value)
        plan.key = record_key(key_values)
        if change.action == "delete":
            if len(plan.key) > TOMBSTONE_KEY_WIDTH:
                return hold(plan, f"the key is over {TOMBSTONE_KEY_WIDTH} characters")
            if existing is None:  # no row to delete, but a tombstone all the same
                plan.reason = "no such table yet; nothing to delete"
                return plan
            plan.synced = existing
            plan.key_values = {existing.columns[k]: fields[k] for k in key_fields}
            return plan
        names = tuple(fields)
        columns = self._columns.get((change.table, names)) if existing is not None else None
        if columns is None:
            too_wide = self.schema.too_wide(change.table, key_fields, names)
            if too_wide:
                return hold(plan, too_wide)
            try:
                existing = self.schema.ensure(change.table, key_fields, fields)
            except SQLAlchemyError as e:
                error = translate(e, change.table)
                if isinstance(error, DatabaseUnavailable):
                    raise error from e
                return hold(plan, str(error))
            columns = tuple(existing.columns[f] for f in names)
            if len(self._columns) >= MAX_SHAPES:
                self._columns.clear()
            self._columns[change.table, names] = columns
        assert existing is not None
        plan.synced = existing
        plan.key_values = {existing.columns[k]: fields[k] for k in key_fields}
        plan.columns = columns
        plan.values = tuple(fields.values())
        return plan

    def _new_table(self, change: Change) -> tuple[SyncedTable | None, WireError | None]:
        """A table this writer has not seen: made meanwhile elsewhere, or may it be made?

        ``[live] accept_tables`` and ``max_tables`` are checked here, so that Live Sync
        cannot fill the database with tables. The refusal is a 403; the request is
        journaled as rejected and can be replayed once the configuration allows it.
        """
        live = self.settings.live
        if live.accept_tables and change.table not in live.accept_tables:
            return None, TableNotAccepted(
                f"table {change.table} is not in [live] accept_tables",
                table=change.table,
                action=change.action,
            )
        if change.action == "delete" or len(self.schema.tables) >= live.max_tables:
            # Made by a morning load or another process since this copy was read?
            self.schema.reload()
            existing = self.schema.tables.get(change.table)
            if existing is not None:
                return existing, None
        if change.action != "delete" and len(self.schema.tables) >= live.max_tables:
            return None, TableNotAccepted(
                f"table {change.table} would be a new table beyond "
                f"[live] max_tables = {live.max_tables}",
                table=change.table,
                action=change.action,
            )
        return None, None

    def table_settings(self, table: str) -> TableSettings:
        """``settings.table(table)``, made once per table: it builds a new object each call."""
        found = self._settings_of.get(table)
        if found is None:
            found = self._settings_of[table] = self.settings.table(table)
        return found
