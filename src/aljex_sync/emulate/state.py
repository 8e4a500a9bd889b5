"""The emulator's saved state: what it sent, so that a later run continues the feed and
``verify`` knows what the receiver must hold.

What was sent is kept in a JSON state file: the brokerage's seed, day and size, then each
live run (which changes, to which tables, which were never acknowledged) and each morning
upload (at which point of the feed, for which day, which files). A brokerage is a pure
function of its seed and the number of :meth:`~.brokerage.Brokerage.next_change` calls, so
a later process rebuilds it exactly and continues the feed where the last run stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from ..catalog import CATALOG
from ..errors import AljexSyncError
from .brokerage import Brokerage
from .world import SCALES

ALL_TABLES: tuple[str, ...] = tuple(entry.table for entry in CATALOG)
DEFAULT_SEED = 1
DEFAULT_SIZE = "small"
DEFAULT_STATE = Path("aljex-emulator.json")
STATE_VERSION = 1


class EmulatorError(AljexSyncError):
    """The emulator cannot do what it was asked: a bad state file, option, or an unreachable
    server. The message names the file, option or address."""


@dataclass
class LiveRun:
    """One ``emulate live`` run: changes ``first`` to ``first + count - 1`` of the feed.

    Every change was made (the brokerage moved on); those of a table outside ``tables``
    were not sent, and ``undelivered`` lists the indexes that were sent but never
    acknowledged with a 200, or never sent because the run stopped first.
    """

    first: int
    count: int = 0
    tables: list[str] | None = None  # None: every table
    undelivered: list[int] = field(default_factory=list)
    url: str = ""
    started_at: str = ""

    def sends(self, table: str) -> bool:
        """Whether this run sent the changes of ``table``."""
        return self.tables is None or table in self.tables


@dataclass
class MorningUpload:
    """One morning upload: the files of ``tables`` for ``day``, taken after ``position``
    changes of the feed."""

    position: int
    day: date
    tables: list[str]
    files: list[str] = field(default_factory=list)
    destination: str = ""
    uploaded_at: str = ""


Event = LiveRun | MorningUpload


@dataclass
class EmulatorState:
    """The ground truth of what the emulator sent, saved as JSON at ``path``."""

    seed: int
    today: date
    size: str
    events: list[Event] = field(default_factory=list)
    path: Path | None = None

    @property
    def changes(self) -> int:
        """How many changes the feed has made so far: where the next run starts."""
        return sum(event.count for event in self.events if isinstance(event, LiveRun))

    def brokerage(self) -> Brokerage:
        """The brokerage as it stands now: rebuilt from the seed and moved on by every change."""
        brokerage = self.new_brokerage()
        for _ in range(self.changes):
            brokerage.next_change()
        return brokerage

    def new_brokerage(self) -> Brokerage:
        """The brokerage as it stood before any change."""
        return Brokerage(self.seed, today=self.today, size=self.size)

    def covered_tables(self) -> list[str]:
        """The tables anything was sent to, in catalog order: the ones a receiver is checked on."""
        covered: set[str] = set()
        for event in self.events:
            if isinstance(event, MorningUpload):
                covered.update(event.tables)
            else:
                covered.update(ALL_TABLES if event.tables is None else event.tables)
        return [name for name in ALL_TABLES if name in covered]

    def save(self) -> None:
        """Write the state atomically (a temporary file renamed over it); no-op without a path."""
        if self.path is None:
            return
        temp = self.path.with_name(f".{self.path.name}.tmp")
        temp.write_text(json.dumps(_state_to_json(self), indent=1) + "\n", encoding="utf-8")
        os.replace(temp, self.path)


def load_state(
    path: Path,
    *,
    seed: int | None = None,
    today: date | None = None,
    size: str | None = None,
) -> EmulatorState:
    """The state saved at ``path``, or a new one (not yet saved) when there is none.

    ``seed``, ``today`` and ``size`` choose the brokerage of a new state (defaults: seed 1,
    today's date, ``small``); given with an existing state, they must match it, since a
    state can only go on with the brokerage it started.
    """
    if size is not None and size not in SCALES:
        raise EmulatorError(f"unknown size {size!r}; expected one of {', '.join(SCALES)}")
    if not path.exists():
        return EmulatorState(
            DEFAULT_SEED if seed is None else seed,
            today or date.today(),
            size or DEFAULT_SIZE,
            path=path,
        )
    try:
        state = _state_from_json(json.loads(path.read_text(encoding="utf-8")), path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EmulatorError(f"{path}: not a readable emulator state: {e}") from None
    for name, given, saved in (
        ("seed", seed, state.seed),
        ("today", today, state.today),
        ("size", size, state.size),
    ):
        if given is not None and given != saved:
            raise EmulatorError(
                f"{path} holds the brokerage of --{name} {saved}, not {given}:"
                f" leave out --{name} or use another --state file"
            )
    return state


def _state_to_json(state: EmulatorState) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    for event in state.events:
        if isinstance(event, LiveRun):
            events.append({"kind": "live", **asdict(event)})
        else:
            events.append({"kind": "morning", **asdict(event), "day": event.day.isoformat()})
    return {
        "version": STATE_VERSION,
        "seed": state.seed,
        "today": state.today.isoformat(),
        "size": state.size,
        "changes": state.changes,
        "events": events,
    }


def _state_from_json(raw: dict[str, Any], path: Path) -> EmulatorState:
    if raw.get("version") != STATE_VERSION:
        raise ValueError(f"version {raw.get('version')!r} is not {STATE_VERSION}")
    if raw["size"] not in SCALES:
        raise ValueError(f"unknown size {raw['size']!r}")
    events: list[Event] = []
    for item in raw["events"]:
        values = {k: v for k, v in item.items() if k != "kind"}
        if item["kind"] == "live":
            events.append(LiveRun(**values))
        else:
            events.append(MorningUpload(**{**values, "day": date.fromisoformat(values["day"])}))
    state = EmulatorState(
        int(raw["seed"]), date.fromisoformat(raw["today"]), raw["size"], events, path
    )
    _check_positions(state)
    if raw.get("changes", state.changes) != state.changes:
        raise ValueError(f"it says {raw['changes']} changes but its runs add up to {state.changes}")
    return state


def _check_positions(state: EmulatorState) -> None:
    """Each event must start where the ones before it left the feed, or replay would lie."""
    position = 0
    for event in state.events:
        start = event.first if isinstance(event, LiveRun) else event.position
        if start != position:
            raise ValueError(f"an event starts at change {start}, but the feed was at {position}")
        if isinstance(event, LiveRun):
            position += event.count


def check_tables(tables: Iterable[str] | None, allowed: Collection[str] = ALL_TABLES) -> None:
    """Refuse table names the brokerage does not have, naming the ones it has."""
    unknown = sorted(set(tables or ()) - set(allowed))
    if unknown:
        raise EmulatorError(
            f"unknown table {', '.join(unknown)}; expected some of {', '.join(allowed)}"
        )


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
