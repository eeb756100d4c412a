# -*- test-case-name: tests.test_proxy_udp -*-
"""
``type = "udp"``: one public UDP port per tunnel; each visitor (public source
address and port) is one *association*, a datagram flow on the client's
connection (``gotaxy.mux.Flow``) and, on the client, one UDP socket of its
own connected to ``localIP:localPort``, so the local service's replies go
back to the visitor that asked and many visitors talk at once.

frp's keys and meanings: ``localIP`` (default 127.0.0.1), ``localPort``,
``remotePort`` (0: the server picks from ``allowPorts`` and the tunnel
keeps it).  The public UDP port is a claim of its own (``udp-port`` in the
claims table): a TCP and a UDP tunnel may both have port 5353.  Two keys of
Gotaxy's own bound what visitors can take:

* ``idleTimeout`` (seconds, default 60): an association that carried no
  datagram either way for that long ends, on both sides (whichever side's
  sweep sees it first sends CLOSE);
* ``maxAssociations`` (default 1024): at most that many at once per
  tunnel; a new visitor beyond it evicts the one idle longest, on both
  sides, so a flood of spoofed sources costs a bounded number of sockets.

Datagrams are kept whole: one datagram is one DATAGRAM frame and one
``sendto``.  The server's ``udpPacketSize`` (frp's, default 1500) is the
largest datagram carried, in both directions; a larger one is dropped and
counted (never truncated: the socket is read with one byte more than the
limit, so an oversized datagram is seen as such).  When the client's
connection is backed up, or the datagrams have used their share of a
connection whose streams are busy, a datagram is dropped and counted
(``Flow.send``), never queued, so TCP streams of the same client keep their
throughput.  After such a drop the socket it came from is not read for
``DROP_PAUSE``, or until the share's next period when the share refused it
(``ReadPause``): during a flood the kernel drops the rest,
which costs us nothing, where reading each datagram only to drop it would
take the CPU the streams need.  What the kernel dropped on a socket (its
receive buffer was full) is read from it (Linux's ``SO_MEMINFO``) and
counted as ``queue_full`` too.

frp's ``transport.proxyProtocolVersion = "v2"`` puts HAProxy's PROXY v2
header (family UDP, the visitor's address and the public one) ahead of every
datagram to the local service, as frp does; the server adds it, so
``udpPacketSize`` applies to the visitor's datagram without it.

Counters per tunnel (``DatagramCounts``, on the tunnel's traffic meter, so
they outlive restarts): datagrams in and out, drops by reason (too large,
queue full, no association slot); bytes go through the meter as a stream's
do, and each association counts as a connection (opened, open now).
"""

from __future__ import annotations

import collections
import errno
import socket
import struct
import sys
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

import attrs
from twisted.internet.error import CannotListenError, MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gotaxy.logs import gotaxy_observer
from gotaxy.oslimits import fd_exhaustion, is_fd_exhaustion
from gotaxy.proxy.address import PublicAddress
from gotaxy.proxy.base import ExposeContext, Exposure, ProxySpec, ProxyType, SpecError, TunnelRefused
from gotaxy.proxy.fields import (
    LOCAL_IP, LOCAL_PORT, REMOTE_PORT, SpecField, StreamLimited, check_local_ip, check_port, host_port, is_ip,
    parse_keys,
)
from gotaxy.wire import MAX_DATAGRAM

#: Defaults and bounds of the association settings.
DEFAULT_IDLE_TIMEOUT = 60
MAX_IDLE_TIMEOUT = 86400
DEFAULT_MAX_ASSOCIATIONS = 1024
MAX_ASSOCIATIONS = 65536

#: frp's default ``udpPacketSize``.
DEFAULT_PACKET_SIZE = 1500

#: Ports tried for ``remotePort = 0`` when the operating system picks one another tunnel holds.
MAX_PICK_ATTEMPTS = 8

#: Bytes of datagrams a public UDP port reads per turn of the reactor (Twisted's default is 256 KiB).
UDP_READ_PER_TURN = 64 * 1024

#: Datagrams a client-side association keeps while it resolves a host-name ``localIP``.
MAX_PENDING = 8

#: Seconds a UDP socket is not read after a datagram from it was dropped for a backed-up connection.
DROP_PAUSE = 0.01

#: Linux's ``SO_MEMINFO`` (not in Python's socket module): a socket's memory counters, the ninth its drops.
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55 if sys.platform.startswith("linux") else None)
_MEMINFO = struct.Struct("9I")


