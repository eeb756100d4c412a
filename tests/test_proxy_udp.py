"""
``type = "udp"`` (``gotaxy.proxy.udp``): its spec, its associations on a
fake clock, and a server and client in this process carrying datagrams
whole between many visitors and a UDP echo service on loopback.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from gotaxy.proxy import PublicAddress, SpecError, parse_spec
from gotaxy.proxy.udp import Associations, DatagramCounts, UdpFront, UdpSpec
from gotaxy.server.limits import ConnectionGate
from gotaxy.server.traffic import TrafficMeter
from tests.inprocess import LiveSystem, wait_until

# -- the spec ------------------------------------------------------------------------


def test_the_udp_spec_reads_and_gives_back_frps_keys() -> None:
    spec = parse_spec({"type": "udp", "localIP": "::1", "localPort": 53, "remotePort": 5353})
    assert spec == UdpSpec(local_ip="::1", local_port=53, remote_port=5353)
    assert parse_spec(spec.to_keys()) == spec
    assert (spec.local_description, spec.requested) == ("[::1]:53", PublicAddress("udp", 5353))
    assert spec.to_keys()["idleTimeout"] == 60 and spec.to_keys()["maxAssociations"] == 1024
    assert parse_spec({"type": "udp", "localPort": 53}).requested is None


@pytest.mark.parametrize("keys, message", [
    ({"type": "udp"}, "a udp tunnel needs 'localPort', the port of the local service"),
    ({"type": "udp", "localPort": 53, "idleTimeout": 0}, "'idleTimeout' must be an integer from 1 to 86400"),
    ({"type": "udp", "localPort": 53, "maxAssociations": True}, "'maxAssociations' must be an integer from 1 to 65536"),
    ({"type": "udp", "localPort": 53, "customDomains": []}, "a udp tunnel has no setting 'customDomains'"),
])
def test_a_bad_udp_spec_is_one_sentence_naming_the_key(keys: Dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(keys)
    assert str(e.value).startswith(message)


# -- associations on a fake clock -----------------------------------------------------------


class FakeFlow:
    """Just enough of a ``gotaxy.mux.Flow``: what was sent, and whether it was closed."""

    def __init__(self, flow_id: int, mux: Any = None) -> None:
        self.id = flow_id
        self.mux = mux
        self.sent: List[bytes] = []
        self.closed: Optional[str] = None
        self.receiver: Any = None
        self.on_close: Any = None
        self.bytes_in = self.bytes_out = 0
        self.full = False
        self.send_bucket: Any = None
        self.recv_bucket: Any = None

    def send(self, datagram: bytes) -> bool:
        if self.full or self.closed:
            return False
        self.sent.append(datagram)
        self.bytes_out += len(datagram)
        return True

    def close(self, reason: str) -> None:
        self.closed = reason


class FakeSession:
    def __init__(self) -> None:
        self.flows: List[FakeFlow] = []
        self.features = {"datagrams"}
        self.refuse = False

    def open_flow(self, tunnel: str, peer: str) -> Optional[FakeFlow]:
        if self.refuse:
            return None
        flow = FakeFlow(2 * len(self.flows) + 2)
        flow.peer = peer
        self.flows.append(flow)
        return flow


class FakeTunnel:
    def __init__(self, spec: UdpSpec) -> None:
        self.spec = spec
        self.name = "dns"
        self.session = FakeSession()
        self.meter = TrafficMeter()
        self.streams: Dict[Any, Any] = {}
        self._activity: Dict[Any, Any] = {}
        #: who may send (LiveTunnel.admits: bans and address rules); everyone here
        self.admits: Any = lambda host, routed=False: True
        #: its connection limits (LiveTunnel.limit, gotaxy.server.limits): none here
        self.limit: Any = lambda host, spoofable=False: None
        self.gate = ConnectionGate()


class RecordingPort:
    def __init__(self) -> None:
        self.written: List[Tuple[bytes, Any]] = []

    def write(self, data: bytes, address: Any) -> None:
        self.written.append((data, address))

    def stopListening(self) -> None:
        pass


def front(spec: UdpSpec, clock: Clock, max_size: int = 1500) -> Tuple[UdpFront, FakeTunnel]:
    tunnel = FakeTunnel(spec)
    udp = UdpFront(tunnel, clock, max_size)
    udp.transport = RecordingPort()
    return udp, tunnel


def test_each_visitor_gets_its_own_association_and_its_replies() -> None:
    clock = Clock()
    udp, tunnel = front(UdpSpec(local_port=53), clock)
    udp.datagramReceived(b"from a", ("203.0.113.1", 1000))
    udp.datagramReceived(b"from b", ("203.0.113.2", 2000))
    udp.datagramReceived(b"a again", ("203.0.113.1", 1000))
    a, b = tunnel.session.flows
    assert (a.peer, a.sent, b.peer, b.sent) == ("203.0.113.1:1000", [b"from a", b"a again"], "203.0.113.2:2000",
                                               [b"from b"])
    b.receiver(b"to b")
    a.receiver(b"to a")
    assert udp.transport.written == [(b"to b", ("203.0.113.2", 2000)), (b"to a", ("203.0.113.1", 1000))]
    assert (udp.counts.datagrams_in, udp.counts.datagrams_out, tunnel.meter.opened, len(tunnel.streams)) == (3, 2, 2, 2)


def test_idle_associations_end_after_the_timeout_on_the_clock() -> None:
    clock = Clock()
    udp, tunnel = front(UdpSpec(local_port=53, idle_timeout=60), clock)
    udp.datagramReceived(b"1", ("203.0.113.1", 1000))
    clock.advance(30)
    udp.datagramReceived(b"2", ("203.0.113.2", 2000))
    clock.advance(29)
    assert len(udp.visitors) == 2
    clock.advance(16)  # the first has been idle 75 s, seen by a sweep (every 15 s)
    a, b = tunnel.session.flows
    assert (a.closed, b.closed, list(udp.visitors)) == ("idle", None, [("203.0.113.2", 2000)])
    b.receiver(b"a reply keeps it alive")  # traffic either way counts
    clock.advance(59)
    assert b.closed is None
    clock.advance(60)
    assert b.closed == "idle" and udp.visitors == {} and tunnel.streams == {}
    assert clock.getDelayedCalls() == []  # nothing left to sweep, no timer left behind
    udp.datagramReceived(b"3", ("203.0.113.1", 1000))  # a visitor back after expiry: a new association
    assert len(tunnel.session.flows) == 3 and tunnel.session.flows[2].sent == [b"3"]


def test_at_the_cap_a_new_visitor_evicts_the_one_idle_longest() -> None:
    clock = Clock()
    udp, tunnel = front(UdpSpec(local_port=53, max_associations=2), clock)
    udp.datagramReceived(b"x", ("203.0.113.1", 1))
    clock.advance(1)
    udp.datagramReceived(b"x", ("203.0.113.2", 2))
    clock.advance(1)
    udp.datagramReceived(b"x", ("203.0.113.1", 1))  # 1 is busier now: 2 is the one idle longest
    udp.datagramReceived(b"x", ("203.0.113.3", 3))
    first, second, third = tunnel.session.flows
    assert second.closed == "evicted: the tunnel is at its maxAssociations" and first.closed is None
    assert sorted(udp.visitors) == [("203.0.113.1", 1), ("203.0.113.3", 3)]


def test_drops_are_counted_by_reason_and_nothing_is_truncated() -> None:
    clock = Clock()
    udp, tunnel = front(UdpSpec(local_port=53), clock, max_size=1500)
    udp.datagramReceived(b"x" * 1501, ("203.0.113.1", 1))
    assert tunnel.session.flows == []  # too large: never reaches the client, not even as an association
    udp.datagramReceived(b"x" * 1500, ("203.0.113.1", 1))
    (flow,) = tunnel.session.flows
    assert flow.sent == [b"x" * 1500]
    flow.full = True
    udp.datagramReceived(b"y", ("203.0.113.1", 1))
    flow.receiver(b"z" * 1501)
    tunnel.session.refuse = True
    udp.datagramReceived(b"w", ("203.0.113.9", 9))
    assert udp.counts == DatagramCounts(datagrams_in=1, datagrams_out=0, too_large=2, queue_full=1, no_slot=1)
    assert tunnel.meter.datagrams is udp.counts  # kept on the meter, which outlives the tunnel


class PausablePort(RecordingPort):
    """A public port whose reading can stop and start (Twisted's udp.Port does)."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def test_after_a_drop_the_port_is_not_read_for_a_moment_and_the_same_turns_datagrams_cost_nothing() -> None:
    from gotaxy.proxy.udp import DROP_PAUSE

    clock = Clock()
    udp, tunnel = front(UdpSpec(local_port=53), clock)
    udp.transport = port = PausablePort()
    udp.reading.attach(port)
    udp.datagramReceived(b"1", ("203.0.113.1", 1))
    (flow,) = tunnel.session.flows
    flow.full = True  # the client's connection is backed up
    udp.datagramReceived(b"2", ("203.0.113.1", 1))
    assert not port.reading and udp.counts.queue_full == 1
    flow.full = False
    for n in range(50):  # the rest of the same read: dropped before anything else is looked at
        udp.datagramReceived(b"x", ("203.0.113.%d" % (n + 2), 2))
    assert (udp.counts.queue_full, len(tunnel.session.flows), flow.sent) == (51, 1, [b"1"])
    clock.advance(DROP_PAUSE)
    assert port.reading
    udp.datagramReceived(b"3", ("203.0.113.1", 1))
    assert flow.sent == [b"1", b"3"]
    tunnel.session.refuse = True  # a new visitor finds no flow: dropped as no_slot, and a pause too
    udp.datagramReceived(b"4", ("203.0.113.99", 9))
    assert udp.counts.no_slot == 1 and not port.reading
    udp.stop()
    assert clock.getDelayedCalls() == []  # stopping ends the pause; nothing is read again


def test_what_the_kernel_dropped_on_a_socket_is_counted() -> None:
    import socket

    from gotaxy.proxy.udp import ReadPause, kernel_drops

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", 0))

        class Port:
            socket = receiver

        if kernel_drops(Port()) is None:
            pytest.skip("this system does not tell a socket's drops (Linux's SO_MEMINFO)")
        counted: List[int] = []
        reading = ReadPause(Clock(), counted.append)
        reading.attach(Port())
        for _ in range(200):  # far more than 4 KiB of buffer holds; loopback delivers (or drops) at once
            sender.sendto(b"x" * 1200, receiver.getsockname())
        reading.fold()
        assert counted and 100 < counted[0] <= 200
        reading.fold()
        assert len(counted) == 1  # counted once
    finally:
        receiver.close()
        sender.close()


def test_over_the_bandwidth_limit_datagrams_are_dropped_and_counted_never_held() -> None:
    from gotaxy.bandwidth import BandwidthLimiter

    clock = Clock()
    udp, tunnel = front(UdpSpec(local_port=53, bandwidth_limit=12000, bandwidth_limit_mode="server"), clock)
    tunnel.meter.limiter = BandwidthLimiter(clock, 12000, "server")  # what the core sets for mode "server"
    datagram = b"d" * 1200
    for _ in range(5):  # a burst of 4 KiB (the bucket's least): three pass, two are over the limit
        udp.datagramReceived(datagram, ("203.0.113.1", 1))
    (flow,) = tunnel.session.flows
    assert (len(flow.sent), udp.counts.bandwidth, udp.counts.datagrams_in) == (3, 2, 3)
    clock.advance(0.1)  # 1,200 bytes more at 12,000 a second
    udp.datagramReceived(datagram, ("203.0.113.1", 1))
    udp.datagramReceived(datagram, ("203.0.113.1", 1))
    assert (len(flow.sent), udp.counts.bandwidth) == (4, 3)
    # Replies have a bucket of their own, the same rate.
    for _ in range(4):
        flow.receiver(datagram)
    assert (len(udp.transport.written), udp.counts.bandwidth) == (3, 4)
    # nothing waits for the bucket (the one timer is the idle sweep's): a dropped datagram is gone
    assert [c.func.__name__ for c in clock.getDelayedCalls()] == ["sweep"]
    clock.advance(10)
    assert all(udp.datagramReceived(datagram, ("203.0.113.1", 1)) is None for _ in range(3))
    assert len(flow.sent) == 7


def test_a_bucket_takes_a_datagram_whole_or_not_at_all_and_asks_the_one_above() -> None:
    from gotaxy.bandwidth import TokenBucket

    clock = Clock()
    parent = TokenBucket(clock, 81920)  # burst 8192
    bucket = TokenBucket(clock, 100000, parent=parent)  # burst 10000
    assert bucket.take(5000) and bucket.take(3000)
    assert not bucket.take(1200)  # the parent has 192 left: nothing is spent from either
    assert (int(bucket.tokens), int(parent.tokens)) == (2000, 192)
    clock.advance(1)
    assert bucket.take(20000)  # a full bucket takes even a datagram larger than its burst, and owes the rest
    assert not bucket.take(1)


class FakeReactorWithUDP(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.ports: List[Any] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        fake = FakeLocalPort(protocol)
        self.ports.append(fake)
        protocol.makeConnection(fake)
        return fake


class FakeLocalPort:
    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.connected: Any = None
        self.written: List[bytes] = []
        self.stopped = False

    def connect(self, host: str, port: int) -> None:
        self.connected = (host, port)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def stopListening(self) -> None:
        self.stopped = True


class FakeMux:
    def __init__(self) -> None:
        self.proxy_state: Dict[str, Any] = {}


def test_the_clients_associations_have_their_own_socket_idle_timeout_and_cap() -> None:
    clock = FakeReactorWithUDP()
    mux = FakeMux()
    spec = UdpSpec(local_port=5353, idle_timeout=10, max_associations=2)
    table = Associations.of(mux, spec, clock)
    flows = [FakeFlow(i, mux) for i in (2, 4, 6)]
    failures: List[Any] = []
    for flow in flows[:2]:
        table.open(flow, failures.append)
    assert [p.connected for p in clock.ports] == [("127.0.0.1", 5353)] * 2
    flows[0].receiver(b"question")
    assert clock.ports[0].written == [b"question"]
    clock.ports[0].protocol.datagramReceived(b"answer", ("127.0.0.1", 5353))
    assert flows[0].sent == [b"answer"]
    clock.advance(1)
    flows[0].receiver(b"again")  # flow 4 is now the one idle longest
    table.open(flows[2], failures.append)
    assert flows[1].closed == "evicted: the tunnel is at its maxAssociations" and clock.ports[1].stopped
    clock.advance(12)
    assert flows[0].closed == "idle" and flows[2].closed == "idle" and all(p.stopped for p in clock.ports)
    assert table.live == {} and failures == [] and clock.getDelayedCalls() == []
    # The server ends one: its socket closes.
    late = FakeFlow(8, mux)
    table.open(late, failures.append)
    late.on_close("the tunnel closed")
    assert clock.ports[-1].stopped and table.live == {}


# -- through a live server and client -----------------------------------------------------


class UdpEcho(DatagramProtocol):
    """Answers each datagram with ``b"echo:"`` and the datagram."""

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.transport.write(b"echo:" + data, address)


class Visitors(DatagramProtocol):
    """One public source port: sends datagrams, keeps what comes back."""

    def __init__(self) -> None:
        self.received: List[bytes] = []
        self.waiting: Optional[Tuple[int, Deferred]] = None

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.received.append(data)
        if self.waiting is not None and len(self.received) >= self.waiting[0]:
            _, d = self.waiting
            self.waiting = None
            d.callback(self.received)


class LiveUdpTests(unittest.TestCase):
    timeout = 60

    async def _live(self, extra: str = "") -> Tuple[LiveSystem, int]:
        echo = reactor.listenUDP(0, UdpEcho(), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        live = await LiveSystem.start(self, [f"dns=udp:127.0.0.1:{echo.getHost().port}"],
                                      server_args=["--bind-addr", "127.0.0.1"])
        return live, await live.wait_up("dns")

    def visitor(self) -> Tuple[Visitors, Any]:
        protocol = Visitors()
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return protocol, port

    async def test_many_visitors_each_get_exactly_their_own_replies(self):
        live, public = await self._live()
        visitors = [self.visitor() for _ in range(50)]
        for n, (protocol, port) in enumerate(visitors):
            for k in range(3):
                port.write(f"{n}-{k}".encode(), ("127.0.0.1", public))
        await wait_until(lambda: all(len(p.received) == 3 for p, _ in visitors), timeout=20)
        for n, (protocol, _) in enumerate(visitors):
            assert sorted(protocol.received) == [f"echo:{n}-{k}".encode() for k in range(3)]
        tunnel = live.core.tunnels[("alice", "dns")]
        assert (tunnel.connections, tunnel.meter.datagrams.datagrams_in, tunnel.meter.datagrams.datagrams_out) == (
            50, 150, 150)
        view = await live.management.tunnel("alice", "dns")
        assert view.type == "udp" and view.address == PublicAddress("udp", public)


    async def test_drops_on_the_client_are_counted_logged_and_reported_to_the_server(self):
        from gotaxy.client.control import DATAGRAM_DROPS

        live, public = await self._live()
        protocol, port = self.visitor()
        port.write(b"small", ("127.0.0.1", public))
        await wait_until(lambda: protocol.received == [b"echo:small"], timeout=20)
        client = live.client.factory.current
        assert client.datagram_limits == {"dns": 1500}  # the server's udpPacketSize, from tunnel_up
        # A reply of 1,501 bytes: over udpPacketSize, so the client drops it rather than send it to the server.
        port.write(b"x" * 1496, ("127.0.0.1", public))
        await wait_until(lambda: live.client.factory.udp_drops("dns").too_large == 1, timeout=20)
        counts = live.core.tunnels[("alice", "dns")].meter.datagrams
        assert (counts.too_large, counts.datagrams_out) == (0, 1)
        # A server that does not take the reports (an older one) gets none; the client keeps its count.
        client.server_features.discard(DATAGRAM_DROPS)
        client._report_drops()
        assert live.client.factory.udp_drops("dns").too_large == 1 and counts.client_too_large == 0
        client.server_features.add(DATAGRAM_DROPS)
        port.write(b"y" * 1496, ("127.0.0.1", public))
        await wait_until(lambda: live.client.factory.udp_drops("dns").too_large == 2, timeout=20)
        client._report_drops()  # what the timer does every 10 s
        await wait_until(lambda: counts.client_too_large == 1, timeout=20)
        view = await live.management.tunnel("alice", "dns")
        assert view.datagrams["client_too_large"] == 1 and view.datagrams["too_large"] == 0
        from gotaxy.client.admin import proxy_status

        (row,) = proxy_status(live.client.factory)["udp"]
        assert row["dropped"] == {"too_large": 2, "queue_full": 0, "no_slot": 0, "bandwidth": 0}


def test_proxy_protocol_v2_goes_ahead_of_every_datagram_with_the_visitors_address() -> None:
    import ipaddress
    import struct

    from gotaxy.proxy.proxyprotocol import V2_SIGNATURE

    class BoundPort(RecordingPort):
        def getHost(self) -> Any:
            from twisted.internet.address import IPv4Address

            return IPv4Address("UDP", "192.0.2.1", 5353)

    clock = Clock()
    udp, tunnel = front(UdpSpec(local_port=53, proxy_protocol_version="v2"), clock, max_size=1500)
    udp.transport = BoundPort()
    udp.datagramReceived(b"x" * 1500, ("203.0.113.7", 40000))  # the limit is the visitor's datagram, without it
    udp.datagramReceived(b"second", ("203.0.113.7", 40000))
    (flow,) = tunnel.session.flows
    for datagram, payload in zip(flow.sent, [b"x" * 1500, b"second"]):
        head = datagram[:28]
        assert head[:12] == V2_SIGNATURE and head[12:14] == b"\x21\x12"  # PROXY, UDP over IPv4
        assert struct.unpack("!H", head[14:16]) == (12,)
        src, dst = ipaddress.ip_address(head[16:20]), ipaddress.ip_address(head[20:24])
        assert (str(src), str(dst), struct.unpack("!HH", head[24:28])) == ("203.0.113.7", "192.0.2.1", (40000, 5353))
        assert datagram[28:] == payload
    with pytest.raises(SpecError, match="must be \"v2\""):
        parse_spec({"type": "udp", "localPort": 53, "transport.proxyProtocolVersion": "v1"})


class LoopedFlow(FakeFlow):
    """A flow whose two ends are in this process: what one side sends, the other's receiver gets."""

    peer_end: Any = None

    def send(self, datagram: bytes) -> bool:
        self.sent.append(datagram)
        reactor.callLater(0, lambda: self.peer_end.receiver(datagram) if self.peer_end.receiver else None)
        return True


class IPv6Tests(unittest.TestCase):
    """IPv6 on both sides, on real loopback sockets: the public port on ``proxyBindAddr = "::1"``, the local service on ::1."""

    timeout = 20

    async def test_a_visitor_over_ipv6_reaches_an_ipv6_local_service(self):
        import socket as sockets

        if not sockets.has_ipv6:
            raise unittest.SkipTest("no IPv6 on this machine")
        try:
            echo = reactor.listenUDP(0, UdpEcho(), interface="::1")
        except Exception as e:  # an IPv6 loopback the kernel does not have
            raise unittest.SkipTest(f"no IPv6 loopback: {e}")
        self.addCleanup(echo.stopListening)
        spec = UdpSpec(local_ip="::1", local_port=echo.getHost().port)
        mux = FakeMux()
        table = Associations.of(mux, spec, reactor)
        self.addCleanup(table.close_all)
        tunnel = FakeTunnel(spec)
        tunnel.admits = lambda host, routed=False: True

        def open_flow(name: str, peer: str) -> LoopedFlow:
            server_end, client_end = LoopedFlow(2, mux), LoopedFlow(2, mux)
            server_end.peer_end, client_end.peer_end = client_end, server_end
            server_end.peer = peer
            tunnel.session.flows.append(server_end)
            table.open(client_end, lambda failure: None)
            return server_end

        tunnel.session.open_flow = open_flow
        udp = UdpFront(tunnel, reactor, 1500)
        public = reactor.listenUDP(0, udp, interface="::1", maxPacketSize=1501)
        self.addCleanup(udp.stop)  # the port, its associations and their sweep
        visitor = Visitors()
        port = reactor.listenUDP(0, visitor, interface="::1")
        self.addCleanup(port.stopListening)
        got: Deferred = Deferred()
        visitor.waiting = (1, got)
        port.write(b"over six", ("::1", public.getHost().port))
        assert await got == [b"echo:over six"]
        (flow,) = tunnel.session.flows
        assert flow.peer.startswith("[::1]:")  # the visitor's IPv6 address, as the OPEN carries it
        await table_closed(table)


async def table_closed(table: Associations) -> None:
    table.close_all()
    await wait_until(lambda: table.live == {})
