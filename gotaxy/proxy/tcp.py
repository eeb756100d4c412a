# -*- test-case-name: tests.test_proxy -*-
"""
``type = "tcp"``: one public TCP port per tunnel, each public connection a
stream to ``localIP:localPort`` on the client.

frp's keys and meanings: ``localIP`` (default 127.0.0.1), ``localPort``,
``remotePort`` (0: the server picks, from ``allowPorts``, and the tunnel
keeps that port across reconnects and restarts; see ``gotaxy.ports`` for
the rules).  No front: each tunnel listens on its own port, and a public
connection opens its stream at once (no preface).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

import attrs
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from gotaxy.logs import gotaxy_observer
from gotaxy.mux import Stream
from gotaxy.oslimits import fd_exhaustion, is_fd_exhaustion, listen_backlog, watch_accepts
from gotaxy.proxy.address import PublicAddress
from gotaxy.proxy.base import ExposeContext, Exposure, ProxySpec, ProxyType, TunnelRefused
from gotaxy.proxy.proxyprotocol import PROXY_PROTOCOL, check_version
from gotaxy.proxy.fields import (
    LOCAL_IP, LOCAL_PORT, REMOTE_PORT, StreamLimited, check_local_ip, check_port, host_port, is_ip, parse_keys,
)
from gotaxy.relay import StreamRelay

if TYPE_CHECKING:
    from gotaxy.server.tunnel import LiveTunnel

#: Seconds to wait for a local service to accept a connection.
LOCAL_CONNECT_TIMEOUT = 10.0

#: Ports tried for ``remotePort = 0`` when the operating system picks one
#: another tunnel holds (reserved while its client is offline).
MAX_PICK_ATTEMPTS = 8


@attrs.frozen
class TcpSpec(StreamLimited, ProxySpec):
    """A ``type = "tcp"`` tunnel: frp's ``localIP``, ``localPort`` and ``remotePort`` (and the rules of ``StreamLimited``)."""

    type: ClassVar[str] = "tcp"

    local_port: int = attrs.field(validator=check_port("localPort", 1))
    local_ip: str = attrs.field(default="127.0.0.1", validator=check_local_ip)
    remote_port: int = attrs.field(default=0, validator=check_port("remotePort", 0, " (0 lets the server pick)"))
    proxy_protocol_version: Optional[str] = attrs.field(default=None, validator=check_version)

    def to_keys(self) -> Dict[str, Any]:
        keys: Dict[str, Any] = {"type": "tcp", "localIP": self.local_ip, "localPort": self.local_port,
                                "remotePort": self.remote_port}
        if self.proxy_protocol_version is not None:
            keys["transport.proxyProtocolVersion"] = self.proxy_protocol_version
        keys.update(self.rule_keys())
        return keys

    @property
    def local_description(self) -> str:
        return host_port(self.local_ip, self.local_port)

    @property
    def requested(self) -> Optional[PublicAddress]:
        return PublicAddress.tcp(self.remote_port) if self.remote_port else None

    @property
    def local_endpoint(self) -> Optional[Tuple[str, int]]:
        return (self.local_ip, self.local_port)


#: frp's key -> TcpSpec's attribute.
_ATTRIBUTES = {"localIP": "local_ip", "localPort": "local_port", "remotePort": "remote_port",
               "transport.proxyProtocolVersion": "proxy_protocol_version", **TcpSpec.RULE_ATTRIBUTES}


class _LocalServiceFactory(ClientFactory):
    """
    Connects one stream to the local service.  Quiet (there is one per
    tunneled connection) and used with ``reactor.connectTCP`` for IP
    literals, which costs far less per connection than an endpoint.
    """

    noisy = False

    def __init__(self, stream: Stream, failed: Callable[[Failure], None]) -> None:
        self.stream = stream
        self.failed = failed

    def buildProtocol(self, addr: Any) -> StreamRelay:
        return StreamRelay(self.stream)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failed(reason)


