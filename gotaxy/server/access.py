# -*- test-case-name: tests.test_access -*-
"""
Who may connect at all: address rules and automatic bans, checked before
anything else happens on a connection.

Where the checks run
--------------------
Every listener asks ``AccessControl`` in its factory's ``buildProtocol``,
which is before TLS, before the pending-log-in admission and before a
stream is opened; a refused connection gets no protocol and is closed by
the reactor at once:

* the control port (``AdmittingTLSFactory``), the panel and the console
  (``GatedFactory`` around their factories, by ``gotaxy.server.tap``);
* every tunnel's public side: ``PublicFactory`` (tcp), a shared front's
  factory (``GatedFactory``, listener ``tunnels``), and, once a front has
  routed a connection to its tunnel, ``PublicConnection.open_stream``
  checks the tunnel's own rules (``LiveTunnel.admits``).  A type that
  serves datagrams calls ``LiveTunnel.admits(host)`` for each new visitor.

So a new proxy type inherits the rules without knowing of them.

Rules
-----
``access.<listener>.allow`` / ``.deny`` (listeners: ``control``,
``webServer``, ``console``, ``tunnels``) and ``access.perTunnel`` (a
tunnel's own, by ``CLIENT/TUNNEL`` or ``CLIENT/*``).  A source in a deny
list is refused; with an allow list, only a source in it is let in; deny
wins.  An IPv4-mapped IPv6 peer (``::ffff:198.51.100.7``, what a dual-stack
socket reports) is checked as the IPv4 address it is.  A tunnel's
connection must pass both ``access.tunnels`` and its own rules.

Bans
----
Failures are counted per source address and kind in this process, in a
sliding window of ``access.ban.window`` seconds (``FailureCounter``, at
most ``MAX_TRACKED`` sources): wrong client tokens, protocol garbage before
log-in (a control message that is not a login, a frame that does not
decode, a TLS handshake that fails), connections refused as a flood (over
``transport.maxPendingPerIP`` and the connection limits), wrong HTTP
basic-auth passwords (``gotaxy.proxy.vhost``), and operator lock-outs (the
panel's and console's lock-out, ``gotaxy.server.operators``, counts the
passwords in the store: a lock-out it records is one failure here, so its
passwords are not counted twice).
At a kind's threshold the source is banned on every listener for
``access.ban.time`` seconds, doubled with each repeat up to
``access.ban.maxTime``; repeats are remembered ``access.ban.forgetAfter``
seconds.  Addresses in ``access.ban.exempt`` (loopback by default: a local
reverse proxy in front of the panel must not get everybody banned) are
never banned.

A ban is a row in the store (``gotaxy.store.bans``) and a ``ban.added``
event; lifting one is ``ban.lifted``.  Connections are checked against an
in-memory copy (a dict look-up, no store read): it is loaded at start,
updated at once by this process's bans and lifts and by the events other
processes record (read from the events table within about a second), and
reloaded from the store every ``REFRESH_INTERVAL`` seconds, which also
drops the bans that expired and tells of them (``ban.expired``, once across
processes: ``gotaxy.store.bans.expire``).  A new ban also calls the faces'
``ban_hooks``: the panel ends the sessions logged in from there and closes
their live views, the console disconnects its connections from there.

Firewall
--------
With ``access.ban.nftSet`` (and ``nftSet6`` for IPv6) each ban is added to
that nftables set and removed when it is lifted or expires
(``gotaxy.server.nft``), so the kernel drops a banned source's packets
before they reach Gotaxy; the operator's ruleset references the set.
"""

from __future__ import annotations

import collections
import ipaddress
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gotaxy.events import BAN_ADDED, BAN_LIFTED, OPERATOR_LOCKED_OUT, Event
from gotaxy.logs import gotaxy_observer

if TYPE_CHECKING:
    # Imported where used: the client imports this module (through
    # gotaxy.server.limits) and needs neither the store nor SQLAlchemy.
    from gotaxy.store import bans as stored_bans

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: The listeners rules are kept for (``access.<name>.allow`` / ``.deny``).
CONTROL = "control"
WEB = "webServer"
CONSOLE = "console"
TUNNELS = "tunnels"
LISTENERS = (CONTROL, WEB, CONSOLE, TUNNELS)

