# -*- test-case-name: tests.test_bandwidth -*-
"""
Bandwidth limits: token buckets on the reactor's clock, applied to streams
through the mux's flow control (``gotaxy.mux.Stream``).

frp's ``transport.bandwidthLimit`` on a proxy (``"1MB"``, ``"512KB"``: bytes
per second, KB = 1024 as ``gotaxy.units.parse_size`` reads it) limits each
direction of the tunnel to that rate, all its connections together;
``transport.bandwidthLimitMode`` says which end enforces it: ``"client"``
(frp's default) or ``"server"``.  (frp shares one limiter between the two
directions; Gotaxy gives each direction the full rate, as issue 13 asks.)

A ``TokenBucket`` fills at ``rate`` bytes a second up to ``burst``.  Bytes
are spent *after* they moved, so the bucket may go into debt by one read;
while it is in debt, the streams it governs wait, and it wakes them (one
timer per bucket) once the debt is paid.  A limit therefore never copies or
buffers anything:

* **sending** (bytes read from our socket, ``Stream.send_bucket``): the
  stream pauses that socket's reading until the bucket refills;
* **receiving** (bytes from the peer, ``Stream.recv_bucket``): the stream
  writes them to its socket as always but withholds the window credit, so
  the peer's stream runs out of window and pauses *its* socket.

At most one window (``INITIAL_WINDOW``) plus one socket read is ever in
flight, as without a limit.  Other streams on the same mux connection have
no bucket (or their own) and are not slowed.

``BandwidthLimiter`` is an ``IRateLimiter`` (``gotaxy.server.traffic``):
the server sets one on a tunnel's meter for ``bandwidthLimitMode =
"server"``; the client keeps one per tunnel for ``"client"``.  It hands
every stream of its tunnel the two buckets, the right way round for its
side (the server sends what the public sends *in*; the client sends what
the local service sends *out*).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from zope.interface import implementer

from gotaxy.server.traffic import IRateLimiter
from gotaxy.units import parse_size

__all__ = ["BANDWIDTH_ATTRIBUTES", "MODES", "bandwidth_keys", "BandwidthLimiter", "TokenBucket", "check_limit", "limit_bytes", "limiter_for"]

#: ``transport.bandwidthLimitMode``: where the limit is enforced (frp's default first).
MODES = ("client", "server")

#: The smallest burst a bucket allows, so that a low limit still moves whole reads.
MIN_BURST = 4096


class TokenBucket:
    """
    ``rate`` bytes a second, at most ``burst`` saved up (a tenth of a second's
    worth by default); see the module docstring.
    """

    def __init__(self, reactor: Any, rate: int, burst: Optional[int] = None) -> None:
        self.reactor = reactor
        self.rate = rate
        self.burst = burst if burst is not None else max(MIN_BURST, rate // 10)
        self.tokens = float(self.burst)
        self._last = reactor.seconds()
        self._waiters: List[Callable[[], None]] = []
        self._timer: Any = None

    def _refill(self) -> None:
        now = self.reactor.seconds()
        self.tokens = min(float(self.burst), self.tokens + (now - self._last) * self.rate)
        self._last = now

    def spend(self, n: int) -> bool:
        """``n`` bytes moved; True unless that leaves the bucket in debt (then ``wait``)."""
        self._refill()
        self.tokens -= n
        return self.tokens >= 0

    def wait(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the debt is paid (at once if there is none)."""
        self._waiters.append(callback)
        if self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        self._refill()
        self._timer = self.reactor.callLater(max(0.0, -self.tokens / self.rate), self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._refill()
        if self.tokens < -0.5:  # a clock's rounding: do not wake a whole byte early
            self._schedule()
            return
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()

    def set_rate(self, rate: int) -> None:
        """A new limit, live: what is saved up and owed stays, the waiters' timer is set again."""
        self._refill()
        self.rate = rate
        self.burst = max(MIN_BURST, rate // 10)
        self.tokens = min(self.tokens, float(self.burst))
        if self._timer is not None:
            self._timer.cancel()
            self._schedule()

    def stop(self) -> None:
        """Release every waiter now (the limit was lifted)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()


def limit_bytes(value: Any) -> Optional[int]:
    """``transport.bandwidthLimit`` (``"1MB"``, ``"512KB"``, a number of bytes) in bytes a second; None: no limit."""
    if value is None or value == "" or value == 0:
        return None
    if type(value) is int:
        return value if value > 0 else None
    return parse_size(str(value))


def check_limit(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator for ``transport.bandwidthLimit``."""
    from gotaxy.proxy.base import SpecError

    if isinstance(value, bool) or not isinstance(value, (int, str, type(None))):
        ok = False
    elif isinstance(value, int):
        ok = value >= 0
    else:
        try:
            limit_bytes(value)
            ok = True
        except ValueError:
            ok = False
    if not ok:
        raise SpecError(f"'transport.bandwidthLimit' must be a rate a second such as \"1MB\" or \"512KB\" "
                        f"(or left out for none), not {str(value)[:32]!r}", "transport.bandwidthLimit")


def check_mode(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator for ``transport.bandwidthLimitMode``."""
    from gotaxy.proxy.base import SpecError

    if value not in MODES:
        raise SpecError(f"'transport.bandwidthLimitMode' must be \"client\" or \"server\", not {str(value)[:32]!r}",
                        "transport.bandwidthLimitMode")


#: frp's keys -> a spec's attributes, for the types that offer a limit.
BANDWIDTH_ATTRIBUTES = {"transport.bandwidthLimit": "bandwidth_limit",
                        "transport.bandwidthLimitMode": "bandwidth_limit_mode"}


def bandwidth_keys(spec: Any) -> Dict[str, Any]:
    """frp's keys of ``spec``'s limit, for its ``to_keys`` (none when it has no limit)."""
    if limit_bytes(spec.bandwidth_limit) is None:
        return {}
    return {"transport.bandwidthLimit": spec.bandwidth_limit, "transport.bandwidthLimitMode": spec.bandwidth_limit_mode}


@implementer(IRateLimiter)
class BandwidthLimiter:
    """One tunnel's limit on one side: a bucket for bytes *in* (public to local) and one for *out*."""

    def __init__(self, reactor: Any, rate: int, side: str) -> None:
        self.rate = rate
        self.side = side
        self.bucket_in = TokenBucket(reactor, rate)
        self.bucket_out = TokenBucket(reactor, rate)

    def stream_opened(self, stream: Any) -> None:
        if self.side == "server":
            stream.send_bucket, stream.recv_bucket = self.bucket_in, self.bucket_out
        else:
            stream.send_bucket, stream.recv_bucket = self.bucket_out, self.bucket_in

    def stream_closed(self, stream: Any) -> None:
        stream.send_bucket = stream.recv_bucket = None


def limiter_for(reactor: Any, spec: Any, side: str) -> Optional[BandwidthLimiter]:
    """The limiter ``side`` ("client" or "server") enforces for a tunnel with ``spec``, or None."""
    rate = limit_bytes(getattr(spec, "bandwidth_limit", None))
    if rate is None or getattr(spec, "bandwidth_limit_mode", "client") != side:
        return None
    return BandwidthLimiter(reactor, rate, side)
