# -*- test-case-name: tests.test_manage -*-
"""
What an operator can see and do on a live server.

The web panel and the SSH console are two faces of this one class, so the
rules and error messages are the same in both, and a change made in one is
seen by the other at once (both read the same ``ServerCore`` and store).

Errors are ``ManagementError`` with a ``kind`` the faces map to their own
idiom (HTTP status, console exit code): ``invalid`` (bad argument),
``not_found``, ``conflict`` (port taken, name used, wrong kind of tunnel),
and a ``field``: the argument it is about, spelt as this class's parameters
and the REST API's body keys are (``client``, ``name``, ``local_addr``,
``remote_port``, ``url``, ``events``, ``address``, ...), a setting of a
tunnel's spec as ``spec.<frp key>`` (``spec.localPort``, ``spec.customDomains``;
``spec`` alone when it names no one key), or ``None`` when it is about no
one argument.  Faces read the field; none parses the message.

Tunnels come from two places (``source``):

* ``client``: the client's own config.  The operator can disable, enable and
  restart them; their local address and port are the client's to change.
* ``server``: defined here.  The server pushes them to the client
  (``tunnel_add``), which opens them like its own; the operator can also edit
  and remove them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import attrs

from gotaxy import __version__
from gotaxy.config import ConfigError, parse_host_port
from gotaxy.config.values import domain_pattern
from gotaxy.events import (
    CLIENT_KICKED,
    NOTIFY_TEST,
    Event,
    query_type_error,
)
from gotaxy.jointoken import make_join_token
from gotaxy.notify.managed import TargetError
from gotaxy.names import NAME_RULE, InvalidName, check_name, shown
from gotaxy.proxy import ProxySpec, PublicAddress, SpecError, describe_types, parse_spec
from gotaxy.proxy.udp import DatagramCounts
from gotaxy.server.core import (
    SHARED_PREFIX, ServerCore, TunnelConflict, TunnelNotFound, TunnelRefused, valid_client_name,
)
from gotaxy.server.domains import MAX_ALLOWED_DOMAINS
from gotaxy.server.tunnel import LiveTunnel
from gotaxy.store import EventRecord, StoreError, TokenRecord, TunnelRecord
from gotaxy.store.claims import DOMAIN, PORT_KINDS, Claimed


@attrs.frozen
class WebhookView:
    name: str
    url: str  #: redacted for display: "https://host[:port]/…" (the path may hold a chat token)
    events: Tuple[str, ...]
    format: str  #: json, slack, dingtalk or feishu
    signed: bool  #: has a secret (which is never shown)
    source: str  #: "config" (server.toml; read-only here) or "operator" (added in panel or console)


@attrs.frozen
class MailRecipientView:
    address: str
    events: Tuple[str, ...]
    source: str  #: "config" ([smtp] to in server.toml; read-only here) or "operator"


class ManagementError(Exception):
    """A refused operator action: ``kind`` and ``field`` as the module docstring says."""

    def __init__(self, kind: str, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field  #: the argument it is about (the panel marks that input), or None


@contextmanager
def _tunnel_errors(port_field: str = "remote_port") -> Iterator[None]:
    """
    The core's refusals of an operator's action on a tunnel, as the
    ManagementError the faces expect; a refused port is about ``port_field``
    (``remote_port`` in the tcp form, ``spec.remotePort`` in the spec form).
    """
    try:
        yield
    except TunnelNotFound as e:
        raise ManagementError("not_found", str(e), "name") from None
    except TunnelRefused as e:  # a port the tunnel may not have
        raise ManagementError("conflict", str(e), port_field) from None
    except Claimed as e:  # a port or name another tunnel holds
        raise ManagementError("conflict", str(e), port_field if e.kind in PORT_KINDS else
                              "spec.customDomains" if e.kind == DOMAIN and port_field.startswith("spec.")
                              else "name") from None
    except StoreError as e:  # the client has a tunnel of that name
        raise ManagementError("conflict", str(e), "name") from None
    except TunnelConflict as e:  # about the tunnel's state, not one argument
        raise ManagementError("conflict", str(e)) from None


@contextmanager
def _target_errors() -> Iterator[None]:
    """Notification-target refusals, as the ManagementError the faces expect."""
    try:
        yield
    except TargetError as e:
        raise ManagementError(e.kind, str(e), e.field) from None


def _unknown_client(client: str, known: Sequence[str], shown: int = 20) -> str:
    """The refusal for a tunnel for a client nobody can log in as."""
    if not known:
        names = "there are none yet"
    else:
        names = "known clients: " + ", ".join(known[:shown])
        if len(known) > shown:
            names += f" and {len(known) - shown} more"
    return (
        f"no client named {client!r} ({names}); a tunnel can be added only for a client that has "
        "connected once or has a token ('gotaxy token create NAME')"
    )


#: The tcp form's arguments (``local_addr``, ``remote_port``) that frp's keys were read from.
_TCP_FORM = {"localIP": "local_addr", "localPort": "local_addr", "remotePort": "remote_port"}


def _allowed_domains(value: Any) -> Tuple[str, ...]:
    """An allowed-domains list from an operator: names or ``*.example.com``, at most MAX_ALLOWED_DOMAINS."""
    if isinstance(value, str):
        value = [part for part in value.replace(",", " ").split() if part]
    if not isinstance(value, (list, tuple)) or len(value) > MAX_ALLOWED_DOMAINS:
        raise ManagementError("invalid", f"the allowed domains must be a list of at most {MAX_ALLOWED_DOMAINS} "
                                         "names such as \"shop.example.com\" or \"*.example.com\"", "allow_domains")
    domains = []
    for entry in value:
        try:
            domains.append(domain_pattern(entry))
        except ValueError:
            raise ManagementError("invalid", f"{str(entry)[:64]!r} is not a domain name such as \"shop.example.com\" "
                                             "or \"*.example.com\" (for any name under it)", "allow_domains") from None
    return tuple(dict.fromkeys(domains))


def _spec_field(error: SpecError, tcp_form: bool) -> Optional[str]:
    """
    The field a spec's error is about: ``spec.<frp key>`` (``spec.localPort``;
    ``spec`` when it names no one key), or in the tcp form the argument the
    key came from.
    """
    if tcp_form:
        return _TCP_FORM.get(error.key or "")
    return f"spec.{error.key}" if error.key else "spec"


#: The highest bandwidth limit a face may set (1 TiB a second): beyond it, a typo.
MAX_RATE = 2 ** 40


def bandwidth_value(value: Any, field: str) -> int:
    """Bytes a second from an operator's ``value`` (a number, or text such as "10MB"); 0 for none."""
    from gotaxy.units import parse_size

    if value is None or value == "" or value in ("none", "0"):
        return 0
    try:
        rate = parse_size(value) if isinstance(value, str) else value
    except ValueError:
        rate = None
    if isinstance(rate, bool) or not isinstance(rate, int) or not 0 <= rate <= MAX_RATE:
        raise _invalid(f"{field} must be a rate a second such as \"10MB\" or \"512KB\" (KB = 1024), a number of "
                       f"bytes up to {MAX_RATE}, or 0 for none; got {str(value)[:32]!r}", field)
    return rate


