"""PostgreSQL: counting a merge on a second connection while the first rewrites the rows.

The survey (one FULL JOIN of stage and table, ``merge.survey``) and the UPDATE of the rows
the file changes (``merge.rewrite``) each take one server process, and on a file that
changes every row the survey was what kept the load above the time of a plain COPY and
upsert. They read the same rows and neither needs the other: the survey counts what the
table held before the merge, and the UPDATE writes the same rows whatever the counts say.
So the UPDATE runs on the loader's connection, in the merge's transaction, while another
connection of the pool surveys the (UNLOGGED, so shared) stage beside it, each on a core of
its own. The other connection cannot see the UPDATE's rows before the merge commits, and
the merge commits only once the counts are in, so the counts are those of the table as
the UPDATE found it, as when they ran one after the other.

The guards then judge the counts after the UPDATE instead of before it: a file they hold
is rolled back, UPDATE and all. What the counts would let the merge skip (an INSERT, a
DELETE) is still skipped; only the UPDATE runs whatever they say.

Not used when the stage lost rows to tombstones in the merge's transaction (the other
connection would still see them), nor for a dry run's scratch table (temporary, so out of
the other connection's sight): those survey first, on the loader's connection.
"""

from __future__ import annotations

import threading
from datetime import datetime

from sqlalchemy import Connection, exc

from .merge import MergeCounts, rewrite, survey
from .schema import SyncedTable
from .stage import Stage


def survey_while_rewriting(
    conn: Connection,
    stage: Stage,
    synced: SyncedTable,
    *,
    full: bool,
    snapshot_at: datetime,
    source: str,
    own: str | None = None,
) -> MergeCounts | None:
    """Rewrite the changed rows on ``conn`` while another connection surveys the stage.

    Runs inside the caller's transaction on ``conn``; the tombstoned keys must have been
    dropped from the stage (and committed) before, as the other connection reads it.
    Returns None, having written nothing, when there is no second connection to be had
    (the server's ``max_connections``, say): the caller then surveys first, as elsewhere.
    """
    found: list[MergeCounts] = []
    failed: list[BaseException] = []
    try:
        second = _second_connection(conn)
    except exc.OperationalError:
        return None

    def count() -> None:
        try:
            with second as other, other.begin():
                found.append(
                    survey(
                        other,
                        stage,
                        synced,
                        full=full,
                        snapshot_at=snapshot_at,
                        own=own,
                        tombstoned=0,
                    )
                )
        except BaseException as e:  # raised again in the caller's thread
            failed.append(e)

    counter = threading.Thread(target=count, name="aljex-survey", daemon=True)
    counter.start()
    try:
        rewrite(conn, stage, synced, snapshot_at=snapshot_at, source=source, own=own)
    finally:
        counter.join()
    if failed:
        raise failed[0]
    return found[0]


def _second_connection(conn: Connection) -> Connection:
    """Another connection of ``conn``'s pool, taken before anything is written."""
    return conn.engine.connect()


def can_overlap(stage: Stage, tombstoned: int, *, scratch: bool) -> bool:
    """Whether :func:`survey_while_rewriting` may serve: a shared stage that lost no rows
    in the merge's transaction, merging into a table other connections can read (not a
    dry run's ``scratch`` copy)."""
    return stage.shared and tombstoned == 0 and not scratch
