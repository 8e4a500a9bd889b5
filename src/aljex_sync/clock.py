"""The one clock every stored timestamp is read from: naive UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now in UTC, naive: every timestamp aljex-sync stores is naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)
