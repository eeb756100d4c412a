"""
PROXY protocol headers (``gotaxy.proxy.proxyprotocol``), byte for byte as
HAProxy's specification writes them, and the key on tcp tunnels: the header
comes first in the stream, before anything the visitor sent, carrying the
visitor's address.  ``tests/test_e2e_proxy_protocol.py`` has nginx read them.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from gotaxy.proxy.base import SpecError
from gotaxy.proxy.proxyprotocol import V2_SIGNATURE, header
from gotaxy.proxy.tcp import TCP, TcpSpec

VISITOR = IPv4Address("TCP", "203.0.113.7", 51234)
PUBLIC = IPv4Address("TCP", "192.0.2.1", 443)


def test_v1_is_one_line_of_text():
    assert header("v1", VISITOR, PUBLIC) == b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n"
    assert header("v1", IPv6Address("TCP", "2001:db8::7", 5), IPv6Address("TCP", "2001:db8::1", 443)) == \
        b"PROXY TCP6 2001:db8::7 2001:db8::1 5 443\r\n"


def test_v2_is_the_binary_form():
    data = header("v2", VISITOR, PUBLIC)
    assert data[:12] == V2_SIGNATURE
    assert data[12:14] == b"\x21\x11"  # version 2, PROXY; TCP over IPv4
    assert int.from_bytes(data[14:16], "big") == 12 == len(data) - 16
    assert data[16:20] == bytes([203, 0, 113, 7]) and data[20:24] == bytes([192, 0, 2, 1])
    assert data[24:28] == (51234).to_bytes(2, "big") + (443).to_bytes(2, "big")
    six = header("v2", IPv6Address("TCP", "2001:db8::7", 5), IPv6Address("TCP", "::1", 443))
    assert six[12:16] == b"\x21\x21\x00\x24" and len(six) == 16 + 36


def test_mixed_families_are_both_given_as_ipv6():
    mixed = header("v1", VISITOR, IPv6Address("TCP", "2001:db8::1", 443))
    assert mixed == b"PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 51234 443\r\n"


def test_an_address_that_is_not_ip_says_unknown():
    assert header("v1", UNIXAddress(b"/run/x"), PUBLIC) == b"PROXY UNKNOWN\r\n"
    assert header("v2", UNIXAddress(b"/run/x"), PUBLIC) == V2_SIGNATURE + b"\x20\x00\x00\x00"


def test_the_tcp_key_is_frps_and_checked():
    spec = TCP.parse({"type": "tcp", "localPort": 80, "transport.proxyProtocolVersion": "v2"})
    assert spec == TcpSpec(local_port=80, proxy_protocol_version="v2")
    assert TCP.parse(spec.to_keys()) == spec
    assert "transport.proxyProtocolVersion" not in TcpSpec(local_port=80).to_keys()  # older peers' form unchanged
    with pytest.raises(SpecError, match='must be "v1" or "v2"'):
        TCP.parse({"type": "tcp", "localPort": 80, "transport.proxyProtocolVersion": "v3"})
