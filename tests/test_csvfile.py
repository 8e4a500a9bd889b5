"""Reading one Morning Sync CSV file: what is accepted, what is refused, and where."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
import textwrap
import tracemalloc
from copy import deepcopy
from pathlib import Path

import pytest

from aljex_sync.csvfile import (
    MAX_COLUMNS,
    MAX_FIELD_CHARS,
    MAX_ROW_CHARS,
    CsvReader,
    FileFacts,
    MalformedFile,
    PossiblyTruncated,
    inspect_file,
    no_key_field,
)

BOM = b"\xef\xbb\xbf"


def write(tmp_path: Path, data: bytes, name: str = "Loads_20261127.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read_all(path: Path, *, size: int = 1000, **inspect: str) -> tuple[list[str], list[list[str]]]:
    facts = inspect_file(path, **inspect)
    with CsvReader(path, facts) as reader:
        rows = [row for batch in reader.batches(size) for row in batch]
        return reader.header, rows


def malformed(path: Path, *, size: int = 1000) -> MalformedFile:
    with pytest.raises(MalformedFile) as caught:
        read_all(path, size=size)
    return caught.value


# RFC 4180


def test_quoted_fields_keep_commas_doubled_quotes_and_newlines(tmp_path):
    path = write(
        tmp_path,
        b'id,name,note\r\n1,"Acme, Inc.","say ""hi"""\r\n'
        b'2,"two\r\nlines","lf\nonly"\r\n3,"","x"\r\n',
    )
    header, rows = read_all(path)
    assert header == ["id", "name", "note"]
    assert rows == [
        ["1", "Acme, Inc.", 'say "hi"'],
        ["2", "two\r\nlines", "lf\nonly"],
        ["3", "", "x"],
    ]


def test_bad_quoting_is_malformed_with_its_line(tmp_path):
    path = write(tmp_path, b'a,b,c\n1,2,3\na,"b"c,d\n4,5,6\n')
    error = malformed(path)
    assert error.line == 3
    assert str(error).startswith("Loads_20261127.csv line 3: bad quoting")


def test_unclosed_quote_names_the_line_it_opens_on(tmp_path):
    path = write(tmp_path, b'a,b\n1,2\n3,"never closed\n4,5\n6,7\n')
    error = malformed(path)
    assert error.line == 3
    assert "still open at the end of the file" in error.reason
    assert "(found on line 5)" in error.reason


@pytest.mark.parametrize("size", [1, 2, 1000])
def test_bad_quoting_after_an_embedded_newline_names_the_record_start(tmp_path, size):
    path = write(tmp_path, b'a,b\n1,"x\ny"\n2,3\n4,"p\nq"z\n')
    error = malformed(path, size=size)
    assert error.line == 5
    assert "(found on line 6)" in error.reason


# Encodings and byte order mark


def test_utf8_bom_is_removed_from_the_first_header_name(tmp_path):
    path = write(tmp_path, BOM + b"id,name\r\n1,x\r\n")
    facts = inspect_file(path)
    assert facts.has_bom
    assert facts.encoding == "utf-8"
    header, rows = read_all(path)
    assert header == ["id", "name"]
    assert rows == [["1", "x"]]


def test_bom_only_file_has_no_header(tmp_path):
    error = malformed(write(tmp_path, BOM + b"\n"))
    assert error.line is None
    assert error.reason == "there is no header row"


def test_valid_utf8_file_is_read_as_utf8(tmp_path):
    path = write(tmp_path, "id,city\n1,Montréal\n".encode())
    assert inspect_file(path).encoding == "utf-8"
    assert read_all(path)[1] == [["1", "Montréal"]]


def test_cp1252_byte_makes_the_file_cp1252(tmp_path):
    path = write(tmp_path, b"id,city\n1,Montr\xe9al\n2,\x80 5\n")
    facts = inspect_file(path)
    assert facts.encoding == "cp1252"
    assert not facts.has_bom
    assert read_all(path)[1] == [["1", "Montréal"], ["2", "€ 5"]]


def test_legacy_charset_is_chosen_per_call_and_named_canonically(tmp_path):
    path = write(tmp_path, b"id,city\n1,Montr\xe9al\n")
    assert inspect_file(path, legacy_charset="latin-1").encoding == "iso8859-1"
    assert inspect_file(path, legacy_charset="windows-1252").encoding == "cp1252"


