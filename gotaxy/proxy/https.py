# -*- test-case-name: tests.test_proxy_https -*-
"""
``type = "https"``, and the shared HTTPS front on ``vhostHTTPSPort``.

An ``https`` tunnel is TLS passthrough, as in frp: the private service holds
the certificate, and the server never decrypts anything.  frp's keys:
``customDomains`` (host names; a wildcard ``*.example.com`` allowed),
``subdomain`` (``NAME.subDomainHost``), ``localIP``, ``localPort``.  Each
name is claimed through the claims table like an ``http`` tunnel's (the two
types share one namespace of names: a name is either a website whose TLS the
server terminates, or a passthrough, never both).

``HttpsFront`` is the one listener on ``vhostHTTPSPort``.  For each
connection it reads the ClientHello (``gotaxy.proxy.sni``: bounded to
``MAX_BUFFERED`` bytes and ``vhostHTTPSHelloTimeout`` seconds) and routes by
its server name, exact name first, then wildcards from the closest
(``a.b.example.com``, ``*.b.example.com``, ``*.example.com``), as frp does:

* a name of an ``https`` tunnel: the stream to its client opens with the
  bytes read so far as its preface (``PublicConnection.open_stream``), and
  from then on the connection is a plain splice, as for TCP;
* otherwise, when the server terminates TLS for ``http`` tunnels
  (``terminate_with``: the certificates of ``gotaxy.tls.sites`` and the
  http front's ``protocol_factory("https")``) and holds a certificate for
  the name: the connection is handed to a TLS protocol
  (``twisted.protocols.tls``) wrapped around the http front, which routes
  each decrypted request by its Host header as on the plain port;
* otherwise it is closed: no ClientHello, no server name, or a name nothing
  here serves.  Each refusal is counted by reason (``refusals``), and so
  is a connection beyond ``MAX_PENDING_HELLOS`` still sending its hello.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

import attrs
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from gotaxy.logs import gotaxy_observer
from gotaxy.mux import Stream
from gotaxy.oslimits import listen_backlog
from gotaxy.proxy.address import MAX_HOSTS, AddressError, PublicAddress
from gotaxy.proxy.base import ExposeContext, Exposure, ProxySpec, ProxyType, SpecError, TunnelRefused
from gotaxy.proxy.fields import (
    LOCAL_IP, LOCAL_PORT, SpecField, StreamLimited, check_local_ip, check_port, host_port, parse_keys,
)
from gotaxy.proxy.proxyprotocol import PROXY_PROTOCOL, check_version
from gotaxy.proxy.sitenames import require_a_name, site_hosts
from gotaxy.proxy.sni import MAX_BUFFERED, ClientHello, NotAClientHello, read_client_hello
from gotaxy.proxy.tcp import TCP, TcpSpec
from gotaxy.relay import set_no_delay
from gotaxy.server.tunnel import LiveTunnel, PublicConnection

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

#: The ALPN protocol of an ACME TLS-ALPN-01 validation (RFC 8737; ``gotaxy.tls.acme.ALPN_PROTOCOL``).
ACME_TLS = b"acme-tls/1"

#: Why the front closed a connection (the keys of ``HttpsFront.refusals``).
REFUSED_NOT_TLS = "not_tls"
REFUSED_SLOW = "hello_timeout"
REFUSED_NO_NAME = "no_server_name"
REFUSED_UNKNOWN = "unknown_name"
REFUSED_BUSY = "too_many_pending"
REFUSED_UNREACHABLE = "node_unreachable"  #: another node serves the name and cannot be reached

#: Connections that may be sending their ClientHello at once; more are closed at once (each holds
#: at most MAX_BUFFERED bytes for at most vhostHTTPSHelloTimeout seconds).
MAX_PENDING_HELLOS = 1024


def _host_name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 253:
        raise SpecError(f"each of 'customDomains' must be a host name such as \"app.example.com\", got {str(value)[:64]!r}")
    name = value.lower().rstrip(".")
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise SpecError(
            "each of 'customDomains' must be a host name such as \"app.example.com\" (or \"*.example.com\"), "
            f"without a scheme or port, got {value[:64]!r}"
        )
    return name


def _domains(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) > MAX_HOSTS:
        raise SpecError(f"'customDomains' must be a list of at most {MAX_HOSTS} host names")
    return tuple(dict.fromkeys(_host_name(v) for v in value))


def _subdomain(value: Any) -> Optional[str]:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _LABEL.fullmatch(value.lower()):
        raise SpecError(f"'subdomain' must be one name part such as \"app\" (letters, digits and '-'), got {str(value)[:64]!r}")
    return value.lower()


@attrs.frozen
class HttpsSpec(StreamLimited, ProxySpec):
    """A ``type = "https"`` tunnel: frp's ``customDomains``, ``subdomain``, ``localIP``, ``localPort``."""

    type: ClassVar[str] = "https"

    local_port: int = attrs.field(validator=check_port("localPort", 1))
    local_ip: str = attrs.field(default="127.0.0.1", validator=check_local_ip)
    custom_domains: Tuple[str, ...] = attrs.field(default=(), converter=_domains)
    subdomain: Optional[str] = attrs.field(default=None, converter=_subdomain)
    proxy_protocol_version: Optional[str] = attrs.field(default=None, validator=check_version)

    def __attrs_post_init__(self) -> None:
        require_a_name("https", self.custom_domains, self.subdomain, "app")

    def to_keys(self) -> Dict[str, Any]:
        keys: Dict[str, Any] = {"type": "https", "localIP": self.local_ip, "localPort": self.local_port}
        if self.custom_domains:
            keys["customDomains"] = list(self.custom_domains)
        if self.subdomain is not None:
            keys["subdomain"] = self.subdomain
        if self.proxy_protocol_version is not None:
            keys["transport.proxyProtocolVersion"] = self.proxy_protocol_version
        keys.update(self.rule_keys())
        return keys

    @property
    def local_description(self) -> str:
        return host_port(self.local_ip, self.local_port)

    @property
    def requested(self) -> Optional[PublicAddress]:
        return None  # names, not a port: what ``address`` gives once the server's subDomainHost is known

    @property
    def local_endpoint(self) -> Optional[Tuple[str, int]]:
        return (self.local_ip, self.local_port)

    def address_for(self, config: Any) -> Optional[PublicAddress]:
        return self.address(config.vhost.sub_domain_host)

    def address(self, sub_domain_host: Optional[str], port: int = 0) -> PublicAddress:
        """The names this tunnel claims, given the server's ``subDomainHost``."""
        hosts = site_hosts(self.custom_domains, self.subdomain, sub_domain_host)
        try:
            return PublicAddress("https", port, hosts)
        except AddressError as e:
            raise SpecError(str(e), "customDomains") from None


