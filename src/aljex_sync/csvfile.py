"""Read one Morning Sync CSV file: check it as a whole, then stream its rows in batches.

Aljex drops one CSV per Aljex file every morning. A file is loaded whole or not at all, so
:func:`inspect_file` first makes one pass over the raw bytes (hash, size, charset, delimiter)
and :class:`CsvReader` then parses it with the C ``csv`` module, handing out lists of rows so
that no Python code runs per field. Memory stays flat whatever the file size: one batch of
rows and the reader's buffers.

What a file may be (RFC 4180 with the leniencies real exports need):

- UTF-8, with or without a byte order mark, where any byte outside a valid UTF-8 sequence is
  read by the legacy charset (cp1252 by default), by :mod:`aljex_sync.charset`'s rule: one
  stray byte never refuses a file, and text is never replaced with U+FFFD. How many bytes
  were read that way is counted (:attr:`FileFacts.fixes`).
- a file ends with a line break, and its last record is whole: a file that stops mid-line or
  inside a quoted field, or whose last record has fewer fields than the header, is most likely
  a cut upload, and is refused as :class:`PossiblyTruncated`.
- comma, tab or pipe delimited (a ``;`` file is one column); CRLF or LF line endings; quoted
  fields may hold delimiters, doubled quotes and line breaks, kept exactly (CR LF stays CR LF).
- blank lines are ignored wherever they are. ``csv`` yields ``[]`` for them, and a trailing
  blank line is common; the cost is that a one-column file cannot carry an empty value except
  as ``""``.
- the first record is the header: at most :data:`MAX_COLUMNS` names, none empty or only
  spaces. Field names are case-insensitive (``Osd``, ``osd`` and ``OSD`` are one field, and
  one column ``osd``); a name given twice, in any case, follows Live Sync's duplicate-field
  rule: the last column wins, name and values, with a warning (:attr:`CsvReader.warnings`).
  A header with no rows is valid: the loader decides what it means.
- every row has as many fields as the header, no field is longer than
  :data:`MAX_FIELD_CHARS`, which also stops an unclosed quote from swallowing the file, and
  no record is longer than :data:`MAX_ROW_CHARS`, which is checked line by line as the
  record is read: what a record costs before it is refused is in proportion to that limit,
  not to the file (at worst a line of 8 Mi empty fields, a list of 64 MB, before its width
  is checked).

Line numbers are physical lines, counted the way ``open(..., newline="")`` splits them (CR LF,
LF or a lone CR each end one), and an error in a record names the line where it starts. Errors
about raw bytes count LFs only, which differs only for files that end lines with a lone CR.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import os
import re
import sys
import threading
from dataclasses import dataclass
from functools import partial
from itertools import islice, repeat
from operator import contains
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from .charset import Decoding, decode, error_handler
from .errors import MorningFileError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "DEFAULT_BATCH_CHARS",
    "DEFAULT_BATCH_SIZE",
    "DELIMITERS",
    "MAX_COLUMNS",
    "MAX_FIELD_CHARS",
    "MAX_ROW_CHARS",
    "CsvReader",
    "FileFacts",
    "MalformedFile",
    "PossiblyTruncated",
    "inspect_file",
    "no_key_field",
    "records_end",
]

DELIMITERS = (",", "\t", "|")
"""The delimiters a file may use, in the order that breaks ties when sniffing."""

MAX_FIELD_CHARS = 1 << 20
"""Longest field accepted, in characters. A longer one is most likely an unclosed quote."""

MAX_COLUMNS = 4096
"""Most columns a header may name."""

MAX_ROW_CHARS = 8 << 20
"""Longest record accepted, in characters as written (quotes and line breaks included).