#: Kinds of failure, each with its threshold setting.
TOKEN = "token"
PROTOCOL = "protocol"
LOGIN = "login"
BASIC_AUTH = "basic_auth"
FLOOD = "flood"
KINDS = {
    TOKEN: ("ban_token_failures", "wrong client tokens"),
    PROTOCOL: ("ban_protocol_errors", "protocol errors on the control port"),
    LOGIN: ("ban_login_lockouts", "operator log-in lock-outs (panel or console)"),
    BASIC_AUTH: ("ban_basic_auth_failures", "wrong HTTP basic-auth passwords"),
    FLOOD: ("ban_flood_refusals", "connections refused as a flood"),
}

#: Why a connection was refused (``refused`` counts, ``/metrics``).
DENIED = "denied"
BANNED = "banned"

#: Sources whose failures are counted at once; beyond, the oldest is forgotten.
MAX_TRACKED = 4096
#: Seconds between reloads of the bans in force from the store.
REFRESH_INTERVAL = 15.0


def canonical(host: str) -> Optional[Address]:
    """The peer's address as checked: IPv4-mapped IPv6 as IPv4; None for what is not an IP (a UNIX socket)."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except (ValueError, AttributeError):
        return None
    if address.version == 6 and address.ipv4_mapped is not None:  # type: ignore[union-attr]
        return address.ipv4_mapped  # type: ignore[union-attr,no-any-return]
    return address


def ban_key(address: Address, ipv6_prefix: int = 128) -> str:
    """
    What a source is counted and banned as: an IPv4 address alone
    (``198.51.100.7``), an IPv6 address as its network of ``ipv6_prefix``
    bits (``2001:db8:1:2::/64``: one site usually holds a whole /64, so
    banning one of its addresses alone would be a step aside), or alone at 128.
    """
    if address.version == 4 or ipv6_prefix >= 128:
        return str(address)
    host_bits = 128 - ipv6_prefix
    return str(ipaddress.IPv6Network(((int(address) >> host_bits) << host_bits, ipv6_prefix)))


def _networks(texts: Iterable[str]) -> Tuple[Network, ...]:
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def _contains(networks: Sequence[Network], address: Address) -> bool:
    version = address.version
    return any(network.version == version and address in network for network in networks)


@attrs.frozen
class AddressRules:
    """An allow and a deny list: deny wins; with an allow list, only what is in it passes."""

    allow: Tuple[Network, ...] = ()
    deny: Tuple[Network, ...] = ()

    @classmethod
    def of(cls, allow: Iterable[str], deny: Iterable[str]) -> "AddressRules":
        return cls(_networks(allow), _networks(deny))

    @property
    def empty(self) -> bool:
        return not (self.allow or self.deny)

    def permits(self, address: Optional[Address]) -> bool:
        if address is None:
            return True  # not an IP peer (a UNIX socket): only local users reach it
        if self.deny and _contains(self.deny, address):
            return False
        return not self.allow or _contains(self.allow, address)

    def to_json(self) -> Dict[str, List[str]]:
        return {"allow": [str(n) for n in self.allow], "deny": [str(n) for n in self.deny]}


NO_RULES = AddressRules()


@attrs.frozen
class RuleSet:
    """Every rule of ``access.*``, built once per config."""

    listeners: Dict[str, AddressRules]
    #: (client, tunnel or "*") -> its rules
    per_tunnel: Dict[Tuple[str, str], AddressRules]

    @classmethod
    def from_config(cls, settings: Any) -> "RuleSet":
        listeners = {
            CONTROL: AddressRules.of(settings.control_allow, settings.control_deny),
            WEB: AddressRules.of(settings.web_allow, settings.web_deny),
            CONSOLE: AddressRules.of(settings.console_allow, settings.console_deny),
            TUNNELS: AddressRules.of(settings.tunnels_allow, settings.tunnels_deny),
        }
        per_tunnel = {}
        for pattern, allow, deny in settings.per_tunnel:
            client, _, tunnel = pattern.partition("/")
            per_tunnel[(client, tunnel)] = AddressRules.of(allow, deny)
        return cls(listeners, per_tunnel)

    def for_tunnel(self, client: str, name: str) -> AddressRules:
        return self.per_tunnel.get((client, name)) or self.per_tunnel.get((client, "*")) or NO_RULES

    def to_json(self) -> Dict[str, Any]:
        return {
            "listeners": {name: rules.to_json() for name, rules in self.listeners.items()},
            "perTunnel": {f"{c}/{t}": rules.to_json() for (c, t), rules in sorted(self.per_tunnel.items())},
        }


class FailureCounter:
    """
    Failures per (kind, source) in a sliding window, on the reactor's clock;
    at most ``max_tracked`` sources at once (the oldest is forgotten first).
    """

    def __init__(self, reactor: Any, window: float, max_tracked: int = MAX_TRACKED) -> None:
        self.reactor = reactor
        self.window = window
        self.max_tracked = max_tracked
        self._times: Dict[Tuple[str, str], Deque[float]] = {}

    def __len__(self) -> int:
        return len(self._times)

    def add(self, kind: str, source: str) -> int:
        """Count one failure now; return how many are in the window (this one included)."""
        now = self.reactor.seconds()
        key = (kind, source)
        times = self._times.get(key)
        if times is None:
            if len(self._times) >= self.max_tracked:
                del self._times[next(iter(self._times))]
            times = self._times[key] = collections.deque()
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) > 1024:
            times.popleft()
        return len(times)

    def forget(self, source: str) -> None:
        for key in [k for k in self._times if k[1] == source]:
            del self._times[key]


@attrs.frozen
class Ban:
    """A ban in force, as this process knows it."""

    address: str
    reason: str
    strikes: int
    at: float
    until: float
    by: str

    def to_json(self, now: float) -> Dict[str, Any]:
        return {"address": self.address, "reason": self.reason, "strikes": self.strikes, "at": self.at,
                "until": self.until, "by": self.by, "remaining": max(0.0, self.until - now)}


def _ban_of(record: stored_bans.BanRecord) -> Ban:
    return Ban(record.address, record.reason, record.strikes, record.at, record.until, record.by)


class BanRefused(ValueError):
    """An operator's ban or lift that cannot be done; the message says why."""


