"""X-Forwarded-For: read whole, believed only from trusted proxies, never a non-address."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select

from aljex_sync import config
from aljex_sync.errors import ConfigError
from aljex_sync.live import client_address
from aljex_sync.settings import within
from aljex_sync.store.schema import events

from .support import TEST_PASSWORD, RunningService, make_settings

TRUSTED = (ipaddress.ip_network("127.0.0.1/32"),)
OFF = {"morning": {"enabled": False}}


def post(running: RunningService, key: str, forwarded: list[str]) -> int:
    body = urlencode({"web_sync_table_name": "notes", "web_sync_action": "create", "id": key})
    headers = [("Content-Type", "application/x-www-form-urlencoded")]
    headers += [("X-Forwarded-For", line) for line in forwarded]
    return httpx.post(
        running.url, content=body, auth=("aljex", TEST_PASSWORD), headers=headers, timeout=30
    ).status_code


def sources(running: RunningService) -> list[str]:
    engine = running.engine()
    with engine.connect() as conn:
        found = [r[0] for r in conn.execute(select(events.c.remote_addr).order_by(events.c.id))]
    engine.dispose()
    return found


def test_forwarded_for_sent_as_two_lines_is_read_whole(tmp_path, sqlite_url):
    """The client's own line comes first, the proxy's second: the proxy's is believed."""
    settings = make_settings(
        sqlite_url,
        tmp_path,
        live={"allow_ips": ["203.0.113.7/32"], "trusted_proxies": ["127.0.0.1/32"]},
    )
    with RunningService(settings) as running:
        assert post(running, "1", ["203.0.113.7"]) == 200
        assert post(running, "2", ["203.0.113.7", "198.51.100.1"]) == 403
        assert post(running, "3", ["198.51.100.1", "203.0.113.7"]) == 200
        assert sources(running) == ["203.0.113.7", "203.0.113.7"]


def test_a_hop_that_is_not_an_address_is_never_the_source(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, live={"trusted_proxies": ["127.0.0.1/32"]})
    with RunningService(settings) as running:
        assert post(running, "1", ["203.0.113.7, not-an-address"]) == 200
        assert post(running, "2", ["x" * 500]) == 200
        assert post(running, "3", ["2001:db8::1" + "0" * 300]) == 200
        assert sources(running) == ["127.0.0.1"] * 3


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (["203.0.113.7"], "203.0.113.7"),
        (["203.0.113.7, 127.0.0.1"], "203.0.113.7"),
        (["203.0.113.7", "127.0.0.1"], "203.0.113.7"),
        (["203.0.113.7:4711"], "203.0.113.7"),
        (["[2001:db8::1]:443"], "2001:db8::1"),
        (["2001:DB8::1"], "2001:db8::1"),
        (["<script>"], "127.0.0.1"),
        (["198.51.100.1, 203.0.113.7\nX-Evil: 1"], "127.0.0.1"),
        ([], "127.0.0.1"),
    ],
)
def test_client_address_walks_every_line_and_takes_only_addresses(header, expected):
    assert client_address("127.0.0.1", header, TRUSTED) == expected


def test_forwarded_for_from_an_untrusted_peer_is_ignored():
    assert client_address("192.0.2.1", ["203.0.113.7"], TRUSTED) == "192.0.2.1"


@pytest.mark.parametrize("everyone", ["0.0.0.0/0", "::/0", "10.0.0.0/0"])
def test_trusted_proxies_that_trust_everyone_are_refused(everyone):
    with pytest.raises(ConfigError) as refused:
        config.parse({"live": {"password": "x", "trusted_proxies": ["10.1.2.3", everyone]}, **OFF})
    assert refused.value.key == "live.trusted_proxies"
    assert len(str(refused.value).splitlines()) == 1
    assert "trusts every address" in str(refused.value)


def test_trusted_proxies_that_trust_everyone_are_refused_from_the_environment():
    env = {"ALJEX_SYNC_LIVE_TRUSTED_PROXIES": "::/0"}
    with pytest.raises(ConfigError, match="trusts every address"):
        config.parse({"live": {"password": "x"}, **OFF}, env=env)


def test_an_ipv4_peer_of_a_dual_stack_listener_is_judged_as_the_ipv4_address_it_is():
    """On `listen = "[::]:8080"` IPv4 peers come as ::ffff:a.b.c.d: an IPv4 proxy or allowed
    address never matched, and every client behind the proxy shared its failure limit."""
    proxy = (ipaddress.ip_network("127.0.0.50/32"),)
    assert within("::ffff:127.0.0.50", proxy)
    assert client_address("::ffff:127.0.0.50", ["203.0.113.10"], proxy) == "203.0.113.10"
    assert client_address("::ffff:127.0.0.99", [], proxy) == "127.0.0.99"
    assert client_address("127.0.0.50", ["::ffff:198.51.100.7"], proxy) == "198.51.100.7"
    assert not within("::ffff:127.0.0.51", proxy)
    assert within("2001:db8::1", (ipaddress.ip_network("2001:db8::/32"),))
