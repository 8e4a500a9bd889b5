"""One exception tree for aljex-sync.

Errors carry their context (table, field, file, line) and are mapped to HTTP status codes or
CLI messages only at the edge (``live.py``, ``cli.py``)::

    AljexSyncError
    ├── ConfigError                  a configuration value is wrong; names the key
    ├── WireError                    a Live Sync request that cannot be read as a record
    │   ├── MalformedRequest         400: no table or action, broken encoding, bad name, NUL
    │   ├── RequestTooLarge          413: body or field count over the limits
    │   ├── UnsupportedMediaType     415: a content type other than form-urlencoded
    │   ├── TableNotAccepted         403: a table outside [live] accept_tables or max_tables
    │   └── UnknownAction            422: an action that is not create, update or delete
    ├── RecordNotApplicable          terminal for one record: it is held, the reply is 200
    ├── MorningFileError             a Morning Sync file that cannot be loaded as a whole
    │   └── MalformedFile            (csvfile.py) bad CSV: moved to inbox/failed/ with the line
    ├── EmulatorError                (emulate/state.py) the emulator's state or options are wrong
    ├── DatabaseTooNew               (store/migrations.py) a newer aljex-sync's bookkeeping tables
    ├── NotReplayable                (journal.py) replay named an event that is not held
    ├── ReplayRunning                (replay_lock.py) another replay is at work on the journal
    └── DatabaseUnavailable          transient: nothing is acknowledged, the reply is 503

Terminal errors concern one record and retrying will not help until the operator changes
something (a key, the schema); transient errors concern the database as a whole and a retry
later will succeed.
"""

from __future__ import annotations


class AljexSyncError(Exception):
    """Base of every error aljex-sync raises on purpose."""


class ConfigError(AljexSyncError):
    """A configuration value is missing or wrong. ``key`` is its dotted name."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason


class WireError(AljexSyncError):
    """A Live Sync request that cannot be read as a record.

    ``table`` and ``action`` are what could be read before the error, so the journal can
    still say which table a rejected request was for.
    """

    def __init__(self, reason: str, *, table: str | None = None, action: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.table = table
        self.action = action


class MalformedRequest(WireError):
    """The body is not a well-formed sync request."""


class RequestTooLarge(WireError):
    """The body or its number of fields is over the configured limit."""


class UnsupportedMediaType(WireError):
    """The request declares a content type that is not form-urlencoded."""


class TableNotAccepted(WireError):
    """A record for a table Live Sync may not write: not in ``accept_tables``, or a new
    table beyond ``max_tables``."""


class UnknownAction(WireError):
    """``web_sync_action`` is none of create, update, delete or their known synonyms."""


class WrongPath(WireError):
    """A request posted, with the right credentials, to a path that is not Live Sync's:
    Aljex given a wrong URL. Journaled, so ``status`` shows it and ``replay
    --include-rejected`` can apply its records once the URL is fixed."""


class RecordNotApplicable(AljexSyncError):
    """A well-formed record that cannot be applied: it is held in the journal."""

    def __init__(self, table: str, reason: str) -> None:
        super().__init__(f"{table}: {reason}")
        self.table = table
        self.reason = reason


class DatabaseUnavailable(AljexSyncError):
    """The database is down, unreachable or locked past the timeout."""


class MorningFileError(AljexSyncError):
    """A Morning Sync file that is not applied; it is quarantined or held with the reason."""


class DatabaseTooNew(AljexSyncError):
    """The bookkeeping tables are of a schema version newer than this aljex-sync knows."""


class NotReplayable(AljexSyncError):
    """Replay was asked for events that are not waiting for it: applied or superseded ones
    (applying them again would version and notify them twice), rejected ones without
    ``include_rejected``, or ids not in the journal. ``refused`` maps each id to its status,
    None for a missing one."""

    def __init__(self, refused: dict[int, str | None]) -> None:
        super().__init__(
            ", ".join(
                f"event {i} is {status}" if status else f"there is no event {i}"
                for i, status in refused.items()
            )
        )
        self.refused = refused


class ReplayRunning(AljexSyncError):
    """A replay was asked for while another runs on the same journal (from this host or
    another): the second is refused at once, naming the first, rather than racing it."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"another replay is running ({holder}); try again when it ends")
        self.holder = holder
