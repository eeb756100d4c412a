"""
Tests for gotaxy.ports: which public ports a tunnel may get.
"""

from __future__ import annotations

import random
from collections import Counter

from gotaxy.config import ConsoleSettings, PortRange, WebSettings
from gotaxy.ports import MAX_ATTEMPTS, PortAllocator


def allocator(*ranges, seed: int = 1) -> PortAllocator:
    return PortAllocator([PortRange(a, b) for a, b in ranges], rng=random.Random(seed))


def test_allowed_follows_the_ranges() -> None:
    ports = allocator((2000, 3000), (3001, 3001), (6000, 6010))
    for port in (2000, 2500, 3000, 3001, 6000, 6010):
        assert ports.allowed(port), port
    for port in (1999, 3002, 5999, 6011, 80, 65535):
        assert not ports.allowed(port), port


def test_unrestricted_allows_every_unprivileged_port_and_proposes_none() -> None:
    ports = PortAllocator([])
    assert ports.unrestricted
    assert ports.allowed(1024) and ports.allowed(65535) and ports.allowed(8080)
    assert not ports.allowed(0) and not ports.allowed(65536) and not ports.allowed(-1)
    # The operating system picks: nothing to propose.
    assert ports.candidates(exclude=set()) == []


def test_without_allow_ports_privileged_ports_are_refused_with_the_fix() -> None:
    ports = PortAllocator([])
    for port in (1, 22, 80, 443, 999, 1023):
        assert not ports.allowed(port), port
    message = ports.refusal(999)
    assert message is not None
    assert "port 999 is a privileged port (below 1024)" in message
    assert "allowPorts" in message and "1024 to 65535" in message


def test_explicit_allow_ports_below_1024_are_honoured() -> None:
    ports = allocator((22, 22), (80, 80), (10000, 10010))
    assert ports.allowed(22) and ports.allowed(80) and ports.allowed(10005)
    assert not ports.allowed(443) and not ports.allowed(8080)
    assert "allowPorts: 22,80,10000-10010" in ports.refusal(443)


def test_server_own_ports_are_never_a_tunnels_whatever_allow_ports_says() -> None:
    own = {7000: "control port (bindPort)", 7500: "web panel and metrics port (webServer.port)"}
    for ranges in ([], [PortRange(1, 65535)], [PortRange(7000, 7000), PortRange(7500, 7500)]):
        ports = PortAllocator(ranges, own, rng=random.Random(1))
        assert not ports.allowed(7000) and not ports.allowed(7500)
        assert ports.refusal(7500) == (
            "port 7500 is this server's own web panel and metrics port (webServer.port) "
            "and never a tunnel's; choose another remotePort"
        )
        assert 7000 not in ports.candidates(set()) and 7500 not in ports.candidates(set())
    assert PortAllocator([PortRange(7000, 7000)], own).candidates(set()) == []


def test_server_ports_lists_the_enabled_listeners() -> None:
    from gotaxy.config import ServerConfig
    from gotaxy.ports import server_ports

    assert set(server_ports(ServerConfig(bind_port=7100, web=WebSettings(port=7600), console=ConsoleSettings(port=0)))) == {7100, 7600}
    assert "SSH console" in server_ports(ServerConfig(console=ConsoleSettings(port=2222)))[2222]


def test_restricted_is_not_unrestricted() -> None:
    assert not allocator((10, 20)).unrestricted


def test_candidates_avoid_excluded_ports_and_stay_in_range() -> None:
    ports = allocator((7000, 7009), (9000, 9004))
    exclude = {7000, 7003, 9004, 12345}
    got = ports.candidates(exclude)
    assert sorted(got) == sorted((set(range(7000, 7010)) | set(range(9000, 9005))) - exclude)
    assert len(got) == len(set(got))


def test_candidates_are_limited_and_distinct() -> None:
    ports = allocator((20000, 20099))
    got = ports.candidates(set(), limit=10)
    assert len(got) == 10 and len(set(got)) == 10
    assert all(20000 <= p <= 20099 for p in got)
    assert len(ports.candidates(set())) == MAX_ATTEMPTS


def test_candidates_come_in_random_order() -> None:
    ports = PortAllocator([PortRange(5000, 5019)])  # the real, system RNG
    orders = {tuple(ports.candidates(set())) for _ in range(20)}
    assert len(orders) > 15
    # Every port gets to be first now and then: no bias to the range start.
    firsts = Counter(tuple_[0] for tuple_ in (ports.candidates(set()) for _ in range(2000)))
    assert set(firsts) == set(range(5000, 5020))


def test_single_port_range() -> None:
    ports = allocator((4444, 4444))
    assert ports.candidates(set()) == [4444]
    assert ports.candidates({4444}) == []


def test_everything_excluded_gives_nothing() -> None:
    ports = allocator((4000, 4009))
    assert ports.candidates(set(range(4000, 4010))) == []


def test_huge_range_gives_distinct_ports_spread_over_the_range() -> None:
    ports = allocator((1024, 65535), seed=3)
    exclude = set(range(1024, 40000))  # most of the lower part is taken
    got = ports.candidates(exclude)
    assert len(got) == MAX_ATTEMPTS and len(set(got)) == MAX_ATTEMPTS
    assert all(40000 <= p <= 65535 for p in got)


def test_huge_range_over_several_pieces_reaches_each_piece() -> None:
    ports = allocator((1000, 1999), (30000, 30000), (50000, 59999), seed=9)
    seen = set()
    for _ in range(300):
        got = ports.candidates(set())
        assert len(got) == MAX_ATTEMPTS and len(set(got)) == MAX_ATTEMPTS
        assert all(ports.allowed(p) for p in got)
        seen.update(got)
    assert any(1000 <= p <= 1999 for p in seen)
    assert 30000 in seen
    assert any(50000 <= p <= 59999 for p in seen)


def test_range_just_above_the_shuffle_threshold_still_finds_free_ports() -> None:
    # 4 * MAX_ATTEMPTS + 1 ports, half reserved: sampling must still propose
    # only free ones, and plenty of them.
    size = 4 * MAX_ATTEMPTS + 1
    ports = allocator((10000, 10000 + size - 1), seed=2)
    exclude = set(range(10000, 10000 + size, 2))
    got = ports.candidates(exclude)
    assert got and not set(got) & exclude
    assert len(got) >= MAX_ATTEMPTS // 2


def test_nearly_full_large_range_still_finds_the_free_ports():
    allocator = PortAllocator([PortRange(20000, 29999)], rng=random.Random(7))
    free = {20003, 25000, 29999}
    taken = set(range(20000, 30000)) - free
    assert set(allocator.candidates(taken)) == free
