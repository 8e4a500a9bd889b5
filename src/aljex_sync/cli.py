"""The ``aljex-sync`` command: parse options, call the library, print. Nothing else."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, config, logs, overview
from .config import Settings
from .credentials import generate_password, hash_password
from .demo import run_demo
from .emulate.commands import emulate
from .errors import AljexSyncError, ConfigError
from .journal import Journal, Summary
from .morning import FileReport, MorningLoader
from .service import Service
from .sftp import host_key_fingerprint
from .store.database import display_url, normalize_url, open_engine, translate
from .tls import make_self_signed

console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit status 1."""
    line = " ".join(message.split())
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    sys.exit(1)


class Context:
    """What every command gets: where the config is, loaded on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = config.load(self.path)
            except ConfigError as e:
                _fail(config.describe(e, self.path))
        assert self._settings is not None
        return self._settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file. Default: $ALJEX_SYNC_CONFIG, else ./aljex-sync.toml.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="How much to log.",
)
@click.version_option(__version__, prog_name="aljex-sync")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, log_level: str) -> None:
    """Keep your own database true to Aljex.

    aljex-sync receives Aljex's Database Synchronization feeds, the Live Sync HTTP posts
    and the Morning Sync CSV files, and writes every record into SQLite, PostgreSQL or
    MySQL/MariaDB.

    Start with `aljex-sync init`, send Aljex what it prints, then run `aljex-sync serve`.
    """
    logs.setup(log_level)
    ctx.obj = Context(config.config_path(config_path))


@main.command()
@click.option(
    "--database-url",
    default="sqlite:///aljex.db",
    show_default=True,
    help="SQLAlchemy URL, e.g. postgresql://user@host/db or mysql://user@host/db.",
)
@click.option(
    "--public-host",
    help="Host name or address Aljex reaches this machine at."
    " Default: this machine's own network address.",
)
@click.option("--http-port", default=8080, show_default=True, help="Live Sync HTTP port.")
@click.option("--sftp-port", default=2222, show_default=True, help="Morning Sync SFTP port.")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.option(
    "--tls-self-signed",
    is_flag=True,
    help="Serve HTTPS with a new self-signed certificate (for trials; see docs/deploy.md).",
)
@click.option(
    "--then-serving",
    is_flag=True,
    hidden=True,
    help="Say the service starts next (`make serve` runs serve right after init).",
)
@click.pass_obj
def init(
    obj: Context,
    database_url: str,
    public_host: str | None,
    http_port: int,
    sftp_port: int,
    force: bool,
    tls_self_signed: bool,
    then_serving: bool,
) -> None:
    """Write a new config with random passwords, and print what to send Aljex.

    The passwords are stored only as hashes, so they are shown this once: send them to
    Aljex now, or run init again with --force to make new ones.
    """
    path = obj.path
    if path.exists() and not force:
        _fail(f"{path} exists; use --force to replace it (its passwords will change)")
    try:
        normalize_url(database_url)
    except ConfigError as e:
        _fail(f"--database-url: {e.reason}")
    live_password, sftp_password = generate_password(), generate_password()
    text = config_text(
        database_url=database_url,
        http_port=http_port,
        sftp_port=sftp_port,
        live_hash=hash_password(live_password),
        sftp_hash=hash_password(sftp_password),
        tls=tls_self_signed,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    found = public_host or reachable_address()
    host = found or "HOST"
    settings = obj.settings
    tls_fingerprint = ""
    if settings.live.tls_cert is not None and settings.live.tls_key is not None:
        names = [n for n in (found, "localhost", "127.0.0.1") if n]
        tls_fingerprint = make_self_signed(settings.live.tls_cert, settings.live.tls_key, names)
    scheme = "https" if tls_fingerprint else "http"
    console.print(f"Wrote {path}.\n")
    console.print("[bold]Send Aljex the following.[/]\n")
    console.print("Live Sync (HTTP POST):")
    console.print(f"  URL:      {scheme}://{host}:{settings.live.port}{settings.live.path}")
    console.print(f"  Username: {settings.live.username}")
    console.print(f"  Password: {live_password}", highlight=False)
    if tls_fingerprint:
        console.print(  # no emoji: rich would make ":AB:" an emoji
            f"  TLS:      self-signed, SHA-256 {tls_fingerprint}",
            soft_wrap=True,
            highlight=False,
            emoji=False,
        )
    console.print("\nMorning Sync (SFTP upload):")
    console.print(f"  Host:     {host}")
    console.print(f"  Port:     {settings.morning.port}")
    console.print(f"  Username: {settings.morning.username}")
    console.print(f"  Password: {sftp_password}", highlight=False)
    console.print("  Folder:   /")
    fingerprint = host_key_fingerprint(settings.morning.host_key)
    console.print(f"  Host key: {fingerprint} (ed25519)", highlight=False)
    console.print()
    if public_host is None:
        console.print(_host_advice(found), highlight=False)
    if tls_fingerprint:
        console.print(
            f"The certificate {settings.live.tls_cert} is self-signed, for trials: a sender"
            " that checks certificates refuses it. Use one from a certificate authority"
            " for real use (docs/deploy.md).",
            highlight=False,
        )
    console.print("The passwords are stored only as hashes and will not be shown again.")
    if then_serving:
        console.print("Starting the service now; stop it with Ctrl-C.")
    else:
        console.print("Start the service with: aljex-sync serve")


def _host_advice(found: str | None) -> str:
    """What to say about a host init worked out itself: Aljex must reach it from outside."""
    if found is None:
        return (
            "HOST above: this machine has no network address but loopback. Replace HOST"
            " with the name or address Aljex reaches this machine at"
            " (or run init again with --force --public-host HOST)."
        )
    if ipaddress.ip_address(found).is_private:
        return (
            f"{found} is this machine's address on a private network, which Aljex cannot"
            " reach from the internet: send Aljex your public host name or address instead"
            " (run init again with --force --public-host HOST to print it, with new"
            " passwords)."
        )
    return (
        f"{found} is this machine's own address. If Aljex reaches it by another name"
        " (a DNS name, a proxy), send Aljex that instead."
    )


def reachable_address() -> str | None:
    """The address this machine's traffic to the internet leaves from, if not loopback.

    Connecting a UDP socket sends nothing: it only makes the system choose the route, and
    so the local address, it would use for a documentation address (RFC 5737 / 3849).
    """
    for family, target in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                address = str(probe.getsockname()[0]).split("%")[0]
        except OSError:
            continue
        ip = ipaddress.ip_address(address)
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
            return address
    return None


def config_text(
    *,
    database_url: str,
    http_port: int,
    sftp_port: int,
    live_hash: str,
    sftp_hash: str,
    tls: bool = False,
) -> str:
    """The config file ``init`` writes, every key present and commented."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    https = (
        'tls_cert = "tls_cert.pem"\ntls_key = "tls_key.pem"'
        if tls
        else (
            '# tls_cert = "tls_cert.pem"          # PEM files: serve HTTPS (docs/deploy.md)\n'
            '# tls_key = "tls_key.pem"'
        )
    )
    return f"""# aljex-sync configuration. Every key is described in docs/configuration.md.
# Any key can be overridden by an environment variable ALJEX_SYNC_<SECTION>_<KEY>.

[database]
url = {q(database_url)}   # any SQLAlchemy URL: postgresql://..., mysql://...
timeout = 5.0                      # seconds before a busy database answers 503

[live]
enabled = true
listen = "0.0.0.0:{http_port}"
path = "/aljex/sync"               # the URL path Aljex posts to
username = "aljex"
password_hash = {q(live_hash)}
allow_ips = []                     # CIDRs; empty means any address
trusted_proxies = []               # CIDRs whose X-Forwarded-For is believed
max_body_bytes = 1048576
max_fields = 1000                  # fits every database: MariaDB allows 1017 columns
legacy_charset = "cp1252"
{https}

[morning]
enabled = true
sftp = true                        # false: watch the inbox folder instead
listen = "0.0.0.0:{sftp_port}"
username = "aljex"
password_hash = {q(sftp_hash)}
inbox = "inbox"
host_key = "ssh_host_key"
snapshot_margin = 30.0             # minutes
max_delete_fraction = 0.5

# Per-table settings; the shipped catalog covers Aljex's files. For example:
# [tables.invoicing]
# key = ["pro_num"]
# delete = "soft"
"""


