"""Live Sync end to end: a real server on loopback, a real HTTP client, real databases."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import Engine, select, text

from aljex_sync import live, logs, overview
from aljex_sync.journal import Journal
from aljex_sync.live import refused_lines
from aljex_sync.store.schema import columns_table, events

from .support import TEST_PASSWORD, RunningService, make_settings

AUTH = ("aljex", TEST_PASSWORD)

CREATE_EXAMPLE = [
    ("web_sync_table_name", "employees"),
    ("web_sync_action", "create"),
    ("id", "demo"),
    ("name", "Bill Smith"),
    ("email", "bill.smith@aljex.com"),
    ("team", "4"),
    ("type", "employee"),
    ("phone", "7323578700"),
    ("status", "good"),
]
UPDATE_EXAMPLE = [
    ("web_sync_table_name", "employees"),
    ("web_sync_action", "update"),
    ("id", "demo"),
    ("name", "Bill Smith"),
    ("email", "bsmith@aljex.com"),
    ("team", "4"),
    ("type", "employee"),
    ("phone", "7323578777"),
    ("status", "good"),
]


def post(
    service: RunningService,
    body: bytes | str | list[tuple[str, str]],
    *,
    auth: tuple[str, str] | None = AUTH,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    if isinstance(body, list):
        body = urlencode(body)
    if isinstance(body, str):
        body = body.encode()
    all_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    return httpx.post(service.url, content=body, auth=auth, headers=all_headers, timeout=30)


def record(table: str, action: str, **fields: str) -> list[tuple[str, str]]:
    return [("web_sync_table_name", table), ("web_sync_action", action), *fields.items()]


def rows(engine: Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql))]


def journal(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(events).order_by(events.c.id))]


@pytest.fixture
def engine(service: RunningService) -> Any:
    engine = service.engine()
    yield engine
    engine.dispose()


# -- the document's example ---------------------------------------------------------------


def test_document_example_creates_then_updates_the_employee(service, engine):
    assert post(service, CREATE_EXAMPLE).status_code == 200
    first = rows(engine, "SELECT * FROM employees")
    assert first[0]["email"] == "bill.smith@aljex.com"
    assert post(service, UPDATE_EXAMPLE).status_code == 200
    [row] = rows(engine, "SELECT * FROM employees")
    expected = dict(UPDATE_EXAMPLE[2:])
    assert {k: row[k] for k in expected} == expected
    assert row["_aljex_source"] == "live"
    assert row["_aljex_event_id"] == journal(engine)[-1]["id"]
    assert row["_aljex_synced_at"] is not None


# -- actions ------------------------------------------------------------------------------


def test_update_of_unknown_record_inserts_it(service, engine):
    assert post(service, record("customers", "update", id="C1", name="Acme")).status_code == 200
    assert rows(engine, "SELECT id, name FROM customers") == [{"id": "C1", "name": "Acme"}]


def test_create_of_existing_key_overwrites_it(service, engine):
    post(service, record("customers", "create", id="C1", name="Acme"))
    post(service, record("customers", "create", id="C1", name="Acme Freight"))
    assert rows(engine, "SELECT id, name FROM customers") == [{"id": "C1", "name": "Acme Freight"}]


def test_fields_not_sent_are_left_as_they_are(service, engine):
    post(service, record("customers", "create", id="C1", name="Acme", city="Newark"))
    post(service, record("customers", "update", id="C1", city="Trenton"))
    assert rows(engine, "SELECT name, city FROM customers") == [{"name": "Acme", "city": "Trenton"}]


def test_new_fields_become_new_columns(service, engine):
    post(service, record("customers", "create", id="C1", name="Acme"))
    post(service, record("customers", "update", id="C1", credit_limit="5000"))
    assert rows(engine, "SELECT name, credit_limit FROM customers") == [
        {"name": "Acme", "credit_limit": "5000"}
    ]


def test_empty_string_stays_an_empty_string(service, engine):
    post(service, record("customers", "create", id="C1", name="", city="x"))
    [row] = rows(engine, "SELECT name, city FROM customers")
    assert row["name"] == ""


def test_delete_removes_the_row_and_leaves_a_tombstone(service, engine):
    post(service, record("quotes", "create", id="Q1", amount="10"))
    post(service, record("quotes", "create", id="Q2", amount="20"))
    response = post(service, record("quotes", "delete", id="Q1"))
    assert response.status_code == 200
    assert rows(engine, "SELECT id FROM quotes") == [{"id": "Q2"}]
    assert rows(engine, "SELECT table_name, record_key FROM _aljex_tombstones") == [
        {"table_name": "quotes", "record_key": "Q1"}
    ]


def test_delete_of_unknown_key_succeeds_and_changes_nothing(service, engine):
    post(service, record("quotes", "create", id="Q1", amount="10"))
    assert post(service, record("quotes", "delete", id="nope")).status_code == 200
    assert post(service, record("never_seen", "delete", id="nope")).status_code == 200
    assert rows(engine, "SELECT id FROM quotes") == [{"id": "Q1"}]
    assert [e["status"] for e in journal(engine)] == ["applied", "applied", "applied"]


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("insert", "create"),
        ("deleted", "delete"),
        ("remove", "delete"),
        ("d", "delete"),
        ("  UPDATE ", "update"),
        ("Create", "create"),
    ],
)
def test_action_synonyms_are_accepted_and_the_raw_action_kept(sqlite_service, sent, expected):
    engine = sqlite_service.engine()
    assert post(sqlite_service, record("spots", sent, spot_number="S1")).status_code == 200
    [event] = journal(engine)
    assert (event["action"], event["raw_action"], event["status"]) == (expected, sent, "applied")
    engine.dispose()


def test_unknown_action_gets_422_and_is_journaled_as_rejected(sqlite_service):
    response = post(sqlite_service, record("spots", "upsert", spot_number="S1"))
    assert response.status_code == 422
    assert "unknown action 'upsert'" in response.text
    engine = sqlite_service.engine()
    [event] = journal(engine)
    assert event["status"] == "rejected" and event["table_name"] == "spots"
    engine.dispose()


def test_soft_delete_sets_deleted_at_and_a_new_create_clears_it(tmp_path, database_url):
    settings = make_settings(database_url, tmp_path, tables={"quotes": {"delete": "soft"}})
    with RunningService(settings) as running:
        engine = running.engine()
        post(running, record("quotes", "create", id="Q1", amount="10"))
        post(running, record("quotes", "delete", id="Q1"))
        [row] = rows(engine, "SELECT id, amount, _aljex_deleted_at FROM quotes")
        assert row["amount"] == "10" and row["_aljex_deleted_at"] is not None
        post(running, record("quotes", "create", id="Q1", amount="11"))
        [row] = rows(engine, "SELECT amount, _aljex_deleted_at FROM quotes")
        assert row == {"amount": "11", "_aljex_deleted_at": None}
        engine.dispose()


# -- names from the network ---------------------------------------------------------------


def test_table_and_column_names_are_lowercased(service, engine):
    post(service, record("Loads", "create", id="100", Osd="Y", Tord="N"))
    assert rows(engine, "SELECT id, osd, tord FROM loads") == [
        {"id": "100", "osd": "Y", "tord": "N"}
    ]


def test_unsafe_field_names_are_mapped_and_recorded(service, engine):
    long_name = "a" * 70
    fields = {
        "id": "1",
        "xmin": "x",
        "select": "s",
        "Pro#": "p",
        long_name: "long",
        "_aljex_source": "spoof",
        "9lives": "cat",
    }
    assert post(service, record("odd", "create", **fields)).status_code == 200
    with engine.connect() as conn:
        mapping = {
            r.field_name: r.column_name
            for r in conn.execute(select(columns_table).where(columns_table.c.table_name == "odd"))
        }
    assert set(mapping) == set(fields)
    for field in ("xmin", "select", "Pro#", long_name, "_aljex_source", "9lives"):
        assert mapping[field] != field.lower()
        assert len(mapping[field]) <= 63
    [row] = rows(engine, "SELECT * FROM odd")
    assert {f: row[mapping[f]] for f in fields} == fields
    assert row["_aljex_source"] == "live"


@pytest.mark.parametrize(
    "table",
    [
        "1loads",
        "lo-ads",
        "loads;drop",
        "_aljex_events",
        "sqlite_master",
        "x" * 64,
        "",
        " ",
        "lo ads",
        "ünicode",
    ],
)
def test_invalid_table_names_get_400(sqlite_service, table):
    response = post(sqlite_service, record(table, "create", id="1"))
    assert response.status_code == 400
    assert "table name" in response.text


def test_missing_table_or_action_gets_400(sqlite_service):
    assert post(sqlite_service, [("web_sync_action", "create"), ("id", "1")]).status_code == 400
    assert post(sqlite_service, [("web_sync_table_name", "loads"), ("id", "1")]).status_code == 400
    assert post(sqlite_service, record("loads", "", id="1")).status_code == 400


# -- encoding -----------------------------------------------------------------------------


def test_plus_is_a_space_and_percent_2b_a_plus_and_crlf_is_kept(sqlite_service):
    body = (
        "web_sync_table_name=notes&web_sync_action=create&id=1&text=a+b%2Bc%26d%3De%25f%0D%0Ag%0Ah"
    )
    assert post(sqlite_service, body).status_code == 200
    engine = sqlite_service.engine()
    assert rows(engine, "SELECT text FROM notes") == [{"text": "a b+c&d=e%f\r\ng\nh"}]
    engine.dispose()


def test_missing_content_type_is_read_as_form(sqlite_service):
    body = urlencode(record("notes", "create", id="1", text="x")).encode()
    response = httpx.post(sqlite_service.url, content=body, auth=AUTH, timeout=10)
    assert "content-type" not in response.request.headers
    assert response.status_code == 200


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data; boundary=x", "application/json", "text/plain", "application/xml"],
)
def test_other_content_types_get_415(sqlite_service, content_type):
    body = urlencode(record("notes", "create", id="1")).encode()
    response = post(sqlite_service, body, headers={"Content-Type": content_type})
    assert response.status_code == 415
    engine = sqlite_service.engine()
    [event] = journal(engine)
    assert event["status"] == "rejected" and event["body"] == body
    engine.dispose()


def test_content_type_with_charset_parameter_is_accepted(sqlite_service):
    body = urlencode(record("notes", "create", id="1")).encode()
    headers = {"Content-Type": "Application/X-WWW-Form-Urlencoded; charset=UTF-8"}
    assert post(sqlite_service, body, headers=headers).status_code == 200


def test_cp1252_value_is_decoded_and_utf8_value_too(sqlite_service):
    body = b"web_sync_table_name=carriers&web_sync_action=create&id=1&name=Caf%E9+L%F3gica"
    assert post(sqlite_service, body).status_code == 200
    body = b"web_sync_table_name=carriers&web_sync_action=create&id=2&name=Caf%C3%A9"
    assert post(sqlite_service, body).status_code == 200
    engine = sqlite_service.engine()
    assert rows(engine, "SELECT name FROM carriers ORDER BY id") == [
        {"name": "Café Lógica"},
        {"name": "Café"},
    ]
    engine.dispose()


def test_bytes_the_legacy_charset_leaves_undefined_read_as_latin1_never_fffd(sqlite_service):
    body = b"web_sync_table_name=carriers&web_sync_action=create&id=1&name=%81%8D"
    assert post(sqlite_service, body).status_code == 200
    engine = sqlite_service.engine()
    assert rows(engine, "SELECT name FROM carriers") == [{"name": "\x81\x8d"}]
    [event] = journal(engine)
    assert event["body"] == body and event["status"] == "applied"
    assert "1 name(s) or value(s) were not all UTF-8" in event["warnings"]
    engine.dispose()


def test_a_value_mixing_utf8_and_a_cp1252_byte_keeps_both(service, engine):
    body = b"web_sync_table_name=carriers&web_sync_action=create&id=1&name=caf%C3%A9%FF&city=x%E9"
    assert post(service, body).status_code == 200
    assert rows(engine, "SELECT name, city FROM carriers") == [
        {"name": "caf\u00e9\u00ff", "city": "x\u00e9"}
    ]
    assert "2 name(s) or value(s) were not all UTF-8" in journal(engine)[0]["warnings"]


def test_field_names_are_case_insensitive_and_the_last_variant_wins(service, engine):
    assert post(service, record("loads", "create", id="1", Osd="first")).status_code == 200
    assert post(service, record("loads", "update", id="1", OSD="second")).status_code == 200
    body = urlencode([*record("loads", "update", id="1", osd="third"), ("Osd", "fourth")])
    assert post(service, body).status_code == 200
    assert rows(engine, "SELECT osd FROM loads") == [{"osd": "fourth"}]
    with engine.connect() as conn:
        mapping = conn.execute(
            select(columns_table.c.field_name, columns_table.c.column_name).where(
                columns_table.c.table_name == "loads"
            )
        ).all()
    assert sorted(mapping) == [("Osd", "osd"), ("id", "id")]
    assert "'Osd' was also sent as 'osd'" in journal(engine)[-1]["warnings"]


@pytest.mark.parametrize("param", ["web_sync_table_name", "web_sync_action"])
def test_table_or_action_sent_twice_gets_400(sqlite_service, param):
    body = urlencode([*record("loads", "create", id="1"), (param, "create")])
    response = post(sqlite_service, body)
    assert response.status_code == 400
    assert "more than once" in response.text


@pytest.mark.parametrize(
    "body",
    [
        b"web_sync_table_name=a&web_sync_action=create&id=1&x=%zz",
        b"web_sync_table_name=a&web_sync_action=create&id=1&x=%4",
        b"web_sync_table_name=a&web_sync_action=create&id=1&x=a%00b",
        b"web_sync_table_name=a&web_sync_action=create&id=1&x=a\x00b",
    ],
    ids=["bad-escape", "short-escape", "escaped-nul", "raw-nul"],
)
def test_broken_encoding_and_nul_bytes_get_400(sqlite_service, body):
    assert post(sqlite_service, body).status_code == 400


def test_a_field_sent_twice_keeps_the_last_value_with_a_warning(sqlite_service):
    body = urlencode([*record("notes", "create", id="1", text="first"), ("text", "second")])
    assert post(sqlite_service, body).status_code == 200
    engine = sqlite_service.engine()
    assert rows(engine, "SELECT text FROM notes") == [{"text": "second"}]
    assert "more than once" in journal(engine)[0]["warnings"]
    engine.dispose()


# -- access -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [None, ("aljex", "wrong"), ("other", TEST_PASSWORD), ("", "")],
    ids=["none", "wrong-password", "wrong-user", "empty"],
)
def test_wrong_or_missing_credentials_get_401_and_nothing_is_written(sqlite_service, auth):
    response = post(sqlite_service, record("notes", "create", id="1"), auth=auth)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    engine = sqlite_service.engine()
    assert journal(engine) == []
    engine.dispose()


def test_password_hash_in_config_is_accepted(tmp_path, sqlite_url):
    from aljex_sync.credentials import hash_password

    settings = make_settings(
        sqlite_url, tmp_path, live={"password": "", "password_hash": hash_password("h4sh-pw")}
    )
    with RunningService(settings) as running:
        assert (
            post(running, record("notes", "create", id="1"), auth=("aljex", "h4sh-pw")).status_code
            == 200
        )
        assert (
            post(running, record("notes", "create", id="1"), auth=("aljex", "nope")).status_code
            == 401
        )
        assert (
            post(running, record("notes", "create", id="2"), auth=("aljex", "h4sh-pw")).status_code
            == 200
        )


def test_source_outside_allow_ips_gets_403_before_auth(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, live={"allow_ips": ["10.0.0.0/8"]})
    with RunningService(settings) as running:
        response = post(running, record("notes", "create", id="1"), auth=None)
        assert response.status_code == 403


def test_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path, sqlite_url):
    settings = make_settings(
        sqlite_url,
        tmp_path,
        live={"allow_ips": ["203.0.113.7/32"], "trusted_proxies": ["127.0.0.1/32"]},
    )
    with RunningService(settings) as running:
        ok = post(
            running, record("notes", "create", id="1"), headers={"X-Forwarded-For": "203.0.113.7"}
        )
        assert ok.status_code == 200
        spoofed = post(
            running,
            record("notes", "create", id="2"),
            headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.1"},
        )
        assert spoofed.status_code == 403
    untrusting = make_settings(sqlite_url, tmp_path, live={"allow_ips": ["203.0.113.7/32"]})
    with RunningService(untrusting) as running:
        response = post(
            running, record("notes", "create", id="3"), headers={"X-Forwarded-For": "203.0.113.7"}
        )
        assert response.status_code == 403


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_methods_other_than_post_get_405(sqlite_service, method):
    response = httpx.request(method, sqlite_service.url, auth=AUTH, timeout=10)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_a_post_to_a_wrong_path_gets_404_is_journaled_and_shows_in_status(sqlite_service, caplog):
    """Aljex given a wrong URL: nothing is applied, the log says where to post, `status`
    shows it, and its records can be replayed once the URL is fixed."""
    wrong = sqlite_service.url.replace("/aljex/sync", "/aljex/sync-x")
    scanned = sqlite_service.url.replace("/aljex/sync", "/wp-login.php")
    reason = "not found: '/aljex/sync-x' is not the Live Sync path '/aljex/sync'"
    body = urlencode(record("notes", "create", id="1"))
    with caplog.at_level("INFO", logger="aljex_sync.live"):
        response = httpx.post(wrong, content=body, auth=AUTH, timeout=10)
        probe = httpx.get(scanned, timeout=10)
    assert (response.status_code, response.text) == (404, reason + "\n")
    assert probe.status_code == 404
    [line] = [r for r in caplog.records if r.name == "aljex_sync.live"]  # none for the GET
    assert line.levelname == "WARNING"
    assert f"404 {reason}" in line.getMessage()
    engine = sqlite_service.engine()
    try:
        [event] = journal(engine)
        assert (event["status"], event["error"], event["body"]) == (
            "rejected",
            reason,
            body.encode(),
        )
        # What it was for, read from its body: `events --table` and `replay --table` find it.
        what = (event["table_name"], event["action"], event["record_key"])
        assert what == ("notes", "create", "1")
        assert (reason, 1) in overview.read(engine).rejected  # what `status` lists
        assert rows(engine, "SELECT name FROM sqlite_master WHERE name = 'notes'") == []
        replayer = Journal(engine, sqlite_service.settings)
        [outcome] = replayer.replay(include_rejected=True)
        assert outcome.status == "applied"
        assert [r["id"] for r in rows(engine, "SELECT id FROM notes")] == ["1"]
    finally:
        engine.dispose()


def test_a_trailing_slash_is_a_wrong_path_not_a_redirect(sqlite_service):
    """No 307 built from the sender's Host header: the same 404, journaled, as any path."""
    slashed = sqlite_service.url + "/"
    body = urlencode(record("notes", "create", id="1"))
    headers = {"Host": "attacker.example"}
    response = httpx.post(slashed, content=body, auth=AUTH, headers=headers, timeout=10)
    assert response.status_code == 404
    assert "location" not in response.headers
    assert "'/aljex/sync/' is not the Live Sync path '/aljex/sync'" in response.text
    engine = sqlite_service.engine()
    try:
        assert [e["status"] for e in journal(engine)] == ["rejected"]
    finally:
        engine.dispose()


