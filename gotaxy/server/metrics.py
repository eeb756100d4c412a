# -*- test-case-name: tests.test_metrics -*-
"""
``GET /metrics``: the server's live state in Prometheus text format.

Nothing here touches the data path.  Connections and bytes are counted by
the core's traffic meters (``gotaxy.server.traffic``: one per tunnel, kept
across the tunnel's restarts, so counters never go backwards);
``GotaxyCollector`` reads them, the sessions and the event counts only when
Prometheus scrapes, so a scrape costs a walk over the meters and an idle
server costs nothing.

Heartbeat round-trip times are observed into a histogram by
``RttSampler``, once per heartbeat interval per client and only when the
client's RTT reading changed (a new pong arrived), so each pong is counted
at most once.

Exposure is ``metrics.exposure`` in the server config: ``off`` (404),
``open``, or ``token`` (``Authorization: Bearer <metrics.token>``, compared
in constant time).  frp's ``enablePrometheus = true`` means ``open``.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Dict, Iterator, List, Optional

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource

from gotaxy import __version__
from gotaxy.events import Event
from gotaxy.store import LOGIN_FAILED, OPERATOR_LOGIN_FAILED, TUNNEL_REFUSED

RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class EventCounts:
    """
    Event-bus subscriber counting occurrences by type: an event that stands
    for several (failed log-ins from one address, aggregated) counts as many.
    It counts the events this process recorded, not those it reads back from
    other processes (``gotaxy.server.outbox``), so that the counters of
    several servers on one store add up.
    """

    def __init__(self) -> None:
        self.counts: Dict[str, int] = {}

    def __call__(self, event: Event) -> None:
        self.counts[event.type] = self.counts.get(event.type, 0) + event.count

    def get(self, kind: str) -> int:
        return self.counts.get(kind, 0)


class RttSampler:
    """Observes each client's newest heartbeat RTT into ``histogram``."""

    def __init__(self, core: Any, histogram: Histogram) -> None:
        self._core = core
        self._histogram = histogram
        self._last: Dict[int, float] = {}  # id(session) -> RTT last observed

    def sample(self) -> None:
        seen: Dict[int, float] = {}
        for session in list(self._core.sessions.values()):
            heartbeat = getattr(session, "heartbeat", None)
            rtt = heartbeat.rtt if heartbeat is not None else None
            if rtt is None:
                continue
            seen[id(session)] = rtt
            if self._last.get(id(session)) != rtt:
                self._histogram.observe(rtt)
        self._last = seen


