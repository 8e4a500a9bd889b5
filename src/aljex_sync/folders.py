"""The inbox's own folders, where each Morning Sync file goes once it is dealt with.

``archive/`` (loaded, or a duplicate of a loaded file), ``failed/``, ``held/`` and
``unmatched/`` live inside the inbox itself. No upload may take one of their names, in any
case: a file named ``failed`` in the inbox root stands where the folder must be made.

:func:`folder_problem` words a folder that cannot be made or written in (the inbox, the host
key's), the same way for ``serve``, which stops on it, and ``check``, which reports it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

ARCHIVE = "archive"
FAILED = "failed"
HELD = "held"
UNMATCHED = "unmatched"
FOLDERS = (ARCHIVE, FAILED, HELD, UNMATCHED)
LOADING = ".loading"
"""The inbox's hidden folder a file is moved into, under a folder of its own, while it loads:
an upload of the same name meanwhile is then a new file, not the one being read. An upload
completed while another of its name still waits in the root is put there too."""


def aside_folder(inbox: Path) -> Path:
    """A folder of its own under the inbox's ``.loading``, for one file; not made yet."""
    return inbox / LOADING / secrets.token_hex(6)


def clashes(name: str) -> bool:
    """Whether a file name is one of the inbox's folder names, compared case-insensitively."""
    return name.lower() in FOLDERS


def folder_problem(path: Path, error: OSError, *, writing: bool) -> str:
    """Why the folder ``path`` cannot be made (or, with ``writing``, written in), in a line."""
    reason = error.strerror or str(error)
    if os.path.exists(path) and not os.path.isdir(path):  # these two never raise
        return f"{path} is not a folder"
    if writing:
        return f"cannot write in the folder {path}: {reason}"
    return f"cannot make the folder {path}: {reason}"
