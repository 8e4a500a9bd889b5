"""One replay at a time on a journal: ``aljex-sync replay`` and the admin page's button.

Two replays at once (two operators, cron and a hand run, a hand run and the button) read
the same held events. Each event is claimed in the transaction that writes it
(``journal_write``), so none is applied twice whatever happens; this lock is what turns
the second replay away at once, naming the first, instead of leaving the two to race
through the same list and split it.

It is the notifier's kind of lock (``store.locks.KeptLock``): a session's advisory lock
on PostgreSQL and ``GET_LOCK`` on MariaDB, which hold across hosts sharing the database,
and a file lock beside a SQLite database. A replay that dies lets go of it at once. The
holder notes its pid and host in ``_aljex_meta`` (``replay.holder``) for the one refused.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from .errors import ReplayRunning
from .store.database import reading
from .store.locks import KeptLock
from .store.migrations import meta, write_meta

log = logging.getLogger("aljex_sync.journal")

LOCK = "replay"
HOLDER = "replay.holder"
NOTE_WAIT = 2.0  # seconds a refused replay waits for the running one's note


@contextmanager
def only_replay(engine: Engine) -> Iterator[None]:
    """Hold the replay lock while the block runs; ReplayRunning if another process holds it.

    The journal's tables must exist (``Journal.install``): the holder's note goes in them.
    """
    lock = KeptLock(engine, LOCK)
    try:
        taken = lock.take()
    except OSError as e:  # no lock file beside a SQLite database: each event's claim holds
        log.warning("replaying without the replay lock: %s", e)
        yield
        return
    if not taken:
        raise ReplayRunning(_holder(engine))
    try:
        write_meta(engine, {HOLDER: json.dumps({"pid": os.getpid(), "host": _host()})})
        yield
    finally:
        with suppress(SQLAlchemyError):  # no note but the running replay's
            write_meta(engine, {HOLDER: "{}"})
        lock.release()


def _holder(engine: Engine) -> str:
    """How the refused replay names the running one: ``pid N``, with its host if not this.

    A replay that has just taken the lock may not have written its note yet: it is waited
    for, a little.
    """
    deadline = time.monotonic() + NOTE_WAIT
    while "pid" not in (note := _note(engine)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if "pid" not in note:
        return "its pid unknown"
    where = "" if note.get("host") == _host() else f" on {note.get('host')}"
    return f"pid {note['pid']}{where}"


def _note(engine: Engine) -> dict[str, object]:
    try:
        with reading(engine) as conn:
            kept = conn.execute(select(meta.c.value).where(meta.c.name == HOLDER)).scalar()
        note = json.loads(kept) if kept else {}
    except (SQLAlchemyError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def _host() -> str:
    return socket.gethostname()
