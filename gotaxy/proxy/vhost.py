# -*- test-case-name: tests.test_proxy_vhost -*-
"""
The shared HTTP front: one listener (``vhostHTTPPort``) for every
``type = "http"`` tunnel, routing each *request* by its Host header and
path to a tunnel (``Router``), and carrying it there over a mux stream.

Entry points
============

* ``HttpFront(config, reactor)`` is made once by the http proxy type
  (``make_front``); the core starts and stops it.  ``front.router`` is what
  ``expose`` adds a tunnel's names to.
* ``front.protocol_factory(scheme)`` is a ``ServerFactory`` of visitor
  connections for ``scheme`` (``"http"`` or ``"https"``).  The plain port
  listens with ``protocol_factory("http")``; a TLS front that terminates
  TLS for http tunnels wraps ``protocol_factory("https")`` (for example in
  ``TLSMemoryBIOFactory``), so that ``X-Forwarded-Proto`` says https and
  everything else is the same.
* ``front.challenges``: set it to a ``gotaxy.tls.acme.ChallengeStore`` and
  ``/.well-known/acme-challenge/<token>`` is answered from it for any
  name, before routing.

One visitor connection
======================

``VisitorConnection`` parses what the visitor sends with **h11** (a
sans-I/O HTTP/1.1 parser: it never reads the socket or buffers a body, it
turns the bytes it is given into events, and we decide what to feed it and
when).  That fits the streaming design: nothing here holds more than one
socket read or one mux window of a body.  ``twisted.web.http`` was not
used: its ``Request`` collects the whole body before the application sees
it, which breaks a 1 GiB upload and backpressure.

For each request::

    Request event  -> route (Host, path, basic-auth user) -> checks (auth,
                      per-tunnel cap) -> the tunnel's stream (kept from the
                      previous request if it went to the same tunnel and
                      the local service kept the connection open; else a
                      new stream) -> the request, with header rules and
                      X-Forwarded-*, written through a client-side h11
                      connection into the stream
    Data / EOM     -> into the stream (chunked or sized as the visitor sent)
    response       <- the stream's bytes parsed by that client h11
                      connection; headers rewritten, then sent to the
                      visitor through the server h11 connection, which
                      frames it for the visitor (chunked for HTTP/1.1,
                      close-delimited for HTTP/1.0)

The common request and answer take a shorter way.  A request whose whole
head came in one read, ``GET`` (or another method without a body; not
HEAD or CONNECT), HTTP/1.1, one Host, no Content-Length,
Transfer-Encoding, Upgrade or Expect, within the header limits, is read by
``_fast_request`` (the same grammar as h11's: the whole head matched by
one regular expression) rather than h11, and routed and checked exactly as h11's requests are
(``_route``: Host, locations, basic auth, address rules, limits, header
rules, X-Forwarded-*).  Its answer (``_Upstream.fast``), for a tunnel
without ``responseHeaders.set``, if it is a plain ``HTTP/1.1`` response
with one ``Content-Length`` (not 1xx, 204, 304; ``Connection: close``
either way), has its head read by ``_fast_head`` (hop-by-hop headers
dropped as on the h11 way; ``Connection: close`` added when the visitor
asked for it, and then the connection ends) and its body counted, not
parsed, on its way to the visitor.  Neither h11 connection sees any of
it, so neither needs a new cycle.  Anything else goes to h11: a request
``_fast_request`` does not take is h11's from its first byte; if h11 has
to answer one it did take (an error page, a response the fast way does not
take), h11 reads that request's bytes first (``_replay``).  So h11 stays
the judge of what is valid HTTP, and the shorter way only ever takes what
it would take.

Each connection has one timer for its one deadline (the idle keep-alive
wait, the request's head, the response's head), moved lazily
(``_set_deadline``), so that a keep-alive request costs no timer work; and
what a visitor pipelines behind a request on the shorter way is held (up
to one head) rather than pausing the socket.  Per keep-alive request that
is about half of the server's work again (docs/benchmarks.md).

So a keep-alive connection whose next request names another host goes to
that host's tunnel (or, if another node serves it, to that node over a
pooled node link that stands here for a tunnel: ``gotaxy.server.forward``;
or it gets a 404), never to the previous one; pipelined
requests are answered in order (h11 pauses after each request until its
response is out, and we stop reading the socket meanwhile; the shorter way
holds what follows).  An upgrade
(WebSocket, any ``Upgrade``) that the local service accepts with 101 turns
the connection into a plain splice of socket and stream.

Backpressure: the stream is the visitor socket's producer (a full visitor
socket withholds window credit from the client), and a dry stream window
pauses reading the visitor's socket, as for a TCP tunnel.

Who may connect is ``gotaxy.server.access``'s: the listener's factory is
wrapped in ``front.gate`` (bans, ``access.tunnels``), and each routed
request is checked against its tunnel's own rules (403).  A wrong basic-auth
password counts towards the shared lock-out and towards a ban.

What a visitor sees instead of a dropped connection: 404 (no tunnel has the
name; ``custom404Page``), 403 (the tunnel's address rules), 401 (basic auth), 429 (locked out after failed
log-ins; or the visitor's address is over the tunnel's
``transport.maxConnectionsPerIP`` / ``transport.connectionRatePerIP``,
``gotaxy.server.limits``), 502 (the client is offline, or its local service refused or
broke the response), 503 (the tunnel is at its concurrent request cap or
its ``transport.maxConnections``, or the client at its stream limit), 504 (no response headers within
``vhostHTTPTimeout``), 400 (not HTTP), 408 (request line and headers not in
within ``vhostHTTPHeaderTimeout``), 431 (headers beyond
``vhostHTTPMaxHeaderBytes`` / ``vhostHTTPMaxHeaders``).  Each is counted by
reason, in all and per tunnel where there is one (``/metrics``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import math
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import attrs
import h11
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer
from gotaxy.mux import set_no_delay
from gotaxy.oslimits import listen_backlog
from gotaxy.proxy.sitenames import RouteTable, candidates
from gotaxy.server.limits import TOO_FAST, TOO_MANY
from gotaxy.wire import CLOSE_ERROR_PREFIX

if TYPE_CHECKING:
    from gotaxy.mux import Stream
    from gotaxy.proxy.address import PublicAddress
    from gotaxy.server.tunnel import LiveTunnel

#: Seconds an idle keep-alive connection waits for its next request.
KEEPALIVE_TIMEOUT = 75.0
#: Largest custom404Page served (bytes); a bigger file is cut.
MAX_404_PAGE = 64 * 1024
#: Most names remembered as "its client is offline" (for 502 rather than 404).
MAX_OFFLINE = 10000
#: Basic-auth failures: scope in the shared lock-out table.
AUTH_SCOPE = "http"

#: Why a request was refused (the ``reason`` label in /metrics).
REASONS = ("not_found", "denied", "unauthorized", "locked_out", "client_offline", "bad_gateway", "busy",
           "timeout", "bad_request", "header_timeout", "headers_too_large")

#: What a connection's deadline is for (VisitorConnection._set_deadline).
_REQUEST, _RESPONSE = "request", "response"
#: One end of a message, used again (h11's events are values).
_END = h11.EndOfMessage()

_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
    b"transfer-encoding", b"proxy-authenticate",
})
#: A whole response head that the fast way takes, checked by one match: an HTTP/1.1 status line with a
#: status that has a body (not 1xx), then header lines, each a token, a colon and a value of visible
#: characters but DEL, spaces and tabs (h11's field-value with its optional whitespace, stricter than h11
#: rather than looser), matched without backtracking: about a third less than the status line and each
#: header matched apart.
_FAST_RESPONSE = re.compile(rb"HTTP/1\.1 [2-5][0-9][0-9](?: [\t\x20-\x7e\x80-\xff]*)?"
                            rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*")
#: The lines of such a head (lower-cased) that the fast way reads: the length, and the hop's own headers (dropped).
_FAST_SPECIAL = re.compile(rb"\r\n(content-length|transfer-encoding|connection|keep-alive|proxy-connection|te|trailer|"
                           rb"upgrade|proxy-authenticate):")
#: Connection tokens that keep a request off the fast way.
_CLOSE_OR_UPGRADE = frozenset({b"close", b"upgrade"})
#: A whole request head that _fast_request takes, checked by one match: a method (token), an origin- or
#: absolute-form target (h11's visible ASCII), HTTP/1.1, then header lines as in ``_FAST_RESPONSE`` (group 3).
_FAST_REQUEST_HEAD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/1\.1"
                                rb"((?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*)")
#: The request headers that _fast_request reads (Host, Connection) or that leave a request to h11 (a body,
#: an upgrade, an expectation).
_FAST_REQUEST_READ = frozenset({b"host", b"connection", b"content-length", b"transfer-encoding", b"upgrade", b"expect"})
#: A header name (RFC 9110 token).
_FAST_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"})
#: Request headers that _request_headers does more with than pass on.
_REQUEST_SPECIAL = _HOP_BY_HOP | _FORWARDED | {b"host", b"content-length"}
_STATUS_TEXT = {
    308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout",
    429: "Too Many Requests", 431: "Request Header Fields Too Large", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}


class Router:
    """
    Host names and paths to this node's tunnels, routed as frp routes
    (``gotaxy.proxy.sitenames.RouteTable``, the lookup that other nodes'
    names share: ``gotaxy.server.forward.RemoteSites``).  Who may hold a
    name is the claims table's business: the router only maps what was
    claimed.
    """

    def __init__(self) -> None:
        self._table: RouteTable["LiveTunnel"] = RouteTable()
        self._hosts = self._table.hosts
        #: ``lookup(host, path, user="")``: the tunnel that serves a request, or None
        self.lookup = self._table.lookup
        self._addresses: Dict["LiveTunnel", "PublicAddress"] = {}
        #: names whose tunnel went down (its client is offline): 502, not 404
        self._offline: Dict[str, None] = {}
        #: tunnel -> its requests may be written without h11 (see ``plain``)
        self._plain: Dict["LiveTunnel", bool] = {}

    def add(self, tunnel: "LiveTunnel", address: "PublicAddress") -> None:
        self._addresses[tunnel] = address
        self._plain[tunnel] = not tunnel.spec.response_headers and _plain_rules(tunnel.spec)
        for host in address.hosts:
            for path in address.paths or ("/",):
                self._table.add(host, path, address.user, tunnel)
            self._offline.pop(host, None)

    def remove(self, tunnel: "LiveTunnel") -> None:
        address = self._addresses.pop(tunnel, None)
        self._plain.pop(tunnel, None)
        if address is None:
            return
        for host in address.hosts:
            if self._table.discard(host, tunnel):
                if len(self._offline) >= MAX_OFFLINE:
                    self._offline.pop(next(iter(self._offline)))
                self._offline[host] = None

    def remember_claimed(self, keys: Any) -> None:
        """
        Names the claims table holds (``domain`` keys: ``wiki.example.com``,
        ``alice@wiki.example.com/news``) that no tunnel serves here: their
        tunnels' clients are offline (or on another server), so 502, not 404.
        """
        for key in keys:
            host = key.rpartition("@")[2].partition("/")[0]
            if host and host not in self._hosts and len(self._offline) < MAX_OFFLINE:
                self._offline[host] = None

    def offline(self, host: str) -> bool:
        """A tunnel served ``host`` here and went down (and none has it now)."""
        return any(name in self._offline for name in candidates(host))

    def tunnels(self) -> List["LiveTunnel"]:
        return list(self._addresses)

    def plain(self, tunnel: "LiveTunnel") -> bool:
        """``tunnel`` sets no response headers and its request rules are plain ASCII: the fast way may serve it."""
        plain = self._plain.get(tunnel)
        return plain if plain is not None else not tunnel.spec.response_headers and _plain_rules(tunnel.spec)


class HttpFront:
    """The shared listener and router of the http type (see the module docstring)."""

    log = Logger(observer=gotaxy_observer)

    def __init__(self, config: Any, reactor: Any) -> None:
        self.config = config
        self.settings = config.vhost
        self.reactor = reactor
        self.router = Router()
        #: set by the core (``attach``): the store for the lock-out, the refusal reports
        self.core: Any = None
        self.listening: Any = None
        #: refusals by reason, and by (client, tunnel, reason)
        self.refusals: Counter = Counter()
        self.tunnel_refusals: Counter = Counter()
        #: requests in flight per tunnel (client, name)
        self.active: Counter = Counter()
        #: wraps the listener's factory in the access rules and bans (the core sets it: ``gotaxy.server.access``)
        self.gate: Callable[[Any], Any] = lambda factory: factory
        #: ACME's HTTP-01 answers (a ``gotaxy.tls.acme.ChallengeStore``), set by whoever runs ACME
        self.challenges: Any = None
        #: names other nodes serve, and how to hand a connection there (``gotaxy.server.forward.Forwarder``)
        self.forwarder: Any = None
        #: address -> until when basic-auth attempts from it are refused
        self._locked: Dict[str, float] = {}
        self.page_404 = self._read_404_page()

    @property
    def serving(self) -> bool:
        """The front takes tunnels: vhostHTTPPort is set, or vhostHTTPSPort (TLS terminated, then this front)."""
        https = getattr(self.config, "https", None)
        return bool(self.settings.http_port) or bool(https is not None and https.port)

    def attach(self, core: Any) -> None:
        self.core = core

    def _read_404_page(self) -> Optional[bytes]:
        path = self.settings.custom_404_page
        if not path:
            return None
        try:
            # Read once, at start-up, before the reactor runs.
            with open(path, "rb") as page:
                return page.read(MAX_404_PAGE)
        except OSError as e:
            self.log.error("custom404Page {path!r} cannot be read ({reason}); the built-in page is used",
                           path=path, reason=e.strerror)
            return None

    def protocol_factory(self, scheme: str) -> ServerFactory:
        """A factory of visitor connections that arrive over ``scheme`` ("http" or "https")."""
        return _VisitorFactory(self, scheme)

    def start(self) -> None:
        self._load_claims()
        port = self.settings.http_port
        if not port or self.listening is not None:  # (bound already with the other listeners: FrontListeners)
            return
        address = self.config.effective_proxy_bind_addr()
        try:
            self.listening = self.reactor.listenTCP(
                port, self.gate(self.protocol_factory("http")), backlog=listen_backlog(), interface=address
            )
        except CannotListenError as e:
            raise CannotListenError(
                address, port,
                f"the HTTP port for websites (vhostHTTPPort = {port}) cannot be opened: {e.socketError}; "
                f"choose a free port (ports below 1024 need CAP_NET_BIND_SERVICE, see docs/websites.md)",
            ) from None
        self.log.info("websites (http tunnels) served on port {port}", port=self.listening.getHost().port)

    def _load_claims(self) -> None:
        """The names reserved for tunnels that are not up (yet): after a restart they answer 502, not 404."""
        core = self.core
        if core is None:
            return
        from gotaxy.store.claims import DOMAIN

        store = core.store
        store.call(store.store.claimed_keys, DOMAIN).addCallbacks(
            self.router.remember_claimed,
            lambda failure: self.log.failure("cannot read the names reserved for websites", failure),
        )

    def stop(self) -> Any:
        listening, self.listening = self.listening, None
        return listening.stopListening() if listening is not None else None

    async def apply(self, config: Any) -> List[Any]:
        """
        A reload (``gotaxy.server.reload``): the limits, timeouts and
        ``vhostForwardedHeaders`` apply to connections from now on;
        ``subDomainHost`` to tunnels opened from now on; a new
        ``vhostHTTPPort`` is listened on and the old one closed (visitors'
        open connections stay).  ``custom404Page`` is read at start only.
        """
        from gotaxy.server.reload import applied, needs_restart

        old, new = self.settings, config.vhost
        self.config, self.settings = config, new
        done: List[Any] = []
        if new.custom_404_page != old.custom_404_page:
            done.append(needs_restart("custom404Page", "the page is read once, at start"))
        if new.sub_domain_host != old.sub_domain_host:
            done.append(applied("subDomainHost", "tunnels opened from now on; open ones keep their names"))
        if new.allow_domains != old.allow_domains:  # (gotaxy.server.domains reads it at each claim)
            done.append(applied("allowDomains", "claims from now on; open tunnels keep their names"))
        live = [key for key, a, b in (
            ("vhostHTTPTimeout", old.http_timeout, new.http_timeout),
            ("vhostForwardedHeaders", old.forwarded_headers, new.forwarded_headers),
            ("vhostHTTPHeaderTimeout", old.header_timeout, new.header_timeout),
            ("vhostHTTPMaxHeaderBytes", old.max_header_bytes, new.max_header_bytes),
            ("vhostHTTPMaxHeaders", old.max_headers, new.max_headers),
            ("vhostHTTPMaxRequestsPerTunnel", old.max_requests_per_tunnel, new.max_requests_per_tunnel),
        ) if a != b]
        if live:
            done.append(applied(" / ".join(live), "visitor connections from now on"))
        if new.http_port != old.http_port:
            previous = self.listening
            self.listening = None
            try:
                self.start()
            except CannotListenError as e:
                self.listening = previous
                self.config, self.settings = self.config, attrs.evolve(new, http_port=old.http_port)
                return done + [needs_restart("vhostHTTPPort", f"{e.socketError}; still on the old port")]
            if previous is not None:
                await previous.stopListening()
            done.append(applied("vhostHTTPPort", f"websites served on {new.http_port or 'no port (off)'}; "
                                                 "open visitor connections stay"))
        return done

    def refuse(self, reason: str, tunnel: Optional["LiveTunnel"] = None) -> None:
        self.refusals[reason] += 1
        if tunnel is not None:
            self.tunnel_refusals[(tunnel.client, tunnel.name, reason)] += 1

    # -- basic auth lock-out ----------------------------------------------------

    def locked_out(self, address: str) -> bool:
        until = self._locked.get(address)
        if until is None:
            return False
        if until <= self.reactor.seconds():
            del self._locked[address]
            return False
        return True

    def auth_failed(self, address: str, user: str) -> None:
        """Count a wrong basic-auth password in the shared lock-out table (off the reactor thread)."""
        core = self.core
        if core is None:
            return
        access = getattr(core, "access", None)
        if access is not None:  # towards a ban on every listener (gotaxy.server.access)
            from gotaxy.server.access import BASIC_AUTH

            access.failure(BASIC_AUTH, address, "wrong website passwords")
        from gotaxy.server.operators import LOCK_AFTER, LOCK_SECONDS, WINDOW
        from gotaxy.store import lockouts

        now = self.reactor.seconds()

        def counted(locked: bool) -> None:
            if locked:
                if len(self._locked) > MAX_OFFLINE:
                    self._locked.clear()
                self._locked[address] = self.reactor.seconds() + LOCK_SECONDS

        store = core.store
        store.call(lockouts.failed, store.store.db, AUTH_SCOPE, user[:64], address, None, WINDOW, now,
                   LOCK_AFTER, LOCK_SECONDS).addCallbacks(
            counted, lambda failure: self.log.failure("cannot count a failed basic-auth log-in", failure))

    # -- pages ------------------------------------------------------------------

    def page(self, status: int, detail: str) -> bytes:
        if status == 404 and self.page_404 is not None:
            return self.page_404
        title = f"{status} {_STATUS_TEXT.get(status, '')}"
        return (
            f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>"
            f"<body><h1>{title}</h1><p>{html.escape(detail)}</p><hr><p>Gotaxy</p></body></html>\n"
        ).encode("utf-8")


class _VisitorFactory(ServerFactory):
    noisy = False

    def __init__(self, front: HttpFront, scheme: str) -> None:
        self.front = front
        self.scheme = scheme

    def buildProtocol(self, addr: Any) -> "VisitorConnection":
        return VisitorConnection(self.front, self.scheme)


def _header(headers: List[Tuple[bytes, bytes]], name: bytes) -> Optional[bytes]:
    for key, value in headers:
        if key == name:
            return value
    return None


def _basic_credentials(headers: List[Tuple[bytes, bytes]]) -> Optional[Tuple[str, str]]:
    value = _header(headers, b"authorization")
    if value is None or value[:6].lower() != b"basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


class _Upstream:
    """
    One stream to a tunnel's client, and the client-side h11 connection
    that writes requests into it and parses the responses out of it.  It is
    the "transport" the stream is attached to (``Stream.attach``), so the
    stream's flow control reaches the visitor's socket.
    """

    def __init__(self, visitor: "VisitorConnection", tunnel: "LiveTunnel", stream: "Stream") -> None:
        self.visitor = visitor
        self.tunnel = tunnel
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=visitor.front.settings.max_header_bytes)
        #: h11 has been given something (else it is idle both ways: no state to ask it, per request, for)
        self.h11_used = False
        #: the tunnel's key in ``HttpFront.active`` (made once here, not per request)
        self.key = tunnel.key
        self.dead = False
        self.switched = False
        self.eof = False
        #: the response to the request in flight takes the fast way (see the module docstring)
        self.fast = False
        #: fast way: the head read so far, when it came in pieces (None: in the body)
        self.head: Optional[Any] = None
        #: fast way: body bytes still to come
        self.remaining = 0
        #: fast way: the response said ``Connection: close``
        self.closes = False
        #: the request write_request wrote (method, target, headers), which h11 has not seen
        self.written: Optional[Tuple[bytes, bytes, List[Tuple[bytes, bytes]]]] = None

    # -- as the stream's transport ------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.switched:
            self.visitor.transport.write(data)
            return
        if self.fast:
            self.visitor.fast_response(self, data)
            return
        self.h11_used = True
        self.h11.receive_data(data)
        self.visitor.response_events(self)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.visitor.set_producer(self, producer)

    def unregisterProducer(self) -> None:
        self.visitor.set_producer(self, None)

    def pauseProducing(self) -> None:
        self.visitor.pause("window", self)

    def resumeProducing(self) -> None:
        self.visitor.resume("window", self)

    def loseWriteConnection(self) -> None:
        self._ended()

    def loseConnection(self) -> None:
        self._ended()

    def abortConnection(self) -> None:
        self._ended(aborted=True)

    def _ended(self, aborted: bool = False) -> None:
        if self.switched:
            if aborted:
                self.visitor.transport.abortConnection()
            else:
                self.visitor.transport.loseConnection()
            return
        if not self.eof:
            self.eof = True
            waiting = self.visitor.exchange is self and not self.visitor.response_started
            if not aborted and not waiting and not self.fast:
                # The end of a close-delimited response, or of an idle connection.
                self.h11_used = True
                self.h11.receive_data(b"")
                self.visitor.response_events(self)
        self.visitor.upstream_gone(self)

    # -- as a connection of the tunnel ----------------------------------------------

    def close_idle(self) -> bool:
        """``LiveTunnel.close_idle``: close this stream (and the visitor, if it waits on it)."""
        if self.dead:
            return False
        self.visitor.transport.loseConnection()
        return True

    def send(self, event: Any) -> None:
        if self.written is not None:
            return  # the end of a request without a body that write_request wrote whole
        self.h11_used = True
        data = self.h11.send(event)
        if data:
            self.stream.write(data)

    def write_request(self, method: bytes, target: bytes, headers: List[Tuple[bytes, bytes]]) -> None:
        """A request without a body, its answer taken the fast way (see the module docstring)."""
        # One join of the pieces, not a line made per header first: half this method's work.
        parts = [method, b" ", target, b" HTTP/1.1"]
        for name, value in headers:
            parts += (b"\r\n", name, b": ", value)
        parts.append(b"\r\n\r\n")
        self.written = (method, target, headers)
        self.fast = True
        self.head = b""
        self.stream.write(b"".join(parts))

    def tell_h11(self) -> None:
        """The answer to what write_request wrote goes to h11 after all: tell it what it was."""
        written, self.written = self.written, None
        if written is not None:
            method, target, headers = written
            self.h11_used = True
            self.h11.send(h11.Request(method=method, target=target, headers=headers))
            self.h11.send(_END)

    def close(self, reason: str = "closed") -> None:
        """We are done with this stream (the visitor left, or another tunnel is asked)."""
        if self.dead:
            return
        self.dead = True
        self.stream.local_closed(reason)
        self.visitor.forget(self)


class VisitorConnection(Protocol):
    """One connection from a visitor to the HTTP front; see the module docstring."""

    log = Logger(observer=gotaxy_observer)

    def __init__(self, front: HttpFront, scheme: str) -> None:
        self.front = front
        self.settings = front.settings
        self.scheme = scheme
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.settings.max_header_bytes)
        self.upstream: Optional[_Upstream] = None
        #: the upstream the request being answered went to (None: answered here)
        self.exchange: Optional[_Upstream] = None
        self.response_started = False
        #: the request's body is being read and dropped (answered here)
        self.discarding = False
        self.has_body = False
        self.switched = False
        self._paused: set = set()
        self._producer: Optional[_Upstream] = None
        #: one timer for the connection's one deadline (see _set_deadline)
        self._timer: Any = None
        #: when it fires (kept here: no getTime() call per deadline)
        self._timer_at = math.inf
        self._deadline = math.inf
        #: what the deadline is for: _REQUEST (idle, or a head coming), _RESPONSE, or None
        self._waiting: Optional[str] = None
        #: fast way: what came after the head being answered (the next request), not read yet
        self._ahead = b""
        #: the visitor's requests are read by _fast_request while this holds (see the module docstring)
        self._fast_parse = True
        #: the head _fast_request read for the request in flight, which h11 has not seen (None: it has)
        self._fast_raw: Optional[bytes] = None
        #: that request asked for ``Connection: close``
        self._fast_close = False
        self._cycle_bytes = 0
        self.peer_host = ""
        self._peer = b""
        self._scheme = scheme.encode("ascii")
        #: the last Host header routed, and its host name (``_host_of``)
        self._raw_host: Optional[bytes] = None
        self._host = ""
        #: why the tunnel's connection limits refused the last stream ``_upstream_for`` tried, or None
        self.limited: Optional[str] = None
        self.closed = False
        #: it came from another node (``gotaxy.server.forward``): never forwarded again
        self.from_peer = False
        #: a link of requests from another node: each request names its visitor (``gotaxy.server.forward``)
        self.relayed = False
        #: the ``x-gotaxy-visitor`` value of the last request it took (relayed)
        self._relayed_from: Optional[bytes] = None

    # -- the socket ------------------------------------------------------------

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        self.peer_host = getattr(self.transport.getPeer(), "host", "") or ""
        self._peer = self.peer_host.encode("ascii", "replace")
        self._set_deadline(_REQUEST, self.settings.header_timeout)
        # Made for a connection from another node (its transport, or the TLS under it, says so): not forwarded.
        self.from_peer = self.from_peer or getattr(self.transport, "from_peer", False) is True

    def dataReceived(self, data: bytes) -> None:
        if self.switched:
            upstream = self.exchange
            if upstream is not None:
                upstream.stream.write(data)
            return
        if self._fast_parse:
            if self.exchange is not None or self._ahead:
                # The next request (pipelined) waits until this one is answered; held up to one head.
                self._ahead += data
                if len(self._ahead) > self.settings.max_header_bytes:
                    self.pause("pipelined")
                return
            if self._fast_request(data):
                return
            # h11 reads this request, and the connection's until it is idle again (_next_cycle).
            self._fast_parse = False
        if self._cycle_bytes == 0:
            self._set_deadline(_REQUEST, self.settings.header_timeout)  # idle keep-alive ends: the clock starts
        self._cycle_bytes += len(data)
        try:
            self.h11.receive_data(data)
        except RuntimeError:
            return  # after an error, or closed: nothing more is read
        self._request_events()

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self._cancel_timers()
        if self.exchange is not None:
            self._exchange_done()
        upstream = self.upstream
        if upstream is not None:
            upstream.close("the visitor closed the connection")

    # -- pausing the visitor's socket for several reasons ---------------------

    def pause(self, reason: str, upstream: Optional[_Upstream] = None) -> None:
        if upstream is not None and upstream is not self.upstream:
            return
        if not self._paused and not self.closed:
            self.transport.pauseProducing()
        self._paused.add(reason)

    def resume(self, reason: str, upstream: Optional[_Upstream] = None) -> None:
        if upstream is not None and upstream is not self.upstream:
            return
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and not self.closed:
                self.transport.resumeProducing()

    def set_producer(self, upstream: _Upstream, producer: Any) -> None:
        """The stream of ``upstream`` becomes (or stops being) the producer of our socket."""
        if self.closed:
            return
        if producer is None:
            if self._producer is upstream:
                self._producer = None
                self.transport.unregisterProducer()
            return
        if self._producer is not None:
            self.transport.unregisterProducer()
        self._producer = upstream
        self.transport.registerProducer(producer, True)

    # -- timers -----------------------------------------------------------------

    def _set_deadline(self, waiting: Optional[str], seconds: float = 0.0) -> None:
        """
        Wait ``seconds`` for ``waiting`` (None: for nothing).  One timer per
        connection, moved lazily: a later deadline only notes the time, and
        the timer, when it fires early, sets itself again for it; only a
        sooner one moves it (Twisted finds a call moved sooner by a search
        of all the reactor's calls).  So the keep-alive cycle (request,
        response, idle) costs no timer work per request.
        """
        self._waiting = waiting
        if waiting is None:
            return
        reactor = self.front.reactor
        deadline = self._deadline = reactor.seconds() + seconds
        timer = self._timer
        if timer is None:
            self._timer = reactor.callLater(seconds, self._timer_fired)
            self._timer_at = deadline
        elif deadline < self._timer_at:
            timer.reset(seconds)
            self._timer_at = deadline

    def _timer_fired(self) -> None:
        self._timer = None
        waiting = self._waiting
        if waiting is None or self.closed:
            return
        now = self.front.reactor.seconds()
        if now < self._deadline:
            self._timer = self.front.reactor.callLater(self._deadline - now, self._timer_fired)
            self._timer_at = self._deadline
            return
        self._waiting = None
        if waiting is _RESPONSE:
            self._response_timeout()
        else:
            self._header_timeout()

    def _header_timeout(self) -> None:
        if self._cycle_bytes:
            self.front.refuse("header_timeout")
            self._fatal(408, "The request line and headers did not arrive in time.")
        else:
            self.transport.loseConnection()  # an idle keep-alive connection

    def _cancel_timers(self) -> None:
        self._waiting = None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- requests -------------------------------------------------------------

    def _request_events(self) -> None:
        while not self.closed:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint
                if status == 431:
                    self.front.refuse("headers_too_large")
                    self._fatal(431, "The request's headers are too large.")
                else:
                    self.front.refuse("bad_request")
                    self._fatal(400, "This is not an HTTP request this server can read.")
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                # The next request (pipelined) waits until this one is answered.
                self.pause("pipelined")
                return
            if isinstance(event, h11.Request):
                self._waiting = None
                self._request(event)
            elif isinstance(event, h11.Data):
                if self.exchange is not None and not self.discarding:
                    self.exchange.send(event)
            elif isinstance(event, h11.EndOfMessage):
                if self.exchange is not None and not self.discarding:
                    self.exchange.send(event)
                    if not self.response_started:
                        self._set_deadline(_RESPONSE, self.settings.http_timeout)
                self._maybe_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                if self.exchange is None:
                    self.transport.loseConnection()
                return

    def _fast_request(self, data: bytes) -> bool:
        """
        Read a common request without h11: a whole head in ``data``, ``GET``
        or another method without a body (not HEAD, not CONNECT), HTTP/1.1,
        one Host, no Content-Length, Transfer-Encoding, Upgrade or Expect,
        within vhostHTTPMaxHeaderBytes and vhostHTTPMaxHeaders; then route it
        as h11's would be.  False: h11 reads it (and says what is wrong).

        Hand-written because h11's reading of a request (events, validation,
        its receive buffer, and a new cycle per request) was the largest
        share of the front's work per keep-alive request (docs/benchmarks.md).
        It takes only what h11 would take, by the same rules of RFC 9112
        (``_FAST_REQUEST_HEAD``), and hands anything else
        to h11 untouched; if h11 has to answer such a request after all (an
        error page, a response the fast way does not take), it reads the
        same bytes first (``_replay``).
        """
        end = data.find(b"\r\n\r\n")
        settings = self.settings
        if end < 0 or end + 4 > settings.max_header_bytes:
            return False
        head = _FAST_REQUEST_HEAD.fullmatch(data, 0, end)
        if head is None:
            return False
        method = head.group(1)
        if method == b"HEAD" or method == b"CONNECT":
            return False
        lines = data[head.start(3) + 2:end].split(b"\r\n")
        if len(lines) > settings.max_headers:
            return False
        # The head was checked as a whole (one match, not one per line), so each line is split, not matched:
        # a sixth less of the front's work per keep-alive request with a browser's ten headers, about the same with one.
        headers: List[Tuple[bytes, bytes]] = []
        raw_host: Optional[bytes] = None
        close = False
        named: frozenset = frozenset()
        for line in lines:
            name, _, value = line.partition(b":")
            name = name.lower()
            value = value.strip(b" \t")
            if name in _FAST_REQUEST_READ:
                if name == b"host":
                    if raw_host is not None:
                        return False
                    raw_host = value
                elif name == b"connection":
                    tokens = [token.strip() for token in value.lower().split(b",")]
                    if b"upgrade" in tokens:
                        return False
                    close = close or b"close" in tokens
                    named = named.union(tokens)
                else:
                    return False
            headers.append((name, value))
        if raw_host is None:
            return False
        self._waiting = None
        self._fast_raw = data[:end + 4]
        self._fast_close = close
        if end + 4 < len(data):
            self._ahead = data[end + 4:]
        self.has_body = False
        self._route(method, head.group(2), headers, raw_host, True, named)
        return True

    def _replay(self) -> None:
        """h11 answers the request _fast_request read: it reads that request first (which it takes, see there)."""
        raw, self._fast_raw = self._fast_raw, None
        if raw is not None:
            conn = self.h11
            conn.receive_data(raw)
            conn.next_event()  # the Request
            conn.next_event()  # its EndOfMessage (it has no body)

    def _request(self, request: h11.Request) -> None:
        front = self.front
        headers = list(request.headers)
        length = _header(headers, b"content-length")
        self.has_body = _header(headers, b"transfer-encoding") is not None or length not in (None, b"0")
        if len(headers) > self.settings.max_headers:
            front.refuse("headers_too_large")
            self._fatal(431, f"A request may have at most {self.settings.max_headers} headers.")
            return
        # h11 bounds what it buffers of an incomplete head; a head that came whole is measured here.
        size = len(request.target) + sum(len(name) + len(value) + 4 for name, value in headers)
        if size > self.settings.max_header_bytes:
            front.refuse("headers_too_large")
            self._fatal(431, "The request's headers are too large.")
            return
        connection = _header(headers, b"connection")
        fast = (not self.has_body and request.method != b"HEAD" and request.http_version == b"1.1"
                and (connection is None or not _CLOSE_OR_UPGRADE.intersection(
                    token.strip().lower() for token in connection.split(b",")))
                and _header(headers, b"upgrade") is None)
        self._route(request.method, request.target, headers, _header(headers, b"host") or b"", fast)

    def _route(self, method: bytes, raw_target: bytes, headers: List[Tuple[bytes, bytes]], raw_host: bytes,
               fast: bool, named: Optional[frozenset] = None) -> None:
        """
        Route one request (read by h11 or by _fast_request) and send it on,
        or answer it here.  ``fast``: it has no body and its answer may take
        the fast way (see the module docstring).  ``named``: from
        _fast_request, the headers its Connection header names.
        """
        front = self.front
        if self.relayed:
            relayed = self._relayed_visitor(headers)
            if relayed is None:
                return
            headers = relayed
        if raw_host == self._raw_host:
            host = self._host  # (a keep-alive connection names the same host again: read once)
        else:
            host = self._host = _host_of(raw_host)
            self._raw_host = raw_host
        target = raw_target.decode("latin-1")
        path = target.split("?", 1)[0]
        if not path.startswith("/"):
            path = "/" + path.split("://", 1)[-1].partition("/")[2]  # absolute-form
        challenges = front.challenges
        # (the target itself is tested: ACME's prefix has no "?", so it starts the target iff it starts the path)
        if challenges is not None and challenges.is_challenge(raw_target):
            # ACME's HTTP-01 (gotaxy.tls.acme): answered here for any name, never routed.
            answer = challenges.answer(raw_target.split(b"?", 1)[0])
            if answer is None:
                self._answer(404, "No such challenge.")
            else:
                self._answer_body(200, answer, b"text/plain")
            return
        credentials = _basic_credentials(headers)
        tunnel = front.router.lookup(host, path, credentials[0] if credentials else "") if host else None
        if tunnel is None:
            if (front.forwarder is not None and host and not self.from_peer
                    and self._forward(method, raw_target, headers, host, path, credentials, fast, named)):
                return
            if host and front.router.offline(host):
                front.refuse("client_offline")
                self._answer(502, f"The website {host} is offline: its client is not connected.")
            else:
                front.refuse("not_found")
                self._answer(404, f"There is no website named {host or '(none)'} on this server.")
            return
        if not tunnel.admits(self.peer_host, routed=True):  # the tunnel's own address rules (access.perTunnel)
            front.refuse("denied", tunnel)
            self._answer(403, "Your address may not visit this website.")
            return
        spec = tunnel.spec
        https_port = front.config.https.port
        if self.scheme == "http" and spec.redirect_to_https and https_port:
            # Before the password is asked for: it would travel in the clear.
            suffix = "" if https_port == 443 else f":{https_port}"
            origin = target if target.startswith("/") else path
            location = f"https://{host}{suffix}{origin}"
            self._answer_body(308, self.front.page(308, f"This website is at {location}"),
                              b"text/html; charset=utf-8", [(b"location", location.encode("latin-1"))])
            return
        if spec.http_user is not None:
            if front.locked_out(self.peer_host):
                front.refuse("locked_out", tunnel)
                self._answer(429, "Too many wrong passwords from your address; try again later.",
                             [(b"retry-after", b"900")])
                return
            if not _credentials_match(credentials, spec.http_user, spec.http_password):
                front.refuse("unauthorized", tunnel)
                if credentials is not None:
                    front.auth_failed(self.peer_host, credentials[0])
                self._answer(401, "This website asks for a user name and password.",
                             [(b"www-authenticate", b'Basic realm="Restricted"')])
                return
        cap = self.settings.max_requests_per_tunnel
        if cap and front.active.get(tunnel.key, 0) >= cap:
            front.refuse("busy", tunnel)
            self._answer(503, "The website is busy; try again in a moment.", [(b"retry-after", b"1")])
            return
        upstream = self._upstream_for(tunnel)
        if upstream is None and self.limited is not None:
            # The tunnel's connection limits (gotaxy.server.limits): counted on its gate, and here by reason.
            reason, self.limited = self.limited, None
            front.refuse(reason, tunnel)
            if reason == TOO_MANY:
                self._answer(503, "The website is at its connection limit; try again in a moment.",
                             [(b"retry-after", b"1")])
            else:
                rate = getattr(spec, "connection_rate_per_ip", 0)
                wait = str(max(1, math.ceil(60 / rate)) if reason == TOO_FAST and rate else 1).encode()
                self._answer(429, "Too many connections from your address to this website; try again in a moment.",
                             [(b"retry-after", wait)])
            return
        if upstream is None:
            front.refuse("busy", tunnel)
            self._answer(503, "The website's client cannot take another connection now; try again.",
                         [(b"retry-after", b"1")])
            return
        self.exchange = upstream
        self.response_started = False
        active = front.active
        active[upstream.key] = active.get(upstream.key, 0) + 1
        outgoing = self._request_headers(headers, raw_host, spec, named)
        if fast and front.router.plain(tunnel):
            # Everything in it was read by h11 or _fast_request, or is ours and plain: written as h11 would.
            upstream.write_request(method, raw_target, outgoing)
            if self._fast_raw is not None:  # (h11's requests start their response deadline at their end)
                self._set_deadline(_RESPONSE, self.settings.http_timeout)
            return
        fast_read = self._fast_raw is not None
        self._replay()
        try:
            upstream.send(h11.Request(method=method, target=raw_target, headers=outgoing))
            if fast_read:  # (h11 read the end of it in _replay: nobody else tells the stream)
                upstream.send(_END)
        except h11.LocalProtocolError:
            self._exchange_done()
            front.refuse("bad_request", tunnel)
            self._fatal(400, "This request cannot be forwarded.")
            return
        if fast_read:
            self._set_deadline(_RESPONSE, self.settings.http_timeout)

    # -- another node serves it (gotaxy.server.forward) ----------------------------

    def _forward(self, method: bytes, raw_target: bytes, headers: List[Tuple[bytes, bytes]], host: str, path: str,
                 credentials: Optional[Tuple[str, str]], fast: bool, named: Optional[frozenset]) -> bool:
        """
        Send the request to the node that serves ``host`` if another one
        does (True), over a link of its pool, which stands here for a
        tunnel (``gotaxy.server.forward.LinkPool``); the owner routes,
        checks and answers it.
        """
        forwarder = self.front.forwarder
        pool = forwarder.pool_for(host, path, credentials[0] if credentials else "", self.scheme)
        if pool is None:
            return False
        upstream = self._upstream_for(pool)
        if upstream is None:
            self.front.refuse("busy")
            self._answer(503, "The website is busy; try again in a moment.", [(b"retry-after", b"1")])
            return True
        forwarder.forwarded[pool.node] = forwarder.forwarded.get(pool.node, 0) + 1
        self.exchange = upstream
        self.response_started = False
        self.front.active[pool.key] += 1
        from gotaxy.server.forward import relay_headers

        outgoing = relay_headers(headers, self.transport.getPeer(), named)
        if fast:
            upstream.write_request(method, raw_target, outgoing)
            if self._fast_raw is not None:
                self._set_deadline(_RESPONSE, self.settings.http_timeout)
            return True
        fast_read = self._fast_raw is not None
        self._replay()
        try:
            upstream.send(h11.Request(method=method, target=raw_target, headers=outgoing))
            if fast_read:
                upstream.send(_END)
        except h11.LocalProtocolError:
            self._exchange_done()
            self.front.refuse("bad_request")
            self._fatal(400, "This request cannot be forwarded.")
            return True
        if fast_read:
            self._set_deadline(_RESPONSE, self.settings.http_timeout)
        return True

    def _relayed_visitor(self, headers: List[Tuple[bytes, bytes]]) -> Optional[List[Tuple[bytes, bytes]]]:
        """
        A request on a link of requests from another node: its visitor
        (``x-gotaxy-visitor``) is this connection's peer for it; the headers
        without that one, or None after a 400 (none, or not one address).
        """
        from gotaxy.server.forward import VISITOR_HEADER, read_visitor

        rest = [(name, value) for name, value in headers if name != VISITOR_HEADER]
        if len(rest) == len(headers) - 1 and self._relayed_from is not None:
            for name, value in headers:
                if name == VISITOR_HEADER:
                    if value == self._relayed_from:  # the same visitor as the last request's: known already
                        return rest
                    break
        peer = read_visitor(headers)
        if peer is None:
            self.front.refuse("bad_request")
            self._fatal(400, "A forwarded request must name its visitor.")
            return None
        if peer.host != self.peer_host and self.upstream is not None:
            # Another visitor's request: its own stream, counted against its own address's limits.
            self.upstream.close("the next request goes elsewhere")
        self.peer_host = peer.host
        self._peer = peer.host.encode("ascii")
        self.transport.set_peer(peer)
        self._relayed_from = _header(headers, VISITOR_HEADER)
        return rest

    def _request_headers(self, headers: List[Tuple[bytes, bytes]], raw_host: bytes, spec: Any,
                         named: Optional[frozenset] = None) -> List[Tuple[bytes, bytes]]:
        """
        The request's headers for the website.  ``named``: the headers its
        Connection header names, from _fast_request, which has also made sure
        that there is no Upgrade or Transfer-Encoding.
        """
        if named is None:
            named = _connection_tokens(headers)
            upgrade = _header(headers, b"upgrade")
            # With both, h11 framed the body by Transfer-Encoding; the website must not read a Content-Length.
            chunked = _header(headers, b"transfer-encoding") is not None
        else:
            upgrade, chunked = None, False
        edge = self.settings.forwarded_headers == "replace"
        out: List[Tuple[bytes, bytes]] = []
        forwarded_for: List[bytes] = []
        seen: Dict[bytes, bytes] = {}
        for name, value in headers:
            if name not in _REQUEST_SPECIAL and name not in named:
                out.append((name, value))  # (most headers: one test, not four)
                continue
            if name in _HOP_BY_HOP and name != b"transfer-encoding" or name in named:
                continue
            if chunked and name == b"content-length":
                continue
            if name in _FORWARDED:
                if name == b"x-forwarded-for":
                    forwarded_for.append(value)
                else:
                    seen.setdefault(name, value)
                continue
            if name == b"host" and spec.host_header_rewrite:
                value = spec.host_header_rewrite.encode("ascii")
            out.append((name, value))
        peer = self._peer
        scheme = self._scheme
        if edge or not seen:
            out += ((b"x-forwarded-for", peer if edge or not forwarded_for else b", ".join(forwarded_for + [peer])),
                    (b"x-real-ip", peer), (b"x-forwarded-proto", scheme), (b"x-forwarded-host", raw_host))
        else:
            out.append((b"x-forwarded-for", b", ".join(forwarded_for + [peer]) if forwarded_for else peer))
            out.append((b"x-real-ip", seen.get(b"x-real-ip", peer)))
            out.append((b"x-forwarded-proto", seen.get(b"x-forwarded-proto", scheme)))
            out.append((b"x-forwarded-host", seen.get(b"x-forwarded-host", raw_host)))
        if upgrade is not None:
            out.append((b"connection", b"upgrade"))
            out.append((b"upgrade", upgrade))
        for name, value in spec.request_headers:
            key = name.lower().encode("ascii")
            out = [(n, v) for n, v in out if n != key]
            out.append((key, value.encode("utf-8")))
        return out

    def _upstream_for(self, tunnel: "LiveTunnel") -> Optional[_Upstream]:
        """The stream to ``tunnel``: the open one if it serves that tunnel and is ready, else a new one."""
        upstream = self.upstream
        if upstream is not None:
            if (upstream.tunnel is tunnel and not upstream.dead and not upstream.eof
                    and (not upstream.h11_used
                         or upstream.h11.our_state is h11.IDLE and upstream.h11.their_state is h11.IDLE)):
                return upstream
            upstream.close("the next request goes elsewhere")
        limited = tunnel.limit(self.peer_host)
        if limited is not None:
            self.limited = limited
            return None
        session = tunnel.session
        peer = self.transport.getPeer()
        stream = session.open_stream(tunnel.name, f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', 0)}")
        if stream is None:
            tunnel.meter.refuse()
            return None
        upstream = _Upstream(self, tunnel, stream)
        self.upstream = upstream
        tunnel.meter.open(stream)
        tunnel.gate.opened(stream, self.peer_host)
        tunnel.streams[stream] = upstream  # type: ignore[assignment]
        stream.attach(upstream)
        return upstream

    def forget(self, upstream: _Upstream) -> None:
        """``upstream``'s stream is closed: count it into its tunnel and stop using it."""
        upstream.dead = True
        tunnel = upstream.tunnel
        stream = upstream.stream
        tunnel.streams.pop(stream, None)
        tunnel._activity.pop(stream, None)
        tunnel.meter.close(stream)
        tunnel.gate.closed(stream)
        if self._producer is upstream:
            self.set_producer(upstream, None)
        if upstream is self.upstream:
            self.upstream = None
            self.resume("window")

    # -- responses --------------------------------------------------------------

    def _response_timeout(self) -> None:
        upstream = self.exchange
        if upstream is None or self.response_started:
            return
        self.front.refuse("timeout", upstream.tunnel)
        self._exchange_done()
        upstream.close("no response in vhostHTTPTimeout")
        self._answer(504, "The website did not answer in time.", close=True)

    def response_events(self, upstream: _Upstream) -> None:
        """Events of the response ``upstream`` parsed: pass them on to the visitor."""
        while not self.closed:
            if upstream is not self.exchange:
                if upstream.h11.their_state is not h11.IDLE:
                    upstream.close("an answer nobody asked for")
                return
            try:
                event = upstream.h11.next_event()
            except h11.RemoteProtocolError:
                self._bad_upstream(upstream, "its local service sent a response this server cannot read")
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                return
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self._switch(upstream, event)
                    return
                self._send(h11.InformationalResponse(status_code=event.status_code,
                                                     headers=_response_headers(event.headers, ()),
                                                     reason=event.reason))
            elif isinstance(event, h11.Response):
                self.response_started = True
                self._waiting = None
                spec = upstream.tunnel.spec
                self._send(h11.Response(status_code=event.status_code,
                                        headers=_response_headers(event.headers, spec.response_headers),
                                        reason=event.reason))
            elif isinstance(event, h11.Data):
                self._send(event)
            elif isinstance(event, h11.EndOfMessage):
                self._send(_END)
                self._exchange_done()
                if upstream.h11.our_state is h11.DONE and upstream.h11.their_state is h11.DONE:
                    upstream.h11.start_next_cycle()
                else:
                    upstream.close("the local service ended its connection")
                self._maybe_next_cycle()
                return
            elif isinstance(event, h11.ConnectionClosed):
                return

    def fast_response(self, upstream: _Upstream, data: bytes) -> None:
        """Bytes of a response that takes the fast way (see the module docstring): head read here, body counted."""
        if upstream is not self.exchange or self.closed:
            upstream.fast = False
            upstream.close("an answer nobody asked for")
            return
        head = upstream.head
        if head is not None:
            if head:
                # A head in pieces: collected in a bytearray (bytes joined again each time would be quadratic).
                head += data
                end = head.find(b"\r\n\r\n", max(0, len(head) - len(data) - 3))
                data = bytes(head) if end >= 0 else data
            else:
                end = data.find(b"\r\n\r\n")
                head = upstream.head = bytearray(data) if end < 0 else head
            if end < 0:
                if len(head) > self.settings.max_header_bytes:
                    self._slow_response(upstream, bytes(head))  # h11 says what is wrong with it (502)
                return
            out = _fast_head(data, end, self._fast_close and self._fast_raw is not None)
            if out is None:
                self._slow_response(upstream, data)
                return
            pieces, length, upstream.closes = out
            self.response_started = True
            self._waiting = None
            upstream.head = None
            start = end + 4
            extra = len(data) - start - length
            # Head and body (as much of it as came) in one write, joined once.
            if extra <= 0:
                pieces.append(data[start:])
                self.transport.write(b"".join(pieces))
                if extra < 0:
                    upstream.remaining = -extra
                    return
                self._fast_done(upstream, b"")
                return
            pieces.append(data[start:start + length])
            self.transport.write(b"".join(pieces))
            self._fast_done(upstream, data[start + length:])
            return
        remaining = upstream.remaining
        if len(data) < remaining:
            upstream.remaining = remaining - len(data)
            self.transport.write(data)
            return
        self.transport.write(data[:remaining] if len(data) > remaining else data)
        upstream.remaining = 0
        self._fast_done(upstream, data[remaining:])

    def _slow_response(self, upstream: _Upstream, head: bytes) -> None:
        """The head is not one for the fast way: h11 reads it, from its first byte."""
        upstream.head, upstream.fast = None, False
        upstream.tell_h11()
        self._replay()
        upstream.h11.receive_data(head)
        self.response_events(upstream)

    def _fast_done(self, upstream: _Upstream, extra: bytes) -> None:
        """
        A fast response is out: the next request.  The stream's h11
        connection saw none of it (write_request); the visitor's did if it
        read the request, and then starts its next cycle as a fresh one.
        """
        upstream.fast = False
        upstream.written = None
        self._exchange_done()
        if extra:
            upstream.close("an answer nobody asked for")
        elif upstream.closes:
            upstream.close("the local service ended its connection")
        if self._fast_raw is not None:
            self._fast_raw = None
            if self._fast_close:
                self._ahead = b""
                self._cancel_timers()
                self.transport.loseConnection()
                return
            self._next_cycle()
            return
        ahead, closed = self.h11.trailing_data
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.settings.max_header_bytes)
        if ahead:
            self.h11.receive_data(ahead)
        if closed:
            self.h11.receive_data(b"")
        self._next_cycle()

    def _send(self, event: Any) -> None:
        try:
            data = self.h11.send(event)
        except h11.LocalProtocolError:
            self.transport.abortConnection()
            return
        if data:
            self.transport.write(data)

    def _bad_upstream(self, upstream: _Upstream, why: str) -> None:
        tunnel = upstream.tunnel
        started = self.response_started
        self._exchange_done()
        upstream.close(why)
        if started:
            self.transport.abortConnection()  # a truncated response must not look complete
            return
        self.front.refuse("bad_gateway", tunnel)
        self._answer(502, f"The website cannot be reached: {why}.", close=True)

    def upstream_gone(self, upstream: _Upstream) -> None:
        """The client closed ``upstream``'s stream (its local service closed, refused, or the client left)."""
        if upstream is self.exchange and not self.closed:
            reason = upstream.stream.close_reason or ""
            failure = getattr(upstream.stream, "failure", None)  # (a node link's: gotaxy.server.forward)
            if failure is not None:
                why = failure
            elif reason.startswith(CLOSE_ERROR_PREFIX):
                why = f"its local service is not answering ({reason[len(CLOSE_ERROR_PREFIX):][:120]})"
                upstream.tunnel.connect_failure = reason[len(CLOSE_ERROR_PREFIX):][:200]
            else:
                why = "its local service closed the connection"
            self._bad_upstream(upstream, why)
            return
        if not upstream.dead:
            upstream.dead = True
            upstream.stream.local_closed("done")
            self.forget(upstream)

    def _switch(self, upstream: _Upstream, event: h11.InformationalResponse) -> None:
        """The local service accepted an upgrade: from now on the connection is a splice."""
        self.response_started = True
        self._waiting = None
        try:
            data = self.h11.send(h11.InformationalResponse(status_code=101, headers=event.headers, reason=event.reason))
        except h11.LocalProtocolError:
            self._bad_upstream(upstream, "it switched protocols without being asked")
            return
        self.transport.write(data)
        self.switched = True
        upstream.switched = True
        self._cancel_timers()
        from_local, _ = upstream.h11.trailing_data
        from_visitor, _ = self.h11.trailing_data
        if from_local:
            self.transport.write(from_local)
        if from_visitor:
            upstream.stream.write(from_visitor)
        self.resume("pipelined")

    def _exchange_done(self) -> None:
        upstream = self.exchange
        if upstream is None:
            return
        self.exchange = None
        # (get and pop: Counter's own __missing__ and __delitem__ are Python calls, twice per request)
        active = self.front.active
        key = upstream.key
        left = active.get(key, 0) - 1
        if left > 0:
            active[key] = left
        else:
            active.pop(key, None)
        self._waiting = None

    def _maybe_next_cycle(self) -> None:
        """Both sides of this request are done: read the next one (or close, if the visitor asked)."""
        if self.closed or self.switched:
            return
        conn = self.h11
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            if conn.our_state in (h11.DONE, h11.MUST_CLOSE):
                self.transport.loseConnection()
            return
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._next_cycle()

    def _next_cycle(self) -> None:
        if self.closed:
            return
        self.discarding = False
        self._cycle_bytes = 0
        self._set_deadline(_REQUEST, KEEPALIVE_TIMEOUT)
        if self._paused:
            self.resume("pipelined")
        if not self._fast_parse:
            ahead, closed = self.h11.trailing_data
            if ahead or closed:
                self._request_events()
                return
            self._fast_parse = True  # h11 is idle and holds nothing: _fast_request reads the next one
        ahead, self._ahead = self._ahead, b""
        if ahead:
            self.dataReceived(ahead)

    # -- answers from the front itself ------------------------------------------

    def _answer(self, status: int, detail: str, extra: Optional[List[Tuple[bytes, bytes]]] = None,
                close: bool = False) -> None:
        """Answer the current request here (an error page); the rest of its body is read and dropped."""
        self._answer_body(status, self.front.page(status, detail), b"text/html; charset=utf-8", extra, close)

    def _answer_body(self, status: int, body: bytes, content_type: bytes,
                     extra: Optional[List[Tuple[bytes, bytes]]] = None, close: bool = False) -> None:
        self._replay()
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        headers += extra or []
        # A body still coming is not read to its end for nothing: the connection closes.
        close = close or (self.has_body and self.h11.their_state is not h11.DONE)
        if close:
            headers.append((b"connection", b"close"))
        self.discarding = True
        try:
            data = self.h11.send(h11.Response(status_code=status, headers=headers))
            data += self.h11.send(h11.Data(data=body)) + self.h11.send(_END)
        except h11.LocalProtocolError:
            self._fatal(status, "The request cannot be answered.")
            return
        self.transport.write(data)
        if close:
            self.transport.loseConnection()
        else:
            self._maybe_next_cycle()

    def _fatal(self, status: int, detail: str) -> None:
        """Answer and close, whatever state the parser is in."""
        body = self.front.page(status, detail)
        self.transport.write(
            f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, '')}\r\ncontent-type: text/html; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode("ascii") + body
        )
        self.transport.loseConnection()
        self.closed = True
        self._cancel_timers()


