"""The Live Sync wire format, per HTML 4.01 section 17.13.4.1, without a server."""

from __future__ import annotations

import contextlib
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aljex_sync.errors import MalformedRequest, RequestTooLarge, UnknownAction, WireError
from aljex_sync.wire import decode_pairs, parse_body


def html401_encode(pairs: dict[str, str]) -> bytes:
    """Encode as a browser does per HTML 4.01: space as +, other reserved bytes as %XX."""
    return "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs.items()).encode()


# Text without NUL (a NUL is refused) and without lone surrogates (not encodable).
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@given(st.dictionaries(text.filter(bool), text, max_size=20))
def test_any_fields_encoded_per_html401_decode_back_to_themselves(fields):
    assert dict(decode_pairs(html401_encode(fields))) == fields


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_nothing_but_the_decoders_own_error(body):
    with contextlib.suppress(WireError):
        parse_body(body)


@given(st.binary(max_size=300))
def test_decoded_values_never_contain_a_replacement_character_that_was_not_sent(body):
    try:
        pairs = decode_pairs(body)
    except WireError:
        return
    if "\ufffd" not in body.decode("utf-8", "ignore"):
        sent_fffd = b"%EF%BF%BD" in body.upper()
        assert sent_fffd or all("\ufffd" not in k + v for k, v in pairs)


def test_crlf_inside_a_value_is_kept_exactly():
    assert decode_pairs(b"a=x%0D%0Ay%0Az") == [("a", "x\r\ny\nz")]


def test_plus_is_space_and_escaped_plus_is_plus():
    assert decode_pairs(b"a=1+2%2B3") == [("a", "1 2+3")]


def test_a_legacy_charset_can_be_configured():
    assert decode_pairs(b"a=%E9", legacy_charset="latin-1") == [("a", "é")]
    assert decode_pairs(b"a=%E9") == [("a", "é")]  # cp1252 by default


def test_a_name_without_equals_is_a_field_with_an_empty_value():
    assert decode_pairs(b"a&b=1") == [("a", ""), ("b", "1")]


def test_parse_body_reads_table_action_and_fields():
    change = parse_body(b"web_sync_table_name=Loads&web_sync_action=%20Update%20&id=7&Osd=Y")
    assert (change.table, change.action, change.raw_action) == ("loads", "update", " Update ")
    assert change.fields == {"id": "7", "Osd": "Y"}


def test_unknown_action_keeps_the_table_for_the_journal():
    with pytest.raises(UnknownAction) as error:
        parse_body(b"web_sync_table_name=loads&web_sync_action=merge&id=7")
    assert error.value.table == "loads" and error.value.action == "merge"


def test_field_count_over_the_limit_is_too_large():
    body = b"web_sync_table_name=t&web_sync_action=create&" + b"&".join(
        b"f%d=1" % i for i in range(5)
    )
    with pytest.raises(RequestTooLarge):
        parse_body(body, max_fields=4)


@pytest.mark.parametrize("body", [b"a=%", b"a=%g0", b"%zz=1", b"a=%00", b"a\x00=1"])
def test_broken_escapes_and_nul_are_malformed(body):
    with pytest.raises(MalformedRequest):
        decode_pairs(body)


@pytest.mark.parametrize(
    "body",
    [
        b"web_sync_table_name=notes&web_sync_action=create&id=1&Web_Sync_Action=delete",
        b"web_sync_table_name=notes&web_sync_action=create&id=1&WEB_SYNC_TABLE_NAME=loads",
    ],
    ids=["action", "table"],
)
def test_a_case_variant_of_table_or_action_is_the_parameter_sent_twice(body):
    """Not a data column named web_sync_action beside an action that says otherwise."""
    with pytest.raises(MalformedRequest, match="more than once"):
        parse_body(body)
