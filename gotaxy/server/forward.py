# -*- test-case-name: tests.test_forward,tests.test_e2e_forward -*-
"""
Website requests across nodes: a visitor connection that reaches this node
for a name whose tunnel is up on another node (of the same database) is
handed to that node over mutual TLS with the cluster CA.

Which node serves a name
========================

``RemoteSites`` reads, every ``REFRESH`` seconds, the ``domain`` claims of
tunnels that are up on another live node with a node-to-node listener
(``Store.forward_routes``: claims, tunnels and nodes in one query), and
routes a name the way ``gotaxy.proxy.vhost.Router`` does: the exact name,
then wildcards from the closest, the longest location, a basic-auth user's
route first.  The fronts ask it only for a name no tunnel of this node
serves, so local tunnels never pay for it, and what it holds is at most
``REFRESH`` seconds old (a tunnel that has just come up on another node
answers 502 here for that long).

One forwarded connection
========================

The unit is the visitor's *connection*, not a request: the connection's
first request for a remote name (``VisitorConnection.hand_over``; for an
``https`` passthrough name, its ClientHello) opens one node-to-node TLS
connection (``NodeLink``) to the owner, which starts with one line::

    GOTAXY-FORWARD 1 <kind> <scheme> <visitor address> <visitor port>\\n

(``kind``: ``http``, a request for the HTTP front, ``scheme`` being what
the visitor spoke to us, or ``sni``, a TLS connection for the HTTPS
front), then every byte the visitor sent from the start of that request,
then the two connections are spliced both ways with backpressure (each
socket is the other's producer, as ``twisted.protocols.portforward``
does), so bodies stream, keep-alive requests follow on the same two
connections without a new handshake, and a WebSocket upgrade is just more
bytes.  The owner (``PeerListener``) hands what follows the line to a
visitor connection of its own front, whose transport says the visitor's
address (``getPeer``): basic auth, address rules, limits,
X-Forwarded-For and the PROXY protocol header see the visitor, as if it had
connected there.  A connection that came from another node is never
forwarded again (no loops); a later request on it for a name the owner
does not serve is answered there (404 or 502).

Limits on what a peer sends: the line is at most ``MAX_LINE`` bytes within
``LINE_TIMEOUT`` seconds, and only a certificate of the cluster CA gets a
handshake at all (``gotaxy.tls.cluster``); the visitor connections it
carries have the front's own limits and timeouts.  Connecting to a node
takes at most ``cluster.connectTimeout`` seconds (TCP and TLS), else the
visitor gets 502.
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
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from gotaxy.logs import gotaxy_observer
from gotaxy.mux import set_no_delay
from gotaxy.oslimits import listen_backlog

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
SCHEMES = (b"http", b"https")


@attrs.frozen
class RemoteRoute:
    path: str
    user: str
    node: str
    address: str


def split_key(key: str) -> Tuple[str, str, str]:
    """A ``domain`` claim key (``alice@wiki.example.com/news``) -> (user, host, path)."""
    user, _, rest = key.rpartition("@")
    host, slash, path = rest.partition("/")
    return user, host, "/" + path if slash else "/"


def candidates(host: str) -> List[str]:
    """``a.b.example.com`` -> itself, ``*.b.example.com``, ``*.example.com`` (frp's order)."""
    names = [host]
    labels = host.split(".")
    while len(labels) >= 3:
        labels = labels[1:]
        names.append("*." + ".".join(labels))
    return names


class RemoteSites:
    """The names other nodes serve (see the module docstring), refreshed from the store."""

    log = Logger(observer=gotaxy_observer)

    def __init__(self) -> None:
        self.hosts: Dict[str, List[RemoteRoute]] = {}

    def load(self, rows: List[Tuple[str, str, str]]) -> None:
        hosts: Dict[str, List[RemoteRoute]] = {}
        for key, node, address in rows[:MAX_ROUTES]:
            user, host, path = split_key(key)
            hosts.setdefault(host, []).append(RemoteRoute(path, user, node, address))
        for routes in hosts.values():
            routes.sort(key=lambda route: len(route.path), reverse=True)
        if len(rows) > MAX_ROUTES:
            self.log.warn("other nodes serve {count} website names; only {most} are forwarded to",
                          count=len(rows), most=MAX_ROUTES)
        self.hosts = hosts

    def lookup(self, host: str, path: str = "/", user: str = "") -> Optional[RemoteRoute]:
        for name in candidates(host):
            routes = self.hosts.get(name)
            if not routes:
                continue
            for wanted in ((user, "") if user else ("",)):
                for route in routes:
                    if route.user == wanted and path.startswith(route.path):
                        return route
        return None


def _address(text: str) -> Tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Forwarder(Service):
    """
    This node's side of forwarding: the routes to other nodes
    (``RemoteSites``, refreshed on the store's thread) and the connections
    to them (``NodeLink``).  The fronts call ``forward`` for a name they do
    not serve; it is the ``forwarder`` of the http and https fronts.
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
        #: visitor connections handed to another node, by node (``/metrics``-style counts)
        self.forwarded: Dict[str, int] = {}
        self.failures: Dict[str, int] = {}

    def startService(self) -> None:
        super().startService()
        self._timer.start(REFRESH, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._timer.running:
            self._timer.stop()
        return self._refreshing

    def refresh(self) -> Any:
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

    def route(self, host: str, path: str = "/", user: str = "") -> Optional[RemoteRoute]:
        return self.sites.lookup(host, path, user)

    def forward(self, visitor: Any, kind: str, scheme: str, route: RemoteRoute, preface: bytes) -> None:
        """
        Hand ``visitor`` (a connection of a front, which stops reading it
        and passes everything on from now: ``hand_over``) to ``route``'s
        node; ``preface``: what it sent that the node must read first.
        """
        peer = visitor.transport.getPeer()
        host = getattr(peer, "host", "") or ""
        line = MAGIC + b"%s %s %s %d\n" % (kind.encode(), scheme.encode(), host.encode("ascii", "replace"),
                                            int(getattr(peer, "port", 0) or 0))
        link = NodeLink(self, visitor, route.node, line + preface)
        visitor.hand_over(link)
        self.forwarded[route.node] = self.forwarded.get(route.node, 0) + 1
        try:
            address, port = _address(route.address)
        except ValueError:
            link.failed(f"node {route.node} advertises no usable address ({route.address!r})")
            return
        endpoint = wrapClientTLS(self.identity.client_options(),
                                 HostnameEndpoint(self.reactor, address, port, timeout=self.connect_timeout))
        link.deadline = self.reactor.callLater(self.connect_timeout, link.too_slow)
        connectProtocol(endpoint, link).addErrback(
            lambda f: link.failed(f"node {route.node} at {route.address} cannot be reached: {f.getErrorMessage()}"))


@implementer(IHandshakeListener)
class NodeLink(Protocol):
    """
    One node-to-node connection carrying one visitor connection (this
    side: the node that forwards).  Until the handshake with the owner is
    done the visitor's socket is not read; then the preface goes, and the
    two connections are spliced.
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
        failures = self.forwarder.failures
        failures[self.node] = failures.get(self.node, 0) + 1
        self.log.warn("a website request could not be forwarded: {why}", why=why)
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
    peer (from the connection's first line).
    """

    #: a front's connection made on it is never forwarded again (also through TLS termination, whose
    #: protocol passes attributes through to its transport)
    from_peer = True

    def __init__(self, transport: Any, peer: Any) -> None:
        self._transport = transport
        self._peer = peer

    def getPeer(self) -> Any:
        return self._peer

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
        if kind == "http":
            front = self.core.fronts.get("http")
            if front is None or not front.serving:
                return None
            visitor = front.protocol_factory(scheme).buildProtocol(peer)
            visitor.from_peer = True
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
