"""``aljex-sync serve``: the service in the foreground until a signal, then a clean stop."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys

import click

from ..config import Settings
from ..errors import AljexSyncError
from ..service import Service, new_event_loop
from .common import Context, fail


@click.command()
@click.pass_obj
def serve(obj: Context) -> None:
    """Run the service until Ctrl-C or SIGTERM, then stop cleanly.

    In-flight requests are finished and committed before the database is closed. A
    second signal, or a stop that takes longer than 30 seconds, ends it at once. If it
    cannot start (a port taken, the database unreachable), it exits with status 1 and
    one line saying why.
    """
    settings = obj.settings
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            clean = runner.run(_serve(settings))
    except (AljexSyncError, OSError) as e:
        fail(str(e))
    finally:
        _end_children()
    if not clean:
        sys.exit(1)


async def _serve(settings: Settings) -> bool:
    """Serve until a signal; a second signal cuts the stop short."""
    stop = asyncio.Event()
    service = Service(settings)

    def on_signal() -> None:
        if stop.is_set():
            service.hurry()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except NotImplementedError:  # Windows' event loop has none (untested: docs/deploy.md)
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(on_signal))
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
