"""Morning Sync files: from a CSV in the inbox to rows in the table live sync fills.

A file is matched to its table by name, checked whole (``csvfile``), staged, and merged in
one transaction (``store.merge``) with full or window semantics. Every file gets a row in
``_aljex_files``, loaded or not, and leaves the inbox for ``archive/YYYY-MM-DD/``,
``failed/``, ``unmatched/`` or ``held/`` (the last three with ``<name>.error.txt``).

A file is applied only on good evidence that it is whole, as an interrupted upload can
still be closed cleanly (OpenSSH ``sftp`` does so on Ctrl-C): one that does not end with a
line break, or ends inside a record, is held as possibly truncated, and so is a full file
with sharply fewer rows than the last full file of its table (``max_drop_fraction``), or a
file that would insert rows but is older than the tombstones pruned (``retention``).

The export time T of a file is estimated conservatively, as the earlier of the file's own
modification time (when the client set it) and the moment its upload started, less
``snapshot_margin``: anything live sync changed after T wins over the file.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from contextlib import ExitStack, suppress
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import SQLAlchemyError

from . import catalog, csvfile, retention
from .clock import utcnow
from .config import Settings
from .csvfile import (
    CsvReader,
    FileFacts,
    MalformedFile,
    PossiblyTruncated,
    inspect_file,
    records_end,
)
from .errors import DatabaseUnavailable, MorningFileError
from .feed_activity import last_loaded_content
from .file_report import FileReport
from .folders import clashes
from .store import locks
from .store.database import reading, translate
from .store.merge import MergeCounts, apply, drop_tombstoned, survey
from .store.overlap import can_overlap, survey_while_rewriting
from .store.schema import Schema, SyncedTable, files
from .store.stage import (
    CsvRefused,
    Stage,
    StageOutdated,
    copies_csv,
    drop_scratch,
    scratch_copy,
)
from .store.views import TypedViews

Progress = Callable[[int, int], None]  # bytes read so far, rows read so far

GUARD_MIN_ROWS = 100
MERGE_WAIT = 3600.0  # seconds a load waits for another process's load of its table
PARSE_ROWS = 500
"""Rows parsed and staged at a time. Small batches die young: with 2000, the garbage
collector's passes over the rows still alive cost a quarter of the parsing time."""
PARSE_CHARS = 4 << 20
"""Characters staged at a time too: a file of 7 MB rows peaks at 94 MB RSS, not 510 MB."""

log = logging.getLogger("aljex_sync.morning")


def table_for(name: str, settings: Settings) -> str | None:
    """The table a file belongs to: ``[tables.X] files`` globs first, then Aljex's names."""
    lowered = name.lower()
    for table, table_settings in settings.tables.items():
        if any(fnmatch.fnmatchcase(lowered, g.lower()) for g in table_settings.files):
            return table
    return catalog.table_for_file_name(name)


def export_time(started_at: datetime, mtime: datetime | None, margin_minutes: float) -> datetime:
    """The conservative export time T: the earlier of mtime and upload start, less margin.

    All naive UTC.
    """
    earliest = min(started_at, mtime) if mtime is not None else started_at
    return earliest - timedelta(minutes=margin_minutes)