def test_a_byte_undefined_in_cp1252_reads_as_latin1_not_refused(tmp_path):
    # 0xE9 is not UTF-8 here; 0x81 is undefined in cp1252: Latin-1 reads it, never U+FFFD.
    path = write(tmp_path, b"id,city\n1,Montr\xe9al\n2,ok\n3,\x81\n")
    assert inspect_file(path).fixes == 2
    assert read_all(path)[1] == [["1", "Montréal"], ["2", "ok"], ["3", "\x81"]]


def test_valid_utf8_and_stray_legacy_bytes_mix_in_one_value(tmp_path):
    path = write(tmp_path, b"id,v\n1,caf\xc3\xa9\xff\n2,\xc2\x81\n")
    facts = inspect_file(path)
    assert (facts.encoding, facts.fixes) == ("cp1252", 1)
    assert read_all(path)[1] == [["1", "café\u00ff"], ["2", "\u0081"]]


def test_a_bom_and_one_cp1252_byte_are_read_not_refused(tmp_path):
    path = write(tmp_path, BOM + b"id,v\n1,ok\n2,caf\xe9 \xe2\x82\xac\n")
    facts = inspect_file(path)
    assert facts.has_bom and facts.fixes == 1
    assert read_all(path) == (["id", "v"], [["1", "ok"], ["2", "café €"]])


def test_non_utf8_byte_after_the_first_chunk_still_falls_back(tmp_path):
    data = b"id,v\n" + b"1,plain ascii\n" * 100_000 + b"2,caf\xe9\n"
    assert len(data) > 1 << 20
    path = write(tmp_path, data)
    assert inspect_file(path).encoding == "cp1252"
    assert read_all(path)[1][-1] == ["2", "café"]


def test_utf8_sequence_cut_short_falls_back(tmp_path):
    path = write(tmp_path, b"id,v\n1,\xc3\n")
    assert inspect_file(path).encoding == "cp1252"
    assert read_all(path)[1] == [["1", "Ã"]]


def test_utf8_is_never_replaced_with_u_fffd(tmp_path):
    path = write(tmp_path, "id,v\n1,\ufffd caf\u00e9 \u4e2d\n".encode())
    assert read_all(path)[1] == [["1", "\ufffd caf\u00e9 \u4e2d"]]


def test_unknown_legacy_charset_is_a_lookup_error(tmp_path):
    with pytest.raises(LookupError):
        inspect_file(write(tmp_path, b"a\n1\n"), legacy_charset="no-such-charset")


# Line endings and blank lines


@pytest.mark.parametrize("eol", [b"\r\n", b"\n", b"\r"], ids=["crlf", "lf", "cr"])
def test_crlf_and_lf_line_endings(tmp_path, eol):
    data = eol.join([b"id,name", b"1,a", b"2,b"]) + eol
    header, rows = read_all(write(tmp_path, data))
    assert header == ["id", "name"]
    assert rows == [["1", "a"], ["2", "b"]]


# Files cut short: held as possibly truncated, as an interrupted upload leaves them


def truncated(path: Path, *, size: int = 1000) -> PossiblyTruncated:
    with pytest.raises(PossiblyTruncated) as caught:
        read_all(path, size=size)
    return caught.value


@pytest.mark.parametrize(
    "data",
    [b"id,name\n1,a\n2,b", b"id,name\r\n1,a\r\n2,", b"id,name", b'id,name\n1,"a b'],
    ids=["mid-value", "after-a-delimiter", "header-only", "inside-quotes"],
)
def test_a_file_without_a_final_line_break_is_possibly_truncated(tmp_path, data):
    error = truncated(write(tmp_path, data))
    assert error.line is None
    assert str(error) == (
        "possibly truncated: Loads_20261127.csv: the file does not end with a line break"
    )


@pytest.mark.parametrize("size", [1, 2, 1000])
def test_a_quote_still_open_at_the_end_is_possibly_truncated(tmp_path, size):
    error = truncated(write(tmp_path, b'id,note\n1,a\n2,"first line\nsecond\n'), size=size)
    assert error.line == 3
    assert "still open at the end of the file" in error.reason


