"""The admin pages as HTML: server-rendered, self-contained, no script.

Every page carries its own CSS, and the charts are inline SVG, so the pages work on a
machine with no internet access and with JavaScript off; the only action (replay) is a
plain form. Everything that comes from the database is escaped here, by :func:`esc`:
bodies, reasons, keys and even table names are what a sender sent, and are treated as
hostile.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from urllib.parse import parse_qsl

from .alerts import FeedHealth
from .dashboard import Event, EventRow, Feed, FileRow, Overview, TableRow
from .messages import Outcome

STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;
background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:20px;
align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}header a{color:#cfe0ff}
main{padding:10px 20px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px 16px;
margin:14px 0}
h2{font-size:16px;margin:4px 0 10px}h3{font-size:14px;margin:10px 0 6px}
table{border-collapse:collapse;width:100%;margin:4px 0}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eceef2;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17723b}.bad{color:#b3261e;font-weight:600}.muted{color:#6b7280}
.feeds{display:flex;gap:16px;flex-wrap:wrap}.feed{flex:1 1 560px}
.big{font-size:22px;font-weight:600}
.pill{display:inline-block;padding:0 7px;border-radius:9px;background:#eceef2;font-size:12px}
.pill.held,.pill.failed,.pill.unmatched,.pill.rejected{background:#fde2e1;color:#8c1d18}
.pill.applied,.pill.loaded{background:#dff3e5;color:#17723b}
button{font:inherit;padding:5px 14px;border-radius:4px;border:1px solid #1d4ed8;
background:#2563eb;color:#fff;cursor:pointer}
button.small{padding:1px 8px;font-size:12px}
pre{background:#f6f8fa;border:1px solid #dde1e7;padding:10px;white-space:pre-wrap;
word-break:break-all;max-height:60vh;overflow:auto}
svg text{font-size:10px;fill:#6b7280}.facts th{width:160px}
"""

CHART_WIDTH = 576
CHART_HEIGHT = 110
LIST_LIMIT = 500  # replay outcomes listed one by one; the rest are only counted


def esc(value: object) -> str:
    """Text as HTML, quotes included; None as an empty string."""
    return "" if value is None else html.escape(str(value), quote=True)


