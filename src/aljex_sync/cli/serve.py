"""``aljex-sync serve``: the service in the foreground until a signal, then a clean stop."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
import time

import click

from .. import preflight
from ..config import Settings
from ..errors import AljexSyncError
from ..service import Service, new_event_loop, port_taken
from ..store.database import normalize_url
from ..workers import Workers
from .common import Context, fail

log = logging.getLogger("aljex_sync.service")


@click.command()
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Live Sync worker processes on the one port (PostgreSQL or MariaDB only).",
)
@click.pass_obj
def serve(obj: Context, workers: int) -> None:
    """Run the service until Ctrl-C or SIGTERM, then stop cleanly.

    In-flight requests are finished and committed before the database is closed. A
    second signal, or a stop that takes longer than 30 seconds, ends it at once. If it
    cannot start (a port taken, the database unreachable, an inbox or host-key folder it
    cannot make or write in), it exits with status 1 and one line saying why; so does a
    second serve on the SQLite database or the inbox folder of one already running.

    With --workers N, N processes answer Live Sync on the one port, each with its own
    journal writer, and the Morning Sync inbox runs once, in the main process. A worker
    that dies is started again.
    """
    settings = obj.settings
    memory = preflight.in_memory(settings.database.url)
    if memory is not None:
        fail(memory)
    if workers > 1:
        _check_workers(settings, workers)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            clean = runner.run(_serve(settings, workers))
    except (AljexSyncError, OSError) as e:
        taken = isinstance(e, OSError) and port_taken(e)
        fail(f"{e}{' (is aljex-sync already running?)' if taken else ''}")
    finally:
        _end_children()
    if not clean:
        sys.exit(1)


def _check_workers(settings: Settings, workers: int) -> None:
    """Refuse --workers where more processes cannot help."""
    if not settings.live.enabled:
        fail(f"--workers {workers}: the workers serve Live Sync, and [live] is not enabled")
    if normalize_url(settings.database.url).get_backend_name() == "sqlite":
        fail(
            f"--workers {workers}: SQLite takes one writer at a time, which one process"
            " already keeps busy; use PostgreSQL or MariaDB for several workers"
        )


SAME_SIGNAL = 1.0
"""Seconds within which signals count as one: `timeout make serve`, for one, signals the
process group and then the child, so serve gets two signals for one stop."""


async def _serve(settings: Settings, workers: int = 1) -> bool:
    """Serve until a signal; a second signal, a second or more later, cuts the stop short."""
    stop = asyncio.Event()
    services: list[Service | Workers] = []
    first = 0.0

    def on_signal() -> None:
        nonlocal first
        if not stop.is_set():
            first = time.monotonic()
            stop.set()
        elif time.monotonic() - first >= SAME_SIGNAL:
            log.warning("a second signal: cutting the stop short")
            for service in services:
                service.hurry()

    # The handlers first, before anything starts a process or opens a database.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except NotImplementedError:  # Windows' event loop has none (untested: docs/deploy.md)
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(on_signal))
    service: Service | Workers = Service(settings) if workers == 1 else Workers(settings, workers)
    services.append(service)
    if stop.is_set():
        return True  # stopped before anything started
    clean = await service.run_until(stop)
    if not clean:
        # Threads still busy (a morning load) would hold up the interpreter's exit.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(1)
    return clean


def _end_children() -> None:
    """Kill a journal writer a cut-short start left behind: it ignores SIGTERM, and
    multiprocessing would wait for it at exit."""
    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)