class MorningLoader:
    """Loads Morning Sync files into the synced tables, one file at a time."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        schema: Schema,
        *,
        refresh_view: Callable[[str], object] | None = None,
    ) -> None:
        """``refresh_view(table)`` brings a loaded table's typed view up to date: by default
        at once, in this thread; ``serve`` passes its background refresher's."""
        self.engine = engine
        self.settings = settings
        self.schema = schema
        schema.keeps_history = settings.keeps_history  # it makes and writes history tables
        self.refresh_view = refresh_view or TypedViews(engine, settings.field_types).after_load

    def load(
        self,
        path: Path,
        *,
        table: str | None = None,
        mode: str | None = None,
        force: bool = False,
        dry_run: bool = False,
        started_at: datetime | None = None,
        mtime: datetime | None = None,
        progress: Progress | None = None,
    ) -> FileReport:
        """Load one file and record it; never raises for a bad file, only for a bad database.

        ``started_at`` and ``mtime`` are naive UTC; by default the file's own modification
        time stands for both.
        """
        begun = utcnow()
        report = FileReport(
            path.name, "failed", table=(table or table_for(path.name, self.settings)), begun=begun
        )
        if clashes(path.name):
            report.table = None
            report.error = "the file's name is the name of one of the inbox's own folders"
            return self._finish(report, begun, dry_run=dry_run)
        if report.table is None:
            report.status, report.error = "unmatched", "the file name matches no Aljex file"
            return self._finish(report, begun, dry_run=dry_run)
        table_settings = self.settings.table(report.table)
        report.mode = mode or table_settings.mode
        if started_at is None:
            started_at = _naive_utc(path.stat().st_mtime)
        report.snapshot_at = export_time(started_at, mtime, self.settings.morning.snapshot_margin)
        try:
            facts = inspect_file(
                path,
                legacy_charset=self.settings.morning.legacy_charset,
                delimiter=table_settings.delimiter,
            )
            report.sha256, report.size = facts.sha256, facts.size
            report.legacy_bytes, report.legacy_charset = facts.fixes, facts.encoding
            if not force and self._already_loaded(facts.sha256, report.table):
                report.status = "duplicate"
                report.error = "the same content as the last file loaded into its table"
            else:
                self._apply(path, facts, report, force=force, dry_run=dry_run, progress=progress)
        except PossiblyTruncated as e:
            report.status, report.error = "held", f"{e}; an upload cut short is never applied"
        except MalformedFile as e:
            report.status, report.error = "failed", str(e)
        except MorningFileError as e:
            report.status, report.error = "failed", str(e)
        except SQLAlchemyError as e:
            error = translate(e, report.table)
            if isinstance(error, DatabaseUnavailable):
                raise error from e
            report.status, report.error = "failed", str(error)
        return self._finish(report, begun, dry_run=dry_run)

    def failed(self, path: Path, error: str) -> FileReport:
        """Record a file the loader itself failed on (``load`` raised), as failed."""
        report = FileReport(path.name, "failed", error=error)
        with suppress(OSError):
            report.size = path.stat().st_size
        return self._finish(report, utcnow(), dry_run=False)

    def _finish(self, report: FileReport, begun: datetime, *, dry_run: bool) -> FileReport:
        report.begun = report.begun or begun
        if not dry_run and report.status != "dry-run" and report.file_id is None:
            self._record(report)  # a loaded file's row was written with its merge
        if report.status == "loaded" and report.table:
            self.refresh_view(report.table)  # typed views: new columns, inferred types
        log.log(report.level, "%s", report.summary())
        return report

    def _already_loaded(self, sha256: str, table: str, conn: Connection | None = None) -> bool:
        """Whether this is what the table's last loaded file held (sent again); an older file's
        content back again is today's truth. Read on ``conn`` (the merge's) if given."""
        if conn is not None:
            return last_loaded_content(conn, table) == sha256
        with reading(self.engine) as reader:
            return last_loaded_content(reader, table) == sha256

    def _apply(
        self,
        path: Path,
        facts: FileFacts,
        report: FileReport,
        *,
        force: bool,
        dry_run: bool,
        progress: Progress | None,
    ) -> None:
        try:
            self._stage_and_merge(
                path, facts, report, force=force, dry_run=dry_run, progress=progress
            )
        except StageOutdated as e:
            # Live sync changed a row staged as unchanged: stage every row's values this time.
            log.info("%s: staging every row again (%s)", path.name, e)
            report.rows_read = 0
            self._stage_and_merge(
                path, facts, report, force=force, dry_run=dry_run, progress=progress, skip=False
            )

    def _stage_and_merge(
        self,
        path: Path,
        facts: FileFacts,
        report: FileReport,
        *,
        force: bool,
        dry_run: bool,
        progress: Progress | None,
        skip: bool = True,
    ) -> None:
        """Stage the file and merge it; with ``skip``, rows the table holds as they are are
        staged as kept (key and hash only), which may raise StageOutdated at the merge."""
        assert report.table is not None and report.snapshot_at is not None
        table_settings = self.settings.table(report.table)
        # The journal's writer and other loads grow tables from other processes.
        self.schema.reload()
        known = self.schema.tables.get(report.table) if skip else None
        with self.engine.connect() as conn:
            stage: Stage | None = None
            scratch: SyncedTable | None = None
            # COPY reads the file's own bytes when they are UTF-8 and plain CSV; if they
            # turn out not to be, or COPY disagrees, the parsed rows go instead.
            csv = copies_csv(conn) and facts.encoding == "utf-8"
            try:
                with CsvReader(path, facts, watch_plain=csv) as reader:
                    report.warnings += reader.warnings
                    header = self._field_names(report.table, reader.header)
                    header = _with_key_names(header, table_settings.key, path)
                    # Columns are planned now and created only once the whole file has been
                    # read: a malformed file leaves no trace in the database.
                    planned = self.schema.plan(report.table, table_settings.key, header)
                    columns = [planned[f] for f in header]
                    keys = [planned[k] for k in table_settings.key]
                    stage = Stage(
                        conn,
                        keys,
                        columns,
                        delimiter=facts.delimiter,
                        target=None if known is None else known.table,
                    )
                    positions = [header.index(k) for k in table_settings.key]
                    try:
                        _stage_file(stage, reader, positions, report, progress, csv=csv)
                    except CsvRefused as e:
                        log.info("%s: staging its parsed rows instead (%s)", path.name, e)
                        report.rows_read = 0
                        with CsvReader(path, facts) as again:
                            _stage_file(stage, again, positions, report, progress, csv=False)
                if report.mode == "full" and not force:
                    reason = self._dropped(report)
                    if reason:
                        report.status, report.error = "held", reason
                        return
                current = self.schema.tables.get(report.table)
                if dry_run and (current is None or any(f not in current.columns for f in header)):
                    # A dry run makes no table and no column: it merges into a scratch copy.
                    planned_table = SyncedTable(
                        report.table, tuple(table_settings.key), tuple(keys), planned
                    )
                    existing = None if current is None else current.table
                    scratch = scratch_copy(conn, planned_table, existing)
                    synced = scratch
                else:
                    synced = self.schema.ensure(report.table, table_settings.key, header)
                    if [synced.columns[f] for f in header] != columns:
                        raise MorningFileError("the table changed while the file was read; retry")
                self._merge(
                    conn, stage, synced, report, force=force, dry_run=dry_run, scratch=bool(scratch)
                )
            finally:
                if scratch is not None:
                    drop_scratch(conn, scratch)
                if stage is not None:
                    stage.drop()

    def _field_names(self, table: str, header: list[str]) -> list[str]:
        """The header's names, each spelled as the table already knows its field.

        Field names are case-insensitive: a field first sent as ``Osd`` keeps its column when
        a file names it ``osd``. Of several known spellings, the one whose column is the
        plain lower-case name wins.
        """
        synced = self.schema.tables.get(table)
        if synced is None:
            return header
        known: dict[str, str] = {}
        for name, column in synced.columns.items():
            lowered = name.lower()
            if lowered not in known or column == lowered:
                known[lowered] = name
        return [known.get(name.lower(), name) for name in header]

    def _dropped(self, report: FileReport) -> str:
        """Why a full file looks cut short against the last full file of its table, or ''."""
        assert report.table is not None
        fraction = self.settings.table(report.table).max_drop_fraction
        if fraction is None:
            fraction = self.settings.morning.max_drop_fraction
        with reading(self.engine) as conn:
            last = conn.execute(
                select(files.c.name, files.c.rows_read, files.c.finished_at)
                .where(
                    files.c.table_name == report.table,
                    files.c.mode == "full",
                    files.c.status == "loaded",
                )
                .order_by(files.c.id.desc())
                .limit(1)
            ).first()
        if last is None or last.rows_read <= GUARD_MIN_ROWS:
            return ""
        if report.rows_read >= last.rows_read * (1 - fraction):
            return ""
        drop = 1 - report.rows_read / last.rows_read
        return (
            f"possibly truncated: {report.rows_read} rows, {drop:.0%} fewer than the"
            f" {last.rows_read} of the last full file ({last.name}, loaded"
            f" {last.finished_at:%Y-%m-%d %H:%M} UTC), more than the {fraction:.0%} allowed;"
            " load it with --force if that is right"
        )

    def _merge(
        self,
        conn: Connection,
        stage: Stage,
        synced: SyncedTable,
        report: FileReport,
        *,
        force: bool,
        dry_run: bool,
        scratch: bool = False,
    ) -> None:
        """Merge the staged file in one transaction, under its table's lock in the database.

        Receivers on several hosts may be given the same file: the one that gets the lock
        first loads it, the others then find it in the file log, whose row for a loaded file
        commits with the merge. On PostgreSQL the changed rows are rewritten while another
        connection counts (``store.overlap``), and the guards judge the counts after that.
        """
        name, at = report.table, report.snapshot_at
        assert name is not None and at is not None
        table_settings = self.settings.table(name)
        full = report.mode == "full"
        transaction = conn.begin()
        try:
            with locks.for_transaction(conn, locks.morning_load(name), wait=MERGE_WAIT):
                if not (force or dry_run) and self._already_loaded(report.sha256, name, conn):
                    report.status = "duplicate"
                    report.error = "the same content as the table's last file, loaded meanwhile"
                    transaction.rollback()
                    return
                # Forced, the file's own rows from an earlier load of it give way to it.
                own = report.name if force else None
                tombstoned = drop_tombstoned(conn, stage, synced, at)
                counts = None
                if can_overlap(stage, tombstoned, scratch=scratch):
                    counts = survey_while_rewriting(
                        conn, stage, synced, full=full, snapshot_at=at, source=report.name, own=own
                    )
                overlap = counts is not None
                if counts is None:
                    counts = survey(
                        conn,
                        stage,
                        synced,
                        full=full,
                        snapshot_at=at,
                        own=own,
                        tombstoned=tombstoned,
                    )
                if not force:
                    reason = self._guard(conn, counts, report, full=full)
                    if reason:
                        report.status, report.error = "held", reason
                        transaction.rollback()
                        return
                apply(
                    conn,
                    stage,
                    synced,
                    counts,
                    full=full,
                    soft_delete=table_settings.delete == "soft",
                    snapshot_at=at,
                    source=report.name,
                    own=own,
                    rewritten=overlap,
                )
                report.counts = counts
                if dry_run:
                    report.status = "dry-run"
                    transaction.rollback()
                else:
                    report.status = "loaded"
                    self._record_on(conn, report)
                    transaction.commit()
        except BaseException:
            transaction.rollback()
            report.file_id = None  # its row went with the rollback
            raise

    def _guard(
        self, conn: Connection, counts: MergeCounts, report: FileReport, *, full: bool
    ) -> str:
        """Why a file must not be applied without --force, or '' when it may."""
        assert report.snapshot_at is not None
        reason = retention.resurrection_risk(conn, report.snapshot_at, counts.inserted)
        if reason or not full:
            return reason
        existing, deleting = counts.existing, counts.deleted
        if report.rows_read == 0 and existing:  # an empty table loses nothing: it loads
            return f"the full file is empty; it would delete all {existing} rows (use --force)"
        limit = self.settings.morning.max_delete_fraction
        if existing > GUARD_MIN_ROWS and deleting > limit * existing:
            return (
                f"the full file would delete {deleting} of {existing} rows, more than"
                f" {limit:.0%}; load it with --force if that is right"
            )
        return ""

    def _record(self, report: FileReport) -> None:
        with self.engine.begin() as conn:
            self._record_on(conn, report)

    def _record_on(self, conn: Connection, report: FileReport) -> None:
        """The file's row in the file log, in the caller's transaction."""
        c = report.counts
        result = conn.execute(
            insert(files).values(
                name=report.name,
                sha256=report.sha256,
                size=report.size,
                table_name=report.table,
                mode=report.mode,
                snapshot_at=report.snapshot_at,
                rows_read=report.rows_read,
                inserted=c.inserted,
                updated=c.updated,
                deleted=c.deleted,
                skipped_newer=c.skipped_newer,
                missing_in_db=c.missing_in_db,
                extra_in_db=c.extra_in_db,
                differing=c.differing,
                status=report.status,
                # A loaded file's warnings go where a failed file's reason does.
                error=report.error or report.warning_text() or None,
                started_at=report.begun or utcnow(),
                finished_at=utcnow(),
            )
        )
        primary_key = result.inserted_primary_key
        report.file_id = int(primary_key[0]) if primary_key else None