def _limit_key(key: Any) -> str:
    """``key`` if it is a setting an operator may change live (``gotaxy.store.overrides.KEYS``)."""
    from gotaxy.store.overrides import KEYS

    if key not in KEYS:
        raise _invalid(f"{str(key)[:64]!r} cannot be changed live; the settings that can are "
                       f"{' and '.join(KEYS)}", "key")
    return str(key)


def _invalid(message: str, field: Optional[str]) -> ManagementError:
    return ManagementError("invalid", message, field)


def _check_name(value: Any, what: str, field: str = "name") -> str:
    """``gotaxy.names.check_name``, refused as an ``invalid`` argument ``field``."""
    try:
        return check_name(value, what)
    except InvalidName as e:
        raise _invalid(str(e), field) from None




@attrs.frozen
class ClientView:
    name: str
    online: bool
    address: Optional[str]
    version: Optional[str]
    connected_at: Optional[float]
    last_seen_at: Optional[float]
    rtt: Optional[float]  #: last heartbeat round trip, seconds
    tunnels: Tuple[str, ...]
    #: the server node holding it while online (``DATA_DIR/node-id``); None while offline
    node: Optional[str] = None


@attrs.frozen
class TunnelView:
    client: str
    name: str
    type: str
    local_addr: str
    #: where the public reaches it (held while it is down), or None: not yet known
    address: Optional[PublicAddress]
    status: str  #: up, down, disabled, refused
    #: why it is not up: the server's refusal, or (status "down" while its
    #: port is open) its local service not answering the client
    reason: Optional[str]
    source: str
    enabled: bool
    connections: int
    opened: int
    bytes_in: int
    bytes_out: int
    rate_in: float
    rate_out: float
    #: refused: in how many seconds (from this view) the client asks for it
    #: again, if it said (0: any moment now)
    retry_in: Optional[float] = None
    #: what it is asked with: frp's keys (``type``, ``localIP``, ``remotePort``, ...)
    spec: Optional[Dict[str, Any]] = None
    #: a udp tunnel's datagram counters since the server started (``gotaxy.proxy.udp.DatagramCounts``:
    #: datagrams_in, datagrams_out, too_large, queue_full, no_slot); None for other types
    datagrams: Optional[Dict[str, int]] = None
    #: an http tunnel's requests answered with an error page since the server started, by reason
    #: (``gotaxy.proxy.vhost.REASONS``: busy, timeout, bad_gateway, unauthorized ...); None for other types
    http_refused: Optional[Dict[str, int]] = None
    #: the server node holding it while it is up (its port open there); None while it is not
    node: Optional[str] = None
    #: when its rates were measured: None live here (now), else the time of the newest history
    #: sample of the node that holds it (None: none in the last two sample intervals, rates 0)
    traffic_at: Optional[float] = None


@attrs.frozen
class NodeView:
    """One server process sharing the store (``Management.nodes``)."""

    node: str
    #: up: its lease runs; down: it stopped renewing it (killed, its machine gone) and its rows
    #: are not released yet; gone: rows still name it but it has no lease row at all
    state: str
    here: bool  #: the node that answers this request
    host: str
    pid: int
    started_at: Optional[float]
    lease_until: Optional[float]
    clients: Tuple[str, ...]  #: the clients online on it
    tunnels_up: int
    rate_in: float  #: bytes a second: live on this node; others: from their last history sample
    rate_out: float
    #: when the traffic was measured: None for this node (now), else its newest history sample (None: none yet)
    traffic_at: Optional[float]


@attrs.frozen
class ServerStatus:
    """
    The totals of ``status`` (console), ``GET /status`` and the panel's
    overview: of every node whose lease runs, the answering one included,
    with ``nodes`` (``Management.nodes``) the breakdown.  Another node's
    rates are those of its newest history sample; the byte counts are this
    node's since it started (no node counts another's bytes).
    """

    version: str
    uptime: float  #: this node's
    clients_online: int
    clients_total: int
    tunnels_up: int
    tunnels_total: int
    bytes_in: int  #: this node's, since it started
    bytes_out: int
    rate_in: float
    rate_out: float
    nodes: Tuple[NodeView, ...] = ()


def status_text(view: TunnelView) -> str:
    """``up``, or the status with its reason and retry: ``refused: port 16050 ...; retrying in 30 s``."""
    if view.status in ("up", "disabled") or not view.reason:
        text = view.status
    else:
        text = f"{view.status}: {view.reason}"
    if view.retry_in is not None:
        text += f"; retrying in {view.retry_in:.0f} s" if view.retry_in >= 1 else "; retrying now"
    return text


