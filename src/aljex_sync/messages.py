"""The messages between the Live Sync edge and the journal: a request in, its outcome out.

They cross a process boundary (``journal_process``) as pickled frames, once per request,
so they travel as plain tuples, quick to pickle, led by a tag. The tag is a checksum of the
dataclass's field names, computed once at import: a field added, removed or reordered
changes it, and a message packed by other code is refused (``MessageMismatch``) rather
than read into the wrong fields.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter
from typing import Literal

from .errors import WireError

Status = Literal["applied", "held", "rejected", "superseded", "taken"]
"""An event's status in the journal; ``taken`` only in the outcome of a replay that found
its event claimed meanwhile by another replay, which writes it (``journal_write``)."""


@dataclass(frozen=True)
class Received:
    """One authenticated request as the HTTP edge read it.

    The journal parses ``body``; ``rejection`` is set when the edge already refused the
    request (too large, wrong content type), and the request is then only recorded.
    ``resent`` marks a request whose writer died before answering: if its event is in the
    journal, it was committed, and that outcome is the answer.
    """

    body: bytes
    remote_addr: str
    received_at: datetime
    rejection: WireError | None = None
    # Sent again after the writer died with it in hand: it may have been committed.
    resent: bool = False


@dataclass(frozen=True)
class Outcome:
    """What the journal did with a request; the edge turns it into a reply."""

    event_id: int
    status: Status
    reason: str = ""
    table: str | None = None
    action: str | None = None
    key: str = ""
    rejection: WireError | None = None  # why a ``rejected`` request was refused


class MessageMismatch(TypeError):
    """A packed message whose tag is not this code's: packed by another version of it."""


def _tag(cls: type) -> int:
    """The checksum of a dataclass's name and field names, in order."""
    names = ",".join(f.name for f in fields(cls))
    return zlib.crc32(f"{cls.__name__}({names})".encode())


_RECEIVED_TAG = _tag(Received)
_OUTCOME_TAG = _tag(Outcome)
_received_values = attrgetter(*(f.name for f in fields(Received)))
_outcome_values = attrgetter(*(f.name for f in fields(Outcome)))

PackedReceived = tuple[object, ...]
PackedOutcome = tuple[object, ...]


def pack_received(received: Received) -> PackedReceived:
    """A request as its tag and its fields in declared order."""
    return (_RECEIVED_TAG, *_received_values(received))


def unpack_received(packed: PackedReceived) -> Received:
    """The request :func:`pack_received` packed; MessageMismatch if its tag differs."""
    if packed[0] != _RECEIVED_TAG:
        raise MessageMismatch(f"not a Received of this version (tag {packed[0]!r})")
    return Received(*packed[1:])  # type: ignore[arg-type]


def pack_outcome(outcome: Outcome) -> PackedOutcome:
    """An outcome as its tag and its fields in declared order."""
    return (_OUTCOME_TAG, *_outcome_values(outcome))


def unpack_outcome(packed: PackedOutcome) -> Outcome:
    """The outcome :func:`pack_outcome` packed; MessageMismatch if its tag differs."""
    if packed[0] != _OUTCOME_TAG:
        raise MessageMismatch(f"not an Outcome of this version (tag {packed[0]!r})")
    return Outcome(*packed[1:])  # type: ignore[arg-type]