def kernel_drops(transport: Any) -> Optional[int]:
    """Datagrams the kernel dropped on ``transport``'s socket (its receive buffer was full); None: cannot tell."""
    sock = getattr(transport, "socket", None)
    if SO_MEMINFO is None or not isinstance(sock, socket.socket):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size)
    except OSError:
        return None
    return _MEMINFO.unpack(raw)[8] if len(raw) == _MEMINFO.size else None


class ReadPause:
    """
    One UDP socket's reading, stopped for ``DROP_PAUSE`` after a datagram
    from it had to be dropped (the kernel drops what comes meanwhile), and
    the kernel's drops on it, handed to ``count`` as they are seen.
    """

    __slots__ = ("reactor", "count", "transport", "timer", "kernel", "stopped")

    def __init__(self, reactor: Any, count: Callable[[int], None]) -> None:
        self.reactor = reactor
        self.count = count
        self.transport: Any = None
        self.timer: Any = None
        self.kernel = 0
        self.stopped = False

    def attach(self, transport: Any) -> None:
        self.transport = transport
        self.kernel = kernel_drops(transport) or 0

    @property
    def paused(self) -> bool:
        return self.timer is not None

    def dropped(self, flow: Any = None) -> None:
        """
        A datagram from the socket (for ``flow``) was dropped: do not read it
        for a moment, or until the connection's datagrams get more room if
        their share is what refused it (``gotaxy.mux.DatagramShare.wait``).
        """
        transport = self.transport
        if self.timer is not None or self.stopped or not hasattr(transport, "stopReading"):
            return
        share = getattr(getattr(flow, "mux", None), "datagram_share", None)
        pause = max(DROP_PAUSE, share.wait() if share is not None else 0.0)
        transport.stopReading()
        self.timer = self.reactor.callLater(pause, self._resume)

    def _resume(self) -> None:
        self.timer = None
        self.fold()
        if not self.stopped:
            self.transport.startReading()

    def fold(self) -> None:
        """Count what the kernel dropped on the socket since the last look."""
        drops = kernel_drops(self.transport)
        if drops is not None and drops > self.kernel:
            self.count(drops - self.kernel)
            self.kernel = drops

    def stop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if not self.stopped:
            self.fold()
        self.stopped = True


def _positive(key: str, high: int) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if type(value) is not int or not 1 <= value <= high:
            raise SpecError(f"'{key}' must be an integer from 1 to {high}")

    return check


@attrs.frozen
class UdpSpec(StreamLimited, ProxySpec):
    """A ``type = "udp"`` tunnel: frp's ``localIP``, ``localPort``, ``remotePort``, and the association bounds."""

    type: ClassVar[str] = "udp"

    local_port: int = attrs.field(validator=check_port("localPort", 1))
    local_ip: str = attrs.field(default="127.0.0.1", validator=check_local_ip)
    remote_port: int = attrs.field(default=0, validator=check_port("remotePort", 0, " (0 lets the server pick)"))
    idle_timeout: int = attrs.field(default=DEFAULT_IDLE_TIMEOUT,
                                    validator=_positive("idleTimeout", MAX_IDLE_TIMEOUT))
    max_associations: int = attrs.field(default=DEFAULT_MAX_ASSOCIATIONS,
                                        validator=_positive("maxAssociations", MAX_ASSOCIATIONS))
    #: frp's ``transport.proxyProtocolVersion``: "v2" puts a PROXY v2 header ahead of every datagram; None: none
    proxy_protocol_version: Optional[str] = attrs.field(default=None)

    @proxy_protocol_version.validator
    def _check_proxy_protocol(self, attribute: Any, value: Any) -> None:
        if value is not None and value != "v2":
            raise SpecError("'transport.proxyProtocolVersion' of a udp tunnel must be \"v2\" (v1 has no form for "
                            f"datagrams), or left out for none; got {str(value)[:16]!r}")

    def to_keys(self) -> Dict[str, Any]:
        keys = {"type": "udp", "localIP": self.local_ip, "localPort": self.local_port, "remotePort": self.remote_port,
                "idleTimeout": self.idle_timeout, "maxAssociations": self.max_associations}
        if self.proxy_protocol_version is not None:
            keys["transport.proxyProtocolVersion"] = self.proxy_protocol_version
        keys.update(self.rule_keys())
        return keys

    @property
    def local_description(self) -> str:
        return host_port(self.local_ip, self.local_port)

    @property
    def requested(self) -> Optional[PublicAddress]:
        return PublicAddress("udp", self.remote_port) if self.remote_port else None

    @property
    def local_endpoint(self) -> Optional[Tuple[str, int]]:
        return (self.local_ip, self.local_port)