def test_a_post_to_a_wrong_path_without_credentials_gets_401_and_is_not_journaled(sqlite_service):
    """A stranger learns nothing of the paths, and cannot fill the journal."""
    wrong = sqlite_service.url.replace("/aljex/sync", "/aljex/sync-x")
    body = urlencode(record("notes", "create", id="1"))
    assert httpx.post(wrong, content=body, timeout=10).status_code == 401
    wrong_password = ("aljex", "not-the-password")
    assert httpx.post(wrong, content=body, auth=wrong_password, timeout=10).status_code == 401
    engine = sqlite_service.engine()
    try:
        assert journal(engine) == []
    finally:
        engine.dispose()


def test_every_request_line_is_logged_however_alike(sqlite_service, caplog):
    """The log's repeat filter holds back errors that repeat, never a request's line:
    watching for WARNING finds every record that did not land."""
    with caplog.at_level("INFO", logger="aljex_sync.live"):
        for _ in range(3):
            assert post(sqlite_service, record("notes", "frobnicate", id="1")).status_code == 422
    lines = [r for r in caplog.records if r.name == "aljex_sync.live"]
    assert [r.levelname for r in lines] == ["WARNING"] * 3
    repeats = logs.RepeatFilter(interval=3600)
    assert all(repeats.filter(r) and repeats.filter(r) for r in lines)  # each let through twice


