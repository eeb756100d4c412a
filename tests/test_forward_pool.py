"""
Requests forwarded to another node over pooled links (``gotaxy.server.forward``:
``LinkPool``, ``NodeLink``), in memory: a real HTTP front (``gotaxy.proxy.vhost``)
on a ``MemoryReactorClock`` whose visitors are ``StringTransport``s, and links
to the other node that the test completes by hand (the TCP connection, then
the TLS handshake), so that each test sees what the owner is sent and what
the visitor gets: a request per link at a time, the link reused by the next
request and by the next visitor, the pool's limits, an idle link closed.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import h11
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport

from gotaxy.config import VhostSettings
from gotaxy.proxy.vhost import HttpFront
from gotaxy.server import forward
from gotaxy.server.forward import IDLE_TIMEOUT, Forwarder, NodeLink
from gotaxy.testing import server_config

WIKI = "wiki.example.com"  # served by node a
SHOP = "shop.example.com"  # served by node c


class _Endpoint:
    """Where links connect: each attempt waits for the test (``complete``)."""

    def __init__(self) -> None:
        self.attempts: List[Tuple[Any, Deferred]] = []

    def connect(self, factory: Any) -> Deferred:
        d: Deferred = Deferred()
        self.attempts.append((factory, d))
        return d


class Nodes:
    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.front = HttpFront(server_config(vhost=VhostSettings(http_port=8080)), self.reactor)
        self.forwarder = Forwarder(None, None, self.reactor, connect_timeout=5.0)
        self.endpoints: dict = {}
        self.forwarder._endpoint = self._endpoint  # type: ignore[method-assign]
        self.forwarder.sites.load([(WIKI, "a", "10.0.0.1:7100"), (SHOP, "c", "10.0.0.3:7100")])
        self.front.forwarder = self.forwarder

    def _endpoint(self, address: str) -> _Endpoint:
        return self.endpoints.setdefault(address, _Endpoint())

    def attempts(self, address: str = "10.0.0.1:7100") -> int:
        return len(self._endpoint(address).attempts)

    def complete(self, address: str = "10.0.0.1:7100", index: int = -1) -> Tuple[NodeLink, StringTransport]:
        """The link's TCP connection and TLS handshake succeed."""
        factory, d = self._endpoint(address).attempts[index]
        link = factory.buildProtocol(None)
        transport = StringTransport()
        link.makeConnection(transport)
        d.callback(link)
        link.handshakeCompleted()
        return link, transport

    def visitor(self, port: int = 40000) -> Tuple[Any, StringTransport]:
        protocol = self.front.protocol_factory("http").buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "203.0.113.9", port))
        protocol.makeConnection(transport)
        return protocol, transport


