"""The admin area over HTTP: off by default, its own credentials, escaping, and replay."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path
from select import select as select_ready
from urllib.parse import urlencode

import httpx
import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from sqlalchemy import select

from aljex_sync import config
from aljex_sync.cli import main
from aljex_sync.errors import ConfigError
from aljex_sync.store.schema import events

from .admin_support import (
    ADMIN_AUTH,
    ADMIN_PASSWORD,
    ADMIN_USER,
    HOSTILE,
    LIVE_AUTH,
    a_day,
    admin_settings,
    count_rows,
    post,
    record,
    scalar,
)
from .support import (
    TEST_PASSWORD,
    RunningService,
    make_settings,
    open_from,
    raw_post,
    read_all,
)

ADMIN_PATHS = ("/admin/", "/admin/events/1", "/metrics")


def base(service: RunningService) -> str:
    return f"http://127.0.0.1:{service.service.http_port}"


def get(service: RunningService, path: str, **kwargs) -> httpx.Response:
    return httpx.get(base(service) + path, timeout=30, **kwargs)


def token_of(page: str) -> str:
    match = re.search(r'name=token value="([0-9a-f]+)"', page)
    assert match, "no replay form on the page"
    return match.group(1)


def press_replay(service: RunningService, data: dict[str, str], **headers: str) -> httpx.Response:
    return httpx.post(
        base(service) + "/admin/replay", data=data, auth=ADMIN_AUTH, headers=headers, timeout=60
    )


@pytest.fixture
def admin(sqlite_url, tmp_path):
    with RunningService(admin_settings(sqlite_url, tmp_path)) as running:
        yield running


def test_admin_area_is_off_unless_admin_credentials_are_set(sqlite_url, tmp_path):
    with RunningService(make_settings(sqlite_url, tmp_path)) as running:
        for path in ADMIN_PATHS:
            assert get(running, path, auth=LIVE_AUTH).status_code == 404, path


def test_admin_config_needs_a_password_with_its_user_name(tmp_path):
    with pytest.raises(ConfigError, match=r"admin\.password_hash"):
        make_settings("sqlite://", tmp_path, admin={"username": "boss"})
    with pytest.raises(ConfigError, match=r"admin\.username"):
        make_settings("sqlite://", tmp_path, admin={"password": "x"})
    with pytest.raises(ConfigError, match=r"admin\.password_hash"):
        make_settings("sqlite://", tmp_path, admin={"username": "boss", "password_hash": "x"})
    assert not make_settings("sqlite://", tmp_path).admin.enabled
    raw = {"live": {"password": "x"}, "morning": {"password": "x"}, "admin": {"username": "boss"}}
    settings = config.parse(raw, env={"ALJEX_SYNC_ADMIN_PASSWORD": "pw"}, base=tmp_path)
    assert settings.admin.enabled and settings.admin.password == "pw"


def test_admin_pages_need_the_admin_credentials_not_aljexs(admin):
    for path in ADMIN_PATHS:
        for auth in (None, LIVE_AUTH, (ADMIN_AUTH[0], "wrong")):
            reply = get(admin, path, auth=auth)
            assert reply.status_code == 401, (path, auth)
            assert reply.headers["www-authenticate"].startswith('Basic realm="aljex-sync admin"')
    assert get(admin, "/admin/", auth=ADMIN_AUTH).status_code == 200
    assert get(admin, "/admin", auth=ADMIN_AUTH, follow_redirects=True).status_code == 200


def test_admin_pages_are_refused_from_an_address_not_allowed(sqlite_url, tmp_path):
    settings = admin_settings(sqlite_url, tmp_path, live={"allow_ips": ["203.0.113.0/24"]})
    with RunningService(settings) as running:
        for path in ADMIN_PATHS:
            assert get(running, path, auth=ADMIN_AUTH).status_code == 403, path


def test_status_page_is_self_contained_html_without_script(admin, tmp_path):
    a_day(admin, tmp_path)
    reply = get(admin, "/admin/", auth=ADMIN_AUTH)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    page = reply.text
    assert "<script" not in page.lower() and "src=" not in page and "<link" not in page
    assert "default-src 'none'" in reply.headers["content-security-policy"]
    assert page.count("<svg") == 2 and 'data-bars="48"' in page
    assert '<tr data-table="employees"><td>employees</td><td class="n rows">3</td>' in page
    assert "key field &#x27;pro_num&#x27; is missing" in page
    assert "row has 3 fields, the header has 2" in page
    # The hostile value is in the journal's latest events only as escaped text, if at all.
    assert HOSTILE not in page


def test_event_page_shows_the_raw_body_escaped(admin, tmp_path):
    a_day(admin, tmp_path)
    engine = admin.engine()
    event_id = scalar(engine, select(events.c.id).where(events.c.action == "update"))
    engine.dispose()
    reply = get(admin, f"/admin/events/{event_id}", auth=ADMIN_AUTH)
    assert reply.status_code == 200
    page = reply.text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;amp;" in page  # the field
    assert "%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E%26amp%3B" in page  # the raw body
    assert get(admin, "/admin/events/999999", auth=ADMIN_AUTH).status_code == 404
    assert get(admin, "/admin/events/x", auth=ADMIN_AUTH).status_code == 404


def test_replay_needs_the_token_of_the_status_page(admin, tmp_path):
    a_day(admin, tmp_path)
    assert press_replay(admin, {"table": "invoicing"}).status_code == 403
    assert press_replay(admin, {"token": "0" * 64}).status_code == 403
    token = token_of(get(admin, "/admin/", auth=ADMIN_AUTH).text)
    cross = press_replay(admin, {"token": token}, **{"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    no_auth = httpx.post(base(admin) + "/admin/replay", data={"token": token}, timeout=30)
    assert no_auth.status_code == 401
    assert get(admin, "/admin/replay", auth=ADMIN_AUTH).status_code == 405


def test_replay_applies_held_records_once_their_cause_is_fixed(database_url, tmp_path):
    with RunningService(admin_settings(database_url, tmp_path)) as running:
        assert "held" in post(running, record("invoicing", "create", id="I1", total="5")).text
        token = token_of(get(running, "/admin/", auth=ADMIN_AUTH).text)
        unchanged = press_replay(running, {"token": token})
        assert unchanged.status_code == 200
        assert '<span data-replayed="held">1</span>' in unchanged.text
    fixed = admin_settings(database_url, tmp_path, tables={"invoicing": {"key": ["id"]}})
    with RunningService(fixed) as running:
        page = get(running, "/admin/", auth=ADMIN_AUTH).text
        assert '<span class="big" id=held-total>1</span>' in page
        reply = press_replay(running, {"token": token_of(page), "table": "invoicing"})
        assert reply.status_code == 200
        assert '<span data-replayed="applied">1</span>' in reply.text
        engine = running.engine()
        assert count_rows(engine, "invoicing") == 1
        engine.dispose()
        after = get(running, "/admin/", auth=ADMIN_AUTH).text
        assert '<span class="big" id=held-total>0</span>' in after
        nothing = press_replay(running, {"token": token_of(page)})
        assert "nothing to replay" in nothing.text


# -- password guessing ----------------------------------------------------------------------
# The guesser's requests come from 127.0.0.2 (loopback on Linux); the operator's and
# Aljex's from 127.0.0.1.

GUESSER = "127.0.0.2"
CHEAP_HASH = PasswordHasher(time_cost=1, memory_cost=4096, parallelism=1).hash(ADMIN_PASSWORD)
SLOW_HASH = PasswordHasher(time_cost=2, memory_cost=32768, parallelism=1).hash(ADMIN_PASSWORD)
LIVE_SLOW_HASH = PasswordHasher(time_cost=2, memory_cost=32768, parallelism=1).hash(TEST_PASSWORD)
NOTE = urlencode(record("notes", "create", id="1"))


def get_from(
    service: RunningService, source: str, auth: tuple[str, str], path: str = "/admin/"
) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=60) as client:
        return client.get(base(service) + path, auth=auth)


def raw_get(path: str, user: str, password: str) -> bytes:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: x", f"Authorization: Basic {token}"]
    return ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode()


def write_admin_config(tmp_path: Path, url: str) -> Path:
    """A config file for `status` to read: admin on, 2 failed logins per address."""
    path = tmp_path / "aljex-sync.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n'
        f'[live]\nlisten = "127.0.0.1:0"\npassword = "{TEST_PASSWORD}"\nmax_failed_logins = 2\n'
        f"[morning]\nenabled = false\n"
        f'[admin]\nusername = "{ADMIN_USER}"\npassword = "{ADMIN_PASSWORD}"\n'
    )
    return path


def status_of(path: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["-c", str(path), "status", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_an_address_over_its_admin_failure_limit_gets_429_even_with_the_right_password(
    sqlite_url, tmp_path
):
    settings = admin_settings(sqlite_url, tmp_path, live={"max_failed_logins": 3})
    with RunningService(settings) as running:
        for path in ("/admin/", "/metrics", "/admin/events/1"):
            assert get_from(running, GUESSER, (ADMIN_USER, "guess")).status_code == 401, path
        refused = get_from(running, GUESSER, (ADMIN_USER, "guess"))
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 300
        assert "too many failed logins" in refused.text
        assert "www-authenticate" not in refused.headers
        # Locked is locked: the right password does not open the address, on any path ...
        for path in ADMIN_PATHS:
            assert get_from(running, GUESSER, ADMIN_AUTH, path).status_code == 429, path
        # ... but the operator, from another address, is let in.
        assert get_from(running, "127.0.0.1", ADMIN_AUTH).status_code == 200


def test_admin_failures_age_out_of_the_window(sqlite_url, tmp_path):
    live = {"max_failed_logins": 1, "failed_login_window": 3.0}  # room for a loaded machine
    with RunningService(admin_settings(sqlite_url, tmp_path, live=live)) as running:
        failed = time.monotonic()
        assert get_from(running, GUESSER, (ADMIN_USER, "guess")).status_code == 401
        assert get_from(running, GUESSER, ADMIN_AUTH).status_code == 429
        threading.Event().wait(failed + 3.2 - time.monotonic())
        assert get_from(running, GUESSER, ADMIN_AUTH).status_code == 200


def test_admin_and_live_sync_failures_are_counted_apart(sqlite_url, tmp_path):
    """Each password has its own limit: admin guesses do not lock an address out of Live
    Sync (Aljex behind the same proxy as a guesser keeps sending), nor the reverse."""
    settings = admin_settings(sqlite_url, tmp_path, live={"max_failed_logins": 2})
    with RunningService(settings) as running:
        for _ in range(2):
            assert get(running, "/admin/", auth=(ADMIN_USER, "guess")).status_code == 401
        assert get(running, "/admin/", auth=ADMIN_AUTH).status_code == 429
        assert post(running, record("notes", "create", id="1")).status_code == 200
        for _ in range(2):
            wrong = httpx.post(running.url, content=b"a=1", auth=("aljex", "x"), timeout=30)
            assert wrong.status_code == 401
        assert post(running, record("notes", "create", id="2")).status_code == 429
        assert get(running, "/admin/", auth=ADMIN_AUTH).status_code == 429  # still locked


def test_parallel_admin_guesses_are_counted_before_they_are_checked(sqlite_url, tmp_path):
    """40 wrong passwords at once against an argon2 hash and a limit of 5: 5 are hashed."""
    admin = {"username": ADMIN_USER, "password_hash": CHEAP_HASH}
    settings = make_settings(sqlite_url, tmp_path, admin=admin, live={"max_failed_logins": 5})
    with RunningService(settings) as running:
        port = running.service.http_port
        assert port is not None
        flood = [open_from(GUESSER, port) for _ in range(40)]
        for sock in flood:
            sock.sendall(raw_get("/admin/", ADMIN_USER, "guess"))
        statuses = sorted(int(read_all(sock).split()[1]) for sock in flood)
        assert statuses == [401] * 5 + [429] * 35


def test_aljex_login_is_not_queued_behind_a_flood_of_admin_guesses(sqlite_url, tmp_path):
    """Right after a start, 40 wrong admin passwords arrive from one address, then Aljex's
    first request from another: both passwords are slow hashes sharing the same few
    slots, and Aljex's goes first, answered while most of the flood still waits."""
    admin = {"username": ADMIN_USER, "password_hash": SLOW_HASH}
    live = {"password": "", "password_hash": LIVE_SLOW_HASH, "max_failed_logins": 1000}
    settings = make_settings(sqlite_url, tmp_path, admin=admin, live=live)
    with RunningService(settings) as running:
        port = running.service.http_port
        assert port is not None
        flood = [open_from(GUESSER, port) for _ in range(40)]
        aljex = open_from("127.0.0.1", port)
        for sock in flood:
            sock.sendall(raw_get("/admin/", ADMIN_USER, "guess"))
        select_ready(flood, [], [], 60)  # the first guess is answered: all were read
        aljex.sendall(raw_post(running, NOTE, close=True))
        assert read_all(aljex).split()[1] == b"200"
        answered, _, _ = select_ready(flood, [], [], 0)
        assert len(answered) < len(flood) // 2
        assert {read_all(sock).split()[1] for sock in flood} == {b"401"}


