"""`aljex-sync demo`: the whole product in one command, against the emulator of Aljex.

It starts the service on a scratch SQLite database with its SFTP server, has the emulator
upload a morning export and send live changes, then shows what landed and checks every
row against the emulator's ground truth.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy import func, select, table

from . import config
from .credentials import generate_password
from .emulate.morning import MorningReport, SftpTarget, upload_morning
from .emulate.sender import LiveOptions, LiveReport, LiveTarget, run_live
from .emulate.state import load_state
from .emulate.verify import VerifyReport, verify
from .file_report import FileReport
from .service import BackgroundService
from .store.database import open_engine, reading


@dataclass
class DemoResult:
    """What the demo did, for the CLI to print."""

    folder: Path
    morning: MorningReport
    files: list[FileReport]
    live: LiveReport
    row_counts: dict[str, int]
    verify: VerifyReport


Step = Callable[[str], None]


def run_demo(
    folder: Path | None = None,
    *,
    seconds: float = 60.0,
    rate: float | None = 100.0,
    seed: int = 7,
    step: Step = lambda _: None,
    live_progress: Callable[[LiveReport], None] | None = None,
) -> DemoResult:
    """Run the demo in ``folder`` (a new temporary one by default) and return what it saw."""
    folder = folder or Path(tempfile.mkdtemp(prefix="aljex-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    password = generate_password()
    settings = config.parse(
        {
            "database": {"url": "sqlite:///aljex.db"},
            "live": {"listen": "127.0.0.1:0", "password": password},
            "morning": {"listen": "127.0.0.1:0", "password": password},
        },
        base=folder,
    )
    # One line per request would drown the demo's own output.
    logging.getLogger("aljex_sync.live").setLevel(logging.WARNING)
    step(f"Starting aljex-sync on {folder / 'aljex.db'} (HTTP and SFTP on 127.0.0.1)")
    with BackgroundService(settings) as running:
        service = running.service
        assert service.sftp is not None and service.loads is not None
        state = load_state(folder / "emulator.json", seed=seed, today=date.today(), size="small")
        step("Aljex's morning export: one CSV per Aljex file, uploaded by SFTP")
        morning = upload_morning(
            state, SftpTarget("127.0.0.1", service.sftp.port, "aljex", password)
        )
        service.loads.wait_idle(300)
        files = list(service.loads.reports)
        step(f"Live Sync: {seconds:.0f} s of changes, one HTTP POST per record")
        live = run_live(
            state,
            LiveTarget(running.url, "aljex", password),
            LiveOptions(duration=seconds, rate=rate),
            progress=live_progress,
        )
        step("Checking every row against the emulator's ground truth")
        result = verify(settings.database.url, state)
        counts = _row_counts(settings.database.url, [t.table for t in result.tables])
    return DemoResult(folder, morning, files, live, counts, result)


def _row_counts(url: str, tables: list[str]) -> dict[str, int]:
    engine = open_engine(url)
    try:
        with reading(engine) as conn:
            return {
                name: int(conn.execute(select(func.count()).select_from(table(name))).scalar_one())
                for name in tables
            }
    finally:
        engine.dispose()