@pytest.mark.parametrize("size", [1, 2, 3, 1000])
def test_a_short_last_record_is_possibly_truncated(tmp_path, size):
    error = truncated(write(tmp_path, b"id,name,city\n1,a,x\n2,b,y\n3,c\n\n"), size=size)
    assert error.line == 4
    assert error.reason == "the last row has 2 fields, the header has 3"


def test_a_short_record_before_the_last_is_malformed_not_truncated(tmp_path):
    error = malformed(write(tmp_path, b"id,name,city\n1,a\n2,b,y\n"))
    assert not isinstance(error, PossiblyTruncated)
    assert (error.line, error.reason) == (2, "row has 2 fields, the header has 3")


def test_blank_lines_are_ignored_anywhere(tmp_path):
    path = write(tmp_path, b"\r\nid,name\r\n1,a\r\n\r\n\n2,b\r\n\r\n\r\n")
    header, rows = read_all(path)
    assert header == ["id", "name"]
    assert rows == [["1", "a"], ["2", "b"]]


def test_a_batch_of_only_blank_lines_yields_nothing(tmp_path):
    path = write(tmp_path, b"id\n1\n\n\n\n2\n")
    facts = inspect_file(path)
    with CsvReader(path, facts) as reader:
        assert list(reader.batches(2)) == [[["1"]], [["2"]]]


# Delimiters


@pytest.mark.parametrize(
    ("data", "delimiter"),
    [
        (b"id,name,city\n1,a,b\n", ","),
        (b"id\tname\tcity\n1\ta\tb\n", "\t"),
        (b"id|name|city\n1|a|b\n", "|"),
    ],
    ids=["comma", "tab", "pipe"],
)
def test_delimiter_is_sniffed_from_the_header(tmp_path, data, delimiter):
    path = write(tmp_path, data)
    assert inspect_file(path).delimiter == delimiter
    assert read_all(path) == (["id", "name", "city"], [["1", "a", "b"]])


def test_sniffing_ignores_delimiters_inside_quotes(tmp_path):
    path = write(tmp_path, b'"a,b,c"|"d,""e"",f"|g\n1|2|3\n')
    assert inspect_file(path).delimiter == "|"
    assert read_all(path) == (["a,b,c", 'd,"e",f', "g"], [["1", "2", "3"]])


def test_sniffing_looks_only_at_the_header_line(tmp_path):
    path = write(tmp_path, b"a|b\n1,2,3,4,5|6\n")
    assert inspect_file(path).delimiter == "|"


def test_comma_wins_ties(tmp_path):
    path = write(tmp_path, b"a,b|c\n")
    assert inspect_file(path).delimiter == ","


def test_single_column_header_is_comma_delimited(tmp_path):
    path = write(tmp_path, b"id\n1\n2\n")
    assert inspect_file(path).delimiter == ","
    assert read_all(path) == (["id"], [["1"], ["2"]])


def test_given_delimiter_is_used_as_is(tmp_path):
    path = write(tmp_path, b"a,b|c\n1,2|3\n")
    assert inspect_file(path, delimiter="|").delimiter == "|"
    assert read_all(path, delimiter="|") == (["a,b", "c"], [["1,2", "3"]])


def test_other_delimiters_are_refused(tmp_path):
    path = write(tmp_path, b"a;b\n")
    with pytest.raises(ValueError, match="delimiter"):
        inspect_file(path, delimiter=";")
    facts = FileFacts("0" * 64, 4, "utf-8", ";", has_bom=False)
    with pytest.raises(ValueError, match="delimiter"):
        CsvReader(path, facts)


def test_a_semicolon_file_reads_as_one_column_and_its_missing_key_says_why(tmp_path):
    path = write(tmp_path, b"id;name\n1;Ann\n")
    header, rows = read_all(path)
    assert (header, rows) == (["id;name"], [["1;Ann"]])
    assert no_key_field("id", header) == (
        "the header has no key field 'id'; it looks delimited by ';', which is not read:"
        " export it delimited by ',', tab or '|'"
    )
    assert no_key_field("id", ["key", "name;x"]) == "the header has no key field 'id'"
    assert no_key_field("id", ["key"]) == "the header has no key field 'id'"


# The header


def test_zero_byte_file_is_malformed(tmp_path):
    with pytest.raises(MalformedFile) as caught:
        inspect_file(write(tmp_path, b""))
    assert caught.value.line is None
    assert str(caught.value) == "Loads_20261127.csv: the file is empty"


