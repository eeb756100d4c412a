# -*- test-case-name: tests.test_proxy_protocol -*-
"""
HAProxy's PROXY protocol (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt),
so that a local service behind a ``tcp`` or ``https`` tunnel learns the
visitor's real address: frp's ``transport.proxyProtocolVersion = "v1"`` or
``"v2"`` on the tunnel.

The header is the first bytes of the stream: the server writes it, with the
visitor's address as the source and the public address the visitor reached
as the destination, before anything the visitor sent (for ``https``, before
the ClientHello); the client relays it to the local service like any other
byte.  frp writes it on the client instead; what the local service reads is
the same.  The local service must expect it (nginx: ``listen ...
proxy_protocol;``), or it will take the header for the start of the
visitor's data.

v1 is one text line: ``PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\\r\\n``.
v2 is binary: the 12-byte signature, version 2 and command PROXY (0x21),
the family (0x11 TCP over IPv4, 0x21 TCP over IPv6), the length of the
addresses, then source and destination addresses and ports.  When the two
addresses are of different families (an IPv4 visitor on a dual-stack
socket) both are given as IPv6, IPv4-mapped.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Tuple

VERSIONS = ("v1", "v2")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _addresses(source: Any, destination: Any) -> Tuple[Any, int, Any, int]:
    src = ipaddress.ip_address(source.host.split("%", 1)[0])
    dst = ipaddress.ip_address(destination.host.split("%", 1)[0])
    if src.version != dst.version:
        src = src if src.version == 6 else ipaddress.IPv6Address(f"::ffff:{src}")
        dst = dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")
    return src, source.port, dst, destination.port


def _text(address: Any) -> str:
    mapped = getattr(address, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def header(version: str, source: Any, destination: Any, datagram: bool = False) -> bytes:
    """
    The PROXY header for a TCP connection from ``source`` to
    ``destination`` (Twisted ``IPv4Address``/``IPv6Address``); an address
    that is not IP (a UNIX socket) gives v1's ``UNKNOWN`` or v2's LOCAL.
    ``datagram``: for a UDP datagram (v2 only: families 0x12 and 0x22, put
    ahead of every datagram, as frp does for udp tunnels).
    """
    try:
        src, sport, dst, dport = _addresses(source, destination)
    except (AttributeError, ValueError):
        if version == "v1":
            return b"PROXY UNKNOWN\r\n"
        return V2_SIGNATURE + b"\x20\x00\x00\x00"  # LOCAL, no addresses
    if version == "v1":
        family = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {family} {_text(src)} {_text(dst)} {sport} {dport}\r\n".encode("ascii")
    transport = 2 if datagram else 1  # the low nibble: 1 STREAM, 2 DGRAM
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    family = (0x10 if src.version == 4 else 0x20) | transport
    return V2_SIGNATURE + bytes((0x21, family)) + struct.pack("!H", len(body)) + body


def check_version(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator for ``transport.proxyProtocolVersion``: None, "v1" or "v2"."""
    from gotaxy.proxy.base import SpecError

    if value is not None and value not in VERSIONS:
        raise SpecError(
            f"'transport.proxyProtocolVersion' must be \"v1\" or \"v2\" (or left out for none), got {str(value)[:16]!r}",
            "transport.proxyProtocolVersion",
        )


def _field() -> Any:
    from gotaxy.proxy.fields import SpecField

    return SpecField("transport.proxyProtocolVersion", "choice",
                     "send the visitor's address to the local service first (HAProxy's PROXY protocol; "
                     "the service must expect it)", choices=VERSIONS)


#: The spec field, for the types that offer it (tcp, https).
PROXY_PROTOCOL = _field()
