"""
Stability history on a fake clock with a real store: sessions and uptime,
connect/disconnect counts and reasons, RTT samples, per-tunnel samples,
hourly rollups, retention, bounded buffering, and a crash's open session.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any, Dict, Optional, Tuple

import attrs
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from gotaxy.config import HistorySettings, ServerConfig
from gotaxy.events import Event, EventBus
from gotaxy.server.history import HOURLY, SAMPLES, SESSIONS, History
from gotaxy.server.traffic import TrafficMeters
from gotaxy.store import CLIENT_CONNECTED, CLIENT_DISCONNECTED, Store, ThreadedStore, default_url

T0 = 1795600800.0  # on the hour


@attrs.define
class Heartbeat:
    rtt: Optional[float] = None


@attrs.define(eq=False)
class Session:
    heartbeat: Heartbeat = attrs.Factory(Heartbeat)


@attrs.define(eq=False)
class Tunnel:
    """A live tunnel as History reads it; its counts are in the core's meter for it."""

    connections: int = 0
    rate_in: float = 0.0
    rate_out: float = 0.0


@attrs.define(eq=False)
class Stream:
    """A public connection's stream, as the meters read it: in = bytes_out, out = bytes_in."""

    bytes_in: int = 0
    bytes_out: int = 0


class FakeCore:
    def __init__(self, clock: Clock) -> None:
        self.config = ServerConfig(history=HistorySettings(sample_interval=60, raw_hours=2, retention_days=7))
        self.reactor = clock
        self.events = EventBus()
        self.sessions: Dict[str, Session] = {}
        self.tunnels: Dict[Tuple[str, str], Tunnel] = {}
        self.meters = TrafficMeters()


