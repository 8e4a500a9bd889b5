"""Helpers the tests share: settings for a test, and the service running in a thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from aljex_sync import config
from aljex_sync.config import Settings
from aljex_sync.service import Service
from aljex_sync.store.database import open_engine

TEST_PASSWORD = "s3cret-pass"


def make_settings(database_url: str, tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a test: loopback, port 0, a known password; sections override."""
    raw: dict[str, Any] = {
        "database": {"url": database_url},
        "live": {"listen": "127.0.0.1:0", "password": TEST_PASSWORD},
        "morning": {
            "listen": "127.0.0.1:0",
            "password": TEST_PASSWORD,
            "inbox": str(tmp_path / "inbox"),
            "host_key": str(tmp_path / "host_key"),
        },
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config.parse(raw, base=tmp_path)


class RunningService:
    """A Service on its own event loop in a background thread, as `serve` runs it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = Service(settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> RunningService:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.service.stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}{self.settings.live.path}"

    def engine(self) -> Engine:
        return open_engine(self.settings.database.url)
