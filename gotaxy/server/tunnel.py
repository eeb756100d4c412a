# -*- test-case-name: tests.test_server_tunnel -*-
"""
A tunnel's public side: the connections users open to its public address
(the proxy type's listener, see ``gotaxy.proxy``).  Each accepted connection
becomes a stream on the owning client's control connection
(``MuxProtocol.open_stream``) and is spliced to it by ``StreamRelay``.

A connection opens its stream as soon as it is made (``TCP``), or, for a
front that must read before it knows where a connection goes (the Host
header, the TLS SNI), when the front calls ``open_stream(preface)``: the
bytes already read are then sent first, once (after the PROXY protocol
header, for a tunnel with ``transport.proxyProtocolVersion``: see
``gotaxy.proxy.proxyprotocol``), and the stream is spliced
to the socket from there on, so the data path is the same in both cases.

Two limits keep one tunnel from starving the client's others:

* A public connection opens a stream only within the tunnel's fair share of
  the client's streams (``MuxProtocol.stream_refusal``, explained in
  ``gotaxy.mux``); beyond it the connection is closed at once.  Refusals
  are reported at most once per ``REFUSAL_REPORT_INTERVAL`` per tunnel, with
  the tunnel's name and how many were refused, in the server's log and to
  the client (a ``connections_refused`` control message, for clients that
  announce it at login), so a flood costs one line, not one per connection.
* The tunnel's own connection limits (``transport.maxConnections``,
  ``transport.maxConnectionsPerIP``, ``transport.connectionRatePerIP``:
  ``gotaxy.server.limits``) are checked by ``LiveTunnel.limit`` just
  before a stream opens, for every type; a refusal is counted and reported
  the same way.
* A public connection that carries no data either way for
  ``tunnelIdleTimeout`` seconds is closed (``LiveTunnel.close_idle``, run
  by ``ServerCore`` a few times per timeout), so idle connections give
  their streams back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import attrs
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer
from gotaxy.relay import StreamRelay, large_sends, set_no_delay
from gotaxy.server.limits import PER_SOURCE, REASONS, ConnectionGate, ConnectionLimits
from gotaxy.server.traffic import Reading, TrafficMeter
from gotaxy.wire import CLOSE_ERROR_PREFIX

if TYPE_CHECKING:
    from gotaxy.proxy.address import PublicAddress
    from gotaxy.proxy.base import Exposure, ProxySpec
    from gotaxy.server.control import ServerControlProtocol

#: At most one report (log line, message to the client) of refused public
#: connections per tunnel in this many seconds.
REFUSAL_REPORT_INTERVAL = 10.0

#: Longest failure reason from the client kept for a tunnel's shown state.
MAX_SHOWN_REASON = 200



@attrs.define(eq=False)
class LiveTunnel:
    """A tunnel that is up: its public address is served by the server."""

    client: str
    name: str
    #: what it was asked with (its proxy type's spec)
    spec: "ProxySpec"
    session: "ServerControlProtocol"
    #: where the public reaches it, once its proxy type has exposed it
    address: Optional["PublicAddress"] = None
    #: how to stop serving it (from ``ProxyType.expose``)
    exposure: Optional["Exposure"] = None
    source: str = "client"  #: "client" (its own config) or "server" (an operator)
    #: open public connections: their stream -> the connection
    streams: Dict[Any, "PublicConnection"] = attrs.Factory(dict)
    #: the (client, name) meter, which outlives this tunnel (``gotaxy.server.traffic``);
    #: the core sets it (``count_into``) as the tunnel comes up
    meter: TrafficMeter = attrs.Factory(TrafficMeter)
    #: Set while the client's health check finds the local service down.
    health_failure: Optional[str] = None
    #: Why the last public connection failed on the client's side (its local
    #: service refused, say); cleared by the next one that does not fail.
    connect_failure: Optional[str] = None
    #: the meter's counts when this tunnel came up, so that it shows its own
    _at_start: Reading = attrs.field(init=False)
    #: stream -> (bytes both ways when last looked at, when that changed)
    _activity: Dict[Any, Tuple[int, float]] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        self._at_start = self.meter.reading()

    def count_into(self, meter: TrafficMeter) -> None:
        """Count into ``meter`` (its (client, name) one) from now on; call it before a connection comes."""
        self.meter = meter
        self._at_start = meter.reading()

    @property
    def key(self) -> Tuple[str, str]:
        return (self.client, self.name)

    def admits(self, host: str, routed: bool = False) -> bool:
        """
        May a visitor from ``host`` reach this tunnel (bans, ``access.tunnels``
        and the tunnel's own rules: ``gotaxy.server.access``)?  ``routed``:
        a front's listener checked the first two already.
        """
        access = getattr(getattr(self.session, "core", None), "access", None)
        return access is None or access.admits_tunnel(self.client, self.name, host, routed)

    @property
    def gate(self) -> ConnectionGate:
        """Its connections by source and its refusals by reason, kept on its meter (which outlives it)."""
        gate = self.meter.gate
        if gate is None:
            gate = self.meter.gate = ConnectionGate()
        return gate  # type: ignore[no-any-return]

    def limit(self, host: str, spoofable: bool = False) -> Optional[str]:
        """
        Why a new connection from ``host`` is refused by this tunnel's
        connection limits (``gotaxy.server.limits``), counted and reported;
        or None: it may open (the caller tells ``gate.opened`` once it has).
        ``spoofable``: ``host`` is a datagram's source, which anybody can
        forge, so its refusals do not count towards a ban.
        """
        core = getattr(self.session, "core", None)
        limits = ConnectionLimits.of(self.spec, getattr(core, "tunnel_limits", None))
        if not limits:
            return None
        reason = self.gate.check(host, limits, core.reactor.seconds() if core is not None else 0.0)
        if reason is None:
            return None
        self.meter.refuse()
        report_refusal(self, REASONS[reason])
        access = getattr(core, "access", None)
        if reason in PER_SOURCE and access is not None and not spoofable:
            from gotaxy.server.access import FLOOD

            access.failure(FLOOD, host, f"tunnel {self.client}/{self.name}")
        return reason

    @property
    def opened(self) -> int:
        """Public connections accepted since the tunnel came up."""
        return self.meter.opened - self._at_start.opened

    @property
    def refused(self) -> int:
        """Public connections refused (client at its stream limit) since the tunnel came up."""
        return self.meter.refused - self._at_start.refused

    @property
    def rate_in(self) -> float:
        """Bytes/s from public users to the client, sampled every second."""
        return self.meter.rate_in

    @property
    def rate_out(self) -> float:
        return self.meter.rate_out

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def local_addr(self) -> str:
        """Where the client's side leads, for people (``127.0.0.1:22``)."""
        return self.spec.local_description

    @property
    def connections(self) -> int:
        """Public connections open now."""
        return len(self.streams)

    def totals(self) -> Tuple[int, int]:
        """Bytes in and out since the tunnel came up, open connections included."""
        bytes_in, bytes_out = self.meter.totals()
        return bytes_in - self._at_start.bytes_in, bytes_out - self._at_start.bytes_out

    def close_idle(self, now: float, timeout: float) -> int:
        """
        Close the public connections that carried nothing since ``timeout``
        seconds before ``now``; return how many were closed.
        """
        closed = 0
        activity = self._activity
        for stream, connection in list(self.streams.items()):
            moved = stream.bytes_in + stream.bytes_out
            seen = activity.get(stream)
            if seen is None or seen[0] != moved:
                activity[stream] = (moved, now)
            elif now - seen[1] >= timeout and connection.close_idle():
                closed += 1
        return closed


class PublicConnection(StreamRelay):
    """
    One public connection to a tunnel.  With ``tunnel`` given it opens its
    stream when made; a front that routes by what it reads first makes it
    with ``tunnel=None``, reads, and then calls ``open_stream``.
    """

    log = Logger(observer=gotaxy_observer)

    def __init__(self, tunnel: Optional[LiveTunnel]) -> None:
        super().__init__()
        self.tunnel: Optional[LiveTunnel] = tunnel
        #: Made by a front without a tunnel: its tunnel's rules are checked when it is routed.
        self.routed_by_front = tunnel is None
        self.idle_closing = False

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        large_sends(self.transport)
        if self.tunnel is not None:
            self.open_stream(self.tunnel)

    def open_stream(self, tunnel: LiveTunnel, preface: bytes = b"") -> bool:
        """
        Open the stream to ``tunnel``'s client and splice this connection
        to it; ``preface`` (bytes a front read to route the connection) goes
        first.  False (and the connection closed) if the client cannot take
        another stream.
        """
        self.tunnel = tunnel
        session = tunnel.session
        peer = self.transport.getPeer()
        if self.routed_by_front and not tunnel.admits(peer.host, routed=True):
            # A front routed it here: the tunnel's own address rules are checked now.
            self.tunnel = None
            self.transport.abortConnection()
            return False
        if tunnel.limit(peer.host) is not None:  # counted and reported there
            self.tunnel = None
            self.transport.abortConnection()
            return False
        stream = session.open_stream(tunnel.name, f"{peer.host}:{peer.port}")
        if stream is None:
            tunnel.meter.refuse()
            report_refusal(tunnel, session.stream_refusal(tunnel.name) or "the client cannot take it")
            self.transport.loseConnection()
            return False
        tunnel.meter.open(stream)
        tunnel.gate.opened(stream, peer.host)
        tunnel.streams[stream] = self
        version = tunnel.spec.proxy_protocol_version
        if version is not None:
            # The visitor's address for the local service, before anything the visitor sent.
            from gotaxy.proxy.proxyprotocol import header  # (gotaxy.proxy imports this module)

            preface = header(version, peer, self.transport.getHost()) + preface
        if preface:
            stream.write(preface)
        self.connect_stream(stream)
        return True

    def close_idle(self) -> bool:
        """Close this connection for being idle; False if it is closing already."""
        if self.idle_closing or self.transport is None:
            return False
        self.idle_closing = True
        # The stream is this transport's producer; a registered producer
        # would postpone the close.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        return True

    def connectionLost(self, reason: Any = None) -> None:
        stream = self.stream
        super().connectionLost(reason)
        tunnel = self.tunnel
        if stream is None or tunnel is None:
            return
        tunnel.streams.pop(stream, None)
        tunnel._activity.pop(stream, None)
        tunnel.meter.close(stream)
        tunnel.gate.closed(stream)
        if stream.close_reason and stream.close_reason.startswith(CLOSE_ERROR_PREFIX):
            reason = stream.close_reason[len(CLOSE_ERROR_PREFIX) :]
            self.log.warn(
                "tunnel {client}/{tunnel}: connection from {peer} closed: {reason}",
                client=tunnel.client,
                tunnel=tunnel.name,
                peer=stream.peer,
                reason=reason,
            )
            tunnel.connect_failure = reason[:MAX_SHOWN_REASON]
            tunnel.session.core.tunnel_error(tunnel, reason)
        else:
            tunnel.connect_failure = None


_log = Logger(observer=gotaxy_observer)


def report_refusal(tunnel: LiveTunnel, reason: str) -> None:
    """
    A public connection to ``tunnel`` was refused for ``reason``: one log
    line and one message to its client per tunnel per
    ``REFUSAL_REPORT_INTERVAL`` (the core's throttle), with the count.
    """
    core = getattr(tunnel.session, "core", None)
    if core is None:
        return
    count = core.refusals(tunnel.key)
    if count is None:
        return  # reported less than an interval ago
    _log.warn(
        "tunnel {client}/{tunnel}: refused {count} public connection(s) (said at most once per "
        "{interval:g} s): {reason}",
        client=tunnel.client,
        tunnel=tunnel.name,
        count=count,
        interval=REFUSAL_REPORT_INTERVAL,
        reason=reason,
    )
    tunnel.session.connections_refused(tunnel.name, count, reason)


class PublicFactory(ServerFactory):
    noisy = False

    def __init__(self, tunnel: LiveTunnel) -> None:
        self.tunnel = tunnel

    def buildProtocol(self, addr: Any) -> Optional[PublicConnection]:
        # Before anything else: a banned or denied visitor gets no connection at all.
        if not self.tunnel.admits(getattr(addr, "host", "")):
            return None
        return PublicConnection(self.tunnel)
