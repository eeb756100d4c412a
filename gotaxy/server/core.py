# -*- test-case-name: tests.test_manage -*-
"""
The live state of a Gotaxy server and the rules that change it.

``ServerCore`` holds who is connected (``sessions``: client name -> control
connection) and which tunnels are up (``tunnels``: (client, tunnel name) ->
``LiveTunnel``), and is the only place that changes them:

* ``login`` checks a token and registers the session.  A client that logs in
  again while its old session is still registered (a reconnect the server
  has not noticed yet) replaces it, if it proves to be the same installation
  (the same ``instance`` id, see ``gotaxy.client.identity``): the old
  connection is closed and its tunnels are torn down *before* the new
  session opens any, so ports come free and are taken again without
  "address already in use".  Any other log-in under a name that is
  connected is refused (``IdentityInUse``) and the first keeps working:
  two machines sharing one token would otherwise replace each other forever.
  A wrong token is recorded as one ``login.failed`` event and one log line
  per source address a minute, carrying the number of attempts
  (``gotaxy.server.throttle``), so guessing costs the attacker, not the
  disk.
* ``open_tunnel`` parses the tunnel's spec with its proxy type
  (``gotaxy.proxy``), which claims the public address through the port
  rules (``gotaxy.server.claims``, ``gotaxy.ports``) and serves it.
* ``session_lost`` closes the client's listeners and marks it offline.
* ``add_tunnel``, ``edit_tunnel`` (both push the tunnel to the client),
  ``disable_tunnel``, ``enable_tunnel``, ``restart_tunnel`` and
  ``remove_tunnel`` are the operator's actions on a tunnel.

Every change to one client's tunnels, the client's own requests and the
operator's actions alike, runs under that client's lock (``ClientLocks``,
see ``gotaxy.server.session``), one at a time.  The client is a
``ClientSession``; the core tells it things through that interface and never
writes a control message itself.

Operators (web panel, console, command line) act through
``gotaxy.server.manage``, which checks their arguments, calls in here and
words the outcome for each face.  Every decision is written to the store's
events table and the row is published on ``events`` for live watchers
(``record``; events other processes write arrive there from
``gotaxy.server.outbox``).  The store is reached only
through ``ThreadedStore``, so this module never blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Tuple, TypeVar

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gotaxy.bandwidth import ServerBandwidth, limiter_for
from gotaxy.config import ServerConfig
from gotaxy.credentials import tokens_equal
from gotaxy.events import (
    CLIENT_RELOADED,
    CLIENT_REPLACED,
    LIMITS_CHANGED,
    LOGIN_FAILED,
    TUNNEL_CLOSED,
    TUNNEL_ERROR,
    TUNNEL_DISABLED,
    TUNNEL_EDITED,
    TUNNEL_ENABLED,
    TUNNEL_REFUSED,
    TOKEN_CHANGED,
    TOKEN_REVOKED,
    Event,
    EventBus,
)
from gotaxy.jointoken import JoinTokenError, parse_join_token
from gotaxy.logs import Throttle, gotaxy_observer
from gotaxy.names import InvalidName, check_name, is_valid_name
from gotaxy.oslimits import fd_exhaustion
from gotaxy.ports import PortAllocator, server_ports
from gotaxy.proxy import ExposeContext, ProxySpec, PublicAddress, SpecError, TunnelRefused, parse_spec, registry, type_of
from gotaxy.server.access import TOKEN, TUNNELS, AccessControl, GatedFactory, canonical
from gotaxy.server.certificates import ClientCertificates
from gotaxy.server.claims import PortReservations
from gotaxy.server.domains import DomainRules
from gotaxy.server.session import ClientLocks, ClientSession
from gotaxy.server.throttle import OTHERS, RepeatThrottle
from gotaxy.server.traffic import TrafficMeters
from gotaxy.server.tunnel import REFUSAL_REPORT_INTERVAL, LiveTunnel
from gotaxy.server.limits import ConnectionLimits  # after tunnel: limits -> access -> store -> proxy -> tunnel
from gotaxy.store import SOURCE_SERVER, StoreUnreachable, ThreadedStore, TunnelRecord
from gotaxy.store import overrides as stored_overrides
from gotaxy.store.overrides import Override
from gotaxy.tls.clients import ClientCertificate, ClientCertificateRefused, ClientCertificateVerifier

if TYPE_CHECKING:
    from gotaxy.server.reload import Change

T = TypeVar("T")

#: A client that logs in with the shared ``auth.token`` is named
#: ``shared:<user>``.  A token's name never contains ':', so a shared-token
#: client can never be given a per-client token's name, and with it that
#: client's session, tunnels or reserved ports.
SHARED_PREFIX = "shared:"

#: Longest client name (the store's and the API's limit).
MAX_CLIENT_NAME = 64


def valid_client_name(name: Any) -> bool:
    """A client is named after its token, or ``shared:NAME`` (see SHARED_PREFIX)."""
    if not isinstance(name, str):
        return False
    if name.startswith(SHARED_PREFIX):
        name = name[len(SHARED_PREFIX) :]
        if len(SHARED_PREFIX) + len(name) > MAX_CLIENT_NAME:
            return False
    return is_valid_name(name)


#: Tunnels one client may ask for, whatever maxPortsPerClient says.
MAX_TUNNELS_PER_CLIENT = 256

#: At most one log line per client name in this many seconds about log-ins
#: refused because another installation is connected under that name.
IN_USE_LOG_INTERVAL = 600.0

#: Failed log-ins from one address within this many seconds are one
#: login.failed event (and one log line) with their count.
LOGIN_FAILURE_INTERVAL = 60.0

#: Seconds between traffic-rate samples.
RATE_INTERVAL = 1.0

#: At most one tunnel.error event per tunnel in this many seconds: a dead
#: local service fails every connection, and one event says it.
TUNNEL_ERROR_INTERVAL = 60.0

#: Idle public connections are looked for this often (seconds) at most; a
#: connection is closed within a quarter of tunnelIdleTimeout of reaching it.
IDLE_CHECK_MAX_INTERVAL = 30.0

#: A stopping server asks its clients to come back within this many seconds
#: per client (``goodbye``'s ``reconnectWithin``), at least ``GOODBYE_MIN``
#: and at most ``GOODBYE_MAX``: a log-in costs the next server a TLS
#: handshake and a few store calls, some milliseconds, so a thousand clients
#: spread over two seconds arrive about as fast as it takes them in, rather
#: than a thousand at once into transport.maxPendingConnections (256).
GOODBYE_PER_CLIENT = 0.002
GOODBYE_MIN = 0.1
GOODBYE_MAX = 10.0


def goodbye_spread(clients: int) -> float:
    """Over how many seconds a stopping server's ``clients`` should spread their reconnections."""
    return min(GOODBYE_MAX, max(GOODBYE_MIN, clients * GOODBYE_PER_CLIENT))