def get(host: str, path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def requests_in(data: bytes) -> List[Tuple[bytes, dict]]:
    """What the owner was sent: the first line, then (target, headers) of each request."""
    line, _, rest = data.partition(b"\n")
    assert line == b"GOTAXY-FORWARD 1 requests http"
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(rest)
    out = []
    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            return out
        if isinstance(event, h11.Request):
            out.append((event.target, dict(event.headers)))
        elif isinstance(event, h11.EndOfMessage):
            parser.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            parser.send(h11.EndOfMessage())
            parser.start_next_cycle()


@pytest.fixture
def nodes() -> Nodes:
    return Nodes()


def test_each_request_goes_where_its_name_is_and_the_link_is_kept_for_the_next(nodes: Nodes) -> None:
    visitor, seen = nodes.visitor()
    visitor.dataReceived(get(WIKI, "/one"))
    assert nodes.attempts() == 1
    link, to_a = nodes.complete()
    [(target, headers)] = requests_in(to_a.value())
    assert target == b"/one" and headers[b"host"] == WIKI.encode()
    assert headers[b"x-gotaxy-visitor"] == b"203.0.113.9 40000"  # the owner sees the visitor
    assert b"x-forwarded-for" not in headers  # (the owner adds it, as for its own visitors)
    link.dataReceived(answer(b"from a"))
    assert seen.value().endswith(b"\r\n\r\nfrom a")
    # The next request on the same visitor connection for a name nobody serves: this node's 404.
    seen.clear()
    visitor.dataReceived(get("nobody.example.com"))
    assert seen.value().startswith(b"HTTP/1.1 404 ")
    # Then a again: the same link, no new connection.
    seen.clear()
    to_a.clear()
    visitor.dataReceived(get(WIKI, "/two"))
    assert nodes.attempts() == 1 and [t for t, _ in requests_in(b"GOTAXY-FORWARD 1 requests http\n" + to_a.value())] == [b"/two"]
    link.dataReceived(answer(b"again"))
    assert seen.value().endswith(b"again")
    # Then c: a link to c; a's goes back to its pool, open and idle.
    visitor.dataReceived(get(SHOP, "/three"))
    assert nodes.attempts("10.0.0.3:7100") == 1
    pool_a = nodes.forwarder.pools[("a", "10.0.0.1:7100", "http")]
    assert pool_a.idle == [link] and not to_a.disconnecting
    _, to_c = nodes.complete("10.0.0.3:7100")
    assert [t for t, _ in requests_in(to_c.value())] == [b"/three"]
    assert not seen.disconnecting


def test_a_link_given_back_serves_the_next_visitor_and_closes_after_its_idle_timeout(nodes: Nodes) -> None:
    first, seen = nodes.visitor(40001)
    first.dataReceived(get(WIKI, "/first"))
    link, to_a = nodes.complete()
    link.dataReceived(answer(b"ok"))
    first.connectionLost(None)  # the visitor leaves between requests: the link stays open, idle
    assert not to_a.disconnecting
    to_a.clear()
    second, seen = nodes.visitor(40002)
    second.dataReceived(get(WIKI, "/second"))
    assert nodes.attempts() == 1  # reused: no new connection
    [(target, headers)] = requests_in(b"GOTAXY-FORWARD 1 requests http\n" + to_a.value())
    assert (target, headers[b"x-gotaxy-visitor"]) == (b"/second", b"203.0.113.9 40002")
    link.dataReceived(answer(b"second"))
    assert seen.value().endswith(b"second")
    second.connectionLost(None)
    nodes.reactor.advance(IDLE_TIMEOUT - 1)
    nodes.forwarder.sweep()
    assert not to_a.disconnecting
    nodes.reactor.advance(1)
    nodes.forwarder.sweep()
    assert to_a.disconnecting  # idle for IDLE_TIMEOUT: closed
    link.connectionLost(None)
    assert nodes.forwarder.pools == {} or nodes.forwarder.pools[("a", "10.0.0.1:7100", "http")].open == 0
    third, _ = nodes.visitor(40003)
    third.dataReceived(get(WIKI))
    assert nodes.attempts() == 2  # a new link


def test_a_link_cut_in_the_middle_of_an_answer_is_not_given_back(nodes: Nodes) -> None:
    visitor, seen = nodes.visitor()
    visitor.dataReceived(get(WIKI))
    link, to_a = nodes.complete()
    link.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
    visitor.connectionLost(None)
    assert to_a.disconnecting  # the rest of that answer would reach the next visitor: closed
    pool = nodes.forwarder.pools[("a", "10.0.0.1:7100", "http")]
    assert pool.idle == []


def test_an_idle_link_that_receives_anything_is_closed(nodes: Nodes) -> None:
    visitor, _ = nodes.visitor()
    visitor.dataReceived(get(WIKI))
    link, to_a = nodes.complete()
    link.dataReceived(answer(b"ok"))
    visitor.connectionLost(None)
    assert not to_a.disconnecting
    link.dataReceived(b"HTTP/1.1 200 OK\r\n")  # nobody asked
    assert to_a.disconnecting


def test_the_pool_opens_at_most_max_links_and_keeps_at_most_max_idle(nodes: Nodes, monkeypatch: Any) -> None:
    monkeypatch.setattr(forward, "MAX_LINKS", 2)
    monkeypatch.setattr(forward, "MAX_IDLE", 1)
    visitors = [nodes.visitor(41000 + i) for i in range(3)]
    for protocol, _ in visitors[:2]:
        protocol.dataReceived(get(WIKI))
    assert nodes.attempts() == 2
    protocol, seen = visitors[2]
    protocol.dataReceived(get(WIKI))
    assert nodes.attempts() == 2 and seen.value().startswith(b"HTTP/1.1 503 ")
    links = [nodes.complete(index=i) for i in range(2)]
    for (link, _), (protocol, _) in zip(links, visitors):
        link.dataReceived(answer(b"ok"))
        protocol.connectionLost(None)
    # Both given back: one kept idle, the other closed (MAX_IDLE).
    assert [transport.disconnecting for _, transport in links] == [False, True]


def test_a_node_that_does_not_answer_in_the_connect_timeout_gives_the_visitor_a_502(nodes: Nodes) -> None:
    visitor, seen = nodes.visitor()
    visitor.dataReceived(get(WIKI))
    nodes.reactor.advance(4.9)
    assert seen.value() == b""
    nodes.reactor.advance(0.1)
    page = seen.value()
    assert page.startswith(b"HTTP/1.1 502 ")
    assert b"did not complete its TLS handshake in 5 s" in page
    assert nodes.forwarder.failures == {"a": 1}
    _, d = nodes._endpoint("10.0.0.1:7100").attempts[0]
    assert d.called  # the connection attempt was given up (cancelled)


def test_nothing_is_written_to_a_node_before_its_tls_handshake(nodes: Nodes) -> None:
    visitor, seen = nodes.visitor()
    visitor.dataReceived(get(WIKI))
    factory, d = nodes._endpoint("10.0.0.1:7100").attempts[0]
    link = factory.buildProtocol(None)
    transport = StringTransport()
    link.makeConnection(transport)
    d.callback(link)
    assert transport.value() == b""  # connected, not yet verified: nothing of the visitor's
    link.handshakeCompleted()
    assert transport.value().startswith(b"GOTAXY-FORWARD 1 requests http\nGET / HTTP/1.1\r\n")


def _owner_link(nodes: Nodes) -> Tuple[Any, StringTransport]:
    """The owner's side of a link of requests (``PeerConnection``), its front being ``nodes.front``."""
    from gotaxy.server.forward import PeerConnection, PeerListener

    class Core:
        fronts = {"http": nodes.front}

    listener = PeerListener(None, None, Core(), nodes.reactor)
    connection = PeerConnection(listener)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.2", 5000))
    connection.makeConnection(transport)
    connection.dataReceived(b"GOTAXY-FORWARD 1 requests http\n")
    return connection, transport


def test_the_owner_takes_each_requests_visitor_from_its_header_and_never_forwards_it_again(nodes: Nodes) -> None:
    connection, transport = _owner_link(nodes)
    # WIKI is node a's for this front's forwarder, but a relayed request is answered here: 404, not a loop.
    connection.dataReceived(get(WIKI)[:-2] + b"x-gotaxy-visitor: 198.51.100.4 5555\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404 ")
    assert nodes.attempts() == 0
    assert connection.inner.peer_host == "198.51.100.4"
    assert connection.inner.transport.getPeer().port == 5555
    transport.clear()
    # Keep-alive: the next request names another visitor.
    connection.dataReceived(get(SHOP)[:-2] + b"x-gotaxy-visitor: 2001:db8::7 6666\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404 ") and connection.inner.peer_host == "2001:db8::7"
    transport.clear()
    # The same visitor again, then the first one again: each request is its own visitor's.
    connection.dataReceived(get(SHOP)[:-2] + b"x-gotaxy-visitor: 2001:db8::7 6666\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404 ") and connection.inner.peer_host == "2001:db8::7"
    connection.dataReceived(get(SHOP)[:-2] + b"x-gotaxy-visitor: 198.51.100.4 5555\r\n\r\n")
    assert connection.inner.peer_host == "198.51.100.4" and connection.inner.transport.getPeer().port == 5555
    transport.clear()
    # A request that names no visitor (or two) is refused, and the link closed.
    connection.dataReceived(get(WIKI))
    assert transport.value().startswith(b"HTTP/1.1 400 ") and transport.disconnecting
    connection, transport = _owner_link(nodes)
    connection.dataReceived(get(WIKI)[:-2] + b"x-gotaxy-visitor: 198.51.100.4 1\r\nx-gotaxy-visitor: 10.0.0.9 2\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ")


def test_a_visitor_cannot_name_another_visitor_to_the_owner(nodes: Nodes) -> None:
    visitor, _ = nodes.visitor()
    visitor.dataReceived(get(WIKI)[:-2] + b"x-gotaxy-visitor: 192.0.2.1 1\r\n\r\n")
    _, to_a = nodes.complete()
    [(_, headers)] = requests_in(to_a.value())
    assert headers[b"x-gotaxy-visitor"] == b"203.0.113.9 40000"
    assert to_a.value().count(b"x-gotaxy-visitor") == 1