_ATTRIBUTES = {"localIP": "local_ip", "localPort": "local_port", "remotePort": "remote_port",
               "idleTimeout": "idle_timeout", "maxAssociations": "max_associations",
               "transport.proxyProtocolVersion": "proxy_protocol_version", **UdpSpec.RULE_ATTRIBUTES}

IDLE_TIMEOUT = SpecField("idleTimeout", "integer", "seconds without a datagram either way after which a visitor's "
                         "association ends", default=DEFAULT_IDLE_TIMEOUT, minimum=1, maximum=MAX_IDLE_TIMEOUT)
PROXY_PROTOCOL_V2 = SpecField("transport.proxyProtocolVersion", "choice",
                              "put the visitor's address ahead of every datagram to the local service (HAProxy's "
                              "PROXY protocol v2; the service must expect it)", choices=("v2",))
MAX_ASSOCIATIONS_FIELD = SpecField("maxAssociations", "integer", "visitors at once; a new one beyond it evicts the "
                                   "one idle longest", default=DEFAULT_MAX_ASSOCIATIONS, minimum=1,
                                   maximum=MAX_ASSOCIATIONS)


@attrs.define
class DatagramCounts:
    """A udp tunnel's datagram counters (bytes are in its traffic meter)."""

    datagrams_in: int = 0  #: from visitors, sent to the client
    datagrams_out: int = 0  #: from the client, sent to visitors
    too_large: int = 0  #: dropped: larger than udpPacketSize (either way)
    queue_full: int = 0  #: dropped: the client's connection or the public socket was backed up
    no_slot: int = 0  #: dropped: no association could be opened for a new visitor
    bandwidth: int = 0  #: dropped: over the tunnel's transport.bandwidthLimit (bandwidthLimitMode "server")
    #: dropped on the client, as it reports them (``datagram_drops``), by the same reasons
    client_too_large: int = 0
    client_queue_full: int = 0
    client_no_slot: int = 0
    client_bandwidth: int = 0

    def as_dict(self) -> Dict[str, int]:
        return attrs.asdict(self)

    def add_client_drops(self, drops: "Drops") -> None:
        self.client_too_large += drops.too_large
        self.client_queue_full += drops.queue_full
        self.client_no_slot += drops.no_slot
        self.client_bandwidth += drops.bandwidth


@attrs.define
class Drops:
    """Datagrams a udp tunnel dropped on the client, by reason (the server's are in ``DatagramCounts``)."""

    too_large: int = 0  #: a reply from the local service larger than the server's udpPacketSize
    queue_full: int = 0  #: the connection to the server, or the local socket, was backed up
    no_slot: int = 0  #: no socket could be opened for a new visitor
    bandwidth: int = 0  #: over the tunnel's transport.bandwidthLimit (bandwidthLimitMode "client")

    def __bool__(self) -> bool:
        return bool(self.too_large or self.queue_full or self.no_slot or self.bandwidth)

    def add(self, other: "Drops") -> None:
        self.too_large += other.too_large
        self.queue_full += other.queue_full
        self.no_slot += other.no_slot
        self.bandwidth += other.bandwidth

    def as_dict(self) -> Dict[str, int]:
        return attrs.asdict(self)

    def text(self) -> str:
        """``3 too large, 120 queue full, 0 no slot, 0 over the bandwidth limit``."""
        return (f"{self.too_large} too large, {self.queue_full} queue full, {self.no_slot} no slot, "
                f"{self.bandwidth} over the bandwidth limit")


def counts_of(meter: Any) -> DatagramCounts:
    """The datagram counters kept on ``meter`` (made the first time)."""
    counts = getattr(meter, "datagrams", None)
    if counts is None:
        counts = meter.datagrams = DatagramCounts()
    return counts  # type: ignore[no-any-return]


# -- the server's side ---------------------------------------------------------------


