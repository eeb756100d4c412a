"""
Bandwidth limits (``gotaxy.bandwidth``): the token bucket on a fake clock,
and ``transport.bandwidthLimit`` on a tunnel on the in-memory network,
where time passes only when the test says so, so that the rate a visitor
or a local service gets can be measured exactly.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock

from gotaxy.bandwidth import TokenBucket, limit_bytes
from gotaxy.config import TunnelSpec
from gotaxy.config.server import LimitsSettings
from gotaxy.proxy import SpecError, parse_spec
from gotaxy.testing import GotaxyClient, GotaxyServer, MemoryNetwork

MiB = 1024 * 1024
CHUNK = 64 * 1024


# -- the bucket ------------------------------------------------------------------


def test_a_bucket_lets_its_burst_through_then_owes_and_wakes_when_paid() -> None:
    clock = Clock()
    bucket = TokenBucket(clock, rate=1000, burst=500)
    assert bucket.spend(500)
    assert not bucket.spend(250)  # 250 in debt
    woken: List[float] = []
    bucket.wait(lambda: woken.append(clock.seconds()))
    clock.advance(0.24)
    assert woken == []
    clock.advance(0.01)
    assert woken == [0.25]


def test_a_bucket_saves_up_no_more_than_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(clock, rate=1000, burst=500)
    clock.advance(60)
    assert bucket.spend(500)
    assert not bucket.spend(1)


def test_a_bucket_holds_its_rate_over_time() -> None:
    clock = Clock()
    bucket = TokenBucket(clock, rate=10 * MiB)
    moved = 0

    def send() -> None:
        nonlocal moved
        while bucket.spend(CHUNK):
            moved += CHUNK
        moved += CHUNK  # the read that went into debt moved too
        bucket.wait(send)

    send()
    start = moved
    for _ in range(1000):
        clock.advance(0.01)
    assert abs((moved - start) / 10 - 10 * MiB) <= 0.01 * 10 * MiB


def test_a_new_rate_applies_to_those_waiting() -> None:
    clock = Clock()
    bucket = TokenBucket(clock, rate=1000, burst=1000)
    bucket.spend(3000)  # 2000 in debt: 2 s at 1000/s
    woken: List[float] = []
    bucket.wait(lambda: woken.append(clock.seconds()))
    bucket.set_rate(4000)  # 0.5 s now
    clock.advance(0.5)
    assert woken == [0.5]


@pytest.mark.parametrize("text, rate", [("1MB", MiB), ("512KB", 512 * 1024), ("10MB", 10 * MiB),
                                        (2048, 2048), ("", None), (None, None)])
def test_limits_read_as_frp_reads_them(text: Any, rate: Any) -> None:
    assert limit_bytes(text) == rate


@pytest.mark.parametrize("keys, key", [
    ({"transport.bandwidthLimit": "fast"}, "transport.bandwidthLimit"),
    ({"transport.bandwidthLimit": -1}, "transport.bandwidthLimit"),
    ({"transport.bandwidthLimit": "1MB", "transport.bandwidthLimitMode": "both"}, "transport.bandwidthLimitMode"),
])
def test_a_wrong_limit_is_refused_naming_the_key(keys: Any, key: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec({"type": "tcp", "localPort": 22, **keys})
    assert refused.value.key == key


def test_a_limit_goes_round_the_spec_keys() -> None:
    spec = parse_spec({"type": "tcp", "localPort": 22, "transport.bandwidthLimit": "512KB",
                       "transport.bandwidthLimitMode": "server"})
    assert parse_spec(spec.to_keys()) == spec
    assert "transport.bandwidthLimit" not in parse_spec({"type": "tcp", "localPort": 22}).to_keys()


# -- a limited tunnel beside an unlimited one ----------------------------------------


class Pusher(Protocol):
    """Sends ``total`` bytes as a program with a one-chunk socket buffer would: the next chunk once the last left."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, False)  # asked for more each time the network moves

    def resumeProducing(self) -> None:
        if self.sent < self.total and not self.transport.stream:
            n = min(CHUNK, self.total - self.sent)
            self.transport.write(b"x" * n)
            self.sent += n

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Counter(Protocol):
    def __init__(self) -> None:
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)


