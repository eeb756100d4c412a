"""
``/metrics``: a real server and client in-process, traffic sent through a
tunnel, and the scrape (over HTTP on loopback) parsed with
prometheus-client's own parser; plus exposure rules.  That the counters
survive a tunnel's restart is the traffic meters' (tests/test_traffic.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Dict, Tuple

import pytest
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from gotaxy import __version__
from gotaxy.server.core import LoginRefused
from gotaxy.server.metrics import MetricsResource
from prometheus_client import CollectorRegistry
from tests.inprocess import LiveSystem, echo_through, listen_echo, wait_until

TOKEN = "prom-s3cret-token"

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def temp_toml(test: unittest.TestCase) -> str:
    directory = tempfile.mkdtemp(prefix="gotaxy-test-")
    test.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "server.toml")


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class FakeSession:
    peer_address = "127.0.0.1:4242"
    lost = False
    client_version = "?"


class MetricsOverHTTP(unittest.TestCase):
    timeout = 30
    async def start(self) -> Any:
        config = temp_toml(self)
        with open(config, "w") as f:
            f.write(f'serverName = "edge-1"\nmetrics.exposure = "token"\nmetrics.token = "{TOKEN}"\n')
        live = await LiveSystem.start(
            self,
            server_args=["--config", config, "--heartbeat-interval", "0.1", "--heartbeat-timeout", "5"],
        )
        site = reactor.listenTCP(0, Site(live.server.metrics_resource), interface="127.0.0.1")
        self.addCleanup(site.stopListening)
        self.url = f"http://127.0.0.1:{site.getHost().port}/metrics"
        return live

    async def scrape(self, token: str = TOKEN) -> Samples:
        response = await treq.get(self.url, headers={"Authorization": f"Bearer {token}"}, persistent=False)
        assert response.code == 200, response.code
        assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4")
        return parse((await response.content()).decode())

    async def test_scrape_reflects_traffic_clients_and_failures(self) -> None:
        live = await self.start()
        before = await self.scrape()
        assert value(before, "gotaxy_clients_online") == 0
        assert value(before, "gotaxy_tunnels_up") == 0
        assert value(before, "gotaxy_server_info", version=__version__, server="edge-1") == 1

        echo = listen_echo(self)
        await live.start_client([f"echo=tcp:127.0.0.1:{echo}"])
        port = await live.wait_up("echo")
        sent = 0
        for size in (1000, 65536, 300000):
            payload = os.urandom(size)
            assert await echo_through(port, payload) == payload
            sent += size
        tunnel = live.core.tunnels[("alice", "echo")]
        await wait_until(lambda: tunnel.connections == 0 and tunnel.totals() == (sent, sent))
        # A client login with a bad token: counted as an auth failure.
        with pytest.raises(LoginRefused):
            await live.core.login(FakeSession(), {"token": "wrong", "user": "", "hostname": "x"})
        # At least one heartbeat round trip observed.
        await wait_until(lambda: _count(live) > 0, timeout=5)

        samples = await self.scrape()
        labels = dict(client="alice", tunnel="echo")
        assert value(samples, "gotaxy_clients_online") == 1
        assert value(samples, "gotaxy_tunnels_up") == 1
        assert value(samples, "gotaxy_tunnel_connections_total", **labels) == 3
        assert value(samples, "gotaxy_tunnel_connections_open", **labels) == 0
        assert value(samples, "gotaxy_connections_total") == 3
        assert value(samples, "gotaxy_connections_open") == 0
        assert value(samples, "gotaxy_tunnel_bytes_total", direction="in", **labels) == sent
        assert value(samples, "gotaxy_tunnel_bytes_total", direction="out", **labels) == sent
        assert value(samples, "gotaxy_bytes_total", direction="in") == sent
        assert value(samples, "gotaxy_auth_failures_total") == 1
        assert value(samples, "gotaxy_events_total", type="login.failed") == 1
        assert value(samples, "gotaxy_events_total", type="tunnel.opened") == 1
        assert value(samples, "gotaxy_errors_total", kind="tunnel_refused") == 0
        assert value(samples, "gotaxy_heartbeat_rtt_seconds_count") >= 1
        assert value(samples, "gotaxy_heartbeat_rtt_seconds_bucket", le="+Inf") >= 1
        assert ("gotaxy_client_heartbeat_rtt_seconds", (("client", "alice"),)) in samples

        # The tunnel closes and reopens: its counters carry on, never backwards.
        session = live.core.sessions["alice"]
        await live.core.close_and_record(live.core.tunnels[("alice", "echo")], "test")
        samples = await self.scrape()
        assert value(samples, "gotaxy_tunnels_up") == 0
        assert value(samples, "gotaxy_tunnel_bytes_total", direction="in", **labels) == sent
        assert session is live.core.sessions["alice"]

        # A ban, and a connection it turned away: counted by listener and reason.
        await live.core.access.ban("203.0.113.9", "test", seconds=60)
        assert not live.core.access.admits("console", "203.0.113.9")
        samples = await self.scrape()
        assert value(samples, "gotaxy_bans") == 1
        assert value(samples, "gotaxy_access_refused_total", listener="console", reason="banned") == 1

    async def test_token_is_required(self) -> None:
        await self.start()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = await treq.get(self.url, headers=headers, persistent=False)
            assert response.code == 401
            assert response.headers.getRawHeaders("www-authenticate") == ['Bearer realm="gotaxy-metrics"']
            body = await response.content()
            assert b"gotaxy_" not in body


def _count(live: Any) -> float:
    for metric in live.server.metrics.rtt.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0


def render(resource: MetricsResource, headers: Dict[bytes, bytes] = {}) -> Tuple[int, bytes, DummyRequest]:
    request = DummyRequest([b"metrics"])
    for name, header in headers.items():
        request.requestHeaders.setRawHeaders(name, [header])
    body = resource.render_GET(request)
    return request.responseCode or 200, body, request


class TestExposure:
    def test_off_is_404(self) -> None:
        code, body, _ = render(MetricsResource(CollectorRegistry(), "off"))
        assert code == 404 and b"metrics.exposure" in body

    def test_open_needs_no_token(self) -> None:
        code, body, request = render(MetricsResource(CollectorRegistry(), "open"))
        assert code == 200
        assert request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")

    def test_token(self) -> None:
        resource = MetricsResource(CollectorRegistry(), "token", "abc")
        assert render(resource)[0] == 401
        assert render(resource, {b"authorization": b"Bearer abd"})[0] == 401
        assert render(resource, {b"authorization": b"Bearer abc"})[0] == 200
        assert "abc" not in repr(resource)

    def test_openmetrics_on_request(self) -> None:
        code, body, request = render(
            MetricsResource(CollectorRegistry(), "open"), {b"accept": b"application/openmetrics-text; version=1.0.0"}
        )
        assert request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"application/openmetrics-text")
        assert body.endswith(b"# EOF\n")

    def test_token_exposure_without_token_is_refused(self) -> None:
        with pytest.raises(ValueError):
            MetricsResource(CollectorRegistry(), "token")
