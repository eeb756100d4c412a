# -*- test-case-name: tests.test_server -*-
"""
A tunnel's public side: the listening port and the connections users open
to it.  Each accepted connection becomes a stream on the owning client's
control connection (``MuxProtocol.open_stream``) and is spliced to it by
``StreamRelay``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Set, Tuple

import attrs
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer
from gotaxy.relay import StreamRelay, set_no_delay
from gotaxy.wire import CLOSE_ERROR_PREFIX

if TYPE_CHECKING:
    from gotaxy.server.control import ServerControlProtocol



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
    streams: Set[Any] = attrs.Factory(set)  #: open public connections' streams
    opened: int = 0  #: public connections accepted since the tunnel came up
    refused: int = 0  #: public connections refused (client at its stream limit)
    bytes_in: int = 0  #: bytes from public users to the client (closed connections)
    bytes_out: int = 0  #: bytes from the client to public users (closed connections)
    rate_in: float = 0.0  #: bytes/s, sampled every second
    rate_out: float = 0.0
    _last_in: int = 0
    _last_out: int = 0

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

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        tunnel = self.tunnel
        peer = self.transport.getPeer()
        stream = tunnel.session.open_stream(tunnel.name, f"{peer.host}:{peer.port}")
        if stream is None:
            tunnel.refused += 1
            self.log.warn(
                "tunnel {client}/{tunnel}: refused a connection from {peer}: the client has "
                "{n} connections open, the most one client may have",
                client=tunnel.client,
                tunnel=tunnel.name,
                peer=peer.host,
                n=len(tunnel.session.streams),
            )
            self.transport.loseConnection()
            return
        tunnel.opened += 1
        tunnel.streams.add(stream)
        self.connect_stream(stream)

    def connectionLost(self, reason: Any = None) -> None:
        stream = self.stream
        super().connectionLost(reason)
        if stream is None:
            return
        tunnel = self.tunnel
        tunnel.streams.discard(stream)
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
            tunnel.session.core.tunnel_error(tunnel, reason)


class PublicFactory(ServerFactory):
    noisy = False

    def __init__(self, tunnel: LiveTunnel) -> None:
        self.tunnel = tunnel

    def buildProtocol(self, addr: Any) -> Optional[PublicConnection]:
        return PublicConnection(self.tunnel)
