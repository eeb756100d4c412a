# -*- test-case-name: tests.test_traffic -*-
"""
What went through the server: one ``TrafficMeter`` per tunnel, one per
client and one for the whole server, each counting connections opened and
refused and bytes in and out since the server started.

Directions are the tunnel's: *in* is from public users to the client (what
a stream read from its public socket, ``Stream.bytes_out``), *out* is back
to the users (``Stream.bytes_in``).

The data path is not touched: a ``Stream`` counts its own bytes in two
plain integers, as it always has.  A meter only learns of a connection when
it opens (``TrafficMeter.open``) and when it ends (``TrafficMeter.close``,
which folds the stream's counts into the meter's), each once per
connection, for the tunnel's meter and the ones above it (client, server).
Totals add the streams still open, so they are exact whenever they are
read, and never go back: a tunnel's meter outlives the tunnel (a restart,
a reconnect, an edit keep counting into the same meter), and a connection
that outlives its tunnel's listener keeps counting until it ends.

``TrafficMeters.sample`` turns the totals into rates once a second (the
core's timer); ``TrafficMeter.advance`` gives a reader (the history's
minute samples) what happened since it last asked, without the reader
keeping totals of its own.  ``/metrics``, the console, the panel and the
history all read these meters; there are no other byte counters.

A rate limiter plugs in as ``TrafficMeter.limiter`` (``IRateLimiter``) on
a tunnel's, a client's or the server's meter: it is told of every stream
that opens and ends below that meter, once each, and governs the stream
itself through the mux's flow control (withholding window credit, pausing
the socket), so that a limit never adds work per chunk or grows a buffer.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Set, Tuple

import attrs

# Defined beside its implementations, so that a client limits its tunnels
# without importing the server's meters (issue 15, goal 3).
from gotaxy.bandwidth import IRateLimiter

__all__ = ["IRateLimiter", "Reading", "TrafficMeter", "TrafficMeters"]


@attrs.frozen
class Reading:
    """A meter's counts at one moment, or the difference between two."""

    opened: int = 0
    refused: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def __sub__(self, other: "Reading") -> "Reading":
        return Reading(self.opened - other.opened, self.refused - other.refused,
                       self.bytes_in - other.bytes_in, self.bytes_out - other.bytes_out)

    def __bool__(self) -> bool:
        return bool(self.opened or self.refused or self.bytes_in or self.bytes_out)


@attrs.define(eq=False)
class TrafficMeter:
    """Connections and bytes of one tunnel, one client or the server; see the module docstring."""

    parent: Optional["TrafficMeter"] = None  #: the client's meter for a tunnel's, the server's for a client's
    limiter: Optional[Any] = None  #: an ``IRateLimiter``, or None for no limit
    opened: int = 0  #: connections accepted
    refused: int = 0  #: connections refused (the client or the tunnel at its stream limit)
    rate_in: float = 0.0  #: bytes/s, set by ``sample``
    rate_out: float = 0.0
    #: streams of the connections open now
    streams: Set[Any] = attrs.Factory(set)
    #: a udp tunnel's datagram counters (``gotaxy.proxy.udp.DatagramCounts``), or None
    datagrams: Optional[Any] = None
    #: the tunnel's connection limits' state (``gotaxy.server.limits.ConnectionGate``), made when first asked for
    gate: Optional[Any] = None
    _ended_in: int = 0  #: bytes of connections that have ended
    _ended_out: int = 0
    _sampled: Tuple[int, int] = (0, 0)
    _marks: Dict[str, Reading] = attrs.Factory(dict)

    def _chain(self) -> Iterator["TrafficMeter"]:
        meter: Optional[TrafficMeter] = self
        while meter is not None:
            yield meter
            meter = meter.parent

    def open(self, stream: Any) -> None:
        """A connection was accepted and has ``stream``: count it here and above."""
        for meter in self._chain():
            meter.opened += 1
            meter.streams.add(stream)
            if meter.limiter is not None:
                meter.limiter.stream_opened(stream)

    def refuse(self) -> None:
        """A connection was turned away."""
        for meter in self._chain():
            meter.refused += 1

    def close(self, stream: Any) -> None:
        """``stream``'s connection ended: keep its bytes, forget the stream (once; later calls do nothing)."""
        for meter in self._chain():
            if stream not in meter.streams:
                return
            meter.streams.discard(stream)
            meter._ended_in += stream.bytes_out
            meter._ended_out += stream.bytes_in
            if meter.limiter is not None:
                meter.limiter.stream_closed(stream)

    def totals(self) -> Tuple[int, int]:
        """Bytes in and out so far, open connections included."""
        bytes_in, bytes_out = self._ended_in, self._ended_out
        for stream in self.streams:
            bytes_in += stream.bytes_out
            bytes_out += stream.bytes_in
        return bytes_in, bytes_out

    def reading(self) -> Reading:
        bytes_in, bytes_out = self.totals()
        return Reading(self.opened, self.refused, bytes_in, bytes_out)

    def advance(self, reader: str) -> Reading:
        """What happened since ``reader`` last called this (since the start, the first time)."""
        now = self.reading()
        before = self._marks.get(reader, Reading())
        self._marks[reader] = now
        return now - before

    def sample(self, interval: float) -> None:
        """Set the rates from the bytes moved since the last sample, ``interval`` seconds ago."""
        bytes_in, bytes_out = self.totals()
        last_in, last_out = self._sampled
        self.rate_in = (bytes_in - last_in) / interval
        self.rate_out = (bytes_out - last_out) / interval
        self._sampled = (bytes_in, bytes_out)


class TrafficMeters:
    """Every meter of one server: ``server``, and one per client and per tunnel, made when first asked for."""

    def __init__(self) -> None:
        self.server = TrafficMeter()
        self.clients: Dict[str, TrafficMeter] = {}
        self.tunnels: Dict[Tuple[str, str], TrafficMeter] = {}

    def client(self, name: str) -> TrafficMeter:
        meter = self.clients.get(name)
        if meter is None:
            meter = self.clients[name] = TrafficMeter(parent=self.server)
        return meter

    def tunnel(self, client: str, name: str) -> TrafficMeter:
        meter = self.tunnels.get((client, name))
        if meter is None:
            meter = self.tunnels[(client, name)] = TrafficMeter(parent=self.client(client))
        return meter

    def sample(self, interval: float) -> None:
        """Update every meter's rates (the core does this once a second)."""
        self.server.sample(interval)
        for meter in self.clients.values():
            meter.sample(interval)
        for meter in self.tunnels.values():
            meter.sample(interval)