def test_body_over_the_limit_gets_413_without_reading_the_rest(sqlite_service):
    port = sqlite_service.service.http_port
    credentials = httpx.BasicAuth(*AUTH)._auth_header
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /aljex/sync HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Authorization: " + credentials.encode() + b"\r\n"
            b"Content-Length: 50000000\r\n\r\nweb_sync_table_name=a"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    engine = sqlite_service.engine()
    [event] = journal(engine)
    assert event["status"] == "rejected"
    engine.dispose()


def test_chunked_body_over_the_limit_gets_413(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, live={"max_body_bytes": 1000})

    def chunks():
        yield urlencode(record("notes", "create", id="1")).encode()
        for _ in range(10):
            yield b"&x=" + b"y" * 200

    with RunningService(settings) as running:
        response = httpx.post(running.url, content=chunks(), auth=AUTH, timeout=10)
        assert response.status_code == 413


def test_too_many_fields_get_413(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, live={"max_fields": 10})
    with RunningService(settings) as running:
        fields = {f"f{i}": "v" for i in range(11)}
        assert post(running, record("notes", "create", id="1", **fields)).status_code == 413


# -- the journal --------------------------------------------------------------------------


def test_every_authenticated_request_is_journaled_with_its_raw_body(service, engine):
    bodies = [
        urlencode(record("customers", "create", id="C1", name="A&B")).encode(),
        urlencode(record("customers", "frobnicate", id="C1")).encode(),
        urlencode(record("invoicing", "create", ref="no key")).encode(),
        b"web_sync_table_name=customers&web_sync_action=create&id=C2&x=%zz",
    ]
    codes = [post(service, body).status_code for body in bodies]
    assert codes == [200, 422, 200, 400]
    logged = journal(engine)
    assert [e["body"] for e in logged] == bodies
    assert [e["status"] for e in logged] == ["applied", "rejected", "held", "rejected"]
    assert all(e["remote_addr"] == "127.0.0.1" for e in logged)
    assert logged[0]["record_key"] == "C1" and logged[0]["table_name"] == "customers"


