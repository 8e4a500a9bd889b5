"""Aljex's morning export: one CSV per Aljex file, written and uploaded by SFTP.

The files hold what section 1 of the Database Synchronization API says as of the feed's
current point; each is uploaded with its mtime, as ``put -p`` does, and the upload is
recorded in the state.
"""

from __future__ import annotations

import asyncio
import csv
import posixpath
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import asyncssh

from ..catalog import BY_TABLE, table_for_file_name
from ..settings import host_port
from .brokerage import MORNING_TABLES, Brokerage
from .state import EmulatorError, EmulatorState, Event, MorningUpload, check_tables, now_text
from .values import file_charset

_UPLOAD_BLOCK = 64 * 1024


@dataclass(frozen=True)
class MorningFile:
    """One morning file written or uploaded: where it went, its size and mtime (epoch s)."""

    table: str
    name: str
    location: str
    size: int
    mtime: float


@dataclass(frozen=True)
class SftpTarget:
    """The SFTP server, account and directory the customer gave Aljex."""

    host: str
    port: int
    user: str
    password: str
    directory: str = "/"
    timeout: float = 30.0

    @property
    def destination(self) -> str:
        return f"{self.user}@{host_port(self.host, self.port)}{self.directory}"


@dataclass
class MorningReport:
    """What ``emulate morning`` did: the day, the files, and the server's host key."""

    day: date
    files: list[MorningFile]
    host_key: str | None = None  # SHA256 fingerprint, when uploaded


def write_morning_csvs(brokerage: Brokerage, day: date, out_dir: Path) -> list[Path]:
    """Write the morning files for ``day`` into ``out_dir`` as Aljex uploads them.

    One RFC 4180 CSV per Aljex file, named ``<catalog title>_<YYYYMMDD>.csv``, with a header
    row of field names and CR LF line ends. A file is written in cp1252 when at least one of
    its records is one Aljex sends in cp1252 and every record of the file is cp1252-encodable
    (see :func:`file_charset`); otherwise in UTF-8. Rows are streamed, never held whole.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in MORNING_TABLES:
        path = out_dir / f"{BY_TABLE[table].title}_{day:%Y%m%d}.csv"
        encoding = file_charset(brokerage.morning_records(table, day))
        with path.open("w", encoding=encoding, newline="") as handle:
            columns = brokerage.morning_columns(table)
            writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
            writer.writerow(columns)
            for record in brokerage.morning_records(table, day):
                writer.writerow([record[name] for name in columns])
        written.append(path)
    return written


def _write_files(
    brokerage: Brokerage, day: date, directory: Path, tables: Collection[str] | None
) -> list[tuple[str, Path]]:
    """Write every morning file into ``directory``; return the chosen ones with their table."""
    chosen = []
    for path in write_morning_csvs(brokerage, day, directory):
        table_name = table_for_file_name(path.name)
        if table_name is None:  # write_morning_csvs names files by the catalog's titles
            raise AssertionError(f"{path.name} matches no catalog table")
        if tables is None or table_name in tables:
            chosen.append((table_name, path))
    return chosen


def _described(table_name: str, path: Path, location: str) -> MorningFile:
    st = path.stat()
    return MorningFile(table_name, path.name, location, st.st_size, st.st_mtime)


def _as_the_feed_left_it(
    state: EmulatorState, day: date | None, tables: Collection[str] | None
) -> tuple[Brokerage, date]:
    """The brokerage where the feed stands, and the files' day (default: its clock's)."""
    check_tables(tables, MORNING_TABLES)
    brokerage = state.brokerage()
    return brokerage, day or brokerage.now.date()


def write_morning(
    state: EmulatorState,
    out_dir: Path,
    *,
    day: date | None = None,
    tables: Collection[str] | None = None,
) -> MorningReport:
    """Write the morning files of ``day`` into ``out_dir`` without uploading them.

    Nothing was sent, so the state is not changed.
    """
    brokerage, day = _as_the_feed_left_it(state, day, tables)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    with tempfile.TemporaryDirectory(prefix="aljex-morning-") as temp:
        for table_name, path in _write_files(brokerage, day, Path(temp), tables):
            final = Path(shutil.move(path, out_dir / path.name))  # keeps the mtime
            files.append(_described(table_name, final, str(final)))
    return MorningReport(day, files)


def upload_morning(
    state: EmulatorState,
    target: SftpTarget,
    *,
    day: date | None = None,
    tables: Collection[str] | None = None,
) -> MorningReport:
    """Write the morning files of ``day`` and upload them by SFTP, each with its mtime.

    The uploads are recorded in ``state`` (and saved), even when a later file fails, so
    that verify expects what arrived. Raises EmulatorError when the server cannot be
    reached or refuses a file.
    """
    brokerage, day = _as_the_feed_left_it(state, day, tables)
    report = MorningReport(day, [])
    with tempfile.TemporaryDirectory(prefix="aljex-morning-") as temp:
        written = _write_files(brokerage, day, Path(temp), tables)
        try:
            asyncio.run(_upload(target, written, report))
        except (OSError, asyncssh.Error) as e:
            raise EmulatorError(f"SFTP upload to {target.destination} failed: {e}") from None
        finally:
            if report.files:
                state.events.append(_morning_event(state, target, report))
                state.save()
    return report


def _morning_event(state: EmulatorState, target: SftpTarget, report: MorningReport) -> Event:
    return MorningUpload(
        position=state.changes,
        day=report.day,
        tables=[f.table for f in report.files],
        files=[f.name for f in report.files],
        destination=target.destination,
        uploaded_at=now_text(),
    )


async def _upload(target: SftpTarget, files: list[tuple[str, Path]], report: MorningReport) -> None:
    """Log in with the password and put each file, appending to ``report`` as each lands.

    The server's host key is not checked against a known_hosts file (this is a test tool);
    its fingerprint is reported so that it can be checked by eye.
    """
    async with asyncssh.connect(
        target.host,
        target.port,
        username=target.user,
        password=target.password,
        known_hosts=None,
        client_keys=None,
        agent_path=None,
        preferred_auth="password",
        connect_timeout=target.timeout,
    ) as conn:
        host_key = conn.get_server_host_key()
        report.host_key = host_key.get_fingerprint("sha256") if host_key else None
        async with conn.start_sftp_client() as sftp:
            for table_name, path in files:
                remote = posixpath.join(target.directory, path.name)
                await _put(sftp, path, remote)
                report.files.append(_described(table_name, path, remote))


async def _put(sftp: asyncssh.SFTPClient, path: Path, remote: str) -> None:
    """Upload one file and set its mtime before closing it, like ``put -p``.

    The times go on the open handle: a server may take an upload as final at the close (the
    embedded inbox does), and would then ignore times set afterwards by path.
    """
    st = path.stat()
    async with await sftp.open(remote, "wb") as handle:
        with path.open("rb") as source:
            while block := source.read(_UPLOAD_BLOCK):
                await handle.write(block)
        await handle.utime(times=(st.st_atime, st.st_mtime))
