"""Who spends the machine's cores during a Live Sync run: CPU time per request, by process.

Throughput at 16 connections is bounded by CPU: the client, the server's event loop and
its writer process share the machine's cores (two on the development machine). Counting
each one's CPU per request shows which of them is the limit, and how far a target is
from what the cores allow, where requests/s alone cannot. Linux only (``/proc``); on
other systems every figure is None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_seconds(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a live process has used, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and brackets: the fields follow its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs, ...), as found in ``/proc`` now."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


def machine_seconds() -> tuple[float, float] | None:
    """The machine's busy and total CPU seconds since boot, over all cores, or None."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    ticks = [int(t) for t in first[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks) - idle) / _TICK, sum(ticks) / _TICK


@dataclass
class Snapshot:
    """CPU seconds used so far by a set of server processes (the first one, the one that
    runs the event loop, also on its own), and by the machine."""

    server: float | None
    loop: float | None
    machine: tuple[float, float] | None

    @classmethod
    def take(cls, pids: list[int]) -> Snapshot:
        used = [process_seconds(pid) for pid in pids]
        if not used or None in used:
            return cls(None, None, machine_seconds())
        return cls(sum(u for u in used if u is not None), used[0], machine_seconds())


def per_request(before: Snapshot, after: Snapshot, requests: int) -> dict[str, float | None]:
    """The server's CPU microseconds per request (all of it, and its event loop process's),
    and how busy the machine's cores were (0-1)."""
    server = loop = None
    if before.server is not None and after.server is not None and requests:
        server = (after.server - before.server) / requests * 1e6
    if before.loop is not None and after.loop is not None and requests:
        loop = (after.loop - before.loop) / requests * 1e6
    busy = None
    if before.machine is not None and after.machine is not None:
        spent = after.machine[1] - before.machine[1]
        busy = (after.machine[0] - before.machine[0]) / spent if spent > 0 else None
    return {"server_cpu_us": server, "loop_cpu_us": loop, "machine_busy": busy}
