"""The listening sockets of Live Sync and the SFTP server, made alike.

``[::]``, IPv6's every address, takes IPv4 clients too, as users expect of "every
address": the socket is made dual-stack (``IPV6_V6ONLY`` off) where the operating system
allows, whatever its default (Linux's ``net.ipv6.bindv6only`` sysctl; the BSDs and
Windows default to IPv6 only), and asyncio's own servers, which asyncssh's uses, always
set it on. An IPv4 client then comes as ``::ffff:a.b.c.d``, which every check takes as
the IPv4 address it is (``settings.plain_ip``). A system that allows no dual-stack socket
(OpenBSD) leaves ``[::]`` to IPv6, with a warning.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

log = logging.getLogger("aljex_sync.service")


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking socket listening on ``host`` and ``port`` (0: a free one), an IPv6
    one taking IPv4 too where it can; OSError if it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
    # protocol says TCP, and without it every keep-alive reply waits 40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            _take_ipv4_too(sock, host)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _take_ipv4_too(sock: socket.socket, host: str) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    except (AttributeError, OSError) as e:
        if _every_address(host):
            log.warning(
                "[%s] takes IPv6 clients only on this system (%s); listen on 0.0.0.0 for"
                " IPv4 clients",
                host,
                getattr(e, "strerror", None) or e,
            )


def _every_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
