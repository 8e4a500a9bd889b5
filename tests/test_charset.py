"""The mixed charset rule: UTF-8 where valid, the legacy charset byte by byte elsewhere."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aljex_sync import charset


def test_valid_utf8_with_one_stray_byte_keeps_the_utf8_part():
    assert charset.decode(b"caf\xc3\xa9\xff") == ("caf\u00e9\u00ff", 1)


def test_plain_utf8_counts_no_fixes():
    assert charset.decode("Dallas \u2013 TX".encode()) == ("Dallas \u2013 TX", 0)


def test_a_cut_utf8_sequence_reads_each_byte_by_the_legacy_charset():
    assert charset.decode(b"\xe2\x82 and \x93quoted\x94") == (
        "\u00e2\u201a and \u201cquoted\u201d",
        4,
    )


def test_bytes_the_legacy_charset_leaves_undefined_read_as_latin1_never_fffd():
    text, fixes = charset.decode(b"\x81\x8d\x8f\x90\x9d")
    assert text == "\x81\x8d\x8f\x90\x9d"
    assert "\ufffd" not in text
    assert fixes == 5


def test_another_legacy_charset_is_used_when_configured():
    assert charset.decode(b"\xe9t\xe9", "latin-1") == ("été", 2)


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=7))
def test_a_stream_decodes_as_the_whole_does_whatever_the_chunking(data, step):
    decoding = charset.Decoding()
    parts = [decoding.decode(data[i : i + step]) for i in range(0, len(data), step)]
    parts.append(decoding.decode(b"", final=True))
    assert "".join(parts) == charset.decode(data)[0]
    assert decoding.fixes == charset.decode(data)[1]
    assert "\ufffd" not in "".join(parts)
