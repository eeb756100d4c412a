# -*- test-case-name: tests.test_proxy -*-
"""
What every proxy type provides, and what the server gives it.

A proxy type (``gotaxy.proxy.tcp`` today; udp, http and https next) is one
module with one ``ProxyType`` instance, registered in
``gotaxy.proxy.registry``.  Nothing else in the server or the client knows
the type's details:

* its **spec** (``ProxySpec``): the attrs value a tunnel of that type is
  asked with, validated once in ``ProxyType.parse`` from frp's key names
  (``type``, ``localIP``, ``localPort``, ``remotePort``, ...), whichever face
  it comes from: the client's TOML and flags, the REST API, the console and
  the wire all hand ``parse`` the same keys, and ``ProxySpec.to_keys`` gives
  them back (for the wire and the store);
* its **front** (``ProxyType.make_front``): a listener shared by all its
  tunnels, if it needs one (HTTP virtual hosts share one port; TCP has
  none).  A front reads what it needs to route a public connection (the
  Host header, the TLS SNI) and opens the stream with those bytes as its
  preface (``gotaxy.server.tunnel.PublicConnection.open_stream``);
* ``expose(tunnel, context)``: claims the tunnel's public address through
  ``context.claims`` and starts serving it; returns an ``Exposure`` with
  what was claimed and how to stop serving it;
* its **client side** (``ProxyType.connect``): how one stream reaches the
  local service (TCP: a connection to ``localIP:localPort``); a type that
  carries datagrams (udp) serves datagram flows in ``connect_flow``
  instead, and its ``expose`` opens them (``MuxProtocol.open_flow``).

Claims go through the ``Claims`` object the core passes in, so that the
rules for who may hold an address live in one place (the claims table).
"""

from __future__ import annotations

import abc
import re
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, Mapping, Optional, Set, Tuple

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gotaxy.proxy.address import PublicAddress

if TYPE_CHECKING:
    from gotaxy.mux import Flow, Stream
    from gotaxy.server.tunnel import LiveTunnel


_LEADING_KEY = re.compile(r"'([A-Za-z][A-Za-z0-9_.]{0,63})'")


class SpecError(ValueError):
    """
    A tunnel's settings are wrong; the message names the key and the fix.
    ``key`` is frp's key it is about (the faces mark that input), given, or
    read from a message that starts with it quoted (``'localPort' must
    be ...``); None when it is about no one key.
    """

    def __init__(self, message: str, key: Optional[str] = None) -> None:
        super().__init__(message)
        if key is None:
            match = _LEADING_KEY.match(message)
            key = match.group(1) if match else None
        self.key = key


class TunnelRefused(Exception):
    """This tunnel cannot open; the message is sent to the client (and shown to operators)."""


class ProxySpec(abc.ABC):
    """
    What a tunnel of one type is asked with.  Subclasses are frozen attrs
    classes whose validators run at construction, so a spec that exists is
    valid; ``==`` compares settings.
    """

    #: The proxy type's name (``type = "tcp"``).
    type: ClassVar[str]
    #: frp's ``transport.proxyProtocolVersion`` ("v1", "v2"), for the types that offer it; None: no PROXY header.
    proxy_protocol_version: Optional[str] = None
    #: frp's ``transport.bandwidthLimit`` as given ("1MB", or bytes), for the types that offer it; None: no limit
    bandwidth_limit: Any = None
    #: frp's ``transport.bandwidthLimitMode``: "client" or "server" enforces it (``gotaxy.bandwidth``)
    bandwidth_limit_mode: str = "client"

    @abc.abstractmethod
    def to_keys(self) -> Dict[str, Any]:
        """frp's keys for this spec, ``type`` included (what ``ProxyType.parse`` reads back)."""

    @property
    @abc.abstractmethod
    def local_description(self) -> str:
        """Where the client's side leads, for people: ``127.0.0.1:22``."""

    @property
    @abc.abstractmethod
    def requested(self) -> Optional[PublicAddress]:
        """The public address asked for, or None when the server chooses."""

    def address_for(self, config: Any) -> Optional[PublicAddress]:
        """
        The public address asked for on a server with ``config`` (an http
        tunnel's ``subdomain`` is a name under its ``subDomainHost``), or
        None when the server chooses; SpecError naming the key if the
        settings do not fit that server.
        """
        return self.requested

    @property
    def local_endpoint(self) -> Optional[Tuple[str, int]]:
        """The local service's (host, port), which ``allowOperatorTunnels`` is checked against; None: none."""
        return None