def test_status_lists_failed_admin_logins_apart_from_live_syncs(database_url, tmp_path):
    path = write_admin_config(tmp_path, database_url)
    with RunningService(config.load(path)) as running:
        for _ in range(3):  # 2 wrong, then one refused for the limit: 3 failures
            get_from(running, GUESSER, ("root", "guess"))
        assert get(running, "/admin/").status_code == 401  # a browser's first try: not one
        assert get(running, "/admin/", auth=ADMIN_AUTH).status_code == 200
        wrong = httpx.post(running.url, content=b"a=1", auth=("aljex", "old"), timeout=30)
        assert wrong.status_code == 401
    # The service wrote what it counted when it stopped (else every 10 seconds).
    out = status_of(path)
    assert "Failed admin logins (last 24 h)" in out
    assert "Failed Live Sync logins (last 24 h)" in out
    admin_part = out[out.index("Failed admin logins") :]
    live_part = out[out.index("Failed Live Sync logins") : out.index("Failed admin logins")]
    assert GUESSER in admin_part and "root" in admin_part and "aljex" not in admin_part
    assert "aljex" in live_part and "root" not in live_part
    found = json.loads(status_of(path, "--json"))
    assert [(f["address"], f["username"], f["failures"]) for f in found["failed_admin_logins"]] == [
        (GUESSER, "root", 3)
    ]
    assert [(f["username"], f["failures"]) for f in found["failed_logins"]] == [("aljex", 1)]