def test_record_without_its_key_is_held_with_200_and_counted(service, engine):
    response = post(service, record("invoicing", "create", ref_num="R1", total="10"))
    assert response.status_code == 200
    assert "held" in response.text and "pro_num" in response.text
    [event] = journal(engine)
    assert event["status"] == "held" and "pro_num" in event["error"]
    assert response.text.startswith(f"held as event {event['id']}: ")


def test_replay_lands_held_records_once_a_key_is_configured(database_url, tmp_path):
    settings = make_settings(database_url, tmp_path)
    with RunningService(settings) as running:
        for i in range(3):
            post(running, record("bills", "create", bill_no=f"B{i}", amount=str(i)))
        post(running, record("bills", "update", bill_no="B1", amount="11"))
    keyed = make_settings(database_url, tmp_path, tables={"bills": {"key": ["bill_no"]}})
    from aljex_sync.journal import Journal
    from aljex_sync.store.database import open_engine

    journal_ = Journal(open_engine(keyed.database.url), keyed)
    outcomes = list(journal_.replay())
    journal_.close()
    assert [o.status for o in outcomes] == ["applied"] * 4
    engine = open_engine(keyed.database.url)
    assert rows(engine, "SELECT bill_no, amount FROM bills ORDER BY bill_no") == [
        {"bill_no": "B0", "amount": "0"},
        {"bill_no": "B1", "amount": "11"},
        {"bill_no": "B2", "amount": "2"},
    ]
    assert {e["status"] for e in journal(engine)} == {"applied"}
    engine.dispose()


