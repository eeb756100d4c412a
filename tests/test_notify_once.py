"""
Each event notifies once across the server processes on one store
(``gotaxy.notify.once``, ``gotaxy.store.notified``): several nodes, each
with its store, bus, outbox tail, lease row and notifier, on one database
(a SQLite file, and a real PostgreSQL), on a fake clock.  A node's target
records what it was handed; a delivery can be held, as a webhook that is
still retrying holds it.
"""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gotaxy.events import CLIENT_CONNECTED, CLIENT_DISCONNECTED, TOKEN_CREATED, Event, EventBus
from gotaxy.notify.dispatch import Notifier
from gotaxy.notify.failures import FailureLog
from gotaxy.notify.filters import EventFilter
from gotaxy.notify.once import HORIZON
from gotaxy.server.lease import LEASE
from gotaxy.server.outbox import EventTail
from gotaxy.store import Store
from tests.test_outbox import InlineStore

GRACE = 10.0
STEP = 0.25


class Target:
    """A notification target that notes each event it is handed; ``hold`` keeps deliveries open."""

    def __init__(self, patterns: List[str] = ("*",)) -> None:
        self.filter = EventFilter(patterns)
        self.handed: List[Event] = []
        self.hold = False
        self.open: List[Deferred] = []

    def wants(self, event: Event) -> bool:
        return self.filter.matches(event.type)

    def deliver(self, event: Event) -> Deferred:
        self.handed.append(event)
        done: Deferred = Deferred()
        if self.hold:
            self.open.append(done)
        else:
            done.callback(None)
        return done

    def stop(self) -> None:
        self.open.clear()  # as a webhook gives up what it had not delivered

    def types(self) -> List[str]:
        return [e.type for e in self.handed]


class Node:
    """One server process: its store (with its lease), bus, tail and notifier."""

    def __init__(self, url: str, name: str, clock: Clock, grace: float = GRACE, start: bool = True) -> None:
        self.name = name
        self.clock = clock
        self.store = InlineStore(Store(url, clock=clock.seconds, node=name), clock)
        self.store.store.join_node(name, LEASE, "test start")
        self.bus = EventBus()
        self.store.on_recorded = self.bus.publish
        self.target = Target()
        self.failures = FailureLog(clock)
        self.notifier = Notifier(self.bus, [self.target], grace, clock, self.failures, store=self.store)
        self.tail = EventTail(self.store, self.bus, clock, name)
        self.alive = True
        if start:
            self.start()

    def start(self) -> None:
        self.notifier.startService()
        self.tail.startService()

    def call(self, function: Any, *args: Any) -> Any:
        return self.store.call(function, *args).result

    def crash(self) -> None:
        """``kill -9``: every loop stops where it is; nothing is written, the lease row stays until it runs out."""
        self.alive = False
        self.tail._loop.stop()
        self.notifier.orphans._loop.stop()
        self.notifier.flaps.stop()
        if self.notifier.marks._timer is not None:
            self.notifier.marks._timer.cancel()
        self.notifier.marks._closed = True
        self.store.on_recorded = None

    def stop(self) -> None:
        """A clean stop: the notifier writes its marks, the lease ends."""
        self.alive = False
        self.tail.stopService()
        self.notifier.stopService()
        self.call(self.store.store.leave_node)

    def close(self) -> None:
        if self.alive:
            self.stop()
        self.store.stop()


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_800_000_000)
    return clock


class Cluster:
    def __init__(self, url: str, clock: Clock) -> None:
        self.url = url
        self.clock = clock
        self.nodes: Dict[str, Node] = {}
        self._renewed = clock.seconds()

    def start(self, name: str, **kwargs: Any) -> Node:
        node = self.nodes[name] = Node(self.url, name, self.clock, **kwargs)
        return node

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass in small steps; the running nodes renew their leases as NodeLease does."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(STEP, end - self.clock.seconds()))
            if self.clock.seconds() - self._renewed >= 10:
                self._renewed = self.clock.seconds()
                for node in self.nodes.values():
                    if node.alive:
                        node.call(node.store.store.renew_node, LEASE)

    def handed(self, type_: str) -> Dict[str, int]:
        """How many times each node handed events of ``type_`` to its target."""
        return {name: node.target.types().count(type_) for name, node in self.nodes.items()
                if type_ in node.target.types()}

    def unnotified(self) -> List[int]:
        store = Store(self.url)
        try:
            return [row["id"] for row in store.db["events"].find(notified=None)]
        finally:
            store.close()


@pytest.fixture
def cluster(store_url: str, clock: Clock):
    cluster = Cluster(store_url, clock)
    yield cluster
    for node in cluster.nodes.values():
        node.close()