class Management:
    def __init__(
        self, core: ServerCore, reload: Optional[Any] = None, webhooks: Optional[Any] = None, mail: Optional[Any] = None,
        join_pin: Optional[str] = None,
    ) -> None:
        self.core = core
        #: The fingerprint new tokens carry as join tokens (gotaxy.jointoken).
        self.join_pin = join_pin
        self._db = core.store.store
        #: ``gotaxy.server.reload.ConfigReloader``, or None (set by the server's assembly).
        self.reloader: Optional[Any] = reload
        self._webhooks = webhooks  #: gotaxy.notify.managed.ManagedWebhooks, or None
        self._mail = mail  #: gotaxy.notify.managed.ManagedMailRecipients, or None
        #: Where the server's CA is, which client certificates are issued from (resolved at start, as the server's).
        self.tls_dir = os.path.join(os.path.abspath(core.config.data_dir), "tls")
        #: ``gotaxy.server.commands.CommandChannel``: actions for a client that another node of the
        #: store holds are carried out there (set by the server's assembly; None: here only).
        self.commands: Optional[Any] = None

    # -- actions on a live session, carried out by the node that holds it ------

    async def _on_owner(self, client: str, kind: str, args: Dict[str, Any], who: str = "an operator") -> Any:
        """
        Run the action ``kind`` (a key of ``_ROUTED``) with ``args``: here if
        the client is connected here or to no node, else on the node that
        holds it (``gotaxy.server.commands``), whose answer is returned or
        raised as if it had been done here.  Returns what the action returns.
        """
        here = getattr(self, _ROUTED[kind])
        if self.commands is None or client in self.core.sessions:
            return await here(**args)
        from gotaxy.store import commands as stored

        node = await self._call(stored.holder, self._db, client)
        if node is None or node == self._db.node:
            return await here(**args)
        from gotaxy.server.commands import NodeSilent, NodeUnavailable, when

        try:
            result = await self.commands.send(node, kind, args, who)
        except NodeUnavailable as e:
            state = ("has left the store" if e.lease_until is None
                     else f"stopped renewing its lease (it ran out at {when(e.lease_until)})")
            raise ManagementError("unavailable", f"client {client!r} is held by server node {node}, which {state}; "
                                  "it is probably down, and the client shows as offline once another node "
                                  "releases its rows (within a lease, 30 s)") from None
        except NodeSilent as e:
            if e.taken:
                raise ManagementError("unavailable", f"server node {node} took the command but did not finish it "
                                      f"within {e.waited:g} s; it may still take effect: look again in a "
                                      "moment") from None
            raise ManagementError("unavailable", f"server node {node} did not answer within {e.waited:g} s; it "
                                  f"may be down (its lease runs until {when(e.lease_until)})") from None
        error = result.get("error")
        if error is not None:
            raise ManagementError(str(error.get("kind") or "internal"), str(error.get("message") or ""),
                                  error.get("field"))
        view = result.get("view")
        return _view_from_json(view) if isinstance(view, dict) else None

    async def perform(self, kind: str, args: Dict[str, Any], who: str) -> Dict[str, Any]:
        """
        Carry out here a command another node sent (``gotaxy.server.commands``);
        the result as the issuer reads it.
        """
        name = _ROUTED.get(kind)
        if name is None:
            return {"error": {"kind": "invalid", "field": None, "message":
                              f"server node {self._db.node} does not know the command {kind[:32]!r}; "
                              "upgrade it to the issuer's version"}}
        try:
            answer = await getattr(self, name)(**args)
        except ManagementError as e:
            return {"error": {"kind": e.kind, "message": str(e), "field": e.field}}
        result: Dict[str, Any] = {"ok": True}
        if isinstance(answer, TunnelView):
            result["view"] = _view_json(answer)
        return result

    async def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.core.store.call(function, *args, **kwargs)

    # -- overview ------------------------------------------------------------

    async def status(self) -> ServerStatus:
        """The cluster's totals: this node's live counts plus those of every other node whose lease runs."""
        clients = await self._call(self._db.list_clients)
        tunnels = await self._call(self._db.list_tunnels)
        bytes_in, bytes_out, rate_in, rate_out = self.core.traffic()
        nodes = tuple(await self._nodes(clients, tunnels)) if self._db.node is not None else ()
        others = [n for n in nodes if not n.here and n.state == "up"]
        return ServerStatus(
            version=__version__,
            uptime=self.core.reactor.seconds() - self.core.started_at,
            # (a set: a client that just moved here may still be online on its old node in the store)
            clients_online=len(set(self.core.sessions).union(*(n.clients for n in others))),
            clients_total=len(clients),
            tunnels_up=len(self.core.tunnels) + sum(n.tunnels_up for n in others),
            tunnels_total=len(tunnels),
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            rate_in=rate_in + sum(n.rate_in for n in others),
            rate_out=rate_out + sum(n.rate_out for n in others),
            nodes=nodes,
        )

    # -- clients -------------------------------------------------------------

    async def clients(self) -> List[ClientView]:
        records = await self._call(self._db.list_clients)
        tunnels = await self._call(self._db.list_tunnels)
        others = await self._other_live_nodes()
        names: Dict[str, List[str]] = {}
        for t in tunnels:
            names.setdefault(t.client, []).append(t.name)
        views = []
        for r in records:
            session = self.core.sessions.get(r.name)
            heartbeat = getattr(session, "heartbeat", None)
            # Online here, or online on another node whose lease runs (that node has the session).
            elsewhere = session is None and r.online and r.node in others
            views.append(
                ClientView(
                    name=r.name,
                    online=session is not None or elsewhere,
                    address=session.peer_address if session is not None else r.address,
                    version=r.version,
                    connected_at=r.connected_at,
                    last_seen_at=r.last_seen_at,
                    rtt=heartbeat.rtt if heartbeat is not None else None,
                    tunnels=tuple(names.get(r.name, ())),
                    node=self._db.node if session is not None else (r.node if elsewhere else None),
                )
            )
        return views

    async def _other_live_nodes(self) -> Dict[str, float]:
        """The other nodes whose lease runs, with its end (none for a server alone on its store)."""
        if self._db.node is None:
            return {}
        return {node: until for node, until in await self._call(self._db.live_nodes) if node != self._db.node}

    async def nodes(self) -> List[NodeView]:
        """
        Every server node of the store: its lease (up, down), the clients
        online on it, its tunnels up and its traffic.
        """
        clients = await self._call(self._db.list_clients)
        tunnels = await self._call(self._db.list_tunnels)
        return await self._nodes(clients, tunnels)

    async def _samples(self) -> Dict[Tuple[str, str], Any]:
        """
        The newest history sample of each tunnel, if recent (two sample
        intervals): how this node knows the traffic of a tunnel another node holds.
        """
        from gotaxy.store import nodes as stored_nodes

        since = self.core.reactor.seconds() - 2 * self.core.config.history.sample_interval
        return await self._call(stored_nodes.latest_samples, self._db, since)  # type: ignore[no-any-return]

    async def _nodes(self, clients: Sequence[Any], tunnels: Sequence[TunnelRecord]) -> List[NodeView]:
        from gotaxy.store import nodes as stored_nodes

        now = self.core.reactor.seconds()
        rows = {r.node: r for r in await self._call(stored_nodes.list_nodes, self._db)}
        samples = await self._samples()
        held: Dict[str, List[str]] = {}
        for c in clients:
            if c.online and c.node:
                held.setdefault(c.node, []).append(c.name)
        up: Dict[str, List[TunnelRecord]] = {}
        for t in tunnels:
            if t.status == "up" and t.node:
                up.setdefault(t.node, []).append(t)
        here = self._db.node
        names = set(rows) | set(held) | set(up) | ({here} if here else set())
        views = []
        for name in sorted(names):
            row = rows.get(name)
            if name == here:
                _, _, rate_in, rate_out = self.core.traffic()
                views.append(NodeView(
                    node=name, state="up", here=True, host=row.host if row else "", pid=row.pid if row else os.getpid(),
                    started_at=row.started_at if row else None, lease_until=row.lease_until if row else None,
                    clients=tuple(sorted(self.core.sessions)), tunnels_up=len(self.core.tunnels),
                    rate_in=rate_in, rate_out=rate_out, traffic_at=None,
                ))
                continue
            state = "gone" if row is None else ("up" if (row.lease_until or 0) >= now else "down")
            taken = [samples[(t.client, t.name)] for t in up.get(name, []) if (t.client, t.name) in samples]
            views.append(NodeView(
                node=name, state=state, here=False, host=row.host if row else "", pid=row.pid if row else 0,
                started_at=row.started_at if row else None, lease_until=row.lease_until if row else None,
                clients=tuple(sorted(held.get(name, ()))), tunnels_up=len(up.get(name, ())),
                rate_in=sum(s.rate_in for s in taken), rate_out=sum(s.rate_out for s in taken),
                traffic_at=max((s.at for s in taken), default=None),
            ))
        return views

    async def client(self, name: str) -> ClientView:
        for view in await self.clients():
            if view.name == name:
                return view
        raise ManagementError("not_found", f"no client named {name!r}", "name")

    async def known_clients(self) -> List[str]:
        """Names a tunnel can be defined for: every client that has logged in
        once, and the client of every active token (it has not connected yet)."""
        clients = await self._call(self._db.list_clients)
        tokens = await self._call(self._db.list_tokens)
        now = self.core.reactor.seconds()
        return sorted({c.name for c in clients} | {t.name for t in tokens if t.active(now)})

    async def kick(self, name: str) -> None:
        """Disconnect a client; it reconnects unless its token is revoked."""
        await self._on_owner(name, "client.kick", {"name": name})

    async def _kick_here(self, name: str) -> None:
        session = self.core.sessions.get(name)
        if session is None:
            raise ManagementError("not_found", f"client {name!r} is not connected", "name")
        session.close_with_error("disconnected by the server's operator")
        await self.core.drop_session(session, "disconnected by the operator", CLIENT_KICKED)

    # -- tunnels -------------------------------------------------------------

    def _view(self, record: TunnelRecord, live: Optional[LiveTunnel],
              others: Optional[Dict[str, float]] = None, samples: Optional[Dict[Tuple[str, str], Any]] = None,
              ) -> TunnelView:
        """
        The tunnel as the faces show it: live here, else as the store says;
        ``others`` (``_other_live_nodes``) are the nodes whose word on a
        tunnel ``up`` is taken (it is up there), where a tunnel that the store
        says is up on this node or a node without a lease is shown down.
        A tunnel up on another node has the rates of its newest history
        sample there (``samples``, ``_samples``), measured at ``traffic_at``.
        """
        retry_in = None
        node = None
        sample = None
        if live is not None:
            bytes_in, bytes_out = live.totals()
            # The port is open, but connections through it fail on the client.
            reason = live.health_failure or live.connect_failure
            status = "down" if reason else "up"
            node = self._db.node
        else:
            bytes_in = bytes_out = 0
            status = "disabled" if not record.enabled else record.status
            if status == "up" and record.node is not None and record.node in (others or {}):
                node = record.node  # held by another node: its state, as it wrote it
                sample = (samples or {}).get((record.client, record.name))
            elif status == "up":  # the store lags behind a tunnel that just closed (here, or on a dead node)
                status = "down"
            reason = record.reason
            session = self.core.sessions.get(record.client)
            retry_at = session.retry_at.get(record.name) if session is not None else None
            if status == "refused" and retry_at is not None:
                retry_in = round(max(0.0, retry_at - self.core.reactor.seconds()), 1)
        return TunnelView(
            client=record.client,
            name=record.name,
            type=record.type,
            local_addr=live.local_addr if live is not None else record.local_addr,
            address=live.address if live is not None else record.address,
            status=status,
            reason=reason,
            source=record.source,
            enabled=record.enabled,
            connections=live.connections if live is not None else 0,
            opened=live.opened if live is not None else 0,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            rate_in=live.rate_in if live is not None else (sample.rate_in if sample is not None else 0.0),
            rate_out=live.rate_out if live is not None else (sample.rate_out if sample is not None else 0.0),
            traffic_at=sample.at if sample is not None else None,
            retry_in=retry_in,
            spec=live.spec.to_keys() if live is not None else record.spec,
            datagrams=self._datagrams(record),
            http_refused=self._http_refused(record),
            node=node,
        )

    def _http_refused(self, record: TunnelRecord) -> Optional[Dict[str, int]]:
        if record.type != "http":
            return None
        front = self.core.fronts.get("http")
        counts = getattr(front, "tunnel_refusals", {})
        return {reason: count for (client, name, reason), count in sorted(counts.items())
                if (client, name) == (record.client, record.name)}

    def _datagrams(self, record: TunnelRecord) -> Optional[Dict[str, int]]:
        meter = self.core.meters.tunnels.get((record.client, record.name))
        counts = meter.datagrams if meter is not None else None
        if counts is None:
            return DatagramCounts().as_dict() if record.type == "udp" else None
        return counts.as_dict()  # type: ignore[no-any-return]

    async def tunnels(self, client: Optional[str] = None) -> List[TunnelView]:
        records = await self._call(self._db.list_tunnels, client)
        others = await self._other_live_nodes()
        samples = await self._samples() if others else {}
        return [self._view(r, self.core.tunnels.get((r.client, r.name)), others, samples) for r in records]

    async def tunnel(self, client: str, name: str) -> TunnelView:
        record = await self._record(client, name)
        others = await self._other_live_nodes()
        samples = await self._samples() if others else {}
        return self._view(record, self.core.tunnels.get((client, name)), others, samples)

    async def _record(self, client: str, name: str) -> TunnelRecord:
        record = await self._call(self._db.get_tunnel, client, name)
        if record is None:
            raise ManagementError("not_found", f"client {client!r} has no tunnel named {name!r}", "name")
        return record

    @staticmethod
    def local_keys(local_addr: str) -> Dict[str, Any]:
        """A ``HOST:PORT`` local address (the tcp form of the faces) as frp's keys."""
        try:
            host, port = parse_host_port(local_addr)
        except ConfigError as e:
            raise ManagementError("invalid", f"local address {local_addr!r}: {e}", field="local_addr") from None
        return {"localIP": host, "localPort": port}

    @staticmethod
    def _port_keys(remote_port: Any) -> Dict[str, Any]:
        if not isinstance(remote_port, int) or isinstance(remote_port, bool) or not 0 <= remote_port <= 65535:
            raise ManagementError("invalid", "the public port must be an integer from 0 (server picks) to 65535",
                                  field="remote_port")
        return {"remotePort": remote_port}

    @staticmethod
    def _spec(keys: Dict[str, Any], tcp_form: bool = False) -> ProxySpec:
        try:
            return parse_spec(keys)
        except SpecError as e:
            raise ManagementError("invalid", str(e), field=_spec_field(e, tcp_form)) from None

    def proxy_types(self) -> List[Dict[str, Any]]:
        """The kinds of tunnel this server has, with their settings (``gotaxy.proxy.fields``), for the faces' forms."""
        return describe_types()

    async def add_tunnel(self, client: str, name: str, local_addr: str, remote_port: int = 0) -> TunnelView:
        """Define a tcp tunnel for ``client`` (``HOST:PORT``, public port or 0); see ``define_tunnel``."""
        self._check_names(client, name)
        keys = {"type": "tcp", **self.local_keys(local_addr), **self._port_keys(remote_port)}
        return await self._define(client, name, keys, tcp_form=True)

    @staticmethod
    def _check_names(client: str, name: str) -> None:
        if not valid_client_name(client):
            raise _invalid(f"a client name must be {NAME_RULE}, or {SHARED_PREFIX}NAME for a shared-token client "
                           f"(got {shown(client)})", "client")
        _check_name(name, "a tunnel name")

    async def define_tunnel(self, client: str, name: str, keys: Dict[str, Any]) -> TunnelView:
        """
        Define a tunnel of any registered type (frp's keys, ``type`` among
        them) for ``client``; it opens now if the client is online.  An error
        about one key has the field ``spec.<key>``.
        """
        return await self._define(client, name, keys, tcp_form=False)

    async def _define(self, client: str, name: str, keys: Dict[str, Any], tcp_form: bool) -> TunnelView:
        self._check_names(client, name)
        self._spec(keys, tcp_form)  # refused here, before any other node is asked
        known = await self.known_clients()
        if client not in known:
            raise ManagementError("not_found", _unknown_client(client, known), field="client")
        view = await self._on_owner(client, "tunnel.add", {"client": client, "name": name, "keys": keys,
                                                           "tcp_form": tcp_form})
        return view if view is not None else await self.tunnel(client, name)

    async def _add_here(self, client: str, name: str, keys: Dict[str, Any], tcp_form: bool) -> TunnelView:
        spec = self._spec(keys, tcp_form)
        with _tunnel_errors("remote_port" if tcp_form else "spec.remotePort"):
            try:
                record = await self.core.add_tunnel(client, name, spec)
            except SpecError as e:  # settings that do not fit this server (a subdomain without subDomainHost)
                raise ManagementError("invalid", str(e), field=_spec_field(e, tcp_form)) from None
        return self._view(record, None)

    async def remove_tunnel(self, client: str, name: str) -> None:
        await self._on_owner(client, "tunnel.remove", {"client": client, "name": name})

    async def _remove_here(self, client: str, name: str) -> None:
        with _tunnel_errors():
            await self.core.remove_tunnel(client, name)

    async def set_enabled(self, client: str, name: str, enabled: bool) -> TunnelView:
        view = await self._on_owner(client, "tunnel.enable" if enabled else "tunnel.disable",
                                    {"client": client, "name": name})
        return view if view is not None else await self.tunnel(client, name)

    async def _enable_here(self, client: str, name: str) -> TunnelView:
        with _tunnel_errors():
            await self.core.enable_tunnel(client, name)
        return await self.tunnel(client, name)

    async def _disable_here(self, client: str, name: str) -> TunnelView:
        with _tunnel_errors():
            await self.core.disable_tunnel(client, name)
        return await self.tunnel(client, name)

    async def restart_tunnel(self, client: str, name: str) -> TunnelView:
        """Close a tunnel (cutting its connections) and open it again on its port."""
        view = await self._on_owner(client, "tunnel.restart", {"client": client, "name": name})
        return view if view is not None else await self.tunnel(client, name)

    async def _restart_here(self, client: str, name: str) -> TunnelView:
        with _tunnel_errors():
            await self.core.restart_tunnel(client, name)
        return await self.tunnel(client, name)

    async def edit_tunnel(
        self, client: str, name: str, local_addr: Optional[str] = None, remote_port: Optional[int] = None
    ) -> TunnelView:
        """Change a tcp tunnel's local address or public port; see ``change_tunnel``."""
        changes: Dict[str, Any] = {}
        if local_addr is not None:
            changes.update(self.local_keys(local_addr))
        if remote_port is not None:
            changes.update(self._port_keys(remote_port))
        if not changes:
            raise _invalid("nothing to change: give a local address or a public port", None)
        return await self._change_tunnel(client, name, changes, tcp_form=True)

    async def change_tunnel(self, client: str, name: str, changes: Dict[str, Any]) -> TunnelView:
        """
        Change some of an operator-defined tunnel's settings (frp's keys; a
        key set to None goes back to its default); it reopens with them.  A
        change of ``type`` replaces every setting.
        """
        return await self._change_tunnel(client, name, changes, tcp_form=False)

    async def _change_tunnel(self, client: str, name: str, changes: Dict[str, Any], tcp_form: bool) -> TunnelView:
        if not changes:
            raise _invalid("nothing to change", None)
        view = await self._on_owner(client, "tunnel.change", {"client": client, "name": name, "changes": changes,
                                                              "tcp_form": tcp_form})
        return view if view is not None else await self.tunnel(client, name)

    async def _change_here(self, client: str, name: str, changes: Dict[str, Any], tcp_form: bool) -> TunnelView:
        with _tunnel_errors("remote_port" if tcp_form else "spec.remotePort"):
            try:
                await self.core.edit_tunnel(client, name, changes)
            except SpecError as e:
                raise ManagementError("invalid", str(e), field=_spec_field(e, tcp_form)) from None
        return await self.tunnel(client, name)

    # -- tokens --------------------------------------------------------------

    async def tokens(self) -> List[TokenRecord]:
        return await self._call(self._db.list_tokens)

    async def create_token(self, name: str, expires_at: Optional[float] = None,
                           allow_domains: Sequence[str] = ()) -> Tuple[TokenRecord, str]:
        """
        Create a client token; the text is returned once and never stored.
        It is a join token (the secret with this server's pin) when the pin
        is known.  ``allow_domains``: the custom domains its client may
        claim (``gotaxy.server.domains``); none: those the server allows.
        """
        _check_name(name, "a token's name (its client's name)")
        domains = _allowed_domains(allow_domains)
        try:
            record, secret = await self._call(self._db.create_token, name, expires_at, domains)
        except StoreError as e:  # a token of that name exists
            raise ManagementError("conflict", str(e), "name") from None
        return record, make_join_token(self.join_pin, secret) if self.join_pin else secret

    async def set_token_domains(self, name: str, allow_domains: Sequence[str]) -> TokenRecord:
        """
        Set the custom domains the client of token ``name`` may claim (none:
        those the server allows).  Its open tunnels keep their names; the
        list applies to every claim from now on.
        """
        domains = _allowed_domains(allow_domains)
        if not await self._call(self._db.set_token_domains, name, domains):
            raise ManagementError("not_found", f"no active token named {name!r}", "name")
        records = [r for r in await self._call(self._db.list_tokens) if r.name == name]
        return records[-1]
    async def set_token_bandwidth(self, name: str, value: Any) -> TokenRecord:
        """
        Client ``name``'s own bandwidth limit (``value``: bytes a second
        each way, or text such as "10MB"; 0, "" or None: none of its own, so
        ``maxBandwidthPerClient`` applies), kept with its token and applied
        at once in every server process to the connections it has open.
        """
        rate = bandwidth_value(value, "max_bandwidth")
        record = await self._call(self._db.set_token_bandwidth, name, rate)
        if record is None:
            raise ManagementError("not_found", f"no active token named {name!r}", "name")
        return record  # type: ignore[no-any-return]

    def limits(self) -> Dict[str, Any]:
        """
        The server's limits in force, for the faces: ``maxBandwidth`` and
        ``maxBandwidthPerClient`` as an operator set them live (``live``:
        value, by, at) or else as server.toml says (``file``: the file's
        values, in force or waiting behind a live one), the others as the
        file says, and each connected client's bandwidth.
        """
        from gotaxy.store.overrides import KEYS

        core = self.core
        limits = core.config.limits
        bandwidth = core.bandwidth
        return {
            "maxBandwidth": core.in_force("maxBandwidth"),
            "maxBandwidthPerClient": core.in_force("maxBandwidthPerClient"),
            "live": {key: override.to_json() for key, override in sorted(core.overrides.items())},
            "file": {key: core.file_value(key) for key in KEYS},
            "maxConnectionsPerClient": limits.max_connections_per_client,
            "tunnelMaxConnections": limits.tunnel_max_connections,
            "tunnelMaxConnectionsPerIP": limits.tunnel_max_connections_per_ip,
            "tunnelConnectionRatePerIP": limits.tunnel_connection_rate_per_ip,
            "clients": [{"name": name, "maxBandwidth": bandwidth.rate_of(name), "own": name in bandwidth.own}
                        for name in sorted(self.core.sessions)],
        }

    async def set_limit(self, key: str, value: Any, who: str = "an operator") -> Dict[str, Any]:
        """
        Give the server-wide setting ``key`` (``maxBandwidth``,
        ``maxBandwidthPerClient``) the live ``value`` (a rate as
        ``bandwidth_value`` reads it; 0: no limit, whatever server.toml
        says), in every server process on the store and across restarts,
        until ``clear_limit``; open connections follow at once.  Recorded as
        ``limits.changed`` with ``who``.  Returns ``limits()``.
        """
        from gotaxy.store import overrides

        key = _limit_key(key)
        rate = bandwidth_value(value, key)
        found = await self._call(overrides.put, self._db, key, rate, who, self.core.reactor.seconds(),
                                 self.core.file_value(key))
        # Here at once; the other processes (and this one again) re-read the store on the event.
        self.core.apply_overrides(found)
        return self.limits()

    async def clear_limit(self, key: str, who: str = "an operator") -> Dict[str, Any]:
        """
        Remove ``key``'s live value: server.toml's applies again, everywhere
        (``not_found`` if it had none).  Recorded as ``limits.changed``.
        Returns ``limits()``.
        """
        from gotaxy.store import overrides

        key = _limit_key(key)
        found = await self._call(overrides.clear, self._db, key, who, self.core.file_value(key))
        if found is None:
            raise ManagementError("not_found", f"{key} has no live value (server.toml's is in force); "
                                  f"'limits set {key} RATE' gives it one", key)
        self.core.apply_overrides(found)
        return self.limits()

    async def revoke_token(self, name: str) -> None:
        """Revoke a client's token and cut the client off at once."""
        if not await self._call(self._db.revoke_token, name):
            raise ManagementError("not_found", f"no active token named {name!r}", "name")
        session = self.core.sessions.get(name)
        if session is not None and session.token_checked:
            session.close_with_error("your token was revoked")
            await self.core.drop_session(session, "token revoked")

    # -- notification targets ------------------------------------------------

    @staticmethod
    def _targets(part: Any) -> Any:
        if part is None:
            raise ManagementError("conflict", "notifications are not set up on this server")
        return part

    def _send_test(self, target: Any, missing: str, field: str) -> None:
        if target is None:
            raise ManagementError("not_found", missing, field)
        target.deliver(Event(type=NOTIFY_TEST, at=self.core.reactor.seconds(), detail="sent by the server's operator"))

    async def webhooks(self) -> List[WebhookView]:
        return [WebhookView(**view) for view in self._targets(self._webhooks).webhooks()]

    async def add_webhook(
        self, name: str, url: str, events: Sequence[str] = ("*",), format: str = "json", secret: Optional[str] = None
    ) -> WebhookView:
        """Deliver events to a new webhook from now on; it is kept across restarts."""
        _check_name(name, "a webhook name")
        with _target_errors():
            await self._targets(self._webhooks).add(name, url, tuple(events), format, secret)
        (view,) = [v for v in await self.webhooks() if v.name == name]
        return view

    async def remove_webhook(self, name: str) -> None:
        with _target_errors():
            await self._targets(self._webhooks).remove(name)

    async def test_webhook(self, name: str) -> None:
        """Queue a ``notify.test`` event to that webhook only (whatever its filter)."""
        self._send_test(self._targets(self._webhooks).find(name), f"no webhook named {name!r}", "name")

    async def mail_recipients(self) -> List[MailRecipientView]:
        """Who gets notification e-mail; empty when e-mail is not set up."""
        return [MailRecipientView(**view) for view in self._targets(self._mail).recipients()]

    async def add_mail_recipient(self, address: str, events: Sequence[str] = ("*",)) -> MailRecipientView:
        """Mail events to ``address`` from now on, over server.toml's [smtp] server; kept across restarts."""
        with _target_errors():
            await self._targets(self._mail).add(address, tuple(events))
        (view,) = [v for v in await self.mail_recipients() if v.address == address]
        return view

    async def remove_mail_recipient(self, address: str) -> None:
        with _target_errors():
            await self._targets(self._mail).remove(address)

    async def test_mail(self, address: str) -> None:
        """
        Queue a ``notify.test`` e-mail to the target that mails ``address``: an
        added address alone, or, for an address from ``[smtp] to`` in
        server.toml, the one message all of those addresses share.
        """
        self._send_test(self._targets(self._mail).find(address), f"{address} is not a recipient", "address")

    # -- events and config -----------------------------------------------------

    async def events(
        self,
        type_: Optional[str] = None,
        client: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        limit: int = 100,
        offset: int = 0,
    ) -> List[EventRecord]:
        if not 1 <= limit <= 1000:
            raise _invalid("limit must be from 1 to 1000", "limit")
        if offset < 0:
            raise _invalid("offset must not be negative", "offset")
        if type_:
            error = query_type_error(type_)
            if error is not None:
                raise ManagementError("invalid", error, "type")
        return await self._call(self._db.events, limit, type_, client, since, until, offset)

    # -- who may connect (gotaxy.server.access) ------------------------------------

    def access_rules(self) -> Dict[str, Any]:
        """The address rules and ban settings in force, and the connections refused so far."""
        return self.core.access.describe()  # type: ignore[no-any-return]

    def bans(self) -> List[Dict[str, Any]]:
        """The bans in force, the longest-lasting first."""
        now = self.core.reactor.seconds()
        return [ban.to_json(now) for ban in self.core.access.in_force()]

    async def ban(self, address: str, seconds: Optional[float] = None, reason: str = "",
                  who: str = "an operator") -> Dict[str, Any]:
        """Ban ``address`` on every listener, for ``seconds`` (default: as a first automatic ban)."""
        from gotaxy.server.access import BanRefused, canonical

        found = canonical(address)
        if found is not None and self.core.access.exempted(found):
            raise _invalid(f"{found} is in access.ban.exempt (never banned); remove it from there in server.toml "
                           "and reload to ban it", "address")
        if seconds is not None and not (0 < seconds <= 366 * 86400):
            raise _invalid("seconds must be more than 0 and at most a year", "seconds")
        length = seconds if seconds is not None else self.core.access.settings.ban_time
        try:
            ban = await self.core.access.ban(address, (reason or "banned by an operator")[:200], by=who,
                                             seconds=length)
        except BanRefused as e:
            raise _invalid(str(e), "address") from None
        return ban.to_json(self.core.reactor.seconds())  # type: ignore[no-any-return]

    async def lift_ban(self, address: str, who: str = "an operator") -> None:
        """Lift ``address``'s ban in every server process; not_found if it is not banned."""
        from gotaxy.server.access import BanRefused

        try:
            lifted = await self.core.access.lift(address, who)
        except BanRefused as e:
            raise _invalid(str(e), "address") from None
        if not lifted:
            raise ManagementError("not_found", f"{address[:64]} is not banned; 'bans' lists the bans in force",
                                  "address")

    async def record_operator_event(self, type_: str, address: Optional[str], detail: str) -> None:
        """Record something an operator did that is worth an event (the console's python prompt)."""
        await self.core.record(type_, address=address, detail=detail)

    async def reload(self, who: str = "an operator") -> Any:
        """
        Re-read the config file and apply what can change live
        (``gotaxy.server.reload``); a wrong file changes nothing and is an
        ``invalid`` error naming the key.
        """
        from gotaxy.server.reload import ReloadRefused

        if self.reloader is None:
            raise ManagementError("conflict", "this server was not started from a config file it can re-read")
        try:
            return await self.reloader.reload(who)
        except ReloadRefused as e:
            raise _invalid(f"nothing changed: {e}", e.key) from None

    # -- client certificates (gotaxy.tls.clients, gotaxy.store.client_certs) ------

    def certificate_settings(self) -> Dict[str, Any]:
        """Whether the control port asks for client certificates, how, and what it refused so far."""
        certificates = self.core.certificates
        # What is in force (set at start), not what a reloaded file may say until the restart.
        return {
            "required": certificates is not None,
            "method": "certificate" if certificates is not None and certificates.alone else "token",
            "trustedCaFile": certificates.verifier.ca_file if certificates is not None else None,
            "refusals": dict(certificates.refusals) if certificates is not None else {},
        }

    async def certificates(self) -> List[Dict[str, Any]]:
        """The certificates issued from the server's CA and the serials revoked, the newest first."""
        from gotaxy.store import client_certs

        records = await self._call(client_certs.list_certificates, self._db.db)
        now = self.core.reactor.seconds()
        return [record.to_json(now) for record in records]

    async def issue_certificate(self, name: str, days: int = 365, who: str = "an operator") -> Dict[str, Any]:
        """
        A new key and client certificate for ``name`` from the server's CA
        (``DATA_DIR/tls``), recorded in the store without its key.  The key
        is in the answer, once (``certificatePem``, ``keyPem``), and kept
        nowhere: the caller hands it on and forgets it.
        """
        _check_name(name, "a client certificate's name (its client's name)")
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 20 * 365:
            raise _invalid(f"days must be a whole number from 1 to {20 * 365}", "days")
        try:
            record, issued = await self._call(_issue_and_record, self._db, self.tls_dir, name, days, who,
                                              self.core.reactor.seconds())
        except ValueError as e:
            raise _invalid(str(e), "name") from None
        answer = record.to_json(self.core.reactor.seconds())
        answer.update(certificatePem=issued.certificate_pem.decode("ascii"), keyPem=issued.key_pem.decode("ascii"),
                      required=self.core.certificates is not None)
        return answer

    async def revoke_certificate(self, what: str, who: str = "an operator") -> List[Dict[str, Any]]:
        """
        Revoke by serial or name (``gotaxy.store.client_certs.revoke``); the
        ``clientcert.revoked`` event disconnects its client here and in every
        other server process on the store.
        """
        from gotaxy.store import client_certs

        if not isinstance(what, str) or not 1 <= len(what) <= 128:
            raise _invalid("give a certificate's serial or its client's name", "certificate")
        try:
            revoked = await self._call(client_certs.revoke, self._db, what, who, self.core.reactor.seconds())
        except client_certs.CertificateNotFound as e:
            raise ManagementError("not_found", str(e), "certificate") from None
        if not revoked:
            raise ManagementError("conflict", f"the certificates of {what[:64]!r} were revoked already", "certificate")
        now = self.core.reactor.seconds()
        return [record.to_json(now) for record in revoked]