def test_sqlite_commits_are_durable_wal_and_synchronous_full(sqlite_service):
    engine = sqlite_service.service.engine
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_locked_database_gets_503_and_nothing_is_acknowledged(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, database={"timeout": 0.3})
    with RunningService(settings) as running:
        assert post(running, record("notes", "create", id="1")).status_code == 200
        import sqlite3

        blocker = sqlite3.connect(
            settings.database.url.removeprefix("sqlite:///"), isolation_level=None
        )
        blocker.execute("BEGIN EXCLUSIVE")
        response = post(running, record("notes", "create", id="2"))
        assert response.status_code == 503
        assert "nothing was stored" in response.text
        blocker.execute("ROLLBACK")
        blocker.close()
        assert post(running, record("notes", "create", id="3")).status_code == 200
        engine = running.engine()
        assert [r["id"] for r in rows(engine, "SELECT id FROM notes ORDER BY id")] == ["1", "3"]
        assert [e["record_key"] for e in journal(engine)] == ["1", "3"]
        engine.dispose()


def test_concurrent_updates_of_one_key_keep_every_field(service, engine):
    post(service, record("loads", "create", id="L1", status="OPEN"))
    errors: list[int] = []

    def send(i: int) -> None:
        code = post(
            service, record("loads", "update", id="L1", **{f"field_{i}": str(i)})
        ).status_code
        if code != 200:
            errors.append(code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    [row] = rows(engine, "SELECT * FROM loads")
    assert {row[f"field_{i}"] for i in range(16)} == {str(i) for i in range(16)}
    assert row["status"] == "OPEN"


def test_a_400_field_loads_record_lands_on_every_database(service, engine):
    fields = {"id": "1204417", "status": "OPEN", "Osd": "N", "Tord": "Y"}
    for n in range(1, 21):
        fields |= {
            f"ps{n}": "P" if n % 2 else "S",
            f"ps_company_{n}": f"Shipper {n} Inc",
            f"ps_city_{n}": "Elizabeth",
            f"ps_state_{n}": "NJ",
            f"ps_zip_{n}": "07201",
            f"ps_ref_{n}": f"REF{n:04d}",
            f"ps_appt_date_{n}": "2026-09-16",
            f"ps_arrive_date_{n}": "2026-09-17",
        }
    while len(fields) < 400:
        fields[f"extra_field_{len(fields)}"] = f"value {len(fields)}"
    assert post(service, record("loads", "create", **fields)).status_code == 200
    [row] = rows(engine, "SELECT * FROM loads")
    assert row["ps_company_20"] == "Shipper 20 Inc" and row["osd"] == "N"
    assert [e["status"] for e in journal(engine)] == ["applied"]


def test_each_request_is_logged_as_one_line(sqlite_service, caplog):
    with caplog.at_level("INFO", logger="aljex_sync.live"):
        post(sqlite_service, record("notes", "create", id="K1"))
        post(sqlite_service, record("notes", "create", id="K2"), auth=None)
    lines = [r.getMessage() for r in caplog.records if r.name == "aljex_sync.live"]
    assert len(lines) == 2
    assert lines[0].startswith("127.0.0.1 notes create K1 200 applied")
    assert lines[1].startswith("127.0.0.1 - - - 401")
    assert lines[0].endswith("ms")


def test_stopping_drains_in_flight_requests(tmp_path, sqlite_url):
    """A request whose body is still arriving when stop begins is finished and stored."""
    settings = make_settings(sqlite_url, tmp_path)
    running = RunningService(settings).__enter__()
    started = threading.Event()
    result: list[int] = []

    def slow_body():
        yield urlencode(record("notes", "create", id="slow")).encode()
        started.set()
        time.sleep(0.5)
        yield b"&text=late"

    def send() -> None:
        response = httpx.post(running.url, content=slow_body(), auth=AUTH, timeout=30)
        result.append(response.status_code)

    sender = threading.Thread(target=send)
    sender.start()
    assert started.wait(10)
    time.sleep(0.1)
    running.__exit__(None, None, None)
    sender.join()
    assert result == [200]
    from aljex_sync.store.database import open_engine

    engine = open_engine(sqlite_url)
    assert rows(engine, "SELECT id, text FROM notes") == [{"id": "slow", "text": "late"}]
    engine.dispose()


@pytest.fixture
def sqlite_service(tmp_path: Path, sqlite_url: str):
    with RunningService(make_settings(sqlite_url, tmp_path)) as running:
        yield running


def test_what_the_operator_must_act_on_is_logged_at_warning_with_its_reason(sqlite_service, caplog):
    """Applied is INFO; a held record, a refused request and a wrong password are WARNING."""
    assert sqlite_service.service.live is not None  # refusals of the tests before held back:
    sqlite_service.service.live.refused_lines = refused_lines()  # each comes once a minute
    with caplog.at_level("INFO", logger="aljex_sync.live"):
        post(sqlite_service, record("notes", "create", id="K1"))
        post(sqlite_service, record("notes", "create", text="no key"))
        post(sqlite_service, record("notes", "upsert", id="K2"))
        post(sqlite_service, record("notes", "create", id="K3"), auth=("aljex", "wrong"))
        post(sqlite_service, record("notes", "create", id="K4"), auth=None)
    found = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "aljex_sync.live"]
    assert [level for level, _ in found] == ["INFO", "WARNING", "WARNING", "WARNING", "INFO"]
    assert "held: key field 'id' is missing" in found[1][1]
    assert "422 unknown action 'upsert'" in found[2][1]
    assert "401 wrong username or password" in found[3][1]
    assert "401 no credentials" in found[4][1]


