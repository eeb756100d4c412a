# -*- test-case-name: tests.test_heartbeat -*-
"""
Liveness of a control connection.

Each side sends PING every ``interval`` seconds and answers the peer's PINGs
with PONG.  The peer counts as alive while *any* frame arrives: the monitor
compares the frame decoder's counter between checks instead of reading the
clock per frame, so the data path pays nothing for it.  A peer silent for
``timeout`` seconds is declared dead (checked at least every ``timeout / 10``
seconds, so the verdict comes at most 10% late).

The PING payload is the sender's clock reading; the PONG echoes it, which
gives a round-trip time without any state per ping.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Callable, Optional

from twisted.internet.task import LoopingCall

_STAMP = struct.Struct("!d")


class HeartbeatMonitor:
    def __init__(
        self,
        clock: Any,
        interval: float,
        timeout: float,
        frames_seen: Callable[[], int],
        send_ping: Callable[[bytes], None],
        on_timeout: Callable[[float], None],
    ) -> None:
        if not 0 < interval < timeout:
            raise ValueError("heartbeat interval must be positive and shorter than the timeout")
        self._clock = clock
        self.interval = interval
        self.timeout = timeout
        self._frames_seen = frames_seen
        self._send_ping = send_ping
        self._on_timeout = on_timeout
        self._last_count = -1
        self._last_heard = 0.0
        self._last_ping = 0.0
        self.rtt: Optional[float] = None
        # Check at least every timeout/10 (a verdict is at most 10% late), at
        # a period that divides the interval, so pings keep to the interval.
        self._step = interval / math.ceil(interval / (timeout / 10))
        self._check = LoopingCall(self._tick)
        self._check.clock = clock

    def retune(self, interval: float, timeout: float) -> None:
        """New settings (a reload), keeping what was heard so far; the next check follows them."""
        if not 0 < interval < timeout:
            raise ValueError("heartbeat interval must be positive and shorter than the timeout")
        self.interval, self.timeout = interval, timeout
        self._step = interval / math.ceil(interval / (timeout / 10))
        if self._check.running:
            self._check.stop()
            self._check.start(self._step, now=False)

    def start(self) -> None:
        now = self._clock.seconds()
        self._last_heard = now
        self._last_count = self._frames_seen()
        self._last_ping = now
        self._send_ping(_STAMP.pack(now))
        self._check.start(self._step, now=False)

    def stop(self) -> None:
        if self._check.running:
            self._check.stop()

    @property
    def running(self) -> bool:
        return self._check.running

    def pong_received(self, payload: bytes) -> None:
        if len(payload) == _STAMP.size:
            (sent,) = _STAMP.unpack(payload)
            rtt = self._clock.seconds() - sent
            if 0 <= rtt <= self.timeout:
                self.rtt = rtt

    def _tick(self) -> None:
        now = self._clock.seconds()
        count = self._frames_seen()
        if count != self._last_count:
            self._last_count = count
            self._last_heard = now
        silent = now - self._last_heard
        if silent >= self.timeout:
            self.stop()
            self._on_timeout(silent)
            return
        # Half a step of slack: a tick that fires late must not skip a ping.
        if now - self._last_ping >= self.interval - self._step / 2:
            self._last_ping = now
            self._send_ping(_STAMP.pack(now))
