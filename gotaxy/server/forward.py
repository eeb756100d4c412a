# -*- test-case-name: tests.test_forward,tests.test_e2e_forward -*-
"""
Website requests across nodes: a request that reaches this node for a name
whose tunnel is up on another node (of the same database) is sent to that
node over mutual TLS with the cluster CA, and its answer comes back the
same way.

Which node serves a name
========================

``RemoteSites`` reads, every ``REFRESH`` seconds, the ``domain`` claims of
tunnels that are up on another live node with a node-to-node listener
(``Store.forward_routes``: claims, tunnels and nodes in one query), and
routes a name with the HTTP front's own lookup
(``gotaxy.proxy.sitenames.RouteTable``: the exact name, then wildcards
from the closest, the longest location, a basic-auth user's route first).
The fronts ask it only for a name no tunnel of this node serves, so local
tunnels never pay for it, and what it holds is at most ``REFRESH`` seconds
old (a tunnel that has just come up on another node answers 502 here for
that long).

The http front: per request, over pooled node links
===================================================

The unit is the *request*, as it is for a local tunnel: each request on a
visitor connection is routed by itself (``VisitorConnection._route``), to
a tunnel of this node, or to the node that serves its name, or refused
here (404), so a keep-alive connection may ask node A, then node C, then
a name of this node.  To the front, a node is what a tunnel is: a
``LinkPool`` (one per peer node and visitor scheme) is the "tunnel" and a
``NodeLink`` (one TLS connection to that node) the "stream" of the
front's ``_Upstream``, which writes the request into it and reads the
answer out of it with the same code as for a tunnel's stream (the short
way for plain GETs, h11 for the rest; streaming bodies, 101 switching a
WebSocket to a splice, the response deadline, 502 when it breaks).

A link starts with one line::

    GOTAXY-FORWARD 1 requests <scheme>\n

(``scheme``: what the visitor spoke to us, http or https), then carries
HTTP/1.1 requests and their answers, keep-alive, one at a time.  Each
request is the visitor's, with the hop's own headers dropped (h11 frames
it again) and one header added, ``x-gotaxy-visitor: <address> <port>``
(``VISITOR_HEADER``; one the visitor sent is dropped).  The owner
(``PeerListener``) hands what follows the line to a visitor connection
of its own front marked ``relayed``, which takes each request's visitor
from that header (a request without exactly one is refused, 400) and
routes, checks and answers it as its own: basic auth, address rules,
limits, X-Forwarded-For and the PROXY protocol header see the visitor.
A relayed connection is never forwarded again (no loops); a name the
owner does not serve is answered there (404 or 502).

Pooling: a visitor connection keeps its link while its requests go to
that node (as it keeps a tunnel's stream), and gives it back to its pool
when its next request goes elsewhere or it closes, if the link is between
requests (else it is closed: a response cut short, an upgraded
connection, the owner's ``Connection: close``).  A pool keeps at most
``MAX_IDLE`` idle links, each at most ``IDLE_TIMEOUT`` seconds (shorter
than the owner's keep-alive wait, so that the owner never closes a link
that this node is handing out), and opens at most ``MAX_LINKS`` at once
(in use, idle or connecting); a request beyond that is answered 503.
What the peer sends is bounded as any website's answer (the front's
header limits, ``vhostHTTPTimeout``, backpressure both ways); an idle
link that receives a byte is closed.  Connecting takes at most
``cluster.connectTimeout`` seconds (TCP and TLS), else the visitor gets
502; nothing of a request is written before the peer's certificate is
checked.

The https front: per connection
===============================

A TLS passthrough name (``type = "https"``) is routed by the ClientHello,
once per connection: the connection (``VisitorLink``) is handed to the
owner whole over a link of its own that starts with::

    GOTAXY-FORWARD 1 sni https <visitor address> <visitor port>\n

then the ClientHello and everything after it, spliced both ways with
backpressure (each socket is the other's producer, as
``twisted.protocols.portforward`` does).  The owner accepts the same
line with kind ``http`` (a whole visitor connection for its HTTP front),
which nodes of an earlier version send.

Limits on what a peer sends: the line is at most ``MAX_LINE`` bytes within
``LINE_TIMEOUT`` seconds, and only a certificate of the cluster CA gets a
handshake at all (``gotaxy.tls.cluster``); the visitor connections it
carries have the front's own limits and timeouts.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Dict, List, Optional, Tuple

import attrs
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from gotaxy.logs import gotaxy_observer
from gotaxy.mux import set_no_delay
from gotaxy.oslimits import listen_backlog
from gotaxy.proxy.sitenames import RouteTable
from gotaxy.wire import CLOSE_ERROR_PREFIX

#: Seconds between reads of which names other nodes serve.
REFRESH = 1.0
#: The first line of a node-to-node connection: at most this many bytes, within this many seconds.
MAX_LINE = 300
LINE_TIMEOUT = 10.0
#: Most names remembered from other nodes (a bigger cluster's rest is not forwarded, and logged).
MAX_ROUTES = 100_000
MAGIC = b"GOTAXY-FORWARD 1 "
#: Bytes a visitor's connection may hold for a node while the link to it is being made (its socket is
#: paused meanwhile: this is at most what it had read already).
MAX_PREFACE = 1 << 20
KINDS = (b"http", b"sni")
REQUESTS = b"requests"
SCHEMES = (b"http", b"https")
#: The header that names a forwarded request's visitor to the owner ("<address> <port>").
VISITOR_HEADER = b"x-gotaxy-visitor"
#: Links one pool keeps idle, how long each, and how many it has open at once (in use, idle, connecting).
MAX_IDLE = 32
IDLE_TIMEOUT = 30.0
MAX_LINKS = 1024
#: Why the front gives a link back between requests (the only reasons a link goes back to its pool).
REUSABLE_AFTER = frozenset({"the next request goes elsewhere", "the visitor closed the connection"})


@attrs.frozen
class RemoteRoute:
    node: str
    address: str


def split_key(key: str) -> Tuple[str, str, str]:
    """A ``domain`` claim key (``alice@wiki.example.com/news``) -> (user, host, path)."""
    user, _, rest = key.rpartition("@")
    host, slash, path = rest.partition("/")
    return user, host, "/" + path if slash else "/"


class RemoteSites:
    """The names other nodes serve (see the module docstring), refreshed from the store."""

    log = Logger(observer=gotaxy_observer)

    def __init__(self) -> None:
        self.table: RouteTable[RemoteRoute] = RouteTable()

    def load(self, rows: List[Tuple[str, str, str]]) -> None:
        table: RouteTable[RemoteRoute] = RouteTable()
        nodes: Dict[Tuple[str, str], RemoteRoute] = {}
        for key, node, address in rows[:MAX_ROUTES]:
            user, host, path = split_key(key)
            route = nodes.get((node, address))
            if route is None:
                route = nodes[(node, address)] = RemoteRoute(node, address)
            table.add(host, path, user, route)
        if len(rows) > MAX_ROUTES:
            self.log.warn("other nodes serve {count} website names; only {most} are forwarded to",
                          count=len(rows), most=MAX_ROUTES)
        self.table = table

    def lookup(self, host: str, path: str = "/", user: str = "") -> Optional[RemoteRoute]:
        return self.table.lookup(host, path, user)


def _address(text: str) -> Tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def visitor_header(peer: Any) -> Tuple[bytes, bytes]:
    """The ``x-gotaxy-visitor`` header that names ``peer`` (a visitor's address) to the owner."""
    host = getattr(peer, "host", "") or ""
    return VISITOR_HEADER, b"%s %d" % (host.encode("ascii", "replace"), int(getattr(peer, "port", 0) or 0))


def read_visitor(headers: List[Tuple[bytes, bytes]]) -> Optional[Any]:
    """The visitor a relayed request names (exactly one ``x-gotaxy-visitor``), as an address; else None."""
    found = [value for name, value in headers if name == VISITOR_HEADER]
    if len(found) != 1:
        return None
    host, _, port = found[0].partition(b" ")
    try:
        address = ipaddress.ip_address(host.decode("ascii"))
        number = int(port)
    except (ValueError, UnicodeDecodeError):
        return None
    if not 0 <= number <= 65535:
        return None
    return (IPv6Address if address.version == 6 else IPv4Address)("TCP", str(address), number)


class Forwarder(Service):
    """
    This node's side of forwarding: the routes to other nodes
    (``RemoteSites``, refreshed on the store's thread), the pools of links
    to them for the http front (``LinkPool``), and whole connections for
    the https front (``VisitorLink``).  It is the ``forwarder`` of the
    http and https fronts.
    """

    log = Logger(observer=gotaxy_observer)
    name = "forward"

    def __init__(self, store: Any, identity: Any, reactor: Any, connect_timeout: float = 5.0) -> None:
        self.store = store
        self.identity = identity
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.sites = RemoteSites()
        self._timer = LoopingCall(self.refresh)
        self._timer.clock = reactor
        self._refreshing: Any = None
        #: (node, address, scheme) -> its links
        self.pools: Dict[Tuple[str, str, str], "LinkPool"] = {}
        #: requests (http) and connections (https) sent to another node, by node
        self.forwarded: Dict[str, int] = {}
        self.failures: Dict[str, int] = {}

    def startService(self) -> None:
        super().startService()
        self._timer.start(REFRESH, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._timer.running:
            self._timer.stop()
        for pool in list(self.pools.values()):
            pool.close_idle()
        return self._refreshing

    def refresh(self) -> Any:
        self.sweep()
        if self._refreshing is not None:
            return None  # the store is slow: the next tick tries again
        d = self.store.call(self.store.store.forward_routes)
        d.addCallbacks(self.sites.load, lambda f: self.log.warn(
            "cannot read which website names other nodes serve: {error}", error=f.getErrorMessage()))

        def done(_: Any) -> None:
            self._refreshing = None

        d.addBoth(done)
        self._refreshing = d
        return None

    def sweep(self) -> None:
        """Close the links idle for over IDLE_TIMEOUT; forget pools with no link."""
        now = self.reactor.seconds()
        for key, pool in list(self.pools.items()):
            pool.sweep(now)
            if pool.open == 0:
                del self.pools[key]

    def route(self, host: str, path: str = "/", user: str = "") -> Optional[RemoteRoute]:
        return self.sites.lookup(host, path, user)

    def pool_for(self, host: str, path: str, user: str, scheme: str) -> Optional["LinkPool"]:
        """The http front's question: the pool of links to the node that serves this request, if another does."""
        route = self.sites.lookup(host, path, user)
        if route is None:
            return None
        key = (route.node, route.address, scheme)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = LinkPool(self, route.node, route.address, scheme)
        return pool

    def _endpoint(self, address: str) -> Any:
        host, port = _address(address)  # (ValueError: the caller says so)
        return wrapClientTLS(self.identity.client_options(),
                             HostnameEndpoint(self.reactor, host, port, timeout=self.connect_timeout))

    def failed(self, node: str, why: str) -> None:
        self.failures[node] = self.failures.get(node, 0) + 1
        self.log.warn("a website request could not be forwarded: {why}", why=why)

    def forward(self, visitor: Any, kind: str, scheme: str, route: RemoteRoute, preface: bytes) -> None:
        """
        Hand ``visitor`` (a connection of the https front, which stops
        reading it and passes everything on from now: ``hand_over``) to
        ``route``'s node; ``preface``: what it sent that the node must read first.
        """
        peer = visitor.transport.getPeer()
        host = getattr(peer, "host", "") or ""
        line = MAGIC + b"%s %s %s %d\n" % (kind.encode(), scheme.encode(), host.encode("ascii", "replace"),
                                            int(getattr(peer, "port", 0) or 0))
        link = VisitorLink(self, visitor, route.node, line + preface)
        visitor.hand_over(link)
        self.forwarded[route.node] = self.forwarded.get(route.node, 0) + 1
        try:
            endpoint = self._endpoint(route.address)
        except ValueError:
            link.failed(f"node {route.node} advertises no usable address ({route.address!r})")
            return
        link.deadline = self.reactor.callLater(self.connect_timeout, link.too_slow)
        connectProtocol(endpoint, link).addErrback(
            lambda f: link.failed(f"node {route.node} at {route.address} cannot be reached: {f.getErrorMessage()}"))


class _NotCounted:
    """A pool's meter and gate: a node's links are not a tunnel's connections (the owner counts those)."""

    gate: Any = None

    def open(self, stream: Any) -> None:
        pass

    def close(self, stream: Any) -> None:
        pass

    def refuse(self) -> None:
        pass

    def opened(self, stream: Any, host: str) -> None:
        pass

    def closed(self, stream: Any) -> None:
        pass


_NOT_COUNTED = _NotCounted()


@attrs.frozen
class _PassOn:
    """A pool's ``spec``: no rules of its own (the owner applies the tunnel's)."""

    response_headers: Tuple[Tuple[str, str], ...] = ()
    request_headers: Tuple[Tuple[str, str], ...] = ()
    host_header_rewrite: Optional[str] = None


_PASS_ON = _PassOn()


class LinkPool:
    """
    The links to one node for visitors of one scheme.  To the http front it
    stands where a ``LiveTunnel`` does (``_Upstream.tunnel``): its
    ``session.open_stream`` hands out a link (``acquire``), its ``spec``
    sets no rules, its meter and gate count nothing.
    """

    meter = _NOT_COUNTED
    gate = _NOT_COUNTED
    spec = _PASS_ON

    def __init__(self, forwarder: Forwarder, node: str, address: str, scheme: str) -> None:
        self.forwarder = forwarder
        self.node = node
        self.address = address
        self.scheme = scheme
        self.line = MAGIC + REQUESTS + b" " + scheme.encode("ascii") + b"\n"
        self.idle: List["NodeLink"] = []
        #: links open: in use, idle or connecting
        self.open = 0
        self.session = self
        self.client = f"node {node}"
        self.name = scheme
        self.key = ("node", f"{node} {scheme}")
        self.streams: Dict[Any, Any] = {}
        self._activity: Dict[Any, Any] = {}
        self.connect_failure: Optional[str] = None

    def limit(self, host: str, spoofable: bool = False) -> Optional[str]:
        return None  # (the owner applies the tunnel's limits to the visitor)

    def open_stream(self, tunnel: str, peer: str) -> Optional["NodeLink"]:
        return self.acquire()

    def acquire(self) -> Optional["NodeLink"]:
        """An idle link (the newest), or a new one; None at MAX_LINKS."""
        idle = self.idle
        while idle:
            link = idle.pop()
            if not link.gone:
                return link
        if self.open >= MAX_LINKS:
            self.forwarder.failed(self.node, f"{MAX_LINKS} links to node {self.node} are open already")
            return None
        link = NodeLink(self)
        self.open += 1
        forwarder = self.forwarder
        try:
            endpoint = forwarder._endpoint(self.address)
        except ValueError:
            link.fail(f"node {self.node} advertises no usable address ({self.address!r})")
            return link
        link.deadline = forwarder.reactor.callLater(forwarder.connect_timeout, link.too_slow)
        link.connecting = connectProtocol(endpoint, link)
        link.connecting.addErrback(link.not_connected)
        return link

    def release(self, link: "NodeLink") -> None:
        """A link between requests, back from the front."""
        if link.gone:
            return
        if len(self.idle) >= MAX_IDLE:
            link.close()
            return
        link.idle_since = self.forwarder.reactor.seconds()
        self.idle.append(link)

    def lost(self, link: "NodeLink") -> None:
        self.open -= 1
        if link in self.idle:
            self.idle.remove(link)

    def sweep(self, now: float) -> None:
        for link in [link for link in self.idle if now - link.idle_since >= IDLE_TIMEOUT]:
            link.close()

    def close_idle(self) -> None:
        for link in list(self.idle):
            link.close()


@implementer(IPushProducer)
class _Pauser:
    """Pauses and resumes one side for the other (a link's TLS transport, or the front's reading of the visitor)."""

    def __init__(self, pause: Any, resume: Any) -> None:
        self.pauseProducing = pause
        self.resumeProducing = resume

    def stopProducing(self) -> None:
        pass


@implementer(IHandshakeListener)
class NodeLink(Protocol):
    """
    One node-to-node TLS connection of a ``LinkPool``, which carries
    requests for the http front (see the module docstring).  To the front
    it is a stream (``write``, ``attach``, ``local_closed``,
    ``close_reason``): the ``_Upstream`` attached to it writes requests
    into it and is written the answers.
    """

    def __init__(self, pool: LinkPool) -> None:
        self.pool = pool
        #: the front's end of it while a visitor connection uses it (None: idle, or not yet taken)
        self.upstream: Any = None
        self.up = False
        self.gone = False
        self.close_reason: Optional[str] = None
        #: why it failed, for the visitor's 502 page
        self.failure: Optional[str] = None
        self.pending: List[bytes] = [pool.line]
        self._pending_size = 0
        self.deadline: Any = None
        self.connecting: Any = None
        self.idle_since = 0.0
        self._reading_paused = False
        # The visitor's socket full: stop reading the link.  The link's buffer full: stop reading the visitor.
        self._reader = _Pauser(self._pause_reading, self._resume_reading)
        self._writer = _Pauser(self._pause_visitor, self._resume_visitor)

    # -- as the front's stream -----------------------------------------------------

    def attach(self, upstream: Any) -> None:
        self.upstream = upstream
        upstream.registerProducer(self._reader, True)
        if self.gone:
            self.pool.forwarder.reactor.callLater(0, self._tell_gone, upstream)
        elif not self.up:
            upstream.pauseProducing()  # the visitor's socket waits for the link (NodeLink.handshakeCompleted)

    def write(self, data: bytes) -> None:
        if self.gone:
            return
        if self.up:
            self.transport.write(data)
            return
        self._pending_size += len(data)
        if self._pending_size > MAX_PREFACE:
            self.fail(f"the visitor sent over {MAX_PREFACE} bytes before node {self.pool.node} answered")
            return
        self.pending.append(data)

    def local_closed(self, reason: str) -> None:
        """The front is done with the link: back to its pool if it is between requests, else closed."""
        upstream, self.upstream = self.upstream, None
        if self.gone:
            return
        if self._reading_paused:
            self._resume_reading()
        if upstream is not None and self.up and reason in REUSABLE_AFTER and _between_requests(upstream):
            self.pool.release(self)
        else:
            self.close()

    # -- the connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        if self.gone:
            self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._stop_deadline()
        if self.gone:
            return
        self.up = True
        self.connecting = None
        pending, self.pending = self.pending, []
        self.transport.write(b"".join(pending))
        self.transport.registerProducer(self._writer, True)
        upstream = self.upstream
        if upstream is not None:
            upstream.resumeProducing()
            if self._reading_paused:
                self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None:
            upstream.write(data)
        elif not self.gone:
            self.close()  # an idle link: nothing was asked

    def connectionLost(self, reason: Any = None) -> None:
        self._stop_deadline()
        if self.gone:
            return
        self.gone = True
        self.pool.lost(self)
        if not self.up:
            message = reason.getErrorMessage() if reason is not None else "closed"
            self._failed(f"node {self.pool.node} refused the connection or its TLS handshake ({message})")
            return
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            if reason is None or reason.check(ConnectionDone):
                upstream.loseConnection()
            else:
                upstream.abortConnection()  # a response cut short must not look complete to the visitor

    def not_connected(self, failure: Any) -> None:
        self.connecting = None
        self.fail(f"node {self.pool.node} at {self.pool.address} cannot be reached: {failure.getErrorMessage()}")

    def too_slow(self) -> None:
        self.deadline = None
        if not self.up and not self.gone:
            self.fail(f"node {self.pool.node} did not complete its TLS handshake in "
                      f"{self.pool.forwarder.connect_timeout:g} s")

    def fail(self, why: str) -> None:
        """The link cannot be made: whoever waits on it gets 502."""
        if self.gone:
            return
        self.gone = True
        self.pool.lost(self)
        self._stop_deadline()
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.cancel()
        if self.transport is not None:
            self.transport.abortConnection()
        self._failed(why)

    def _failed(self, why: str) -> None:
        self.pool.forwarder.failed(self.pool.node, why)
        self.failure = f"the node serving it cannot be reached ({why[:200]})"
        self.close_reason = CLOSE_ERROR_PREFIX + self.failure
        self.pending = []
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abortConnection()

    def _tell_gone(self, upstream: Any) -> None:
        if self.upstream is upstream:
            self.upstream = None
            upstream.abortConnection()

    def close(self) -> None:
        if self.gone:
            return
        self.gone = True
        self.pool.lost(self)
        self._stop_deadline()
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.cancel()
        if self.transport is not None:
            self.transport.loseConnection()

    def _stop_deadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None

    # -- backpressure --------------------------------------------------------------

    def _pause_reading(self) -> None:
        self._reading_paused = True
        if self.up and not self.gone:
            self.transport.pauseProducing()

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self.up and not self.gone:
            self.transport.resumeProducing()

    def _pause_visitor(self) -> None:
        if self.upstream is not None:
            self.upstream.pauseProducing()

    def _resume_visitor(self) -> None:
        if self.upstream is not None:
            self.upstream.resumeProducing()


def _between_requests(upstream: Any) -> bool:
    """The front's end of a link has no exchange under way: another visitor's request may follow on it."""
    import h11

    return (not upstream.switched and not upstream.eof and not upstream.fast and upstream.written is None
            and upstream.h11.our_state is h11.IDLE and upstream.h11.their_state is h11.IDLE)


def relay_headers(headers: List[Tuple[bytes, bytes]], peer: Any, named: Optional[frozenset] = None) -> List[Tuple[bytes, bytes]]:
    """
    A visitor's request headers for the owner: the hop's own dropped (and
    those its Connection header names; ``named``: from the front's short
    way), an upgrade asked for again, the visitor named (``VISITOR_HEADER``).
    Host, Authorization and X-Forwarded-* go as the visitor sent them: the
    owner routes, checks and adds to them.
    """
    from gotaxy.proxy.vhost import _HOP_BY_HOP, _connection_tokens, _header  # (not at import: a server without websites)

    upgrade = None
    chunked = False
    if named is None:
        named = _connection_tokens(headers)
        upgrade = _header(headers, b"upgrade")
        chunked = _header(headers, b"transfer-encoding") is not None
    out = [(name, value) for name, value in headers
           if not (name in _HOP_BY_HOP and name != b"transfer-encoding" or name in named or name == VISITOR_HEADER
                   or chunked and name == b"content-length")]
    out.append(visitor_header(peer))
    if upgrade is not None:
        out.append((b"connection", b"upgrade"))
        out.append((b"upgrade", upgrade))
    return out


@implementer(IHandshakeListener)
class VisitorLink(Protocol):
    """
    One node-to-node connection carrying one visitor connection of the
    https front (this side: the node that forwards).  Until the handshake
    with the owner is done the visitor's socket is not read; then the
    preface goes, and the two connections are spliced.
    """

    log = Logger(observer=gotaxy_observer)

    def __init__(self, forwarder: Forwarder, visitor: Any, node: str, preface: bytes) -> None:
        self.forwarder = forwarder
        self.visitor = visitor
        self.node = node
        self.preface: Optional[bytes] = preface
        self.deadline: Any = None
        self.up = False
        self.done = False

    # -- the node side -------------------------------------------------------

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        if self.done:  # the visitor left while we connected
            self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._stop_deadline()
        if self.done:
            return
        self.up = True
        preface, self.preface = self.preface, None
        self.transport.write(preface or b"")
        visitor = self.visitor.transport
        # Each socket is the other's producer (twisted.protocols.portforward's splice).
        self.transport.registerProducer(visitor, True)
        visitor.registerProducer(self.transport, True)
        self.visitor.resume("forward")

    def dataReceived(self, data: bytes) -> None:
        if not self.done:
            self.visitor.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self._stop_deadline()
        if self.done:
            return
        if not self.up:
            message = reason.getErrorMessage() if reason is not None else "closed"
            self.failed(f"node {self.node} refused the connection or its TLS handshake ({message})")
            return
        self.done = True
        transport = self.visitor.transport
        transport.unregisterProducer()
        if reason is None or reason.check(ConnectionDone):
            transport.loseConnection()
        else:
            transport.abortConnection()  # a response cut short must not look complete to the visitor

    def too_slow(self) -> None:
        self.deadline = None
        if not self.up and not self.done:
            self.failed(f"node {self.node} did not complete its TLS handshake in "
                        f"{self.forwarder.connect_timeout:g} s")
            if self.transport is not None:
                self.transport.abortConnection()

    def failed(self, why: str) -> None:
        self._stop_deadline()
        if self.done:
            return
        self.done = True
        self.forwarder.failed(self.node, why)
        self.visitor.forward_failed(f"the node serving it cannot be reached ({why[:200]})")

    def _stop_deadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None

    # -- the visitor side (the front calls these once it handed the connection over) --

    def write(self, data: bytes) -> None:
        """More from the visitor (before the link is up, what its socket had read already)."""
        if self.done:
            return
        if self.up:
            self.transport.write(data)
        elif len(self.preface or b"") + len(data) > MAX_PREFACE:
            self.failed(f"the visitor sent over {MAX_PREFACE} bytes before the node answered")
        else:
            self.preface = (self.preface or b"") + data

    def write_eof(self) -> None:
        """The visitor will send no more (a passthrough connection's half-close); the answer still comes."""

    def local_closed(self, reason: str = "") -> None:
        """The visitor's connection is gone."""
        self.visitor_lost()

    def visitor_lost(self) -> None:
        if self.done:
            return
        self.done = True
        self._stop_deadline()
        if self.transport is not None:
            self.transport.unregisterProducer()
            self.transport.loseConnection()


# -- the owner's side -------------------------------------------------------------


class _VisitorTransport:
    """
    The transport a front's visitor connection gets on the owner: the
    node-to-node TLS connection, except that it names the visitor as its
    peer (from the connection's first line, or from each request's
    ``x-gotaxy-visitor`` on a link of requests).
    """

    #: a front's connection made on it is never forwarded again (also through TLS termination, whose
    #: protocol passes attributes through to its transport)
    from_peer = True

    def __init__(self, transport: Any, peer: Any) -> None:
        self._transport = transport
        self._peer = peer

    def getPeer(self) -> Any:
        return self._peer

    def set_peer(self, peer: Any) -> None:
        """The visitor of the request being read (a link of requests names one per request)."""
        self._peer = peer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class PeerConnection(Protocol):
    """
    A connection from another node (inside TLS): its first line says what
    it carries and for whom (see the module docstring), the rest goes to a
    visitor connection of this node's front made for it.
    """

    log = Logger(observer=gotaxy_observer)

    def __init__(self, listener: "PeerListener") -> None:
        self.listener = listener
        self._line = b""
        self.inner: Any = None
        self._timer: Any = None

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        self._timer = self.listener.reactor.callLater(LINE_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        if self.inner is None:
            self._refuse("no first line in time")

    def _refuse(self, why: str) -> None:
        self.listener.refused += 1
        self.log.warn("a node-to-node connection from {peer} was refused: {why}",
                      peer=getattr(self.transport.getPeer(), "host", "?"), why=why)
        self.inner = False
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        inner = self.inner
        if inner:
            inner.dataReceived(data)
            return
        if inner is False:
            return
        self._line += data
        end = self._line.find(b"\n")
        if end < 0:
            if len(self._line) > MAX_LINE:
                self._refuse("its first line is too long")
            return
        line, rest = self._line[:end], self._line[end + 1:]
        self._line = b""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if end > MAX_LINE or not line.startswith(MAGIC):
            self._refuse("it is not a forwarded connection")
            return
        parts = line[len(MAGIC):].split(b" ")
        if parts[0] == REQUESTS:
            self._requests(parts, rest)
            return
        try:
            kind, scheme, host, port = parts
            address = ipaddress.ip_address(host.decode("ascii"))
            number = int(port)
            if kind not in KINDS or scheme not in SCHEMES or not 0 <= number <= 65535:
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            self._refuse("its first line cannot be read")
            return
        peer = (IPv6Address if address.version == 6 else IPv4Address)("TCP", str(address), number)
        inner = self.listener.visitor_protocol(kind.decode(), scheme.decode(), peer)
        if inner is None:
            self._refuse(f"this node serves no {kind.decode()} front")
            return
        self.inner = inner
        inner.makeConnection(_VisitorTransport(self.transport, peer))
        if rest:
            inner.dataReceived(rest)

    def _requests(self, parts: List[bytes], rest: bytes) -> None:
        """A link of requests for the HTTP front, each naming its visitor (see the module docstring)."""
        if len(parts) != 2 or parts[1] not in SCHEMES:
            self._refuse("its first line cannot be read")
            return
        scheme = parts[1].decode()
        inner = self.listener.visitor_protocol("requests", scheme, self.transport.getPeer())
        if inner is None:
            self._refuse("this node serves no http front")
            return
        self.inner = inner
        inner.makeConnection(_VisitorTransport(self.transport, self.transport.getPeer()))
        if rest:
            inner.dataReceived(rest)

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.inner:
            self.inner.connectionLost(reason)


class PeerListener(Service):
    """
    ``cluster.bindPort``: where other nodes hand this node the visitor
    connections for its clients' websites, over TLS that takes only a node
    certificate of the cluster CA (``identity.server_options()``).
    """

    log = Logger(observer=gotaxy_observer)
    name = "cluster-listener"

    def __init__(self, settings: Any, identity: Any, core: Any, reactor: Any) -> None:
        self.settings = settings
        self.identity = identity
        self.core = core
        self.reactor = reactor
        self.listening: Any = None
        #: node-to-node connections refused after their handshake (a bad first line)
        self.refused = 0

    def visitor_protocol(self, kind: str, scheme: str, peer: Any) -> Any:
        if kind in ("http", "requests"):
            front = self.core.fronts.get("http")
            if front is None or not front.serving:
                return None
            visitor = front.protocol_factory(scheme).buildProtocol(peer)
            visitor.from_peer = True
            visitor.relayed = kind == "requests"
            return visitor
        front = self.core.fronts.get("https")
        if front is None or not front.serving:
            return None
        hello = front.factory().buildProtocol(peer)
        hello.from_peer = True
        return hello

    def startService(self) -> None:
        super().startService()
        factory = Factory.forProtocol(lambda: PeerConnection(self))
        tls = TLSMemoryBIOFactory(self.identity.server_options(), False, factory)
        settings = self.settings
        try:
            self.listening = self.reactor.listenTCP(settings.bind_port, tls, backlog=listen_backlog(),
                                                    interface=settings.bind_addr)
        except CannotListenError as e:
            raise CannotListenError(
                settings.bind_addr, settings.bind_port,
                f"the node-to-node port (cluster.bindPort = {settings.bind_port}) cannot be opened: "
                f"{e.socketError}; choose a free port",
            ) from None
        self.log.info("node-to-node listener on port {port} (other nodes reach it at {advertised})",
                      port=self.listening.getHost().port, advertised=settings.advertised())

    def stopService(self) -> Any:
        super().stopService()
        listening, self.listening = self.listening, None
        return listening.stopListening() if listening is not None else None


# -- this node's certificate for node-to-node TLS -------------------------------------


@attrs.frozen
class FileIdentity:
    """
    A node's certificate and key and the cluster CA, from files
    (``cluster.tls.*``): both ends present their certificate and accept
    only one the CA issued.  The cluster's own identity
    (``gotaxy.tls.cluster.NodeIdentity``, DATA_DIR/tls) is used when those
    keys are not set and it is there.

    When that CA is the server's own (DATA_DIR/tls/ca.pem, which also signs
    the client certificates of ``gotaxy cert issue``), ``nodes_only`` is set
    and a peer must also show a node's name (``urn:gotaxy:node:``): else a
    client's certificate would open the node-to-node port, whose first line
    names the visitor's address that the address rules then trust.
    """

    certificate: Any
    ca: Any
    nodes_only: bool = False

    def server_options(self) -> Any:
        return self._options()

    def client_options(self, expected: Optional[str] = None) -> Any:
        return self._options()

    def _options(self) -> Any:
        options = self.certificate.options(self.ca)
        if self.nodes_only:
            from OpenSSL import SSL

            options.getContext().set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, peer_is_a_node)
        return options


def peer_is_a_node(connection: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's verdict on the chain, and for the peer's own certificate a node's name as well."""
    from gotaxy.tls.cluster import node_name_of

    if not ok:
        return False
    return depth > 0 or node_name_of(cert.to_cryptography()) is not None


def load_identity(settings: Any, data_dir: str, node: str) -> Any:
    """
    This node's node-to-node identity: ``cluster.tls.*`` files if set, else
    ``gotaxy.tls.cluster``'s in DATA_DIR/tls.  Blocking file reads: at start.

    @raise ValueError: with a sentence that says what is missing.
    """
    from twisted.internet import ssl

    tls_dir = os.path.join(data_dir, "tls")
    cert_file = settings.tls_cert_file
    ca_file = settings.tls_trusted_ca_file
    if cert_file is None:
        try:
            from gotaxy.tls.cluster import load_node_identity  # type: ignore[import-not-found]
        except ImportError:
            cert_file, key_file = os.path.join(tls_dir, "node.pem"), os.path.join(tls_dir, "node.key")
        else:
            if ca_file is None:
                return load_node_identity(tls_dir, node)
            cert_file, key_file = os.path.join(tls_dir, "node.pem"), os.path.join(tls_dir, "node.key")
    else:
        key_file = settings.tls_key_file
    own_ca = os.path.join(tls_dir, "ca.pem")
    ca_file = ca_file or own_ca
    try:
        with open(cert_file, "rb") as f:
            cert_pem = f.read()
        with open(key_file, "rb") as f:
            key_pem = f.read()
        with open(ca_file, "rb") as f:
            ca_pem = f.read()
    except OSError as e:
        raise ValueError(
            f"cluster.bindPort is set but the node-to-node TLS files cannot be read ({e.filename}: {e.strerror}); "
            f"give cluster.tls.certFile, keyFile and trustedCaFile, or the cluster's files in {tls_dir}"
        ) from None
    try:
        with open(own_ca, "rb") as f:
            nodes_only = f.read().strip() == ca_pem.strip()
    except OSError:
        nodes_only = False
    return FileIdentity(ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem), ssl.Certificate.loadPEM(ca_pem),
                        nodes_only)
