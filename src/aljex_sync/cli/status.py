"""``aljex-sync status``: what the journal and the file log hold, as tables or JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.text import Text

from .. import login_failures, overview, serve_health
from ..inbox import taken_files, waiting_files
from ..notifier import read_holder
from ..notify import sink_states
from ..overview import Summary
from ..store.database import display_url
from ..store.views import Misfits, TypedViews
from .common import Context, console, database, fitting_table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--types", is_flag=True, help="Count values that do not fit their typed view.")
@click.pass_obj
def status(obj: Context, as_json: bool, types: bool) -> None:
    """Show whether serve runs and is well (its /healthz), what the journal holds:
    requests per status and table, why any are held or rejected, the last day's failed
    Live Sync and admin logins, and the morning files that were not loaded. Changes
    nothing."""
    settings = obj.settings
    with database(settings) as engine:
        found = overview.read(engine)
        views = TypedViews(engine)
        misfits = views.misfits() if types else None
        view_errors = views.errors()
        sinks = sink_states(engine)
        holder = read_holder(engine)
        refused = login_failures.recent(engine)
        refused_admin = login_failures.recent(engine, admin=True)
    waiting = _waiting(settings.morning.inbox) if settings.morning.enabled else []
    service = serve_health.ask(settings.live) if settings.live.enabled else None
    if as_json:
        extra: dict[str, object] = {"types": [vars(m) for m in misfits or []]} if types else {}
        extra["notify"] = [vars(s) for s in sinks]
        extra["waiting"] = waiting
        extra["views_not_refreshed"] = [vars(e) for e in view_errors]
        extra["notifier"] = vars(holder) if holder is not None else None
        extra["failed_logins"] = [vars(failure) for failure in refused]
        extra["failed_admin_logins"] = [vars(failure) for failure in refused_admin]
        extra["service"] = vars(service) if service is not None else None
        click.echo(json.dumps({**_overview_dict(found), **extra}, indent=2, default=str))
        return
    summary = found.summary
    console.print(
        f"Database: {display_url(settings.database.url)}", highlight=False, overflow="fold"
    )
    if service is not None:
        style = {"healthy": "green", "unhealthy": "bold red"}.get(service.state, "yellow")
        console.print(Text.assemble("Service: ", (service.line(), style)), overflow="fold")
        for line in service.lines if service.state == "healthy" else service.lines[1:]:
            console.print(f"  {line}", highlight=False, overflow="fold")
    last = summary.last_received
    console.print(f"Last request: {f'{last:%Y-%m-%d %H:%M:%S} UTC' if last else 'none yet'}")
    totals = ", ".join(f"{n} {s}" for s, n in sorted(summary.by_status.items())) or "none"
    console.print(f"Requests: {totals}")
    if summary.by_table:
        table = fitting_table("Live Sync by table", "table", "status", "requests", "last (UTC)")
        for name, st, n, last in summary.by_table:
            table.add_row(name, st, str(n), f"{last:%Y-%m-%d %H:%M:%S}")
        console.print(table)
    if summary.held_reasons:
        held = fitting_table("Held records", "table", "held because", "records")
        for name, reason, n in summary.held_reasons:
            held.add_row(name, reason, str(n))
        console.print(held)
        console.print("Fix the cause, then run `aljex-sync replay`.")
    if found.warned:
        warned = fitting_table("Requests with warnings", "table", "requests", "last (UTC)")
        for name, n, last in found.warned:
            warned.add_row(name, str(n), f"{last:%Y-%m-%d %H:%M:%S}")
        console.print(warned)
        console.print(
            "Accepted, but Aljex sent something odd (a field twice, bytes not UTF-8);"
            " `aljex-sync events --with-warnings` lists them."
        )
    if refused:
        _print_failed_logins("Failed Live Sync logins (last 24 h)", refused)
        console.print(
            "Refused before anything was read or kept. If Aljex's address is listed, the"
            " user name or password Aljex sends is not the one in [live]."
        )
    if refused_admin:
        _print_failed_logins("Failed admin logins (last 24 h)", refused_admin)
        console.print(
            "Wrong [admin] user or password at /admin/ or /metrics. If not yours, someone"
            " is guessing it: an address gets 429 after [live] max_failed_logins in the"
            " window; [live] allow_ips keeps other addresses off the port."
        )
    if found.rejected:
        rejected = fitting_table("Rejected requests", "refused because", "requests")
        for reason, n in found.rejected:
            rejected.add_row(reason, str(n))
        console.print(rejected)
    if found.problems:
        problems = fitting_table("Morning files not loaded", "file", "table", "status", "why")
        for p in found.problems:
            problems.add_row(p.name, p.table or "-", p.status, p.reason or "-")
        console.print(problems)
        console.print(
            "See inbox/failed, inbox/held and inbox/unmatched; `aljex-sync load` retries."
        )
    if waiting:
        table = fitting_table("Waiting in the inbox", "file", "bytes", "arrived (UTC)")
        for w in waiting:
            table.add_row(str(w["name"]), str(w["size"]), f"{w['arrived']:%m-%d %H:%M}")
        console.print(table)
        console.print(
            "Not loaded yet: serve loads a file as its upload completes, tries one the"
            " database refused again every minute, and loads one left over at its next start."
        )
    if found.recent:
        recent = fitting_table(
            "Recent morning files",
            "file",
            "table",
            "status",
            "rows",
            "+new ~upd -del",
            "finished (UTC)",
            "notes",
        )
        for f in found.recent:
            recent.add_row(
                str(f["name"]),
                str(f["table_name"] or "-"),
                str(f["status"]),
                str(f["rows_read"]),
                f"+{f['inserted']} ~{f['updated']} -{f['deleted']}",
                f"{f['finished_at']:%m-%d %H:%M}",
                str(f["error"] or ""),  # a loaded file's warnings; why another was not
            )
        console.print(recent)
    if view_errors:
        stale = fitting_table("Typed views not refreshed", "view", "why", "failed (UTC)")
        for e in view_errors:
            stale.add_row(e.view, e.error, f"{e.failed_at:%m-%d %H:%M}")
        console.print(stale)
        console.print("The view stays as it was; a start, or the next load, tries again.")
    if types:
        _print_misfits(misfits)
    if holder is not None:  # [notify]: the one process that sends
        console.print(f"Notifications sent by {holder.line()}", highlight=False, overflow="fold")
    for sink in sinks:  # [notify]: how far each sink is delivered
        console.print(f"Notifications to {sink.line()}", highlight=False, overflow="fold")


def _waiting(inbox: Path) -> list[dict[str, object]]:
    """The files in the inbox root that no load has taken out yet, oldest first."""
    found = []
    for path in [*taken_files(inbox), *waiting_files(inbox)]:
        try:
            st = path.stat()
        except OSError:  # loaded and moved meanwhile
            continue
        arrived = datetime.fromtimestamp(st.st_mtime, UTC).replace(tzinfo=None)
        found.append({"name": path.name, "size": st.st_size, "arrived": arrived})
    return sorted(found, key=lambda f: str(f["arrived"]))


def _print_misfits(misfits: list[Misfits] | None) -> None:
    """``status --types``: the typed columns with values that are NULL in their view."""
    if misfits is None:
        console.print("Typed views: none built yet; `aljex-sync serve` builds them.")
        return
    bad = [m for m in misfits if m.values]
    console.print(
        f"Typed views: {len(misfits)} typed columns, {len(bad)} with values that do not fit."
    )
    if bad:
        table = fitting_table(
            "Values that do not fit (NULL in the view)", "view", "column", "type", "values"
        )
        for m in bad:
            table.add_row(m.view, m.name, m.type, str(m.values))
        console.print(table)


def _overview_dict(found: overview.Overview) -> dict[str, object]:
    return {
        **_summary_dict(found.summary),
        "rejected": [{"reason": r, "count": n} for r, n in found.rejected],
        "warnings": [
            {"table": t, "count": n, "last_received": last} for t, n, last in found.warned
        ],
        "not_loaded": [
            {
                "name": p.name,
                "table": p.table,
                "status": p.status,
                "reason": p.reason,
                "finished_at": p.finished_at,
            }
            for p in found.problems
        ],
        "files": found.recent,
    }


def _summary_dict(summary: Summary) -> dict[str, object]:
    return {
        "by_status": summary.by_status,
        "last_received": summary.last_received,
        "by_table": [
            {"table": t, "status": s, "count": n, "last_received": last}
            for t, s, n, last in summary.by_table
        ],
        "held": [{"table": t, "reason": r, "count": n} for t, r, n in summary.held_reasons],
    }


def _print_failed_logins(title: str, failures: list[login_failures.LoginFailure]) -> None:
    logins = fitting_table(title, "from", "user name tried", "failures", "last (UTC)")
    for failure in failures:
        logins.add_row(
            failure.address,
            failure.username or "(none)",
            str(failure.failures),
            f"{failure.last_at:%m-%d %H:%M}",
        )
    console.print(logins)