def _host_of(raw: bytes) -> str:
    """The host name of a Host header, lower case, without its port."""
    text = raw.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text.partition("]")[0] + "]"
    return text.rpartition(":")[0] if ":" in text else text.rstrip(".")


def _plain_rules(spec: Any) -> bool:
    """The tunnel's request header rules set only printable ASCII (what h11 would check when it writes them)."""
    values = [value for _, value in spec.request_headers] + [spec.host_header_rewrite or ""]
    names = [name for name, _ in spec.request_headers]
    return (all(value.isascii() and value.isprintable() and value == value.strip() for value in values)
            and all(_FAST_NAME.fullmatch(name.encode("utf-8")) for name in names))


def _fast_head(data: bytes, end: int, close: bool = False) -> Optional[Tuple[List[Any], int, bool]]:
    """
    A response head (``data[:end]``) for the fast way: (the pieces of the
    status line and headers for the visitor, to be joined, with
    ``Connection: close`` if ``close``;
    Content-Length; the local service closes its connection after it), or
    None for h11 to read it (anything else than one plain Content-Length on
    HTTP/1.1, or a ``Connection`` header that names other headers).  The
    head is checked by one regular expression (``_FAST_RESPONSE``) and only
    the lines that matter to the way (``_FAST_SPECIAL``, found in a
    lower-cased copy) are looked at one by one; what is kept is sliced from
    ``data`` as the local service wrote it.
    """
    if _FAST_RESPONSE.fullmatch(data, 0, end) is None or data[9:12] in (b"204", b"304"):
        return None
    low = data[:end].lower()
    length = -1
    closes = False
    out: List[bytes] = []
    kept = 0  # where the head's next piece to keep begins
    for special in _FAST_SPECIAL.finditer(low):
        name = special.group(1)
        start = special.end()
        line_end = low.find(b"\r\n", start)
        if line_end < 0:
            line_end = end
        if name == b"content-length":
            value = low[start:line_end].strip()
            if length >= 0 or not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
            continue  # (kept: it is the body's length for the visitor too)
        if name == b"transfer-encoding":
            return None
        if name == b"connection":
            for token in low[start:line_end].split(b","):
                token = token.strip()
                if token == b"close":
                    closes = True
                elif token != b"keep-alive" and token:
                    return None  # it names headers to drop as hop-by-hop: h11's way does that
        out.append(data[kept:special.start()])
        kept = line_end
    if length < 0:
        return None
    out.append(data[kept:end])
    out.append(b"\r\nconnection: close\r\n\r\n" if close else b"\r\n\r\n")
    return out, length, closes