@main.command()
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
        clean = asyncio.run(_serve(settings))
    except (AljexSyncError, OSError) as e:
        _fail(str(e))
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


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_obj
def status(obj: Context, as_json: bool) -> None:
    """Show what the journal holds: requests per status and table, why any are held or
    rejected, and the morning files that were not loaded. Changes nothing."""
    settings = obj.settings
    engine = _open_existing(settings)
    try:
        found = overview.read(engine)
    except AljexSyncError as e:
        _fail(str(e))
    except SQLAlchemyError as e:
        _fail(str(translate(e)))
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(_overview_dict(found), indent=2, default=str))
        return
    summary = found.summary
    console.print(
        f"Database: {display_url(settings.database.url)}", highlight=False, overflow="fold"
    )
    last = summary.last_received
    console.print(f"Last request: {f'{last:%Y-%m-%d %H:%M:%S} UTC' if last else 'none yet'}")
    totals = ", ".join(f"{n} {s}" for s, n in sorted(summary.by_status.items())) or "none"
    console.print(f"Requests: {totals}")
    if summary.by_table:
        table = _fitting("Live Sync by table", "table", "status", "requests", "last (UTC)")
        for name, st, n, last in summary.by_table:
            table.add_row(name, st, str(n), f"{last:%Y-%m-%d %H:%M:%S}")
        console.print(table)
    if summary.held_reasons:
        held = _fitting("Held records", "table", "held because", "records")
        for name, reason, n in summary.held_reasons:
            held.add_row(name, reason, str(n))
        console.print(held)
        console.print("Fix the cause, then run `aljex-sync replay`.")
    if found.rejected:
        rejected = _fitting("Rejected requests", "refused because", "requests")
        for reason, n in found.rejected:
            rejected.add_row(reason, str(n))
        console.print(rejected)
    if found.problems:
        problems = _fitting("Morning files not loaded", "file", "table", "status", "why")
        for p in found.problems:
            problems.add_row(p.name, p.table or "-", p.status, p.reason or "-")
        console.print(problems)
        console.print(
            "See inbox/failed, inbox/held and inbox/unmatched; `aljex-sync load` retries."
        )
    if found.recent:
        recent = _fitting(
            "Recent morning files",
            "file",
            "table",
            "status",
            "rows",
            "+new ~upd -del",
            "finished (UTC)",
        )
        for f in found.recent:
            recent.add_row(
                str(f["name"]),
                str(f["table_name"] or "-"),
                str(f["status"]),
                str(f["rows_read"]),
                f"+{f['inserted']} ~{f['updated']} -{f['deleted']}",
                f"{f['finished_at']:%m-%d %H:%M}",
            )
        console.print(recent)


