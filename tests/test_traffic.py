"""
The traffic meters (``gotaxy.server.traffic``): one per tunnel, per client
and for the server, counts that never go back across a tunnel's restarts,
late bytes of connections that outlive their listener, rates, readers'
intervals, and the place where a rate limiter plugs in (in memory; the
server's totals through a real tunnel are tests/test_traffic_live.py).
"""

from __future__ import annotations

from typing import Any, List, Tuple

import attrs
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gotaxy.proxy import PublicAddress
from gotaxy.proxy.tcp import TcpSpec
from gotaxy.server.traffic import IRateLimiter, Reading, TrafficMeter, TrafficMeters
from gotaxy.server.tunnel import LiveTunnel


@attrs.define(eq=False)
class Stream:
    """A public connection's stream as the meters read it: in = bytes_out, out = bytes_in."""

    bytes_in: int = 0
    bytes_out: int = 0


def live_tunnel(meters: TrafficMeters, client: str = "a", name: str = "t") -> LiveTunnel:
    tunnel = LiveTunnel(client=client, name=name, spec=TcpSpec(local_port=1), session=None,
                        address=PublicAddress.tcp(1))
    tunnel.count_into(meters.tunnel(client, name))
    return tunnel


class TestTrafficMeter:
    def test_counts_survive_restarts_and_late_bytes(self) -> None:
        meters = TrafficMeters()
        first = live_tunnel(meters)
        meter = first.meter
        done, lingering = Stream(), Stream()
        meter.open(done)
        meter.open(lingering)
        done.bytes_out, done.bytes_in = 100, 200
        meter.close(done)
        assert meter.reading() == Reading(opened=2, refused=0, bytes_in=100, bytes_out=200)
        # The listener closes (the tunnel restarts); one connection is still open and still moving bytes.
        lingering.bytes_out += 50
        second = live_tunnel(meters)
        assert second.meter is meter
        assert (second.opened, second.totals()) == (0, (0, 0))  # a tunnel shows what came since it was up
        fresh = Stream()
        meter.open(fresh)
        meter.refuse()
        fresh.bytes_out, fresh.bytes_in = 10, 10
        assert meter.reading() == Reading(opened=3, refused=1, bytes_in=160, bytes_out=210)
        assert (second.opened, second.refused, second.totals()) == (1, 1, (10, 10))
        lingering.bytes_in += 5
        meter.close(lingering)
        meter.close(lingering)  # a second close changes nothing
        assert meter.reading() == Reading(opened=3, refused=1, bytes_in=160, bytes_out=215)

    def test_client_and_server_meters_add_up_their_tunnels(self) -> None:
        meters = TrafficMeters()
        ssh, web, other = meters.tunnel("alice", "ssh"), meters.tunnel("alice", "web"), meters.tunnel("bob", "ssh")
        streams = [Stream(bytes_out=1, bytes_in=2), Stream(bytes_out=10, bytes_in=20), Stream(bytes_out=100)]
        for meter, stream in zip((ssh, web, other), streams):
            meter.open(stream)
        web.close(streams[1])
        other.refuse()
        assert meters.client("alice").reading() == Reading(opened=2, refused=0, bytes_in=11, bytes_out=22)
        assert meters.client("bob").reading() == Reading(opened=1, refused=1, bytes_in=100, bytes_out=0)
        assert meters.server.reading() == Reading(opened=3, refused=1, bytes_in=111, bytes_out=22)

    def test_rates_are_the_bytes_moved_since_the_last_sample(self) -> None:
        meters = TrafficMeters()
        meter = meters.tunnel("a", "t")
        stream = Stream()
        meter.open(stream)
        stream.bytes_out, stream.bytes_in = 4000, 1000
        meters.sample(2.0)
        assert (meter.rate_in, meter.rate_out) == (2000.0, 500.0)
        assert (meters.server.rate_in, meters.client("a").rate_out) == (2000.0, 500.0)
        meter.close(stream)  # ended between samples: its bytes are not counted twice
        meters.sample(1.0)
        assert (meter.rate_in, meter.rate_out, meters.server.rate_in) == (0.0, 0.0, 0.0)

    def test_each_reader_gets_what_happened_since_it_last_asked(self) -> None:
        meter = TrafficMeter()
        stream = Stream(bytes_out=7)
        meter.open(stream)
        assert meter.advance("history") == Reading(opened=1, bytes_in=7)
        assert not meter.advance("history")
        stream.bytes_in = 3
        assert meter.advance("history") == Reading(bytes_out=3)
        assert meter.advance("other") == Reading(opened=1, bytes_in=7, bytes_out=3)


@implementer(IRateLimiter)
class RecordingLimiter:
    def __init__(self) -> None:
        self.calls: List[Tuple[str, Any]] = []

    def stream_opened(self, stream: Any) -> None:
        self.calls.append(("opened", stream))

    def stream_closed(self, stream: Any) -> None:
        self.calls.append(("closed", stream))


class TestRateLimiterSeam:
    def test_a_limiter_on_a_client_governs_each_of_its_streams_once(self) -> None:
        meters = TrafficMeters()
        limiter = RecordingLimiter()
        verifyObject(IRateLimiter, limiter)
        meters.client("alice").limiter = limiter
        ssh, web, bob = Stream(), Stream(), Stream()
        meters.tunnel("alice", "ssh").open(ssh)
        meters.tunnel("alice", "web").open(web)
        meters.tunnel("bob", "ssh").open(bob)
        meters.tunnel("alice", "ssh").close(ssh)
        meters.tunnel("alice", "ssh").close(ssh)
        assert limiter.calls == [("opened", ssh), ("opened", web), ("closed", ssh)]

    def test_limiters_on_a_tunnel_and_the_server_both_see_the_stream(self) -> None:
        meters = TrafficMeters()
        on_tunnel, on_server = RecordingLimiter(), RecordingLimiter()
        meters.tunnel("alice", "ssh").limiter = on_tunnel
        meters.server.limiter = on_server
        stream = Stream()
        meters.tunnel("alice", "ssh").open(stream)
        meters.tunnel("alice", "ssh").close(stream)
        assert on_tunnel.calls == on_server.calls == [("opened", stream), ("closed", stream)]