def _stage_file(
    stage: Stage,
    reader: CsvReader,
    key_positions: list[int],
    report: FileReport,
    progress: Progress | None,
    *,
    csv: bool,
) -> None:
    """Stage every row of an open reader, checking keys and reporting progress per batch.

    With ``csv``, the rows go as the file's own bytes, sent as far as they have been read
    and checked; raises CsvRefused, with nothing staged, when that cannot be kept up.
    """
    path = reader.path
    stage.open(csv=csv)
    try:
        with ExitStack() as files:
            raw: BinaryIO | None = None
            end = sent = 0
            if csv:
                raw = files.enter_context(path.open("rb"))
                end = records_end(path, reader.facts.size)
            for batch in reader.batches(PARSE_ROWS, PARSE_CHARS):
                _check_keys(batch, key_positions, reader)
                if raw is None:
                    stage.add(batch)
                elif not reader.plain:
                    raise CsvRefused("it is not plain CSV")
                else:
                    upto = min(reader.bytes_read, end)
                    stage.add_csv(raw.read(upto - sent))
                    sent = upto
                report.rows_read += len(batch)
                if progress is not None:
                    progress(reader.bytes_read, report.rows_read)
            if raw is not None:
                stage.add_csv(raw.read(end - sent))
        stage.close(report.rows_read)
    except BaseException:
        stage.abort()
        raise


def _check_keys(batch: list[list[str]], key_positions: list[int], reader: CsvReader) -> None:
    """Refuse a row with an empty key field: one C-level scan of the batch per key field."""
    empty = [
        column.index("")
        for column in (list(map(itemgetter(p), batch)) for p in key_positions)
        if "" in column
    ]
    if empty:
        line = reader.line_of(min(empty))
        raise MalformedFile(reader.path, line, "a row has an empty key field")


def _with_key_names(header: list[str], key: tuple[str, ...], path: Path) -> list[str]:
    """The header with each key field named as configured (matched case-insensitively)."""
    names = list(header)
    for key_field in key:
        sent = SyncedTable.key_field_for_names(names, key_field)
        if sent is None:
            raise MalformedFile(path, 1, csvfile.no_key_field(key_field, header))
        names[names.index(sent)] = key_field
    return names


def _naive_utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC).replace(tzinfo=None)