class LoginRefused(Exception):
    """The client may not log in; the message is sent to it."""


class IdentityInUse(LoginRefused):
    """Another installation is connected under this client's name."""


class CertificateRefused(LoginRefused):
    """The client's certificate (or its absence) is refused; the message says what to do."""


class DatabaseUnreachable(LoginRefused):
    """
    The store did not answer: the log-in is refused for now, and the client
    is told to come back (an ``error``, not ``login_failed``, so that every
    client, old or new, with loginFailExit or not, tries again).
    """


class TunnelNotFound(LookupError):
    """An operator named a tunnel the store does not have."""


class TunnelConflict(Exception):
    """An operator's action does not apply to this tunnel now; the message says why and what to do."""


def _text(message: Dict[str, Any], key: str, limit: int, default: str = "") -> str:
    value = message.get(key, default)
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{key!r} must be a string of at most {limit} characters")
    return value


def _printable(text: str, limit: int) -> str:
    """``text`` from a peer, made safe for logs and terminals: no control characters, at most ``limit``."""
    return "".join(c if c.isprintable() else " " for c in text[:limit]).strip()


class ServerCore:
    log = Logger(observer=gotaxy_observer)

    def __init__(self, config: ServerConfig, store: ThreadedStore, reactor: Any,
                 client_certificates: Optional[ClientCertificateVerifier] = None) -> None:
        self.config = config
        self.store = store
        self._db = store.store
        self.reactor = reactor
        self.ports = PortAllocator(config.allow_ports, server_ports(config))
        #: which host names a client may claim for its websites (``gotaxy.server.domains``)
        self.domains = DomainRules(self)
        #: Each proxy type's shared front (its listener for all its tunnels), if it has one.
        self.fronts: Dict[str, Any] = {}
        for proxy_type in registry.types():
            front = proxy_type.make_front(config, reactor)
            if front is not None:
                self.fronts[proxy_type.name] = front
                # A front that needs the core (the store, the refusal reports) says so.
                attach = getattr(front, "attach", None)
                if attach is not None:
                    attach(self)
        self.events = EventBus()
        #: Address rules and bans, checked by every listener before anything else (``gotaxy.server.access``).
        self.access = AccessControl(config, reactor, store, self.events)
        self.access.on_ban = self._cut_banned
        for front in self.fronts.values():
            if hasattr(front, "gate"):  # its listener checks bans and access.tunnels before it reads a byte
                front.gate = lambda factory: GatedFactory(lambda: self.access, TUNNELS, factory)
        # What the store records (the state changes' events and ``record``'s)
        # is published here, once, as the row was written.
        store.on_recorded = self.events.publish
        store.on_reachability = self._store_reachability
        #: Log-ins refused since the store became unreachable (said when it is back).
        self.refused_unreachable = 0
        # A token revoked elsewhere (``gotaxy token revoke`` in a shell, another
        # server): its client is cut off now, not at the next periodic check.
        self.events.subscribe(self._token_revoked)
        #: Client certificates (``transport.tls.trustedCaFile``), or None: tokens only (``gotaxy.server.certificates``).
        self.certificates = ClientCertificates(self, client_certificates) if client_certificates is not None else None
        self.events.subscribe(self._token_changed)
        self.sessions: Dict[str, ClientSession] = {}
        #: The one lock owner for every client's tunnels (see ``gotaxy.server.session``).
        self.locks = ClientLocks()
        self.tunnels: Dict[Tuple[str, str], LiveTunnel] = {}
        # Listeners being closed, so a reopen of the same tunnel waits.
        self._closing: Dict[Tuple[str, str], Deferred] = {}
        self.started_at = reactor.seconds()
        #: Connections and bytes per tunnel, per client and in all (``gotaxy.server.traffic``).
        self.meters = TrafficMeters()
        #: maxBandwidth and maxBandwidthPerClient, set live by ``apply`` and ``apply_overrides``
        self.bandwidth = ServerBandwidth(reactor, config.limits.max_bandwidth, config.limits.max_bandwidth_per_client)
        #: The settings an operator changed live, which win over the file's (``gotaxy.store.overrides``).
        self.overrides: Dict[str, Override] = {}
        self.events.subscribe(self._overrides_changed)
        #: The server's defaults for a tunnel's connection limits (``tunnelMaxConnections`` ...).
        self.tunnel_limits = ConnectionLimits.server_defaults(config)
        self._last_error: Dict[Tuple[str, str], float] = {}
        self._in_use_logged: Dict[str, float] = {}
        self._rates = LoopingCall(self._sample_rates)
        self._rates.clock = reactor
        #: Counts refused public connections per tunnel between reports.
        self.refusals = Throttle(reactor, REFUSAL_REPORT_INTERVAL)
        #: Counts public connections turned away for want of descriptors.
        self._fd_refusals = Throttle(reactor, REFUSAL_REPORT_INTERVAL)
        self._idle = LoopingCall(self._close_idle)
        self._idle.clock = reactor
        #: Failed log-ins per source address, reported once a minute with their count.
        self.login_failures = RepeatThrottle(reactor, LOGIN_FAILURE_INTERVAL, self._report_login_failures)
        self._recording: Set[Deferred] = set()  #: events of failed log-ins being written

    def start(self) -> None:
        self.access.start()
        self._rates.start(RATE_INTERVAL, now=False)
        self._start_idle_checks()
        for front in self.fronts.values():
            front.start()

    def stop(self) -> None:
        for front in self.fronts.values():
            front.stop()
        if self._rates.running:
            self._rates.stop()
        if self._idle.running:
            self._idle.stop()
        self.access.stop()
        self.flush_pending_reports()
        if self.certificates is not None:
            self.certificates.stop()

    def _start_idle_checks(self) -> None:
        timeout = self.config.limits.tunnel_idle_timeout
        if self._idle.running:
            self._idle.stop()
        if timeout > 0:
            self._idle.start(min(timeout / 4, IDLE_CHECK_MAX_INTERVAL), now=False)

    def _close_idle(self) -> None:
        timeout = self.config.limits.tunnel_idle_timeout
        now = self.reactor.seconds()
        for tunnel in list(self.tunnels.values()):
            closed = tunnel.close_idle(now, timeout)
            if closed:
                self.log.info(
                    "tunnel {client}/{tunnel}: closed {count} public connection(s) idle for {timeout:g} s "
                    "(tunnelIdleTimeout)",
                    client=tunnel.client, tunnel=tunnel.name, count=closed, timeout=timeout,
                )

    # -- events --------------------------------------------------------------

    async def record(self, type_: str, **fields: Any) -> Optional[Event]:
        """
        Write an event (a type from ``gotaxy.events``) to the events table;
        the row, as recorded, is then published on ``events``.  Store calls
        that change state record their own event the same way (the store
        builds it, ``ThreadedStore`` publishes it): nothing is published
        that is not in the table, nor written twice.
        """
        event = Event(type=type_, at=self.reactor.seconds(), **fields)
        # While the database is unreachable the row waits in the store's
        # queue (ThreadedStore.keep), and is published when it is written.
        recorded: Optional[Event] = await self.store.keep(self._db.record, event)
        return recorded

    # -- login ---------------------------------------------------------------

    def _store_reachability(self, unreachable: bool, message: str) -> None:
        """The store's database went away or came back: one line each way."""
        if unreachable:
            self.log.warn(
                "{message}; connected clients keep their tunnels, new log-ins and changes that need the "
                "database are refused, and events are kept to be written when it is back", message=message,
            )
            return
        kept = self.store.dropped
        self.log.info(
            "the server's database is reachable again; {refused} log-in(s) were refused meanwhile{dropped}",
            refused=self.refused_unreachable,
            dropped=f", {kept} write(s) over the queue's {self.store.MAX_KEPT} were lost" if kept else "",
        )
        self.refused_unreachable = 0

    async def login(self, session: ClientSession, message: Dict[str, Any], peer_certificates: Sequence[Any] = ()) -> str:
        """
        Authenticate ``session``; return the client's name or raise LoginRefused.
        ``peer_certificates``: the chain the client presented in the TLS handshake, leaf first.
        A log-in needs the store (the token's hash, the client's row): while
        the database is unreachable it is refused with ``DatabaseUnreachable``.
        """
        try:
            return await self._login(session, message, peer_certificates)
        except StoreUnreachable as e:
            name = session.client_name
            if name is not None and self.sessions.get(name) is session:
                del self.sessions[name]
            session.client_name = None
            self.refused_unreachable += 1
            if self.refused_unreachable == 1:  # the others are counted, and the count said when it is back
                self.log.info("refused the log-in from {address}: {error}", address=session.peer_address, error=e)
            raise DatabaseUnreachable(
                "the server's database is unreachable, so it cannot check log-ins now (connected clients keep "
                "working); retrying"
            ) from None

    async def _login(self, session: ClientSession, message: Dict[str, Any], peer_certificates: Sequence[Any]) -> str:
        address = session.peer_address
        try:
            token = _text(message, "token", 256)
            user = _text(message, "user", 64)
            hostname = _text(message, "hostname", 255)
            session.client_version = _text(message, "version", 32, "?")
            instance = _text(message, "instance", 64)
        except ValueError as e:
            raise LoginRefused(f"malformed login: {e}") from None
        # Clients send a join token's secret only; one sent whole (by a
        # client older than join tokens, or a script) is checked the same way.
        try:
            join = parse_join_token(token)
        except JoinTokenError:
            join = None
        if join is not None:
            token = join.secret

        certificate: Optional[ClientCertificate] = None
        if self.certificates is not None:
            # Before the token: a client without the right certificate learns that, not "wrong token".
            try:
                certificate = await self.certificates.check(peer_certificates, address)
            except ClientCertificateRefused as e:
                raise CertificateRefused(str(e)) from None
        name: Optional[str] = None
        via_store = False
        shared = False
        if certificate is not None and self.certificates is not None and self.certificates.alone:
            name = certificate.name  # auth.method = "certificate": the certificate alone
        elif self.config.token and tokens_equal(token, self.config.token):
            shared = True
            user = user or hostname.split(".")[0]
            # With a certificate, the certificate names the client (below).
            name = SHARED_PREFIX + user if certificate is None else certificate.name
            if certificate is None and (not is_valid_name(user) or len(name) > MAX_CLIENT_NAME):
                raise LoginRefused(
                    "logging in with the shared auth.token needs a client name: set 'user' "
                    f"(at most {MAX_CLIENT_NAME - len(SHARED_PREFIX)} letters, digits, '.', '_', '-') "
                    "in the client's config"
                )
        else:
            record = await self.store.call(self._db.authenticate_token, token)
            if record is not None:
                name = record.name
                via_store = True
                self.bandwidth.set_client(name, record.max_bandwidth)  # before its first tunnel opens
        if name is None:
            # One event and one log line per source address a minute, not
            # one per attempt: see _report_login_failures.
            host = address.rsplit(":", 1)[0]
            self.access.failure(TOKEN, host)
            recorded = self.login_failures.add(host, address)
            if recorded is not None:
                await recorded  # the first of a series: in the store before the client hears
            if not token and message.get("method") == "certificate" and self.certificates is None:
                # A client set up for certificates alone (auth.method = "certificate") at a server that takes none.
                raise CertificateRefused(
                    "this server does not take client certificates (it has no transport.tls.trustedCaFile), so it "
                    "needs a token: set auth.token in the client's config ('gotaxy token create NAME' on the server "
                    "prints one) and leave out auth.method = \"certificate\", or have the server's operator set "
                    "transport.tls.trustedCaFile")
            raise LoginRefused("invalid, expired or revoked token")
        if certificate is not None and name != certificate.name:
            raise CertificateRefused(
                f"the token is client {name!r}'s but the client certificate names {certificate.name!r}; use the "
                f"token of {certificate.name!r} or that client's certificate")
        if session.lost:
            raise LoginRefused("connection lost during login")

        old = self.sessions.get(name)
        if old is not None and old is not session:
            if not (instance and old.instance and tokens_equal(instance, old.instance)):
                raise self._identity_in_use(name, address, old, shared=not via_store)
            self.log.info(
                "client {client} reconnected from {address}; closing its previous connection from {old}",
                client=name,
                address=address,
                old=old.peer_address,
            )
            old.close_with_error(f"replaced by a new connection from {address}")
            await self.drop_session(old, f"replaced by a new connection from {address}", CLIENT_REPLACED)
        if session.lost:
            raise LoginRefused("connection lost during login")
        session.client_name = name
        session.token_checked = via_store
        session.instance = instance
        session.certificate = certificate
        session.shared_token = shared
        self.sessions[name] = session
        await self.store.call(self._db.client_connected, name, address, session.client_version)
        self.log.info(
            "client {client} connected from {address} (version {version})",
            client=name,
            address=address,
            version=session.client_version,
        )
        return name

    def _identity_in_use(self, name: str, address: str, old: ClientSession, shared: bool) -> IdentityInUse:
        """The refusal for a second installation under ``name``; logged once per interval."""
        old_host = old.peer_address.rsplit(":", 1)[0]
        if shared:
            fix = ("with the shared token, give each machine its own name: set user = \"NAME\" "
                   "(or --user NAME) in this client's config")
        else:
            fix = ("one token is for one machine: create another for this one on the server with "
                   "'gotaxy token create NAME' and use it here")
        now = self.reactor.seconds()
        last = self._in_use_logged.get(name)
        if last is None or now - last >= IN_USE_LOG_INTERVAL:
            self._in_use_logged[name] = now
            self.log.warn(
                "client {client}: refused a log-in from {address}: another installation is connected "
                "under this name from {old}, and keeps its session (said at most once per {interval:g} s)",
                client=name, address=address, old=old.peer_address, interval=IN_USE_LOG_INTERVAL,
            )
        return IdentityInUse(
            f"client {name!r} is already connected from {old_host} by another installation; {fix}. "
            f"If that connection is gone, the server notices within {self.config.heartbeat_timeout:g} s; "
            "try again after that"
        )

    def _report_login_failures(self, host: Any, count: int, address: str, first: bool) -> Deferred:
        """
        ``RepeatThrottle`` report: the first failure from ``host`` at once,
        with its full address; then, once a minute while they go on, one
        ``login.failed`` event carrying the number of further attempts.
        """
        if first:
            where, detail = address, "invalid token"
            self.log.warn("login failed from {address}: invalid, expired or revoked token", address=address)
        else:
            seconds = self.login_failures.interval
            if host == OTHERS:
                where = None
                detail = f"invalid token; {count} more attempts from further addresses in the last {seconds:g} s"
            else:
                where = host
                detail = f"invalid token; {count} more attempts in the last {seconds:g} s"
            self.log.warn(
                "login failed from {where}: {count} more attempts with an invalid, expired or revoked token "
                "in the last {seconds:g} s",
                where=where or "further addresses", count=count, seconds=seconds,
            )
        recording = Deferred.fromCoroutine(
            self.record(LOGIN_FAILED, address=where, detail=detail, count=count)
        )
        self._recording.add(recording)
        recording.addErrback(lambda f: self.log.failure("recording failed log-ins failed", f))
        recording.addBoth(lambda _: self._recording.discard(recording))
        return recording

    async def operator_tunnels(self, client: str) -> List[TunnelRecord]:
        """The enabled tunnels operators defined for ``client`` (pushed at login)."""
        records = await self.store.call(self._db.list_tunnels, client)
        return [r for r in records if r.source == SOURCE_SERVER and r.enabled]

    # -- tunnels -------------------------------------------------------------

    def _locked(self, session: ClientSession, work: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """Run ``work()`` under the lock of ``session``'s client."""
        assert session.client_name is not None, "a session has a name once it is logged in"
        return self.locks.run(session.client_name, work)

    async def push_operator_tunnels(self, session: ClientSession) -> None:
        """Send a client that just logged in the tunnels operators defined for it."""

        async def push() -> None:
            assert session.client_name is not None
            for record in await self.operator_tunnels(session.client_name):
                spec = self._stored_spec(record)
                if spec is not None and not (session.lost or session.dropped):
                    session.offer_tunnel(record.name, spec)

        await self._locked(session, push)

    async def open_tunnel(self, session: ClientSession, message: Dict[str, Any]) -> LiveTunnel:
        """The client asks for a tunnel: open it, or raise TunnelRefused."""
        return await self._locked(session, lambda: self._open_or_refuse(session, message))

    async def _open_or_refuse(self, session: ClientSession, message: Dict[str, Any]) -> LiveTunnel:
        client = session.client_name
        assert client is not None
        name = message.get("name")
        try:
            check_name(name, "a tunnel name")
        except InvalidName as e:
            raise TunnelRefused(str(e)) from None
        try:
            return await self._open_tunnel(session, client, name, message)
        except TunnelRefused as refused:
            self.log.warn("tunnel {client}/{tunnel} refused: {reason}", client=client, tunnel=name, reason=refused)
            # A tunnel refused at its first open is listed too (with why),
            # unless an operator just removed it or the client is gone.
            try:
                spec: Optional[ProxySpec] = parse_spec(message.get("spec"))
            except SpecError:
                spec = None
            listed = spec is not None and name not in session.removed_tunnels and not (session.lost or session.dropped)
            await self.store.call(
                self._db.tunnel_down, client, name, "refused", str(refused), TUNNEL_REFUSED,
                (spec.type, spec.local_description, spec.to_keys()) if listed and spec is not None else None,
            )
            raise

    async def _open_tunnel(self, session: ClientSession, client: str, name: str, message: Dict[str, Any]) -> LiveTunnel:
        try:
            spec = parse_spec(message.get("spec"))
        except SpecError as e:
            raise TunnelRefused(str(e)) from None
        proxy_type = type_of(spec)
        key = (client, name)
        if name in session.removed_tunnels:
            raise TunnelRefused(f"tunnel {name!r} was removed by the operator")
        existing = self.tunnels.get(key)
        if existing is not None:
            if existing.session is not session:
                raise TunnelRefused(f"tunnel {name!r} is already open")
            if existing.spec == spec:
                return existing  # asked again for what it has: nothing to do
            # The client asks with new settings (an operator edited the
            # tunnel while its first open was in flight): they win.
            await self.close_tunnel(existing, "reopened with new settings", cut_connections=True)
        mine = self.tunnels_of(client)
        if len(mine) >= MAX_TUNNELS_PER_CLIENT:
            raise TunnelRefused(f"a client may have at most {MAX_TUNNELS_PER_CLIENT} tunnels")
        limit = self.config.limits.max_ports_per_client
        if limit and len(mine) >= limit:
            raise TunnelRefused(f"client {client!r} already has {len(mine)} ports open; maxPortsPerClient is {limit}")

        closing = self._closing.get(key)
        if closing is not None:
            await closing
        record = await self.store.call(self._db.get_tunnel, client, name)
        if session.lost or session.dropped:
            raise TunnelRefused("client disconnected")
        if record is not None and not record.enabled:
            raise TunnelRefused(f"tunnel {name!r} is disabled by the operator")
        if record is not None and record.source == SOURCE_SERVER and record.spec != spec.to_keys():
            # An operator changed this tunnel after the client was sent it;
            # the store has the settings and the client is being sent them.
            raise TunnelRefused(f"tunnel {name!r} was changed by the operator; opening it with the new settings")

        tunnel = LiveTunnel(
            client=client,
            name=name,
            spec=spec,
            session=session,
            source=record.source if record is not None else "client",
        )
        claims = PortReservations(self, key, record.address if record is not None else None)
        context = ExposeContext(
            reactor=self.reactor, config=self.config, claims=claims, front=self.fronts.get(proxy_type.name),
            out_of_descriptors=lambda: self._out_of_descriptors(tunnel),
        )
        # Before it is exposed: a connection may come while expose() waits for its claim.
        tunnel.count_into(self.meters.tunnel(client, name))
        # transport.bandwidthLimitMode = "server": this end limits the tunnel's streams, under the
        # client's and the server's limits, which govern the streams of every other tunnel.
        client_limits = self.bandwidth.client(client)
        self.meters.client(client).limiter = client_limits
        tunnel.meter.limiter = limiter_for(self.reactor, spec, "server", client_limits.buckets)
        exposure = await proxy_type.expose(tunnel, context)
        tunnel.exposure, tunnel.address = exposure, exposure.address
        # The session may have gone (or been dropped: kicked, replaced, shut
        # down) while we were binding.
        if session.lost or session.dropped or key in self.tunnels or name in session.removed_tunnels:
            exposure.close()
            await claims.release(exposure.address)  # it never came up: a fresh claim is not its to keep
            raise TunnelRefused("client disconnected")
        self.tunnels[key] = tunnel
        session.tunnels[name] = tunnel
        address = exposure.address
        await self.store.call(self._db.tunnel_up, client, name, spec.type, tunnel.local_addr, address, spec.to_keys())
        self.log.info(
            "tunnel {client}/{tunnel} up on {address} -> {local}",
            client=client,
            tunnel=name,
            address=address.description,
            local=tunnel.local_addr,
        )
        return tunnel

    async def check_address(self, address: PublicAddress, key: Tuple[str, str]) -> None:
        """
        Raise TunnelRefused (a port) or SpecError (a name, about
        ``customDomains``) unless this server's rules let ``key`` have
        ``address`` (for operators).  Who holds it is the store's claim to
        decide, as the tunnel is stored.
        """
        claims = PortReservations(self, key, None)
        claims.check_rules(address)
        await claims.check_names(address)

    def _out_of_descriptors(self, tunnel: LiveTunnel) -> None:
        count = self._fd_refusals(tunnel.key)
        if count is not None:
            self.log.error(
                "tunnel {client}/{tunnel}: turned {count} public connection(s) away (said at most once per "
                "{interval:g} s): the server is {reason}",
                client=tunnel.client, tunnel=tunnel.name, count=count, interval=REFUSAL_REPORT_INTERVAL,
                reason=fd_exhaustion(),
            )

    def close_tunnel(self, tunnel: LiveTunnel, reason: str, cut_connections: bool = False) -> Deferred:
        """
        Stop a tunnel's listener.  Its open connections end on their own,
        unless ``cut_connections`` (an operator disabling or restarting it).
        """
        key = tunnel.key
        if self.tunnels.get(key) is tunnel:
            del self.tunnels[key]
        tunnel.session.tunnels.pop(tunnel.name, None)
        done: Deferred = Deferred()
        self._closing[key] = done

        def stopped(_: Any) -> None:
            if self._closing.get(key) is done:
                del self._closing[key]
            done.callback(None)

        stopping = tunnel.exposure.close() if tunnel.exposure is not None else None
        (stopping if stopping is not None else succeed(None)).addBoth(stopped)
        if cut_connections:
            for stream in list(tunnel.streams):
                stream.abort(reason)
        self.log.info("tunnel {client}/{tunnel} closed: {reason}", client=tunnel.client, tunnel=tunnel.name, reason=reason)
        return done

    async def close_and_record(self, tunnel: LiveTunnel, reason: str, status: str = "down",
                               cut_connections: bool = False) -> None:
        await self.close_tunnel(tunnel, reason, cut_connections)
        await self.store.keep(self._db.tunnel_down, tunnel.client, tunnel.name, status, reason, TUNNEL_CLOSED)

    def tunnel_error(self, tunnel: LiveTunnel, reason: str) -> None:
        """
        A connection through ``tunnel`` failed on the client's side (its local
        service is down, say): record a ``tunnel.error`` event, at most one
        per tunnel every ``TUNNEL_ERROR_INTERVAL`` seconds.
        """
        now = self.reactor.seconds()
        last = self._last_error.get(tunnel.key)
        if last is not None and now - last < TUNNEL_ERROR_INTERVAL:
            return
        self._last_error[tunnel.key] = now
        Deferred.fromCoroutine(
            self.record(TUNNEL_ERROR, client=tunnel.client, tunnel=tunnel.name, detail=reason)
        ).addErrback(lambda f: self.log.failure("recording a tunnel error failed", f))

    async def client_declines_tunnel(self, session: ClientSession, message: Dict[str, Any]) -> None:
        """
        The client refuses an operator-defined tunnel it was sent (its
        ``allowOperatorTunnels`` does not list the address): record the
        refusal, with the client's reason, for the operator to see.
        """
        await self._locked(session, lambda: self._declined(session, message))

    async def _declined(self, session: ClientSession, message: Dict[str, Any]) -> None:
        name = message.get("name")
        if not isinstance(name, str) or session.offered.pop(name, None) is None:
            return  # not offered, or declined already: nothing to record
        reason = message.get("reason")
        text = _printable(reason if isinstance(reason, str) else "", 500) or "no reason given"
        client = session.client_name
        self.log.warn("tunnel {client}/{tunnel} refused by the client: {reason}", client=client, tunnel=name, reason=text)
        detail = f"refused by the client: {text}"
        await self.store.call(self._db.tunnel_down, client, name, "refused", detail, TUNNEL_REFUSED)

    def tunnel_health(self, tunnel: LiveTunnel, healthy: bool) -> None:
        """The client's health check of ``tunnel``'s local service passed or failed."""
        if healthy:
            if tunnel.health_failure is not None:
                self.log.info("tunnel {client}/{tunnel}: local service answers again", client=tunnel.client,
                              tunnel=tunnel.name)
            tunnel.health_failure = None
            return
        if tunnel.health_failure is None:
            # Our own words: the client's are not shown to operators.
            tunnel.health_failure = f"local service {tunnel.local_addr} not answering"
            self.log.warn("tunnel {client}/{tunnel} down: {reason}", client=tunnel.client, tunnel=tunnel.name,
                          reason=tunnel.health_failure)
            self.tunnel_error(tunnel, tunnel.health_failure + " (health check)")

    async def client_reloaded(self, session: ClientSession, who: str, detail: str) -> None:
        """The client re-read its config file: a ``client.reloaded`` event, in its (cleaned) words."""
        shown = f"asked by {_printable(who, 100)}: {_printable(detail, 1000)}"
        self.log.info("client {client} reloaded its config ({detail})", client=session.client_name, detail=shown)
        await self.record(CLIENT_RELOADED, client=session.client_name, address=session.peer_address, detail=shown)

    async def client_closes_tunnel(self, session: ClientSession, name: str) -> None:
        async def close() -> None:
            tunnel = session.tunnels.get(name)
            if tunnel is not None:
                await self.close_and_record(tunnel, "closed by the client")

        await self._locked(session, close)

    # -- the operator's actions on tunnels -------------------------------------
    #
    # Each runs under the client's lock, whether the client is online or not,
    # and raises TunnelNotFound, TunnelConflict, TunnelRefused (a port it may
    # not have) or StoreError (a name in use) for ``Management`` to word.

    async def _stored(self, client: str, name: str) -> TunnelRecord:
        record = await self.store.call(self._db.get_tunnel, client, name)
        if record is None:
            raise TunnelNotFound(f"client {client!r} has no tunnel named {name!r}")
        return record

    def _stored_spec(self, record: TunnelRecord) -> Optional[ProxySpec]:
        """The spec a stored tunnel was defined with, or None (logged) if this server cannot read it."""
        try:
            return parse_spec(record.spec or {})
        except SpecError as e:
            self.log.error("tunnel {client}/{tunnel}: its stored settings are not valid: {reason}",
                           client=record.client, tunnel=record.name, reason=e)
            return None

    def _push(self, record: TunnelRecord) -> None:
        """Send an enabled operator-defined tunnel to its client, if online; it opens it like its own."""
        session = self.sessions.get(record.client)
        spec = self._stored_spec(record)
        if session is not None and record.enabled and spec is not None:
            session.removed_tunnels.discard(record.name)
            session.offer_tunnel(record.name, spec)

    async def add_tunnel(self, client: str, name: str, spec: ProxySpec) -> TunnelRecord:
        """Define a tunnel of any type for ``client`` and push it to the client."""

        async def add() -> TunnelRecord:
            requested = spec.address_for(self.config)
            if requested is not None:
                await self.check_address(requested, (client, name))
            record: TunnelRecord = await self.store.call(
                self._db.add_server_tunnel, client, name, spec.type, spec.local_description, spec.to_keys(), requested
            )
            self._push(record)
            return record

        return await self.locks.run(client, add)

    async def edit_tunnel(self, client: str, name: str, changes: Dict[str, Any]) -> TunnelRecord:
        """
        Change some settings (frp's keys) of an operator-defined tunnel; it
        closes and is pushed again.  SpecError if the result is not valid.
        """

        async def edit() -> TunnelRecord:
            record = await self._stored(client, name)
            if record.source != SOURCE_SERVER:
                raise TunnelConflict(
                    f"tunnel {name!r} is defined in client {client!r}'s own config; change it there"
                )
            before = dict(record.spec or {})
            if changes.get("type", before.get("type", "tcp")) != before.get("type", "tcp"):
                before = {}  # another type: its settings replace the old ones
            merged = {key: value for key, value in {**before, **changes}.items() if value is not None}
            spec = parse_spec(merged)
            requested = spec.address_for(self.config)
            if requested is not None and requested != record.address:
                await self.check_address(requested, (client, name))
            fields: Dict[str, Any] = {"spec": spec.to_keys(), "local_addr": spec.local_description}
            if requested is not None or "remotePort" in changes:
                fields["address"] = requested  # None: the server picks a new one at the next open
            detail = ", ".join(f"{k}={v}" for k, v in changes.items())
            await self.store.call(self._db.update_tunnel, client, name, TUNNEL_EDITED, detail, **fields)
            live = self.tunnels.get((client, name))
            if live is not None:
                await self.close_tunnel(live, "changed by the operator", cut_connections=True)
            updated = await self._stored(client, name)
            self._push(updated)
            return updated

        return await self.locks.run(client, edit)

    async def remove_tunnel(self, client: str, name: str) -> None:
        """Forget an operator-defined tunnel: its port closes and is released, and the client forgets it."""

        async def remove() -> None:
            record = await self._stored(client, name)
            if record.source != SOURCE_SERVER:
                raise TunnelConflict(
                    f"tunnel {name!r} is defined in client {client!r}'s own config; remove it there, or disable it"
                )
            session = self.sessions.get(client)
            if session is not None:
                session.removed_tunnels.add(name)
                session.offered.pop(name, None)
            live = self.tunnels.get((client, name))
            if live is not None:
                await self.close_tunnel(live, "removed by the operator", cut_connections=True)
            if session is not None and not session.lost:
                session.withdraw_tunnel(name)
            await self.store.call(self._db.remove_tunnel, client, name)

        await self.locks.run(client, remove)

    async def disable_tunnel(self, client: str, name: str) -> TunnelRecord:
        """Close a tunnel (cutting its connections) and keep it closed, across reconnects and restarts."""

        async def disable() -> TunnelRecord:
            record = await self._stored(client, name)
            if not record.enabled:
                return record
            await self.store.call(self._db.update_tunnel, client, name, TUNNEL_DISABLED, None, enabled=False)
            live = self.tunnels.get((client, name))
            if live is not None:
                reason = "disabled by the operator"
                await self.close_and_record(live, reason, cut_connections=True)
                if not (live.session.lost or live.session.dropped):
                    live.session.tunnel_down(name, reason)
            return await self._stored(client, name)

        return await self.locks.run(client, disable)

    async def enable_tunnel(self, client: str, name: str) -> TunnelRecord:
        """Let a disabled tunnel open again; it opens now if its client is online."""

        async def enable() -> TunnelRecord:
            record = await self._stored(client, name)
            if record.enabled:
                return record
            await self.store.call(self._db.update_tunnel, client, name, TUNNEL_ENABLED, None, enabled=True)
            session = self.sessions.get(client)
            if session is not None:
                await self._reopen(session, await self._stored(client, name))
            return await self._stored(client, name)

        return await self.locks.run(client, enable)

    async def restart_tunnel(self, client: str, name: str) -> TunnelRecord:
        """Close a tunnel (cutting its connections) and open it again on its port."""

        async def restart() -> TunnelRecord:
            record = await self._stored(client, name)
            if not record.enabled:
                raise TunnelConflict(f"tunnel {name!r} is disabled; enable it instead")
            session = self.sessions.get(client)
            if session is None:
                raise TunnelConflict(f"client {client!r} is offline; its tunnels open when it connects")
            live = self.tunnels.get((client, name))
            if live is not None:
                await self.close_tunnel(live, "restarted by the operator", cut_connections=True)
            await self._reopen(session, record)
            return await self._stored(client, name)

        return await self.locks.run(client, restart)

    async def _reopen(self, session: ClientSession, record: TunnelRecord) -> None:
        if record.source == SOURCE_SERVER:
            self._push(record)  # the client opens it with the settings we push
            return
        # A client-defined tunnel: open it as the client last asked, and say so.
        tunnel = await self._open_or_refuse(session, {"name": record.name, "spec": record.spec})
        session.tunnel_up(tunnel)

    # -- sessions ------------------------------------------------------------

    async def drop_session(self, session: ClientSession, reason: str, event: Optional[str] = None) -> None:
        """Forget ``session``: close its tunnels and mark its client offline."""
        name = session.client_name
        if name is None or session.dropped:
            return
        session.dropped = True
        if self.sessions.get(name) is session:
            del self.sessions[name]
        await DeferredList([self.close_tunnel(t, reason) for t in list(session.tunnels.values())])
        await self.store.keep(self._db.client_disconnected, name, session.peer_address, reason)
        if event is not None:
            await self.record(event, client=name, address=session.peer_address, detail=reason)
        self.log.info("client {client} offline: {reason}", client=name, reason=reason)

    def _cut_banned(self, address: str) -> None:
        """
        A new ban: the control connections and public connections open from
        ``address`` close now (new ones are refused by the listeners).
        """
        def banned(peer: Any) -> bool:
            host = str(peer or "").rsplit(":", 1)[0]
            return self.access.covers(address, canonical(host))

        reason = f"the address {address} is banned"
        for session in list(self.sessions.values()):
            if banned(session.peer_address):
                session.close_with_error(f"{reason} on this server")
                Deferred.fromCoroutine(self.drop_session(session, reason)).addErrback(
                    lambda f: self.log.failure("dropping a banned client failed", f))
        cut = 0
        for tunnel in list(self.tunnels.values()):
            for stream, connection in list(tunnel.streams.items()):
                if not banned(getattr(stream, "peer", None)):
                    continue
                transport = getattr(connection, "transport", None)
                if transport is not None and hasattr(transport, "abortConnection"):
                    transport.abortConnection()
                    cut += 1
                elif hasattr(connection, "close_idle"):  # a udp visitor
                    connection.close_idle()
                    cut += 1
        if cut:
            self.log.info("closed {count} public connection(s) from banned {address}", count=cut, address=address)

    def session_lost(self, session: ClientSession, reason: str) -> Deferred:
        return Deferred.fromCoroutine(self.drop_session(session, reason))

    def _token_changed(self, event: Event) -> None:
        """A token's bandwidth limit changed (here or in another process): its client's connections follow."""
        if event.type != TOKEN_CHANGED or not event.client:
            return
        name = event.client
        d = self.store.call(self._db.token_bandwidth, name)
        d.addCallback(lambda rate: self.bandwidth.set_client(name, rate))
        d.addErrback(lambda f: self.log.failure("applying the bandwidth limit of token {name} failed", f, name=name))

    # -- settings changed live (gotaxy.store.overrides) ------------------------

    def file_value(self, key: str) -> int:
        """Setting ``key`` (a key of ``gotaxy.store.overrides.KEYS``) as server.toml says."""
        limits = self.config.limits
        return {"maxBandwidth": limits.max_bandwidth, "maxBandwidthPerClient": limits.max_bandwidth_per_client}[key]

    def in_force(self, key: str) -> int:
        """Setting ``key``: its live value if it has one, else server.toml's."""
        override = self.overrides.get(key)
        return override.value if override is not None else self.file_value(key)

    def load_overrides(self, db: Any) -> None:
        """The live values from the store (a ``Store``), at once: at start, before any listener accepts."""
        self.apply_overrides(stored_overrides.read(db))

    def apply_overrides(self, found: Dict[str, Override]) -> None:
        """Hold ``found`` as the live values and apply them: open connections follow at once."""
        self.overrides = dict(found)
        self.bandwidth.set(self.in_force("maxBandwidth"), self.in_force("maxBandwidthPerClient"))

    def _overrides_changed(self, event: Event) -> None:
        """A live setting changed (here or in another process): read them all again and apply them."""
        if event.type != LIMITS_CHANGED:
            return
        d = self.store.call(stored_overrides.read, self._db)
        d.addCallback(self.apply_overrides)
        d.addErrback(lambda f: self.log.failure("applying the live limits failed", f))

    def _token_revoked(self, event: Event) -> None:
        session = self.sessions.get(event.client or "") if event.type == TOKEN_REVOKED else None
        if session is not None and session.token_checked:
            Deferred.fromCoroutine(self.kick_inactive_tokens()).addErrback(
                lambda f: self.log.failure("cutting off the client of a revoked token failed", f)
            )

    async def kick_inactive_tokens(self) -> None:
        """Cut off clients whose token was revoked or expired since they logged in."""
        names = [n for n, s in self.sessions.items() if s.token_checked]
        if not names:
            return
        gone = await self.store.call(self._db.inactive_tokens, names)
        for name in gone:
            session = self.sessions.get(name)
            if session is not None:
                self.log.info("client {client}: token revoked or expired; disconnecting", client=name)
                session.close_with_error("your token was revoked or has expired")
                await self.drop_session(session, "token revoked or expired")

    async def apply(self, config: ServerConfig) -> List["Change"]:
        """
        A re-read config's settings that the core owns (``gotaxy.server.reload``):
        port rules and ``maxPortsPerClient`` close the tunnels that no longer
        fit (each with a ``tunnel.closed`` event naming the rule; the client
        is told and does not ask again until it reconnects or reloads), the
        shared ``auth.token`` disconnects clients that logged in with the old
        one, heartbeats are retuned on live connections,
        ``maxConnectionsPerClient`` applies to live connections, and
        ``tunnelIdleTimeout`` at once.  ``proxyBindAddr`` applies to tunnels
        opened from now on.
        """
        from gotaxy.server.reload import applied, changed_keys

        old, self.config = self.config, config
        changed = set(changed_keys(old, config))
        done: List[Any] = []
        ports_changed = server_ports(old) != server_ports(config)
        self.ports = PortAllocator(config.allow_ports, server_ports(config))
        if "allowPorts" in changed:
            closed = await self._close_outside_rules()
            done.append(applied(
                "allowPorts",
                f"new tunnels follow the new rules; {closed} open tunnel(s) outside them closed",
            ))
        elif ports_changed:
            # The server's own ports moved (a listener's reload rule says so): a
            # tunnel on one of the new ones gives it up.
            closed = await self._close_outside_rules()
            if closed:
                done.append(applied("allowPorts", f"{closed} open tunnel(s) on the server's own new ports closed"))
        if "maxPortsPerClient" in changed:
            closed = await self._close_over_limit()
            done.append(applied(
                "maxPortsPerClient",
                f"now {config.limits.max_ports_per_client or 'no limit'}; {closed} tunnel(s) over it closed",
            ))
        if "maxConnectionsPerClient" in changed:
            for session in self.sessions.values():
                if hasattr(session, "max_streams"):
                    session.max_streams = config.limits.max_connections_per_client  # type: ignore[attr-defined]
                    if getattr(session, "budget", True) is None:
                        session.use_legacy_windows()  # type: ignore[attr-defined]
            done.append(applied("maxConnectionsPerClient", "on every connected client's next connection"))
        defaults = [k for k in ("tunnelMaxConnections", "tunnelMaxConnectionsPerIP", "tunnelConnectionRatePerIP")
                    if k in changed]
        if defaults:
            self.tunnel_limits = ConnectionLimits.server_defaults(config)
            for key in defaults:
                done.append(applied(key, "new connections of every tunnel that sets no limit of its own"))
        bandwidth = [k for k in ("maxBandwidth", "maxBandwidthPerClient") if k in changed]
        if bandwidth:
            self.bandwidth.set(self.in_force("maxBandwidth"), self.in_force("maxBandwidthPerClient"))
            for key in bandwidth:
                live = self.overrides.get(key)
                if live is None:
                    done.append(applied(key, "at once, on open connections too"))
                else:  # an operator's live value is not undone by the file
                    done.append(applied(key, f"server.toml's {stored_overrides.shown(self.file_value(key))} is kept "
                                        f"for later: the live value {stored_overrides.shown(live.value)} set by "
                                        f"{live.by} stays in force until 'limits clear {key}'"))
        if "tunnelIdleTimeout" in changed:
            if self._rates.running:
                self._start_idle_checks()
            done.append(applied("tunnelIdleTimeout", "at once, on open connections too"))
        if "auth.token" in changed:
            kicked = 0
            for session in list(self.sessions.values()):
                if getattr(session, "shared_token", False):
                    kicked += 1
                    session.close_with_error("the server's shared auth.token changed; log in with the new one")
                    await self.drop_session(session, "the shared auth.token changed")
            done.append(applied(
                "auth.token",
                f"log-ins from now on; {kicked} client(s) logged in with the old shared token disconnected",
            ))
        heartbeat = [k for k in ("transport.heartbeatInterval", "transport.heartbeatTimeout") if k in changed]
        if heartbeat:
            for session in self.sessions.values():
                monitor = session.heartbeat
                if monitor is not None:
                    monitor.retune(config.heartbeat_interval, config.heartbeat_timeout)
                if hasattr(session, "write_stall_timeout"):
                    session.write_stall_timeout = config.heartbeat_timeout  # type: ignore[attr-defined]
            done.append(applied(
                " / ".join(heartbeat),
                f"{config.heartbeat_interval:g} s / {config.heartbeat_timeout:g} s, on connected clients too",
            ))
        if "udpPacketSize" in changed:
            done.append(applied("udpPacketSize", "udp tunnels opened from now on; open ones keep theirs until they reopen"))
        if "transport.authTimeout" in changed:
            done.append(applied("transport.authTimeout", "for connections from now on"))
        if "proxyBindAddr" in changed:
            done.append(applied("proxyBindAddr", "tunnels opened from now on; open ones keep their address"))
        for front in self.fronts.values():
            apply = getattr(front, "apply", None)
            if apply is not None:
                result = apply(config)
                done.extend(result if isinstance(result, list) else await result)
        return done

    async def _close_outside_rules(self) -> int:
        """Close the tunnels whose public address the port rules no longer allow."""
        closed = 0
        for tunnel in list(self.tunnels.values()):
            address = tunnel.address
            if address is None or not address.by_port:
                continue
            refusal = self.ports.refusal(address.port)
            if refusal is not None and self.tunnels.get(tunnel.key) is tunnel:
                await self._close_by_reload(tunnel, f"closed by a config reload: {refusal}")
                closed += 1
        return closed

    async def _close_over_limit(self) -> int:
        """Close each client's newest tunnels beyond maxPortsPerClient."""
        limit = self.config.limits.max_ports_per_client
        if not limit:
            return 0
        closed = 0
        for session in list(self.sessions.values()):
            tunnels = list(session.tunnels.values())
            for tunnel in tunnels[limit:]:
                await self._close_by_reload(
                    tunnel, f"closed by a config reload: maxPortsPerClient is now {limit} and client "
                    f"{tunnel.client!r} had {len(tunnels)} tunnels open",
                )
                closed += 1
        return closed

    async def _close_by_reload(self, tunnel: LiveTunnel, reason: str) -> None:
        async def close() -> None:
            if self.tunnels.get(tunnel.key) is not tunnel:
                return
            await self.close_and_record(tunnel, reason, cut_connections=True)
            if not tunnel.session.lost:
                tunnel.session.tunnel_down(tunnel.name, reason)

        await self._locked(tunnel.session, close)

    def flush_pending_reports(self) -> None:
        """Log and record the log-in failure counts still waiting for their minute (at stop)."""
        self.login_failures.flush()

    async def shutdown(self) -> None:
        self.stop()
        sessions = list(self.sessions.values())
        within = goodbye_spread(len(sessions))
        if sessions:
            self.log.info("shutting down: asking {count} client(s) to reconnect within {within:g} s",
                          count=len(sessions), within=within)
        for session in sessions:
            session.goodbye("server shutting down", within)
        await DeferredList([self.session_lost(s, "server shutting down") for s in sessions])
        # The counts flushed by stop() reach the store before it closes.
        await DeferredList(list(self._recording))

    # -- traffic -------------------------------------------------------------

    def _sample_rates(self) -> None:
        self.meters.sample(RATE_INTERVAL)

    def traffic(self) -> Tuple[int, int, float, float]:
        """Total bytes in and out since start, and the current rates (bytes/s)."""
        server = self.meters.server
        bytes_in, bytes_out = server.totals()
        return bytes_in, bytes_out, server.rate_in, server.rate_out

    def tunnels_of(self, client: str) -> List[LiveTunnel]:
        return [t for t in self.tunnels.values() if t.client == client]