def when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def page(title: str, body: str) -> str:
    """A whole HTML document with the admin header."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)} - aljex-sync</title><style>{STYLE}</style></head><body>"
        '<header><h1>aljex-sync</h1><a href="/admin/">status</a>'
        '<a href="/admin/#events">events</a><a href="/admin/#files">morning files</a>'
        '<a href="/metrics">metrics</a></header>'
        f"<main>{body}</main></body></html>"
    )


def _table(headers: Sequence[str], rows: Iterable[str], empty: str = "none") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(rows)
    if not body:
        body = f"<tr><td colspan={len(headers)} class=muted>{esc(empty)}</td></tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(value: int | None, cls: str = "") -> str:
    text = "-" if value is None else f"{value:,}"
    return f'<td class="n {cls}">{text}</td>'


def _pill(status: str) -> str:
    return f'<span class="pill {esc(status)}">{esc(status)}</span>'


def _replay_form(token: str, table: str | None = None, label: str = "Replay held records") -> str:
    hidden = f'<input type=hidden name=table value="{esc(table)}">' if table else ""
    cls = ' class="small"' if table else ""
    return (
        '<form method=post action="/admin/replay" style="display:inline">'
        f'<input type=hidden name=token value="{esc(token)}">{hidden}'
        f"<button type=submit{cls}>{esc(label)}</button></form>"
    )


def status_page(
    overview: Overview, token: str, health: Mapping[str, FeedHealth] | None = None
) -> str:
    """The status page: tables, feeds, held records, morning files, latest events.

    ``health`` is each watched feed's health (``[alerts]``), shown as a badge on its feed.
    """
    parts = [
        _summary(overview, token),
        _tables(overview.tables, token),
        '<section id=feeds><h2>Feeds</h2><div class="feeds">',
        *(_feed(feed, (health or {}).get(feed.name)) for feed in overview.feeds),
        "</div></section>",
        _files(overview),
        _events(overview.events),
    ]
    return page("status", "".join(parts))


def _summary(overview: Overview, token: str) -> str:
    held = overview.held
    counts = " ".join(
        f'{_pill(status)} <span data-status-count="{esc(status)}">{n:,}</span>'
        for status, n in sorted(overview.events_by_status.items())
    )
    reasons = _table(
        ("table", "held because", "records"),
        (
            f"<tr><td>{esc(t)}</td><td>{esc(r)}</td>{_num(n)}</tr>"
            for t, r, n in overview.held_by_reason
        ),
    )
    action = (
        f"<p>{_replay_form(token)} re-applies every held record, oldest first, with the "
        "configuration as it is now (fix the cause first, e.g. a table's key).</p>"
        if held
        else ""
    )
    return (
        f"<section id=summary><h2>Journal</h2><p class=muted>As of {when(overview.now)} UTC."
        f"</p><p>Events: {counts or 'none yet'}</p>"
        f'<p>Held records: <span class="big" id=held-total>{held:,}</span></p>'
        f"{reasons if held else ''}{action}</section>"
    )


def _health(file: FileRow | None) -> str:
    if file is None or file.status != "loaded":
        return "<td class=muted>-</td>"
    if file.healthy:
        return "<td class=ok>ok</td>"
    return (
        f"<td class=bad>{file.missing_in_db:,} missing, {file.extra_in_db:,} extra, "
        f"{file.differing:,} differing</td>"
    )


def _tables(tables: Sequence[TableRow], token: str) -> str:
    rows = []
    for t in tables:
        f = t.last_file
        file_cells = (
            f"<td>{esc(f.name)} {_pill(f.status)}<br><span class=muted>{when(f.finished_at)}"
            "</span></td>"
            f'<td class="n file-counts">{f.rows_read:,} read, {f.inserted:,} ins, '
            f"{f.updated:,} upd, {f.deleted:,} del, {f.skipped_newer:,} kept</td>"
            if f is not None
            else "<td class=muted>-</td><td class=muted>-</td>"
        )
        held_class = "n held bad" if t.held else "n held"
        replay = _replay_form(token, t.name, "replay") if t.held else ""
        rows.append(
            f'<tr data-table="{esc(t.name)}"><td>{esc(t.name)}</td>{_num(t.rows, "rows")}'
            f"<td class=last-live>{when(t.last_live)}</td>{file_cells}{_health(f)}"
            f'<td class="{held_class}"><span class=count>{t.held:,}</span> {replay}</td></tr>'
        )
    return (
        "<section id=tables><h2>Tables</h2>"
        + _table(
            (
                "table",
                "rows",
                "last live change (UTC)",
                "last morning file",
                "its counts",
                "feed health",
                "held",
            ),
            rows,
            "no tables yet",
        )
        + "</section>"
    )


def chart(hourly: Sequence[tuple[datetime, int]], label: str) -> str:
    """Bars of counts per hour as inline SVG, each with its hour and count as a tooltip."""
    top = max((n for _, n in hourly), default=0)
    slot = CHART_WIDTH / max(1, len(hourly))
    plot = CHART_HEIGHT - 16
    bars = []
    for i, (hour, n) in enumerate(hourly):
        height = 0.0 if top == 0 else max(1.0, plot * n / top) if n else 0.0
        x = i * slot
        bars.append(
            f'<rect x="{x + 1:.1f}" y="{plot - height:.1f}" width="{slot - 2:.1f}" '
            f'height="{height:.1f}" fill="#2563eb"><title>{hour:%Y-%m-%d %H}:00 UTC: '
            f"{n:,}</title></rect>"
        )
    first = hourly[0][0] if hourly else None
    axis = (
        f'<line x1="0" y1="{plot + 0.5}" x2="{CHART_WIDTH}" y2="{plot + 0.5}" stroke="#ccc"/>'
        f'<text x="0" y="{CHART_HEIGHT - 3}">{first:%m-%d %H}:00</text>'
        if first
        else ""
    )
    axis += (
        f'<text x="{CHART_WIDTH}" y="{CHART_HEIGHT - 3}" text-anchor="end">now</text>'
        f'<text x="2" y="10">max {top:,}/h</text>'
    )
    return (
        f'<svg class=chart role="img" aria-label="{esc(label)}" width="100%" '
        f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" preserveAspectRatio="none" '
        f'xmlns="http://www.w3.org/2000/svg" data-bars="{len(hourly)}" data-max="{top}">'
        f"<title>{esc(label)}</title>{''.join(bars)}{axis}</svg>"
    )


def _badge(health: FeedHealth | None) -> str:
    """A feed's health under ``[alerts]``: nothing when the feed is not watched."""
    if health is None:
        return ""
    state = "healthy" if health.healthy else "unhealthy"
    cls = "pill applied" if health.healthy else "pill rejected"
    return (
        f' <span class="{cls} feed-health" data-healthy="{str(health.healthy).lower()}"'
        f' title="{esc(health.reason)}">{state}</span>'
        f' <span class="muted feed-reason">{esc(health.reason)}</span>'
    )