def test_a_wrong_password_is_told_apart_from_none_in_the_reply(sqlite_service):
    wrong = post(sqlite_service, record("notes", "create", id="1"), auth=("aljex", "wrong"))
    missing = post(sqlite_service, record("notes", "create", id="1"), auth=None)
    assert (wrong.status_code, wrong.text.strip()) == (401, "wrong username or password")
    assert (missing.status_code, missing.text.strip()) == (401, "username and password required")


def test_a_flood_of_refusals_writes_a_line_a_minute_per_address_and_counts_the_rest(
    sqlite_service, caplog
):
    """Refusals need no password: one line each let a client fill the disk with the log
    (40 GB a day from one). A request let in keeps its own line, however many come."""
    endpoint = sqlite_service.service.live
    assert endpoint is not None
    endpoint.refused_lines = refused_lines()  # none held from the tests before on this service

    async def flush() -> None:
        endpoint.refused_lines.flush()

    with caplog.at_level("INFO", logger="aljex_sync.live"):
        for _ in range(30):
            assert httpx.post(sqlite_service.url, content=b"a=1", timeout=10).status_code == 401
        for n in range(3):
            assert post(sqlite_service, record("notes", "frobnicate", id=str(n))).status_code == 422
        asyncio.run_coroutine_threadsafe(flush(), sqlite_service.loop).result(10)
    lines = [r.getMessage() for r in caplog.records if r.name == "aljex_sync.live"]
    refused = [line for line in lines if " 401 no credentials" in line]
    assert len(refused) == 2, lines
    assert refused[1].endswith("401 no credentials (29 more like it in the last 60 s)")
    assert len([line for line in lines if " 422 " in line]) == 3


