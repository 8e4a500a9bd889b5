"""The Live Sync benchmark's baselines do what bench/live.py says they do.

A baseline that does less than it claims makes every ratio against it a flattering lie: the
naive receiver must really commit each record before its 200, and the journaling one must
commit the raw body and the record in one transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from bench import live

RECORDS = [
    {"pro_num": "1001", "status": "OPEN", "shipper": "Acme & Sons"},
    {"pro_num": "1002", "status": "OPEN", "shipper": "Globex"},
    {"pro_num": "1001", "status": "DELIVERED", "shipper": "Acme & Sons"},
]


def _post(url: str, fields: dict[str, str]) -> tuple[int, bytes]:
    body = urlencode({"web_sync_table_name": "loads", "web_sync_action": "update", **fields})
    return httpx.post(url, content=body.encode(), timeout=10).status_code, body.encode()


def _rows(database: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as db:
        return db.execute(sql).fetchall()


@pytest.mark.parametrize("journal", [False, True], ids=["naive", "journaling"])
def test_each_record_is_committed_before_its_200(tmp_path: Path, journal: bool) -> None:
    database = tmp_path / "baseline.db"
    with live.naive(database, "pro_num", "--journal" if journal else "") as (url, _pid):
        sent = []
        for fields in RECORDS:
            status, body = _post(url, fields)
            assert status == 200
            sent.append(body)
            # Read by another connection as soon as the 200 is in: committed, not pending.
            rows = _rows(database, "SELECT pro_num, status FROM loads ORDER BY pro_num")
            assert (fields["pro_num"], fields["status"]) in rows
        assert _rows(database, "PRAGMA journal_mode") == [("wal",)]
    assert _rows(database, "SELECT pro_num, status FROM loads ORDER BY pro_num") == [
        ("1001", "DELIVERED"),
        ("1002", "OPEN"),
    ]
    has_journal = _rows(database, "SELECT count(*) FROM sqlite_master WHERE name = 'journal'")
    assert has_journal == [(int(journal),)]
    if journal:
        bodies = _rows(database, "SELECT body FROM journal ORDER BY id")
        assert [bytes(b) for (b,) in bodies] == sent


def test_the_parse_only_receiver_answers_and_writes_nothing(tmp_path: Path) -> None:
    database = tmp_path / "bare.db"
    with live.naive(database, "pro_num", "--parse-only") as (url, _pid):
        assert [_post(url, fields)[0] for fields in RECORDS] == [200, 200, 200]
    assert not database.exists() or _rows(database, "SELECT name FROM sqlite_master") == []
