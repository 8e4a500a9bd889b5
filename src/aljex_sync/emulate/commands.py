"""``aljex-sync emulate``: play Aljex's side of the wire. Parse options, call the library, print."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .morning import MorningReport, SftpTarget, upload_morning, write_morning
from .sender import LiveOptions, LiveReport, LiveTarget, run_live
from .state import DEFAULT_SIZE, DEFAULT_STATE, EmulatorError, EmulatorState, load_state
from .verify import Difference, VerifyReport
from .verify import verify as check_receiver
from .world import SCALES

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
PASSWORD_ENV = "ALJEX_EMULATE_PASSWORD"  # noqa: S105 (a variable name, not a password)


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def _state_options(command: F) -> F:
    """The options that choose the state file and, for a new one, the brokerage."""
    options = [
        click.option(
            "--state",
            "state_path",
            type=click.Path(dir_okay=False, path_type=Path),
            default=DEFAULT_STATE,
            show_default=True,
            help="JSON file of what was sent; continued by every run, read by verify.",
        ),
        click.option("--seed", type=int, help="Brokerage seed of a new state [default: 1]."),
        click.option(
            "--today",
            type=click.DateTime(formats=["%Y-%m-%d"]),
            help="First day of a new state's brokerage, YYYY-MM-DD [default: today].",
        ),
        click.option(
            "--size",
            type=click.Choice(sorted(SCALES)),
            help=f"Brokerage size of a new state [default: {DEFAULT_SIZE}].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _load(
    state_path: Path, seed: int | None, today: datetime | None, size: str | None
) -> EmulatorState:
    try:
        return load_state(state_path, seed=seed, today=today.date() if today else None, size=size)
    except EmulatorError as e:
        _fail(str(e))


def _table_list(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> frozenset[str] | None:
    """``--tables loads,customers`` as a set; None (all) when not given."""
    if value is None:
        return None
    names = frozenset(name.strip().lower() for name in value.split(",") if name.strip())
    if not names:
        raise click.BadParameter("name at least one table")
    return names


def _tables_option(help_text: str) -> Callable[[F], F]:
    return click.option("--tables", callback=_table_list, help=help_text)


def _password_option(command: F) -> F:
    return click.option(
        "--password",
        required=True,
        envvar=PASSWORD_ENV,
        help=f"Password the receiver expects (or ${PASSWORD_ENV}).",
    )(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def emulate() -> None:
    """Play Aljex: send a live feed, upload morning files, check the receiver.

    The records come from a seeded brokerage; what was sent is kept in the --state file,
    so later runs continue the feed and `verify` knows what the receiver must hold.
    """


@emulate.command()
@click.option("--url", required=True, help="Live Sync URL, e.g. http://127.0.0.1:8080/aljex/sync.")
@click.option("--user", default="aljex", show_default=True, help="HTTP Basic user name.")
@_password_option
@click.option("--rate", type=float, help="At most this many requests per second.")
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option("--count", type=int, help="Stop after posting this many changes.")
@click.option(
    "--concurrency",
    type=int,
    default=1,
    show_default=True,
    help="Connections; each record's changes stay in order.",
)
@_tables_option("Send only these tables (comma-separated); other changes are made, not sent.")
@click.option(
    "--retries",
    type=int,
    default=3,
    show_default=True,
    help="Retries after a 502/503/504 or a connection error.",
)
@_state_options
def live(
    url: str,
    user: str,
    password: str,
    rate: float | None,
    duration: float | None,
    count: int | None,
    concurrency: int,
    tables: frozenset[str] | None,
    retries: int,
    state_path: Path,
    seed: int | None,
    today: datetime | None,
    size: str | None,
) -> None:
    """Post the live feed to a receiver, one record per request, as Aljex does.

    Runs until --count or --duration, or until Ctrl-C; exits 1 if a change was not
    acknowledged with a 200.
    """
    if count is not None and duration is not None:
        _fail("give --count or --duration, not both")
    state = _load(state_path, seed, today, size)
    try:
        options = LiveOptions(count, duration, rate, concurrency, tables, retries)
        target = LiveTarget(url, user, password)
        with _stop_on_interrupt() as stop, _live_progress(options) as progress:
            report = run_live(state, target, options, progress=progress, stop=stop)
    except EmulatorError as e:
        _fail(str(e))
    _print_live(report, state)
    if report.failed or (report.stopped_by and report.stopped_by != "interrupted"):
        sys.exit(1)


@contextmanager
def _stop_on_interrupt() -> Iterator[threading.Event]:
    """An event the first Ctrl-C sets (the feed then stops cleanly); a second one kills."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def interrupted(signum: int, frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _live_progress(options: LiveOptions) -> Iterator[Callable[[LiveReport], None] | None]:
    """A progress bar on a terminal (by count, by time, or open-ended); nothing elsewhere."""
    if not console.is_terminal:
        yield None
        return
    total = options.count if options.count is not None else options.duration
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]live[/]"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("live", total=total, stats="")

        def show(report: LiveReport) -> None:
            done = report.posted if options.count is not None else report.elapsed
            stats = (
                f"{report.delivered} sent, {report.failed} failed,"
                f" {report.retries} retries, {report.per_second:.0f} req/s"
            )
            progress.update(task, completed=done, stats=stats)

        yield show


