# -*- test-case-name: tests.test_limits -*-
"""
How many connections one tunnel takes: at most ``transport.maxConnections``
at once, at most ``transport.maxConnectionsPerIP`` at once from one source
address, and at most ``transport.connectionRatePerIP`` new ones per minute
from one source address (a token bucket per source on the reactor's clock:
it holds that many tokens, refills at that many per minute, and a new
connection spends one).  0, the default, is no limit.  frp has no such keys;
these are Gotaxy's own, next to frp's ``transport.*``.

What counts as a connection is what the tunnel holds on its client's mux
connection: a public TCP connection (``tcp``, ``https`` passthrough), a
visitor's association (``udp``), a stream the HTTP front opens to the
tunnel for a visitor's requests (``http``, and ``https`` terminated).  The
check sits beside the address rules (``LiveTunnel.admits``): every type asks
``LiveTunnel.limit(host)`` just before it opens the stream or the flow and
tells the tunnel's ``ConnectionGate`` when it opened and ended, so a new
type inherits the limits by doing the same.

A refused connection is closed at once (TCP), its datagram dropped (UDP), or
answered 429 (per source: too many at once or too fast) or 503 (the tunnel
is full) by the HTTP front.  Each refusal is counted by reason on the
tunnel's gate (``refused``: ``/metrics``' ``gotaxy_tunnel_limit_refused``,
the tunnel's ``refused`` count), reported through the core's refusal
throttle (one log line and one message to the client per tunnel per
``REFUSAL_REPORT_INTERVAL``), and a per-source refusal is a ``flood``
failure for the automatic bans (``gotaxy.server.access``).

The gate lives on the tunnel's traffic meter, which outlives the tunnel, so
connections that were open when a tunnel was restarted or edited still
count, and end, against the same numbers.  Buckets are kept for at most
``MAX_SOURCES`` sources: full buckets (sources that are quiet) are dropped
first, then the oldest.
"""

from __future__ import annotations

import collections
from typing import Any, Dict, Optional, Tuple

import attrs

from gotaxy.server.access import canonical

#: Why a connection was refused by its tunnel's limits.
TOO_MANY = "max_connections"
TOO_MANY_FROM_SOURCE = "max_connections_per_ip"
TOO_FAST = "connection_rate"
REASONS = {
    TOO_MANY: "the tunnel is at its transport.maxConnections",
    TOO_MANY_FROM_SOURCE: "a source address is at the tunnel's transport.maxConnectionsPerIP",
    TOO_FAST: "a source address opened more than the tunnel's transport.connectionRatePerIP per minute",
}
#: The reasons that are one source's doing (``flood`` failures for the bans).
PER_SOURCE = (TOO_MANY_FROM_SOURCE, TOO_FAST)

#: Sources whose token buckets are kept at once.
MAX_SOURCES = 4096


@attrs.frozen
class ConnectionLimits:
    """A tunnel's three limits; 0 is none."""

    max_connections: int = 0
    max_per_source: int = 0
    rate_per_minute: int = 0

    @classmethod
    def of(cls, spec: Any, defaults: Optional["ConnectionLimits"] = None) -> "ConnectionLimits":
        """
        The limits a spec asks for (a type without the keys has none); each
        one it leaves at 0 is ``defaults``' (the server's ``tunnelMaxConnections``,
        ``tunnelMaxConnectionsPerIP``, ``tunnelConnectionRatePerIP``) if given.
        """
        limits = cls(getattr(spec, "max_connections", 0), getattr(spec, "max_connections_per_ip", 0),
                     getattr(spec, "connection_rate_per_ip", 0))
        if defaults:
            limits = cls(limits.max_connections or defaults.max_connections,
                         limits.max_per_source or defaults.max_per_source,
                         limits.rate_per_minute or defaults.rate_per_minute)
        return limits

    @classmethod
    def server_defaults(cls, config: Any) -> "ConnectionLimits":
        """The server's defaults for a tunnel's limits (``LimitsSettings``)."""
        limits = getattr(config, "limits", None)
        return cls(getattr(limits, "tunnel_max_connections", 0), getattr(limits, "tunnel_max_connections_per_ip", 0),
                   getattr(limits, "tunnel_connection_rate_per_ip", 0))

    def __bool__(self) -> bool:
        return bool(self.max_connections or self.max_per_source or self.rate_per_minute)


NO_LIMITS = ConnectionLimits()


class ConnectionGate:
    """The open connections of one tunnel by source, its buckets and its refusals (module docstring)."""

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        self.max_sources = max_sources
        #: what a type opened (its stream, flow or upstream) -> its source
        self.open: Dict[Any, str] = {}
        self.per_source: Dict[str, int] = collections.Counter()
        #: source -> (tokens, when they were counted)
        self.buckets: Dict[str, Tuple[float, float]] = {}
        #: reason -> connections refused
        self.refused: Dict[str, int] = collections.Counter()

    @staticmethod
    def source(host: str) -> str:
        address = canonical(host)
        return str(address) if address is not None else host

    def check(self, host: str, limits: ConnectionLimits, now: float) -> Optional[str]:
        """
        The reason a new connection from ``host`` is refused (and counted),
        or None if it may open (a token of its bucket is spent).
        """
        if not limits:
            return None
        source = self.source(host)
        reason = None
        if limits.max_connections and len(self.open) >= limits.max_connections:
            reason = TOO_MANY
        elif limits.max_per_source and self.per_source.get(source, 0) >= limits.max_per_source:
            reason = TOO_MANY_FROM_SOURCE
        elif limits.rate_per_minute and not self._spend(source, limits.rate_per_minute, now):
            reason = TOO_FAST
        if reason is not None:
            self.refused[reason] += 1
        return reason

    def _spend(self, source: str, rate: int, now: float) -> bool:
        bucket = self.buckets.get(source)
        if bucket is None:
            if len(self.buckets) >= self.max_sources:
                self._forget(rate, now)
            tokens = float(rate)
        else:
            tokens = min(float(rate), bucket[0] + (now - bucket[1]) * rate / 60.0)
        if tokens < 1.0:
            self.buckets[source] = (tokens, now)
            return False
        self.buckets[source] = (tokens - 1.0, now)
        return True

    def _forget(self, rate: int, now: float) -> None:
        full = [s for s, (tokens, at) in self.buckets.items() if tokens + (now - at) * rate / 60.0 >= rate]
        for source in full:
            del self.buckets[source]
        if len(self.buckets) >= self.max_sources:
            del self.buckets[next(iter(self.buckets))]

    def opened(self, key: Any, host: str) -> None:
        """``key`` (a stream, a flow) opened for a connection from ``host``."""
        source = self.source(host)
        self.open[key] = source
        self.per_source[source] += 1

    def closed(self, key: Any) -> None:
        """``key``'s connection ended (once is counted; later calls do nothing)."""
        source = self.open.pop(key, None)
        if source is None:
            return
        left = self.per_source[source] - 1
        if left > 0:
            self.per_source[source] = left
        else:
            del self.per_source[source]
