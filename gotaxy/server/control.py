# -*- test-case-name: tests.test_control_memory,tests.test_server_tunnel_state -*-
"""
The server end of a client's control connection.

Life of a connection::

    accepted ──(over the pending limits?)──> closed at once
       │
       TLS handshake, preamble, {"type": "login"} within transport.authTimeout
       │                      ├──(bad token)──> {"type": "login_failed"}, closed
       │                      └──(store unreachable)──> {"type": "error"}, closed; the client retries
       ▼
    authenticated: {"type": "login_ok"}; heartbeat runs; the client sends
    {"type": "tunnel_open"} per tunnel and gets "tunnel_up" or
    "tunnel_refused" for each; public connections become streams.
       │
       heartbeat timeout / connection lost / replaced by a newer login
       ▼
    ServerCore.session_lost: listeners closed, client marked offline.

``Admission`` bounds connections that have not logged in yet, in total and
per peer address, so a flood of idle or garbage connections costs bounded
memory and cannot crowd out honest clients' tunnels; its refusals are
logged once a minute with their number, so the flood cannot fill the log.
"""

from __future__ import annotations

from typing import Any, Collection, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred
from OpenSSL.SSL import Error as SSLError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from gotaxy import __version__
from gotaxy.heartbeat import HeartbeatMonitor
from gotaxy.logs import gotaxy_observer
from gotaxy.budget import WINDOW_BUDGET
from gotaxy.mux import MuxProtocol
from gotaxy.tls.bulk import BulkTLSFactory
from gotaxy.proxy import ProxySpec
from gotaxy.server.access import CONTROL, FLOOD, PROTOCOL
from gotaxy.server.core import (
    MAX_TUNNELS_PER_CLIENT,
    CertificateRefused,
    DatabaseUnreachable,
    IdentityInUse,
    LoginRefused,
    ServerCore,
    TunnelRefused,
)
from gotaxy.server.throttle import RepeatThrottle
from gotaxy.server.tunnel import LiveTunnel
from gotaxy.tls.clients import ClientCertificate, client_chain
from gotaxy.wire import PROTOCOL_VERSION

#: Refused connections are logged at most once in this many seconds (with their number).
REFUSAL_LOG_INTERVAL = 60.0


#: Optional control messages a client may announce in its login's "features".
CONNECTIONS_REFUSED = "connections_refused"
#: The client takes datagram flows (OPEN with "mode": "datagram"; udp tunnels).
DATAGRAMS = "datagrams"
#: The client takes ``goodbye``: a server that stops cleanly asks it to come back at once.
GOODBYE = "goodbye"

#: Optional messages from the client this server understands, announced in
#: login_ok's "features": ``tunnel_retry`` (when a refused tunnel is asked
#: for again) and ``tunnel_health`` (its local service answers or not).
TUNNEL_STATUS = "tunnel_status"
#: ``client_reloaded``: the client re-read its file (recorded as a ``client.reloaded`` event).
CLIENT_RELOADED_FEATURE = "client_reloaded"
#: ``datagram_drops``: what a udp tunnel dropped on the client (counted beside the server's drops).
DATAGRAM_DROPS_FEATURE = "datagram_drops"

#: The most a ``datagram_drops`` message may say of one reason (a report covers about 10 s).
MAX_REPORTED_DROPS = 2**31 - 1

#: At most one client.reloaded event per client in this many seconds.
CLIENT_RELOAD_EVENT_INTERVAL = 10.0

#: Longest wait a client may announce before it asks for a tunnel again.
MAX_RETRY_IN = 86400.0


def announced_features(message: Dict[str, Any]) -> Set[str]:
    """The features a login announces that this server knows (anything else is ignored)."""
    features = message.get("features")
    if not isinstance(features, list):
        return set()
    return {f for f in features[:16] if f in (CONNECTIONS_REFUSED, DATAGRAMS, GOODBYE, WINDOW_BUDGET)}


def tunnel_add_message(name: str, spec: ProxySpec) -> Dict[str, Any]:
    """Tell the client about a tunnel an operator defined for it."""
    return {"type": "tunnel_add", "name": name, "spec": spec.to_keys()}


def tunnel_up_message(tunnel: Any) -> Dict[str, Any]:
    """Tell the client where the public reaches its tunnel."""
    details = tunnel.exposure.details if tunnel.exposure is not None else {}
    return {**details, "type": "tunnel_up", "name": tunnel.name, "address": tunnel.address.to_wire()}