class Claims(abc.ABC):
    """
    The core's rules for who holds which public address, for one tunnel.
    ``claim`` either takes the address for the tunnel or raises
    ``TunnelRefused`` with a sentence naming the owner or the rule.
    """

    #: The address this tunnel held before (kept across reconnects and restarts), if any.
    reserved: Optional[PublicAddress]

    @abc.abstractmethod
    async def claim(self, address: PublicAddress) -> None:
        """Take ``address`` for this tunnel, or raise TunnelRefused."""

    @abc.abstractmethod
    def release(self, address: PublicAddress) -> Any:
        """
        Give back an address taken by ``claim`` that could not be served
        after all (one the tunnel held before stays its own); may return a
        Deferred that fires once it is given back.
        """

    @abc.abstractmethod
    async def held_ports(self, scheme: str) -> Set[int]:
        """Ports of ``scheme`` that other tunnels hold (so a free one can be proposed)."""

    @abc.abstractmethod
    def port_candidates(self, held: Set[int]) -> Any:
        """Allowed ports, in the order to try, none of them in ``held`` (``allowPorts``)."""

    @property
    @abc.abstractmethod
    def any_port(self) -> bool:
        """No ``allowPorts``: the operating system may pick the port."""


@attrs.frozen
class ExposeContext:
    """What the server gives ``ProxyType.expose`` for one tunnel."""

    reactor: Any
    config: Any  #: the ServerConfig
    claims: Claims
    #: the type's shared front (``make_front``), or None
    front: Any = None
    #: call when the public listener cannot accept for want of file descriptors
    out_of_descriptors: Callable[[], None] = lambda: None


@attrs.frozen
class Exposure:
    """A tunnel being served: at ``address``, until ``close()`` (which fires when it has stopped)."""

    address: PublicAddress
    close: Callable[[], Optional[Deferred]]
    #: more fields for the client's ``tunnel_up`` (udp: ``udpPacketSize``, the largest datagram carried)
    details: Mapping[str, Any] = attrs.field(factory=dict)


class ProxyType(abc.ABC):
    """One kind of tunnel.  See the module docstring."""

    #: ``type = "..."`` in the client's config.
    name: ClassVar[str]
    #: Short label for tables (the panel and console translate it).
    label: ClassVar[str]
    #: The spec's settings, for the faces' forms and help (``gotaxy.proxy.fields``), in the order to show them.
    fields: ClassVar[Tuple[Any, ...]] = ()

    def describe(self) -> Dict[str, Any]:
        """The type for the faces: its name, label and fields (the REST API's ``ProxyType``)."""
        return {"name": self.name, "label": self.label, "fields": [f.describe() for f in self.fields]}

    def field(self, key: str) -> Any:
        """The ``SpecField`` of frp's ``key``, or None."""
        for f in self.fields:
            if f.key == key:
                return f
        return None

    @abc.abstractmethod
    def parse(self, keys: Mapping[str, Any]) -> ProxySpec:
        """Build and validate a spec from frp's keys; SpecError names the key that is wrong."""

    def make_front(self, config: Any, reactor: Any) -> Any:
        """
        The shared listener all tunnels of this type use, or None (the
        default).  A front with a ``gate`` attribute (a function of a
        factory, identity by default) listens with ``gate(factory)``: the
        server sets it to check bans and address rules before the front
        reads a byte (``gotaxy.server.access``).
        """
        return None

    @abc.abstractmethod
    async def expose(self, tunnel: "LiveTunnel", context: ExposeContext) -> Exposure:
        """Claim ``tunnel``'s public address and serve it; raise TunnelRefused if it cannot."""

    @abc.abstractmethod
    def connect(self, reactor: Any, spec: ProxySpec, stream: "Stream",
                failed: Callable[[Failure], None]) -> None:
        """Client side: connect ``stream`` to the local service; call ``failed`` if that fails."""

    def connect_flow(self, reactor: Any, spec: ProxySpec, flow: "Flow", failed: Callable[[Failure], None]) -> None:
        """Client side, for a type that carries datagrams: serve one visitor's ``flow`` (udp); others refuse."""
        flow.close(f"error: a {self.name} tunnel carries byte streams, not datagrams")