class Visitor:
    """One public source address's association on the server: its flow, and when it last carried a datagram."""

    __slots__ = ("front", "address", "flow", "seen", "prefix")

    def __init__(self, front: "UdpFront", address: Any, flow: Any, seen: float, prefix: bytes = b"") -> None:
        self.front = front
        self.address = address
        self.flow = flow
        self.seen = seen
        self.prefix = prefix  #: the PROXY v2 header put ahead of each datagram (transport.proxyProtocolVersion)

    def close_idle(self) -> bool:
        """The core's ``tunnelIdleTimeout`` sweep: end it like our own idle sweep does."""
        if self.flow.closed:
            return False
        self.front.end(self, "idle")
        return True


class UdpFront(DatagramProtocol):
    """A udp tunnel's public port: visitors by source address, each with its flow to the client."""

    noisy = False
    log = Logger(observer=gotaxy_observer)

    def __init__(self, tunnel: Any, reactor: Any, max_size: int) -> None:
        self.tunnel = tunnel
        self.reactor = reactor
        self.spec: UdpSpec = tunnel.spec
        self.max_size = max_size
        self.counts = counts_of(tunnel.meter)
        #: source address -> Visitor, the one idle longest first
        self.visitors: "collections.OrderedDict[Any, Visitor]" = collections.OrderedDict()
        self._sweep: Any = None
        self.stopped = False
        self.reading = ReadPause(reactor, self._kernel_dropped)

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self.reading.attach(transport)

    def _kernel_dropped(self, n: int) -> None:
        self.counts.queue_full += n

    # -- visitors -> client

    def datagramReceived(self, data: bytes, address: Any) -> None:
        if self.reading.timer is not None:  # read in the same turn as a drop: the connection is still backed up
            self.counts.queue_full += 1
            return
        if len(data) > self.max_size:
            self.counts.too_large += 1
            return
        visitor = self.visitors.get(address)
        if visitor is None:
            if not self.tunnel.admits(str(address[0])):
                return  # banned, or outside the address rules: counted there (gotaxy.server.access)
            if self.tunnel.limit(str(address[0]), spoofable=True) is not None:
                return  # over the tunnel's connection limits: counted there (gotaxy.server.limits); no ban
            visitor = self._open(address)
            if visitor is None:
                self.counts.no_slot += 1
                self.reading.dropped()
                return
        else:
            self.visitors.move_to_end(address)
        visitor.seen = self.reactor.seconds()
        bucket = visitor.flow.send_bucket
        if bucket is not None and not bucket.take(len(data)):
            self.counts.bandwidth += 1
            return
        if visitor.flow.send(visitor.prefix + data if visitor.prefix else data):
            self.counts.datagrams_in += 1
        else:
            self.counts.queue_full += 1
            self.reading.dropped(visitor.flow)

    def _open(self, address: Any) -> Optional[Visitor]:
        if self.stopped:
            return None
        flow = self.tunnel.session.open_flow(self.tunnel.name, host_port(str(address[0]), int(address[1])))
        if flow is None:  # the client's connection is backed up or closing: nobody is evicted for nothing
            return None
        if len(self.visitors) >= self.spec.max_associations:
            _, oldest = next(iter(self.visitors.items()))
            self.end(oldest, "evicted: the tunnel is at its maxAssociations")
        visitor = Visitor(self, address, flow, self.reactor.seconds(), self._proxy_header(address))
        flow.receiver = lambda datagram: self._reply(visitor, datagram)
        flow.on_close = lambda reason: self._ended(visitor)
        self.visitors[address] = visitor
        self.tunnel.meter.open(flow)
        self.tunnel.gate.opened(flow, str(address[0]))
        self.tunnel.streams[flow] = visitor
        self._schedule_sweep()
        return visitor

    def _proxy_header(self, address: Any) -> bytes:
        if self.spec.proxy_protocol_version is None:
            return b""
        from twisted.internet.address import IPv4Address, IPv6Address

        from gotaxy.proxy.proxyprotocol import header

        kind = IPv6Address if ":" in str(address[0]) else IPv4Address
        here = self.transport.getHost() if self.transport is not None else kind("UDP", "0.0.0.0", 0)
        return header("v2", kind("UDP", str(address[0]), int(address[1])), here, datagram=True)

    # -- client -> visitors

    def _reply(self, visitor: Visitor, datagram: bytes) -> None:
        if len(datagram) > self.max_size:
            self.counts.too_large += 1
            return
        transport = self.transport
        if transport is None:
            return
        bucket = visitor.flow.recv_bucket
        if bucket is not None and not bucket.take(len(datagram)):
            self.counts.bandwidth += 1
            return
        try:
            transport.write(datagram, visitor.address)
        except (OSError, MessageLengthError):  # the socket's send buffer is full, or the network refuses
            self.counts.queue_full += 1
            return
        self.counts.datagrams_out += 1
        visitor.seen = self.reactor.seconds()
        if visitor.address in self.visitors:
            self.visitors.move_to_end(visitor.address)

    # -- ending associations

    def end(self, visitor: Visitor, reason: str) -> None:
        """End one association (idle, evicted): tell the client, forget it."""
        visitor.flow.close(reason)
        self._ended(visitor)

    def _ended(self, visitor: Visitor) -> None:
        if self.visitors.get(visitor.address) is visitor:
            del self.visitors[visitor.address]
        self.tunnel.streams.pop(visitor.flow, None)
        self.tunnel._activity.pop(visitor.flow, None)
        self.tunnel.meter.close(visitor.flow)
        self.tunnel.gate.closed(visitor.flow)
        if not self.visitors and self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
            self._sweep = None

    def _schedule_sweep(self) -> None:
        if self._sweep is None and not self.stopped:
            self._sweep = self.reactor.callLater(max(1.0, self.spec.idle_timeout / 4), self.sweep)

    def sweep(self) -> None:
        """End the associations idle for ``idleTimeout`` or more (the idle-longest come first)."""
        self._sweep = None
        self.reading.fold()
        limit = self.reactor.seconds() - self.spec.idle_timeout
        while self.visitors:
            visitor = next(iter(self.visitors.values()))
            if visitor.seen > limit:
                break
            self.end(visitor, "idle")
        if self.visitors:
            self._schedule_sweep()

    def stop(self) -> Any:
        """Stop serving: the port closes and every association ends."""
        self.stopped = True
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        self.reading.stop()
        for visitor in list(self.visitors.values()):
            self.end(visitor, "the tunnel closed")
        return self.transport.stopListening() if self.transport is not None else None