def _feed(feed: Feed, health: FeedHealth | None = None) -> str:
    what = "requests" if feed.name == "live" else "files"
    refused = "rejected requests" if feed.name == "live" else "files not loaded"
    reasons = _table(
        ("reason", "count"),
        (f"<tr><td>{esc(r)}</td>{_num(n)}</tr>" for r, n in feed.rejected),
    )
    return (
        f'<div class=feed data-feed="{esc(feed.name)}"><h3>{esc(feed.name)}{_badge(health)}</h3>'
        f'<p>{what} in the last hour: <span class="big last-hour">{feed.last_hour:,}</span>'
        f' &nbsp; last day: <span class="big last-day">{feed.last_day:,}</span></p>'
        f"{chart(feed.hourly, f'{feed.name}: {what} per hour, last 48 hours')}"
        f"<h3>{refused}, last 48 hours, by reason</h3>{reasons}</div>"
    )


def _file_rows(rows: Sequence[FileRow]) -> list[str]:
    """A row per file, with its reason: why it was not loaded, or a loaded one's warnings."""
    out = []
    for f in rows:
        reason = f"<td>{esc(f.error or '')}</td>"
        out.append(
            f'<tr data-file="{f.id}"><td>{esc(f.name)}</td><td>{esc(f.table or "-")}</td>'
            f"<td>{_pill(f.status)}</td>{reason}{_num(f.rows_read)}{_num(f.inserted)}"
            f"{_num(f.updated)}{_num(f.deleted)}{_num(f.skipped_newer)}{_health(f)}"
            f"<td>{when(f.finished_at)}</td></tr>"
        )
    return out


def _files(overview: Overview) -> str:
    counts = " ".join(
        f'{_pill(status)} <span data-file-count="{esc(status)}">'
        f"{overview.files_by_status.get(status, 0):,}</span>"
        for status in ("loaded", "held", "failed", "unmatched", "duplicate")
    )
    numbers = ("read", "ins", "upd", "del", "kept", "feed health", "finished (UTC)")
    return (
        f"<section id=files><h2>Morning files</h2><p>{counts}</p>"
        "<h3>Held, failed and unmatched, with their reasons, until a later file of their"
        " table loads</h3>"
        + _table(
            ("file", "table", "status", "reason", *numbers),
            _file_rows(overview.problem_files),
        )
        + "<h3>Latest files</h3>"
        + _table(  # notes: a loaded file's warnings (rows that repeat a key), or why not
            ("file", "table", "status", "notes", *numbers),
            _file_rows(overview.recent_files),
        )
        + "</section>"
    )