#: The actions ``Management._on_owner`` routes to the node that holds the client: command kind -> method.
_ROUTED = {
    "client.kick": "_kick_here",
    "tunnel.add": "_add_here",
    "tunnel.change": "_change_here",
    "tunnel.disable": "_disable_here",
    "tunnel.enable": "_enable_here",
    "tunnel.remove": "_remove_here",
    "tunnel.restart": "_restart_here",
}


def _view_json(view: TunnelView) -> Dict[str, Any]:
    """A tunnel's view as JSON, for the issuer of a command (``_view_from_json`` reads it)."""
    data = attrs.asdict(view, recurse=False)
    data["address"] = view.address.text if view.address is not None else None
    return data


def _view_from_json(data: Dict[str, Any]) -> Optional[TunnelView]:
    """The view another node sent, or None if this version cannot read it (then the store's is shown)."""
    from gotaxy.proxy.address import address_or_none

    try:
        return TunnelView(**{**data, "address": address_or_none(data.get("address"))})
    except TypeError:
        return None


def _issue_and_record(store: Any, tls_dir: str, name: str, days: int, who: str, now: float) -> Any:
    """On the store's thread: sign (key generation and the CA's files are blocking work) and record."""
    import datetime

    from gotaxy.store import client_certs
    from gotaxy.tls.clients import issue_client_certificate

    issued = issue_client_certificate(tls_dir, name, days,
                                      now=datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
    return client_certs.record_issued(store, issued, who, now), issued
