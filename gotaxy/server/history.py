# -*- test-case-name: tests.test_history -*-
"""
Stability history: how each client and tunnel has been doing, kept in the
store for the panel's charts and the console.

What is kept, in tables of its own (``history_*``, defined in
``gotaxy.store.schema``) in the server's store:

``history_sessions``
    One row per client session: ``started``, ``ended``, the disconnect
    ``reason``.  Sessions still open are checkpointed at every flush
    (``open`` true, ``ended`` = the flush time), so after a crash a
    session ends where it was last seen.  Uptime over a window is the part
    of the window covered by sessions, out of the part of the window since
    the client was first seen.
``history_samples``
    Every ``history.sampleInterval`` seconds (default 60): per online
    client its heartbeat RTT; per tunnel the connections open, and the
    connections accepted and bytes in/out *during the interval*, and its
    current rates.  Kept ``history.rawHours`` hours (default 48).
``history_hourly``
    Hourly rollups of the samples (count, RTT average and maximum, peak
    connections, connections and bytes summed, peak rates), made as each
    hour completes and kept ``history.retentionDays`` days (default 90),
    as are ended sessions.

Connects and disconnects with their reasons are read from the existing
``events`` table rather than copied.

Several servers may share one store (``database.url``): each writes the
samples and sessions of its own clients (sessions name their node), and
each hour is rolled up once, by whichever server claims it first in
``history_rollups``; while other servers run, an hour is rolled up two
sample intervals after its end, so that their last samples are in.

Nothing here is on the data path.  Samples are read from the core's traffic
meters (``gotaxy.server.traffic``: one per tunnel, kept across its restarts,
each telling the history what happened since it last asked) on a timer,
buffered in memory (bounded: beyond ``MAX_BUFFERED`` rows the oldest are
dropped and counted), and written in one store call per interval, on the store's own thread.  Rollups and retention run in that
same call once per hour.

The read API for the panel and console is ``History.client_stability``,
``History.all_stability``, ``History.client_sessions``,
``History.client_rtt``, ``History.throughput``, ``History.tunnel_history``
and ``History.tunnel_stats``.
"""

from __future__ import annotations

import math
from collections import deque
import functools
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, TypeVar

from sqlalchemy.exc import IntegrityError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gotaxy.events import Event
from gotaxy.logs import gotaxy_observer
from gotaxy.server.traffic import Reading
from gotaxy.store import CLIENT_CONNECTED, CLIENT_DISCONNECTED
from gotaxy.store.schema import HISTORY_HOURLY, HISTORY_ROLLUPS, HISTORY_SAMPLES, HISTORY_SESSIONS

T = TypeVar("T")

SESSIONS = HISTORY_SESSIONS
SAMPLES = HISTORY_SAMPLES
HOURLY = HISTORY_HOURLY
ROLLUPS = HISTORY_ROLLUPS

HOUR = 3600.0
DAY = 86400.0
#: Sample rows waiting for the store; beyond this the oldest are dropped.
MAX_BUFFERED = 20000
#: The name the history reads the traffic meters under (``TrafficMeter.advance``).
HISTORY_READER = "history"
#: Disconnect reasons listed per client.
MAX_REASONS = 20
#: Sessions listed per client by ``client_sessions``.
MAX_SESSIONS = 500
#: Points of a throughput series at most; longer series are merged into buckets.
MAX_POINTS = 720


def _committed(function: Callable[..., T]) -> Callable[..., T]:
    """
    Run a store function in one transaction, committed at the end.  Raw
    ``db.query`` statements are not committed by dataset; a connection left
    inside a transaction holds SQLite's locks (or a stale snapshot) and
    makes other writers, such as the ``gotaxy`` command, fail with "database
    is locked".
    """

    @functools.wraps(function)
    def run(store: Any, *args: Any) -> T:
        with store.db:
            return function(store, *args)

    return run


@_committed
def _write(store: Any, samples: List[Dict[str, Any]], sessions: List[Dict[str, Any]]) -> None:
    db = store.db
    if samples:
        db[SAMPLES].insert_many(samples, ensure=False)
    for row in sessions:
        db[SESSIONS].upsert(dict(row, node=store.node), ["client", "started"], ensure=False)