The column and field limits alone allow a record of 4 GiB, which a load held about five times
over (a 400 MB row took 2 GB). Aljex's widest files have about 990 fields of mostly short
values, a few KB a row; 8 MiB leaves room for a thousand times that, and keeps one row, read
and parsed, to a few tens of MB. A longer record is refused before it is read whole."""

DEFAULT_BATCH_CHARS = 4 << 20
"""Characters of records per batch: a batch ends at the first record boundary past it, so
that big rows make smaller batches (one row at the least) and a batch of 500 rows of 8 MiB
cannot take gigabytes."""

DEFAULT_BATCH_SIZE = 1000
"""Rows per batch. Larger batches read slower (5000 rows: about 20% on 40 columns), as their
objects outgrow the CPU caches and survive into older garbage-collector generations."""

_CHUNK = 1 << 20
_UTF8 = "utf-8"
_NEWLINE = re.compile(r"[\r\n]")

# ``csv.field_size_limit`` is process-wide. Readers set their limit only for the duration of
# one C-level parse call and restore it after; the lock keeps two readers in different
# threads from restoring each other's value mid-parse.
_FIELD_LIMIT_LOCK = threading.Lock()


class MalformedFile(MorningFileError):
    """The file cannot be loaded as a whole: nothing of it should reach the database.

    ``line`` is the 1-based physical line the problem is on (for a bad record, the line the
    record starts on), or None when it concerns the whole file.
    """

    path: Path
    line: int | None
    reason: str

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        super().__init__(path, line, reason)
        self.path = path
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        where = self.path.name if self.line is None else f"{self.path.name} line {self.line}"
        return f"{where}: {self.reason}"


class _RowTooLong(Exception):
    """Raised through ``csv`` by :meth:`CsvReader._lines`: the record is over the limit."""


class PossiblyTruncated(MalformedFile):
    """The file ends where a whole file would not: most likely an upload cut short.

    The loader holds such a file rather than failing it: the whole file may still come.
    """

    def __str__(self) -> str:
        return f"possibly truncated: {super().__str__()}"


@dataclass(frozen=True)
class FileFacts:
    """What one pass over the raw bytes learned, and what :class:`CsvReader` needs to parse."""

    sha256: str
    size: int
    encoding: str  # "utf-8" when all of it is; else the legacy charset, for stray bytes
    delimiter: str
    has_bom: bool
    legacy_charset: str = "cp1252"
    fixes: int = 0  # bytes outside valid UTF-8, read by the legacy charset


def inspect_file(
    path: Path, *, legacy_charset: str = "cp1252", delimiter: str | None = None
) -> FileFacts:
    """Hash and size the file, count its bytes outside UTF-8, choose its delimiter, in one pass.

    Each byte outside a valid UTF-8 sequence is read by ``legacy_charset`` (Aljex's older
    exports are Windows-1252, and one value can mix both); the count of such bytes is
    ``fixes``, and ``encoding`` names the legacy charset (canonically) when there are any.
    NUL bytes are refused here because ``csv`` would pass them through into the database.

    Raises MalformedFile for an empty file or a NUL byte, PossiblyTruncated for a file that
    does not end with a line break, and ValueError for a delimiter that is not one of
    :data:`DELIMITERS`. An unknown ``legacy_charset`` raises LookupError.
    """
    if delimiter is not None and delimiter not in DELIMITERS:
        raise ValueError(f"delimiter must be one of {DELIMITERS!r}, not {delimiter!r}")
    legacy = codecs.lookup(legacy_charset).name
    sha = hashlib.sha256()
    size = 0
    head = tail = b""
    # Decoding valid UTF-8 runs in C; only the bytes outside it go through the fallback.
    decoding = Decoding(legacy)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            if not head:
                head = chunk
            sha.update(chunk)
            nul = chunk.find(b"\0")
            if nul >= 0:
                reason = "a NUL byte (is it a binary or UTF-16 file?)"
                raise MalformedFile(path, _line_at(path, size + nul), reason)
            decoding.decode(chunk)
            size += len(chunk)
            tail = chunk[-1:]
    decoding.decode(b"", final=True)  # a multi-byte sequence may be cut by the end of the file
    if size == 0:
        raise MalformedFile(path, None, "the file is empty")
    if tail not in (b"\n", b"\r"):
        raise PossiblyTruncated(path, None, "the file does not end with a line break")
    has_bom = head.startswith(codecs.BOM_UTF8)
    if delimiter is None:
        text, _ = decode(head[len(codecs.BOM_UTF8) :] if has_bom else head, legacy)
        delimiter = _sniff_delimiter(text)
    encoding = _UTF8 if decoding.fixes == 0 else legacy
    return FileFacts(sha.hexdigest(), size, encoding, delimiter, has_bom, legacy, decoding.fixes)


def _line_at(path: Path, offset: int) -> int:
    """The 1-based line holding the byte at ``offset``: only for errors, so it reads again."""
    newlines = 0
    with path.open("rb") as f:
        while offset > 0 and (chunk := f.read(min(_CHUNK, offset))):
            newlines += chunk.count(b"\n")
            offset -= len(chunk)
    return newlines + 1


def no_key_field(key_field: str, header: list[str]) -> str:
    """Why the header lacks a key field, naming the ``;`` it looks delimited by (not read)."""
    looks = len(header) == 1 and ";" in header[0]
    hint = "; it looks delimited by ';', which is not read: export it delimited by ',', tab or '|'"
    return f"the header has no key field {key_field!r}{hint if looks else ''}"


def _sniff_delimiter(text: str) -> str:
    """The delimiter of :data:`DELIMITERS` that the header record uses most, outside quotes."""
    counts = dict.fromkeys(DELIMITERS, 0)
    # Splitting on quotes leaves the text outside quotes at even indexes; a doubled quote
    # inside a quoted field only adds an empty "outside" piece.
    for i, piece in enumerate(text.split('"')):
        if i % 2:
            continue
        end = _NEWLINE.search(piece)
        outside = piece if end is None else piece[: end.start()]
        for d in DELIMITERS:
            counts[d] += outside.count(d)
        if end is not None:
            break
    # max() keeps the first of equals, so the order of DELIMITERS breaks ties.
    return max(DELIMITERS, key=counts.__getitem__)


def _lines_spanned(row: list[str]) -> int:
    """How many physical lines a parsed record took: one plus the line breaks inside it."""
    # NUL cannot occur in a field (inspect_file refuses it), so joining on it cannot make a
    # CR at the end of one field and an LF at the start of the next look like one CR LF.
    text = "\0".join(row)
    return 1 + text.count("\n") + text.count("\r") - text.count("\r\n")


class CsvReader:
    """Iterate the rows of a file that :func:`inspect_file` has checked.

    Use it as a context manager; the header is read on entry. Every row handed out has
    exactly as many fields as the header. Any problem raises MalformedFile, which means the
    whole file must be rejected: rows from earlier batches are only good if the file is.

    With ``watch_plain``, :attr:`plain` tells whether the records read so far are plain CSV,
    which another CSV reader (PostgreSQL's COPY) splits the same way, so that the file's
    own bytes up to :func:`records_end` can be handed to it instead of the parsed rows.
    """

    header: list[str]
    line: int
    bytes_read: int
    plain: bool

    def __init__(
        self,
        path: Path,
        facts: FileFacts,
        *,
        max_field_chars: int = MAX_FIELD_CHARS,
        max_columns: int = MAX_COLUMNS,
        max_row_chars: int = MAX_ROW_CHARS,
        watch_plain: bool = False,
    ) -> None:
        if facts.delimiter not in DELIMITERS:
            raise ValueError(f"delimiter must be one of {DELIMITERS!r}, not {facts.delimiter!r}")
        self.path = path
        self.facts = facts
        self.max_field_chars = max_field_chars
        self.max_columns = max_columns
        self.max_row_chars = max_row_chars
        self.header = []
        self.warnings: list[str] = []
        self.line = 0
        self.bytes_read = 0
        # Plain: the header on line 1, no blank line before a record, and no quote in any
        # value, so that every quote in the file opens or closes a field. Watching costs
        # about 5% of the parsing time, so only on request; False when not watched.
        self.plain = watch_plain
        self._blank_seen = False
        self._file: TextIO | None = None
        self._readline: Callable[[], str] | None = None
        self._lines_read = 0  # physical lines parsed, as csv counts them
        self._full = False  # the last parse stopped at its characters, not its row count
        self._batch_start = 0
        self._batch_raw: list[list[str]] = []
        self._width = 0  # fields per record, as written
        self._keep: list[int] | None = None  # positions kept when a name repeats

    def __enter__(self) -> CsvReader:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Open the file and read its header; raise MalformedFile if the header is unusable."""
        if self._file is not None:
            raise RuntimeError(f"{self.path.name} is already open")
        encoding = "utf-8-sig" if self.facts.has_bom else _UTF8
        errors = error_handler(self.facts.legacy_charset)
        self._file = self.path.open(encoding=encoding, errors=errors, newline="")
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size != self.facts.size:
                raise MalformedFile(self.path, None, _changed(self.facts.size, size))
            # At most one character over the row limit: a longer line is refused unread.
            self._readline = partial(self._file.readline, self.max_row_chars + 1)
            self._read_header()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the file; safe to call more than once."""
        self._readline = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def batches(
        self, size: int = DEFAULT_BATCH_SIZE, chars: int = DEFAULT_BATCH_CHARS
    ) -> Iterator[list[list[str]]]:
        """Yield lists of at most ``size`` rows until the end of the file; a batch also ends
        after the record that takes it to ``chars`` characters, so it holds one row at least.

        Checks are per batch and run in C (a set of row lengths); only a batch holding a blank
        line or a bad row takes the slower path that finds it.
        """
        if size < 1:
            raise ValueError(f"batch size must be at least 1, not {size}")
        width = self._width
        while True:
            start = self._lines_read
            rows = self._parse(size, chars)
            if not rows:
                break
            lengths = set(map(len, rows))
            if self.plain:
                self._watch_plain(rows, lengths)
            if lengths == {width}:
                batch = rows
            else:
                more = len(rows) == size or self._full
                self._refuse_wrong_width(rows, lengths, start, full=more)
                batch = [row for row in rows if row]  # only blank lines remain to drop
                if not batch:
                    continue
            if self._keep is not None:  # a field named twice: its last column wins
                keep = self._keep
                batch = [[row[i] for i in keep] for row in batch]
            self._batch_start = start
            self._batch_raw = rows.copy()
            self.line = self._lines_read
            self.bytes_read = self._position()
            yield batch
        self.line = self._lines_read
        self.bytes_read = self._position()
        if self.bytes_read != self.facts.size:
            raise MalformedFile(self.path, None, _changed(self.facts.size, self.bytes_read))

    def line_of(self, index: int) -> int:
        """The physical line where row ``index`` of the last batch yielded starts.

        For error messages about a value: it walks the batch, so it costs time in proportion
        to ``index``, and the rows must not have been changed in place.
        """
        line = self._batch_start
        seen = -1
        for row in self._batch_raw:
            if row:
                seen += 1
                if seen == index:
                    return line + 1
            line += _lines_spanned(row)
        raise IndexError(f"the last batch has no row {index}")

    def _read_header(self) -> None:
        while True:
            start = self._lines_read
            rows = self._parse(1)
            if not rows:
                raise MalformedFile(self.path, None, "there is no header row")
            if rows[0]:
                break
        header = rows[0]
        if start > 0:  # blank lines before the header
            self.plain = False
        line = start + 1
        if len(header) > self.max_columns:
            reason = f"the header has {len(header)} columns, more than the limit of "
            raise MalformedFile(self.path, line, reason + str(self.max_columns))
        seen: dict[str, list[int]] = {}
        for column, name in enumerate(header, 1):
            if not name.strip():
                raise MalformedFile(self.path, line, f"column {column} of the header has no name")
            seen.setdefault(name.lower(), []).append(column)
        self._width = len(header)
        names = header
        repeated = {name: columns for name, columns in seen.items() if len(columns) > 1}
        if repeated:
            for name, columns in repeated.items():
                listed = ", ".join(map(str, columns))
                self.warnings.append(
                    f"the header names field {name!r} {len(columns)} times (columns {listed},"
                    f" names compared in any case); the last column's values were used"
                )
            self._keep = sorted(columns[-1] - 1 for columns in seen.values())
            names = [header[i] for i in self._keep]
            self.plain = False  # the file's own bytes have the columns that were dropped
        self.header = names
        self.line = self._lines_read

    def _parse(self, size: int, chars: int = sys.maxsize) -> list[list[str]]:
        """Parse up to ``size`` records in one C call, fewer if they reach ``chars``
        characters first; the file is left at the start of the next record."""
        if self._readline is None:
            raise RuntimeError(f"{self.path.name} is not open: use CsvReader in a with block")
        start = self._lines_read
        rows: list[list[str]] = []
        self._full = False
        # A reader per parse: its input ends where the parse should, between two records.
        lines = self._lines(self._readline, rows, chars)
        reader = csv.reader(lines, delimiter=self.facts.delimiter, strict=True)
        with _FIELD_LIMIT_LOCK:
            previous = csv.field_size_limit(self.max_field_chars)
            try:
                rows.extend(islice(reader, size))
            except _RowTooLong:
                line = start + sum(map(_lines_spanned, rows)) + 1
                reason = f"a row is longer than {self.max_row_chars} characters"
                found = start + reader.line_num + 1  # the line being read: not counted yet
                if found > line:
                    reason += f" (found on line {found})"
                raise MalformedFile(self.path, line, reason) from None
            except csv.Error as e:
                raise self._bad_record(rows, start, start + reader.line_num, str(e)) from e
            except UnicodeDecodeError as e:
                reason = f"the file changed since it was inspected: not {self.facts.encoding} here"
                raise MalformedFile(self.path, start + reader.line_num + 1, reason) from e
            finally:
                csv.field_size_limit(previous)
        self._lines_read = start + reader.line_num
        return rows

    def _lines(
        self, readline: Callable[[], str], rows: list[list[str]], chars: int
    ) -> Iterator[str]:
        """The file's lines for one parse, which fills ``rows``; they end once ``chars``
        characters of whole records have been read, and a record over the row limit raises
        :class:`_RowTooLong` as soon as its lines add up to more, before it is held whole.

        ``csv`` takes a record line by line, and ``rows`` grows by one as each record ends
        (``list.extend`` appends as it goes, as :meth:`_bad_record` relies on too), so a line
        read here knows whether it starts a record. Runs once a line: locals only.
        """
        most = self.max_row_chars
        seen = read = record = 0  # rows when the last line was read; characters; where
        while True:
            if len(rows) != seen:  # the line before ended a record
                seen = len(rows)
                record = read
                if read >= chars:
                    self._full = True
                    return
            line = readline()
            if not line:
                return
            read += len(line)
            if read - record > most:
                raise _RowTooLong
            yield line

    def _bad_record(
        self, rows: list[list[str]], start: int, error_line: int, message: str
    ) -> MalformedFile:
        """Turn a csv.Error into MalformedFile at the line where the failing record starts.

        ``list.extend`` keeps the records parsed before the error, so their line breaks tell
        where the failing one began: the line that matters for an unclosed quote.
        """
        line = start + sum(map(_lines_spanned, rows)) + 1
        if message.startswith("field larger than field limit"):
            reason = (
                f"a field is longer than {self.max_field_chars} characters (an unclosed quote?)"
            )
        elif message == "unexpected end of data":
            reason = "a quoted field is still open at the end of the file"
            if error_line > line:
                reason += f" (found on line {error_line})"
            return PossiblyTruncated(self.path, line, reason)
        else:
            reason = f"bad quoting: {message}"
        if error_line > line:
            reason += f" (found on line {error_line})"
        return MalformedFile(self.path, line, reason)

    def _watch_plain(self, rows: list[list[str]], lengths: set[int]) -> None:
        """Update :attr:`plain` for a batch, in C-speed calls; blank lines may only trail."""
        if self._blank_seen:
            self.plain = lengths == {0}
            return
        if 0 in lengths:
            if any(rows[rows.index([]) :]):  # a record after a blank line
                self.plain = False
                return
            self._blank_seen = True
        if any(map(contains, map("".join, rows), repeat('"'))):
            self.plain = False

    def _refuse_wrong_width(
        self, rows: list[list[str]], lengths: set[int], start: int, *, full: bool
    ) -> None:
        """Refuse the first row of the wrong width; ``full``: more rows may follow these.

        A short last record is what a cut upload leaves: PossiblyTruncated, not malformed.
        """
        width = self._width
        if not lengths - {0, width}:
            return
        final = max(i for i, row in enumerate(rows) if row)
        line = start
        for i, row in enumerate(rows):
            if row and len(row) != width:
                reason = f"row has {len(row)} fields, the header has {width}"
                if i == final and len(row) < width and (not full or self._no_more_records()):
                    raise PossiblyTruncated(self.path, line + 1, "the last " + reason)
                raise MalformedFile(self.path, line + 1, reason)
            line += _lines_spanned(row)

    def _no_more_records(self) -> bool:
        """Whether only blank lines are left to read. Only on the way to an error: it reads on."""
        try:
            while rows := self._parse(1):
                if rows[0]:
                    return False
        except MalformedFile:
            return False
        return True

    def _position(self) -> int:
        assert self._file is not None
        return os.lseek(self._file.fileno(), 0, os.SEEK_CUR)


def records_end(path: Path, size: int) -> int:
    """Where the file's records end: before its trailing blank lines, after the line break
    that ends the last record.

    A plain file (:attr:`CsvReader.plain`) up to there is what another CSV reader should be
    given: blank lines are skipped here, and COPY would refuse them. Only the trailing run of
    CR and LF bytes is looked at; in a file :class:`CsvReader` accepts it cannot be inside
    quotes.
    """
    run = 0
    with path.open("rb") as f:
        while run < size:
            step = min(_CHUNK, size - run)
            f.seek(size - run - step)
            chunk = f.read(step)
            stripped = len(chunk.rstrip(b"\r\n"))
            run += step - stripped
            if stripped:
                break
    if run == 0:
        return size
    with path.open("rb") as f:
        f.seek(size - run)
        first = f.read(2)
    return size - run + (2 if first == b"\r\n" else 1)


def _changed(inspected: int, now: int) -> str:
    return f"the file changed since it was inspected ({inspected} bytes then, {now} now)"
