# -*- test-case-name: tests.test_proxy_https -*-
"""
The shared HTTPS front on ``vhostHTTPSPort`` (``HttpsFront``), which
``type = "https"`` (``gotaxy.proxy.https``) makes on the server: the
routing by TLS server name its module docstring describes.  A module of its
own because it is the server's side (``PublicConnection``, the live
tunnels), which a client, parsing and connecting https tunnels, never
imports (issue 15, goal 3).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer
from gotaxy.oslimits import listen_backlog
from gotaxy.proxy.address import AddressError, PublicAddress
from gotaxy.proxy.https import (
    REFUSED_BUSY, REFUSED_NO_NAME, REFUSED_NOT_TLS, REFUSED_SLOW, REFUSED_UNKNOWN, REFUSED_UNREACHABLE,
)
from gotaxy.proxy.sitenames import candidates
from gotaxy.proxy.sni import MAX_BUFFERED, ClientHello, NotAClientHello, read_client_hello
from gotaxy.relay import set_no_delay
from gotaxy.server.tunnel import LiveTunnel, PublicConnection

#: The ALPN protocol of an ACME TLS-ALPN-01 validation (RFC 8737; ``gotaxy.tls.acme.ALPN_PROTOCOL``).
ACME_TLS = b"acme-tls/1"

#: Connections that may be sending their ClientHello at once; more are closed at once (each holds
#: at most MAX_BUFFERED bytes for at most vhostHTTPSHelloTimeout seconds).
MAX_PENDING_HELLOS = 1024


class HelloReader(PublicConnection):
    """
    One connection to the HTTPS front: buffers what the visitor sends until
    the ClientHello is whole (or too big, or too slow), then lets the front
    route it.  Once routed to a passthrough tunnel it is that tunnel's
    ``PublicConnection``; handed to TLS termination, its transport belongs
    to the TLS protocol from then on.
    """

    def __init__(self, front: "HttpsFront") -> None:
        super().__init__(None)
        self.front = front
        self._buffer = b""
        self._timer: Any = None
        self.routed = False
        self._pending = False
        #: it came from another node (``gotaxy.server.forward``): never forwarded again
        self.from_peer = False

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        if self.front.pending >= MAX_PENDING_HELLOS:
            self._refuse(REFUSED_BUSY)
            return
        self.front.pending += 1
        self._pending = True
        self._timer = self.front.reactor.callLater(self.front.hello_timeout, self._too_slow)

    def dataReceived(self, data: bytes) -> None:
        if self.routed:
            super().dataReceived(data)
            return
        self._buffer += data
        try:
            hello = read_client_hello(self._buffer)
            if hello is None and len(self._buffer) >= MAX_BUFFERED:
                raise NotAClientHello(f"no whole ClientHello in {MAX_BUFFERED} bytes")
        except NotAClientHello:
            self._refuse(REFUSED_NOT_TLS)
            return
        if hello is None:
            return
        self._stop_timer()
        self.routed = True
        buffered, self._buffer = self._buffer, b""
        self.front.route(self, hello, buffered)

    def hand_over(self, link: Any) -> None:
        """Another node serves its name: what the visitor sends goes to ``link`` (the stream's place)."""
        self.stream = link  # type: ignore[assignment]
        self.transport.pauseProducing()  # until the link is up

    def resume(self, reason: str) -> None:
        self.transport.resumeProducing()

    def forward_failed(self, why: str) -> None:
        self.stream = None
        self.front.refusals[REFUSED_UNREACHABLE] += 1
        self.transport.abortConnection()

    def _too_slow(self) -> None:
        self._timer = None
        if not self.routed:
            self._refuse(REFUSED_SLOW)

    def _refuse(self, reason: str) -> None:
        self._stop_timer()
        self.routed = True
        self._buffer = b""
        self.front.refusals[reason] += 1
        self.transport.abortConnection()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._pending:
            self._pending = False
            self.front.pending -= 1

    def readConnectionLost(self) -> None:
        if not self.routed:
            self._refuse(REFUSED_NOT_TLS)
            return
        super().readConnectionLost()

    def connectionLost(self, reason: Any = None) -> None:
        self._stop_timer()
        super().connectionLost(reason)


class _HelloFactory(ServerFactory):
    noisy = False

    def __init__(self, front: "HttpsFront") -> None:
        self.front = front

    def buildProtocol(self, addr: Any) -> HelloReader:
        return HelloReader(self.front)


class HttpsFront:
    """The listener on ``vhostHTTPSPort`` and its router (see the module docstring)."""

    log = Logger(observer=gotaxy_observer)

    def __init__(self, config: Any, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.port: int = config.https.port
        self.hello_timeout: float = config.https.hello_timeout
        #: passthrough names (exact, or ``*.example.com``) -> the https tunnel
        self.routes: Dict[str, LiveTunnel] = {}
        #: connections closed, by reason (REFUSED_*)
        self.refusals: Counter = Counter()
        #: set by ``terminate_with``: TLS termination for http tunnels
        self.terminator: Any = None
        #: names other nodes serve, and how to hand a connection there (``gotaxy.server.forward.Forwarder``)
        self.forwarder: Any = None
        #: ACME's pending TLS-ALPN-01 answers (a ``gotaxy.tls.acme.ChallengeStore``), set by whoever runs ACME
        self.challenges: Any = None
        #: connections still sending their ClientHello
        self.pending = 0
        self.listening: Any = None
        #: Wraps the listener's factory: the core sets it to check bans and address rules first
        #: (``gotaxy.server.access.GatedFactory``).
        self.gate: Callable[[Any], Any] = lambda factory: factory

    @property
    def serving(self) -> bool:
        return bool(self.port)

    def factory(self) -> ServerFactory:
        return _HelloFactory(self)

    def terminate_with(self, terminator: Any) -> None:
        """
        Terminate TLS for names ``terminator`` has a certificate for: it has
        ``can_serve(name) -> bool`` and ``take_over(connection, name, buffered)``
        (``gotaxy.tls.sites.Termination``).
        """
        self.terminator = terminator

    # -- lifecycle (the core calls these) ---------------------------------------

    def start(self) -> None:
        if not self.port or self.listening is not None:  # (bound already with the other listeners: FrontListeners)
            return
        address = self.config.effective_proxy_bind_addr()
        try:
            self.listening = self.reactor.listenTCP(self.port, self.gate(self.factory()), backlog=listen_backlog(),
                                                    interface=address)
        except CannotListenError as e:
            raise CannotListenError(
                address, self.port,
                f"the HTTPS port for websites (vhostHTTPSPort = {self.port}) cannot be opened: {e.socketError}; "
                "choose a free port (ports below 1024 need CAP_NET_BIND_SERVICE, see docs/websites.md)",
            ) from None
        self.log.info("https tunnels and websites over HTTPS served on port {port}",
                      port=self.listening.getHost().port)

    def stop(self) -> Any:
        listening, self.listening = self.listening, None
        return listening.stopListening() if listening is not None else None

    async def apply(self, config: Any) -> List[Any]:
        """
        A reload (``gotaxy.server.reload``): ``vhostHTTPSHelloTimeout`` for
        connections from now on; a new ``vhostHTTPSPort`` is listened on and
        then the old one closed (visitors' open connections stay; a port
        that cannot be had keeps the old one).  ``vhostHTTPSCertDir`` is read
        at start only.
        """
        from gotaxy.server.reload import applied, needs_restart

        old, new = self.config.https, config.https
        self.config = config
        done: List[Any] = []
        if new.cert_dir != old.cert_dir:
            done.append(needs_restart("vhostHTTPSCertDir", "the certificates in it are loaded at start"))
        if new.hello_timeout != self.hello_timeout:
            self.hello_timeout = new.hello_timeout
            done.append(applied("vhostHTTPSHelloTimeout", f"{new.hello_timeout:g} s, connections from now on"))
        if new.port != self.port:
            previous, old_port = self.listening, self.port
            self.listening, self.port = None, new.port
            try:
                self.start()
            except CannotListenError as e:
                self.listening, self.port = previous, old_port
                return done + [needs_restart("vhostHTTPSPort", f"{e.socketError}; still on port {old_port}")]
            if previous is not None:
                await previous.stopListening()
            done.append(applied("vhostHTTPSPort", f"served on {new.port or 'no port (off)'} now; "
                                                  "open visitor connections stay"))
        return done

    # -- routes -----------------------------------------------------------------

    def add(self, tunnel: LiveTunnel, address: PublicAddress) -> None:
        for host in address.hosts:
            self.routes[host] = tunnel

    def remove(self, tunnel: LiveTunnel) -> None:
        for host in [h for h, t in self.routes.items() if t is tunnel]:
            del self.routes[host]

    def lookup(self, name: str) -> Optional[LiveTunnel]:
        for candidate in candidates(name):
            tunnel = self.routes.get(candidate)
            if tunnel is not None:
                return tunnel
        return None

    def route(self, connection: HelloReader, hello: ClientHello, buffered: bytes) -> None:
        name = hello.server_name
        if name is None:
            connection._refuse(REFUSED_NO_NAME)
            return
        challenges = self.challenges
        if challenges is not None and ACME_TLS in hello.protocols:
            options = challenges.alpn_options(name)
            if options is not None:  # the CA validating a name over TLS-ALPN-01 (gotaxy.tls.acme)
                from gotaxy.tls.acme import answer_tls_alpn

                answer_tls_alpn(connection, options, buffered, self.reactor)
                return
        tunnel = self.lookup(name)
        if tunnel is not None:
            connection.open_stream(tunnel, buffered)
            return
        terminator = self.terminator
        if terminator is not None and terminator.can_serve(name):
            # (For a name another node serves too: the http front forwards its requests there.)
            terminator.take_over(connection, name, buffered)
            return
        forwarder = self.forwarder
        if forwarder is not None and not connection.from_peer:
            # Another node's tunnel serves the name (a passthrough, or a website it has the certificate for).
            route = forwarder.route(name)
            if route is not None:
                forwarder.forward(connection, "sni", "https", route, buffered)
                return
        connection._refuse(REFUSED_UNKNOWN)