@_committed
def _expire(store: Any, now: float, raw_hours: int, retention_days: int) -> None:
    db = store.db
    db.query(f"DELETE FROM {SAMPLES} WHERE at < :t", t=now - raw_hours * HOUR)
    horizon = now - retention_days * DAY
    db.query(f"DELETE FROM {HOURLY} WHERE hour < :t", t=horizon)
    db.query(f"DELETE FROM {SESSIONS} WHERE ended < :t AND open = :f", t=horizon, f=False)
    db.query(f"DELETE FROM {ROLLUPS} WHERE hour < :t", t=horizon)


def _flush(
    store: Any, samples: List[Dict[str, Any]], sessions: List[Dict[str, Any]], now: float,
    roll_up: bool, raw_hours: int, retention_days: int, grace: float = 0.0,
) -> bool:
    """Write the buffer; with ``roll_up``, roll up and expire too.  True if an hour waits for its grace."""
    _write(store, samples, sessions)
    if not roll_up:
        return False
    waiting = _roll_up(store, now, grace)
    _expire(store, now, raw_hours, retention_days)
    return waiting


def _roll_up(store: Any, now: float, grace: float = 0.0) -> bool:
    """
    Roll up every completed hour after the last rolled one (samples at
    (hour, hour + 1 h]).  Each hour is one transaction that starts by
    claiming the hour in ``history_rollups``: of several servers sharing
    the store, one rolls it up, the others find it claimed and skip it.
    While other servers run, an hour waits ``grace`` seconds after its end
    for their last samples; True if one is waiting.
    """
    db = store.db
    with db:
        others = [node for node, _ in store.live_nodes() if node != store.node]
        last = max(
            (r["h"] for table in (ROLLUPS, HOURLY) for r in db.query(f"SELECT MAX(hour) AS h FROM {table}")
             if r["h"] is not None),
            default=None,
        )
        first = list(db.query(f"SELECT MIN(at) AS a FROM {SAMPLES}"))[0]["a"]
    current = ((now - (grace if others else 0.0)) // HOUR) * HOUR
    waiting = current < (now // HOUR) * HOUR
    if first is None:
        return waiting
    # A sample taken at t covers (t - interval, t]: one taken on the hour
    # belongs to the hour before.
    hour = math.ceil(first / HOUR) * HOUR - HOUR if last is None else last + HOUR
    while hour < current:
        try:
            with db:
                db[ROLLUPS].insert(dict(hour=hour, node=store.node, at=now), ensure=False)
                rows = [
                    dict(
                        hour=hour, client=r["client"], tunnel=r["tunnel"], samples=r["n"],
                        rtt_avg=r["rtt_avg"], rtt_max=r["rtt_max"], connections_max=r["cmax"],
                        opened=r["opened"], bytes_in=r["bin"], bytes_out=r["bout"],
                        rate_in_max=r["rin"], rate_out_max=r["rout"],
                        datagrams_in=r["din"], datagrams_out=r["dout"], dropped=r["dr"],
                    )
                    for r in db.query(
                        f"SELECT client, tunnel, COUNT(*) AS n, AVG(rtt) AS rtt_avg, MAX(rtt) AS rtt_max, "
                        f"MAX(connections) AS cmax, SUM(opened) AS opened, SUM(bytes_in) AS bin, "
                        f"SUM(bytes_out) AS bout, MAX(rate_in) AS rin, MAX(rate_out) AS rout, "
                        f"SUM(datagrams_in) AS din, SUM(datagrams_out) AS dout, SUM(dropped) AS dr "
                        f"FROM {SAMPLES} WHERE at > :a AND at <= :b GROUP BY client, tunnel",
                        a=hour, b=hour + HOUR,
                    )
                ]
                if rows:
                    db[HOURLY].insert_many(rows, ensure=False)
        except IntegrityError:
            pass  # another server claimed this hour and rolls it up
        hour += HOUR
    return waiting


def _overlap(intervals: List[Tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in intervals)


@_committed
def _stability(
    store: Any, name: str, now: float, current: Optional[float], sample_interval: float,
    pending: Tuple[Tuple[float, float], ...] = (), with_rtt: bool = True,
) -> Dict[str, Any]:
    db = store.db
    rows = list(db.query(f"SELECT started, ended, open FROM {SESSIONS} WHERE client = :c", c=name))
    # Sessions by start: one that ended since the last flush (``pending``)
    # replaces its checkpoint, and the open one is counted up to now.
    by_start = {r["started"]: r["ended"] for r in rows}
    by_start.update(dict(pending))
    if current is not None:
        by_start[current] = now
    intervals = sorted(by_start.items())
    first_seen = min((a for a, _ in intervals), default=None)

    def uptime(window: float) -> Optional[float]:
        if first_seen is None:
            return None
        start = max(now - window, first_seen)
        if now - start <= 0:
            return 100.0 if current is not None else None
        return round(100.0 * _overlap(intervals, start, now) / (now - start), 3)

    def count(kind: str, since: float) -> int:
        return list(db.query(
            "SELECT COUNT(*) AS n FROM events WHERE type = :t AND client = :c AND at >= :s", t=kind, c=name, s=since
        ))[0]["n"]

    reasons = [
        {"reason": r["detail"], "count": r["n"], "last": r["last"]}
        for r in db.query(
            "SELECT detail, COUNT(*) AS n, MAX(at) AS last FROM events WHERE type = :t AND client = :c AND at >= :s "
            "GROUP BY detail ORDER BY n DESC, last DESC LIMIT :l",
            t=CLIENT_DISCONNECTED, c=name, s=now - 7 * DAY, l=MAX_REASONS,
        )
    ]
    rtt = [
        (r["at"], r["rtt"])
        for r in db.query(
            f"SELECT at, rtt FROM {SAMPLES} WHERE client = :c AND tunnel = '' AND at >= :s ORDER BY at",
            c=name, s=now - DAY,
        )
    ] if with_rtt else []
    return {
        "client": name,
        "online": current is not None,
        "online_since": current,
        "first_seen": first_seen,
        "online_seconds": round(sum(b - a for a, b in intervals), 3),
        "uptime_24h": uptime(DAY),
        "uptime_7d": uptime(7 * DAY),
        "connects_24h": count(CLIENT_CONNECTED, now - DAY),
        "connects_7d": count(CLIENT_CONNECTED, now - 7 * DAY),
        "disconnects_24h": count(CLIENT_DISCONNECTED, now - DAY),
        "disconnects_7d": count(CLIENT_DISCONNECTED, now - 7 * DAY),
        "disconnect_reasons_7d": reasons,
        "rtt_samples_24h": rtt,
        "sample_interval": sample_interval,
    }


@_committed
def _client_names(store: Any) -> List[str]:
    names = {r["client"] for r in store.db.query(f"SELECT DISTINCT client FROM {SESSIONS}")}
    return sorted(names | {c.name for c in store.list_clients()})


@_committed
def _series(
    store: Any, client: str, tunnel: str, since: float, until: float, hourly: bool
) -> List[Dict[str, Any]]:
    table, column = (HOURLY, "hour") if hourly else (SAMPLES, "at")
    rows = store.db.query(
        f"SELECT * FROM {table} WHERE client = :c AND tunnel = :t AND {column} >= :s AND {column} <= :u ORDER BY {column}",
        c=client, t=tunnel, s=since, u=until,
    )
    return [{k: v for k, v in dict(r).items() if k not in ("id", "client", "tunnel")} for r in list(rows)]


@_committed
def _sessions(
    store: Any, name: str, since: float, now: float, current: Optional[float],
    pending: Tuple[Tuple[float, float, Optional[str]], ...] = (),
) -> List[Dict[str, Any]]:
    rows = store.db.query(
        f"SELECT started, ended, reason FROM {SESSIONS} WHERE client = :c AND ended >= :s "
        f"ORDER BY started DESC LIMIT :l",
        c=name, s=since, l=MAX_SESSIONS,
    )
    # As in _stability: sessions ended since the last flush replace their
    # checkpoints, and the open one runs until now.
    by_start = {r["started"]: (r["ended"], r["reason"], False) for r in rows}
    for started, ended, reason in pending:
        if ended >= since:
            by_start[started] = (ended, reason, False)
    if current is not None:
        by_start[current] = (now, None, True)
    newest = sorted(by_start.items())[-MAX_SESSIONS:]
    return [
        {"started": started, "ended": ended, "reason": reason, "open": is_open}
        for started, (ended, reason, is_open) in newest
    ]


@_committed
def _throughput(store: Any, since: float, until: float) -> List[Tuple[float, int, int]]:
    # Every sample tick writes rows with one ``at``; client rows (tunnel '')
    # have no bytes, so an idle tick with clients online still counts, as 0.
    return [
        (r["at"], int(r["bin"] or 0), int(r["bout"] or 0))
        for r in store.db.query(
            f"SELECT at, SUM(bytes_in) AS bin, SUM(bytes_out) AS bout FROM {SAMPLES} "
            f"WHERE at > :s AND at <= :u GROUP BY at ORDER BY at",
            s=since, u=until,
        )
    ]


def throughput_series(
    ticks: List[Tuple[float, int, int]], interval: float, max_points: int = MAX_POINTS
) -> List[Dict[str, Any]]:
    """
    Sample ticks (UNIX time, bytes in, bytes out during the interval before
    it) as points with the average rates over each interval; at most
    ``max_points``, consecutive ticks merged when there are more.
    """
    points = []
    previous = None
    for at, bytes_in, bytes_out in ticks:
        # A tick covers the time since the one before; the first one, or one
        # after a gap (the server was down), covers one sample interval.
        span = at - previous if previous is not None and at - previous <= 2 * interval else interval
        points.append([at, span, bytes_in, bytes_out])
        previous = at
    if len(points) > max_points:
        size = math.ceil(len(points) / max_points)
        merged = []
        for i in range(0, len(points), size):
            group = points[i : i + size]
            merged.append([group[-1][0], sum(p[1] for p in group), sum(p[2] for p in group), sum(p[3] for p in group)])
        points = merged
    return [
        {"at": at, "seconds": span, "bytes_in": b_in, "bytes_out": b_out,
         "rate_in": round(b_in / span, 3) if span > 0 else 0.0, "rate_out": round(b_out / span, 3) if span > 0 else 0.0}
        for at, span, b_in, b_out in points
    ]


class History(Service):
    log = Logger(observer=gotaxy_observer)
    name = "history"

    def __init__(
        self,
        core: Any,
        store: Any,
        reactor: Any = None,
        sample_interval: Optional[float] = None,
        raw_hours: Optional[int] = None,
        retention_days: Optional[int] = None,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        config = core.config
        self.core = core
        self.store = store
        self.reactor = reactor if reactor is not None else core.reactor
        self.sample_interval = sample_interval or config.history.sample_interval
        self.raw_hours = raw_hours or config.history.raw_hours
        self.retention_days = retention_days or config.history.retention_days
        self._samples: Deque[Dict[str, Any]] = deque(maxlen=max_buffered)
        #: (client, tunnel) -> a udp tunnel's datagram counters at the last sample
        self._datagrams: Dict[Tuple[str, str], Tuple[int, int, int]] = {}
        self._ended: List[Dict[str, Any]] = []
        self.online_since: Dict[str, float] = {}  #: client -> start of its current session
        self._last_hour: Optional[float] = None
        # An hour whose roll-up waits for other servers' last samples: try at every flush.
        self._roll_up_waiting = False
        self._writing: Optional[Deferred] = None
        self.dropped = 0  #: sample rows dropped because the store fell behind
        self._sampler = LoopingCall(self.tick)
        self._sampler.clock = self.reactor
        self._unsubscribe: List[Callable[[], None]] = []
        # Sessions left open by a server that died ended when last seen.
        # Synchronously, like the rest of the store's set-up: makeService
        # builds this before the reactor runs.
        store.store.close_stale_sessions()

    # -- live side ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # This process's sessions only: another server sharing the store
        # keeps its own history rows.
        self._unsubscribe = [self.core.events.subscribe(self.observe, local_only=True)]
        for name in self.core.sessions:  # already online (a service restarted under a live core)
            self.online_since.setdefault(name, self.reactor.seconds())
        self._sampler.start(self.sample_interval, now=False)

    def stopService(self) -> Deferred:
        super().stopService()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._sampler.running:
            self._sampler.stop()
        now = self.reactor.seconds()
        for name, started in list(self.online_since.items()):
            self._ended.append(dict(client=name, started=started, ended=now, reason="server stopped", open=False))
        self.online_since.clear()
        return self.flush()

    def apply(self, config: Any) -> List[Any]:
        """``history.*`` from a reload: the next sample, flush and roll-up follow them."""
        from gotaxy.server.reload import applied

        new = (config.history.sample_interval, config.history.raw_hours, config.history.retention_days)
        if new == (self.sample_interval, self.raw_hours, self.retention_days):
            return []
        keys = [key for key, was, now in zip(
            ("history.sampleInterval", "history.rawHours", "history.retentionDays"),
            (self.sample_interval, self.raw_hours, self.retention_days), new,
        ) if was != now]
        self.sample_interval, self.raw_hours, self.retention_days = new
        if self._sampler.running:
            self._sampler.stop()
            self._sampler.start(self.sample_interval, now=False)
        return [applied(" / ".join(keys), "from the next sample on")]

    def observe(self, event: Event) -> None:
        """Event-bus subscriber: sessions start and end."""
        if event.client is None:
            return
        if event.type == CLIENT_CONNECTED:
            self.online_since[event.client] = event.at
        elif event.type == CLIENT_DISCONNECTED:
            started = self.online_since.pop(event.client, None)
            if started is not None:
                self._ended.append(
                    dict(client=event.client, started=started, ended=event.at, reason=event.detail, open=False)
                )

    def sample(self) -> None:
        """Take one sample of every online client and every tunnel into the buffer."""
        now = self.reactor.seconds()
        rows: List[Dict[str, Any]] = []
        for name, session in list(self.core.sessions.items()):
            heartbeat = getattr(session, "heartbeat", None)
            rows.append(dict(at=now, client=name, tunnel="", rtt=heartbeat.rtt if heartbeat is not None else None))
        live = self.core.tunnels
        for key, meter in list(self.core.meters.tunnels.items()):
            moved = meter.advance(HISTORY_READER)
            tunnel = live.get(key)
            if tunnel is None and not moved:
                continue  # down and idle: nothing to chart
            row = dict(
                at=now, client=key[0], tunnel=key[1],
                connections=tunnel.connections if tunnel is not None else 0,
                opened=moved.opened, bytes_in=moved.bytes_in, bytes_out=moved.bytes_out,
                rate_in=tunnel.rate_in if tunnel is not None else 0.0,
                rate_out=tunnel.rate_out if tunnel is not None else 0.0,
                datagrams_in=None, datagrams_out=None, dropped=None,
            )
            counts = meter.datagrams
            if counts is not None:  # a udp tunnel: its datagrams since the last sample
                now_counts = (counts.datagrams_in, counts.datagrams_out,
                              counts.too_large + counts.queue_full + counts.no_slot + counts.bandwidth
                              + counts.client_too_large + counts.client_queue_full + counts.client_no_slot
                              + counts.client_bandwidth)
                before = self._datagrams.get(key, (0, 0, 0))
                self._datagrams[key] = now_counts
                row.update(datagrams_in=now_counts[0] - before[0], datagrams_out=now_counts[1] - before[1],
                           dropped=now_counts[2] - before[2])
            rows.append(row)
        room = self._samples.maxlen - len(self._samples) if self._samples.maxlen is not None else len(rows)
        if len(rows) > room:
            self.dropped += len(rows) - room
        self._samples.extend(rows)

    def tick(self) -> None:
        self.sample()
        self.flush()

    def flush(self) -> Deferred:
        """
        Write the buffer in one store call (unless one is still running: then
        next time).  Reads issued later queue behind it on the store thread.
        """
        if self._writing is not None and self.running:
            return self._writing
        now = self.reactor.seconds()
        hour = now // HOUR
        roll_up = self._last_hour is None or hour != self._last_hour or self._roll_up_waiting
        samples = list(self._samples)
        self._samples.clear()
        sessions = self._ended
        self._ended = []
        sessions = sessions + [
            dict(client=name, started=started, ended=now, reason=None, open=True)
            for name, started in self.online_since.items()
        ]
        if not samples and not sessions and not roll_up:
            return succeed(None)
        d = self.store.call(
            _flush, self.store.store, samples, sessions, now, roll_up, self.raw_hours, self.retention_days,
            2 * self.sample_interval,
        )

        def written(waiting: bool) -> None:
            if roll_up:
                self._last_hour = hour
                self._roll_up_waiting = waiting

        def failed(failure: Any) -> None:
            self.log.failure("could not write {n} history samples", failure, n=len(samples))

        def done(_: Any) -> None:
            self._writing = None

        d.addCallbacks(written, failed)
        d.addBoth(done)
        self._writing = d
        return d

    # -- read API for the panel and console -----------------------------------

    def client_stability(self, name: str, with_rtt: bool = True) -> "Deferred[Dict[str, Any]]":
        """
        One client's stability: online now and since when, first seen, total
        online seconds, uptime % over the last 24 h and 7 d (of the time
        since first seen), connects and disconnects over 24 h and 7 d, the
        disconnect reasons of the last 7 d with counts, and the heartbeat
        RTT samples of the last 24 h as [UNIX time, seconds] pairs (none
        unless ``with_rtt``).
        """
        pending = tuple((r["started"], r["ended"]) for r in self._ended if r["client"] == name)
        return self.store.call(
            _stability, self.store.store, name, self.reactor.seconds(), self.online_since.get(name),
            self.sample_interval, pending, with_rtt,
        )

    async def all_stability(self, with_rtt: bool = True) -> List[Dict[str, Any]]:
        """``client_stability`` of every client known to the store or the history."""
        names = await self.store.call(_client_names, self.store.store)
        return [await self.client_stability(name, with_rtt) for name in names]

    def client_sessions(self, name: str, since: float) -> "Deferred[List[Dict[str, Any]]]":
        """
        One client's sessions that ended at or after ``since`` (at most
        ``MAX_SESSIONS``, the newest), oldest first: ``started``, ``ended``
        (now for the session still open), the disconnect ``reason`` and
        ``open``.
        """
        pending = tuple((r["started"], r["ended"], r["reason"]) for r in self._ended if r["client"] == name)
        return self.store.call(
            _sessions, self.store.store, name, since, self.reactor.seconds(), self.online_since.get(name), pending
        )

    async def throughput(self, since: float, until: Optional[float] = None) -> List[Dict[str, Any]]:
        """
        The whole server's traffic from the recorded samples after ``since``:
        per sample ``at`` (UNIX time), the ``seconds`` it covers, the
        ``bytes_in``/``bytes_out`` of all tunnels during them and the average
        ``rate_in``/``rate_out`` (bytes/s); at most ``MAX_POINTS`` points.
        """
        until = self.reactor.seconds() if until is None else until
        ticks = await self.store.call(_throughput, self.store.store, since, until)
        return throughput_series(ticks, self.sample_interval)

    def client_rtt(self, name: str, since: float, until: Optional[float] = None, hourly: bool = False) -> "Deferred[List[Dict[str, Any]]]":
        """Heartbeat RTT samples (``at``, ``rtt``) or hourly rollups (``hour``, ``rtt_avg``, ``rtt_max``)."""
        return self._series(name, "", since, until, hourly)

    def tunnel_history(self, client: str, tunnel: str, since: float, until: Optional[float] = None,
                       hourly: bool = False) -> "Deferred[List[Dict[str, Any]]]":
        """
        A tunnel's samples (``at``, ``connections`` open, ``opened`` and
        ``bytes_in``/``bytes_out`` during the interval, ``rate_in``/``rate_out``)
        or its hourly rollups (``hour``, ``samples``, ``connections_max``,
        ``opened``, ``bytes_in``, ``bytes_out``, ``rate_in_max``, ``rate_out_max``);
        for a udp tunnel also ``datagrams_in``, ``datagrams_out`` and
        ``dropped`` during the interval (None for other types).
        """
        return self._series(client, tunnel, since, until, hourly)

    def tunnel_stats(self, client: str, tunnel: str) -> Dict[str, Any]:
        """A tunnel's counters now: connections opened since start, open now, bytes in/out, rate."""
        meter = self.core.meters.tunnels.get((client, tunnel))
        total = meter.reading() if meter is not None else Reading()
        opened, refused, bytes_in, bytes_out = total.opened, total.refused, total.bytes_in, total.bytes_out
        live = self.core.tunnels.get((client, tunnel))
        return {
            "client": client, "tunnel": tunnel, "up": live is not None,
            "opened": opened, "refused": refused,
            "open": live.connections if live is not None else 0,
            "bytes_in": bytes_in, "bytes_out": bytes_out,
            "rate_in": live.rate_in if live is not None else 0.0,
            "rate_out": live.rate_out if live is not None else 0.0,
        }

    def _series(self, client: str, tunnel: str, since: float, until: Optional[float], hourly: bool) -> Deferred:
        until = self.reactor.seconds() if until is None else until
        return self.store.call(_series, self.store.store, client, tunnel, since, until, hourly)