def version_refusal(version: int) -> str:
    """What a client speaking protocol ``version`` (not ours) is told, naming the side to upgrade."""
    if version < PROTOCOL_VERSION:
        return (f"this client speaks Gotaxy protocol version {version} and the server version {PROTOCOL_VERSION}: "
                f"upgrade the client to Gotaxy {__version__} or later")
    return (f"this client speaks Gotaxy protocol version {version}, newer than the server's {PROTOCOL_VERSION}: "
            f"upgrade the server (it runs Gotaxy {__version__})")


class Admission:
    """
    Counts connections that have not authenticated yet.  A refusal is
    logged at once, and further refusals once a minute with their number,
    so a flood cannot fill the log.
    """

    log = Logger(observer=gotaxy_observer)

    def __init__(self, max_pending: int, max_per_ip: int, reactor: Any,
                 log_interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self.max_pending = max_pending
        self.max_per_ip = max_per_ip
        self.pending = 0
        self.per_ip: Dict[str, int] = {}
        self.refused = 0
        self._refusals = RepeatThrottle(reactor, log_interval, self._log_refusals, max_keys=1)

    def apply(self, config: Any) -> List[Any]:
        """``transport.maxPendingConnections`` / ``maxPendingPerIP`` from a reload: at once."""
        from gotaxy.server.reload import applied

        new = (config.transport.max_pending, config.transport.max_pending_per_ip)
        if new == (self.max_pending, self.max_per_ip):
            return []
        self.max_pending, self.max_per_ip = new
        return [applied(
            "transport.maxPendingConnections / transport.maxPendingPerIP",
            f"{new[0]} / {new[1]}, for connections from now on",
        )]

    def admit(self, host: str) -> bool:
        count = self.per_ip.get(host, 0)
        if self.pending >= self.max_pending or count >= self.max_per_ip:
            self.refused += 1
            self._refusals.add("refused", (host, self.pending, count))
            return False
        self.pending += 1
        self.per_ip[host] = count + 1
        return True

    def stop(self) -> None:
        """Log the refusals not logged yet."""
        self._refusals.flush()

    def _log_refusals(self, key: Any, count: int, context: Tuple[str, int, int], first: bool) -> None:
        host, pending, from_host = context
        if first:
            self.log.warn(
                "refusing connection from {host}: {pending} connections are waiting to log in "
                "({count} from this address; limits {total} and {per_ip})",
                host=host,
                pending=pending,
                count=from_host,
                total=self.max_pending,
                per_ip=self.max_per_ip,
            )
        else:
            self.log.warn(
                "refused {count} more connections in the last {seconds:g} s: too many were waiting to log in "
                "(last from {host}; limits {total} in all and {per_ip} per address)",
                count=count,
                seconds=self._refusals.interval,
                host=host,
                total=self.max_pending,
                per_ip=self.max_per_ip,
            )

    def release(self, host: str) -> None:
        self.pending -= 1
        count = self.per_ip[host] - 1
        if count:
            self.per_ip[host] = count
        else:
            del self.per_ip[host]


class ServerControlProtocol(MuxProtocol):
    """
    A client's control connection: the ``ClientSession`` the core works
    with (``gotaxy.server.session``), and the only place that writes the
    control messages about its tunnels.
    """

    is_server = True
    log = Logger(observer=gotaxy_observer)

    def __init__(self, core: ServerCore, admission: Admission, reactor: Any) -> None:
        super().__init__()
        self.core = core
        self.admission = admission
        self.reactor = reactor
        # A client that reads nothing of what we send is as dead as a silent one.
        self.write_stall_timeout = core.config.heartbeat_timeout
        self.client_name: Optional[str] = None
        self.client_version = "?"
        self.token_checked = False
        #: The client certificate it logged in with (``gotaxy.tls.clients``), if the server asks for one.
        self.certificate: Optional[ClientCertificate] = None
        #: Logged in with the server's shared auth.token.
        self.shared_token = False
        #: The installation id the client sent at log-in ("" if none).
        self.instance = ""
        self.tunnels: Dict[str, LiveTunnel] = {}
        #: Operator-defined tunnels an operator removed while this session
        #: lasts: a tunnel_open for one of them, sent before the client
        #: heard of the removal, must not bring it back.
        self.removed_tunnels: Set[str] = set()
        #: Operator-defined tunnels sent to the client (name -> local description)
        #: that it has not declined: only those may be declined.
        self.offered: Dict[str, str] = {}
        self.lost = False
        self.dropped = False
        self._host: Optional[str] = None
        self._peer_host: Optional[str] = None
        self._login_started = False
        self._auth_timer: Any = None
        self.heartbeat: Optional[HeartbeatMonitor] = None
        self.max_streams = core.config.limits.max_connections_per_client
        #: Optional messages the client understands (from its login).
        self.features: Set[str] = set()
        self._last_reload_event = -CLIENT_RELOAD_EVENT_INTERVAL
        #: Tunnels refused since the client last said when it asks again; a
        #: ``tunnel_retry`` is taken once per refusal, for a refused name only.
        self.refused_tunnels: Set[str] = set()
        #: Refused tunnel -> when (reactor time) the client asks for it again.
        self.retry_at: Dict[str, float] = {}

    def connectionMade(self) -> None:
        super().connectionMade()
        self._host = self.transport.getPeer().host
        self._peer_host = self._host
        config = self.core.config
        self._auth_timer = self.reactor.callLater(config.transport.auth_timeout, self._auth_timed_out)

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        self.log.info(
            "closing connection from {peer}: no login within {seconds:g} s",
            peer=self.peer_address,
            seconds=self.core.config.transport.auth_timeout,
        )
        self.disconnecting = True
        self.transport.abortConnection()

    def _leave_pending(self) -> None:
        if self._host is not None:
            self.admission.release(self._host)
            self._host = None
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None

    # -- control messages ----------------------------------------------------

    def control_received(self, message: Dict[str, Any]) -> None:
        kind = message.get("type")
        if not self.authenticated:
            if kind != "login" or self._login_started:
                self.protocol_error(f"expected one login message, got {kind!r}")
                return
            self._login_started = True
            Deferred.fromCoroutine(self._login(message)).addErrback(self._bug, "login")
            return
        if kind == "tunnel_open":
            Deferred.fromCoroutine(self._tunnel_open(message)).addErrback(self._bug, "tunnel_open")
        elif kind == "tunnel_close":
            name = message.get("name")
            if isinstance(name, str):
                Deferred.fromCoroutine(self.core.client_closes_tunnel(self, name)).addErrback(self._bug, "tunnel_close")
        elif kind == "tunnel_declined":
            Deferred.fromCoroutine(self.core.client_declines_tunnel(self, message)).addErrback(
                self._bug, "tunnel_declined"
            )
        elif kind == "tunnel_retry":
            self._tunnel_retry(message)
        elif kind == "tunnel_health":
            self._tunnel_health(message)
        elif kind == CLIENT_RELOADED_FEATURE:
            self._client_reloaded(message)
        elif kind == DATAGRAM_DROPS_FEATURE:
            self._datagram_drops(message)
        elif kind == "error":
            self.log.info("client {client} reports: {reason}", client=self.client_name, reason=str(message.get("reason"))[:200])
        else:
            self.protocol_error(f"unknown control message {kind!r}")

    async def _login(self, message: Dict[str, Any]) -> None:
        try:
            name = await self.core.login(self, message, client_chain(self.transport))
        except DatabaseUnreachable as e:
            if not self.lost:
                # Not login_failed: a client exits on that (loginFailExit); this one comes back with back-off.
                self.send_control({"type": "error", "reason": str(e)})
                self.close()
            return
        except LoginRefused as e:
            if not self.lost:
                refusal = {"type": "login_failed", "reason": str(e)}
                if isinstance(e, IdentityInUse):
                    refusal["code"] = "in_use"
                elif isinstance(e, CertificateRefused):
                    refusal["code"] = "certificate"  # the reason says what to do; not "check the token"
                self.send_control(refusal)
                self.close()
            return
        self._leave_pending()
        self.authenticated = True
        self.features = announced_features(message)
        if WINDOW_BUDGET in self.features:
            self.use_window_budget()
        else:
            self.use_legacy_windows()
        config = self.core.config
        self.send_control(
            {
                "type": "login_ok",
                "client": name,
                "serverVersion": __version__,
                "heartbeatInterval": config.heartbeat_interval,
                "heartbeatTimeout": config.heartbeat_timeout,
                "features": [TUNNEL_STATUS, CLIENT_RELOADED_FEATURE, WINDOW_BUDGET, DATAGRAM_DROPS_FEATURE],
            }
        )
        self.heartbeat = HeartbeatMonitor(
            self.reactor,
            config.heartbeat_interval,
            config.heartbeat_timeout,
            frames_seen=lambda: self.decoder.frames,
            send_ping=self.send_ping,
            on_timeout=self._heartbeat_timed_out,
        )
        self.heartbeat.start()
        await self.core.push_operator_tunnels(self)

    # -- what the core tells the client (ClientSession) ------------------------

    def offer_tunnel(self, name: str, spec: ProxySpec) -> None:
        """Send the client an operator-defined tunnel; it opens or declines it."""
        self.offered[name] = spec.local_description
        self.send_control(tunnel_add_message(name, spec))

    def version_mismatch(self, version: int) -> None:
        """
        The client speaks another protocol version: refuse its log-in in
        words every version understands (the frame format and
        ``login_failed`` never change), naming the side to upgrade.
        """
        reason = version_refusal(version)
        self.log.info("refusing connection from {peer}: {reason}", peer=self.peer_address, reason=reason)
        self.send_control({"type": "login_failed", "reason": reason, "code": "version"})
        self.close()

    def goodbye(self, reason: str, within: float) -> None:
        """
        The server is stopping: a client that understands ``goodbye`` is
        asked to reconnect within ``within`` seconds (to the next server
        on this port, or to this one after its restart); any other gets the
        ``error`` message clients have always had, and its own back-off.
        """
        if GOODBYE not in self.features:
            self.close_with_error(reason)
            return
        if self.disconnecting:
            return
        self.send_control({"type": "goodbye", "reason": reason, "reconnectWithin": round(within, 3)})
        self.close()

    def withdraw_tunnel(self, name: str) -> None:
        """An operator removed a tunnel it defined: the client forgets it."""
        self.send_control({"type": "tunnel_remove", "name": name})

    def tunnel_up(self, tunnel: LiveTunnel) -> None:
        if not self.lost:
            self.send_control(tunnel_up_message(tunnel))

    def tunnel_down(self, name: str, reason: str) -> None:
        """The server closed a tunnel (an operator disabled it): the client does not ask again."""
        self.send_control({"type": "tunnel_down", "name": name, "reason": reason})

    # -- what the client asks ----------------------------------------------------

    async def _tunnel_open(self, message: Dict[str, Any]) -> None:
        name = message.get("name")
        try:
            # Under the client's lock, in the order sent, so limits such as
            # maxPortsPerClient see every earlier decision.
            tunnel = await self.core.open_tunnel(self, message)
        except TunnelRefused as e:
            if not self.lost:
                if isinstance(name, str) and len(name) <= 64 and len(self.refused_tunnels) < MAX_TUNNELS_PER_CLIENT:
                    self.refused_tunnels.add(name)
                self.retry_at.pop(name, None)
                self.send_control({"type": "tunnel_refused", "name": name, "reason": str(e)})
            return
        self.refused_tunnels.discard(tunnel.name)
        self.retry_at.pop(tunnel.name, None)
        self.tunnel_up(tunnel)

    def _tunnel_retry(self, message: Dict[str, Any]) -> None:
        """The client says when it asks again for a tunnel we refused."""
        name, delay = message.get("name"), message.get("retryIn")
        if type(delay) not in (int, float) or not 0 <= delay <= MAX_RETRY_IN:  # also NaN, Infinity, bools
            self.protocol_error(f"tunnel_retry: 'retryIn' must be a number of seconds from 0 to {MAX_RETRY_IN:g}")
            return
        if isinstance(name, str) and name in self.refused_tunnels:
            self.refused_tunnels.discard(name)
            self.retry_at[name] = self.reactor.seconds() + delay

    def _client_reloaded(self, message: Dict[str, Any]) -> None:
        """The client re-read its config: one event (at most every few seconds per client), in its words, bounded."""
        detail, who = message.get("detail"), message.get("who")
        if not isinstance(detail, str) or not isinstance(who, str) or len(detail) > 2000 or len(who) > 100:
            self.protocol_error("client_reloaded: 'detail' and 'who' must be strings of at most 2000 and 100 characters")
            return
        now = self.reactor.seconds()
        if now - self._last_reload_event < CLIENT_RELOAD_EVENT_INTERVAL:
            return
        self._last_reload_event = now
        Deferred.fromCoroutine(self.core.client_reloaded(self, who, detail)).addErrback(self._bug, "client_reloaded")

    def _datagram_drops(self, message: Dict[str, Any]) -> None:
        """A udp tunnel's drops on the client since its last report: counted on the tunnel's meter."""
        from gotaxy.proxy.udp import Drops, counts_of

        name = message.get("name")
        values = [message.get(key, 0) for key in ("tooLarge", "queueFull", "noSlot", "bandwidth")]
        if not isinstance(name, str) or any(type(v) is not int or not 0 <= v <= MAX_REPORTED_DROPS for v in values):
            self.protocol_error(f"datagram_drops: 'name' must be a string, 'tooLarge', 'queueFull', 'noSlot' and "
                                f"'bandwidth' integers from 0 to {MAX_REPORTED_DROPS}")
            return
        tunnel = self.tunnels.get(name)
        if tunnel is not None and tunnel.spec.type == "udp":  # late for a tunnel that closed: dropped
            counts_of(tunnel.meter).add_client_drops(Drops(*values))

    def _tunnel_health(self, message: Dict[str, Any]) -> None:
        """The client's health check of a tunnel's local service changed."""
        name, healthy = message.get("name"), message.get("healthy")
        if not isinstance(healthy, bool):
            self.protocol_error("tunnel_health: 'healthy' must be true or false")
            return
        tunnel = self.tunnels.get(name) if isinstance(name, str) else None
        if tunnel is not None:
            self.core.tunnel_health(tunnel, healthy)

    def _heartbeat_timed_out(self, silent: float) -> None:
        self.log.warn(
            "client {client} ({peer}) silent for {seconds:.0f} s; closing its tunnels",
            client=self.client_name,
            peer=self.peer_address,
            seconds=silent,
        )
        self.core.session_lost(self, f"heartbeat timeout: nothing heard for {silent:.0f} s").addErrback(
            self._bug, "heartbeat timeout"
        )
        self.disconnecting = True
        self.transport.abortConnection()

    def pong_received(self, payload: bytes) -> None:
        if self.heartbeat is not None:
            self.heartbeat.pong_received(payload)

    def fair_share_tunnels(self) -> Collection[str]:
        return self.tunnels.keys()

    def connections_refused(self, tunnel: str, count: int, reason: str) -> None:
        """Tell the client that public connections to ``tunnel`` were refused (if it understands)."""
        if CONNECTIONS_REFUSED in self.features and not self.disconnecting:
            self.send_control({"type": CONNECTIONS_REFUSED, "name": tunnel, "count": count, "reason": reason})

    def protocol_error(self, reason: str) -> None:
        if not self.authenticated and self._host is not None:
            self.core.access.failure(PROTOCOL, self._host, reason[:80])
        super().protocol_error(reason)

    def _bug(self, failure: Failure, what: str) -> None:
        self.log.failure("bug while handling {what} from {peer}", failure, what=what, peer=self.peer_address)
        self.close_with_error("internal server error")

    # -- end -----------------------------------------------------------------

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        self._leave_pending()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        super().connectionLost(reason)
        text = reason.getErrorMessage() if reason is not None else "connection closed"
        if self.client_name is None:
            if not self._login_started and reason is not None and reason.check(SSLError) and self._peer_host:
                # Not TLS at all, or a handshake that failed: garbage on the control port.
                self.core.access.failure(PROTOCOL, self._peer_host, "TLS handshake failed")
            if not self.authenticated and not self._login_started:
                self.log.info("connection from {peer} closed before login: {reason}", peer=self.peer_address, reason=text)
            return
        if not self.dropped:
            self.core.session_lost(self, f"connection lost: {text}").addErrback(self._log_failure)

    def _log_failure(self, failure: Failure) -> None:
        self.log.failure("bug while closing the session of {client}", failure, client=self.client_name)


class ServerControlFactory(Factory):
    noisy = False

    def __init__(self, core: ServerCore, admission: Admission, reactor: Any) -> None:
        self.core = core
        self.admission = admission
        self.reactor = reactor

    def buildProtocol(self, addr: Any) -> ServerControlProtocol:
        return ServerControlProtocol(self.core, self.admission, self.reactor)


class AdmittingTLSFactory(BulkTLSFactory):
    """TLS on the control port, refusing connections over the pending limits."""

    def __init__(self, context: Any, wrapped: ServerControlFactory) -> None:
        # TLS batches small writes until the next turn of this reactor (a
        # test's clock, too), not of the global one.
        super().__init__(context, False, wrapped, clock=wrapped.reactor)
        self.admission = wrapped.admission

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", "?")
        # Address rules and bans first: a refused source costs no TLS, no admission slot.
        access = self.wrappedFactory.core.access
        if not access.admits(CONTROL, host):
            return None
        if not self.admission.admit(host):
            access.failure(FLOOD, host, "over transport.maxPendingConnections / maxPendingPerIP")
            return None
        return super().buildProtocol(addr)