def test_file_of_blank_lines_has_no_header(tmp_path):
    error = malformed(write(tmp_path, b"\r\n\r\n"))
    assert error.reason == "there is no header row"


def test_header_only_file_has_zero_rows(tmp_path):
    assert read_all(write(tmp_path, b"id,name\r\n")) == (["id", "name"], [])


@pytest.mark.parametrize("data", [b"id,,name\n", b"id, ,name\n"], ids=["empty", "blank"])
def test_header_with_an_empty_name_is_malformed(tmp_path, data):
    error = malformed(write(tmp_path, data))
    assert str(error) == "Loads_20261127.csv line 1: column 2 of the header has no name"


@pytest.mark.parametrize("size", [1, 1000])
def test_a_field_named_twice_keeps_its_last_column_with_a_warning(tmp_path, size):
    path = write(tmp_path, b"\nid,name,id\n1,a,2\n3,b,4\n")
    facts = inspect_file(path)
    with CsvReader(path, facts) as reader:
        rows = [row for batch in reader.batches(size) for row in batch]
        assert reader.header == ["name", "id"]
        assert reader.warnings == [
            "the header names field 'id' 2 times (columns 1, 3, names compared in any case);"
            " the last column's values were used"
        ]
    assert rows == [["a", "2"], ["b", "4"]]


def test_header_names_differing_only_in_case_are_one_field(tmp_path):
    path = write(tmp_path, b"Osd,id,osd,OSD\n1,k,2,3\n")
    facts = inspect_file(path)
    with CsvReader(path, facts, watch_plain=True) as reader:
        rows = [row for batch in reader.batches() for row in batch]
        assert reader.header == ["id", "OSD"]
        assert len(reader.warnings) == 1 and "'osd' 3 times" in reader.warnings[0]
        assert not reader.plain  # the file's own bytes no longer match the columns
    assert rows == [["k", "3"]]


def test_header_names_are_kept_exactly_as_written(tmp_path):
    header, _ = read_all(write(tmp_path, b' Id ,"Pro #",Caf\xc3\xa9\n'))
    assert header == [" Id ", "Pro #", "Café"]


def test_more_than_4096_columns_is_malformed(tmp_path):
    wide = ",".join(f"c{i}" for i in range(MAX_COLUMNS)).encode()
    assert len(read_all(write(tmp_path, wide + b"\n", "ok.csv"))[0]) == MAX_COLUMNS
    error = malformed(write(tmp_path, wide + b",one_more\n"))
    assert error.line == 1
    assert error.reason == "the header has 4097 columns, more than the limit of 4096"


# Rows


def test_row_with_wrong_field_count_names_its_line(tmp_path):
    path = write(tmp_path, b"a,b,c\n1,2,3\n4,5\n6,7,8\n")
    error = malformed(path)
    assert str(error) == "Loads_20261127.csv line 3: row has 2 fields, the header has 3"


@pytest.mark.parametrize("size", [1, 2, 1000])
def test_wrong_field_count_after_an_embedded_newline_names_the_start_line(tmp_path, size):
    path = write(
        tmp_path,
        b'a,b\r\n1,"two\r\nlines"\r\n\r\n2,"lf\nand\rcr"\r\n3,4\r\n5,"x\r\ny",z\r\n6,7\r\n',
    )
    # Lines: 1 header, 2-3 row 1, 4 blank, 5-7 row 2, 8 row 3, 9-10 the bad row.
    error = malformed(path, size=size)
    assert error.line == 9
    assert error.reason == "row has 3 fields, the header has 2"


def test_cr_and_lf_ending_and_starting_adjacent_fields_are_two_line_breaks(tmp_path):
    path = write(tmp_path, b'a,b\n"x\r","\ny"\n1,2,3\n')
    error = malformed(path)
    assert error.line == 5


def test_rows_come_in_batches_of_at_most_size(tmp_path):
    path = write(tmp_path, b"id\n" + b"".join(b"%d\n" % i for i in range(10)))
    with CsvReader(path, inspect_file(path)) as reader:
        sizes = [len(batch) for batch in reader.batches(4)]
    assert sizes == [4, 4, 2]


def test_nul_byte_is_malformed(tmp_path):
    with pytest.raises(MalformedFile) as caught:
        inspect_file(write(tmp_path, b"a,b\n1,2\n3,x\x00y\n"))
    assert caught.value.line == 3
    assert "NUL" in caught.value.reason


