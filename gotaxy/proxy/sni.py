# -*- test-case-name: tests.test_proxy_sni -*-
"""
The server name a TLS client asks for (SNI), read from its ClientHello
without decrypting anything, so that the shared HTTPS front can route a
connection before any TLS happens.

What is read (RFC 8446 section 4.1.2, RFC 5246 7.4.1.2, RFC 6066 section 3)::

    record:      type (1) = 22 handshake | version (2) | length (2) | fragment
    handshake:   type (1) = 1 ClientHello | length (3) | body
    ClientHello: version (2) | random (32) | session_id (1 + n)
                 | cipher_suites (2 + n) | compression_methods (1 + n)
                 | extensions (2 + n): type (2) | length (2) | data
    server_name: list length (2) | name_type (1) = 0 host_name | length (2) | name

The handshake message may span several records; their fragments are joined
before the ClientHello is parsed.  Everything is bounded: at most
``MAX_HELLO`` bytes of handshake message (a ClientHello with post-quantum key
shares is about 1,800 bytes; 16 KiB is what one record may carry) and the
caller's time limit (``vhostHTTPSHelloTimeout``).  ``read_client_hello``
returns None while more bytes are needed and raises ``NotAClientHello`` for
anything that is not the start of a TLS handshake (plain HTTP on the HTTPS
port, say), so the front can close the connection at once.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

import attrs

#: Largest ClientHello handshake message accepted, and so the most bytes buffered.
MAX_HELLO = 16384
#: Bytes of records (headers included) that can carry a MAX_HELLO message.
MAX_BUFFERED = MAX_HELLO + 4 + 5 * 4

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_ALPN = 16
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*")


class NotAClientHello(ValueError):
    """The bytes are not a TLS ClientHello (or one larger than ``MAX_HELLO``); the message says which."""


@attrs.frozen
class ClientHello:
    """What routing needs from a ClientHello."""

    #: The host name asked for, lower case, without a trailing dot; None: no SNI.
    server_name: Optional[str]
    #: Application protocols offered (ALPN), in the client's order.
    protocols: Tuple[bytes, ...] = ()


def read_client_hello(data: bytes) -> Optional[ClientHello]:
    """
    Parse the ClientHello at the start of ``data`` (what a client sent so
    far).  None: not all of it has come yet.  NotAClientHello: never will.
    """
    if data and data[0] != _HANDSHAKE:
        raise NotAClientHello("the connection does not start with a TLS handshake")
    message = bytearray()
    offset = 0
    needed: Optional[int] = None
    while needed is None or len(message) < needed:
        if len(data) - offset < 5:
            return None
        kind, major, length = data[offset], data[offset + 1], int.from_bytes(data[offset + 3:offset + 5], "big")
        if kind != _HANDSHAKE or major != 3:
            raise NotAClientHello("the connection does not start with a TLS handshake")
        if length == 0 or length > 16384:
            raise NotAClientHello("a TLS record of impossible length")
        fragment = data[offset + 5:offset + 5 + length]
        message += fragment
        if needed is None and len(message) >= 4:
            needed = _message_length(bytes(message[:4]))
        if len(fragment) < length and (needed is None or len(message) < needed):
            return None
        offset += 5 + length
    return _parse_hello(bytes(message[4:needed]))


def _message_length(header: bytes) -> int:
    if header[0] != _CLIENT_HELLO:
        raise NotAClientHello("the first handshake message is not a ClientHello")
    length = int.from_bytes(header[1:4], "big")
    if length > MAX_HELLO:
        raise NotAClientHello(f"a ClientHello of more than {MAX_HELLO} bytes")
    return 4 + length


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, count: int) -> bytes:
        if self.at + count > len(self.data):
            raise NotAClientHello("a ClientHello cut short")
        chunk = self.data[self.at:self.at + count]
        self.at += count
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int) -> bytes:
        return self.take(self.number(size))

    @property
    def left(self) -> int:
        return len(self.data) - self.at


def _parse_hello(body: bytes) -> ClientHello:
    hello = _Reader(body)
    hello.take(2 + 32)  # legacy_version, random
    hello.vector(1)  # legacy_session_id
    hello.vector(2)  # cipher_suites
    hello.vector(1)  # legacy_compression_methods
    if hello.left == 0:
        return ClientHello(None)  # no extensions at all (an SSL 3-era client)
    extensions = _Reader(hello.vector(2))
    name: Optional[str] = None
    protocols: Tuple[bytes, ...] = ()
    seen = set()
    while extensions.left:
        kind = extensions.number(2)
        data = extensions.vector(2)
        if kind in seen:
            raise NotAClientHello("a ClientHello with an extension twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            name = _server_name(data)
        elif kind == _ALPN:
            protocols = _protocols(data)
    return ClientHello(name, protocols)


def _server_name(data: bytes) -> Optional[str]:
    names = _Reader(_Reader(data).vector(2))
    while names.left:
        kind = names.number(1)
        value = names.vector(2)
        if kind != 0:
            continue
        try:
            text = value.decode("ascii").lower().rstrip(".")
        except UnicodeDecodeError:
            raise NotAClientHello("a server name that is not ASCII (IDNs travel as xn--)") from None
        if len(text) > 253 or not _HOST_NAME.fullmatch(text):
            raise NotAClientHello("a server name that is not a host name")
        return text
    return None


def _protocols(data: bytes) -> Tuple[bytes, ...]:
    offered = _Reader(_Reader(data).vector(2))
    found = []
    while offered.left:
        found.append(offered.vector(1))
    return tuple(found)
