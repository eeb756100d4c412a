"""
The events table as an outbox (``gotaxy.server.outbox``): two server
processes on one database (a SQLite file, and a real PostgreSQL), each with
its store, bus and tail, on a fake clock.  An event one records reaches the other's subscribers once, and its
own once (straight from the record, not again from the tail); so do events
the ``gotaxy`` command writes, whatever retention deletes meanwhile.
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from gotaxy.events import CLIENT_CONNECTED, LOGIN_FAILED, TOKEN_REVOKED, Event, EventBus
from gotaxy.server.outbox import BATCH, GAP_WAIT, POLL_INTERVAL, EventTail
from gotaxy.store import Store, ThreadedStore


class InlineStore(ThreadedStore):
    """ThreadedStore, but each call runs at once on the caller's thread (a fake clock needs no threads)."""

    def __init__(self, store: Store, reactor: Any) -> None:
        super().__init__(store, reactor)
        self.reads: List[int] = []  #: rows each events_after call returned

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.store.close()

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        d = Deferred()
        d.addCallback(self._deliver)
        d.callback(self._run(function, args, kwargs))
        if function == self.store.events_after:
            d.addCallback(self._count)
        return d

    def _count(self, result: Tuple[List[Event], Any]) -> Any:
        self.reads.append(len(result[0]))
        return result


class Process:
    """One server process: its store on the shared file, its bus, its tail."""

    def __init__(self, url: str, node: str, clock: Clock) -> None:
        self.clock = clock
        self.store = InlineStore(Store(url, clock=clock.seconds, node=node), clock)
        self.bus = EventBus()
        self.store.on_recorded = self.bus.publish
        self.heard: List[Event] = []
        self.bus.subscribe(self.heard.append)
        self.tail = EventTail(self.store, self.bus, clock, node)

    def types(self) -> List[str]:
        return [e.type for e in self.heard]

    def record(self, type_: str, **fields: Any) -> Event:
        return self.store.call(self.store.store.record, Event(type=type_, at=self.clock.seconds(), **fields)).result


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_800_000_000)
    return clock


@pytest.fixture
def url(store_url: str) -> str:
    """One database the two processes share: SQLite, and a real PostgreSQL (tests/conftest.py)."""
    return store_url


@pytest.fixture
def two(url: str, clock: Clock):
    a, b = Process(url, "node-a", clock), Process(url, "node-b", clock)
    for p in (a, b):
        p.tail.startService()
    yield a, b
    for p in (a, b):
        p.tail.stopService()
        p.store.stop()


def test_an_event_recorded_by_one_process_reaches_the_others_subscribers_once(two, clock):
    a, b = two
    a.store.call(a.store.store.client_connected, "alice", "198.51.100.7:4000", "0.9").result
    assert a.types() == [CLIENT_CONNECTED]  # at once, straight from the record
    assert b.types() == []
    clock.advance(POLL_INTERVAL)
    assert b.types() == [CLIENT_CONNECTED]
    (heard,) = b.heard
    (recorded,) = a.heard
    assert heard == recorded and heard.node == "node-a" and heard.id is not None
    for _ in range(5):
        clock.advance(POLL_INTERVAL)
    assert a.types() == [CLIENT_CONNECTED] and b.types() == [CLIENT_CONNECTED]


def test_the_gotaxy_command_s_events_reach_every_server_process(two, url, clock):
    a, b = two
    command = Store(url)  # what `gotaxy token create/revoke` opens: no node
    command.create_token("laptop")
    assert command.revoke_token("laptop")
    command.close()
    clock.advance(POLL_INTERVAL)
    assert a.types() == b.types() == ["token.created", TOKEN_REVOKED]
    assert all(e.node is None and e.client == "laptop" for e in a.heard)


def test_only_subscribers_of_every_event_hear_another_process_s(two, clock):
    a, b = two
    local: List[Event] = []
    b.bus.subscribe(local.append, local_only=True)
    a.record(LOGIN_FAILED, address="192.0.2.1:1", detail="bad token")
    b.record(LOGIN_FAILED, address="192.0.2.2:1", detail="bad token")
    clock.advance(POLL_INTERVAL)
    assert [e.address for e in b.heard] == ["192.0.2.2:1", "192.0.2.1:1"]
    assert [e.address for e in local] == ["192.0.2.2:1"]


def test_the_tail_starts_at_the_newest_event(url, clock):
    a = Process(url, "node-a", clock)
    a.record(CLIENT_CONNECTED, client="before")
    b = Process(url, "node-b", clock)
    b.tail.startService()
    try:
        a.record(CLIENT_CONNECTED, client="after")
        clock.advance(POLL_INTERVAL)
        assert [e.client for e in b.heard] == ["after"]
    finally:
        b.tail.stopService()


def test_an_event_recorded_while_a_server_comes_up_is_not_taken_for_old_news(url, clock):
    # The server reads the newest id while it is built, before it listens; its tail's
    # first read may come later (a busy store thread): a ban recorded by another node
    # in between must still reach it.
    a = Process(url, "node-a", clock)
    a.record(CLIENT_CONNECTED, client="before")
    b = Process(url, "node-b", clock)
    b.tail = EventTail(b.store, b.bus, clock, "node-b", start=b.store.store.newest_event_id())
    a.record(CLIENT_CONNECTED, client="meanwhile")  # after b was built, before its tail read anything
    b.tail.startService()
    try:
        clock.advance(POLL_INTERVAL)
        assert [e.client for e in b.heard] == ["meanwhile"]
    finally:
        b.tail.stopService()


