"""
Tests for gotaxy.server.limits: a tunnel's maximum of connections at once,
at once per source address, and new connections per minute per source,
on a fake clock and through a server on a ``MemoryNetwork``.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory

from gotaxy.config import AccessSettings, LimitsSettings, TunnelSpec
from gotaxy.config.files import parse_client_config
from gotaxy.proxy import parse_spec
from gotaxy.proxy.base import SpecError
from gotaxy.server.limits import TOO_FAST, TOO_MANY, TOO_MANY_FROM_SOURCE, ConnectionGate, ConnectionLimits
from gotaxy.testing import Collector, EchoFactory, GotaxyClient, GotaxyServer, LogCapture, MemoryNetwork, server_config

A = "198.51.100.7"
B = "203.0.113.5"


# -- the gate, on a clock -------------------------------------------------------------


def test_the_rate_bucket_allows_a_burst_then_refills_at_the_rate():
    gate = ConnectionGate()
    limits = ConnectionLimits(rate_per_minute=3)
    assert [gate.check(A, limits, 0.0) for _ in range(4)] == [None, None, None, TOO_FAST]
    assert gate.check(B, limits, 0.0) is None  # per source
    assert gate.check(A, limits, 19.0) == TOO_FAST  # 3 a minute: one token every 20 s
    assert gate.check(A, limits, 20.5) is None
    assert gate.check(A, limits, 21.0) == TOO_FAST
    assert [gate.check(A, limits, 1000.0) for _ in range(4)] == [None, None, None, TOO_FAST]  # never more than 3
    assert gate.refused == {TOO_FAST: 4}


def test_concurrent_limits_count_open_connections_until_they_end():
    gate = ConnectionGate()
    limits = ConnectionLimits(max_connections=3, max_per_source=2)
    for key in ("a1", "a2"):
        assert gate.check(A, limits, 0.0) is None
        gate.opened(key, A)
    assert gate.check(A, limits, 0.0) == TOO_MANY_FROM_SOURCE
    assert gate.check("::ffff:" + A, limits, 0.0) == TOO_MANY_FROM_SOURCE  # the same address, dual-stack
    assert gate.check(B, limits, 0.0) is None
    gate.opened("b1", B)
    assert gate.check(B, limits, 0.0) == TOO_MANY
    gate.closed("a1")
    gate.closed("a1")  # a second end changes nothing
    assert gate.per_source == {A: 1, B: 1}
    assert gate.check(A, limits, 0.0) is None
    assert gate.refused == {TOO_MANY_FROM_SOURCE: 2, TOO_MANY: 1}


def test_buckets_are_kept_for_a_bounded_number_of_sources():
    gate = ConnectionGate(max_sources=8)
    limits = ConnectionLimits(rate_per_minute=1)
    for n in range(100):
        gate.check(f"192.0.2.{n}", limits, 0.0)
    assert len(gate.buckets) <= 8


# -- the keys -----------------------------------------------------------------------


@pytest.mark.parametrize("keys", [
    {"type": "tcp", "localPort": 22},
    {"type": "udp", "localPort": 53},
    {"type": "http", "localPort": 80, "customDomains": ["wiki.example.com"]},
    {"type": "https", "localPort": 443, "customDomains": ["app.example.com"]},
])
def test_every_type_has_the_limit_keys(keys):
    limited = {**keys, "transport.maxConnections": 10, "transport.maxConnectionsPerIP": 2,
               "transport.connectionRatePerIP": 30}
    spec = parse_spec(limited)
    assert ConnectionLimits.of(spec) == ConnectionLimits(10, 2, 30)
    assert parse_spec(spec.to_keys()) == spec
    assert "transport.maxConnections" not in parse_spec(keys).to_keys()  # 0 (none) is not written
    with pytest.raises(SpecError, match=r"'transport.maxConnectionsPerIP' must be a whole number from 0") as e:
        parse_spec({**keys, "transport.maxConnectionsPerIP": -1})
    assert e.value.key == "transport.maxConnectionsPerIP"


def test_a_client_file_sets_the_limits_of_a_proxy():
    config = parse_client_config({"proxies": [{"name": "ssh", "type": "tcp", "localPort": 22, "transport": {
        "maxConnections": 5, "maxConnectionsPerIP": 1, "connectionRatePerIP": 10}}]}).config
    keys = config.tunnels[0].proxy_keys()
    assert ConnectionLimits.of(parse_spec(keys)) == ConnectionLimits(5, 1, 10)


# -- a tcp tunnel on a memory network ------------------------------------------------------


def connect(network, port, source):
    collector = Collector()
    network.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(lambda: collector), bindAddress=(source, 0))
    network.flush()
    return collector


def say(network, collector, data):
    collector.received.clear()
    collector.transport.write(data)
    network.flush()
    return b"".join(collector.received)


def once(network, port, source):
    """One connection from ``source`` that sends, reads the echo and ends; what came back."""
    collector = connect(network, port, source)
    if collector.lost is not None:
        return b""
    answer = say(network, collector, b"x")
    collector.transport.loseConnection()
    network.flush()
    return answer


def tunnel_up(network, server, **limits):
    network.listenTCP(8080, EchoFactory())
    client = GotaxyClient(network, server.create_token("alice"),
                          tunnels=[TunnelSpec(name="web", local_port=8080, **limits)]).start()
    return client, client.up["web"]


def test_max_connections_refuses_the_extra_one_while_the_others_flow():
    network = MemoryNetwork()
    server = GotaxyServer(network)
    client, port = tunnel_up(network, server, max_connections=2)
    first, second = connect(network, port, A), connect(network, port, B)
    with LogCapture() as log:
        third = connect(network, port, "192.0.2.9")
        assert third.lost is not None and third.received == []  # closed at once
        connect(network, port, "192.0.2.10")
    # One line for both (the throttle), on the server and on the client that was told.
    assert [line for line in log.lines if line.startswith("tunnel alice/web: refused")] == [
        "tunnel alice/web: refused 1 public connection(s) (said at most once per 10 s): "
        "the tunnel is at its transport.maxConnections"]
    assert any(line.startswith("tunnel web: the server refused 1") for line in log.lines)
    assert say(network, first, b"one") == b"one" and say(network, second, b"two") == b"two"
    tunnel = server.core.tunnels[("alice", "web")]
    assert tunnel.refused == 2 and tunnel.gate.refused == {TOO_MANY: 2}
    first.transport.loseConnection()
    network.flush()
    assert network.exchange(port, b"again", source="192.0.2.9") == b"again"  # a place is free again
    client.stop()
    server.shutdown()


def test_the_servers_defaults_apply_to_a_tunnel_without_limits_of_its_own():
    assert ConnectionLimits.of(parse_spec({"type": "tcp", "localPort": 22, "transport.maxConnections": 5}),
                               ConnectionLimits(2, 1, 30)) == ConnectionLimits(5, 1, 30)  # its own wins
    network = MemoryNetwork()
    server = GotaxyServer(network, server_config(limits=LimitsSettings(tunnel_max_connections=1)))
    client, port = tunnel_up(network, server)
    held = connect(network, port, A)
    assert connect(network, port, B).lost is not None  # the server's tunnelMaxConnections = 1
    assert say(network, held, b"held") == b"held"
    # A reload that lifts the default applies to the next connection; the held one stays.
    done = Deferred.fromCoroutine(server.core.apply(server_config(limits=LimitsSettings(tunnel_max_connections=0))))
    network.flush()
    assert [c.key for c in done.result] == ["tunnelMaxConnections"]
    assert network.exchange(port, b"now", source=B) == b"now"
    assert say(network, held, b"still") == b"still"
    assert server.core.tunnels[("alice", "web")].gate.refused == {TOO_MANY: 1}
    held.transport.loseConnection()
    client.stop()
    server.shutdown()


def test_per_source_limits_refuse_that_source_only_and_feed_the_bans():
    network = MemoryNetwork()
    server = GotaxyServer(network, server_config(access=AccessSettings(ban_flood_refusals=3, ban_exempt=())))
    client, port = tunnel_up(network, server, max_connections_per_ip=1, connection_rate_per_ip=3)
    held = connect(network, port, A)
    assert connect(network, port, A).lost is not None  # a second one at once from A
    assert network.exchange(port, b"hi", source=B) == b"hi"
    assert say(network, held, b"still") == b"still"
    held.transport.loseConnection()
    network.flush()
    # Two more from A spend the rest of its three a minute, the next is too fast.
    assert once(network, port, A) == b"x"
    assert once(network, port, A) == b"x"
    assert once(network, port, A) == b""
    gate = server.core.tunnels[("alice", "web")].gate
    assert gate.refused == {TOO_MANY_FROM_SOURCE: 1, TOO_FAST: 1}
    assert A not in server.core.access.bans
    network.pass_time(20.0)  # one token back: one more is let in
    assert once(network, port, A) == b"x"
    assert once(network, port, A) == b""  # the third flood refusal: banned
    assert A in server.core.access.bans
    assert B not in server.core.access.bans
    client.stop()
    server.shutdown()


def test_metrics_count_the_refusals_by_reason():
    from prometheus_client import generate_latest

    network = MemoryNetwork()
    server = GotaxyServer(network)
    client, port = tunnel_up(network, server, max_connections_per_ip=1)
    held = connect(network, port, A)
    connect(network, port, A)
    from gotaxy.server.metrics import Metrics

    text = generate_latest(Metrics(server.core, reactor=network).registry).decode()
    assert 'gotaxy_tunnel_limit_refused_total{client="alice",reason="max_connections_per_ip",tunnel="web"} 1.0' in text
    assert 'gotaxy_tunnel_connections_refused_total{client="alice",tunnel="web"} 1.0' in text
    held.transport.loseConnection()
    client.stop()
    server.shutdown()


# -- udp associations and the HTTP front ---------------------------------------------------


def test_udp_visitors_over_the_limits_are_dropped_and_counted():
    from twisted.internet.task import Clock

    from gotaxy.proxy.udp import UdpFront, UdpSpec
    from gotaxy.server.tunnel import LiveTunnel
    from tests.test_proxy_udp import FakeSession, RecordingPort

    class Access:
        failures = []

        def admits_tunnel(self, client, name, host, routed=False):
            return True

        def failure(self, kind, host, detail=""):
            self.failures.append((kind, host))

    class Core:
        reactor = Clock()
        access = Access()

        def refusals(self, key):
            return None

    session = FakeSession()
    session.core = Core()
    spec = UdpSpec(local_port=53, max_connections=2, max_connections_per_ip=1)
    tunnel = LiveTunnel(client="c", name="dns", spec=spec, session=session)
    udp = UdpFront(tunnel, Clock(), 1500)
    udp.transport = RecordingPort()
    udp.datagramReceived(b"1", (A, 1000))
    udp.datagramReceived(b"2", (A, 1001))  # a second association from A
    udp.datagramReceived(b"3", (B, 1000))
    udp.datagramReceived(b"4", ("192.0.2.9", 1000))  # a third association
    udp.datagramReceived(b"5", (A, 1000))  # A's first still works
    assert [(f.peer, f.sent) for f in tunnel.session.flows] == [(f"{A}:1000", [b"1", b"5"]), (f"{B}:1000", [b"3"])]
    assert tunnel.gate.refused == {TOO_MANY_FROM_SOURCE: 1, TOO_MANY: 1} and tunnel.refused == 2
    assert Core.access.failures == []  # a datagram's source can be forged: no ban for it
    udp.end(udp.visitors[(B, 1000)], "idle")
    udp.datagramReceived(b"6", ("192.0.2.9", 1000))  # B's place is free
    assert tunnel.session.flows[-1].sent == [b"6"] and tunnel.gate.per_source == {A: 1, "192.0.2.9": 1}


def test_the_http_front_answers_429_for_one_source_and_503_when_the_site_is_full():
    from tests.test_proxy_vhost import get, http, make_server, site, visit

    network = MemoryNetwork()
    server = make_server(network)
    wiki = site(network, 9001, "wiki")
    client = GotaxyClient(network, server.create_token("office"), tunnels=[
        http("wiki", 9001, custom_domains=("wiki.example.com",), max_connections=2, max_connections_per_ip=1),
    ]).start()
    network.source = A
    held = visit(network, get("wiki.example.com", "/hang"))  # its stream stays open
    assert len(wiki.pending) == 1
    (status, headers, body), = visit(network, get("wiki.example.com")).responses()
    assert status == 429 and headers["retry-after"] == "1" and b"Too many connections from your address" in body
    network.source = B
    visit(network, get("wiki.example.com", "/hang"))
    network.source = "192.0.2.9"
    (status, _, body), = visit(network, get("wiki.example.com")).responses()
    assert status == 503 and b"connection limit" in body
    front = server.core.fronts["http"]
    assert front.tunnel_refusals[("office", "wiki", TOO_MANY_FROM_SOURCE)] == 1
    assert front.tunnel_refusals[("office", "wiki", TOO_MANY)] == 1
    assert held.lost is None and len(wiki.pending) == 2  # the held ones are untouched
    client.stop()
    server.shutdown()
