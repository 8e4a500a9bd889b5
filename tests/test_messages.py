"""The messages between the edge and the journal's writer survive the trip, field by field,
and a message packed for another shape of them is refused rather than misread."""

from __future__ import annotations

import pickle
from datetime import datetime

import pytest

from aljex_sync.errors import UnknownAction
from aljex_sync.messages import (
    MessageMismatch,
    Outcome,
    Received,
    pack_outcome,
    pack_received,
    unpack_outcome,
    unpack_received,
)

REJECTION = UnknownAction("unknown action 'merge'", table="notes", action="merge")


def through_a_pipe(packed: tuple[object, ...]) -> tuple[object, ...]:
    return pickle.loads(pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301


def test_a_request_arrives_with_every_field_in_its_place():
    sent = Received(b"a=1", "203.0.113.9", datetime(2026, 11, 27, 8, 0), REJECTION, resent=True)
    got = unpack_received(through_a_pipe(pack_received(sent)))
    assert (got.body, got.remote_addr, got.received_at, got.resent) == (
        b"a=1",
        "203.0.113.9",
        datetime(2026, 11, 27, 8, 0),
        True,
    )
    assert isinstance(got.rejection, UnknownAction) and got.rejection.reason == REJECTION.reason


def test_an_outcome_arrives_with_every_field_in_its_place():
    sent = Outcome(7, "rejected", "why", "notes", "merge", "K1", REJECTION)
    got = unpack_outcome(through_a_pipe(pack_outcome(sent)))
    assert (got.event_id, got.status, got.reason, got.table, got.action, got.key) == (
        7,
        "rejected",
        "why",
        "notes",
        "merge",
        "K1",
    )
    assert got.rejection is not None and got.rejection.reason == REJECTION.reason


def test_a_message_of_another_shape_is_refused():
    packed = pack_outcome(Outcome(1, "applied"))
    older = (packed[0] ^ 1, *packed[1:])  # as packed by code with other fields
    with pytest.raises(MessageMismatch):
        unpack_outcome(older)
    with pytest.raises(MessageMismatch):
        unpack_received(packed)  # an outcome is not a request