def _tunnels(mode: str, limit: str = "1MB") -> Any:
    network = MemoryNetwork()
    network.backpressure = True
    server = GotaxyServer(network)
    tunnels = [TunnelSpec(name="slow", local_port=8081, bandwidth_limit=limit, bandwidth_limit_mode=mode),
               TunnelSpec(name="fast", local_port=8082)]
    client = GotaxyClient(network, server.create_token("alice"), tunnels=tunnels).start()
    assert set(client.up) == {"slow", "fast"}, client.up
    return network, server, client


@pytest.mark.parametrize("mode", ["client", "server"])
@pytest.mark.parametrize("direction", ["in", "out"])
def test_a_limited_tunnel_holds_its_rate_and_its_neighbour_is_not_slowed(mode: str, direction: str) -> None:
    network, server, client = _tunnels(mode)
    total = 8 * MiB
    counters = {}
    pushers = {}
    for name, port in (("slow", 8081), ("fast", 8082)):
        counter, pusher = Counter(), Pusher(total)
        counters[name], pushers[name] = counter, pusher
        if direction == "in":  # a visitor uploads to the local service
            local, visitor = counter, pusher
        else:  # the local service sends to a visitor
            local, visitor = pusher, counter
        network.listenTCP(port, Factory.forProtocol(lambda local=local: local))
        network.connectTCP("127.0.0.1", client.up[name], ClientFactory.forProtocol(lambda visitor=visitor: visitor))
    network.flush()
    # No time has passed: the unlimited tunnel has carried everything, the limited one its first bytes.
    assert counters["fast"].received == total
    assert counters["slow"].received < MiB
    network.pass_time(1)
    at_1s = counters["slow"].received
    network.pass_time(4)
    rate = (counters["slow"].received - at_1s) / 4
    print(f"{mode} mode, {direction}: {rate / MiB:.3f} MiB/s for a 1MB limit")
    assert abs(rate - MiB) <= 0.05 * MiB
    # Nothing piles up in the tunnel: what was sent and not yet received is at most a window and a read.
    in_flight = pushers["slow"].sent - counters["slow"].received
    assert in_flight <= 512 * 1024 + 2 * CHUNK, in_flight
    network.pass_time(4)
    assert counters["slow"].received == total
    client.stop()
    server.shutdown()


# -- the server's own limits: maxBandwidthPerClient, maxBandwidth, changed live -------


def _push_to(network: MemoryNetwork, client: GotaxyClient, names: Any) -> List[Counter]:
    counters = []
    for name, port in names:
        counter = Counter()
        counters.append(counter)
        network.listenTCP(port, Factory.forProtocol(lambda counter=counter: counter))
        network.connectTCP("127.0.0.1", client.up[name], ClientFactory.forProtocol(lambda: Pusher(64 * MiB)))
    return counters


def _rate(network: MemoryNetwork, counters: List[Counter], seconds: float = 4) -> float:
    network.pass_time(1)
    before = sum(c.received for c in counters)
    network.pass_time(seconds)
    return (sum(c.received for c in counters) - before) / seconds


def test_a_clients_limit_holds_for_all_its_tunnels_together_and_changes_live() -> None:
    from gotaxy.testing import server_config

    network = MemoryNetwork()
    network.backpressure = True
    server = GotaxyServer(network, server_config(limits=LimitsSettings(max_bandwidth_per_client=MiB)))
    client = GotaxyClient(network, server.create_token("alice"), tunnels=[
        TunnelSpec(name="a", local_port=8081), TunnelSpec(name="b", local_port=8082)]).start()
    counters = _push_to(network, client, [("a", 8081), ("b", 8082)])
    rate = _rate(network, counters)
    print(f"maxBandwidthPerClient 1MB, two tunnels: {rate / MiB:.3f} MiB/s together")
    assert abs(rate - MiB) <= 0.05 * MiB
    assert min(c.received for c in counters) > MiB  # both tunnels got their turn

    # Live: the same connections follow the new limit, none is dropped.
    changes = _apply(network, server, server_config(limits=LimitsSettings(max_bandwidth_per_client=2 * MiB)))
    assert [c.key for c in changes if c.key.startswith("maxBandwidth")] == ["maxBandwidthPerClient"]
    rate = _rate(network, counters)
    print(f"... changed live to 2MB: {rate / MiB:.3f} MiB/s")
    assert abs(rate - 2 * MiB) <= 0.05 * 2 * MiB
    client.stop()
    server.shutdown()


