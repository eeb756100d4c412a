# -*- test-case-name: tests.test_client_protocol,tests.test_client_reconnect,tests.test_control_memory -*-
"""
The client end of the control connection.

Order of events on each connection (``ClientService`` makes a new one after
every loss, with ``Reconnection`` choosing the delay and saying why, see
``gotaxy.client.reconnect``, to the first of ``serverAddr``'s servers that
answers, see ``gotaxy.client.servers``):

1. TLS handshake.  ``handshakeCompleted`` checks the server's certificate
   (pinned fingerprint, a join token's pin, CA file or trust-on-first-use,
   see ``gotaxy.tls``) *before* anything secret is sent.  A failed check is
   fatal.
2. Preamble and ``login``.  ``login_failed`` is fatal when ``loginFailExit``
   is set (the default): a wrong token cannot be fixed by retrying.  The
   handshake and log-in must be done within ``LOGIN_TIMEOUT``.
3. One ``tunnel_open`` per configured tunnel that is enabled (frp's
   ``enabled = false`` and ``start`` leave a tunnel defined but closed, and
   its name reserved against operator-added tunnels); the server answers each with
   ``tunnel_up`` (logged as ``tunnel NAME up at HOST:PORT``, a line scripts
   may rely on) or ``tunnel_refused``, which affects that tunnel alone.
   A refused tunnel is asked for again after a backoff (``tunnel_retry_delay``:
   1 s doubling to 60 s, jittered), whatever the reason: the busy port may
   come free, and an operator may fix allowPorts or re-enable the tunnel
   while the client runs.  A server that announces ``tunnel_status`` in its
   ``login_ok`` is told when (``tunnel_retry``), so its panel can show it.
4. Streams the server opens are connected to the tunnel's local service.
   A tunnel with frp's ``healthCheck`` has its local service probed
   (``gotaxy.client.health``); a change is logged and, to a server that
   announces ``tunnel_status``, sent as ``tunnel_health``.
5. A server that stops cleanly says ``goodbye`` (the client announces that
   it understands it in its login): the client closes and comes back within
   the ``reconnectWithin`` seconds the server asked for.

Nothing the server sends is trusted: every field is checked for its type
and range (a port is an ``int`` from 1 to 65535, never a bool, a float or
``Infinity``; every string is bounded) before it is used, and a message that
fails is a protocol error that ends the connection with a logged reason.
Strings from the server are shown with control characters escaped, so they
cannot forge log lines.

Operator-defined tunnels (``tunnel_add`` from the server's panel, console or
REST API) are opened only when the client's own ``allowOperatorTunnels``
lists their local address: the client, not the server, decides what it
exposes.  Any other is answered with ``tunnel_declined`` (name and reason),
which the server records as the tunnel's refusal, and logged once.
"""

from __future__ import annotations

import functools
import platform
import random
import socket
from typing import Any, Callable, Dict, Optional, Sequence, Set, Tuple

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gotaxy import __version__
from gotaxy.bandwidth import BandwidthLimiter, limiter_for
from gotaxy.budget import WINDOW_BUDGET
from gotaxy.config import ClientConfig, TunnelSpec
from gotaxy.client.health import LocalHealthCheck
from gotaxy.client.servers import ServerList, entry_text
from gotaxy.client.reconnect import (  # noqa: F401  (ReportingEndpoint, describe_connect_failure: re-exported)
    MAX_GOODBYE_SPREAD,
    LoginTimeout,
    Reconnection,
    ReportingEndpoint,
    describe_connect_failure,
)
from gotaxy.heartbeat import HeartbeatMonitor
from gotaxy.logs import Throttle, gotaxy_observer
from gotaxy.mux import Flow, MuxProtocol, Stream
from gotaxy.oslimits import fd_exhaustion, is_fd_exhaustion
from gotaxy.names import InvalidName, check_name
from gotaxy.proxy import AddressError, ProxySpec, PublicAddress, SpecError, parse_spec, type_of
from gotaxy.proxy.registry import UnknownType
from gotaxy.wire import CLOSE_ERROR_PREFIX, MAX_DATAGRAM, ProtocolError
from gotaxy.tls import ServerIdentityError, ServerVerifier, peer_chain