def test_an_event_is_sent_once_by_the_node_that_recorded_it(cluster):
    a, b, c = (cluster.start(n) for n in ("node-a", "node-b", "node-c"))
    heard: List[Event] = []
    b.bus.subscribe(heard.append)
    a.call(a.store.store.client_connected, "alice", "198.51.100.7:4000", "0.9")
    assert a.target.types() == [CLIENT_CONNECTED]  # at once, from the record
    cluster.advance(5)
    # b (and c) heard it through the outbox but did not send it.
    assert [e.type for e in heard] == [CLIENT_CONNECTED] and cluster.handed(CLIENT_CONNECTED) == {"node-a": 1}
    assert cluster.unnotified() == []  # a marked it done


def test_an_event_whose_node_dies_before_sending_it_is_sent_once_by_another(cluster):
    a, b, c = (cluster.start(n) for n in ("node-a", "node-b", "node-c"))
    a.target.hold = True  # the webhook is still trying when the process dies
    a.call(a.store.store.record_event, TOKEN_CREATED, "laptop")
    cluster.advance(1)
    a.crash()
    cluster.advance(LEASE - 2)
    assert cluster.handed(TOKEN_CREATED) == {"node-a": 1}  # a's lease still runs: no one else sends it
    cluster.advance(5)
    handed = cluster.handed(TOKEN_CREATED)
    assert handed.pop("node-a") == 1 and list(handed.values()) == [1]  # b or c, once
    (taker,) = handed
    (event,) = [e for e in cluster.nodes[taker].target.handed if e.type == TOKEN_CREATED]
    assert event.client == "laptop" and event.node == "node-a"
    cluster.advance(LEASE)
    assert cluster.handed(TOKEN_CREATED) == {"node-a": 1, taker: 1} and cluster.unnotified() == []


def test_a_clean_stop_hands_what_it_had_not_sent_to_another_node_at_once(cluster):
    a, b = cluster.start("node-a"), cluster.start("node-b")
    a.target.hold = True
    a.call(a.store.store.record_event, TOKEN_CREATED, "laptop")
    ok = a.call(a.store.store.record_event, CLIENT_CONNECTED, "alice")
    a.target.open.pop().callback(None)  # this one was delivered before the stop
    cluster.advance(1)
    a.stop()  # ends the lease: b need not wait for it to run out
    cluster.advance(2)
    assert b.target.types() == [TOKEN_CREATED]
    assert ok.id not in cluster.unnotified() and cluster.unnotified() == []


def test_the_gotaxy_command_s_events_are_sent_once(cluster, store_url):
    cluster.start("node-a"), cluster.start("node-b")
    command = Store(store_url, clock=cluster.clock.seconds)  # `gotaxy token create`: no node, no notifier
    command.create_token("laptop")
    command.close()
    cluster.advance(3)
    assert sum(cluster.handed(TOKEN_CREATED).values()) == 1 and cluster.unnotified() == []


def test_the_gotaxy_command_s_events_from_before_a_start_are_not_news(cluster, store_url):
    command = Store(store_url, clock=cluster.clock.seconds)
    command.create_token("laptop")
    command.close()
    cluster.clock.advance(60)
    cluster.start("node-a")
    cluster.advance(3)
    assert cluster.handed(TOKEN_CREATED) == {}


def test_a_client_that_drops_from_one_node_and_is_back_on_another_within_the_grace_is_not_notified(cluster):
    a, b = cluster.start("node-a"), cluster.start("node-b")
    a.call(a.store.store.client_connected, "alice", "198.51.100.7:4000", "0.9")
    cluster.advance(2)
    a.call(a.store.store.client_disconnected, "alice", "198.51.100.7:4000", "connection lost")
    cluster.advance(3)  # b hears the drop through the outbox, and holds it too
    b.call(b.store.store.client_connected, "alice", "198.51.100.7:4001", "0.9")
    cluster.advance(GRACE + 5)
    assert cluster.handed(CLIENT_DISCONNECTED) == {}
    assert cluster.handed(CLIENT_CONNECTED) == {"node-a": 1}  # the first log-in only
    assert cluster.unnotified() == []  # both nodes marked what they held back
    # A real drop (no reconnect) is sent, once, by the node that saw it.
    b.call(b.store.store.client_disconnected, "alice", "198.51.100.7:4001", "heartbeat timeout")
    cluster.advance(GRACE + 5)
    assert cluster.handed(CLIENT_DISCONNECTED) == {"node-b": 1}


