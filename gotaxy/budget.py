# -*- test-case-name: tests.test_budget -*-
"""
The connection's window budget: what all streams of one mux connection may
hold, not only what each may.

With per-stream windows alone, a connection's memory grows with its stream
count: 10,000 streams whose local sockets stopped reading may each hold a
whole window (512 KiB: 5 GiB).  HTTP/2 adds a connection window that every
DATA frame also spends; its lesson is that when the receiver returns that
credit only as the application reads, a few stalled streams use it all up
and every other stream of the connection stops for good (which is why
nghttp2 returns connection credit as soon as it has the data, and smux's
session buffer can stall a whole session).  So the budget here is not
spent by the sender at all.  It is the receiver's rule for how much credit
it grants, and no stream ever waits for another:

* **A floor per stream.**  On a connection where both sides announced
  ``window_budget`` (in ``login`` and ``login_ok``'s ``features``), every
  stream starts with ``SMALL_WINDOW`` (16 KiB, about TCP's own initial
  window of ten segments) in each direction instead of 512 KiB.  The floor
  is the stream's own: whatever the others hold, a stream whose socket
  drains gets its floor's credit back, so it always moves.
* **Growth from a shared pool.**  A stream that moves data earns more:
  each time the receiver returns credit it adds as much again as was
  consumed (the window doubles per window's worth drained, like TCP's slow
  start), up to ``MAX_GROWN_WINDOW`` (512 KiB, the old fixed window, so one
  busy stream is as fast as before), and only while the connection's
  ``WINDOW_POOL`` (16 MiB above the floors) has room.
* **Fair shares under pressure.**  When less than a quarter of the pool is
  left, a stream whose window is above its fair part of the pool
  (``pool / streams holding a part``) gives some back: it returns less credit
  than it consumed, down to that share (never below its floor).  Credit
  cannot be taken back from a stream that receives nothing, so a stalled
  stream keeps what it had until it ends; the pool being bounded is what
  keeps that finite, and the floor is what keeps the others going.

So a connection's receive windows add up to at most ``streams x 16 KiB +
16 MiB`` (10,000 stalled streams: 172 MiB, not 5 GiB), and a stream's
socket is also read in pieces of at most ``SMALL_READ`` while its windows
are small (Twisted reads 64 KiB at a time, and pauses a producer only past
64 KiB of buffered output: on 10,000 streams that alone would be 640 MiB
each way).  With a peer that does not announce ``window_budget`` (an older
Gotaxy) every stream keeps the fixed 512 KiB window and the connection the
old stream limit (``LEGACY_MAX_STREAMS``).
"""

from __future__ import annotations

from typing import Any

from gotaxy.wire import INITIAL_WINDOW

#: Announced in ``login``'s and ``login_ok``'s ``features``: both sides use the budget.
WINDOW_BUDGET = "window_budget"

#: Every stream's initial window, each way, with the budget; never shrunk below.
SMALL_WINDOW = 16 * 1024

#: The largest window a stream grows to (the fixed window of older peers).
MAX_GROWN_WINDOW = INITIAL_WINDOW

#: Window above the floors that one connection's streams share.
WINDOW_POOL = 16 * 1024 * 1024

#: Read size (and output pause threshold) of a stream's socket while both
#: its windows are at most this; Twisted's own 64 KiB once either is larger.
SMALL_READ = SMALL_WINDOW
TWISTED_READ = 65536


class WindowBudget:
    """
    One connection's pool of receive window above the streams' floors.  The
    mux asks ``credit`` each time a stream returns window credit, and calls
    ``release`` when a stream ends; ``lent`` is what the pool has given out.
    """

    __slots__ = ("pool", "lent", "holders")

    def __init__(self, pool: int = WINDOW_POOL) -> None:
        self.pool = pool
        #: bytes of window above the floors, all streams together
        self.lent = 0
        #: streams whose window is above the floor
        self.holders = 0

    def credit(self, stream: Any, consumed: int) -> int:
        """
        The credit to return to the peer for ``consumed`` bytes of ``stream``
        (its ``recv_limit`` is resized to match): more than consumed while
        the stream grows, less while it gives back its share of a tight pool.
        """
        limit = stream.recv_limit
        largest = MAX_GROWN_WINDOW
        bucket = getattr(stream, "recv_bucket", None)
        if bucket is not None:  # a bandwidth limit needs less (gotaxy.bandwidth.TokenBucket.window)
            largest = bucket.window(largest)
            if limit > largest:
                give_back = min(limit - largest, consumed)
                self._resize(stream, limit - give_back)
                return consumed - give_back
        free = self.pool - self.lent
        if free < self.pool >> 2 and limit > SMALL_WINDOW:
            fair = max(SMALL_WINDOW, self.pool // max(1, self.holders))
            if limit > fair:
                give_back = min(limit - fair, consumed)
                self._resize(stream, limit - give_back)
                return consumed - give_back
        grow = min(consumed, largest - limit, free)
        if grow > 0:
            self._resize(stream, limit + grow)
            return consumed + grow
        return consumed

    def release(self, stream: Any) -> None:
        """The stream has ended: its part goes back to the pool."""
        if stream.recv_limit > SMALL_WINDOW:
            self._resize(stream, SMALL_WINDOW)

    def _resize(self, stream: Any, limit: int) -> None:
        old = stream.recv_limit
        self.lent += max(0, limit - SMALL_WINDOW) - max(0, old - SMALL_WINDOW)
        self.holders += (limit > SMALL_WINDOW) - (old > SMALL_WINDOW)
        stream.recv_limit = limit
        if limit > SMALL_READ:
            stream.widen_reads()
