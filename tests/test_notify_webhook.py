"""
Webhook delivery against real HTTP receivers on loopback: signatures that
verify, retries after 500s, a receiver that never answers (which must not
slow the tunnels), bounded queues, and failures recorded in the store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tempfile
import time
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from gotaxy.config import WebhookSpec
from gotaxy.events import Event
from gotaxy.notify import FailureLog
from gotaxy.notify.webhook import WebhookTarget
from tests.inprocess import LiveSystem, echo_through, listen_echo, wait_until


def temp_toml(test: unittest.TestCase) -> str:
    directory = tempfile.mkdtemp(prefix="gotaxy-test-")
    test.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "server.toml")


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """The receiver-side check documented in docs/notifications.md."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


class Receiver(Resource):
    """Answers POSTs with the codes in ``script`` (then 200), recording each request."""

    isLeaf = True

    def __init__(self, script: List[int] = ()) -> None:
        super().__init__()
        self.script = list(script)
        self.requests: List[Any] = []

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        self.requests.append((request.uri, dict((k.decode(), v[0].decode()) for k, v in request.requestHeaders.getAllRawHeaders()), body))
        request.setResponseCode(self.script.pop(0) if self.script else 200)
        return b"ok"


class BlackHole(Protocol):
    """Accepts the connection and never answers."""

    def dataReceived(self, data: bytes) -> None:
        pass


def listen(test: unittest.TestCase, factory: Any) -> int:
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return port.getHost().port


def event(kind: str = "client.disconnected", client: str = "alice", detail: str = "heartbeat timeout") -> Event:
    return Event(type=kind, at=time.time(), client=client, address="127.0.0.1:1", detail=detail)


class WebhookTest(unittest.TestCase):
    def target(self, url: str, **kw: Any) -> WebhookTarget:
        delay = kw.pop("first_retry_delay", 0.05)
        spec = WebhookSpec(url=url, **kw)
        self.failures = FailureLog(reactor)
        target = WebhookTarget(spec, "edge-1", reactor, self.failures, first_retry_delay=delay)
        self.addCleanup(target.stop)
        return target

    async def test_signed_delivery_verifies(self) -> None:
        receiver = Receiver()
        port = listen(self, Site(receiver))
        target = self.target(f"http://127.0.0.1:{port}/hook", secret="s3cret")
        target.deliver(event())
        await wait_until(lambda: target.delivered == 1)
        (uri, headers, body), = receiver.requests
        assert uri == b"/hook"
        assert verify(b"s3cret", body, headers["X-Gotaxy-Signature"])
        assert not verify(b"wrong", body, headers["X-Gotaxy-Signature"])
        data = json.loads(body)
        assert (data["event"], data["server"], data["client"], data["detail"]) == (
            "client.disconnected", "edge-1", "alice", "heartbeat timeout"
        )
        assert headers["Content-Type"].startswith("application/json")
        assert self.failures.total == 0

    async def test_retries_after_500_until_the_receiver_recovers(self) -> None:
        receiver = Receiver([500, 503, 500])
        port = listen(self, Site(receiver))
        target = self.target(f"http://127.0.0.1:{port}/", secret="k")
        target.deliver(event())
        target.deliver(event("tunnel.closed"))
        await wait_until(lambda: target.delivered == 2)
        assert len(receiver.requests) == 5
        kinds = [json.loads(body)["event"] for _, _, body in receiver.requests]
        assert kinds == ["client.disconnected"] * 4 + ["tunnel.closed"]  # in order, one at a time
        assert all(verify(b"k", body, h["X-Gotaxy-Signature"]) for _, h, body in receiver.requests)
        assert self.failures.total == 0 and target.attempts == 5

    async def test_gives_up_after_retry_for_and_records_it(self) -> None:
        receiver = Receiver([500] * 100)
        port = listen(self, Site(receiver))
        target = self.target(f"http://127.0.0.1:{port}/", retry_for=0.5, name="ops")
        target.deliver(event())
        await wait_until(lambda: self.failures.total == 1)
        (failure,) = self.failures.recent
        assert failure.target == "ops" and failure.event == "client.disconnected"
        assert failure.reason.startswith("gave up after ") and failure.reason.endswith("HTTP 500")
        assert 2 <= len(receiver.requests) <= 6

    async def test_client_errors_are_not_retried(self) -> None:
        receiver = Receiver([404])
        port = listen(self, Site(receiver))
        target = self.target(f"http://127.0.0.1:{port}/")
        target.deliver(event())
        await wait_until(lambda: self.failures.total == 1)
        assert len(receiver.requests) == 1
        assert "HTTP 404" in self.failures.recent[0].reason

    async def test_receiver_that_never_answers_times_out(self) -> None:
        port = listen(self, Factory.forProtocol(BlackHole))
        target = self.target(f"http://127.0.0.1:{port}/", timeout=0.2, retry_for=0.1)
        target.deliver(event())
        await wait_until(lambda: self.failures.total == 1, timeout=5)
        assert "no answer within 0.2 s" in self.failures.recent[0].reason

    async def test_queue_is_bounded_and_drops_the_oldest(self) -> None:
        port = listen(self, Factory.forProtocol(BlackHole))
        target = self.target(f"http://127.0.0.1:{port}/", timeout=30, max_pending=2)
        for n in range(5):
            target.deliver(event(detail=f"#{n}"))
        assert target.pending == 3  # one in flight, two waiting
        reasons = [f.reason for f in self.failures.recent]
        assert len(reasons) == 2 and all(r.startswith("dropped: more than 2 deliveries") for r in reasons)

    async def test_chat_format_reaches_the_receiver(self) -> None:
        receiver = Receiver()
        port = listen(self, Site(receiver))
        target = self.target(f"http://127.0.0.1:{port}/robot/send?access_token=T", format="dingtalk", secret="SEC")
        target.deliver(event())
        await wait_until(lambda: target.delivered == 1)
        (uri, _, body), = receiver.requests
        assert uri.startswith(b"/robot/send?access_token=T&timestamp=") and b"&sign=" in uri
        assert json.loads(body)["text"]["content"] == "[edge-1] client alice offline: heartbeat timeout"


