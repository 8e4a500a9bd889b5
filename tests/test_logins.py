"""Logins at the Live Sync edge: failure limits per address, fair turns, equal failures.

The attacker's requests come from 127.0.0.2 (any 127.x address is loopback on Linux), so
the service sees two addresses without a proxy in between.
"""

from __future__ import annotations

import select
import threading
from urllib.parse import urlencode

import httpx
import pytest
from argon2 import PasswordHasher

from aljex_sync import login_failures
from aljex_sync.credentials import PasswordCheck
from aljex_sync.settings import address_group

from .support import TEST_PASSWORD, RunningService, make_settings, open_from, raw_post, read_all

ATTACKER = "127.0.0.2"
BODY = urlencode({"web_sync_table_name": "notes", "web_sync_action": "create", "id": "1"})
# A cheap argon2 hash: the number and order of the checks matter here, not their cost.
CHEAP_HASH = PasswordHasher(time_cost=1, memory_cost=4096, parallelism=1).hash(TEST_PASSWORD)
# One that takes long enough to see who waits for whom (tens of ms, not the default's 100s).
SLOW_HASH = PasswordHasher(time_cost=2, memory_cost=32768, parallelism=1).hash(TEST_PASSWORD)


def post(
    running: RunningService,
    password: str,
    *,
    source: str = "127.0.0.1",
    user: str = "aljex",
    forwarded_for: str | None = None,
) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if forwarded_for is not None:  # as a trusted proxy says who the client is
        headers["X-Forwarded-For"] = forwarded_for
    with httpx.Client(transport=transport, timeout=60) as client:
        return client.post(running.url, content=BODY, auth=(user, password), headers=headers)


def test_an_address_over_its_failure_limit_gets_429_and_others_still_log_in(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, live={"max_failed_logins": 3})
    with RunningService(settings) as running:
        for _ in range(3):
            assert post(running, "wrong", source=ATTACKER).status_code == 401
        refused = post(running, "wrong", source=ATTACKER)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 300
        assert "too many failed logins" in refused.text
        # Locked is locked: the right password does not open the address either ...
        assert post(running, TEST_PASSWORD, source=ATTACKER).status_code == 429
        # ... but Aljex, from its own address, is not affected.
        assert post(running, TEST_PASSWORD).status_code == 200


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),  # an IPv4 peer of a dual-stack listener
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::1", "::/64"),
        ("unknown", "unknown"),
    ],
)
def test_a_client_is_counted_by_its_ipv4_address_or_its_ipv6_64(address, group):
    assert address_group(address) == group


def test_the_addresses_of_one_ipv6_64_share_one_failure_limit(tmp_path, sqlite_url):
    """An attacker with a /64 has 2**64 addresses: one failure limit for them all, as
    `status` records them; the next /64 is someone else."""
    live = {"max_failed_logins": 3, "trusted_proxies": ["127.0.0.1/32"]}
    settings = make_settings(sqlite_url, tmp_path, live=live)
    with RunningService(settings) as running:
        for n in range(1, 4):
            assert post(running, "wrong", forwarded_for=f"2001:db8:1:2::{n}").status_code == 401
        refused = post(running, "wrong", forwarded_for="2001:db8:1:2:ffff::9")
        assert refused.status_code == 429
        assert post(running, "wrong", forwarded_for="2001:db8:1:3::1").status_code == 401
        assert post(running, TEST_PASSWORD, forwarded_for="2001:db8:1:3::2").status_code == 200
    engine = running.engine()  # the service wrote what it counted as it stopped
    try:
        found = {f.address: f.failures for f in login_failures.recent(engine)}
    finally:
        engine.dispose()
    assert found == {"2001:db8:1:2::/64": 4, "2001:db8:1:3::/64": 1}


def test_failures_age_out_of_the_window(tmp_path, sqlite_url):
    settings = make_settings(
        sqlite_url, tmp_path, live={"max_failed_logins": 1, "failed_login_window": 0.5}
    )
    with RunningService(settings) as running:
        assert post(running, "wrong", source=ATTACKER).status_code == 401
        assert post(running, "wrong", source=ATTACKER).status_code == 429
        threading.Event().wait(0.6)
        assert post(running, TEST_PASSWORD, source=ATTACKER).status_code == 200


def test_parallel_guesses_are_counted_before_they_are_checked(tmp_path, sqlite_url):
    """40 wrong passwords at once, against a limit of 5: only 5 are checked."""
    settings = make_settings(
        sqlite_url,
        tmp_path,
        live={"password": "", "password_hash": CHEAP_HASH, "max_failed_logins": 5},
    )
    with RunningService(settings) as running:
        port = running.service.http_port
        assert port is not None
        flood = [open_from(ATTACKER, port) for _ in range(40)]
        for sock in flood:
            sock.sendall(raw_post(running, BODY, "wrong", close=True))
        statuses = sorted(int(read_all(sock).split()[1]) for sock in flood)
        assert statuses == [401] * 5 + [429] * 35
        assert running.service.live is not None
        assert running.service.live.check.slow_checks == 5


def test_aljex_login_is_not_queued_behind_a_flood_of_wrong_passwords(tmp_path, sqlite_url):
    """Right after a start (nothing known good yet), 40 wrong passwords arrive from one
    address, then Aljex's first request from another: Aljex is answered while most of the
    flood is still waiting for its checks."""
    settings = make_settings(
        sqlite_url,
        tmp_path,
        live={"password": "", "password_hash": SLOW_HASH, "max_failed_logins": 1000},
    )
    with RunningService(settings) as running:
        port = running.service.http_port
        assert port is not None
        flood = [open_from(ATTACKER, port) for _ in range(40)]
        aljex = open_from("127.0.0.1", port)
        for sock in flood:
            sock.sendall(raw_post(running, BODY, "wrong", close=True))
        # Once the first guess is answered, the server has read every one of them.
        select.select(flood, [], [], 60)
        aljex.sendall(raw_post(running, BODY, close=True))
        assert read_all(aljex).split()[1] == b"200"
        answered, _, _ = select.select(flood, [], [], 0)
        assert len(answered) < len(flood) // 2
        assert {read_all(sock).split()[1] for sock in flood} == {b"401"}


def test_a_wrong_user_with_the_right_password_pays_the_full_check():
    """Every failure runs the slow hash; only the right user and password is fast."""
    check = PasswordCheck("aljex", password_hash=CHEAP_HASH)
    assert check.check("aljex", TEST_PASSWORD)
    assert check.slow_checks == 1
    assert check.check("aljex", TEST_PASSWORD)  # remembered: fast
    assert check.slow_checks == 1
    assert check.check_fast("intruder", TEST_PASSWORD) is None
    assert not check.check("intruder", TEST_PASSWORD)
    assert check.slow_checks == 2
    assert not check.check("aljex", "wrong")
    assert check.slow_checks == 3
    assert not check.check("intruder", "wrong")
    assert check.slow_checks == 4


def test_a_wrong_user_with_the_right_password_is_a_counted_failure(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, live={"max_failed_logins": 2})
    with RunningService(settings) as running:
        for _ in range(2):
            assert post(running, TEST_PASSWORD, source=ATTACKER, user="root").status_code == 401
        assert post(running, TEST_PASSWORD, source=ATTACKER).status_code == 429
