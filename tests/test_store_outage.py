"""
The store while its database is unreachable: a call fails with one clear
sentence instead of a traceback or a hang, the store works again as soon as
the database is back (no restart), writes made with ``keep`` during the
outage are written when it returns, in order and with their own time, and a
node's lease releases no other node just because nobody could renew.

The PostgreSQL tests stop and start a PostgreSQL of their own
(tests/postgres.py ``pause``/``resume``), never the one the other tests share.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Tuple

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gotaxy.events import CLIENT_DISCONNECTED, SERVER_STARTED, Event
from gotaxy.server.lease import NodeLease
from gotaxy.store import Store, StoreError, StoreUnreachable, default_url
from gotaxy.store.store import database_options, driver_url, is_unreachable
from gotaxy.testing import SynchronousStore

T0 = 1795600800.0


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[Any]:
    """A PostgreSQL for this module alone: the tests stop it."""
    from tests.postgres import running_postgres

    yield from running_postgres()


@pytest.fixture
def outage(own_postgres: Any) -> Iterator[Tuple[Any, SynchronousStore, Clock, List[Any]]]:
    """(postgres, a store on a fresh database of it, the clock, what on_reachability heard)."""
    if not own_postgres.started:
        own_postgres.resume()  # a failed test left it stopped
    name = own_postgres.database()
    clock = Clock()
    clock.advance(T0)
    store = SynchronousStore(Store(own_postgres.url(name), clock=clock.seconds), clock)
    heard: List[Any] = []
    store.on_reachability = lambda unreachable, message: heard.append((unreachable, message))
    try:
        yield own_postgres, store, clock, heard
    finally:
        store.stop()
        if not own_postgres.started:
            own_postgres.resume()
        own_postgres.drop(name)


def result(d: Any) -> Any:
    """What a fired Deferred holds (SynchronousStore's have fired); raises its failure."""
    box: List[Any] = []
    d.addBoth(box.append)
    assert box, "the call has not finished"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


@pytest.mark.e2e
def test_a_call_while_postgresql_is_down_fails_with_one_sentence_and_works_again_when_it_is_back(outage) -> None:
    postgres, store, clock, heard = outage
    db = store.store
    assert result(store.call(db.newest_event_id)) is None
    postgres.pause()
    for _ in range(2):  # the connection the database cut, then a new one it refuses
        with pytest.raises(StoreUnreachable) as caught:
            result(store.call(db.newest_event_id))
        assert str(caught.value).startswith("the server's database (postgresql://gotaxy@/") and "is unreachable: " in str(caught.value)
    assert store.unreachable
    postgres.resume()
    # The same store, no restart: SQLAlchemy would refuse every statement on
    # the lost connection ("Can't reconnect until invalid transaction is
    # rolled back") had the store kept it.
    result(store.call(db.record_event, SERVER_STARTED))
    assert result(store.call(db.newest_event_id)) == 1
    assert not store.unreachable
    assert [u for u, _ in heard] == [True, False]
    assert "is unreachable" in heard[0][1]


@pytest.mark.e2e
def test_writes_kept_during_the_outage_are_written_when_it_is_back_in_order_with_their_own_time(outage) -> None:
    postgres, store, clock, heard = outage
    db = store.store
    published: List[Event] = []
    store.on_recorded = published.append
    result(store.call(db.join_node, "node-a", 30.0, "server restarted"))
    result(store.call(db.client_connected, "alice", "192.0.2.1:1", "0.1.0"))
    published.clear()
    postgres.pause()
    clock.advance(3)
    down_at = clock.seconds()
    assert result(store.keep(db.client_disconnected, "alice", "192.0.2.1:1", "connection lost")) is None
    clock.advance(2)
    assert result(store.keep(db.record, Event(type=SERVER_STARTED, at=clock.seconds(), detail="second"))) is None
    assert store.kept == 2 and published == [] and store.unreachable
    assert [u for u, _ in heard] == [True]
    with pytest.raises(StoreUnreachable):  # a read is not kept
        result(store.call(db.list_clients))
    postgres.resume()
    clock.advance(5)
    # The first call after the return writes the queue first.
    clients = result(store.call(db.list_clients))
    assert [(c.name, c.online, c.last_seen_at) for c in clients] == [("alice", False, down_at)]
    assert store.kept == 0
    assert [(e.type, e.at) for e in published] == [(CLIENT_DISCONNECTED, down_at), (SERVER_STARTED, down_at + 2)]
    rows, _ = result(store.call(db.events_after, 0, 10))
    assert [(e.type, e.at, e.detail) for e in rows][-2:] == [
        (CLIENT_DISCONNECTED, down_at, "connection lost"), (SERVER_STARTED, down_at + 2, "second")]


@pytest.mark.e2e
def test_the_kept_writes_are_bounded(outage, monkeypatch) -> None:
    postgres, store, clock, heard = outage
    monkeypatch.setattr(store, "MAX_KEPT", 3)
    postgres.pause()
    for n in range(5):
        event = Event(type=SERVER_STARTED, at=clock.seconds(), detail=str(n))
        d = store.keep(store.store.record, event)
        if n < 3:
            assert result(d) is None
        else:
            with pytest.raises(StoreUnreachable):  # the caller hears that this one is not kept
                result(d)
    assert store.kept == 3 and store.dropped == 2
    postgres.resume()
    rows, _ = result(store.call(store.store.events_after, 0, 10))
    assert [e.detail for e in rows] == ["0", "1", "2"]


def test_a_refusal_of_the_database_is_not_an_outage(tmp_path) -> None:
    url = default_url(str(tmp_path))
    clock = Clock()
    store = SynchronousStore(Store(url, clock=clock.seconds), clock)
    try:
        result(store.call(store.store.create_token, "alice"))
        with pytest.raises(StoreError):  # the name is taken: the store's own refusal, as before
            result(store.keep(store.store.create_token, "alice"))
        assert not store.unreachable and store.kept == 0
    finally:
        store.stop()
    assert not is_unreachable(ValueError("x"))


def test_postgresql_connections_have_timeouts_and_are_tested_before_use() -> None:
    options = database_options(driver_url("postgresql://gotaxy@db.example.com/gotaxy"))
    assert options["pool_pre_ping"] is True
    args = options["connect_args"]
    assert args["connect_timeout"] == 5 and args["keepalives"] == 1
    assert args["options"] == "-c statement_timeout=30000"
    # The URL's own settings win.
    own = database_options(driver_url("postgresql://gotaxy@db/gotaxy?connect_timeout=2&options=-c%20x%3D1"))
    assert "connect_timeout" not in own["connect_args"] and "options" not in own["connect_args"]
    assert "pool_pre_ping" not in database_options(driver_url("sqlite:///x.db"))


# -- NodeLease across an outage ---------------------------------------------------


class Unreachable(SynchronousStore):
    """A store whose database can be switched off."""

    down = False

    def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            from twisted.internet.defer import fail

            return fail(StoreUnreachable("the server's database is unreachable: test"))
        return super().call(function, *args, **kwargs)


def test_after_an_outage_longer_than_the_lease_no_live_node_is_released(tmp_path) -> None:
    lease_seconds, renew = 30.0, 10.0
    clock = Clock()
    clock.advance(T0)
    url = default_url(str(tmp_path))
    stores = {}
    leases = {}
    for node in ("node-a", "node-b"):
        db = Store(url, clock=clock.seconds)
        db.join_node(node, lease_seconds, "server restarted")
        stores[node] = Unreachable(db, clock)
        core = type("Core", (), {})()
        core.sessions, core.tunnels = {f"client-of-{node}": object()}, {}
        db.client_connected(f"client-of-{node}", "192.0.2.1:1", "0.1.0")
        leases[node] = NodeLease(stores[node], core, clock, lease=lease_seconds)
    try:
        leases["node-a"].startService()
        clock.advance(renew / 2)
        leases["node-b"].startService()  # b's timer ticks 5 s after a's
        for store in stores.values():
            store.down = True
        clock.advance(4 * lease_seconds)  # PostgreSQL down for two minutes: every renewal fails
        for store in stores.values():
            store.down = False
        db = stores["node-a"].store
        clock.advance(renew / 2 + 1)  # a renews first: b's lease ran out, yet b is alive and renews in 4 s
        assert {c.name: c.online for c in db.list_clients()} == {"client-of-node-a": True, "client-of-node-b": True}
        clock.advance(renew / 2 - 1)  # b renews
        assert sorted(n for n, _ in db.live_nodes()) == ["node-a", "node-b"]
        assert {c.name: c.online for c in db.list_clients()} == {"client-of-node-a": True, "client-of-node-b": True}
        # A node that really died is still released, one lease after the return.
        leases["node-b"]._timer.stop()  # node b dies: no more renewals (a clean stop would end its lease at once)
        clock.advance(2 * lease_seconds)
        assert {c.name: c.online for c in db.list_clients()} == {"client-of-node-a": True, "client-of-node-b": False}
    finally:
        for lease in leases.values():
            if lease.running:
                lease.stopService()
        for store in stores.values():
            store.stop()