#: Seconds from the TCP connection to ``login_ok`` (TLS handshake included).
LOGIN_TIMEOUT = 30.0
#: Refused operator tunnels remembered so that each is logged once, not at
#: every reconnect.
MAX_DECLINED_REMEMBERED = 1024

#: Seconds between two log lines about one tunnel's failures that come in
#: floods (out of file descriptors, public connections refused).
REPORT_INTERVAL = 10.0

#: Longest string from the server that is shown (reasons, versions).
MAX_SHOWN = 500

#: Longest heartbeat setting a server may announce, in seconds.
MAX_HEARTBEAT = 86400.0

#: Seconds the open connections of a tunnel a reload removed may go on
#: before they are cut (they end on their own before that when their data
#: is through).
DRAIN_GRACE = 30.0

#: Most tunnels whose last error is remembered.
MAX_TUNNEL_ERRORS = 1024


#: A refused tunnel is asked for again after at most this many seconds.
TUNNEL_RETRY_CAP = 60.0

#: Optional client messages (``tunnel_retry``, ``tunnel_health``) a server
#: may announce in its ``login_ok``'s "features"; older servers refuse them.
TUNNEL_STATUS = "tunnel_status"
#: A server that announces it records our reloads as events.
CLIENT_RELOADED = "client_reloaded"
#: Optional server messages this client understands, announced in its login:
#: ``connections_refused``, datagram flows, and ``goodbye`` (the server is
#: stopping: reconnect at once, ``gotaxy.client.reconnect``), and ``window_budget``
#: (streams start with small windows that grow from a pool: ``gotaxy.budget``).
LOGIN_FEATURES = ["connections_refused", "datagrams", "goodbye", WINDOW_BUDGET]
#: A server that announces it takes our udp tunnels' drops (``datagram_drops``), once per REPORT_INTERVAL.
DATAGRAM_DROPS = "datagram_drops"