# -- the client's side ------------------------------------------------------------------


class LocalAssociation(DatagramProtocol):
    """One visitor's socket on the client, connected to the local service."""

    noisy = False

    def __init__(self, table: "Associations", flow: Any) -> None:
        self.table = table
        self.flow = flow
        self.seen = table.reactor.seconds()
        self.pending: Optional[List[bytes]] = []  # until connected (a host-name localIP resolves first)
        self.port: Any = None
        self.reading = ReadPause(table.reactor, table.kernel_dropped)

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self.reading.attach(transport)

    def connect_to(self, ip: str, port: int) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.connect(ip, port)
        pending, self.pending = self.pending or [], None
        for datagram in pending:
            self.send_local(datagram)

    def send_local(self, datagram: bytes) -> None:
        """A datagram from the visitor, to the local service."""
        self.seen = self.table.reactor.seconds()
        self.table.touch(self)
        if self.pending is not None:
            if len(self.pending) < MAX_PENDING:
                self.pending.append(datagram)
            else:
                self.table.drops.queue_full += 1
            return
        bucket = self.flow.recv_bucket
        if bucket is not None and not bucket.take(len(datagram)):
            self.table.drops.bandwidth += 1
            return
        try:
            self.transport.write(datagram)
        except (OSError, MessageLengthError):
            self.table.drops.queue_full += 1

    def datagramReceived(self, data: bytes, address: Any) -> None:
        table = self.table
        if self.reading.timer is not None:  # read in the same turn as a drop: the connection is still backed up
            table.drops.queue_full += 1
            return
        if len(data) > table.max_size:  # the server would drop it: do not send it there
            table.drops.too_large += 1
            return
        self.seen = table.reactor.seconds()
        table.touch(self)
        bucket = self.flow.send_bucket
        if bucket is not None and not bucket.take(len(data)):
            table.drops.bandwidth += 1
            return
        if not self.flow.send(data):
            table.drops.queue_full += 1
            self.reading.dropped(self.flow)

    def connectionRefused(self) -> None:
        # ICMP port unreachable from the local service: UDP's way to say
        # nothing listens.  The visitor hears nothing, as without a tunnel.
        pass

    def close(self) -> None:
        self.reading.stop()
        if self.port is not None:
            port, self.port = self.port, None
            port.stopListening()