def test_utf16_file_is_malformed(tmp_path):
    with pytest.raises(MalformedFile, match="NUL"):
        inspect_file(write(tmp_path, "id,name\r\n1,a\r\n".encode("utf-16")))


def test_field_longer_than_the_limit_is_malformed(tmp_path):
    longest = b"x" * MAX_FIELD_CHARS
    path = write(tmp_path, b"a,b\n1," + longest + b"\n", "ok.csv")
    assert len(read_all(path)[1][0][1]) == MAX_FIELD_CHARS
    error = malformed(write(tmp_path, b"a,b\n1,2\n3," + longest + b"x\n"))
    assert error.line == 3
    assert error.reason.startswith(f"a field is longer than {MAX_FIELD_CHARS} characters")


def test_row_longer_than_the_limit_is_malformed_at_the_line_it_starts_on(tmp_path):
    """The limit counts a record as written, its line break included; a record of many
    short lines (quoted line breaks) is counted whole, and named by its first line."""
    fields = MAX_ROW_CHARS // MAX_FIELD_CHARS
    header = b",".join(b"c%d" % i for i in range(fields)) + b"\n"
    full = b"x" * MAX_FIELD_CHARS
    # One row of exactly the limit, line break included: accepted.
    longest = b",".join([full[:-fields], *[full] * (fields - 1)]) + b"\n"
    assert len(longest) == MAX_ROW_CHARS
    assert len(read_all(write(tmp_path, header + longest, "ok.csv"))[1]) == 1
    error = malformed(write(tmp_path, header + b"1" * fields + b"\n" + b"x" + longest))
    assert error.line == 3
    assert error.reason == f"a row is longer than {MAX_ROW_CHARS} characters"
    quoted = b'"' + b"\n".join([b"x" * 1000] * 1000) + b'"'
    wider = b",".join(b"c%d" % i for i in range(fields + 1)) + b"\n"
    error = malformed(write(tmp_path, wider + b",".join([quoted] * (fields + 1)) + b"\n"))
    assert error.line == 2
    assert error.reason.startswith(f"a row is longer than {MAX_ROW_CHARS} characters (found on")