def test_a_drop_held_by_a_node_that_dies_is_sent_by_another_only_if_it_was_no_flap(cluster):
    a, b = cluster.start("node-a", grace=60.0), cluster.start("node-b", grace=60.0)
    a.call(a.store.store.client_connected, "alice", "198.51.100.7:4000", "0.9")
    a.call(a.store.store.client_connected, "bob", "198.51.100.8:4000", "0.9")
    cluster.advance(2)
    a.call(a.store.store.client_disconnected, "alice", "198.51.100.7:4000", "connection lost")
    a.call(a.store.store.client_disconnected, "bob", "198.51.100.8:4000", "connection lost")
    cluster.advance(2)
    a.crash()  # holding both drops in its grace period
    b.call(b.store.store.client_connected, "alice", "198.51.100.7:4001", "0.9")  # alice is back, on b
    cluster.advance(LEASE + 5)  # b takes both over while its own suppressor still holds bob's
    assert cluster.handed(CLIENT_DISCONNECTED) == {}
    cluster.advance(60)
    (sent,) = [e for e in b.target.handed if e.type == CLIENT_DISCONNECTED]
    assert sent.client == "bob" and cluster.handed(CLIENT_DISCONNECTED) == {"node-b": 1}
    assert cluster.unnotified() == []


def test_a_restart_within_the_lease_sends_what_the_previous_process_left(cluster):
    a, b = cluster.start("node-a"), cluster.start("node-b")
    a.target.hold = True
    a.call(a.store.store.record_event, TOKEN_CREATED, "laptop")
    a.crash()
    cluster.advance(3)
    again = Node(cluster.url, "node-a", cluster.clock)  # same node id (DATA_DIR/node-id), lease still running
    cluster.nodes["node-a again"] = again
    cluster.advance(LEASE + 5)
    assert again.target.types() == [TOKEN_CREATED] and b.target.types() == []
    assert cluster.unnotified() == []


def test_what_a_node_records_while_it_starts_is_sent_once(cluster):
    # The first start's default token is recorded before the notifier runs: it is
    # this process's own, not a leftover of an earlier one.
    a = cluster.nodes["node-a"] = Node(cluster.url, "node-a", cluster.clock, start=False)
    a.call(a.store.store.record_event, TOKEN_CREATED, "default")
    a.start()
    cluster.advance(3)
    assert cluster.handed(TOKEN_CREATED) == {"node-a": 1} and cluster.unnotified() == []


def test_an_orphan_older_than_the_horizon_goes_to_the_failure_log_not_to_the_targets(cluster):
    a = cluster.start("node-a")
    a.target.hold = True
    a.call(a.store.store.record_event, TOKEN_CREATED, "laptop")
    a.crash()
    cluster.clock.advance(HORIZON + 60)  # the whole cluster was down for over an hour
    b = cluster.start("node-b")
    cluster.advance(3)
    assert b.target.types() == [] and cluster.unnotified() == []
    (failure,) = b.failures.recent
    assert failure.event == TOKEN_CREATED and "node-a" in failure.reason and "not sent" in failure.reason


def test_a_node_with_no_target_that_wants_an_event_marks_it_at_once(cluster):
    a = cluster.start("node-a")
    a.target.filter = EventFilter(["tunnel.*"])
    a.call(a.store.store.record_event, TOKEN_CREATED, "laptop")
    cluster.advance(1)
    assert a.target.handed == [] and cluster.unnotified() == []


def test_events_from_before_the_upgrade_count_as_notified(empty_store_url):
    from sqlalchemy import create_engine, text

    from gotaxy.store.migrations import MIGRATIONS, migrate
    from gotaxy.store.store import driver_url

    engine = create_engine(driver_url(empty_store_url))
    try:
        migrate(engine, "the test database", migrations=[m for m in MIGRATIONS if m.version < 13])
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO events (at, type, client, node) "
                                    "VALUES (1700000000.5, 'token.created', 'laptop', 'old-node')"))
        migrate(engine, "the test database")
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT notified, notify_node FROM events")).all()
    finally:
        engine.dispose()
    # The server that recorded it notified it then: no node takes it over as an orphan now.
    assert [tuple(r) for r in rows] == [(1700000000.5, None)]


def test_a_webhook_delivery_names_the_event_s_id_the_same_from_every_node():
    from gotaxy.notify.payload import EVENT_ID_HEADER, render

    event = Event(type=TOKEN_CREATED, at=1800000000.0, client="laptop", id=41, node="node-a")
    first = render(event, "a.example", "https://hooks.example/x", "json", "s3cret", 1800000001.0)
    again = render(event, "b.example", "https://hooks.example/x", "slack", None, 1800003600.0)
    assert first[2][EVENT_ID_HEADER] == again[2][EVENT_ID_HEADER] == "41"
    unrecorded = render(Event(type="notify.test", at=1800000000.0), "a.example", "https://hooks.example/x", "json",
                        None, 1800000000.0)
    assert EVENT_ID_HEADER not in unrecorded[2]