def _event_rows(rows: Sequence[EventRow]) -> list[str]:
    return [
        f'<tr data-event="{e.id}"><td><a href="/admin/events/{e.id}">{e.id}</a></td>'
        f"<td>{when(e.received_at)}</td><td>{esc(e.remote_addr)}</td>"
        f"<td>{esc(e.table or '-')}</td><td>{esc(e.action or '-')}</td>"
        f"<td>{esc(e.key or '')}</td><td>{_pill(e.status)}</td><td>{esc(e.error or '')}</td></tr>"
        for e in rows
    ]


def _events(rows: Sequence[EventRow]) -> str:
    return (
        "<section id=events><h2>Latest events</h2>"
        + _table(
            ("id", "received (UTC)", "from", "table", "action", "key", "status", "reason"),
            _event_rows(rows),
            "no events yet",
        )
        + "</section>"
    )


def decode_body(body: bytes, legacy_charset: str) -> str:
    """The raw body as text: UTF-8 where valid, else the legacy charset, byte for byte."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode(legacy_charset, errors="replace")


def event_page(event: Event, legacy_charset: str, max_fields: int) -> str:
    """One event: what became of it, its raw body, and the body's fields decoded."""
    text = decode_body(event.body, legacy_charset)
    try:
        fields = parse_qsl(
            text,
            keep_blank_values=True,
            max_num_fields=max_fields,
            encoding="utf-8",
            errors="replace",
        )
    except ValueError:
        fields = []
    facts = (
        ("status", _pill(event.status)),
        ("reason", esc(event.error or "")),
        ("received (UTC)", when(event.received_at)),
        ("applied (UTC)", when(event.applied_at)),
        ("from", esc(event.remote_addr)),
        ("table", esc(event.table or "-")),
        ("action", f"{esc(event.action or '-')} (sent as {esc(event.raw_action or '-')})"),
        ("key", esc(event.key or "")),
        ("warnings", esc(event.warnings or "")),
        ("body", f"{len(event.body):,} bytes"),
    )
    rows = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in facts)
    field_rows = (f"<tr><td>{esc(name)}</td><td>{esc(value)}</td></tr>" for name, value in fields)
    return page(
        f"event {event.id}",
        f"<section><h2>Event {event.id}</h2><table class=facts>{rows}</table></section>"
        f"<section><h2>Raw body</h2><pre id=body>{esc(text)}</pre></section>"
        "<section><h2>Fields</h2>"
        + _table(("field", "value"), field_rows, "no fields")
        + "</section>",
    )


def replay_page(counts: dict[str, int], outcomes: Sequence[Outcome], table: str | None) -> str:
    """What a replay did: counts by status, then each event's outcome."""
    total = sum(counts.values())
    scope = f" of table {esc(table)}" if table else ""
    summary = (
        ", ".join(
            f'<span data-replayed="{esc(s)}">{n:,}</span> {esc(s)}'
            for s, n in sorted(counts.items())
        )
        if total
        else "nothing to replay"
    )
    rows = (
        f'<tr data-event="{o.event_id}"><td><a href="/admin/events/{o.event_id}">{o.event_id}'
        f"</a></td><td>{esc(o.table or '-')}</td><td>{esc(o.key or '')}</td>"
        f"<td>{_pill(o.status)}</td><td>{esc(o.reason)}</td></tr>"
        for o in outcomes
    )
    more = (
        f"<p class=muted>{total - len(outcomes):,} more not listed.</p>"
        if total > len(outcomes)
        else ""
    )
    return page(
        "replay",
        f"<section id=replay><h2>Replay of held records{scope}</h2>"
        f"<p id=outcome>Replayed {total:,}: {summary}.</p>"
        + _table(("event", "table", "key", "status", "reason"), rows, "no records")
        + f'{more}<p><a href="/admin/">Back to the status page</a></p></section>',
    )


def message_page(title: str, text: str) -> str:
    """A short page for an error or a refusal."""
    return page(title, f"<section><h2>{esc(title)}</h2><p>{esc(text)}</p></section>")
