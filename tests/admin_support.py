"""A small day of both feeds for the admin page, the metrics and the browser test."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from sqlalchemy import Engine, func, select, table, text

from aljex_sync.morning import MorningLoader
from aljex_sync.store.schema import Schema, events, files

from .support import TEST_PASSWORD, RunningService, make_settings

ADMIN_USER = "boss"
ADMIN_PASSWORD = "admin-pass-123"
ADMIN = {"username": ADMIN_USER, "password": ADMIN_PASSWORD}
ADMIN_AUTH = (ADMIN_USER, ADMIN_PASSWORD)
LIVE_AUTH = ("aljex", TEST_PASSWORD)
RAGGED = "Carriers.csv line 2: row has 3 fields, the header has 2"
HOSTILE = "<script>alert('x')</script>&amp;"


def admin_settings(database_url: str, tmp_path: Path, **sections: dict[str, Any]) -> Any:
    return make_settings(database_url, tmp_path, admin=ADMIN, **sections)


def post(service: RunningService, fields: list[tuple[str, str]]) -> httpx.Response:
    return httpx.post(
        service.url,
        content=urlencode(fields).encode(),
        auth=LIVE_AUTH,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )


def record(table_name: str, action: str, **fields: str) -> list[tuple[str, str]]:
    return [("web_sync_table_name", table_name), ("web_sync_action", action), *fields.items()]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def a_day(service: RunningService, tmp_path: Path) -> None:
    """Applied, held and rejected live requests; a loaded morning file and a failed one.

    The held record is an invoicing record without ``pro_num``, the table's key: it lands
    on replay once ``[tables.invoicing] key = ["id"]``.
    """
    for i in range(3):
        assert (
            post(service, record("employees", "create", id=f"E{i}", name=f"n{i}")).status_code
            == 200
        )
    assert post(service, record("employees", "update", id="E0", name=HOSTILE)).status_code == 200
    held = post(service, record("invoicing", "create", id="I1", amount="12.50"))
    assert held.status_code == 200 and "held" in held.text
    assert post(service, record("loads", "explode", id="L1")).status_code == 422
    engine = service.service.engine
    loader = MorningLoader(engine, service.settings, Schema(engine))
    header = ["id", "name", "city"]
    rows = [["C1", "One", "Newark"], ["C2", "Two", "Trenton"]]
    assert (
        loader.load(write_csv(tmp_path / "day" / "Customers.csv", header, rows)).status == "loaded"
    )
    ragged = write_csv(tmp_path / "day" / "Carriers.csv", ["id", "name"], [["K1", "a", "b"]])
    assert loader.load(ragged).status == "failed"


def scalar(engine: Engine, query: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def count_rows(engine: Engine, name: str) -> int:
    return int(scalar(engine, select(func.count()).select_from(table(name))))


def count_events(engine: Engine, *where: Any) -> int:
    return int(scalar(engine, select(func.count()).select_from(events).where(*where)))


def count_files(engine: Engine, *where: Any) -> int:
    return int(scalar(engine, select(func.count()).select_from(files).where(*where)))


def sql(engine: Engine, statement: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(statement))]