class TcpProxy(ProxyType):
    name = "tcp"
    label = "TCP"
    fields = (LOCAL_IP, LOCAL_PORT, REMOTE_PORT, PROXY_PROTOCOL) + TcpSpec.RULE_FIELDS
    log = Logger(observer=gotaxy_observer)

    def parse(self, keys: Mapping[str, Any]) -> TcpSpec:
        return parse_keys("tcp", self.fields, keys, TcpSpec, _ATTRIBUTES)  # type: ignore[no-any-return]

    async def expose(self, tunnel: LiveTunnel, context: ExposeContext) -> Exposure:
        spec = tunnel.spec
        assert isinstance(spec, TcpSpec)
        claims = context.claims
        reserved = claims.reserved if claims.reserved is not None and claims.reserved.scheme == "tcp" else None
        wanted = spec.remote_port or (reserved.port if reserved is not None else 0)
        if wanted:
            address = PublicAddress.tcp(wanted)
            await claims.claim(address)
            try:
                listening = self._listen(tunnel, wanted, context)
            except TunnelRefused:
                claims.release(address)
                raise
            return self._exposure(address, listening)
        if claims.any_port:
            for _ in range(MAX_PICK_ATTEMPTS):
                listening = self._listen(tunnel, 0, context)
                address = PublicAddress.tcp(listening.getHost().port)
                try:
                    await claims.claim(address)
                except TunnelRefused:
                    listening.stopListening()
                    continue
                return self._exposure(address, listening)
            raise TunnelRefused("no free port: every port the system offered is held by another tunnel; try again")
        for port in claims.port_candidates(await claims.held_ports("tcp")):
            address = PublicAddress.tcp(port)
            try:
                await claims.claim(address)
            except TunnelRefused:
                continue
            try:
                return self._exposure(address, self._listen(tunnel, port, context))
            except TunnelRefused:
                claims.release(address)
                continue
        raise TunnelRefused(
            f"no free port left in allowPorts ({format_ranges(context.config)}); ask the operator to widen it"
        )

    @staticmethod
    def _exposure(address: PublicAddress, listening: Any) -> Exposure:
        return Exposure(address=address, close=listening.stopListening)

    def _listen(self, tunnel: LiveTunnel, port: int, context: ExposeContext) -> Any:
        from gotaxy.server.tunnel import PublicFactory  # the server's side: a client never imports it

        try:
            listening = context.reactor.listenTCP(
                port, PublicFactory(tunnel), backlog=listen_backlog(),
                interface=context.config.effective_proxy_bind_addr(),
            )
        except CannotListenError as e:
            if is_fd_exhaustion(e):
                self.log.error(
                    "tunnel {client}/{tunnel}: cannot listen on port {port}: the server is {reason}",
                    client=tunnel.client, tunnel=tunnel.name, port=port, reason=fd_exhaustion(),
                )
                raise TunnelRefused(f"port {port} cannot be opened: the server is {fd_exhaustion()}") from None
            if getattr(e.socketError, "errno", None) == errno.EADDRINUSE:
                raise TunnelRefused(f"port {port} is busy on the server") from None
            raise TunnelRefused(f"port {port} cannot be opened on the server: {e.socketError}") from None
        watch_accepts(listening, context.out_of_descriptors)
        return listening

    def connect(self, reactor: Any, spec: ProxySpec, stream: Stream, failed: Callable[[Failure], None]) -> None:
        assert isinstance(spec, TcpSpec)
        connect_local(reactor, spec.local_ip, spec.local_port, stream, failed)


def connect_local(reactor: Any, host: str, port: int, stream: Stream, failed: Callable[[Failure], None]) -> None:
    """Client side of every type that ends in a TCP service: splice ``stream`` to ``host:port``."""
    factory = _LocalServiceFactory(stream, failed)
    if is_ip(host):
        reactor.connectTCP(host, port, factory, timeout=LOCAL_CONNECT_TIMEOUT)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=LOCAL_CONNECT_TIMEOUT)
        endpoint.connect(factory).addErrback(failed)


def format_ranges(config: Any) -> str:
    from gotaxy.config import format_allow_ports
    from gotaxy.ports import DEFAULT_ALLOW_PORTS

    return format_allow_ports(config.allow_ports or DEFAULT_ALLOW_PORTS)


TCP = TcpProxy()