class GotaxyCollector:
    """A prometheus-client collector reading the server's live state at scrape time."""

    def __init__(
        self,
        core: Any,
        events: EventCounts,
        admission: Any = None,
        failures: Any = None,
        targets: Callable[[], List[Any]] = lambda: [],
    ) -> None:
        self._core = core
        self._events = events
        self._admission = admission
        self._failures = failures
        self._targets = targets

    def describe(self) -> List[Metric]:
        return []  # label sets vary; the registry must not call collect() at registration

    def _client_streams(self, sessions: Dict[str, Any]) -> Iterator[Metric]:
        """Each client's streams and what they hold (``gotaxy.budget``): one pass over its streams per scrape."""
        labels = ["client"]
        streams = GaugeMetricFamily("gotaxy_client_streams", "Streams open now on the client's connection.", labels=labels)
        limit = GaugeMetricFamily(
            "gotaxy_client_stream_limit", "Streams the client's connection may carry (maxConnectionsPerClient; "
            "1024 for a client without the window budget).", labels=labels,
        )
        buffered = GaugeMetricFamily(
            "gotaxy_client_buffered_bytes", "Bytes this server holds now for the client's streams: waiting for "
            "window and in the public connections' output buffers.", labels=labels,
        )
        windows = GaugeMetricFamily(
            "gotaxy_client_window_bytes", "What the receive windows of the client's streams add up to: the most "
            "the client may make this server hold for them.", labels=labels,
        )
        lent = GaugeMetricFamily(
            "gotaxy_client_window_pool_bytes", "Window lent from the connection's pool above the streams' floors, "
            "and the pool's size.", labels=labels + ["kind"],
        )
        for name, session in sorted(sessions.items()):
            if not hasattr(session, "buffered_bytes"):
                continue
            streams.add_metric([name], len(session.streams))
            limit.add_metric([name], session.max_streams)
            buffered.add_metric([name], session.buffered_bytes())
            windows.add_metric([name], session.window_bytes())
            budget = session.budget
            if budget is not None:
                lent.add_metric([name, "lent"], budget.lent)
                lent.add_metric([name, "size"], budget.pool)
        yield streams
        yield limit
        yield buffered
        yield windows
        yield lent

    def collect(self) -> Iterator[Metric]:
        core = self._core
        info = InfoMetricFamily("gotaxy_server", "The Gotaxy server.")
        info.add_metric([], {"version": __version__, "server": core.config.server_name})
        yield info
        started = GaugeMetricFamily("gotaxy_server_start_time_seconds", "When the server started (UNIX time).")
        started.add_metric([], core.started_at)
        yield started

        sessions = dict(core.sessions)
        online = GaugeMetricFamily("gotaxy_clients_online", "Clients connected now.")
        online.add_metric([], len(sessions))
        yield online
        rtt = GaugeMetricFamily(
            "gotaxy_client_heartbeat_rtt_seconds", "Latest heartbeat round-trip time per client.", labels=["client"]
        )
        for name, session in sorted(sessions.items()):
            heartbeat = getattr(session, "heartbeat", None)
            if heartbeat is not None and heartbeat.rtt is not None:
                rtt.add_metric([name], heartbeat.rtt)
        yield rtt
        yield from self._client_streams(sessions)

        tunnels = dict(core.tunnels)
        up = GaugeMetricFamily("gotaxy_tunnels_up", "Tunnels whose public port is listening now.")
        up.add_metric([], len(tunnels))
        yield up
        labels = ["client", "tunnel"]
        open_now = GaugeMetricFamily("gotaxy_tunnel_connections_open", "Public connections open now.", labels=labels)
        rate = GaugeMetricFamily(
            "gotaxy_tunnel_rate_bytes_per_second", "Current traffic rate per tunnel (1 s samples).",
            labels=labels + ["direction"],
        )
        for (client, name), tunnel in sorted(tunnels.items()):
            open_now.add_metric([client, name], tunnel.connections)
            rate.add_metric([client, name, "in"], tunnel.rate_in)
            rate.add_metric([client, name, "out"], tunnel.rate_out)
        yield open_now
        yield rate

        opened = CounterMetricFamily(
            "gotaxy_tunnel_connections", "Public connections accepted per tunnel.", labels=labels
        )
        refused = CounterMetricFamily(
            "gotaxy_tunnel_connections_refused",
            "Public connections refused because the client or this tunnel was at its stream limit (fair share).", labels=labels,
        )
        traffic = CounterMetricFamily(
            "gotaxy_tunnel_bytes",
            "Bytes per tunnel: in = from public users to the client, out = back to the users.",
            labels=labels + ["direction"],
        )
        datagrams = CounterMetricFamily(
            "gotaxy_tunnel_datagrams",
            "Datagrams per udp tunnel: in = from visitors to the client, out = back to the visitors.",
            labels=labels + ["direction"],
        )
        dropped = CounterMetricFamily(
            "gotaxy_tunnel_datagrams_dropped",
            "Datagrams a udp tunnel dropped, by reason: too_large (over udpPacketSize), queue_full (the client's "
            "connection or the public socket was backed up), no_slot (no association for a new visitor), bandwidth "
            "(over the tunnel's transport.bandwidthLimit).",
            labels=labels + ["reason"],
        )
        dropped_by_client = CounterMetricFamily(
            "gotaxy_tunnel_client_datagrams_dropped",
            "Datagrams a udp tunnel dropped on the client, as the client reports them every 10 s, by reason: "
            "too_large (a reply over udpPacketSize), queue_full (the connection to the server or the local socket "
            "was backed up), no_slot (no socket for a new visitor), bandwidth (over transport.bandwidthLimit).",
            labels=labels + ["reason"],
        )
        limited = CounterMetricFamily(
            "gotaxy_tunnel_limit_refused",
            "Connections (udp: new visitors' datagrams) a tunnel's connection limits refused, by reason: "
            "max_connections, max_connections_per_ip, connection_rate (gotaxy.server.limits).",
            labels=labels + ["reason"],
        )
        meters = core.meters
        for (client, name), meter in sorted(meters.tunnels.items()):
            bytes_in, bytes_out = meter.totals()
            opened.add_metric([client, name], meter.opened)
            refused.add_metric([client, name], meter.refused)
            traffic.add_metric([client, name, "in"], bytes_in)
            traffic.add_metric([client, name, "out"], bytes_out)
            counts = meter.datagrams
            if counts is not None:
                datagrams.add_metric([client, name, "in"], counts.datagrams_in)
                datagrams.add_metric([client, name, "out"], counts.datagrams_out)
                for reason in ("too_large", "queue_full", "no_slot", "bandwidth"):
                    dropped.add_metric([client, name, reason], getattr(counts, reason))
                    dropped_by_client.add_metric([client, name, reason], getattr(counts, "client_" + reason))
            if meter.gate is not None:
                for reason, count in sorted(meter.gate.refused.items()):
                    limited.add_metric([client, name, reason], count)
        yield opened
        yield refused
        yield traffic
        yield datagrams
        yield dropped
        yield dropped_by_client
        yield limited

        front = core.fronts.get("http")
        if front is not None:
            # The HTTP front's refusals (``gotaxy.proxy.vhost``): each error page a visitor got, by reason.
            http_refused = CounterMetricFamily(
                "gotaxy_http_refusals", "HTTP requests the website front answered with an error page, by reason.",
                labels=["reason"],
            )
            for reason, count in sorted(front.refusals.items()):
                http_refused.add_metric([reason], count)
            yield http_refused
            tunnel_refused = CounterMetricFamily(
                "gotaxy_tunnel_http_refusals", "HTTP requests for a tunnel answered with an error page, by reason.",
                labels=labels + ["reason"],
            )
            for (client, name, reason), count in sorted(front.tunnel_refusals.items()):
                tunnel_refused.add_metric([client, name, reason], count)
            yield tunnel_refused

        https_front = core.fronts.get("https")
        if https_front is not None:
            # The HTTPS front's closed connections (``gotaxy.proxy.httpsfront``): no ClientHello, too slow, no name, unknown name.
            https_refused = CounterMetricFamily(
                "gotaxy_https_refusals", "Connections the HTTPS front closed before routing them, by reason.",
                labels=["reason"],
            )
            for reason, count in sorted(https_front.refusals.items()):
                https_refused.add_metric([reason], count)
            yield https_refused

        # Connections turned away before anything else (gotaxy.server.access): by listener and reason.
        access_refused = CounterMetricFamily(
            "gotaxy_access_refused",
            "Connections refused by the address rules (denied) or a ban (banned), by listener: control, "
            "webServer, console, tunnels.",
            labels=["listener", "reason"],
        )
        for (listener, reason), count in sorted(core.access.refused.items()):
            access_refused.add_metric([listener, reason], count)
        yield access_refused
        bans = GaugeMetricFamily("gotaxy_bans", "Addresses banned now, on every listener.")
        bans.add_metric([], len(core.access.in_force()))
        yield bans

        connections_open = GaugeMetricFamily("gotaxy_connections_open", "Public connections open now, all tunnels.")
        connections_open.add_metric([], sum(t.connections for t in tunnels.values()))
        yield connections_open
        connections = CounterMetricFamily("gotaxy_connections", "Public connections accepted, all tunnels.")
        connections.add_metric([], meters.server.opened)
        yield connections
        bytes_in, bytes_out, _, _ = core.traffic()
        server_bytes = CounterMetricFamily("gotaxy_bytes", "Bytes through all tunnels.", labels=["direction"])
        server_bytes.add_metric(["in"], bytes_in)
        server_bytes.add_metric(["out"], bytes_out)
        yield server_bytes

        auth = CounterMetricFamily("gotaxy_auth_failures", "Client logins refused (bad, expired or revoked token, or a refused client certificate).")
        auth.add_metric([], self._events.get(LOGIN_FAILED))
        yield auth
        if core.certificates is not None:  # transport.tls.trustedCaFile (gotaxy.server.certificates)
            refused = CounterMetricFamily("gotaxy_client_certificate_refusals",
                                          "Client log-ins refused for their certificate, by reason.", labels=["reason"])
            for reason, count in core.certificates.refusals.items():
                refused.add_metric([reason], count)
            yield refused
        operator_auth = CounterMetricFamily("gotaxy_operator_login_failures", "Failed operator log-ins (panel, console).")
        operator_auth.add_metric([], self._events.get(OPERATOR_LOGIN_FAILED))
        yield operator_auth
        events = CounterMetricFamily("gotaxy_events", "Server events by type.", labels=["type"])
        for kind, count in sorted(self._events.counts.items()):
            events.add_metric([kind], count)
        yield events

        errors = CounterMetricFamily(
            "gotaxy_errors",
            "Errors by kind: tunnel_refused (a tunnel could not open), connection_refused (stream limit), "
            "admission_refused (too many connections waiting to log in), notification_failed.",
            labels=["kind"],
        )
        errors.add_metric(["tunnel_refused"], self._events.get(TUNNEL_REFUSED))
        errors.add_metric(["connection_refused"], meters.server.refused)
        errors.add_metric(["admission_refused"], self._admission.refused if self._admission is not None else 0)
        errors.add_metric(["notification_failed"], self._failures.total if self._failures is not None else 0)
        yield errors

        targets = self._targets()
        if targets:
            failed = CounterMetricFamily(
                "gotaxy_notification_failures", "Notifications given up per target.", labels=["target"]
            )
            pending = GaugeMetricFamily("gotaxy_notifications_pending", "Notifications waiting per target.", labels=["target"])
            counts = self._failures.counts if self._failures is not None else {}
            for target in targets:
                failed.add_metric([target.label], counts.get(target.label, 0))
                pending.add_metric([target.label], target.pending)
            yield failed
            yield pending


