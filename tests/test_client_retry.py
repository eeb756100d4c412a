"""
A tunnel the server refuses is asked for again with a capped, jittered
exponential backoff, on a fake clock; a server that announces
``tunnel_status`` is told when.  The health check flips on a fake clock too.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from gotaxy.client import health
from gotaxy.client.control import TUNNEL_RETRY_CAP, tunnel_retry_delay
from gotaxy.client.health import LocalHealthCheck
from gotaxy.config import TunnelSpec
from gotaxy.wire import FrameType
from tests.test_client_protocol import LOGIN_OK, Client

REFUSED = {"type": "tunnel_refused", "name": "web", "reason": "port 6000 is busy on the server"}


def test_backoff_doubles_from_one_second_to_the_cap_with_jitter() -> None:
    longest = [tunnel_retry_delay(n, rng=lambda: 1.0) for n in range(10)]
    assert longest == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert TUNNEL_RETRY_CAP == 60
    # Jitter: never less than half, so clients refused together spread out.
    assert [tunnel_retry_delay(n, rng=lambda: 0.0) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert tunnel_retry_delay(10_000, rng=lambda: 1.0) == 60


def controls(client: Client) -> List[Dict[str, Any]]:
    return [json.loads(p) for t, _, p in client.sent() if t == FrameType.CONTROL]


def opens(client: Client) -> int:
    return sum(1 for m in controls(client) if m["type"] == "tunnel_open")


def logged_in(features: List[str]) -> Client:
    client = Client()
    client.protocol.factory.rng = lambda: 1.0
    client.message(dict(LOGIN_OK, features=features))
    assert client.protocol.authenticated
    return client


def test_refused_tunnel_is_asked_for_again_after_a_growing_wait() -> None:
    client = logged_in(["tunnel_status"])
    clock = client.reactor
    assert opens(client) == 1
    for wait in (1, 2, 4, 8, 16, 32, 60, 60):
        client.message(REFUSED)
        retry = [m for m in controls(client) if m["type"] == "tunnel_retry"][-1]
        assert retry == {"type": "tunnel_retry", "name": "web", "retryIn": wait}
        before = opens(client)
        clock.advance(wait - 0.01)
        assert opens(client) == before  # not early
        clock.advance(0.02)
        assert opens(client) == before + 1
    # Up at last: the next refusal (after a restart of the port, say) starts from 1 s again.
    client.message({"type": "tunnel_up", "name": "web", "address": {"scheme": "tcp", "port": 6000}})
    client.message(REFUSED)
    assert [m for m in controls(client) if m["type"] == "tunnel_retry"][-1]["retryIn"] == 1


def test_an_older_server_is_not_sent_tunnel_retry_but_the_tunnel_is_retried() -> None:
    client = logged_in([])
    client.message(REFUSED)
    client.reactor.advance(1.01)
    assert opens(client) == 2
    assert not [m for m in controls(client) if m["type"] in ("tunnel_retry", "tunnel_health")]
    assert not client.protocol.disconnecting


def test_a_removed_tunnel_or_a_lost_connection_stops_the_retry() -> None:
    client = logged_in(["tunnel_status"])
    client.message(REFUSED)
    client.message({"type": "tunnel_remove", "name": "web"})
    client.reactor.advance(120)
    assert opens(client) == 1

    client = logged_in(["tunnel_status"])
    client.message(REFUSED)
    client.protocol.connectionLost(None)
    assert not client.reactor.getDelayedCalls() or all(
        not c.active() for c in client.reactor.getDelayedCalls() if c.func == client.protocol._retry
    )
    assert client.protocol.retries == {}


def test_health_check_reports_down_after_max_failed_and_up_at_the_first_pass(monkeypatch) -> None:
    answers: List[bool] = []

    class FakeEndpoint:
        def __init__(self, reactor: Any, host: str, port: int, timeout: float) -> None:
            assert (host, port, timeout) == ("127.0.0.1", 8080, 3.0)

        def connect(self, factory: Any) -> Any:
            if answers.pop(0):
                return succeed(None)
            return fail(ConnectionRefusedError())

    monkeypatch.setattr(health, "HostnameEndpoint", FakeEndpoint)
    clock = Clock()
    spec = TunnelSpec(name="web", local_port=8080, health_check_type="tcp", health_check_max_failed=3,
                      health_check_interval=10.0)
    changes: List[Any] = []
    check = LocalHealthCheck(clock, spec, lambda healthy, reason: changes.append((healthy, reason)))
    answers += [True, False, False, True, False, False, False, False, True]
    check.start()  # first probe at once: passes
    for _ in range(3):
        clock.advance(10)  # fail, fail, pass: two in a row are not enough
    assert changes == []
    for _ in range(3):
        clock.advance(10)
    assert changes == [(False, "local service 127.0.0.1:8080 not answering")]
    clock.advance(10)  # still failing: said once
    assert len(changes) == 1
    clock.advance(10)
    assert changes[-1] == (True, "")
    check.stop()
    assert not clock.getDelayedCalls()


def test_a_tunnel_with_a_health_check_tells_the_server_when_its_service_stops_answering(monkeypatch) -> None:
    answers = [False]

    class FakeEndpoint:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def connect(self, factory: Any) -> Any:
            return succeed(None) if answers[0] else fail(ConnectionRefusedError())

    monkeypatch.setattr(health, "HostnameEndpoint", FakeEndpoint)
    client = Client()
    spec = TunnelSpec(name="web", local_port=8080, health_check_type="tcp")
    client.protocol.tunnels = {"web": spec}
    client.protocol.config = client.protocol.config.__class__(token="gtx_test", tunnels=(spec,))
    client.message(dict(LOGIN_OK, features=["tunnel_status"]))
    client.message({"type": "tunnel_up", "name": "web", "address": {"scheme": "tcp", "port": 6000}})
    health_messages = [m for m in controls(client) if m["type"] == "tunnel_health"]
    assert health_messages == [{"type": "tunnel_health", "name": "web", "healthy": False}]
    answers[0] = True
    client.reactor.advance(10)
    assert [m for m in controls(client) if m["type"] == "tunnel_health"][-1]["healthy"] is True
    client.protocol.connectionLost(None)
    assert client.protocol.checks == {}
