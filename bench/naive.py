"""The naive durable receiver: the baseline Live Sync latency is measured against.

About the least a receiver can do and still be durable: Starlette on uvicorn (httptools,
uvloop), the body parsed with ``urllib.parse.parse_qsl``, one row upserted with one
sqlite3 connection in autocommit mode (WAL, ``synchronous=FULL``, so every statement is
its own fsynced commit), and 200 once the statement returns. No authentication, no
journal, no writer process: what aljex-sync adds, it is measured without. Run as a
process of its own by bench/live.py; prints its port once it listens.

With ``--journal`` it is the **naive journaling receiver**: the same, plus the least a
receiver can do to keep aljex-sync's promise that a 200 means the record is committed in
its table *and* its raw body in a journal. Each request is one transaction (``BEGIN
IMMEDIATE``, an insert of the received time, the address and the raw body into a journal
table, the upsert, ``COMMIT``): one fsynced commit, as before, one row and one page more.
No statuses, no index, no planning. What it costs over the naive receiver is the floor
under any design's cost for the journal.

With ``--parse-only`` it parses each body with ``parse_qsl`` and writes nothing: what the
naive receiver's HTTP stack costs, against which aljex-sync's parse-only ceiling shows what
its own stack, authentication and checks add.

    python -m bench.naive DATABASE KEY_FIELD [--journal | --parse-only]
"""

from __future__ import annotations

import socket
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

SKIP = ("web_sync_table_name", "web_sync_action")


class Writer:
    """The naive receivers' write of one request, shared by the server and bench/floors.py
    (which times it in-process), so both measure the same statements."""

    def __init__(self, database: str | Path, key: str, *, journal: bool = False) -> None:
        self.key = key
        self.journal = journal
        self.db = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        if journal:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS journal "
                "(id INTEGER PRIMARY KEY, received_at TEXT NOT NULL, address TEXT NOT NULL, "
                "body BLOB NOT NULL)"
            )
        self._statements: dict[tuple[str, tuple[str, ...]], str] = {}

    def write(self, body: bytes, address: str) -> None:
        """Parse the body and commit its record (and, journaling, the body) durably."""
        fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
        table = fields.get("web_sync_table_name", "records")
        for name in SKIP:
            fields.pop(name, None)
        sql = self._upsert_sql(table, tuple(fields))
        if not self.journal:
            self.db.execute(sql, tuple(fields.values()))
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                "INSERT INTO journal (received_at, address, body) VALUES (?, ?, ?)",
                (datetime.now(UTC).isoformat(), address, body),
            )
            self.db.execute(sql, tuple(fields.values()))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def _upsert_sql(self, table: str, names: tuple[str, ...]) -> str:
        """The upsert for one shape of record, creating its table the first time."""
        sql = self._statements.get((table, names))
        if sql is None:
            quoted = [f'"{n}"' for n in names]
            self.db.execute(
                f'CREATE TABLE IF NOT EXISTS "{table}" '
                f'({", ".join(q + " TEXT" for q in quoted)}, PRIMARY KEY ("{self.key}"))'
            )
            sets = ", ".join(f"{q} = excluded.{q}" for q in quoted)
            sql = self._statements[table, names] = (
                f'INSERT INTO "{table}" ({", ".join(quoted)}) '
                f"VALUES ({', '.join('?' * len(names))}) "
                f'ON CONFLICT ("{self.key}") DO UPDATE SET {sets}'
            )
        return sql


MODES = ("", "--journal", "--parse-only")


def app(database: str, key: str, mode: str = "") -> Starlette:
    """The receiver; ``mode`` is one of MODES."""
    writer = None if mode == "--parse-only" else Writer(database, key, journal=bool(mode))

    async def receive(request: Request) -> Response:
        body = await request.body()
        if writer is None:
            parse_qsl(body.decode(), keep_blank_values=True)
        else:
            writer.write(body, request.client.host if request.client else "-")
        return PlainTextResponse("ok\n")

    return Starlette(routes=[Route("/", receive, methods=["POST"])])


def main() -> None:
    database, key, *rest = sys.argv[1:]
    mode = rest[0] if rest else ""
    if mode not in MODES or len(rest) > 1:
        sys.exit(__doc__)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(
        app(database, key, mode),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        lifespan="off",
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