class Associations:
    """A udp tunnel's associations on one client connection: at most ``maxAssociations``, ended when idle."""

    def __init__(self, reactor: Any, spec: UdpSpec, name: str = "", max_size: int = MAX_DATAGRAM) -> None:
        self.reactor = reactor
        self.spec = spec
        self.name = name  #: the tunnel's
        #: the largest datagram the server carries (its udpPacketSize, from login_ok; else the frame's limit)
        self.max_size = max_size
        #: flow id -> association, the one idle longest first
        self.live: "collections.OrderedDict[int, LocalAssociation]" = collections.OrderedDict()
        #: datagrams dropped on this side since the last ``take_drops``
        self.drops = Drops()
        self._sweep: Any = None

    @classmethod
    def of(cls, mux: Any, spec: UdpSpec, reactor: Any, name: str = "") -> "Associations":
        tables = mux.proxy_state.setdefault("udp", {})
        # The tunnel's tunnel_up says the server's udpPacketSize (it may have been reopened since).
        max_size = getattr(mux, "datagram_limits", {}).get(name) or MAX_DATAGRAM
        table = tables.get(spec)
        if table is None:
            table = tables[spec] = cls(reactor, spec, name, max_size)
        table.max_size = max_size
        return table  # type: ignore[no-any-return]

    def kernel_dropped(self, n: int) -> None:
        self.drops.queue_full += n

    def take_drops(self) -> Drops:
        """What was dropped since the last call (the kernel's drops on the sockets looked at first)."""
        for association in self.live.values():
            association.reading.fold()
        drops, self.drops = self.drops, Drops()
        return drops

    def touch(self, association: LocalAssociation) -> None:
        if association.flow.id in self.live:
            self.live.move_to_end(association.flow.id)

    def open(self, flow: Any, failed: Callable[[Failure], None]) -> None:
        spec = self.spec
        while len(self.live) >= spec.max_associations:
            _, oldest = self.live.popitem(last=False)
            oldest.flow.close("evicted: the tunnel is at its maxAssociations")
            oldest.close()
        association = LocalAssociation(self, flow)
        v6 = ":" in spec.local_ip
        try:
            association.port = self.reactor.listenUDP(0, association, interface="::" if v6 else "0.0.0.0",
                                                      maxPacketSize=65535)
        except CannotListenError as e:
            self.drops.no_slot += 1  # the visitor's datagram has nowhere to go
            failed(Failure(e.socketError if is_fd_exhaustion(e) else e))
            return
        flow.receiver = association.send_local
        flow.on_close = lambda reason: self._ended(association)
        self.live[flow.id] = association
        if is_ip(spec.local_ip):
            association.connect_to(spec.local_ip, spec.local_port)
        else:
            resolving = self.reactor.resolve(spec.local_ip)
            resolving.addCallback(lambda ip: association.connect_to(ip, spec.local_port))
            resolving.addErrback(lambda f: (self.end(association, "error: cannot resolve localIP"), failed(f)))
        self._schedule_sweep()

    def end(self, association: LocalAssociation, reason: str) -> None:
        association.flow.close(reason)
        self._ended(association)

    def _ended(self, association: LocalAssociation) -> None:
        if self.live.get(association.flow.id) is association:
            del self.live[association.flow.id]
        association.close()
        if not self.live:
            self._stop_sweep()

    def _stop_sweep(self) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None

    def _schedule_sweep(self) -> None:
        if self._sweep is None:
            self._sweep = self.reactor.callLater(max(1.0, self.spec.idle_timeout / 4), self.sweep)

    def sweep(self) -> None:
        self._sweep = None
        limit = self.reactor.seconds() - self.spec.idle_timeout
        while self.live:
            association = next(iter(self.live.values()))
            if association.seen > limit:
                break
            self.end(association, "idle")
        if self.live:
            self._schedule_sweep()

    def close_all(self) -> None:
        self._stop_sweep()
        for association in list(self.live.values()):
            self._ended(association)


def take_drops(mux: Any) -> List[Tuple[str, Drops, bool]]:
    """
    Each udp tunnel's drops on the client's connection ``mux`` since the
    last call: (tunnel name, drops, whether it has associations open).
    """
    return [(table.name, table.take_drops(), bool(table.live)) for table in mux.proxy_state.get("udp", {}).values()]


def pending_drops(mux: Any, name: str) -> Drops:
    """Tunnel ``name``'s drops on ``mux`` not yet taken (``take_drops``)."""
    drops = Drops()
    for table in mux.proxy_state.get("udp", {}).values():
        if table.name == name:
            drops.add(table.drops)
    return drops


