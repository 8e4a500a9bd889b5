"""Helpers the tests share: settings for a test, and the service running in a thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from aljex_sync import config
from aljex_sync.config import Settings
from aljex_sync.service import BackgroundService
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


class RunningService(BackgroundService):
    """The service in a background thread, with a way to open its database."""

    def engine(self) -> Engine:
        return open_engine(self.settings.database.url)
