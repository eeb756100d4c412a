# -*- test-case-name: tests.test_client -*-
"""
The client end of the control connection.

Order of events on each connection (``ClientService`` makes a new one after
every loss, with ``reconnect_delay`` between attempts):

1. TLS handshake.  ``handshakeCompleted`` checks the server's certificate
   (pinned fingerprint, CA file or trust-on-first-use, see ``gotaxy.tls``)
   *before* anything secret is sent.  A failed check is fatal.
2. Preamble and ``login``.  ``login_failed`` is fatal when ``loginFailExit``
   is set (the default): a wrong token cannot be fixed by retrying.
3. One ``tunnel_open`` per configured tunnel that is enabled (frp's
   ``enabled = false`` and ``start`` leave a tunnel defined but closed, and
   its name reserved against operator-added tunnels); the server answers each with
   ``tunnel_up`` (logged as ``tunnel NAME up at HOST:PORT``, a line scripts
   may rely on) or ``tunnel_refused``, which affects that tunnel alone.
4. Streams the server opens are connected to the tunnel's local service.
"""

from __future__ import annotations

import functools
import ipaddress
import platform
import random
import socket
from typing import Any, Callable, Dict, Optional

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gotaxy import __version__
from gotaxy.config import ClientConfig, ConfigError, TunnelSpec, parse_host_port
from gotaxy.heartbeat import HeartbeatMonitor
from gotaxy.logs import Throttle, gotaxy_observer
from gotaxy.mux import MuxProtocol, Stream
from gotaxy.oslimits import fd_exhaustion, is_fd_exhaustion
from gotaxy.relay import StreamRelay
from gotaxy.wire import CLOSE_ERROR_PREFIX
from gotaxy.tls import ServerIdentityError, ServerVerifier, peer_chain

#: Seconds to wait for a local service to accept a connection.
LOCAL_CONNECT_TIMEOUT = 10.0
RECONNECT_CAP = 30.0

#: Seconds between two log lines about one tunnel's failures that come in
#: floods (out of file descriptors, public connections refused).
REPORT_INTERVAL = 10.0