# -- the type -------------------------------------------------------------------------------


class UdpProxy(ProxyType):
    name = "udp"
    label = "UDP"
    fields = (LOCAL_IP, LOCAL_PORT, REMOTE_PORT, IDLE_TIMEOUT, MAX_ASSOCIATIONS_FIELD, PROXY_PROTOCOL_V2) + UdpSpec.RULE_FIELDS
    log = Logger(observer=gotaxy_observer)

    def parse(self, keys: Mapping[str, Any]) -> UdpSpec:
        return parse_keys("udp", self.fields, keys, UdpSpec, _ATTRIBUTES)  # type: ignore[no-any-return]

    async def expose(self, tunnel: Any, context: ExposeContext) -> Exposure:
        spec = tunnel.spec
        assert isinstance(spec, UdpSpec)
        if "datagrams" not in getattr(tunnel.session, "features", {"datagrams"}):
            raise TunnelRefused("this client's version of Gotaxy cannot carry udp tunnels; upgrade the client")
        claims = context.claims
        reserved = claims.reserved if claims.reserved is not None and claims.reserved.scheme == "udp" else None
        wanted = spec.remote_port or (reserved.port if reserved is not None else 0)
        if wanted:
            address = PublicAddress("udp", wanted)
            await claims.claim(address)
            try:
                front = self._listen(tunnel, wanted, context)
            except TunnelRefused:
                claims.release(address)
                raise
            return Exposure(address=address, close=front.stop, details={"udpPacketSize": front.max_size})
        if claims.any_port:
            for _ in range(MAX_PICK_ATTEMPTS):
                front = self._listen(tunnel, 0, context)
                address = PublicAddress("udp", front.transport.getHost().port)
                try:
                    await claims.claim(address)
                except TunnelRefused:
                    front.stop()
                    continue
                return Exposure(address=address, close=front.stop, details={"udpPacketSize": front.max_size})
            raise TunnelRefused("no free UDP port: every port the system offered is held by another tunnel; try again")
        for port in claims.port_candidates(await claims.held_ports("udp")):
            address = PublicAddress("udp", port)
            try:
                await claims.claim(address)
            except TunnelRefused:
                continue
            try:
                front = self._listen(tunnel, port, context)
            except TunnelRefused:
                claims.release(address)
                continue
            return Exposure(address=address, close=front.stop, details={"udpPacketSize": front.max_size})
        from gotaxy.proxy.tcp import format_ranges

        raise TunnelRefused(
            f"no free UDP port left in allowPorts ({format_ranges(context.config)}); ask the operator to widen it"
        )

    def _listen(self, tunnel: Any, port: int, context: ExposeContext) -> UdpFront:
        limits = getattr(context.config, "limits", None)
        max_size = getattr(limits, "udp_packet_size", DEFAULT_PACKET_SIZE)
        front = UdpFront(tunnel, context.reactor, max_size)
        try:
            listening = context.reactor.listenUDP(port, front, interface=context.config.effective_proxy_bind_addr(),
                                                  maxPacketSize=max_size + 1)
        except CannotListenError as e:
            if is_fd_exhaustion(e):
                raise TunnelRefused(f"UDP port {port} cannot be opened: the server is {fd_exhaustion()}") from None
            if getattr(e.socketError, "errno", None) == errno.EADDRINUSE:
                raise TunnelRefused(f"UDP port {port} is busy on the server") from None
            raise TunnelRefused(f"UDP port {port} cannot be opened on the server: {e.socketError}") from None
        if isinstance(getattr(listening, "maxThroughput", None), int):
            # Read at most this much per turn of the reactor: a flood waits in
            # (and overflows) the kernel's buffer instead of taking the turns
            # the TCP streams of the same process need.
            listening.maxThroughput = UDP_READ_PER_TURN
        return front

    def connect(self, reactor: Any, spec: ProxySpec, stream: Any, failed: Callable[[Failure], None]) -> None:
        # A byte stream for a udp tunnel: a peer bug; say so on the stream.
        stream.local_closed("error: a udp tunnel carries datagram flows, not streams")

    def connect_flow(self, reactor: Any, spec: ProxySpec, flow: Any, failed: Callable[[Failure], None]) -> None:
        assert isinstance(spec, UdpSpec)
        Associations.of(flow.mux, spec, reactor, flow.tunnel).open(flow, failed)


UDP = UdpProxy()