def test_a_backlog_is_read_in_bounded_batches_and_delivered_once_in_order(two, clock):
    a, b = two
    total = 2 * BATCH + 50
    for n in range(total):
        a.record(LOGIN_FAILED, address=f"192.0.2.1:{n}")
    clock.advance(POLL_INTERVAL)
    clock.advance(0)  # the reads a full batch asks for at once
    clock.advance(0)
    assert [e.address for e in b.heard] == [f"192.0.2.1:{n}" for n in range(total)]
    assert max(b.store.reads) == BATCH


def test_retention_gaps_and_an_emptied_table_do_not_stall_the_tail(two, url, clock):
    a, b = two
    for n in range(5):
        a.record(CLIENT_CONNECTED, client=f"c{n}")
    clock.advance(POLL_INTERVAL)
    assert len(b.heard) == 5
    # Retention deletes old rows, here every one: SQLite then numbers from 1 again.
    assert a.store.store.expire_events(clock.seconds() + 1) == 5
    a.record(CLIENT_CONNECTED, client="new")
    clock.advance(POLL_INTERVAL)
    clock.advance(0)
    assert [e.client for e in b.heard][5:] == ["new"]
    a.record(CLIENT_CONNECTED, client="newer")
    clock.advance(POLL_INTERVAL)
    assert [e.client for e in b.heard][5:] == ["new", "newer"]


def test_an_id_committed_late_is_still_delivered_once(two, clock):
    a, b = two
    first = a.record(CLIENT_CONNECTED, client="first")
    db = a.store.store.db
    # As PostgreSQL can: id first+2 commits, first+1 a moment later.
    db["events"].insert(dict(id=first.id + 2, at=clock.seconds(), type=CLIENT_CONNECTED, client="third", count=1))
    clock.advance(POLL_INTERVAL)
    assert [e.client for e in b.heard] == ["first", "third"]
    db["events"].insert(dict(id=first.id + 1, at=clock.seconds(), type=CLIENT_CONNECTED, client="second", count=1))
    clock.advance(POLL_INTERVAL)
    clock.advance(POLL_INTERVAL)
    assert [e.client for e in b.heard] == ["first", "third", "second"]
    assert b.tail.gaps == {}


def test_a_hole_that_never_fills_is_given_up(two, clock):
    a, b = two
    first = a.record(CLIENT_CONNECTED, client="first")
    a.store.store.db["events"].insert(dict(id=first.id + 2, at=clock.seconds(), type=CLIENT_CONNECTED, count=1))
    clock.advance(POLL_INTERVAL)
    assert list(b.tail.gaps) == [first.id + 1]
    clock.advance(GAP_WAIT)
    clock.advance(POLL_INTERVAL)
    assert b.tail.gaps == {}


def test_a_failing_read_is_retried_and_loses_nothing(two, clock):
    a, b = two
    real = b.store.call
    b.store.call = lambda f, *args, **kw: fail(OSError("database is locked"))  # type: ignore[method-assign]
    a.record(CLIENT_CONNECTED, client="alice")
    clock.advance(POLL_INTERVAL)
    clock.advance(POLL_INTERVAL)
    assert b.heard == []
    b.store.call = real  # type: ignore[method-assign]
    clock.advance(POLL_INTERVAL)
    assert [e.client for e in b.heard] == ["alice"]


class FakeSession:
    """What ServerCore needs of a logged-in client's control connection."""

    def __init__(self, name: str) -> None:
        self.client_name = name
        self.peer_address = "198.51.100.9:5000"
        self.token_checked = True
        self.dropped = False
        self.tunnels: dict = {}
        self.closed_with: List[str] = []

    def close_with_error(self, message: str) -> None:
        self.closed_with.append(message)


def test_two_cores_a_revocation_recorded_by_one_cuts_the_client_off_on_the_other(url, clock):
    from gotaxy.config import ServerConfig
    from gotaxy.server.core import ServerCore

    stores = [InlineStore(Store(url, clock=clock.seconds, node=n), clock) for n in ("node-a", "node-b")]
    a, b = (ServerCore(ServerConfig(), s, clock) for s in stores)
    tails = [EventTail(s, core.events, clock, s.store.node) for s, core in zip(stores, (a, b))]
    heard_a: List[Event] = []
    heard_b: List[Event] = []
    a.events.subscribe(heard_a.append)
    b.events.subscribe(heard_b.append)
    for tail in tails:
        tail.startService()
    try:
        stores[0].call(stores[0].store.create_token, "laptop").result
        b.sessions["laptop"] = session = FakeSession("laptop")
        Deferred.fromCoroutine(a.record("config.reloaded")).result
        stores[0].call(stores[0].store.revoke_token, "laptop").result
        assert [e.type for e in heard_a] == ["token.created", "config.reloaded", TOKEN_REVOKED]
        clock.advance(POLL_INTERVAL)
        # b acted on it (here at once, the store being inline): the client is
        # cut off with a reason, recorded by b.
        assert session.closed_with == ["your token was revoked or has expired"] and "laptop" not in b.sessions
        assert sorted(e.type for e in heard_b) == sorted(
            ["token.created", "config.reloaded", TOKEN_REVOKED, "client.disconnected"])
        clock.advance(POLL_INTERVAL)
        assert [e.type for e in heard_a] == ["token.created", "config.reloaded", TOKEN_REVOKED, "client.disconnected"]
        assert [e.node for e in heard_a] == ["node-a", "node-a", "node-a", "node-b"]
    finally:
        for tail in tails:
            tail.stopService()
        for s in stores:
            s.stop()