_KEYS = {"localIP": "local_ip", "localPort": "local_port", "customDomains": "custom_domains",
         "subdomain": "subdomain", "transport.proxyProtocolVersion": "proxy_protocol_version", **HttpsSpec.RULE_ATTRIBUTES}

CUSTOM_DOMAINS = SpecField("customDomains", "list", "the host names visitors ask for (TLS SNI), such as "
                           "app.example.com or *.example.com", hint="field.customDomains.hint")
SUBDOMAIN = SpecField("subdomain", "text", "a name under the server's subDomainHost (app for app.example.com)")


def candidates(host: str) -> List[str]:
    """``a.b.example.com`` -> itself, ``*.b.example.com``, ``*.example.com`` (frp's order)."""
    names = [host]
    labels = host.split(".")
    while len(labels) >= 3:
        labels = labels[1:]
        names.append("*." + ".".join(labels))
    return names


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


class HttpsProxy(ProxyType):
    name = "https"
    label = "HTTPS"
    fields = (LOCAL_IP, LOCAL_PORT, CUSTOM_DOMAINS, SUBDOMAIN, PROXY_PROTOCOL) + HttpsSpec.RULE_FIELDS
    #: A spec that parses, for the faces' tests (the names are not a required field: one of two is).
    example_keys: ClassVar[Dict[str, Any]] = {"customDomains": ["app.example.com"]}
    log = Logger(observer=gotaxy_observer)

    def parse(self, keys: Mapping[str, Any]) -> HttpsSpec:
        return parse_keys("https", self.fields, keys, HttpsSpec, _KEYS)  # type: ignore[no-any-return]

    def make_front(self, config: Any, reactor: Any) -> Optional[HttpsFront]:
        return HttpsFront(config, reactor)

    async def expose(self, tunnel: LiveTunnel, context: ExposeContext) -> Exposure:
        spec = tunnel.spec
        assert isinstance(spec, HttpsSpec)
        front = context.front
        if front is None or not front.serving:
            raise TunnelRefused(
                "this server has no HTTPS port; ask the operator to set vhostHTTPSPort "
                "(for example vhostHTTPSPort = 443) in the server's config"
            )
        try:
            # The port is not part of the identity (the claims hold names): it makes the URLs shown right.
            address = spec.address(context.config.vhost.sub_domain_host, 0 if front.port == 443 else front.port)
        except SpecError as e:
            raise TunnelRefused(str(e)) from None
        await context.claims.claim(address)
        front.add(tunnel, address)
        return Exposure(address=address, close=lambda: front.remove(tunnel))

    def connect(self, reactor: Any, spec: ProxySpec, stream: Stream, failed: Callable[[Failure], None]) -> None:
        assert isinstance(spec, HttpsSpec)
        TCP.connect(reactor, TcpSpec(local_port=spec.local_port, local_ip=spec.local_ip), stream, failed)


HTTPS = HttpsProxy()