class DeadReceiverDoesNotSlowTunnels(unittest.TestCase):
    async def test_tunnel_traffic_flows_while_a_webhook_hangs(self) -> None:
        hole = listen(self, Factory.forProtocol(BlackHole))
        good = Receiver()
        good_port = listen(self, Site(good))
        config = temp_toml(self)
        with open(config, "w") as f:
            f.write(
                f'serverName = "edge-1"\n'
                f'[[webhooks]]\nname = "dead"\nurl = "http://127.0.0.1:{hole}/"\ntimeout = 30\n'
                f'[[webhooks]]\nname = "alive"\nurl = "http://127.0.0.1:{good_port}/"\nevents = ["tunnel.*"]\n'
            )
        echo = listen_echo(self)
        live = await LiveSystem.start(self, tunnels=[f"echo=tcp:127.0.0.1:{echo}"], server_args=["--config", config])
        port = await live.wait_up("echo")
        dead, alive = live.server.notifier.targets
        await wait_until(lambda: alive.delivered >= 1)  # tunnel.opened reached the live receiver
        assert dead.pending >= 1 and dead.delivered == 0  # the dead one is still waiting for an answer
        started = time.monotonic()
        for _ in range(20):
            payload = os.urandom(64 * 1024)
            assert await echo_through(port, payload) == payload
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"20 echoes took {elapsed:.1f} s"
        assert dead.delivered == 0 and dead.pending >= 1
        assert json.loads(good.requests[0][2])["event"] == "tunnel.opened"


class FlapsEndToEnd(unittest.TestCase):
    async def test_a_client_that_reconnects_within_grace_sends_nothing(self) -> None:
        receiver = Receiver()
        port = listen(self, Site(receiver))
        config = temp_toml(self)
        with open(config, "w") as f:
            f.write(
                f'notify.flapGrace = 5\n'
                f'[[webhooks]]\nurl = "http://127.0.0.1:{port}/"\nevents = ["client.*"]\n'
            )
        echo = listen_echo(self)
        live = await LiveSystem.start(self, tunnels=[f"echo=tcp:127.0.0.1:{echo}"], server_args=["--config", config])
        await live.wait_up("echo")
        (target,) = live.server.notifier.targets
        await wait_until(lambda: target.delivered == 1)  # client.connected
        first = live.core.sessions["alice"]
        first.transport.abortConnection()  # the network drops; the client comes back within 1-2 s
        await wait_until(lambda: live.core.sessions.get("alice") not in (None, first))
        await live.wait_up("echo")
        assert live.server.notifier.flaps.suppressed == 1
        # A real outage: the client goes away for good.
        await live.client.stopService()
        await wait_until(lambda: "alice" not in live.core.sessions)
        assert target.delivered == 1
        await wait_until(lambda: target.delivered == 2, timeout=10)
        kinds = [json.loads(body)["event"] for _, _, body in receiver.requests]
        assert kinds == ["client.connected", "client.disconnected"]
