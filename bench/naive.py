"""The naive durable receiver: the baseline Live Sync latency is measured against.

About the least a receiver can do and still be durable: Starlette on uvicorn (httptools,
uvloop), the body parsed with ``urllib.parse.parse_qsl``, one row upserted with one
sqlite3 connection in autocommit mode (WAL, ``synchronous=FULL``, so every statement is
its own fsynced commit), and 200 once the statement returns. No authentication, no
journal, no writer process: what aljex-sync adds, it is measured without. Run as a
process of its own by bench/live.py; prints its port once it listens.

    python -m bench.naive DATABASE KEY_FIELD
"""

from __future__ import annotations

import socket
import sqlite3
import sys
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

SKIP = ("web_sync_table_name", "web_sync_action")


def app(database: str, key: str) -> Starlette:
    db = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    statements: dict[tuple[str, tuple[str, ...]], str] = {}

    def upsert_sql(table: str, names: tuple[str, ...]) -> str:
        """The upsert for one shape of record, creating its table the first time."""
        sql = statements.get((table, names))
        if sql is None:
            quoted = [f'"{n}"' for n in names]
            db.execute(
                f'CREATE TABLE IF NOT EXISTS "{table}" '
                f'({", ".join(q + " TEXT" for q in quoted)}, PRIMARY KEY ("{key}"))'
            )
            sets = ", ".join(f"{q} = excluded.{q}" for q in quoted)
            sql = statements[table, names] = (
                f'INSERT INTO "{table}" ({", ".join(quoted)}) '
                f"VALUES ({', '.join('?' * len(names))}) "
                f'ON CONFLICT ("{key}") DO UPDATE SET {sets}'
            )
        return sql

    async def receive(request: Request) -> Response:
        fields = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        table = fields.get("web_sync_table_name", "records")
        for name in SKIP:
            fields.pop(name, None)
        db.execute(upsert_sql(table, tuple(fields)), tuple(fields.values()))
        return PlainTextResponse("ok\n")

    return Starlette(routes=[Route("/", receive, methods=["POST"])])


def main() -> None:
    database, key = sys.argv[1:3]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(
        app(database, key), loop="uvloop", http="httptools", log_level="warning", lifespan="off"
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
