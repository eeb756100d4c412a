# -*- test-case-name: tests.test_events -*-
"""
What the server records happening, and the in-process fan-out of it.

``TYPES`` is the one catalogue of event types: each ``EventType`` says what
it means, which fields of an ``Event`` it fills and what a notification
says about it.  Everything that names event types derives from it: the
webhook and e-mail texts (``gotaxy.notify.payload``) and filters
(``events = [...]`` in server.toml, the panel, the console and the REST
API), the console's ``events --type`` and its completion, the panel's
event filter, the OpenAPI document's enums, and the type tables in the
docs (``tests/test_events.py`` fails when one of them misses a type).  A
new event type is one ``_define`` call here.

``Event`` is one occurrence.  ``Store.record`` is the one place that
writes one (the store's state changes, ``client_connected`` and the rest,
record theirs through it, in the same store call), and ``ThreadedStore``
hands every row a call recorded, as written, to the server's ``EventBus``
before the call's result comes back (``ServerCore.record`` for events that
change no state).  Events other processes wrote reach the bus from the
table (``gotaxy.server.outbox``).  Subscribers are called on the reactor
thread and must not block; an exception in one is logged and does not
affect the others.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import attrs
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer

#: The fields of an ``Event`` besides its type and time, in the order the
#: catalogue lists them.
FIELDS = ("client", "tunnel", "address", "detail", "count")


@attrs.frozen
class EventType:
    name: str  #: "family.what", e.g. "client.connected"
    meaning: str  #: when it happens, for people (docs, the API's list of types)
    fields: Tuple[str, ...]  #: which of FIELDS it fills
    phrase: str  #: a notification's text, formatted with the fields ("client {client} online")
    recorded: bool = True  #: written to the events table (notify.test is only ever sent)

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]


#: Every event type, by name, in the order the docs list them.
TYPES: Dict[str, EventType] = {}


def _define(name: str, meaning: str, fields: Tuple[str, ...], phrase: str, recorded: bool = True) -> str:
    assert name not in TYPES and set(fields) <= set(FIELDS), name
    TYPES[name] = EventType(name, meaning, fields, phrase, recorded)
    return name


CLIENT_CONNECTED = _define(
    "client.connected", "a client logged in; detail: its version",
    ("client", "address", "detail"), "client {client} online from {address}")
CLIENT_DISCONNECTED = _define(
    "client.disconnected", "a client went offline; detail: why (heartbeat timeout, connection lost, ...)",
    ("client", "address", "detail"), "client {client} offline: {detail}")
CLIENT_REPLACED = _define(
    "client.replaced", "a client's connection was replaced by a new one from the same installation",
    ("client", "address", "detail"), "client {client} replaced by a new connection: {detail}")
CLIENT_KICKED = _define(
    "client.kicked", "an operator disconnected a client",
    ("client", "address", "detail"), "client {client} disconnected by an operator")
LOGIN_FAILED = _define(
    "login.failed", "a client's token was refused: the first at once, then one event a minute per address "
    "with the number of attempts (count)",
    ("address", "detail", "count"), "login failed from {address}: {detail}")
TUNNEL_OPENED = _define(
    "tunnel.opened", "a tunnel's public port opened; detail: 'port 6000 -> 127.0.0.1:22'",
    ("client", "tunnel", "detail"), "tunnel {client}/{tunnel} up: {detail}")
TUNNEL_CLOSED = _define(
    "tunnel.closed", "a tunnel's public port closed; detail: why",
    ("client", "tunnel", "detail"), "tunnel {client}/{tunnel} down: {detail}")
TUNNEL_REFUSED = _define(
    "tunnel.refused", "a tunnel could not open; detail: why",
    ("client", "tunnel", "detail"), "tunnel {client}/{tunnel} refused: {detail}")
TUNNEL_ERROR = _define(
    "tunnel.error", "a connection through a tunnel failed on the client's side (its local service is down, "
    "say); at most one a minute per tunnel",
    ("client", "tunnel", "detail"), "tunnel {client}/{tunnel} failed: {detail}")
TUNNEL_ADDED = _define(
    "tunnel.added", "an operator added a tunnel to a client; detail: its port and local address",
    ("client", "tunnel", "detail"), "tunnel {client}/{tunnel} added by an operator: {detail}")
TUNNEL_REMOVED = _define(
    "tunnel.removed", "an operator removed a tunnel",
    ("client", "tunnel"), "tunnel {client}/{tunnel} removed by an operator")
TUNNEL_ENABLED = _define(
    "tunnel.enabled", "an operator enabled a tunnel",
    ("client", "tunnel"), "tunnel {client}/{tunnel} enabled by an operator")
TUNNEL_DISABLED = _define(
    "tunnel.disabled", "an operator disabled a tunnel",
    ("client", "tunnel"), "tunnel {client}/{tunnel} disabled by an operator")
TUNNEL_EDITED = _define(
    "tunnel.edited", "an operator changed a tunnel; detail: what changed",
    ("client", "tunnel", "detail"), "tunnel {client}/{tunnel} edited by an operator: {detail}")
TOKEN_CREATED = _define(
    "token.created", "a client token was created; client: the token's name",
    ("client",), "token {client} created")
TOKEN_REVOKED = _define(
    "token.revoked", "a client token was revoked (its client is disconnected); client: the token's name",
    ("client",), "token {client} revoked")
TOKEN_CHANGED = _define(
    "token.changed", "an operator changed a client token's settings (its bandwidth limit); client: the token's name; "
    "detail: the new settings", ("client", "detail"), "token {client} changed: {detail}")
LIMITS_CHANGED = _define(
    "limits.changed", "an operator changed a server-wide limit live (maxBandwidth, maxBandwidthPerClient) from the "
    "panel, console or REST API, or cleared it back to server.toml's; address: who; detail: the setting, its new "
    "value and what it replaced", ("address", "detail"), "limits changed by {address}: {detail}")
SERVER_STARTED = _define(
    "server.started", "the server started; detail: its version",
    ("detail",), "server started: {detail}")
CONFIG_RELOADED = _define(
    "config.reloaded", "the server's configuration was re-read; address: who asked (SIGHUP, an operator, "
    "an API token); detail: what was applied and what needs a restart",
    ("address", "detail"), "configuration reloaded by {address}: {detail}")
CLIENT_RELOADED = _define(
    "client.reloaded", "a client re-read its config file; address: where it connects from; detail: who asked it "
    "and which tunnels it opened, closed and reopened (in the client's words)",
    ("client", "address", "detail"), "client {client} reloaded its config: {detail}")
CONFIG_RELOAD_FAILED = _define(
    "config.reload_failed", "a reload found the configuration file wrong and changed nothing; address: who "
    "asked; detail: the error, naming the key",
    ("address", "detail"), "configuration reload by {address} refused: {detail}")
OPERATOR_LOGIN_FAILED = _define(
    "operator.login_failed", "an operator log-in (panel or console) failed; detail: how and which user",
    ("address", "detail"), "operator log-in failed from {address}: {detail}")
OPERATOR_LOCKED_OUT = _define(
    "operator.locked_out", "operator log-ins were locked out after repeated failures",
    ("address", "detail"), "operator log-in locked out: {detail}")
OPERATOR_PASSWORD_CHANGED = _define(
    "operator.password_changed", "an operator's password was changed; detail: how",
    ("address", "detail"), "operator password changed: {detail}")
CONSOLE_PYTHON_USED = _define(
    "console.python", "someone opened the console's Python prompt (what is typed there is not recorded)",
    ("address", "detail"), "console Python prompt opened from {address}: {detail}")
CERTIFICATE_ISSUED = _define(
    "certificate.issued", "the server obtained a certificate for a host name through ACME; address: the name; "
    "detail: its expiry",
    ("address", "detail"), "certificate for {address} issued, {detail}")
CERTIFICATE_RENEWED = _define(
    "certificate.renewed", "the server renewed a host name's ACME certificate; address: the name; detail: its expiry",
    ("address", "detail"), "certificate for {address} renewed, {detail}")
CERTIFICATE_FAILED = _define(
    "certificate.failed", "the server could not obtain or renew a host name's ACME certificate; address: the name; "
    "detail: why, and when it tries again",
    ("address", "detail"), "no certificate for {address}: {detail}")
BAN_ADDED = _define(
    "ban.added", "an address was banned from every listener (repeated failures, or an operator); address: it; "
    "detail: why and for how long; count: how many times it was banned",
    ("address", "detail", "count"), "address {address} banned: {detail}")
BAN_LIFTED = _define(
    "ban.lifted", "an operator lifted an address's ban; address: it; detail: who",
    ("address", "detail"), "ban of {address} lifted: {detail}")
BAN_EXPIRED = _define(
    "ban.expired", "an address's ban ran out (it may connect again); address: it; detail: the ban's reason",
    ("address", "detail"), "ban of {address} ended: {detail}")
CLIENT_CERT_ISSUED = _define(
    "clientcert.issued", "a client certificate was issued from the server's CA; client: its name (the CN); "
    "detail: its serial and expiry",
    ("client", "detail"), "client certificate for {client} issued: {detail}")
CLIENT_CERT_REVOKED = _define(
    "clientcert.revoked", "a client certificate was revoked (its client is disconnected within seconds); client: "
    "its name; detail: its serial and who revoked it",
    ("client", "detail"), "client certificate for {client} revoked: {detail}")
NOTIFY_TEST = _define(
    "notify.test", "a test notification an operator sent to one target; never in the event log",
    ("detail",), "test notification: {detail}", recorded=False)

#: The types the events table holds, in catalogue order.
RECORDED: Tuple[str, ...] = tuple(name for name, kind in TYPES.items() if kind.recorded)
#: Their families ("client", "tunnel", ...), in catalogue order.
FAMILIES: Tuple[str, ...] = tuple(dict.fromkeys(TYPES[name].family for name in RECORDED))
#: What ``events --type`` and ``GET /events?type=`` accept: a type, or a family ending in ".".
QUERY_TYPES: Tuple[str, ...] = RECORDED + tuple(f"{family}." for family in FAMILIES)


def filter_pattern_error(pattern: str) -> Optional[str]:
    """
    Why ``pattern`` is not a notification filter (``"*"``, an event type,
    or a family ``"tunnel.*"`` / ``"tunnel."``), or None if it is one.
    """
    if pattern == "*" or pattern in TYPES:
        return None
    if pattern.endswith((".*", ".")) and pattern.rstrip("*").rstrip(".") in FAMILIES:
        return None
    return (f"{pattern!r} is not an event type or family: use one of {', '.join(RECORDED)}, "
            "a family such as tunnel.*, or * for all")


def query_type_error(type_: str) -> Optional[str]:
    """Why ``type_`` cannot filter the event log, or None if it can."""
    if type_ in QUERY_TYPES:
        return None
    return (f"{type_!r} is not an event type: use one of {', '.join(RECORDED)}, "
            "or a family ending in '.' such as 'tunnel.'")


@attrs.frozen
class Event:
    type: str  #: a name from TYPES (a row another version wrote may hold one this one does not know)
    at: float  #: UNIX time
    client: Optional[str] = None
    tunnel: Optional[str] = None
    address: Optional[str] = None
    detail: Optional[str] = None
    count: int = 1  #: occurrences it stands for: more than 1 for repeated failed log-ins from one address
    id: Optional[int] = None  #: its row in the events table, once recorded
    node: Optional[str] = None  #: the server process that recorded it; None for the ``gotaxy`` command


Subscriber = Callable[[Event], None]


class EventBus:
    """
    Calls its subscribers with every event published.  ``publish(event,
    local=False)`` is for events another process recorded (read back from
    the events table): subscribers that account for this process's own
    live state (session history, traffic meters, per-process counters)
    subscribe with ``local_only=True`` and do not see them.
    """

    log = Logger(observer=gotaxy_observer)

    def __init__(self) -> None:
        self._subscribers: List[Tuple[Subscriber, bool]] = []

    def subscribe(self, subscriber: Subscriber, local_only: bool = False) -> Callable[[], None]:
        """Call ``subscriber`` with every event; returns the unsubscribe function."""
        entry = (subscriber, local_only)
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)

        return unsubscribe

    def publish(self, event: Event, local: bool = True) -> None:
        for subscriber, local_only in list(self._subscribers):
            if local_only and not local:
                continue
            try:
                subscriber(event)
            except Exception:
                self.log.failure("event subscriber {s!r} failed on {type}", s=subscriber, type=event.type)
