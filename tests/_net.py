"""Loopback helpers shared by the socket tests: which loopbacks this host has."""

from __future__ import annotations

import socket

import pytest

#: Seconds a socket test waits for a readiness condition before failing.
DEADLINE = 10.0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


#: Whether this host can bind the IPv6 loopback.
HAS_IPV6 = _ipv6_loopback()

#: Skip a test, with a visible reason, on hosts without the IPv6 loopback.
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this host cannot bind the IPv6 loopback ::1")

#: Both loopbacks, as test parameters (the IPv6 one skipped where it is missing).
HOSTS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param("::1", id="ipv6", marks=needs_ipv6),
]
