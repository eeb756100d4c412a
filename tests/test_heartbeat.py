"""
Tests for gotaxy.heartbeat: pings on schedule, dead peers found on time.
"""

from __future__ import annotations

import random
import struct
from typing import List, Optional

import pytest
from twisted.internet.task import Clock

from gotaxy.heartbeat import HeartbeatMonitor


class Peer:
    """The monitor's view of a connection: a frame counter, sent pings, the verdict."""

    def __init__(self, clock: Clock, interval: float, timeout: float) -> None:
        self.clock = clock
        self.frames = 0
        self.pings: List[float] = []
        self.payloads: List[bytes] = []
        self.dead_at: Optional[float] = None
        self.silent_for: Optional[float] = None
        self.monitor = HeartbeatMonitor(
            clock,
            interval,
            timeout,
            frames_seen=lambda: self.frames,
            send_ping=self.send_ping,
            on_timeout=self.on_timeout,
        )

    def send_ping(self, payload: bytes) -> None:
        self.pings.append(self.clock.seconds())
        self.payloads.append(payload)

    def on_timeout(self, silent: float) -> None:
        assert self.dead_at is None, "declared dead twice"
        self.dead_at = self.clock.seconds()
        self.silent_for = silent


def run(clock: Clock, seconds: float, step: float = 0.05, each=None) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)
        if each is not None:
            each()


@pytest.mark.parametrize("interval, timeout", [(10, 30), (30, 90), (3, 30), (1, 5), (7, 8)])
def test_pings_go_out_every_interval(interval: float, timeout: float) -> None:
    clock = Clock()
    peer = Peer(clock, interval, timeout)
    peer.monitor.start()

    def answered() -> None:
        # The peer answers every ping at once, so it never looks dead.
        peer.frames += 1

    run(clock, interval * 10 + 0.01, step=0.01, each=answered)
    assert peer.dead_at is None
    gaps = [b - a for a, b in zip(peer.pings, peer.pings[1:])]
    assert peer.pings[0] == 0
    assert len(peer.pings) == 11
    for gap in gaps:
        assert gap == pytest.approx(interval, abs=0.02)


@pytest.mark.parametrize("interval, timeout", [(3, 30), (10, 30), (1, 60)])
def test_late_ticks_do_not_skip_pings(interval: float, timeout: float) -> None:
    # A real reactor runs timed calls a little late, by varying amounts.
    rng = random.Random(5)
    clock = Clock()
    peer = Peer(clock, interval, timeout)
    peer.monitor.start()
    while clock.seconds() < interval * 50:
        clock.advance(rng.uniform(0.001, 0.2))
        peer.frames += 1
    gaps = [b - a for a, b in zip(peer.pings, peer.pings[1:])]
    assert len(peer.pings) >= 49
    assert max(gaps) < interval + 0.25
    assert min(gaps) > interval - 0.25


def test_silent_peer_is_declared_dead_at_the_timeout() -> None:
    for interval, timeout in [(10, 30), (30, 90), (1, 5), (4, 5)]:
        clock = Clock()
        peer = Peer(clock, interval, timeout)
        peer.monitor.start()
        run(clock, timeout * 2, step=0.01)
        assert peer.dead_at is not None
        assert timeout <= peer.dead_at <= timeout + timeout / 10 + 0.01
        assert peer.silent_for is not None and peer.silent_for >= timeout
        # Once dead, the monitor is stopped: no more pings, no second verdict.
        assert not peer.monitor.running
        assert all(t <= peer.dead_at for t in peer.pings)


def test_frames_keep_the_peer_alive_and_silence_then_kills_it() -> None:
    clock = Clock()
    peer = Peer(clock, 10, 30)
    peer.monitor.start()
    # Traffic (any frame, not only PONG) every 25 s: always under the timeout.
    for _ in range(20):
        clock.advance(25)
        peer.frames += 1
    assert peer.dead_at is None
    last_frame = clock.seconds()
    run(clock, 60, step=0.1)
    assert peer.dead_at is not None
    assert 30 <= peer.dead_at - last_frame <= 33 + 0.1


def test_frames_arriving_between_checks_count() -> None:
    clock = Clock()
    peer = Peer(clock, 10, 30)
    peer.monitor.start()
    # A single frame at t=29.9 must push death to about t=59.9, not t=30.
    clock.advance(29.9)
    peer.frames += 1
    run(clock, 25, step=0.1)
    assert peer.dead_at is None


def test_rtt_comes_from_the_echoed_ping() -> None:
    clock = Clock()
    peer = Peer(clock, 10, 30)
    clock.advance(1000)
    peer.monitor.start()
    assert peer.monitor.rtt is None
    clock.advance(0.25)
    peer.monitor.pong_received(peer.payloads[0])
    assert peer.monitor.rtt == pytest.approx(0.25)

    # A later ping answered faster replaces it.
    clock.advance(9.75)
    peer.frames += 1
    clock.advance(0.05)  # the scheduled tick fires and pings at t=1010
    assert len(peer.payloads) == 2
    clock.advance(0.03)
    peer.monitor.pong_received(peer.payloads[1])
    assert peer.monitor.rtt == pytest.approx(0.08, abs=0.051)


def test_nonsense_pongs_do_not_change_the_rtt() -> None:
    clock = Clock()
    peer = Peer(clock, 10, 30)
    clock.advance(100)
    peer.monitor.start()
    clock.advance(0.5)
    peer.monitor.pong_received(peer.payloads[0])
    for payload in [b"", b"1234567", struct.pack("!d", 1e12), struct.pack("!d", -5.0), struct.pack("!d", 0.0)]:
        peer.monitor.pong_received(payload)
    assert peer.monitor.rtt == pytest.approx(0.5)


def test_stop_ends_pings_and_verdicts() -> None:
    clock = Clock()
    peer = Peer(clock, 10, 30)
    peer.monitor.start()
    assert peer.monitor.running
    peer.monitor.stop()
    assert not peer.monitor.running
    run(clock, 100, step=1)
    assert peer.pings == [0] and peer.dead_at is None
    peer.monitor.stop()  # twice is harmless
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("interval, timeout", [(30, 30), (31, 30), (0, 30), (-1, 30)])
def test_interval_must_be_positive_and_shorter_than_the_timeout(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="shorter than the timeout"):
        HeartbeatMonitor(Clock(), interval, timeout, lambda: 0, lambda p: None, lambda s: None)