def _print_live(report: LiveReport, state: EmulatorState) -> None:
    table = Table(title="Live feed", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("changes made", f"{report.generated} (#{report.first} to #{state.changes - 1})"),
        ("posted", report.posted),
        ("acknowledged (200)", report.delivered),
        ("failed", report.failed),
        ("abandoned", report.abandoned),
        ("skipped (--tables)", report.skipped),
        ("retries", report.retries),
        ("seconds", f"{report.elapsed:.1f}"),
        ("requests/s", f"{report.per_second:.0f}"),
    ]
    rows += [(f"replies {kind}", n) for kind, n in sorted(report.problems.items())]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    for reason in report.reasons:
        console.print(f"  [yellow]{reason}[/]", highlight=False, soft_wrap=True)
    if report.stopped_by:
        console.print(f"stopped early: {report.stopped_by}", highlight=False)
    console.print(f"state saved in {state.path}", highlight=False)


def _host_port(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, int] | None:
    """``HOST:PORT`` (port 22 if left out; ``[::1]:2222`` for IPv6) as a pair."""
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:
        host, port = value, "22"
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    return host, int(port)


@emulate.command()
@click.option("--sftp", "server", callback=_host_port, help="SFTP server, HOST:PORT.")
@click.option("--user", default="aljex", show_default=True, help="SFTP user name.")
@click.option("--password", envvar=PASSWORD_ENV, help=f"SFTP password (or ${PASSWORD_ENV}).")
@click.option("--dir", "directory", default="/", show_default=True, help="Remote directory.")
@click.option(
    "--date",
    "day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Day of the files, YYYY-MM-DD [default: the brokerage clock's date].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the files into this folder instead of uploading them.",
)
@_tables_option("Only the files of these tables (comma-separated).")
@_state_options
def morning(
    server: tuple[str, int] | None,
    user: str,
    password: str | None,
    directory: str,
    day: datetime | None,
    out: Path | None,
    tables: frozenset[str] | None,
    state_path: Path,
    seed: int | None,
    today: datetime | None,
    size: str | None,
) -> None:
    """Write the morning files, one CSV per Aljex file, and upload them by SFTP.

    The files hold what section 1 of the document says as of now in the feed; each is
    uploaded with its mtime, as `put -p` does. With --out nothing is uploaded or recorded.
    """
    if out is not None and server is not None:
        _fail("give --sftp to upload or --out to write the files locally, not both")
    state = _load(state_path, seed, today, size)
    the_day = day.date() if day else None
    try:
        if out is not None:
            report = write_morning(state, out, day=the_day, tables=tables)
        elif server is not None and password is not None:
            target = SftpTarget(server[0], server[1], user, password, directory)
            report = upload_morning(state, target, day=the_day, tables=tables)
        else:
            _fail(f"give --sftp HOST:PORT and --password (or ${PASSWORD_ENV}), or --out DIR")
    except EmulatorError as e:
        _fail(str(e))
    _print_morning(report, state, uploaded=out is None)


def _print_morning(report: MorningReport, state: EmulatorState, *, uploaded: bool) -> None:
    if report.host_key:
        console.print(f"server host key: {report.host_key}", highlight=False)
    table = Table(title=f"Morning files for {report.day.isoformat()}")
    for name in ("table", "file", "bytes", "mtime"):
        table.add_column(name, justify="right" if name == "bytes" else "left")
    for file in report.files:
        mtime = datetime.fromtimestamp(file.mtime).isoformat(sep=" ", timespec="seconds")
        table.add_row(file.table, file.location, str(file.size), mtime)
    console.print(table)
    if uploaded:
        console.print(f"state saved in {state.path}", highlight=False)


@emulate.command()
@click.option("--db", "url", required=True, help="The receiver's database URL.")
@_tables_option("Check only these tables (comma-separated).")
@click.option(
    "--show", type=int, default=10, show_default=True, help="Example differences to print."
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path, exists=True),
    default=DEFAULT_STATE,
    show_default=True,
    help="The state file the feed was sent with.",
)
def verify(url: str, tables: frozenset[str] | None, show: int, state_path: Path) -> None:
    """Check the receiver's database against what the emulator sent.

    Compares every field of every record sent, in its latest version; exits 0 when
    nothing differs, 1 otherwise.
    """
    state = _load(state_path, None, None, None)
    try:
        report = check_receiver(url, state, tables=tables, examples=max(show, 0))
    except EmulatorError as e:
        _fail(str(e))
    _print_verify(report, show)
    if not report.ok:
        sys.exit(1)


def _print_verify(report: VerifyReport, show: int) -> None:
    table = Table(title=f"Verify {report.database}")
    for name in ("table", "expected", "actual", "missing", "extra", "differing"):
        table.add_column(name, justify="left" if name == "table" else "right")
    for t in report.tables:
        counts = (t.expected_rows, t.actual_rows, t.missing, t.extra, t.differing)
        style = None if t.differences == 0 else "red"
        table.add_row(t.table, *(str(n) for n in counts), style=style)
    console.print(table)
    examples = report.examples[:show]
    if examples:
        listing = Table(title=f"First {len(examples)} differences")
        for name in ("table", "key", "difference"):
            listing.add_column(name)
        for difference in examples:
            listing.add_row(difference.table, "/".join(difference.key), _describe(difference))
        console.print(listing)
    verdict = (
        "[green]no differences[/]" if report.ok else f"[red]{report.differences} differences[/]"
    )
    console.print(verdict)


def _describe(difference: Difference, fields: int = 3) -> str:
    """One row's difference in words: missing, extra, or the first few fields that differ."""
    if difference.kind != "differs":
        return difference.kind
    lines = [
        f"{name}: expected {_short(expected)}, found {_short(actual)}"
        for name, expected, actual in difference.fields[:fields]
    ]
    if len(difference.fields) > fields:
        lines.append(f"and {len(difference.fields) - fields} more fields")
    return "\n".join(lines)


def _short(value: str | None, limit: int = 40) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"