def test_a_tokens_own_limit_replaces_the_per_client_one_and_changes_live_without_a_drop() -> None:
    from twisted.internet.defer import Deferred

    from gotaxy.server.manage import Management
    from gotaxy.testing import server_config

    network = MemoryNetwork()
    network.backpressure = True
    server = GotaxyServer(network, server_config(limits=LimitsSettings(max_bandwidth_per_client=4 * MiB)))
    management = Management(server.core)

    def set_limit(value: Any) -> Any:
        done = Deferred.fromCoroutine(management.set_token_bandwidth("alice", value))
        network.flush()
        return done.result

    token = server.create_token("alice")
    assert set_limit("1MB").max_bandwidth == MiB  # kept with the token, before the client logs in
    client = GotaxyClient(network, token, tunnels=[TunnelSpec(name="a", local_port=8081)]).start()
    counters = _push_to(network, client, [("a", 8081)])
    rate = _rate(network, counters)
    print(f"token max_bandwidth 1MB (maxBandwidthPerClient 4MB): {rate / MiB:.3f} MiB/s")
    assert abs(rate - MiB) <= 0.05 * MiB
    assert management.limits()["clients"] == [{"name": "alice", "maxBandwidth": MiB, "own": True}]
    # Live, on the open connection (none is dropped): 2MB, then none of its own (maxBandwidthPerClient again).
    set_limit(2 * MiB)
    rate = _rate(network, counters)
    print(f"... changed live to 2MB: {rate / MiB:.3f} MiB/s")
    assert abs(rate - 2 * MiB) <= 0.05 * 2 * MiB
    set_limit(0)
    rate = _rate(network, counters)
    assert abs(rate - 4 * MiB) <= 0.05 * 4 * MiB
    assert [e.detail for e in server.store.store.events(type_="token.changed")][:1] == ["maxBandwidth none of its own"]
    failure = Deferred.fromCoroutine(management.set_token_bandwidth("alice", "fast"))
    network.flush()
    assert failure.result.value.field == "max_bandwidth"
    failure.addErrback(lambda f: None)
    client.stop()
    server.shutdown()


def test_the_servers_limit_holds_for_all_clients_together() -> None:
    from gotaxy.testing import server_config

    network = MemoryNetwork()
    network.backpressure = True
    server = GotaxyServer(network, server_config(limits=LimitsSettings(max_bandwidth=MiB)))
    counters, clients = [], []
    for n, name in enumerate(("alice", "bob")):
        client = GotaxyClient(network, server.create_token(name), tunnels=[TunnelSpec(name="t", local_port=8090 + n)],
                              instance_id=name).start()
        clients.append(client)
        counters += _push_to(network, client, [("t", 8090 + n)])
    rate = _rate(network, counters)
    print(f"maxBandwidth 1MB, two clients: {rate / MiB:.3f} MiB/s together")
    assert abs(rate - MiB) <= 0.05 * MiB
    assert min(c.received for c in counters) > MiB
    # Lifted live: the open connections are not held any more.
    _apply(network, server, server_config())
    network.flush()
    assert all(c.received == 64 * MiB for c in counters)
    for client in clients:
        client.stop()
    server.shutdown()


def _apply(network: MemoryNetwork, server: GotaxyServer, config: Any) -> Any:
    from twisted.internet.defer import Deferred

    done = Deferred.fromCoroutine(server.core.apply(config))
    network.flush()
    return done.result


def test_a_udp_visitor_is_counted_but_not_limited_by_the_servers_limits() -> None:
    from gotaxy.bandwidth import ServerBandwidth
    from gotaxy.mux import Flow, Stream
    from gotaxy.server.traffic import TrafficMeters

    clock = Clock()
    meters = TrafficMeters()
    meters.client("alice").limiter = ServerBandwidth(clock, total=MiB).client("alice")
    flow = Flow(None, 2, "dns", "198.51.100.7:5353")  # type: ignore[arg-type]
    meters.tunnel("alice", "dns").open(flow)
    meters.tunnel("alice", "dns").close(flow)
    assert meters.client("alice").opened == 1
    stream = Stream(None, 4, "web", "198.51.100.7:40000")  # type: ignore[arg-type]
    meters.tunnel("alice", "web").open(stream)
    assert stream.send_bucket is not None and stream.recv_bucket is not None