def test_refusals_from_one_ipv6_64_write_one_line_a_minute_for_all_its_addresses(
    tmp_path, sqlite_url, caplog
):
    """A client with a /64 turns through 2**64 addresses: one line for them all, then a
    count naming the /64, or it would fill the disk with the log as before."""
    settings = make_settings(sqlite_url, tmp_path, live={"trusted_proxies": ["127.0.0.1/32"]})
    with caplog.at_level("INFO", logger="aljex_sync.live"), RunningService(settings) as running:
        for n in range(1, 11):
            forwarded = {"X-Forwarded-For": f"2001:db8:1:2::{n}"}
            assert post(running, b"a=1", auth=None, headers=forwarded).status_code == 401
        forwarded = {"X-Forwarded-For": "2001:db8:1:3::1"}  # the next /64: someone else
        assert post(running, b"a=1", auth=None, headers=forwarded).status_code == 401
    # What was counted is written as the service stops.
    lines = [r.getMessage() for r in caplog.records if " 401 no credentials" in r.getMessage()]
    assert [line.split(" ")[0] for line in lines] == [
        "2001:db8:1:2::1",
        "2001:db8:1:3::1",
        "2001:db8:1:2::/64",
    ], lines
    assert lines[2].endswith("401 no credentials (9 more like it in the last 60 s)")


