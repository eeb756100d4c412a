"""
Old events expire (``events.retentionDays``), in batches on the store's
thread, from a timer the server runs; and failed log-ins reach the events
table and the event bus (webhooks, mail, metrics) once per interval per
source address, with their count.
"""

from __future__ import annotations

import time
from typing import Any, List

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from gotaxy.config import EventsSettings, ServerConfig
from gotaxy.events import Event
from gotaxy.server.retention import DAY, EXPIRY_INTERVAL, EventRetention
from gotaxy.store import CLIENT_CONNECTED, LOGIN_FAILED, Store
from tests.inprocess import LiveSystem, RawControlClient, wait_until


class FakeTime:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """A ThreadedStore stand-in that runs calls at once and counts them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0  # the events' deletes
        self.command_calls = 0  # the node commands' (gotaxy.store.commands.expire)

    def call(self, function: Any, *args: Any) -> Any:
        from gotaxy.store import commands

        if function is commands.expire:
            self.command_calls += 1
        else:
            self.calls += 1
        return succeed(function(*args))


class FakeCore:
    def __init__(self, store: CountingStore, reactor: Clock, days: int) -> None:
        self.store = store
        self.reactor = reactor
        self.config = ServerConfig(events=EventsSettings(retention_days=days))


def dated_store(clock: FakeTime, ages_in_days: List[float]) -> Store:
    """A store with one event per age, recorded that many days before ``clock``'s now."""
    store = Store("sqlite://", clock=clock)
    now = clock.now
    for age in sorted(ages_in_days, reverse=True):
        clock.now = now - age * DAY
        store.record_event(CLIENT_CONNECTED, client="alice", detail=f"{age} days ago")
    clock.now = now
    return store


def test_expire_events_deletes_only_rows_older_than_the_cutoff_in_batches():
    clock = FakeTime(1_800_000_000.0)
    store = dated_store(clock, [200, 120, 91, 89, 10, 0])
    cutoff = clock.now - 90 * DAY
    assert store.expire_events(cutoff, limit=2) == 2
    assert store.expire_events(cutoff, limit=2) == 1
    assert store.expire_events(cutoff, limit=2) == 0
    assert [e.detail for e in store.events()] == ["0 days ago", "10 days ago", "89 days ago"]


def test_the_retention_service_runs_at_start_and_then_hourly_in_batches():
    clock = Clock()
    clock.advance(1_800_000_000)
    times = FakeTime(clock.seconds())
    store = dated_store(times, [100] * 7 + [95, 30, 1])
    threaded = CountingStore(store)
    service = EventRetention(FakeCore(threaded, clock, days=90), batch=3)
    service.startService()
    try:
        # At start: 8 old rows in batches of 3 is 3 store calls (3 + 3 + 2).
        assert threaded.calls == 3
        assert threaded.command_calls == 1  # and one for the node commands, which are none
        assert [e.detail for e in store.events()] == ["1 days ago", "30 days ago"]
        # Nothing for an hour; then again, and what has aged meanwhile goes.
        times.now = clock.seconds()
        store.record_event(LOGIN_FAILED, address="192.0.2.1", detail="x")
        clock.advance(EXPIRY_INTERVAL - 1)
        assert threaded.calls == 3
        service.core.config = ServerConfig(events=EventsSettings(retention_days=7))  # as a reload would
        clock.advance(1)
        assert threaded.calls == 4
        assert threaded.command_calls == 2
        assert [e.detail for e in store.events()] == ["x", "1 days ago"]
    finally:
        service.stopService()
    assert clock.getDelayedCalls() == []


def test_retention_days_has_a_default_and_a_floor():
    from gotaxy.config import ConfigError, parse_server_config

    assert ServerConfig().events.retention_days == 90
    assert parse_server_config({"events": {"retentionDays": 30}}).config.events.retention_days == 30
    try:
        parse_server_config({"events": {"retentionDays": 1}})
    except ConfigError as e:
        assert "'events.retentionDays' must be an integer number of days of at least 7" in str(e)
    else:
        raise AssertionError("a retention of 1 day was accepted")


class LiveRetentionTests(unittest.TestCase):
    timeout = 60

    async def test_the_server_runs_the_retention_and_it_deletes_old_rows(self):
        live = await LiveSystem.start(self, server_args=[])
        service = live.service.getServiceNamed("event-retention")
        self.assertTrue(service.running)
        db = live.core.store.store.db
        old = time.time() - 91 * DAY

        def insert_old() -> None:
            db["events"].insert_many([dict(at=old, type=CLIENT_CONNECTED, client="alice", count=1)] * 2500)

        await live.core.store.call(insert_old)
        deleted = await service.run()
        self.assertEqual(deleted, 2500)
        left = await live.core.store.call(lambda: db["events"].count(at={"<": old + 1}))
        self.assertEqual(left, 0)


class LoginFailureAggregationTests(unittest.TestCase):
    timeout = 120

    async def test_webhooks_and_the_events_table_hear_of_a_flood_once_per_interval(self):
        live = await LiveSystem.start(self)
        live.core.login_failures.interval = 0.5  # the server's is a minute
        heard: List[Event] = []
        self.addCleanup(live.core.events.subscribe(lambda e: heard.append(e) if e.type == LOGIN_FAILED else None))
        started = time.monotonic()
        attempts = 60
        for _ in range(attempts):
            raw = await RawControlClient.connect(live.control_port)
            raw.login(token="gtx_" + "C" * 43)
            self.assertEqual((await raw.reply())["type"], "login_failed")
            await raw.closed
        elapsed = time.monotonic() - started
        await wait_until(lambda: sum(e.count for e in heard) == attempts, timeout=10)
        # One at once, then at most one per interval: O(time), not O(attempts).
        self.assertLessEqual(len(heard), 2 + elapsed / 0.5)
        self.assertEqual(heard[0].count, 1)
        self.assertTrue(heard[0].address.startswith("127.0.0.1:"))
        self.assertTrue(all(e.address == "127.0.0.1" for e in heard[1:]))
        rows = await live.management.events(type_=LOGIN_FAILED, limit=1000)
        self.assertEqual(sorted(r.count for r in rows), sorted(e.count for e in heard))
        # The metric counts attempts, not rows.
        self.assertEqual(live.server.metrics.events.get(LOGIN_FAILED), attempts)