class HistoryTest(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        directory = tempfile.mkdtemp(prefix="gotaxy-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.sync = Store(default_url(directory), clock=self.clock.seconds)
        self.store = ThreadedStore(self.sync, reactor)
        self.store.start()
        self.addCleanup(self.store.stop)
        self.core = FakeCore(self.clock)

    def history(self, **kw: Any) -> History:
        history = History(self.core, self.store, self.clock, **kw)
        history.startService()
        return history

    async def advance(self, history: History, seconds: float) -> None:
        """Move the clock in sample-interval steps, letting each flush reach the store."""
        steps = int(seconds // history.sample_interval)
        for _ in range(steps):
            self.clock.advance(history.sample_interval)
            if history._writing is not None:
                await history._writing

    async def publish(self, kind: str, client: str, detail: Optional[str] = None) -> None:
        # As ServerCore.record does: store the event, then publish it.
        await self.store.call(self.sync.record_event, kind, client, None, "127.0.0.1:1", detail)
        self.core.events.publish(Event(type=kind, at=self.clock.seconds(), client=client, detail=detail))

    async def connect(self, name: str, rtt: float) -> Session:
        session = Session(Heartbeat(rtt))
        self.core.sessions[name] = session
        await self.publish(CLIENT_CONNECTED, name, "version 0.1.0")
        return session

    async def disconnect(self, name: str, reason: str) -> None:
        del self.core.sessions[name]
        await self.publish(CLIENT_DISCONNECTED, name, reason)

    async def test_stability_of_a_client(self) -> None:
        history = self.history()
        await self.connect("alice", 0.020)
        self.core.tunnels[("alice", "ssh")] = Tunnel()
        meter = self.core.meters.tunnel("alice", "ssh")
        for _ in range(120):  # two hours: 1 kB in and 2 kB out per minute, one new connection
            stream = Stream()
            meter.open(stream)
            stream.bytes_out += 1000
            stream.bytes_in += 2000
            meter.close(stream)
            await self.advance(history, 60)
        del self.core.tunnels[("alice", "ssh")]
        await self.disconnect("alice", "heartbeat timeout: nothing heard for 30 s")
        await self.advance(history, 3600)  # offline for an hour
        self.core.sessions["alice"] = Session(Heartbeat(0.040))
        await self.connect("alice", 0.040)
        await self.advance(history, 3600)  # back for an hour: now T0 + 4 h

        stats = await history.client_stability("alice")
        assert stats["online"] is True and stats["online_since"] == T0 + 3 * 3600
        assert stats["first_seen"] == T0
        assert stats["online_seconds"] == 3 * 3600
        assert stats["uptime_24h"] == 75.0 and stats["uptime_7d"] == 75.0
        assert stats["connects_24h"] == 2 and stats["disconnects_24h"] == 1
        assert stats["disconnect_reasons_7d"] == [
            {"reason": "heartbeat timeout: nothing heard for 30 s", "count": 1, "last": T0 + 2 * 3600}
        ]
        rtts = stats["rtt_samples_24h"]
        # raw samples are kept 2 h (history.rawHours): the last two hours only
        assert rtts and all(at >= T0 + 2 * 3600 for at, _ in rtts)
        assert rtts[-1] == (T0 + 4 * 3600, 0.040)

        hourly = await history.tunnel_history("alice", "ssh", since=T0, hourly=True)
        assert [h["hour"] for h in hourly] == [T0, T0 + 3600]
        assert [h["bytes_in"] for h in hourly] == [60000, 60000]
        assert [h["bytes_out"] for h in hourly] == [120000, 120000]
        assert [h["opened"] for h in hourly] == [60, 60]
        rtt_hourly = await history.client_rtt("alice", since=T0, hourly=True)
        assert [round(h["rtt_avg"], 3) for h in rtt_hourly] == [0.02, 0.02, 0.04]
        # Raw tunnel samples older than rawHours (2 h before the last hourly pass) are gone.
        raw = await history.tunnel_history("alice", "ssh", since=T0)
        assert [r["at"] for r in raw] == [T0 + 2 * 3600]

        everyone = await history.all_stability()
        assert [s["client"] for s in everyone] == ["alice"]
        await history.stopService()

    async def test_tunnel_samples_hold_interval_deltas(self) -> None:
        history = self.history()
        await self.connect("bob", 0.01)
        self.core.tunnels[("bob", "web")] = Tunnel(connections=2, rate_in=10.0, rate_out=20.0)
        meter = self.core.meters.tunnel("bob", "web")
        a, b = Stream(), Stream()
        meter.open(a)
        meter.open(b)
        a.bytes_out, b.bytes_in = 500, 700
        await self.advance(history, 60)
        a.bytes_out += 100
        await self.advance(history, 60)
        rows = await history.tunnel_history("bob", "web", since=T0)
        assert [(r["at"], r["connections"], r["opened"], r["bytes_in"], r["bytes_out"]) for r in rows] == [
            (T0 + 60, 2, 2, 500, 700),
            (T0 + 120, 2, 0, 100, 0),
        ]
        assert rows[0]["rate_in"] == 10.0
        assert history.tunnel_stats("bob", "web") == {
            "client": "bob", "tunnel": "web", "up": True, "opened": 2, "refused": 0, "open": 2,
            "bytes_in": 600, "bytes_out": 700, "rate_in": 10.0, "rate_out": 20.0,
        }
        await history.stopService()

    async def test_a_udp_tunnels_samples_and_hours_hold_its_datagrams_and_drops(self) -> None:
        from gotaxy.proxy.udp import counts_of

        history = self.history()
        await self.connect("bob", 0.01)
        self.core.tunnels[("bob", "dns")] = Tunnel(connections=1, rate_in=1.0, rate_out=1.0)
        self.core.tunnels[("bob", "web")] = Tunnel(connections=0, rate_in=0.0, rate_out=0.0)
        self.core.meters.tunnel("bob", "web")
        counts = counts_of(self.core.meters.tunnel("bob", "dns"))
        counts.datagrams_in, counts.datagrams_out, counts.too_large = 10, 9, 1
        await self.advance(history, 60)
        counts.datagrams_in, counts.queue_full, counts.no_slot = 15, 2, 3
        await self.advance(history, 60)
        rows = await history.tunnel_history("bob", "dns", since=T0)
        assert [(r["datagrams_in"], r["datagrams_out"], r["dropped"]) for r in rows] == [(10, 9, 1), (5, 0, 5)]
        (web,) = (await history.tunnel_history("bob", "web", since=T0))[:1]
        assert (web["datagrams_in"], web["dropped"]) == (None, None)  # not a udp tunnel
        await self.advance(history, 3600)  # the hour is rolled up
        (hour,) = [r for r in await history.tunnel_history("bob", "dns", since=T0 - 3600, hourly=True)
                   if r["datagrams_in"]]
        assert (hour["datagrams_in"], hour["datagrams_out"], hour["dropped"]) == (15, 9, 6)
        await history.stopService()

    async def test_sessions_survive_a_restart_and_a_crash(self) -> None:
        history = self.history()
        await self.connect("carol", 0.01)
        await self.advance(history, 600)
        # The server dies: no stopService.  The last checkpoint stays as the session's end.
        history._sampler.stop()
        for unsubscribe in history._unsubscribe:
            unsubscribe()
        rows = await self.store.call(lambda: list(self.sync.db[SESSIONS].all()))
        assert [(r["client"], r["started"], r["ended"], r["open"]) for r in rows] == [("carol", T0, T0 + 600, True)]
        self.clock.advance(3600)
        self.core.sessions.clear()
        restarted = self.history()
        stats = await restarted.client_stability("carol")
        assert stats["online"] is False and stats["online_seconds"] == 600
        rows = await self.store.call(lambda: list(self.sync.db[SESSIONS].all()))
        assert [(r["reason"], r["open"]) for r in rows] == [("server stopped", False)]
        await self.connect("carol", 0.01)
        await self.advance(history, 60)
        await restarted.stopService()  # closes the open session at the stop time
        rows = await self.store.call(lambda: list(self.sync.db[SESSIONS].find(order_by="started")))
        assert [(r["started"], r["ended"], r["reason"], r["open"]) for r in rows][-1] == (
            T0 + 4200, T0 + 4260, "server stopped", False
        )

    async def test_unknown_client(self) -> None:
        history = self.history()
        stats = await history.client_stability("nobody")
        assert stats["uptime_24h"] is None and stats["online"] is False and stats["connects_7d"] == 0
        await history.stopService()

    def test_buffer_is_bounded(self) -> None:
        history = History(self.core, self.store, self.clock, max_buffered=3)
        for name in "abcde":
            self.core.sessions[name] = Session(Heartbeat(0.01))
        history.sample()
        assert len(history._samples) == 3 and history.dropped == 2

    async def test_retention_deletes_old_rollups_and_sessions(self) -> None:
        history = self.history(retention_days=1)
        await self.connect("dave", 0.01)
        await self.advance(history, 3 * 3600)
        await self.disconnect("dave", "connection lost")
        self.clock.advance(2 * 86400)
        await history.flush()
        self.clock.advance(3600)
        await history.flush()
        counts = await self.store.call(
            lambda: {t: self.sync.db[t].count() for t in (SESSIONS, SAMPLES, HOURLY)}
        )
        assert counts == {SESSIONS: 0, SAMPLES: 0, HOURLY: 0}
        await history.stopService()