class Metrics(Service):
    """The registry for one server, and what keeps it fed (event counts, RTT samples)."""

    name = "metrics"

    def __init__(self, core: Any, admission: Any = None, notifier: Any = None, reactor: Any = None) -> None:
        self.core = core
        self.registry = CollectorRegistry(auto_describe=False)
        self.events = EventCounts()
        self.rtt = Histogram(
            "gotaxy_heartbeat_rtt_seconds", "Heartbeat round-trip times, one observation per pong sampled.",
            buckets=RTT_BUCKETS, registry=self.registry,
        )
        self.sampler = RttSampler(core, self.rtt)
        failures = notifier.failures if notifier is not None else None
        self.collector = GotaxyCollector(
            core, self.events, admission, failures,
            targets=(lambda: list(notifier.targets)) if notifier is not None else (lambda: []),
        )
        self.registry.register(self.collector)
        self._sampling = LoopingCall(self.sampler.sample)
        self._sampling.clock = reactor if reactor is not None else core.reactor
        self._unsubscribe: List[Callable[[], None]] = []

    def startService(self) -> None:
        super().startService()
        # What this process recorded: /metrics of each server counts its own.
        self._unsubscribe = [self.core.events.subscribe(self.events, local_only=True)]
        self._sampling.start(self.core.config.heartbeat_interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._sampling.running:
            self._sampling.stop()

    def resource(self, exposure: Optional[str] = None, token: Optional[str] = None) -> "MetricsResource":
        """The ``/metrics`` resource; by default exposure and token come from the core's config."""
        config = self.core.config
        return MetricsResource(
            self.registry,
            exposure if exposure is not None else config.metrics.effective_exposure(),
            token if token is not None else config.metrics.token,
        )


class MetricsResource(Resource):
    """``GET /metrics``, guarded as ``exposure`` says: "off", "open" or "token"."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, exposure: str, token: Optional[str] = None) -> None:
        super().__init__()
        if exposure not in ("off", "open", "token"):
            raise ValueError(f"metrics exposure must be off, open or token, not {exposure!r}")
        if exposure == "token" and not token:
            raise ValueError("metrics exposure 'token' needs a token")
        self.registry = registry
        self.exposure = exposure
        self._expected = b"Bearer " + token.encode("utf-8") if token else None

    def __repr__(self) -> str:
        return f"<MetricsResource exposure={self.exposure}>"

    def apply(self, config: Any) -> List[Any]:
        """``metrics.exposure`` / ``metrics.token`` / ``enablePrometheus`` from a reload: the next request."""
        from gotaxy.server.reload import applied

        exposure, token = config.metrics.effective_exposure(), config.metrics.token
        expected = b"Bearer " + token.encode("utf-8") if token else None
        if (exposure, expected) == (self.exposure, self._expected):
            return []
        self.exposure, self._expected = exposure, expected
        return [applied("metrics.exposure / metrics.token / enablePrometheus", f"/metrics is {exposure}")]

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        if self.exposure == "off":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"metrics are turned off on this server; set metrics.exposure in server.toml\n"
        if self.exposure == "token":
            given = request.getHeader(b"authorization") or b""
            if isinstance(given, str):
                given = given.encode("utf-8")
            assert self._expected is not None
            if not hmac.compare_digest(given, self._expected):
                request.setResponseCode(401)
                request.setHeader(b"www-authenticate", b'Bearer realm="gotaxy-metrics"')
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"a bearer token is required: send 'Authorization: Bearer <metrics.token>'\n"
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else None)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(self.registry)  # type: ignore[no-any-return]