def test_refusals_from_more_addresses_than_kept_apart_are_counted_together_and_logged_at_stop(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture, monkeypatch
):
    """An attacker with many addresses (here through a trusted proxy) gets a line at once
    for the first ``MAX_REFUSED_ADDRESSES`` (3 here) and one line for all the others; what
    is counted when the service stops is written as it stops."""
    monkeypatch.setattr(live, "MAX_REFUSED_ADDRESSES", 3)
    settings = make_settings(sqlite_url, tmp_path, live={"trusted_proxies": ["127.0.0.1/32"]})
    with caplog.at_level("INFO", logger="aljex_sync.live"), RunningService(settings) as running:
        for n in range(10):
            for _ in range(2):
                forwarded = {"X-Forwarded-For": f"203.0.113.{n}"}
                reply = post(
                    running, record("notes", "create", id="1"), auth=None, headers=forwarded
                )
                assert reply.status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "aljex_sync.live"]
    refused = [line for line in lines if "401 no credentials" in line]
    assert [line.split(" - ")[0] for line in refused[:3]] == [f"203.0.113.{n}" for n in range(3)]
    assert refused[3:] == [
        *(
            f"203.0.113.{n} - - - 401 no credentials (1 more like it in the last 60 s)"
            for n in range(3)
        ),
        "other addresses - - - 401 no credentials (14 more like it in the last 60 s)",
    ]