def _connection_tokens(headers: List[Tuple[bytes, bytes]]) -> frozenset:
    """Headers a ``Connection`` header names: hop-by-hop too."""
    named = set()
    for name, value in headers:
        if name == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    named.discard(b"upgrade")
    return frozenset(named)


def _response_headers(headers: Any, rules: Tuple[Tuple[str, str], ...]) -> List[Tuple[bytes, bytes]]:
    """A response's headers for the visitor: the hop's own dropped (h11 frames it again), the tunnel's rules set."""
    headers = list(headers)
    named = _connection_tokens(headers)
    out = [(n, v) for n, v in headers if n not in _HOP_BY_HOP and n not in named]
    for name, value in rules:
        key = name.lower().encode("ascii")
        out = [(n, v) for n, v in out if n != key]
        out.append((key, value.encode("utf-8")))
    return out


def _credentials_match(credentials: Optional[Tuple[str, str]], user: str, password: str) -> bool:
    """Both compared in constant time, and both always compared."""
    given_user, given_password = credentials if credentials is not None else ("", "")
    user_ok = hmac.compare_digest(given_user.encode("utf-8"), user.encode("utf-8"))
    password_ok = hmac.compare_digest(given_password.encode("utf-8"), password.encode("utf-8"))
    return credentials is not None and user_ok and password_ok
