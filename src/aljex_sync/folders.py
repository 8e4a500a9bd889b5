"""The inbox's own folders, where each Morning Sync file goes once it is dealt with.

``archive/`` (loaded, or a duplicate of a loaded file), ``failed/``, ``held/`` and
``unmatched/`` live inside the inbox itself. No upload may take one of their names, in any
case: a file named ``failed`` in the inbox root stands where the folder must be made.
"""

from __future__ import annotations

ARCHIVE = "archive"
FAILED = "failed"
HELD = "held"
UNMATCHED = "unmatched"
FOLDERS = (ARCHIVE, FAILED, HELD, UNMATCHED)


def clashes(name: str) -> bool:
    """Whether a file name is one of the inbox's folder names, compared case-insensitively."""
    return name.lower() in FOLDERS
