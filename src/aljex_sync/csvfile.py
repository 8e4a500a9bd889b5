"""Read one Morning Sync CSV file: check it as a whole, then stream its rows in batches.

Aljex drops one CSV per Aljex file every morning. A file is loaded whole or not at all, so
:func:`inspect_file` first makes one pass over the raw bytes (hash, size, charset, delimiter)
and :class:`CsvReader` then parses it with the C ``csv`` module, handing out lists of rows so
that no Python code runs per field. Memory stays flat whatever the file size: one batch of
rows and the reader's buffers.

What a file may be (RFC 4180 with the leniencies real exports need):

- UTF-8, with or without a byte order mark, or else wholly in one legacy charset (cp1252 by
  default); which one is decided per file, and text is never replaced with U+FFFD.
- comma, tab or pipe delimited; CRLF or LF line endings; quoted fields may hold delimiters,
  doubled quotes and line breaks, which are kept exactly as written (CR LF stays CR LF).
- blank lines are ignored wherever they are. ``csv`` yields ``[]`` for them, and a trailing
  blank line is common; the cost is that a one-column file cannot carry an empty value except
  as ``""``.
- the first record is the header: at most :data:`MAX_COLUMNS` names, none empty or only
  spaces, no exact duplicate. Names differing only in case are allowed; downstream maps such
  clashes to columns safely. A header with no rows is valid: the loader decides what it means.
- every row has as many fields as the header, and no field is longer than
  :data:`MAX_FIELD_CHARS`, which also stops an unclosed quote from swallowing the file. A row
  is parsed before its width is checked, so one absurd record (millions of empty fields on a
  line) costs memory before it is refused; the field limit bounds everything else.

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
import threading
from dataclasses import dataclass
from itertools import islice, repeat
from operator import contains
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from .errors import MorningFileError

if TYPE_CHECKING:
    from _csv import Reader
    from collections.abc import Iterator

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DELIMITERS",
    "MAX_COLUMNS",
    "MAX_FIELD_CHARS",
    "CsvReader",
    "FileFacts",
    "MalformedFile",
    "inspect_file",
    "records_end",
]

DELIMITERS = (",", "\t", "|")
"""The delimiters a file may use, in the order that breaks ties when sniffing."""

MAX_FIELD_CHARS = 1 << 20
"""Longest field accepted, in characters. A longer one is most likely an unclosed quote."""

MAX_COLUMNS = 4096
"""Most columns a header may name."""

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


@dataclass(frozen=True)
class FileFacts:
    """What one pass over the raw bytes learned, and what :class:`CsvReader` needs to parse."""

    sha256: str
    size: int
    encoding: str
    delimiter: str
    has_bom: bool


def inspect_file(
    path: Path, *, legacy_charset: str = "cp1252", delimiter: str | None = None
) -> FileFacts:
    """Hash and size the file, choose its charset and delimiter, in one streaming pass.

    The file is UTF-8 if all of it is; otherwise all of it must decode in ``legacy_charset``
    (Aljex's older exports are Windows-1252), named in the result by its canonical codec name.
    A file that starts with a UTF-8 byte order mark is UTF-8 and must be valid as such. NUL bytes
    are refused here because ``csv`` would pass them through into the database.

    Raises MalformedFile for an empty file, a NUL byte, or bytes neither charset accepts, and
    ValueError for a delimiter that is not one of :data:`DELIMITERS`. An unknown
    ``legacy_charset`` raises LookupError.
    """
    if delimiter is not None and delimiter not in DELIMITERS:
        raise ValueError(f"delimiter must be one of {DELIMITERS!r}, not {delimiter!r}")
    legacy = codecs.lookup(legacy_charset).name
    sha = hashlib.sha256()
    size = 0
    head = b""
    utf8: _Charset | None = _Charset(_UTF8)
    fallback: _Charset | None = None
    # The hot loop hashes and decodes only; line numbers are counted again on error.
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            if not head:
                head = chunk
            sha.update(chunk)
            nul = chunk.find(b"\0")
            if nul >= 0:
                reason = "a NUL byte (is it a binary or UTF-16 file?)"
                raise MalformedFile(path, _line_at(path, size + nul), reason)
            if utf8 is not None and not utf8.decodes(path, head, chunk, size):
                utf8 = None
                fallback = _Charset(legacy)
                fallback.catch_up(path, size)
            if fallback is not None:
                fallback.decodes(path, head, chunk, size)
            size += len(chunk)
    if size == 0:
        raise MalformedFile(path, None, "the file is empty")
    # A multi-byte sequence may be cut short by the end of the file.
    if utf8 is not None and not utf8.decodes(path, head, b"", size, final=True):
        utf8 = None
        fallback = _Charset(legacy)
        fallback.catch_up(path, size)
    if fallback is not None:
        fallback.decodes(path, head, b"", size, final=True)
    has_bom = head.startswith(codecs.BOM_UTF8)
    encoding = _UTF8 if utf8 is not None else legacy
    if delimiter is None:
        text = codecs.getincrementaldecoder("utf-8-sig" if has_bom else encoding)().decode(
            head, final=size == len(head)
        )
        delimiter = _sniff_delimiter(text)
    return FileFacts(sha.hexdigest(), size, encoding, delimiter, has_bom)


class _Charset:
    """Checks that a stream of byte chunks decodes in one charset, without keeping the text."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._decoder = codecs.getincrementaldecoder(encoding)()

    def decodes(
        self, path: Path, head: bytes, chunk: bytes, offset: int, *, final: bool = False
    ) -> bool:
        """Decode the chunk found at ``offset``; False if UTF-8 fails, MalformedFile otherwise.

        A UTF-8 failure means "try the legacy charset", unless the file starts with a UTF-8
        byte order mark: a file that announces UTF-8 and breaks it is damaged, not legacy.
        """
        pending = len(self._decoder.getstate()[0])
        try:
            self._decoder.decode(chunk, final)
        except UnicodeDecodeError as e:
            # The error's offsets count the bytes held back from the previous chunk.
            line = _line_at(path, offset + e.start - pending)
            bad = _show(e.object[e.start : e.end])
            if self.encoding != _UTF8:
                reason = f"the file is not UTF-8, and {bad} here is not {self.encoding} either"
                raise MalformedFile(path, line, reason) from None
            if head.startswith(codecs.BOM_UTF8):
                reason = f"the file starts with a UTF-8 byte order mark, but {bad} is not UTF-8"
                raise MalformedFile(path, line, reason) from None
            return False
        return True

    def catch_up(self, path: Path, size: int) -> None:
        """Check the first ``size`` bytes, which were read while the file still looked UTF-8.

        This re-reads what was already hashed, but only for legacy files and only up to the
        first non-UTF-8 byte: cheaper than decoding every file twice.
        """
        with path.open("rb") as f:
            offset = 0
            while offset < size and (chunk := f.read(min(_CHUNK, size - offset))):
                self.decodes(path, b"", chunk, offset)
                offset += len(chunk)


def _line_at(path: Path, offset: int) -> int:
    """The 1-based line holding the byte at ``offset``: only for errors, so it reads again."""
    newlines = 0
    with path.open("rb") as f:
        while offset > 0 and (chunk := f.read(min(_CHUNK, offset))):
            newlines += chunk.count(b"\n")
            offset -= len(chunk)
    return newlines + 1


def _show(data: bytes) -> str:
    return ("byte " if len(data) == 1 else "bytes ") + " ".join(f"0x{b:02X}" for b in data)


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
        watch_plain: bool = False,
    ) -> None:
        if facts.delimiter not in DELIMITERS:
            raise ValueError(f"delimiter must be one of {DELIMITERS!r}, not {facts.delimiter!r}")
        self.path = path
        self.facts = facts
        self.max_field_chars = max_field_chars
        self.max_columns = max_columns
        self.header = []
        self.line = 0
        self.bytes_read = 0
        # Plain: the header on line 1, no blank line before a record, and no quote in any
        # value, so that every quote in the file opens or closes a field. Watching costs
        # about 5% of the parsing time, so only on request; False when not watched.
        self.plain = watch_plain
        self._blank_seen = False
        self._file: TextIO | None = None
        self._reader: Reader | None = None
        self._batch_start = 0
        self._batch_raw: list[list[str]] = []

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
        encoding = "utf-8-sig" if self.facts.has_bom else self.facts.encoding
        self._file = self.path.open(encoding=encoding, errors="strict", newline="")
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size != self.facts.size:
                raise MalformedFile(self.path, None, _changed(self.facts.size, size))
            self._reader = csv.reader(self._file, delimiter=self.facts.delimiter, strict=True)
            self._read_header()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the file; safe to call more than once."""
        self._reader = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def batches(self, size: int = DEFAULT_BATCH_SIZE) -> Iterator[list[list[str]]]:
        """Yield lists of at most ``size`` rows until the end of the file.

        Checks are per batch and run in C (a set of row lengths); only a batch holding a blank
        line or a bad row takes the slower path that finds it.
        """
        if size < 1:
            raise ValueError(f"batch size must be at least 1, not {size}")
        reader = self._require_reader()
        width = len(self.header)
        while True:
            start = reader.line_num
            rows = self._parse(reader, size, start)
            if not rows:
                break
            lengths = set(map(len, rows))
            if self.plain:
                self._watch_plain(rows, lengths)
            if lengths == {width}:
                batch = rows
            else:
                self._refuse_wrong_width(rows, lengths, start)
                batch = [row for row in rows if row]  # only blank lines remain to drop
                if not batch:
                    continue
            self._batch_start = start
            self._batch_raw = rows.copy()
            self.line = reader.line_num
            self.bytes_read = self._position()
            yield batch
        self.line = reader.line_num
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
        reader = self._require_reader()
        while True:
            start = reader.line_num
            rows = self._parse(reader, 1, start)
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
        seen: dict[str, int] = {}
        for column, name in enumerate(header, 1):
            if not name.strip():
                raise MalformedFile(self.path, line, f"column {column} of the header has no name")
            if name in seen:
                reason = f"the header names {name!r} twice (columns {seen[name]} and {column})"
                raise MalformedFile(self.path, line, reason)
            seen[name] = column
        self.header = header
        self.line = reader.line_num

    def _parse(self, reader: Reader, size: int, start: int) -> list[list[str]]:
        """Parse up to ``size`` records in one C call; ``start`` is the line before them."""
        rows: list[list[str]] = []
        with _FIELD_LIMIT_LOCK:
            previous = csv.field_size_limit(self.max_field_chars)
            try:
                rows.extend(islice(reader, size))
            except csv.Error as e:
                raise self._bad_record(rows, start, reader.line_num, str(e)) from e
            except UnicodeDecodeError as e:
                reason = f"the file changed since it was inspected: not {self.facts.encoding} here"
                raise MalformedFile(self.path, reader.line_num + 1, reason) from e
            finally:
                csv.field_size_limit(previous)
        return rows

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

    def _refuse_wrong_width(self, rows: list[list[str]], lengths: set[int], start: int) -> None:
        width = len(self.header)
        if not lengths - {0, width}:
            return
        line = start
        for row in rows:
            if row and len(row) != width:
                reason = f"row has {len(row)} fields, the header has {width}"
                raise MalformedFile(self.path, line + 1, reason)
            line += _lines_spanned(row)

    def _require_reader(self) -> Reader:
        if self._reader is None:
            raise RuntimeError(f"{self.path.name} is not open: use CsvReader in a with block")
        return self._reader

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
