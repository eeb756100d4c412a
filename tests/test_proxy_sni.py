"""
Reading the server name from real ClientHellos (OpenSSL's, made in memory),
whole, a byte at a time and split over records; and refusing what is not
one: plain HTTP, oversized or malformed hellos, in bounded time.
"""

from __future__ import annotations

import random

import pytest
from OpenSSL import SSL

from gotaxy.proxy.sni import MAX_HELLO, ClientHello, NotAClientHello, read_client_hello


def client_hello(name: "bytes | None" = b"wiki.gotaxy.test", alpn: "list[bytes] | None" = None) -> bytes:
    context = SSL.Context(SSL.TLS_METHOD)
    if alpn:
        context.set_alpn_protos(alpn)
    connection = SSL.Connection(context, None)
    if name is not None:
        connection.set_tlsext_host_name(name)
    connection.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        connection.do_handshake()
    return connection.bio_read(65536)


def reframe(hello: bytes, pieces: int) -> bytes:
    """The same handshake message in ``pieces`` records (as a client may send it)."""
    message = hello[5:]
    size = -(-len(message) // pieces)
    out = b""
    for at in range(0, len(message), size):
        chunk = message[at:at + size]
        out += hello[:3] + len(chunk).to_bytes(2, "big") + chunk
    return out


def test_the_name_and_protocols_asked_for_are_read():
    assert read_client_hello(client_hello(b"Wiki.Gotaxy.Test", [b"h2", b"http/1.1"])) == ClientHello(
        "wiki.gotaxy.test", (b"h2", b"http/1.1"))


def test_no_sni_is_no_name():
    assert read_client_hello(client_hello(None)) == ClientHello(None)


def test_a_hello_that_comes_a_byte_at_a_time_is_read_once_whole():
    hello = client_hello()
    for end in range(len(hello)):
        assert read_client_hello(hello[:end]) is None
    assert read_client_hello(hello).server_name == "wiki.gotaxy.test"


def test_a_hello_split_over_records_is_joined():
    hello = reframe(client_hello(), 3)
    for end in range(len(hello)):
        assert read_client_hello(hello[:end]) is None
    assert read_client_hello(hello).server_name == "wiki.gotaxy.test"


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\nHost: wiki\r\n\r\n", b"G", b"\x16\x03\x01\x00\x00",
                                  b"\x17\x03\x03\x00\x10" + b"x" * 16, b"SSH-2.0-OpenSSH\r\n"])
def test_what_is_not_a_tls_handshake_is_refused_at_once(data):
    with pytest.raises(NotAClientHello):
        read_client_hello(data)


def test_a_hello_larger_than_the_limit_is_refused_before_it_has_all_come():
    header = b"\x16\x03\x01\x40\x00" + b"\x01" + (MAX_HELLO + 1).to_bytes(3, "big")
    with pytest.raises(NotAClientHello, match="more than"):
        read_client_hello(header)


def test_garbage_in_a_hello_is_refused_and_never_crashes():
    hello = client_hello(b"wiki.gotaxy.test", [b"h2"])
    rng = random.Random(11)
    for _ in range(3000):
        damaged = bytearray(hello)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(5, len(damaged))] = rng.randrange(256)
        try:
            read_client_hello(bytes(damaged))
        except NotAClientHello:
            pass


def test_a_name_that_is_not_a_host_name_is_refused():
    with pytest.raises(NotAClientHello):
        read_client_hello(client_hello(b"wiki/../etc"))
