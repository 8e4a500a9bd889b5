"""The journal's queries by status, written so that the partial status index serves them.

Nearly every event is applied, and an index entry per event costs each Live Sync commit
one more page to write and fsync. So on SQLite and PostgreSQL ``ix_aljex_events_status``
holds only the events not applied (held, rejected, superseded: the ones looked for by
status), and ``ix_aljex_events_table_name`` is not made (MariaDB, which has no partial
indexes, keeps both as they were). SQLite uses a partial index only for a query whose
WHERE carries the index's own condition: ``status = 'held'`` alone is not seen to imply
``status <> 'applied'`` (checked with ``EXPLAIN QUERY PLAN``). So :func:`status_in` adds
that condition, spelled as in the index, to a query for other statuses. Applied events
are found by id order (newest first, or after a cursor) or by a scan, as they were: with
nearly every row matching, the full index did not narrow them. Counting events by
status (:func:`count_by_status`) counts the others from the index and the applied ones as
all less those: one walk of the table's pages, no reading of its rows.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, and_, func, literal_column, select, union_all

from .schema import events

APPLIED = "applied"
# The index's own condition, as a literal (not a bound parameter) so that SQLite sees it.
_APPLIED: ColumnElement[str] = literal_column(f"'{APPLIED}'")
NOT_APPLIED = events.c.status != _APPLIED


def status_in(*statuses: str) -> ColumnElement[bool]:
    """Events with one of ``statuses``; with the partial index's condition when that
    lets the index answer (none of them is ``applied``)."""
    column = events.c.status
    wanted = column == statuses[0] if len(statuses) == 1 else column.in_(statuses)
    if APPLIED in statuses:
        return wanted
    return and_(wanted, NOT_APPLIED)


def count_by_status(conn: Connection) -> dict[str, int]:
    """How many events have each status, by status (those with none left out); in one
    statement, so that the counts agree with each other."""
    status = events.c.status
    others = select(status, func.count()).where(NOT_APPLIED).group_by(status)
    every = select(func.count()).select_from(events).scalar_subquery()
    not_applied = select(func.count()).where(NOT_APPLIED).scalar_subquery()
    applied = select(_APPLIED, every - not_applied)
    counts = {str(s): int(n) for s, n in conn.execute(union_all(others, applied)) if n}
    return dict(sorted(counts.items()))
