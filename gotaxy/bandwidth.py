# -*- test-case-name: tests.test_bandwidth -*-
"""
Bandwidth limits: token buckets on the reactor's clock, applied to streams
through the mux's flow control (``gotaxy.mux.Stream``), and to a udp
tunnel's datagrams by dropping them.

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

At most one window plus one socket read is ever in flight, as without a
limit; and with the window budget (``gotaxy.budget``) a limited stream's
window stays at a quarter of a second of its rate (``TokenBucket.window``),
shrinking to that when a limit comes on a stream that had grown it, so the
peer's bursts between two waits stay short.  (A peer without the budget, an
older Gotaxy, has the fixed 512 KiB window: its bursts are that long.)

A udp tunnel's visitors (``gotaxy.mux.Flow``) have no window to withhold:
each datagram is taken from the bucket whole (``TokenBucket.take``) or,
when the bucket (or one above it) has not got it, dropped and counted as
``bandwidth`` (``gotaxy.proxy.udp``); nothing is buffered or delayed.  Other streams on the same mux connection have
no bucket (or their own) and are not slowed.

``BandwidthLimiter`` is an ``IRateLimiter`` (defined here; it plugs into ``gotaxy.server.traffic``'s meters):
the server sets one on a tunnel's meter for ``bandwidthLimitMode =
"server"``; the client keeps one per tunnel for ``"client"``.  It hands
every stream of its tunnel the two buckets, the right way round for its
side (the server sends what the public sends *in*; the client sends what
the local service sends *out*).

The server's own limits, ``maxBandwidth`` (all traffic) and
``maxBandwidthPerClient`` (each client's), are buckets too
(``ServerBandwidth``): a tunnel's bucket spends from its client's, which
spends from the server's, and a stream waits for whichever owes.  A reload
changes their rates in place (``ServerBandwidth.set``), and so does an
operator's live change (``gotaxy.store.overrides``, which wins over the
file until cleared): open connections follow at once and none is dropped.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from zope.interface import Interface, implementer

from gotaxy.units import parse_size

__all__ = ["BANDWIDTH_ATTRIBUTES", "MODES", "ClientBandwidth", "IRateLimiter", "ServerBandwidth", "bandwidth_keys", "BandwidthLimiter", "TokenBucket", "check_limit", "limit_bytes", "limiter_for"]


class IRateLimiter(Interface):
    """Something that limits the traffic counted by one meter (``gotaxy.server.traffic.TrafficMeter.limiter``)."""

    def stream_opened(stream: Any) -> None:
        """A connection counted by the meter opened; govern ``stream`` from now on."""

    def stream_closed(stream: Any) -> None:
        """That connection ended; forget ``stream``."""

#: ``transport.bandwidthLimitMode``: where the limit is enforced (frp's default first).
MODES = ("client", "server")

#: The smallest burst a bucket allows, so that a low limit still moves whole reads.
MIN_BURST = 4096
#: The smallest receive window a limit keeps a stream to (``TokenBucket.window``): the budget's floor.
MIN_WINDOW = 16 * 1024


class TokenBucket:
    """
    ``rate`` bytes a second (None: no limit of its own), at most ``burst``
    saved up (a tenth of a second's worth by default), and what it spends
    is spent from its ``parent`` too (a client's bucket for a tunnel's, the
    server's for a client's); see the module docstring.
    """

    def __init__(self, reactor: Any, rate: Optional[int], burst: Optional[int] = None,
                 parent: Optional["TokenBucket"] = None) -> None:
        self.reactor = reactor
        self.rate = rate
        self.parent = parent
        self.burst = burst if burst is not None else _burst(rate)
        self.tokens = float(self.burst)
        self._last = reactor.seconds()
        self._waiters: List[Callable[[], None]] = []
        self._timer: Any = None

    def _refill(self) -> None:
        now = self.reactor.seconds()
        if self.rate is not None:
            self.tokens = min(float(self.burst), self.tokens + (now - self._last) * self.rate)
        self._last = now

    def spend(self, n: int) -> bool:
        """``n`` bytes moved; True unless that leaves this bucket or one above it in debt (then ``wait``)."""
        ok = True
        if self.rate is not None:
            self._refill()
            self.tokens -= n
            ok = self.tokens >= 0
        if self.parent is not None and not self.parent.spend(n):
            ok = False
        return ok

    def take(self, n: int) -> bool:
        """
        Spend ``n`` bytes only if this bucket and every one above it have
        them now (a full bucket takes even a larger ``n``, and owes the
        rest); False, spending nothing, if not: a datagram over the limit
        is dropped, never held.
        """
        if not self._has(n):
            return False
        self.spend(n)
        return True

    def _has(self, n: int) -> bool:
        if self.rate is not None:
            self._refill()
            if self.tokens < min(n, self.burst):
                return False
        return self.parent is None or self.parent._has(n)

    def wait(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this bucket's debt is paid, or the debt of the one above it."""
        if self.rate is not None:
            self._refill()
            if self.tokens < 0:
                self._waiters.append(callback)
                if self._timer is None:
                    self._schedule()
                return
        if self.parent is not None:
            self.parent.wait(callback)
        else:
            callback()

    def _schedule(self) -> None:
        assert self.rate is not None
        self._refill()
        self._timer = self.reactor.callLater(max(0.0, -self.tokens / self.rate), self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._refill()
        if self.tokens < -0.5:  # a clock's rounding: do not wake a whole byte early
            self._schedule()
            return
        self._release()

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()

    def set_rate(self, rate: Optional[int]) -> None:
        """A new limit (None: none), live: what is owed stays owed, those waiting wait by the new rate."""
        self._refill()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.rate = rate
        self.burst = _burst(rate)
        self.tokens = min(self.tokens, float(self.burst)) if rate is not None else 0.0
        if rate is None or self.tokens >= 0:
            self._release()
        elif self._waiters:
            self._schedule()

    def stop(self) -> None:
        """Release every waiter now (the limit was lifted)."""
        self.set_rate(None)

    def window(self, largest: int) -> int:
        """
        The most receive window a stream under this bucket needs: a quarter
        of a second of the lowest rate above it (enough for a round trip of
        that long; more would let the peer send a larger burst between two
        waits, which shows as a rate well above the limit over a second or
        two), at least ``MIN_WINDOW``, at most ``largest``.  The window
        budget asks when it grants credit (``gotaxy.budget``).
        """
        bucket: Optional[TokenBucket] = self
        while bucket is not None:
            if bucket.rate is not None:
                largest = min(largest, max(MIN_WINDOW, bucket.rate // 4))
            bucket = bucket.parent
        return largest


def _burst(rate: Optional[int]) -> int:
    return max(MIN_BURST, rate // 10) if rate is not None else 0


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
    """
    One tunnel's limit on one side: a bucket for bytes *in* (public to local)
    and one for *out*, each under ``parents`` (the client's and server's, on
    the server) if given.
    """

    def __init__(self, reactor: Any, rate: Optional[int], side: str,
                 parents: Optional[Tuple[TokenBucket, TokenBucket]] = None) -> None:
        self.rate = rate
        self.side = side
        parent_in, parent_out = parents if parents is not None else (None, None)
        self.bucket_in = TokenBucket(reactor, rate, parent=parent_in)
        self.bucket_out = TokenBucket(reactor, rate, parent=parent_out)

    def stream_opened(self, stream: Any) -> None:
        if self.side == "server":
            stream.send_bucket, stream.recv_bucket = self.bucket_in, self.bucket_out
        else:
            stream.send_bucket, stream.recv_bucket = self.bucket_out, self.bucket_in

    def stream_closed(self, stream: Any) -> None:
        stream.send_bucket = stream.recv_bucket = None


def limiter_for(reactor: Any, spec: Any, side: str,
                parents: Optional[Tuple[TokenBucket, TokenBucket]] = None) -> Optional[BandwidthLimiter]:
    """The limiter ``side`` ("client" or "server") enforces for a tunnel with ``spec``, or None."""
    rate = limit_bytes(getattr(spec, "bandwidth_limit", None))
    if rate is None or getattr(spec, "bandwidth_limit_mode", "client") != side:
        return None
    return BandwidthLimiter(reactor, rate, side, parents)


@implementer(IRateLimiter)
class ClientBandwidth:
    """
    The server's limit for one client (``maxBandwidthPerClient``), under the
    server's (``maxBandwidth``): every stream that no tunnel limit of the
    server's governs gets these buckets, limited or not as it opens, so that
    a limit set later (a reload, an operator's live change) holds it too.
    Without a limit a bucket costs a call per read and never waits.
    """

    def __init__(self, server: "ServerBandwidth", bucket_in: TokenBucket, bucket_out: TokenBucket) -> None:
        self.server = server
        self.bucket_in = bucket_in
        self.bucket_out = bucket_out

    @property
    def buckets(self) -> Tuple[TokenBucket, TokenBucket]:
        return (self.bucket_in, self.bucket_out)

    def stream_opened(self, stream: Any) -> None:
        # A udp visitor's Flow is not limited by these (only by its tunnel's own transport.bandwidthLimit).
        if getattr(stream, "is_flow", False):
            return
        if getattr(stream, "send_bucket", False) is None:
            stream.send_bucket, stream.recv_bucket = self.bucket_in, self.bucket_out

    def stream_closed(self, stream: Any) -> None:
        if hasattr(stream, "send_bucket"):
            stream.send_bucket = stream.recv_bucket = None


class ServerBandwidth:
    """
    The server's own limits, in bytes a second each way (0: none):
    ``maxBandwidth`` for all its traffic, ``maxBandwidthPerClient`` for each
    client's, unless the client's token has a limit of its own
    (``tokens.max_bandwidth``, ``set_client``), which replaces it for that
    client.  ``set`` and ``set_client`` change them live: open connections
    follow the new rates at once (a reload of server.toml, an operator's
    live change through ``ServerCore.apply_overrides``), none is dropped.
    """

    def __init__(self, reactor: Any, total: int = 0, per_client: int = 0) -> None:
        self.reactor = reactor
        self.total = total
        self.per_client = per_client
        self.bucket_in = TokenBucket(reactor, total or None)
        self.bucket_out = TokenBucket(reactor, total or None)
        self.clients: Dict[str, ClientBandwidth] = {}
        #: client name -> its token's own limit (set only when not 0)
        self.own: Dict[str, int] = {}

    def rate_of(self, name: str) -> int:
        """The limit client ``name`` is held to, bytes a second each way (0: none)."""
        return self.own.get(name) or self.per_client

    def client(self, name: str) -> ClientBandwidth:
        limits = self.clients.get(name)
        if limits is None:
            rate = self.rate_of(name) or None
            limits = self.clients[name] = ClientBandwidth(
                self, TokenBucket(self.reactor, rate, parent=self.bucket_in),
                TokenBucket(self.reactor, rate, parent=self.bucket_out),
            )
        return limits

    def set(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self.bucket_in.set_rate(total or None)
        self.bucket_out.set_rate(total or None)
        for name, limits in self.clients.items():
            limits.bucket_in.set_rate(self.rate_of(name) or None)
            limits.bucket_out.set_rate(self.rate_of(name) or None)

    def set_client(self, name: str, rate: int) -> None:
        """Client ``name``'s own limit (its token's; 0: ``maxBandwidthPerClient`` again), live."""
        if rate:
            self.own[name] = rate
        else:
            self.own.pop(name, None)
        limits = self.clients.get(name)
        if limits is not None:
            limits.bucket_in.set_rate(self.rate_of(name) or None)
            limits.bucket_out.set_rate(self.rate_of(name) or None)