def reconnect_delay(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff from 1 s, capped at 30 s, with jitter (50-100%)."""
    return min(RECONNECT_CAP, 2.0 ** min(attempt, 16)) * (0.5 + rng() / 2)


@functools.lru_cache(maxsize=256)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _LocalServiceFactory(ClientFactory):
    """
    Connects one stream to the tunnel's local service.  Quiet (there is one
    per tunneled connection) and used with ``reactor.connectTCP`` for IP
    literals, which costs far less per connection than an endpoint.
    """

    noisy = False

    def __init__(self, stream: Stream, spec: TunnelSpec, failed: Callable[[Failure, Stream, TunnelSpec], None]) -> None:
        self.stream = stream
        self.spec = spec
        self.failed = failed

    def buildProtocol(self, addr: Any) -> StreamRelay:
        return StreamRelay(self.stream)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failed(reason, self.stream, self.spec)


@implementer(IHandshakeListener)
class ClientControlProtocol(MuxProtocol):
    log = Logger(observer=gotaxy_observer)

    def __init__(self, factory: "ClientControlFactory") -> None:
        super().__init__()
        self.factory = factory
        self.config: ClientConfig = factory.config
        self.reactor = factory.reactor
        # A server that reads nothing of what we send is as dead as a silent one.
        self.write_stall_timeout = self.config.heartbeat_timeout
        self.heartbeat: Optional[HeartbeatMonitor] = None
        self.tunnels: Dict[str, TunnelSpec] = {t.name: t for t in self.config.tunnels}
        self.up: Dict[str, int] = {}

    def handshakeCompleted(self) -> None:
        try:
            self.factory.verifier.verify(peer_chain(self.transport))
        except ServerIdentityError as e:
            self.factory.fatal(str(e))
            self.transport.abortConnection()
            return
        self.send_preamble()
        self.send_control(
            {
                "type": "login",
                "token": self.config.token or "",
                "user": self.config.user or "",
                "hostname": socket.gethostname()[:255],
                "version": __version__,
                "os": platform.system()[:32],
                # Optional server messages this client understands.
                "features": ["connections_refused"],
            }
        )

    # -- control messages ----------------------------------------------------

    def control_received(self, message: Dict[str, Any]) -> None:
        kind = message.get("type")
        reason = str(message.get("reason", ""))[:500]
        if kind == "login_ok":
            self._logged_in(message)
        elif kind == "login_failed":
            text = f"the server refused our login: {reason}"
            if self.config.login_fail_exit:
                self.factory.fatal(text + "; check the token (auth.token / --token)")
            else:
                self.log.error("{text}; retrying", text=text)
            self.close()
        elif kind == "tunnel_up" and self.authenticated:
            name, port = str(message.get("name")), message.get("remotePort")
            self.up[name] = port  # type: ignore[assignment]
            self.log.info("tunnel {name} up at {host}:{port}", name=name, host=self.config.server_addr, port=port)
        elif kind == "tunnel_refused" and self.authenticated:
            self.log.error("tunnel {name} refused by the server: {reason}", name=message.get("name"), reason=reason)
        elif kind == "tunnel_add" and self.authenticated:
            self._operator_tunnel(message)
        elif kind == "tunnel_remove" and self.authenticated:
            name = str(message.get("name"))
            self.tunnels.pop(name, None)
            self.up.pop(name, None)
            self.log.info("tunnel {name} removed by the server's operator", name=name)
        elif kind == "tunnel_down" and self.authenticated:
            name = str(message.get("name"))
            self.up.pop(name, None)
            self.log.warn("tunnel {name} down: {reason}", name=name, reason=reason)
        elif kind == "connections_refused" and self.authenticated:
            self._connections_refused(message, reason)
        elif kind == "error":
            self.log.warn("server closed the connection: {reason}", reason=reason)
        else:
            self.protocol_error(f"unexpected control message {kind!r}")

    def _connections_refused(self, message: Dict[str, Any], reason: str) -> None:
        """The server turned public connections to one of our tunnels away (it says so once per interval)."""
        name = str(message.get("name"))
        if name not in self.tunnels:
            return
        count = message.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= 2**31:
            count = 0
        # A server that sends these faster than it should costs one line per interval.
        held = self.factory.refusal_counts
        held[name] = held.get(name, 0) + count
        if self.factory.refusal_throttle(name) is None:
            return
        self.log.warn(
            "tunnel {name}: the server refused {count} public connection(s): {reason}",
            name=name, count=held.pop(name), reason=reason,
        )

    def _logged_in(self, message: Dict[str, Any]) -> None:
        if self.authenticated:
            self.protocol_error("second login_ok")
            return
        self.authenticated = True
        self.factory.connected(self)
        self.log.info(
            "logged in to {host}:{port} as {client} (server {version})",
            host=self.config.server_addr,
            port=self.config.server_port,
            client=message.get("client"),
            version=message.get("serverVersion"),
        )
        self.heartbeat = HeartbeatMonitor(
            self.reactor,
            self.config.heartbeat_interval,
            self.config.heartbeat_timeout,
            frames_seen=lambda: self.decoder.frames,
            send_ping=self.send_ping,
            on_timeout=self._heartbeat_timed_out,
        )
        self.heartbeat.start()
        for spec in self.config.tunnels:
            if spec.enabled:  # a disabled one was reported once, at start-up
                self._request_tunnel(spec)

    def _operator_tunnel(self, message: Dict[str, Any]) -> None:
        """A tunnel defined on the server (panel or console): adopt it and open it."""
        name = message.get("name")
        try:
            host, port = parse_host_port(str(message.get("localAddr")))
            spec = TunnelSpec(name=str(name), local_ip=host, local_port=port, remote_port=int(message.get("remotePort") or 0))
        except (ConfigError, TypeError, ValueError) as e:
            self.log.error("ignoring tunnel {name} from the server: {error}", name=name, error=e)
            return
        if spec.name in self.tunnels and spec.name in {t.name for t in self.config.tunnels}:
            self.log.error(
                "ignoring tunnel {name} from the server: this client's config defines a tunnel of that name",
                name=spec.name,
            )
            return
        self.tunnels[spec.name] = spec
        self.log.info("tunnel {name} added by the server's operator -> {ip}:{port}", name=spec.name, ip=host, port=port)
        self._request_tunnel(spec)

    def _request_tunnel(self, spec: TunnelSpec) -> None:
        self.send_control(
            {
                "type": "tunnel_open",
                "name": spec.name,
                "tunnelType": spec.type,
                "localAddr": f"{spec.local_ip}:{spec.local_port}",
                "remotePort": spec.remote_port,
            }
        )

    def _heartbeat_timed_out(self, silent: float) -> None:
        self.log.warn("server silent for {seconds:.0f} s; reconnecting", seconds=silent)
        self.disconnecting = True
        self.transport.abortConnection()

    def pong_received(self, payload: bytes) -> None:
        if self.heartbeat is not None:
            self.heartbeat.pong_received(payload)

    # -- streams -------------------------------------------------------------

    def stream_opened(self, stream: Stream) -> None:
        spec = self.tunnels.get(stream.tunnel)
        if spec is None or not spec.enabled:
            stream.local_closed(f"{CLOSE_ERROR_PREFIX}the client has no open tunnel named {stream.tunnel!r}")
            return
        factory = _LocalServiceFactory(stream, spec, self._local_failed)
        if _is_ip_literal(spec.local_ip):
            self.reactor.connectTCP(spec.local_ip, spec.local_port, factory, timeout=LOCAL_CONNECT_TIMEOUT)
        else:
            endpoint = HostnameEndpoint(self.reactor, spec.local_ip, spec.local_port, timeout=LOCAL_CONNECT_TIMEOUT)
            endpoint.connect(factory).addErrback(self._local_failed, stream, spec)

    def _local_failed(self, failure: Failure, stream: Stream, spec: TunnelSpec) -> None:
        if is_fd_exhaustion(failure.value):
            # Not the local service's fault: this process has no descriptor
            # left for the connection.  Every connection fails the same
            # way, so say it once per interval.
            reason = f"the client is {fd_exhaustion()}"
            count = self.factory.fd_throttle(spec.name)
            if count is not None:
                self.log.error(
                    "tunnel {name}: cannot connect to {ip}:{port}: {reason} ({count} connection(s) "
                    "failed this way in the last {interval:g} s)",
                    name=spec.name, ip=spec.local_ip, port=spec.local_port, reason=reason, count=count,
                    interval=REPORT_INTERVAL,
                )
        else:
            reason = f"cannot reach local service {spec.local_ip}:{spec.local_port}: {failure.getErrorMessage()}"
            self.log.warn("tunnel {name}: {reason}", name=spec.name, reason=reason)
        stream.local_closed(CLOSE_ERROR_PREFIX + reason)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.heartbeat is not None:
            self.heartbeat.stop()
        super().connectionLost(reason)
        if self.authenticated:
            self.log.info(
                "disconnected from the server: {reason}",
                reason=reason.getErrorMessage() if reason is not None else "closed",
            )
        self.factory.disconnected(self)


class ClientControlFactory(Factory):
    noisy = False

    def __init__(
        self, config: ClientConfig, verifier: ServerVerifier, reactor: Any, fatal: Callable[[str], None]
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.reactor = reactor
        self.fatal = fatal
        self.fd_throttle = Throttle(reactor, REPORT_INTERVAL)
        self.refusal_throttle = Throttle(reactor, REPORT_INTERVAL)
        self.refusal_counts: Dict[str, int] = {}
        self.current: Optional[ClientControlProtocol] = None  #: logged in
        self.latest: Optional[ClientControlProtocol] = None  #: connected, maybe not logged in

    def buildProtocol(self, addr: Any) -> ClientControlProtocol:
        self.latest = ClientControlProtocol(self)
        return self.latest

    def connected(self, protocol: ClientControlProtocol) -> None:
        self.current = protocol

    def disconnected(self, protocol: ClientControlProtocol) -> None:
        if self.current is protocol:
            self.current = None