def _fitting(title: str, *headers: str) -> Table:
    """A table whose long cells (file names, reasons) wrap, and no word is cut short."""
    table = Table(title=title)
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def _open_existing(settings: Settings) -> Engine:
    """An engine on a database aljex-sync has set up; exits with one line if it has not.

    Never creates anything: not the tables, not a SQLite file.
    """
    url = settings.database.url
    where = display_url(url)
    if overview.database_file_missing(url):
        _fail(f"{overview.NO_TABLES}: {where} does not exist")
    engine = open_engine(url, timeout=settings.database.timeout)
    try:
        present = overview.find_tables(engine)
    except SQLAlchemyError as e:
        engine.dispose()
        _fail(f"cannot open the database: {translate(e)}")
    if not present:
        engine.dispose()
        _fail(f"{overview.NO_TABLES} ({where}); `aljex-sync serve` creates them")
    return engine


def _overview_dict(found: overview.Overview) -> dict[str, object]:
    return {
        **_summary_dict(found.summary),
        "rejected": [{"reason": r, "count": n} for r, n in found.rejected],
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


@main.command()
@click.argument(
    "paths",
    metavar="FILE...",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--table", help="Load into this table instead of the one the name says.")
@click.option(
    "--mode",
    type=click.Choice(["full", "window"]),
    help="full: rows missing from the file are deleted; window: upsert only.",
)
@click.option("--force", is_flag=True, help="Load even if the guard holds it, or loaded before.")
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.pass_obj
def load(
    obj: Context,
    paths: tuple[Path, ...],
    table: str | None,
    mode: str | None,
    force: bool,
    dry_run: bool,
) -> None:
    """Load Morning Sync CSV files by hand, exactly as if they had been uploaded.

    The files stay where they are. The export time is taken from each file's modification
    time, so rows live sync changed since then are kept.
    """
    settings = obj.settings
    if dry_run:  # changes nothing, so it needs a database aljex-sync has set up
        engine = _open_existing(settings)
    else:
        engine = open_engine(settings.database.url, timeout=settings.database.timeout)
    journal = Journal(engine, settings)
    failed = False
    try:
        if dry_run:
            journal.schema.reload()
        else:
            journal.install()
        loader = MorningLoader(journal.engine, settings, journal.schema)
        for path in paths:
            report = _load_with_progress(
                loader, path, table=table, mode=mode, force=force, dry_run=dry_run
            )
            _print_report(report)
            failed |= report.status in ("failed", "held", "unmatched")
    except AljexSyncError as e:
        _fail(str(e))
    finally:
        journal.close()
    if failed:
        sys.exit(1)


def _load_with_progress(loader: MorningLoader, path: Path, **options: Any) -> FileReport:
    size = path.stat().st_size
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[rows]} rows"),
        TimeRemainingColumn(),
    ]
    with Progress(
        *columns, console=err_console, transient=True, disable=not err_console.is_terminal
    ) as bar:
        task = bar.add_task(path.name, total=size, rows=0)

        def advance(done: int, rows: int) -> None:
            bar.update(task, completed=done, rows=rows)

        return loader.load(path, progress=advance, **options)


