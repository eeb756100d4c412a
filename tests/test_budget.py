"""
Tests for gotaxy.budget: the connection's window budget, with two muxes on
hand-pumped in-memory transports (``tests.test_mux.Pair``).  They check the
accounting (what the windows add up to, what the pool has lent), that a
stream grows while it moves data and gives back under pressure, and that
stalled streams never stop the others.
"""

from __future__ import annotations

from typing import List, Tuple

import pytest

from gotaxy.budget import MAX_GROWN_WINDOW, SMALL_READ, SMALL_WINDOW, TWISTED_READ, WINDOW_POOL, WindowBudget
from gotaxy.mux import LEGACY_MAX_STREAMS, MAX_STREAMS, Stream
from gotaxy.wire import INITIAL_WINDOW, FrameType, ProtocolError
from tests.test_mux import FakeTCP, Pair, data_bytes, frames


def budget_pair(pool: int = WINDOW_POOL) -> Pair:
    pair = Pair()
    pair.server.use_window_budget(pool)
    pair.client.use_window_budget(pool)
    return pair


class ReadSized(FakeTCP):
    """A socket transport with Twisted's ``bufferSize`` (read size and output pause threshold)."""

    bufferSize = TWISTED_READ


def open_sized(pair: Pair) -> Tuple[Stream, Stream, ReadSized, ReadSized]:
    s = pair.server.open_stream("web", "203.0.113.9:50000")
    assert s is not None
    pair.deliver_to_client()
    c = pair.client.opened[-1]
    public, local = ReadSized(), ReadSized()
    s.attach(public)
    c.attach(local)
    return s, c, public, local


def test_with_the_budget_a_stream_starts_with_small_windows_each_way() -> None:
    pair = budget_pair()
    s, c, public, local = pair.open()
    assert (s.send_window, s.recv_window, c.send_window, c.recv_window) == (SMALL_WINDOW,) * 4
    local.producer.pauseProducing()  # the local service reads nothing
    s.write(b"x" * (3 * SMALL_WINDOW))
    pair.pump()
    # Only the floor's worth crossed; the rest waits on the server for window.
    assert len(local.value()) == SMALL_WINDOW
    assert s.buffered() == 2 * SMALL_WINDOW


def test_without_the_budget_streams_keep_the_fixed_window_and_the_old_limit() -> None:
    pair = Pair()
    s, c, _, _ = pair.open()
    assert (s.send_window, c.recv_window, c.recv_limit) == (INITIAL_WINDOW,) * 3
    assert pair.server.budget is None and pair.server.max_streams == MAX_STREAMS == 10000
    pair.server.use_legacy_windows()
    assert pair.server.max_streams == LEGACY_MAX_STREAMS == 1024
    pair.server.max_streams = 100
    pair.server.use_legacy_windows()
    assert pair.server.max_streams == 100  # a lower configured limit stays


def test_a_stream_that_drains_grows_to_the_largest_window_and_gives_it_back_when_it_ends() -> None:
    pair = budget_pair()
    s, c, public, local = pair.open()
    payload = b"g" * (8 * MAX_GROWN_WINDOW)
    s.write(payload)
    pair.pump()
    assert local.value() == payload
    assert c.recv_limit == MAX_GROWN_WINDOW
    assert pair.client.budget.lent == MAX_GROWN_WINDOW - SMALL_WINDOW
    assert pair.client.budget.holders == 1
    assert pair.client.window_bytes() == MAX_GROWN_WINDOW
    s.local_closed("done")
    pair.pump()
    assert c.closed
    assert (pair.client.budget.lent, pair.client.budget.holders) == (0, 0)


def test_growth_doubles_per_window_drained_like_slow_start() -> None:
    pair = budget_pair()
    s, c, public, local = pair.open()
    limits = []
    for _ in range(7):
        s.write(b"d" * c.recv_limit)
        pair.pump()
        limits.append(c.recv_limit)
    assert limits[:4] == [2 * SMALL_WINDOW, 4 * SMALL_WINDOW, 8 * SMALL_WINDOW, 16 * SMALL_WINDOW]
    assert all(b <= 2 * a for a, b in zip(limits, limits[1:]))
    assert limits[-1] == MAX_GROWN_WINDOW


def test_the_pool_bounds_what_stalled_streams_can_make_the_receiver_hold() -> None:
    pool = 8 * SMALL_WINDOW
    pair = budget_pair(pool)
    opened: List[Tuple[Stream, Stream, FakeTCP, FakeTCP]] = [pair.open() for _ in range(20)]
    # Every stream moves data first (so each would grow), then its local service stops reading.
    for s, c, public, local in opened:
        s.write(b"a" * (4 * SMALL_WINDOW))
    pair.pump()
    for s, c, public, local in opened:
        local.producer.pauseProducing()
        s.write(b"b" * MAX_GROWN_WINDOW)
    pair.pump()
    budget = pair.client.budget
    assert budget.lent <= pool
    assert pair.client.window_bytes() <= 20 * SMALL_WINDOW + pool
    # What crossed to the stalled local sockets is what the windows allowed, no more.
    delivered = sum(len(local.value()) for _, _, _, local in opened) - 20 * 4 * SMALL_WINDOW
    assert delivered <= 20 * SMALL_WINDOW + pool
    # The rest waits on the sending side, one stream's read at a time.
    assert pair.server.buffered_bytes() == 20 * MAX_GROWN_WINDOW - delivered


