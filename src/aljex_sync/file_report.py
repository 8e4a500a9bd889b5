"""What became of one Morning Sync file: the report ``morning`` fills as it loads the file,
which the log line, the file's row in ``_aljex_files`` and ``aljex-sync load`` all show."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from .store.merge import MergeCounts

FileStatus = Literal["loaded", "dry-run", "duplicate", "held", "failed", "unmatched"]


def repeats_note(repeated: int) -> str:
    """The warning for rows dropped because a later row of the file gave their key again."""
    rows = "1 row repeats" if repeated == 1 else f"{repeated} rows repeat"
    return f"{rows} a key given earlier in the file; the last row of each key was kept"


@dataclass
class FileReport:
    """What became of one file; the CLI prints it, ``_aljex_files`` keeps it."""

    name: str
    status: FileStatus
    table: str | None = None
    mode: str | None = None
    sha256: str = ""
    size: int = 0
    snapshot_at: datetime | None = None
    rows_read: int = 0
    counts: MergeCounts = field(default_factory=MergeCounts)
    error: str = ""
    moved_to: Path | None = None
    file_id: int | None = None
    warnings: list[str] = field(default_factory=list)  # accepted, but worth a look
    legacy_bytes: int = 0  # bytes outside UTF-8, read by the legacy charset
    legacy_charset: str = ""
    begun: datetime | None = None  # when loading it began

    def summary(self) -> str:
        """One line for the log."""
        c = self.counts
        if self.status in ("loaded", "dry-run"):
            line = (
                f"{self.name} -> {self.table} ({self.mode}) {self.status}: {self.rows_read} rows"
                f" read, {c.inserted} inserted, {c.updated} updated, {c.deleted} deleted,"
                f" {c.skipped_newer} skipped as newer-live; feed health: {c.missing_in_db}"
                f" missing, {c.extra_in_db} extra, {c.differing} differing"
            )
            if self.warning_text():
                line += f"; {self.warning_text()}"
            return line
        return f"{self.name} -> {self.table or '?'} {self.status}: {self.error}"

    def doubts(self) -> list[str]:
        """What was accepted but is worth a look: the reader's warnings, and the rows that
        gave a key again (a file's row count then differs from its table's, for a reason)."""
        notes = list(self.warnings)
        if self.counts.repeated:
            notes.append(repeats_note(self.counts.repeated))
        return notes

    def warning_text(self) -> str:
        """The doubts, and how many bytes were not UTF-8 (news only for the count)."""
        notes = self.doubts()
        if self.legacy_bytes:
            some = "1 byte was" if self.legacy_bytes == 1 else f"{self.legacy_bytes} bytes were"
            notes.append(f"{some} not UTF-8, read as {self.legacy_charset}")
        return "; ".join(notes)

    @property
    def level(self) -> int:
        """How loud the log line is: a file not applied, or applied with doubts, is news.

        Bytes read by the legacy charset are counted, not warned about: Aljex's older
        exports are wholly cp1252.
        """
        if self.status == "failed":
            return logging.ERROR
        if self.status in ("held", "unmatched") or self.doubts():
            return logging.WARNING
        return logging.INFO