def backoff_delay(attempt: int, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff from 1 s (attempt 0), capped at ``cap``, with jitter (50-100%)."""
    return min(cap, 2.0 ** min(attempt, 16)) * (0.5 + rng() / 2)


def tunnel_retry_delay(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """When to ask again for a tunnel refused ``attempt`` times in a row before."""
    return backoff_delay(attempt, TUNNEL_RETRY_CAP, rng)


def seconds_text(seconds: float) -> str:
    return f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"


def printable(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters, control characters escaped."""
    text = text[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _text(message: Dict[str, Any], key: str, limit: int, default: Optional[str] = None) -> str:
    value = message.get(key, default)
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"{message.get('type')}: {key!r} must be a string of at most {limit} characters")
    return value


def _integer(message: Dict[str, Any], key: str, low: int, high: int, default: Optional[int] = None) -> int:
    value = message.get(key, default)
    if type(value) is not int or not low <= value <= high:  # bool is an int subclass: refused
        raise ProtocolError(f"{message.get('type')}: {key!r} must be an integer from {low} to {high}")
    return value


def _seconds(message: Dict[str, Any], key: str) -> Optional[float]:
    value = message.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 < value <= MAX_HEARTBEAT:  # also NaN and Infinity
        raise ProtocolError(f"{message.get('type')}: {key!r} must be a number of seconds from 0 to {MAX_HEARTBEAT:g}")
    return float(value)


@functools.lru_cache(maxsize=256)
def proxy_spec(tunnel: TunnelSpec) -> ProxySpec:
    """The proxy spec of a tunnel from this client's config or flags (SpecError if it is not valid)."""
    return parse_spec(tunnel.proxy_keys())


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
        #: Each tunnel's proxy spec (what is asked for, and how a stream reaches the local service).
        self.proxies: Dict[str, ProxySpec] = {t.name: proxy_spec(t) for t in self.config.tunnels}
        #: tunnel name -> (the spec it was made for, its bandwidth limiter or None), for bandwidthLimitMode "client"
        self._limiters: Dict[str, Tuple[ProxySpec, Optional[BandwidthLimiter]]] = {}
        self.up: Dict[str, PublicAddress] = {}
        #: Refused tunnels waiting for their next request, by name.
        self.retries: Dict[str, Any] = {}
        #: Health checks of the tunnels that are up and have one, by name.
        self.checks: Dict[str, LocalHealthCheck] = {}
        #: Optional messages the server understands (from its login_ok).
        self.server_features: Set[str] = set()
        #: udp tunnels' largest datagram (the server's udpPacketSize, in their tunnel_up), by name
        self.datagram_limits: Dict[str, int] = {}
        self._drop_report: Any = None
        self._drops_since = 0.0
        self._login_timer: Any = None
        self._connection_lost = False
        #: The (host, port) of the ``serverAddr`` entry this connection reached (``gotaxy.client.servers``).
        self.server: Tuple[str, int] = factory.config.servers[0]

    def connectionMade(self) -> None:
        super().connectionMade()
        self.server = self.factory.server_at(self.transport.getPeer())
        self._login_timer = self.reactor.callLater(LOGIN_TIMEOUT, self._login_timed_out)

    def _login_timed_out(self) -> None:
        self._login_timer = None
        self.factory.reconnection.failed(Failure(LoginTimeout()))
        self.disconnecting = True
        self.transport.abortConnection()

    def _stop_login_timer(self) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    def handshakeCompleted(self) -> None:
        chain = peer_chain(self.transport)
        verifier = self.factory.verifier_for(self.server)
        if verifier.reads_known_servers:
            # Trust on first use reads (and may append to) known_servers: a
            # file, so on a thread, never on the reactor's.
            checked = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), verifier.verify, chain)
        else:
            checked = maybeDeferred(verifier.verify, chain)
        checked.addCallbacks(self._server_verified, self._server_not_verified)

    def _server_not_verified(self, failure: Failure) -> None:
        if failure.check(ServerIdentityError):
            self.factory.fatal(failure.getErrorMessage())
        else:
            self.log.failure("checking the server's certificate failed", failure)
        if self.transport is not None and not self._connection_lost:
            self.transport.abortConnection()

    def _server_verified(self, _: str) -> None:
        if self.disconnecting or self.transport is None or self._connection_lost:
            return  # gone while its certificate was checked
        self.send_preamble()
        self.send_control(
            {
                "type": "login",
                # A join token's secret only; its pin was checked above.
                "token": self.config.login_secret,
                "user": self.config.user or "",
                "hostname": socket.gethostname()[:255],
                "version": __version__,
                "os": platform.system()[:32],
                # Lets this installation replace its own stale session (gotaxy.client.identity).
                "instance": self.factory.instance_id,
                # "certificate": it logs in with its client certificate alone (no token is sent).
                "method": self.config.auth_method,
                # Optional server messages this client understands.
                "features": LOGIN_FEATURES,
            }
        )

    # -- control messages ----------------------------------------------------

    def control_received(self, message: Dict[str, Any]) -> None:
        kind = message.get("type")
        if not isinstance(kind, str):
            raise ProtocolError("a control message needs a string 'type'")
        if kind == "login_ok" and not self.authenticated:
            self._logged_in(message)
        elif kind == "login_failed" and not self.authenticated:
            reason = printable(_text(message, "reason", MAX_SHOWN * 4, ""))
            text = f"the server refused our login: {reason}"
            # For in_use and version the reason itself says what to do.
            hint = "" if message.get("code") in ("in_use", "version", "certificate") else "check the token (auth.token / --token)"
            if self.config.login_fail_exit:
                self.factory.fatal(f"{text}; {hint}" if hint else text)
            else:
                # Logged with the retry delay; a repeated refusal without its text (said once).
                self.factory.reconnection.refused(reason, hint, repeated=text == self.factory.last_refusal)
            self.factory.last_refusal = text
            self.close()
        elif kind == "error":
            reason = printable(_text(message, "reason", MAX_SHOWN * 4, ""))
            self.log.warn("server closed the connection: {reason}", reason=reason)
        elif kind == "goodbye" and self.authenticated:
            self._goodbye(message)
        elif not self.authenticated or kind not in self._after_login:
            self.protocol_error(f"unexpected control message {printable(str(kind), 64)!r}")
        else:
            self._after_login[kind](self, message, _text(message, "name", 64))

    def _goodbye(self, message: Dict[str, Any]) -> None:
        """The server is stopping and asks us to come back at once (the reconnection logs it)."""
        reason = printable(_text(message, "reason", MAX_SHOWN, ""))
        within = message.get("reconnectWithin")
        if type(within) not in (int, float) or not 0 <= within <= MAX_GOODBYE_SPREAD:  # NaN, Infinity, bools too
            raise ProtocolError(f"goodbye: 'reconnectWithin' must be a number of seconds from 0 to {MAX_GOODBYE_SPREAD:g}")
        self.factory.reconnection.told_to_reconnect(reason, float(within))
        self.close()

    def _tunnel_up(self, message: Dict[str, Any], name: str) -> None:
        try:
            address = PublicAddress.from_wire(message.get("address"))
        except AddressError as e:
            raise ProtocolError(f"tunnel_up: 'address': {e}") from None
        if address.by_port and not address.port:
            raise ProtocolError("tunnel_up: 'address': the public port must be an integer from 1 to 65535")
        if name not in self.tunnels:
            self.log.info("ignoring tunnel_up for {name!r}, which this client no longer has", name=printable(name))
            return
        if "udpPacketSize" in message:
            self.datagram_limits[name] = _integer(message, "udpPacketSize", 1, MAX_DATAGRAM)
        self.up[name] = address
        self.factory.tunnel_errors.pop(name, None)
        self.factory.tunnel_attempts.pop(name, None)
        self._cancel_retry(name)
        # "tunnel NAME up at HOST:PORT": a line scripts may rely on.
        self.log.info("tunnel {name} up at {where}", name=name, where=address.at(self.server[0]))
        spec = self.tunnels[name]
        if spec.health_check_type is not None and name not in self.checks:
            check = LocalHealthCheck(self.reactor, spec, functools.partial(self._health_changed, name))
            self.checks[name] = check
            check.start()

    def _tunnel_refused(self, message: Dict[str, Any], name: str) -> None:
        reason = printable(_text(message, "reason", MAX_SHOWN * 4, ""))
        spec = self.tunnels.get(name)
        if spec is None or not spec.enabled:
            self.log.error("tunnel {name} refused by the server: {reason}", name=printable(name), reason=reason)
            return
        self.factory.tunnel_errors[name] = f"refused by the server: {reason}"
        attempt = self.factory.tunnel_attempts.get(name, 0)
        self.factory.tunnel_attempts[name] = attempt + 1
        delay = tunnel_retry_delay(attempt, self.factory.rng)
        self._cancel_retry(name)
        self.retries[name] = self.reactor.callLater(delay, self._retry, name)
        self.log.error(
            "tunnel {name} refused by the server: {reason}; retrying in {delay} s",
            name=name, reason=reason, delay=seconds_text(delay),
        )
        if TUNNEL_STATUS in self.server_features:
            self.send_control({"type": "tunnel_retry", "name": name, "retryIn": round(delay, 3)})

    def _retry(self, name: str) -> None:
        del self.retries[name]
        spec = self.tunnels.get(name)
        if spec is not None and spec.enabled and name not in self.up and not self.disconnecting:
            self._request_tunnel(spec)

    def _cancel_retry(self, name: str) -> None:
        call = self.retries.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _stop_check(self, name: str) -> None:
        check = self.checks.pop(name, None)
        if check is not None:
            check.stop()

    def _health_changed(self, name: str, healthy: bool, reason: str) -> None:
        check = self.checks[name]
        if healthy:
            self.log.info("tunnel {name}: local service {address} answers again", name=name, address=check.address)
        else:
            self.log.warn(
                "tunnel {name} down: {reason} ({count} failed check(s) in a row; last: {error})",
                name=name, reason=reason, count=check.failures, error=check.last_error,
            )
        if TUNNEL_STATUS in self.server_features and not self.disconnecting:
            self.send_control({"type": "tunnel_health", "name": name, "healthy": healthy})

    def _tunnel_remove(self, message: Dict[str, Any], name: str) -> None:
        self.tunnels.pop(name, None)
        self.proxies.pop(name, None)
        self.up.pop(name, None)
        self._cancel_retry(name)
        self._stop_check(name)
        self.log.info("tunnel {name} removed by the server's operator", name=printable(name))

    def _tunnel_down(self, message: Dict[str, Any], name: str) -> None:
        reason = printable(_text(message, "reason", MAX_SHOWN * 4, ""))
        self.up.pop(name, None)
        self._stop_check(name)
        if name in self.tunnels and len(self.factory.tunnel_errors) < MAX_TUNNEL_ERRORS:
            self.factory.tunnel_errors[name] = f"closed by the server: {reason}"
        self.log.warn("tunnel {name} down: {reason}", name=printable(name), reason=reason)

    def _connections_refused(self, message: Dict[str, Any], name: str) -> None:
        """The server turned public connections to one of our tunnels away (it says so once per interval)."""
        reason = printable(_text(message, "reason", MAX_SHOWN * 4, ""))
        count = _integer(message, "count", 1, 2**31)
        if name not in self.tunnels:
            return
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
        client = printable(_text(message, "client", 128), 128)
        version = printable(_text(message, "serverVersion", 64, "?"), 64)
        interval, timeout = _seconds(message, "heartbeatInterval"), _seconds(message, "heartbeatTimeout")
        if interval is not None and timeout is not None and interval >= timeout:
            raise ProtocolError("login_ok: 'heartbeatInterval' must be shorter than 'heartbeatTimeout'")
        features = message.get("features", [])
        if not isinstance(features, list):
            raise ProtocolError("login_ok: 'features' must be a list")
        self.server_features = {f for f in features[:16] if f in (TUNNEL_STATUS, CLIENT_RELOADED, DATAGRAM_DROPS)}
        if WINDOW_BUDGET in features[:16] and WINDOW_BUDGET in LOGIN_FEATURES:  # both sides announced it
            self.use_window_budget()
        else:
            self.use_legacy_windows()
        self.authenticated = True
        self._stop_login_timer()
        self.factory.connected(self)
        self.log.info(
            "logged in to {host}:{port} as {client} (server {version})",
            host=self.server[0],
            port=self.server[1],
            client=client,
            version=version,
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

    def _operator_tunnel(self, message: Dict[str, Any], name: str) -> None:
        """A tunnel defined on the server (panel or console): open it if our config allows it."""
        keys = message.get("spec")
        if not isinstance(keys, dict):
            raise ProtocolError("tunnel_add: 'spec' must be an object")
        try:
            proxy = parse_spec(keys)
        except UnknownType as e:
            self._decline(name, "?", str(e))
            return
        except SpecError as e:
            raise ProtocolError(f"tunnel_add: {e}") from None
        try:
            check_name(name, "a tunnel name")
        except InvalidName as e:
            self._decline(name, proxy.local_description, f"the tunnel is malformed: {e}")
            return
        local = proxy.local_description
        if name in {t.name for t in self.config.tunnels}:
            self._decline(name, local, "this client's config defines a tunnel of that name")
            return
        endpoint = proxy.local_endpoint
        refusal = (
            self.config.operator_tunnel_refusal(*endpoint) if endpoint is not None
            else f"a {proxy.type} tunnel has no local address that allowOperatorTunnels could allow"
        )
        if refusal is not None:
            # Whatever the operator sent before under this name is gone too
            # (an edit moves a tunnel by sending it again).
            self.tunnels.pop(name, None)
            self.proxies.pop(name, None)
            self.up.pop(name, None)
            self._decline(name, local, refusal)
            return
        assert endpoint is not None
        self.tunnels[name] = TunnelSpec(name=name, type=proxy.type, local_ip=endpoint[0], local_port=endpoint[1])
        self.proxies[name] = proxy
        self._cancel_retry(name)
        self._stop_check(name)
        self.log.info("tunnel {name} added by the server's operator -> {local}", name=name, local=local)
        self._request_tunnel(self.tunnels[name])

    def _decline(self, name: str, local_addr: str, reason: str) -> None:
        """Refuse an operator-defined tunnel: log it once, tell the server why."""
        key = (name, local_addr)
        if key not in self.factory.declined:
            if len(self.factory.declined) < MAX_DECLINED_REMEMBERED:
                self.factory.declined.add(key)
            self.log.error(
                "refusing tunnel {name} -> {local} from the server's operator: {reason}",
                name=printable(name), local=printable(local_addr), reason=printable(reason),
            )
        self.send_control({"type": "tunnel_declined", "name": name, "reason": reason[:500]})

    #: Handlers of the messages a logged-in server may send, by type.
    _after_login: Dict[str, Callable[["ClientControlProtocol", Dict[str, Any], str], None]] = {
        "tunnel_up": _tunnel_up,
        "tunnel_refused": _tunnel_refused,
        "tunnel_add": _operator_tunnel,
        "tunnel_remove": _tunnel_remove,
        "tunnel_down": _tunnel_down,
        "connections_refused": _connections_refused,
    }

    def _request_tunnel(self, spec: TunnelSpec) -> None:
        self.send_control({"type": "tunnel_open", "name": spec.name, "spec": self.proxies[spec.name].to_keys()})

    # -- reload ----------------------------------------------------------------

    def reconfigure(self, old: Sequence[TunnelSpec], new: Sequence[TunnelSpec]) -> None:
        """
        The config's tunnels changed from ``old`` to ``new`` (a reload, see
        ``gotaxy.client.reload``): open the added ones, close the removed
        and disabled ones (``tunnel_close``: the server stops listening, and
        their open connections go on until they end, or until
        ``DRAIN_GRACE`` seconds have passed), reopen the changed ones
        (``tunnel_open`` with the new spec: the server closes the old
        listener and its connections and opens the new one), and leave the
        others alone: not one frame of theirs is touched.
        """
        self.config = self.factory.config
        before = {t.name: t for t in old if t.enabled}
        after = {t.name: t for t in new if t.enabled}
        for name in before.keys() - after.keys():
            self._drop_tunnel(name)
        for name, spec in after.items():
            was = before.get(name)
            if was == spec:
                continue
            proxy = proxy_spec(spec)
            self.tunnels[name] = spec
            self.proxies[name] = proxy
            self._cancel_retry(name)
            self._stop_check(name)
            self.factory.tunnel_attempts.pop(name, None)
            self.factory.tunnel_errors.pop(name, None)
            if was is not None and name in self.up:
                self.up.pop(name)
            self._request_tunnel(spec)
        for spec in new:
            if not spec.enabled:
                self.tunnels[spec.name] = spec  # defined, not opened: its name stays reserved
                self.proxies[spec.name] = proxy_spec(spec)

    def report_reload(self, who: str, summary: str) -> None:
        """Tell a server that records reloads (``client_reloaded``) that this client re-read its file."""
        if CLIENT_RELOADED in self.server_features and not self.disconnecting:
            self.send_control({"type": CLIENT_RELOADED, "who": who[:100], "detail": summary[:2000]})

    def _drop_tunnel(self, name: str) -> None:
        self.tunnels.pop(name, None)
        self.proxies.pop(name, None)
        self.up.pop(name, None)
        self._cancel_retry(name)
        self._stop_check(name)
        self.factory.tunnel_attempts.pop(name, None)
        self.factory.tunnel_errors.pop(name, None)
        if not self.disconnecting:
            self.send_control({"type": "tunnel_close", "name": name})
        draining = [stream for stream in self.streams.values() if stream.tunnel == name]
        if draining:
            self.log.info(
                "tunnel {name} closed by a reload; {count} open connection(s) may finish within {grace:g} s",
                name=name, count=len(draining), grace=DRAIN_GRACE,
            )
            self.reactor.callLater(DRAIN_GRACE, self._end_drained, name, draining)
        else:
            self.log.info("tunnel {name} closed by a reload", name=name)

    def _end_drained(self, name: str, streams: Sequence[Stream]) -> None:
        if name in self.tunnels:
            return  # opened again since: its connections are its own again
        for stream in streams:
            if self.streams.get(stream.id) is stream and not stream.closed:
                stream.cut(f"tunnel {name} was removed from the client's config {DRAIN_GRACE:g} s ago")

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
        proxy = self.proxies[stream.tunnel]
        limiter = self._limiter(stream.tunnel, proxy)
        if limiter is not None:
            limiter.stream_opened(stream)
        type_of(proxy).connect(self.reactor, proxy, stream, functools.partial(self._local_failed, stream=stream, spec=spec))

    def stream_refused(self, tunnel: str, reason: str) -> None:
        """A public connection to ``tunnel`` was refused here (our own stream limit): one line per interval."""
        count = self.factory.refusal_throttle(("local", tunnel))
        if count is not None:
            self.log.warn(
                "tunnel {name}: refused {count} public connection(s) (said at most once per {interval:g} s): {reason}",
                name=printable(tunnel), count=count, interval=REPORT_INTERVAL, reason=reason,
            )

    def _limiter(self, name: str, proxy: ProxySpec) -> Optional[BandwidthLimiter]:
        """The tunnel's limit on this end (shared by its streams; a new one when its spec changes)."""
        known = self._limiters.get(name)
        if known is None or known[0] is not proxy:
            known = self._limiters[name] = (proxy, limiter_for(self.reactor, proxy, "client"))
        return known[1]

    def flow_opened(self, flow: Flow) -> None:
        """A visitor of a udp tunnel: its type gives it an association to the local service."""
        spec = self.tunnels.get(flow.tunnel)
        if spec is None or not spec.enabled:
            flow.close(f"{CLOSE_ERROR_PREFIX}the client has no open tunnel named {flow.tunnel!r}")
            return
        proxy = self.proxies[flow.tunnel]
        limiter = self._limiter(flow.tunnel, proxy)
        if limiter is not None:  # bandwidthLimitMode "client": its datagrams over the limit are dropped here
            limiter.stream_opened(flow)
        type_of(proxy).connect_flow(self.reactor, proxy, flow, functools.partial(self._local_failed, stream=flow,
                                                                                 spec=spec))
        if self._drop_report is None and not self._connection_lost:
            self._drops_since = self.reactor.seconds()
            self._drop_report = self.reactor.callLater(REPORT_INTERVAL, self._report_drops)

    def _report_drops(self, final: bool = False) -> None:
        """
        The udp tunnels' drops on this side since the last report: one log
        line per tunnel that dropped any, kept for the admin API, and sent to
        a server that takes them; again in REPORT_INTERVAL while any has
        associations.
        """
        from gotaxy.proxy.udp import take_drops

        if self._drop_report is not None and self._drop_report.active():
            self._drop_report.cancel()  # called before its time (a test, the connection's end)
        self._drop_report = None
        now = self.reactor.seconds()
        seconds, self._drops_since = now - self._drops_since, now
        active = False
        for name, drops, live in take_drops(self):
            active = active or live
            if not drops:
                continue
            self.factory.datagram_drops(name).add(drops)
            total = drops.too_large + drops.queue_full + drops.no_slot + drops.bandwidth
            self.log.warn("udp tunnel {name}: {total} datagram(s) dropped on this client in the last {seconds:.0f} s "
                          "({detail})", name=name, total=total, seconds=seconds, detail=drops.text())
            if not final and DATAGRAM_DROPS in self.server_features and not self.disconnecting:
                self.send_control({"type": DATAGRAM_DROPS, "name": name, "tooLarge": drops.too_large,
                                   "queueFull": drops.queue_full, "noSlot": drops.no_slot,
                                   "bandwidth": drops.bandwidth})
        if active and not final:
            self._drop_report = self.reactor.callLater(REPORT_INTERVAL, self._report_drops)

    def _local_failed(self, failure: Failure, stream: Any, spec: TunnelSpec) -> None:
        local = self.proxies[spec.name].local_description if spec.name in self.proxies else "?"
        if is_fd_exhaustion(failure.value):
            # Not the local service's fault: this process has no descriptor
            # left for the connection.  Every connection fails the same
            # way, so say it once per interval.
            reason = f"the client is {fd_exhaustion()}"
            count = self.factory.fd_throttle(spec.name)
            if count is not None:
                self.log.error(
                    "tunnel {name}: cannot connect to {local}: {reason} ({count} connection(s) "
                    "failed this way in the last {interval:g} s)",
                    name=spec.name, local=local, reason=reason, count=count,
                    interval=REPORT_INTERVAL,
                )
        else:
            reason = f"cannot reach local service {local}: {failure.getErrorMessage()}"
            self.log.warn("tunnel {name}: {reason}", name=spec.name, reason=reason)
        if isinstance(stream, Flow):
            stream.close(CLOSE_ERROR_PREFIX + reason)
        else:
            stream.local_closed(CLOSE_ERROR_PREFIX + reason)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._connection_lost = True
        if self.heartbeat is not None:
            self.heartbeat.stop()
        for name in list(self.retries):
            self._cancel_retry(name)
        for name in list(self.checks):
            self._stop_check(name)
        self._stop_login_timer()
        super().connectionLost(reason)  # ends every flow: their sockets' last drops are counted
        if self._drop_report is not None:
            self._report_drops(final=True)
        if not self.authenticated and reason is not None:
            self.factory.reconnection.failed(reason)
        if not self.authenticated and self.factory.servers is not None and self.transport is not None:
            # It took the connection but no log-in came of it: the next attempt starts with another server.
            self.factory.servers.passed_over(self.transport.getPeer())
        if self.authenticated:
            self.log.info(
                "disconnected from the server: {reason}",
                reason=reason.getErrorMessage() if reason is not None else "closed",
            )
            self.factory.reconnection.session_ended()
        self.factory.disconnected(self)


class ClientControlFactory(Factory):
    noisy = False

    def __init__(
        self,
        config: ClientConfig,
        verifier: ServerVerifier,
        reactor: Any,
        fatal: Callable[[str], None],
        instance_id: str = "",
        reconnection: Optional[Reconnection] = None,
    ) -> None:
        self.config = config
        self.instance_id = instance_id
        self.last_refusal: Optional[str] = None
        self.verifier = verifier
        #: With several servers (``serverAddr`` lists them): each one's check, and the list the endpoint tries.
        self.verifiers: Dict[Tuple[str, int], ServerVerifier] = {}
        self.servers: Optional[ServerList] = None
        self.reactor = reactor
        self.fatal = fatal
        self.fd_throttle = Throttle(reactor, REPORT_INTERVAL)
        self.refusal_throttle = Throttle(reactor, REPORT_INTERVAL)
        self.refusal_counts: Dict[str, int] = {}
        #: Refusals in a row per tunnel (kept across reconnects), for the backoff.
        self.tunnel_attempts: Dict[str, int] = {}
        #: Why each tunnel that is not up is not (kept across reconnects), for the admin API's status.
        self.tunnel_errors: Dict[str, str] = {}
        self.rng: Callable[[], float] = random.random
        self.reconnection = reconnection or Reconnection(server_address(config), reactor)
        self.current: Optional[ClientControlProtocol] = None  #: logged in
        self.latest: Optional[ClientControlProtocol] = None  #: connected, maybe not logged in
        #: (name, localAddr) of operator tunnels refused and logged already.
        self.declined: Set[Tuple[str, str]] = set()
        #: udp tunnels' datagrams dropped on this client since it started, by tunnel name (``gotaxy.proxy.udp.Drops``)
        self._datagram_drops: Dict[str, Any] = {}

    def datagram_drops(self, name: str) -> Any:
        """Tunnel ``name``'s drops on this client reported so far (a ``gotaxy.proxy.udp.Drops``, made the first time)."""
        drops = self._datagram_drops.get(name)
        if drops is None:
            from gotaxy.proxy.udp import Drops

            drops = self._datagram_drops[name] = Drops()
        return drops

    def udp_drops(self, name: str) -> Any:
        """Tunnel ``name``'s drops on this client since it started, the ones not reported yet too."""
        from gotaxy.proxy.udp import Drops, pending_drops

        drops = Drops()
        drops.add(self.datagram_drops(name))
        if self.current is not None:
            drops.add(pending_drops(self.current, name))
        return drops

    def server_at(self, peer: Any) -> Tuple[str, int]:
        """The ``serverAddr`` entry a connection to ``peer`` reached (the first one if it cannot tell)."""
        entry = self.servers.entry_for(peer) if self.servers is not None else None
        return entry if entry is not None else self.config.servers[0]

    def verifier_for(self, server: Tuple[str, int]) -> ServerVerifier:
        """How to check the server at ``server`` (each entry of ``serverAddr`` under its own name and port)."""
        return self.verifiers.get(server, self.verifier)

    def buildProtocol(self, addr: Any) -> ClientControlProtocol:
        self.latest = ClientControlProtocol(self)
        return self.latest

    def connected(self, protocol: ClientControlProtocol) -> None:
        self.current = protocol
        self.last_refusal = None
        self.reconnection.logged_in()

    def disconnected(self, protocol: ClientControlProtocol) -> None:
        if self.current is protocol:
            self.current = None


def server_address(config: ClientConfig) -> str:
    """The server, or the servers, for a log line: ``host:port``, or ``a:7000, b:7000``."""
    return ", ".join(entry_text(entry) for entry in config.servers)
