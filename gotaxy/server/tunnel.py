# -*- test-case-name: tests.test_server_tunnel -*-
"""
A tunnel's public side: the listening port and the connections users open
to it.  Each accepted connection becomes a stream on the owning client's
control connection (``MuxProtocol.open_stream``) and is spliced to it by
``StreamRelay``.

Two limits keep one tunnel from starving the client's others:

* A public connection opens a stream only within the tunnel's fair share of
  the client's streams (``MuxProtocol.stream_refusal``, explained in
  ``gotaxy.mux``); beyond it the connection is closed at once.  Refusals
  are reported at most once per ``REFUSAL_REPORT_INTERVAL`` per tunnel, with
  the tunnel's name and how many were refused, in the server's log and to
  the client (a ``connections_refused`` control message, for clients that
  announce it at login), so a flood costs one line, not one per connection.
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
from gotaxy.relay import StreamRelay, set_no_delay
from gotaxy.wire import CLOSE_ERROR_PREFIX

if TYPE_CHECKING:
    from gotaxy.server.control import ServerControlProtocol

#: At most one report (log line, message to the client) of refused public
#: connections per tunnel in this many seconds.
REFUSAL_REPORT_INTERVAL = 10.0

#: Longest failure reason from the client kept for a tunnel's shown state.
MAX_SHOWN_REASON = 200



@attrs.define(eq=False)
class LiveTunnel:
    """A tunnel that is up: its port is listening on the server."""

    client: str
    name: str
    type: str
    local_addr: str
    remote_port: int
    session: "ServerControlProtocol"
    listening_port: Any = None
    source: str = "client"  #: "client" (its own config) or "server" (an operator)
    requested_port: int = 0  #: what the client asked for (0: any)
    #: open public connections: their stream -> the connection
    streams: Dict[Any, "PublicConnection"] = attrs.Factory(dict)
    opened: int = 0  #: public connections accepted since the tunnel came up
    refused: int = 0  #: public connections refused (client at its stream limit)
    bytes_in: int = 0  #: bytes from public users to the client (closed connections)
    bytes_out: int = 0  #: bytes from the client to public users (closed connections)
    rate_in: float = 0.0  #: bytes/s, sampled every second
    #: Set while the client's health check finds the local service down.
    health_failure: Optional[str] = None
    #: Why the last public connection failed on the client's side (its local
    #: service refused, say); cleared by the next one that does not fail.
    connect_failure: Optional[str] = None
    rate_out: float = 0.0
    _last_in: int = 0
    _last_out: int = 0
    #: stream -> (bytes both ways when last looked at, when that changed)
    _activity: Dict[Any, Tuple[int, float]] = attrs.Factory(dict)

    @property
    def key(self) -> Tuple[str, str]:
        return (self.client, self.name)

    @property
    def connections(self) -> int:
        """Public connections open now."""
        return len(self.streams)

    def totals(self) -> Tuple[int, int]:
        """Bytes in and out so far, open connections included."""
        bytes_in, bytes_out = self.bytes_in, self.bytes_out
        for stream in self.streams:
            bytes_in += stream.bytes_out
            bytes_out += stream.bytes_in
        return bytes_in, bytes_out

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

    def sample_rate(self, interval: float) -> None:
        bytes_in, bytes_out = self.totals()
        self.rate_in = (bytes_in - self._last_in) / interval
        self.rate_out = (bytes_out - self._last_out) / interval
        self._last_in, self._last_out = bytes_in, bytes_out


class PublicConnection(StreamRelay):
    log = Logger(observer=gotaxy_observer)

    def __init__(self, tunnel: LiveTunnel) -> None:
        super().__init__()
        self.tunnel = tunnel
        self.idle_closing = False

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        tunnel = self.tunnel
        session = tunnel.session
        peer = self.transport.getPeer()
        stream = session.open_stream(tunnel.name, f"{peer.host}:{peer.port}")
        if stream is None:
            tunnel.refused += 1
            self._report_refusal(session.stream_refusal(tunnel.name) or "the client cannot take it")
            self.transport.loseConnection()
            return
        tunnel.opened += 1
        tunnel.streams[stream] = self
        self.connect_stream(stream)

    def _report_refusal(self, reason: str) -> None:
        tunnel = self.tunnel
        count = tunnel.session.core.refusals(tunnel.key)
        if count is None:
            return  # reported less than an interval ago
        self.log.warn(
            "tunnel {client}/{tunnel}: refused {count} public connection(s) (said at most once per "
            "{interval:g} s): {reason}",
            client=tunnel.client,
            tunnel=tunnel.name,
            count=count,
            interval=REFUSAL_REPORT_INTERVAL,
            reason=reason,
        )
        tunnel.session.connections_refused(tunnel.name, count, reason)

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
        if stream is None:
            return
        tunnel = self.tunnel
        tunnel.streams.pop(stream, None)
        tunnel._activity.pop(stream, None)
        tunnel.bytes_in += stream.bytes_out
        tunnel.bytes_out += stream.bytes_in
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


class PublicFactory(ServerFactory):
    noisy = False

    def __init__(self, tunnel: LiveTunnel) -> None:
        self.tunnel = tunnel

    def buildProtocol(self, addr: Any) -> Optional[PublicConnection]:
        return PublicConnection(self.tunnel)