def _print_report(report: FileReport) -> None:
    c = report.counts
    style = {"loaded": "green", "dry-run": "cyan", "duplicate": "yellow"}.get(report.status, "red")
    console.print(
        f"[bold]{report.name}[/] -> {report.table or '?'} ({report.mode or '-'}):"
        f" [{style}]{report.status}[/]",
        highlight=False,
    )
    if report.error:
        console.print(f"  {report.error}", highlight=False, soft_wrap=True)
    if report.status == "duplicate":
        console.print("  To load it again all the same, add --force.", highlight=False)
    if report.status in ("loaded", "dry-run"):
        table = Table(
            "rows read",
            "inserted",
            "updated",
            "deleted",
            "kept (newer live)",
            "missing in db",
            "extra in db",
            "differing",
        )
        table.add_row(
            *(
                str(n)
                for n in (
                    report.rows_read,
                    c.inserted,
                    c.updated,
                    c.deleted,
                    c.skipped_newer,
                    c.missing_in_db,
                    c.extra_in_db,
                    c.differing,
                )
            )
        )
        console.print(table)


@main.command()
@click.option("--table", help="Only events for this table.")
@click.option("--event", "event_ids", type=int, multiple=True, help="Only this event id.")
@click.option("--include-rejected", is_flag=True, help="Also retry rejected requests.")
@click.pass_obj
def replay(
    obj: Context, table: str | None, event_ids: tuple[int, ...], include_rejected: bool
) -> None:
    """Re-apply held events, oldest first, after fixing what held them.

    For example, add `key = ["pro_num"]` under [tables.invoicing], then replay: the held
    invoicing records land. Safe while `serve` runs.
    """
    settings = obj.settings
    journal = Journal(_open_existing(settings), settings)
    counts: dict[str, int] = {}
    still_held: dict[str, int] = {}
    try:
        for outcome in journal.replay(
            table=table, event_ids=event_ids, include_rejected=include_rejected
        ):
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            if outcome.status == "held":
                still_held[outcome.reason] = still_held.get(outcome.reason, 0) + 1
            detail = f": {outcome.reason}" if outcome.reason else ""
            console.print(
                f"event {outcome.event_id} {outcome.table or '-'} {outcome.key or '-'}"
                f" -> {outcome.status}{detail}",
                highlight=False,
            )
    except AljexSyncError as e:
        _fail(str(e))
    finally:
        journal.close()
    if not counts:
        console.print("Nothing to replay.")
    else:
        console.print("Replayed: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if still_held:
        n = sum(still_held.values())
        console.print(f"{n} record{'s' if n != 1 else ''} stay held:")
        for reason, count in sorted(still_held.items(), key=lambda item: (-item[1], item[0])):
            console.print(f"  {count} {reason}", highlight=False)
        console.print("Fix the cause (often a key under [tables.NAME]), then replay again.")


@main.command()
@click.option("--seconds", default=60.0, show_default=True, help="How long to send live changes.")
@click.option("--rate", default=100.0, show_default=True, help="Live changes per second.")
@click.option("--seed", default=7, show_default=True, help="Seed of the emulated brokerage.")
@click.option(
    "--folder",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the database and files here (default: a new temporary folder).",
)
def demo(seconds: float, rate: float, seed: int, folder: Path | None) -> None:
    """See the whole product work: emulated Aljex feeds into a scratch SQLite database.

    Starts the service with its SFTP server, uploads a morning export, sends live changes,
    prints the rows per table, and ends with the check of every row against the
    emulator's ground truth. Needs no config file.
    """
    logging.getLogger("aljex_sync").setLevel(logging.WARNING)  # the steps tell the story
    with Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.fields[sent]} sent"),
        TextColumn("{task.fields[rate]:.0f}/s"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("live changes", sent=0, rate=0.0)

        def live_progress(report: Any) -> None:
            bar.update(task, sent=report.delivered, rate=report.per_second)

        result = run_demo(
            folder,
            seconds=seconds,
            rate=rate,
            seed=seed,
            step=lambda text: console.print(f"[bold]>[/] {text}", highlight=False),
            live_progress=live_progress,
        )
    loaded = sum(f.status == "loaded" for f in result.files)
    console.print(f"  morning: {len(result.morning.files)} files uploaded, {loaded} loaded")
    console.print(
        f"  live: {result.live.delivered} changes delivered, {result.live.failed} failed,"
        f" {result.live.per_second:.0f}/s"
    )
    counts = Table("table", "rows in the database", "rows Aljex has", "differences")
    for t in result.verify.tables:
        counts.add_row(
            t.table,
            str(result.row_counts.get(t.table, 0)),
            str(t.expected_rows),
            str(t.missing + t.extra + t.differing),
        )
    console.print(counts)
    if result.verify.ok:
        console.print("[bold green]verify: zero differences[/] — the database is true to Aljex.")
    else:
        console.print(f"[bold red]verify: {result.verify.differences} differences[/]")
        for example in result.verify.examples[:10]:
            console.print(f"  {example}", highlight=False)
    console.print(f"Database and files: {result.folder}")
    if not result.verify.ok:
        sys.exit(1)


main.add_command(emulate)


if __name__ == "__main__":
    main()