def test_a_row_over_the_limit_is_refused_before_it_is_read_whole(tmp_path):
    """The trial's file: one row of 400 fields of 1 MB took a load to 2 GB. The reader now
    stops a line one character past the limit, whatever the line's length."""
    field = b"x" * 1_000_000
    path = write(tmp_path, b",".join(b"c%d" % i for i in range(40)) + b"\n")
    with path.open("ab") as f:
        f.write(b",".join([field] * 40) + b"\n")
    tracemalloc.start()
    try:
        error = malformed(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.line == 2 and "a row is longer than" in error.reason
    assert peak < 3 * MAX_ROW_CHARS


def test_row_size_limit_is_per_reader(tmp_path):
    path = write(tmp_path, b"a,b\n1,2\n12,345\n")
    reader = CsvReader(path, inspect_file(path), max_row_chars=5)
    with reader, pytest.raises(MalformedFile, match="line 3: a row is longer than 5 char"):
        list(reader.batches())


def test_batches_end_at_the_row_that_reaches_their_characters(tmp_path):
    """Big rows make small batches, one row at the least; rows of 10 characters here."""
    path = write(tmp_path, b"id,v\n" + b"".join(b"%d,%s\n" % (i, b"x" * 7) for i in range(10)))
    with CsvReader(path, inspect_file(path)) as reader:
        assert [len(batch) for batch in reader.batches(4, chars=25)] == [3, 3, 3, 1]
    with CsvReader(path, inspect_file(path)) as reader:
        assert [len(batch) for batch in reader.batches(4, chars=5)] == [1] * 10
    with CsvReader(path, inspect_file(path)) as reader:
        rows = [row for batch in reader.batches(4, chars=25) for row in batch]
    assert rows == read_all(path)[1]


def test_a_short_row_where_a_batch_ends_on_its_characters_is_malformed_not_truncated(tmp_path):
    """More rows follow it, so it is no cut upload."""
    path = write(tmp_path, b"id,v\n1,abcdefgh\n2\n3,abcdefgh\n")
    with CsvReader(path, inspect_file(path)) as reader, pytest.raises(MalformedFile) as caught:
        list(reader.batches(100, chars=12))
    assert type(caught.value) is MalformedFile and caught.value.line == 3


def test_field_size_limit_is_per_reader(tmp_path):
    path = write(tmp_path, b"a,b\n1,12345\n")
    reader = CsvReader(path, inspect_file(path), max_field_chars=4)
    with reader, pytest.raises(MalformedFile, match="longer than 4 characters"):
        list(reader.batches())


def test_field_size_limit_does_not_leak(tmp_path):
    before = csv.field_size_limit()
    path = write(tmp_path, b"a,b\n1,2\n3,4\n")
    with CsvReader(path, inspect_file(path), max_field_chars=before * 2) as reader:
        for _batch in reader.batches(1):
            assert csv.field_size_limit() == before
    assert csv.field_size_limit() == before


# Facts, progress, and the file changing


def test_inspect_reports_sha256_and_size(tmp_path):
    data = b"id,name\r\n1,a\r\n" * 100_000
    facts = inspect_file(write(tmp_path, data))
    assert facts == FileFacts(hashlib.sha256(data).hexdigest(), len(data), "utf-8", ",", False)


def test_line_and_bytes_read_follow_the_batches(tmp_path):
    data = b'id,v\n1,a\n2,"b\nc"\n3,d\n'
    path = write(tmp_path, data)
    with CsvReader(path, inspect_file(path)) as reader:
        assert reader.line == 1
        progress = [(reader.line, len(batch)) for batch in reader.batches(2)]
        assert progress == [(4, 2), (5, 1)]
        assert reader.bytes_read == len(data)


def test_line_of_names_the_start_line_of_each_row_in_the_batch(tmp_path):
    path = write(tmp_path, b'id,v\n0,a\n\n1,"b\r\nc"\n2,d\n3,e\n')
    with CsvReader(path, inspect_file(path)) as reader:
        batches = reader.batches(3)
        first = next(batches)
        assert [reader.line_of(i) for i in range(len(first))] == [2, 4]
        second = next(batches)
        assert [reader.line_of(i) for i in range(len(second))] == [6, 7]
        with pytest.raises(IndexError):
            reader.line_of(2)


def test_file_changed_since_inspection_is_malformed(tmp_path):
    path = write(tmp_path, b"id\n1\n")
    facts = inspect_file(path)
    path.write_bytes(b"id\n1\n2\n")
    with pytest.raises(MalformedFile, match="changed since it was inspected"):
        CsvReader(path, facts).open()


def test_reader_must_be_open_to_read(tmp_path):
    path = write(tmp_path, b"id\n1\n")
    reader = CsvReader(path, inspect_file(path))
    with pytest.raises(RuntimeError, match="not open"):
        next(reader.batches())


def test_malformed_file_keeps_its_context_when_copied(tmp_path):
    # deepcopy goes through __reduce__, as pickling to another process does.
    error = MalformedFile(tmp_path / "Loads.csv", 12, "row has 38 fields, the header has 40")
    copy = deepcopy(error)
    assert (copy.path, copy.line, copy.reason) == (error.path, 12, error.reason)
    assert str(copy) == "Loads.csv line 12: row has 38 fields, the header has 40"


# Memory


MEASURE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from aljex_sync.csvfile import CsvReader, inspect_file

    path = Path(sys.argv[1])
    facts = inspect_file(path)
    rows = 0
    with CsvReader(path, facts) as reader:
        for batch in reader.batches():
            rows += len(batch)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a big
    # pytest process would report the parent's peak.
    status = Path("/proc/self/status").read_text()
    peak = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    print(rows, peak)
    """
)


def test_memory_stays_flat_on_a_large_file(tmp_path):
    header = ",".join(f"col_{i}" for i in range(40)).encode() + b"\r\n"
    row = b",".join([b'"Acme, Inc."', b'"two\r\nlines"', b'"say ""hi"""'] + [b"12345.00"] * 37)
    block = (row + b"\r\n") * 4000
    copies = 200_000_000 // len(block)
    path = tmp_path / "big.csv"
    with path.open("wb") as f:
        f.write(header)
        for _ in range(copies):
            f.write(block)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=100,
    )
    rows, peak_kib = map(int, result.stdout.split())
    assert rows == copies * 4000
    assert peak_kib < 120 * 1024, f"peak RSS {peak_kib // 1024} MiB"