def test_stalled_streams_holding_the_whole_pool_never_stop_another_stream() -> None:
    pool = 4 * SMALL_WINDOW
    pair = budget_pair(pool)
    stalled = [pair.open() for _ in range(8)]
    for s, c, public, local in stalled:
        s.write(b"a" * (2 * MAX_GROWN_WINDOW))
    pair.pump()
    for s, c, public, local in stalled:
        local.producer.pauseProducing()
        s.write(b"z" * MAX_GROWN_WINDOW)
    pair.pump()
    assert pair.client.budget.lent > pool // 2  # the stalled ones hold most of it
    s, c, public, local = pair.open()
    payload = bytes(range(256)) * 4096  # 1 MiB
    s.write(payload)
    pair.pump()
    assert local.value() == payload  # intact, on what the stalled ones left of the pool
    assert pair.client.budget.lent <= pool
    # And the other way round.
    c.write(payload)
    pair.pump()
    assert public.value() == payload


def test_under_pressure_a_big_window_gives_back_down_to_its_fair_share() -> None:
    pool = 16 * SMALL_WINDOW
    pair = budget_pair(pool)
    big = pair.open()
    big[0].write(b"g" * (4 * MAX_GROWN_WINDOW))
    pair.pump()
    budget = pair.client.budget
    assert (big[1].recv_limit, budget.lent) == (SMALL_WINDOW + pool, pool)  # it took the whole pool
    others = [pair.open() for _ in range(3)]
    for s, c, public, local in others:
        s.write(b"o" * (2 * SMALL_WINDOW))
    pair.pump()
    # The pool is tight now: draining more, the big stream returns less than it takes.
    for _ in range(4):
        big[0].write(b"g" * MAX_GROWN_WINDOW)
        for s, c, public, local in others:
            s.write(b"o" * (4 * SMALL_WINDOW))
        pair.pump()
    assert big[1].recv_limit < SMALL_WINDOW + pool // 2  # it gave back
    assert all(c.recv_limit > SMALL_WINDOW for _, c, _, _ in others)  # and the others grew with it
    assert budget.lent <= pool and budget.holders == 4
    assert big[3].value().endswith(b"g" * 1000)


def test_credit_never_goes_below_the_floor_while_giving_back() -> None:
    budget = WindowBudget(pool=4 * SMALL_WINDOW)

    class Holder:
        recv_limit = SMALL_WINDOW

        def widen_reads(self) -> None:
            pass

    streams = [Holder() for _ in range(8)]
    for stream in streams:
        budget.credit(stream, 4 * SMALL_WINDOW)
    assert budget.lent == 4 * SMALL_WINDOW
    for _ in range(20):
        for stream in streams:
            credit = budget.credit(stream, SMALL_WINDOW // 4)
            assert credit >= 0
            assert stream.recv_limit >= SMALL_WINDOW
    assert budget.lent == sum(s.recv_limit - SMALL_WINDOW for s in streams) <= budget.pool
    for stream in streams:
        budget.release(stream)
    assert (budget.lent, budget.holders) == (0, 0)


def test_a_closed_stream_takes_nothing_from_the_pool() -> None:
    pair = budget_pair()
    s = pair.server.open_stream("web", "x")
    pair.deliver_to_client()
    c = pair.client.opened[-1]
    s.write(b"e" * SMALL_WINDOW)
    s.local_closed("done")
    pair.pump()
    assert c.closed
    local = FakeTCP()
    c.attach(local)  # attached late: what arrived is delivered, then closed
    pair.pump()
    assert local.value() == b"e" * SMALL_WINDOW
    assert pair.client.budget.lent == 0


def test_small_streams_read_their_socket_in_small_pieces_until_a_window_grows() -> None:
    pair = budget_pair()
    s, c, public, local = open_sized(pair)
    assert public.bufferSize == local.bufferSize == SMALL_READ
    s.write(b"r" * (4 * SMALL_WINDOW))
    pair.pump()
    assert local.bufferSize == TWISTED_READ  # its receive window grew
    assert public.bufferSize == TWISTED_READ  # its send window grew


def test_without_the_budget_reads_keep_twisteds_size() -> None:
    pair = Pair()
    s, c, public, local = open_sized(pair)
    assert public.bufferSize == local.bufferSize == TWISTED_READ


def test_the_budget_is_agreed_on_before_any_stream_opens() -> None:
    pair = Pair()
    pair.open()
    with pytest.raises(ProtocolError):
        pair.server.use_window_budget()


def test_window_frames_of_a_small_stream_come_every_quarter_window() -> None:
    pair = budget_pair()
    s, c, public, local = pair.open()
    s.write(b"q" * (SMALL_WINDOW // 4 - 1))
    pair.deliver_to_client()
    windows = [p for t, sid, p in frames(pair.client.transport.value()) if t == FrameType.WINDOW]
    assert windows == []
    s.write(b"q")
    pair.deliver_to_client()
    windows = [p for t, sid, p in frames(pair.client.transport.value()) if t == FrameType.WINDOW]
    assert len(windows) == 1
    assert data_bytes(pair.server.transport.value(), s.id) == 0