class AccessControl:
    """
    The address rules and the bans of one server process (see the module
    docstring).  ``store`` is the ``ThreadedStore``, ``record`` writes an
    event; ``firewall`` (``gotaxy.server.nft.NftSets``) mirrors the bans
    into nftables, or None.
    """

    log = Logger(observer=gotaxy_observer)

    def __init__(self, config: Any, reactor: Any, store: Any = None, events: Any = None,
                 firewall: Any = None) -> None:
        self.reactor = reactor
        self.store = store
        self._configure(config.access)
        if firewall is None and (self.settings.nft_set or self.settings.nft_set6):
            from gotaxy.server.nft import NftSets

            firewall = NftSets(reactor, self.settings.nft_command, self.settings.nft_set, self.settings.nft_set6)
        self.firewall = firewall
        self.failures = FailureCounter(reactor, self.settings.ban_window)
        #: address text -> the ban in force
        self.bans: Dict[str, Ban] = {}
        #: (listener, reason) -> connections refused
        self.refused: Dict[Tuple[str, str], int] = collections.Counter()
        self._banning: Set[str] = set()
        #: Called with each address newly banned (the core cuts what it has open from there).
        self.on_ban: Callable[[str], None] = lambda address: None
        #: The faces' hooks for a new ban (the panel's and console's sessions): each is called with the
        #: ban's address (or IPv6 network) and a test of a peer's host text for being under it.
        self.ban_hooks: List[Callable[[str, Callable[[str], bool]], None]] = []
        self._refresh = LoopingCall(self._refresh_now)
        self._refresh.clock = reactor
        self.events = events
        if events is not None:
            events.subscribe(self._event)
            events.subscribe(self._local_event, local_only=True)

    def _configure(self, settings: Any) -> None:
        self.settings = settings
        self.rules = RuleSet.from_config(settings)
        self._control = self.rules.listeners[CONTROL]
        self._tunnels = self.rules.listeners[TUNNELS]
        self.exempt = _networks(settings.ban_exempt)
        self.ipv6_prefix = getattr(settings, "ban_ipv6_prefix", 128)

    def key(self, address: Address) -> str:
        """What ``address`` is counted and banned as (``ban_key`` with ``access.ban.ipv6Prefix``)."""
        return ban_key(address, self.ipv6_prefix)

    def covers(self, banned: str, address: Optional[Address]) -> bool:
        """Is ``address`` under the ban of ``banned`` (an address, or an IPv6 network)?"""
        if address is None or self.exempted(address):
            return False
        if str(address) == banned:
            return True
        try:
            network = ipaddress.ip_network(banned, strict=False)
        except ValueError:
            return False
        return network.version == address.version and address in network

    def _target(self, host: str) -> str:
        """The key an operator's ban or lift of ``host`` (an address, or an IPv6 network of the prefix) is about."""
        address = canonical(host)
        if address is not None:
            return self.key(address)
        try:
            network = ipaddress.ip_network(host.strip(), strict=False)
        except (ValueError, AttributeError):
            network = None
        if network is not None and network.version == 6 and network.prefixlen == self.ipv6_prefix:
            return str(network)
        raise BanRefused(f"{host[:64]!r} is not an IP address; give one such as 203.0.113.7 or 2001:db8::7 "
                         f"(an IPv6 address is banned as its /{self.ipv6_prefix}, access.ban.ipv6Prefix)")

    # -- service -------------------------------------------------------------

    def start(self) -> None:
        if self.firewall is not None:
            self.firewall.start()  # emptied first; then the bans in force (more are added as they load)
            for address in self.bans:
                self.firewall.add(address)
        if self.store is not None and not self._refresh.running:
            self._refresh.start(REFRESH_INTERVAL, now=True)

    def stop(self) -> None:
        if self._refresh.running:
            self._refresh.stop()

    def _refresh_failed(self, failure: Any) -> None:
        from gotaxy.store import failure_logger  # here: gotaxy.store imports the proxies, which import this module

        failure_logger(self.log, "reading the bans from the store failed")(failure)

    def _refresh_now(self) -> Optional[Deferred]:
        d = self.refresh()
        d.addErrback(self._refresh_failed)
        return None  # a slow store must not stop the loop

    def load(self, db: Any) -> None:
        """
        Read the bans in force from ``db`` at once, synchronously: only at
        start, before the reactor runs (so the first connection is checked
        against them); afterwards ``refresh`` reads them on the store's thread.
        """
        from gotaxy.store import bans as stored_bans

        self.bans = {r.address: _ban_of(r) for r in stored_bans.active(db, self.reactor.seconds())}

    def refresh(self) -> Deferred:
        """Reload the bans in force from the store (and drop the expired ones)."""
        if self.store is None:
            return Deferred.fromCoroutine(self._noop())
        from gotaxy.store import bans as stored_bans

        d = self.store.call(stored_bans.expire_and_list, self.store.store, self.reactor.seconds())
        d.addCallback(self._loaded)
        return d

    @staticmethod
    async def _noop() -> None:
        return None

    def _loaded(self, records: List[stored_bans.BanRecord]) -> None:
        fresh = {r.address: _ban_of(r) for r in records}
        gone = [a for a in self.bans if a not in fresh]
        added = [a for a in fresh if a not in self.bans]
        self.bans = fresh
        if self.firewall is not None:
            for address in gone:
                self.firewall.remove(address)
            for address in added:
                self.firewall.add(address)
        for address in added:  # banned by another process: what is open from there closes here too
            self._cut(address)

    # -- checks (on every connection: no store, no logging) ------------------

    def _banned(self, address: Optional[Address]) -> bool:
        if address is None or not self.bans:
            return False
        ban = self.bans.get(str(address))
        if ban is None and address.version == 6:
            ban = self.bans.get(self.key(address))  # banned as its network (access.ban.ipv6Prefix)
        # An exempt address is never banned, also not as part of its /64.
        return ban is not None and ban.until > self.reactor.seconds() and not self.exempted(address)

    def admits(self, listener: str, host: str) -> bool:
        """May a connection from ``host`` reach ``listener`` (``CONTROL``, ``WEB``, ...)?"""
        rules = self.rules.listeners[listener]
        if not self.bans and rules.empty:
            return True  # nothing to check: no address parsed
        address = canonical(host)
        if self._banned(address):
            self.refused[(listener, BANNED)] += 1
            return False
        if not rules.permits(address):
            self.refused[(listener, DENIED)] += 1
            return False
        return True

    def admits_tunnel(self, client: str, name: str, host: str, routed: bool = False) -> bool:
        """
        May ``host`` reach tunnel ``client/name``?  ``routed``: the front's
        listener checked the ban and ``access.tunnels`` already; only the
        tunnel's own rules are left.
        """
        if not self.rules.per_tunnel and (routed or (not self.bans and self._tunnels.empty)):
            return True  # nothing to check: no address parsed
        address = canonical(host)
        if not routed:
            if self._banned(address):
                self.refused[(TUNNELS, BANNED)] += 1
                return False
            if not self._tunnels.permits(address):
                self.refused[(TUNNELS, DENIED)] += 1
                return False
        if self.rules.per_tunnel and not self.rules.for_tunnel(client, name).permits(address):
            self.refused[(TUNNELS, DENIED)] += 1
            return False
        return True

    def exempted(self, address: Address) -> bool:
        return _contains(self.exempt, address)

    # -- failures and bans ---------------------------------------------------

    def failure(self, kind: str, host: str, detail: str = "") -> None:
        """One failure of ``kind`` (``TOKEN``, ``PROTOCOL``, ...) from ``host``; bans at the kind's threshold."""
        settings = self.settings
        if not settings.ban_enable:
            return
        threshold = getattr(settings, KINDS[kind][0])
        address = canonical(host)
        if not threshold or address is None or self.exempted(address):
            return
        source = self.key(address)
        if source in self._banning or self._banned(address):
            return
        if self.failures.add(kind, source) < threshold:
            return
        self.failures.forget(source)
        reason = f"{threshold} {KINDS[kind][1]} in {settings.ban_window:g} s"
        if detail:
            reason += f" ({detail})"
        self._banning.add(source)
        d = self.ban(source, reason)
        d.addErrback(lambda f: self.log.failure("banning {address} failed", f, address=source))
        d.addBoth(lambda _: self._banning.discard(source))

    def ban(self, host: str, reason: str, by: str = "automatic", seconds: Optional[float] = None) -> Deferred:
        """Ban ``host`` on every listener (stored, with its event); fires with the ``Ban``."""
        return Deferred.fromCoroutine(self._ban(host, reason, by, seconds))

    async def _ban(self, host: str, reason: str, by: str, seconds: Optional[float]) -> Ban:
        target = self._target(host)
        if self.store is None:
            raise BanRefused("this server has no store to keep bans in")
        from gotaxy.store import bans as stored_bans

        s = self.settings
        now = self.reactor.seconds()
        record = await self.store.call(
            stored_bans.ban, self.store.store, target, reason, now, s.ban_time,
            s.ban_max_time, s.ban_forget_after, by, seconds,
        )
        ban = _ban_of(record)
        self._put(ban)
        # The ban's length as decided (from ``now``), not what is left once the store answered.
        self.log.warn("banned {address} for {seconds:.0f} s on every listener: {reason} (ban {strikes}, by {by})",
                      address=ban.address, seconds=ban.until - now, reason=ban.reason,
                      strikes=ban.strikes, by=by)
        return ban

    def _put(self, ban: Ban) -> None:
        new = ban.address not in self.bans
        self.bans = {**self.bans, ban.address: ban}
        if new and self.firewall is not None:
            self.firewall.add(ban.address)
        if new:
            self._cut(ban.address)

    def _cut(self, address: str) -> None:
        def under(host: str) -> bool:
            return self.covers(address, canonical(str(host)))

        for hook in (lambda a, _: self.on_ban(a), *self.ban_hooks):
            try:
                hook(address, under)
            except Exception:
                self.log.failure("closing the connections of banned {address} failed", address=address)

    def lift(self, host: str, by: str) -> Deferred:
        """Lift ``host``'s ban (stored, with its event); fires with True, or False if it was not banned."""
        return Deferred.fromCoroutine(self._lift(host, by))

    async def _lift(self, host: str, by: str) -> bool:
        source = self._target(host)
        lifted = False
        if self.store is not None:
            from gotaxy.store import bans as stored_bans

            lifted = await self.store.call(stored_bans.lift, self.store.store, source, by, self.reactor.seconds())
        self._drop(source)
        self.failures.forget(source)
        if lifted:
            self.log.info("ban of {address} lifted by {by}", address=source, by=by)
        return bool(lifted)

    def _drop(self, address: str) -> None:
        if address in self.bans:
            self.bans = {a: b for a, b in self.bans.items() if a != address}
            if self.firewall is not None:
                self.firewall.remove(address)

    def in_force(self) -> List[Ban]:
        """The bans in force now, the longest-lasting first."""
        now = self.reactor.seconds()
        return sorted((b for b in self.bans.values() if b.until > now), key=lambda b: -b.until)

    def _local_event(self, event: Event) -> None:
        """This process's operator lock-outs (the lock-out counted the passwords: one failure here)."""
        if event.type == OPERATOR_LOCKED_OUT and event.address:
            self.failure(LOGIN, event.address, "operator log-in locked out")

    def _event(self, event: Event) -> None:
        """Bans and lifts another process recorded."""
        if event.type not in (BAN_ADDED, BAN_LIFTED) or not event.address:
            return
        if self.store is not None and event.node == self.store.store.node:
            return  # ours: applied already
        if event.type == BAN_LIFTED:
            self._drop(event.address)
        self.refresh().addErrback(self._refresh_failed)

    # -- reload --------------------------------------------------------------

    def apply(self, config: Any) -> List[Any]:
        """``access.*`` from a reload: rules for connections from now on, ban settings at once."""
        from gotaxy.server.reload import applied, changed_keys, needs_restart

        old = self.settings
        new = config.access
        if new == old:
            return []
        keys = [k for k in changed_keys(_holder(old), _holder(new)) if k.startswith("access.")]
        done = []
        firewall = [k for k in keys if k.startswith(("access.ban.nft",))]
        rules = [k for k in keys if k not in firewall and not k.startswith("access.ban.")]
        bans = [k for k in keys if k.startswith("access.ban.") and k not in firewall]
        self._configure(new)
        self.failures.window = new.ban_window
        if rules:
            done.append(applied(" / ".join(rules), "for connections from now on"))
        if bans:
            done.append(applied(" / ".join(bans), "at once; bans in force keep their end"))
        if firewall:
            done.append(needs_restart(" / ".join(firewall), "the nftables sets are set up at start"))
        return done

    # -- for the faces -------------------------------------------------------

    def describe(self) -> Dict[str, Any]:
        """The rules in force and the ban settings (the panel, console and REST API show them)."""
        s = self.settings
        return {
            **self.rules.to_json(),
            "ban": {
                "enable": s.ban_enable, "window": s.ban_window, "time": s.ban_time, "maxTime": s.ban_max_time,
                "forgetAfter": s.ban_forget_after, "exempt": list(s.ban_exempt),
                "ipv6Prefix": self.ipv6_prefix,
                "thresholds": {kind: getattr(s, setting) for kind, (setting, _) in KINDS.items()},
                "nftSet": s.nft_set, "nftSet6": s.nft_set6,
            },
            "refused": [{"listener": listener, "reason": reason, "count": count}
                        for (listener, reason), count in sorted(self.refused.items())],
        }


def _holder(settings: Any) -> Any:
    """A ServerConfig around ``settings``, for ``changed_keys``."""
    from gotaxy.config import ServerConfig

    return attrs.evolve(ServerConfig(), access=settings)


class GatedFactory(Factory):
    """
    ``wrapped``, behind ``access.admits(listener, host)``: a refused
    connection gets no protocol (the reactor closes it at once), before the
    wrapped factory (TLS, SSH, HTTP) sees a byte.
    """

    noisy = False

    def __init__(self, access: Callable[[], AccessControl], listener: str, wrapped: Any) -> None:
        self._access = access
        self.listener = listener
        self.wrapped = wrapped

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", None)
        if host is not None and not self._access().admits(self.listener, host):
            return None
        return self.wrapped.buildProtocol(addr)

    def logPrefix(self) -> str:
        """The wrapped factory's (Twisted logs "Site starting on 7500" by it; scripts and tests wait for that line)."""
        prefix = getattr(self.wrapped, "logPrefix", None)
        return prefix() if prefix is not None else self.wrapped.__class__.__name__

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)
