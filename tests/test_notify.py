"""
Notifications without a network: flap suppression on a fake clock, event
filters, payload formats and signatures, the notifier's fan-out, and the
failure log in a real store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import tempfile
from typing import List
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet.task import Clock
from twisted.trial import unittest

from gotaxy.config import ServerConfig, WebhookSpec, replace
from gotaxy.events import Event, EventBus
from gotaxy.notify import EventFilter, FailureLog, FlapSuppressor, Notifier, build_notifier, describe, document, render, sign
from gotaxy.notify.webhook import WebhookTarget
from gotaxy.store import Store, ThreadedStore, default_url


def ev(kind: str, at: float = 0.0, client: str = "alice", tunnel: str = None, detail: str = None) -> Event:
    return Event(type=kind, at=at, client=client, tunnel=tunnel, address="192.0.2.1:5000", detail=detail)


class TestFlapSuppression:
    def setup_method(self) -> None:
        self.clock = Clock()
        self.out: List[Event] = []
        self.flaps = FlapSuppressor(10.0, self.clock, self.out.append)

    def kinds(self) -> List[str]:
        return [e.type for e in self.out]

    def test_reconnect_within_grace_produces_no_notification(self) -> None:
        self.flaps(ev("client.connected"))
        self.flaps(ev("tunnel.opened", tunnel="ssh"))
        assert self.kinds() == ["client.connected", "tunnel.opened"]
        self.out.clear()
        self.flaps(ev("client.disconnected", detail="connection lost"))
        self.clock.advance(9.9)
        self.flaps(ev("client.connected"))
        self.flaps(ev("tunnel.opened", tunnel="ssh"))
        self.clock.advance(60)
        assert self.out == []
        assert self.flaps.suppressed == 1
        assert self.clock.getDelayedCalls() == []

    def test_offline_longer_than_grace_is_delivered_once_after_grace(self) -> None:
        offline = ev("client.disconnected", at=5.0, detail="heartbeat timeout: nothing heard for 30 s")
        self.flaps(offline)
        self.clock.advance(9.9)
        assert self.out == []
        self.clock.advance(0.2)
        assert self.out == [offline]
        self.flaps(ev("client.connected"))
        self.flaps(ev("tunnel.opened", tunnel="ssh"))
        assert self.kinds() == ["client.disconnected", "client.connected", "tunnel.opened"]

    def test_replaced_connection_is_a_flap(self) -> None:
        # What ServerCore publishes when a client reconnects before the old connection died.
        self.flaps(ev("client.disconnected", detail="replaced by a new connection"))
        self.flaps(ev("client.replaced", detail="replaced by a new connection"))
        self.flaps(ev("client.connected"))
        self.clock.advance(30)
        assert self.out == []

    def test_new_tunnel_after_a_flap_is_delivered(self) -> None:
        self.flaps(ev("tunnel.opened", tunnel="ssh"))
        self.flaps(ev("client.disconnected"))
        self.flaps(ev("client.connected"))
        self.flaps(ev("tunnel.opened", tunnel="ssh"))
        self.flaps(ev("tunnel.opened", tunnel="web"))
        assert [(e.type, e.tunnel) for e in self.out] == [("tunnel.opened", "ssh"), ("tunnel.opened", "web")]

    def test_other_clients_and_events_pass_at_once(self) -> None:
        self.flaps(ev("client.disconnected", client="alice"))
        self.flaps(ev("client.connected", client="bob"))
        self.flaps(ev("login.failed", client=None, detail="invalid token"))
        self.flaps(ev("tunnel.refused", client="alice", tunnel="db", detail="port 22 is not allowed"))
        assert self.kinds() == ["client.connected", "login.failed", "tunnel.refused"]
        self.clock.advance(10)
        assert self.kinds()[-1] == "client.disconnected"

    def test_zero_grace_turns_it_off(self) -> None:
        flaps = FlapSuppressor(0.0, self.clock, self.out.append)
        flaps(ev("client.disconnected"))
        flaps(ev("client.connected"))
        assert self.kinds() == ["client.disconnected", "client.connected"]

    def test_stop_cancels_timers(self) -> None:
        self.flaps(ev("client.disconnected"))
        assert self.flaps.holding == 1
        self.flaps.stop()
        assert self.clock.getDelayedCalls() == []
        self.clock.advance(20)
        assert self.out == []


class TestEventFilter:
    @pytest.mark.parametrize(
        "patterns, kind, expected",
        [
            (["*"], "client.connected", True),
            (["client.disconnected"], "client.disconnected", True),
            (["client.disconnected"], "client.connected", False),
            (["tunnel.*"], "tunnel.refused", True),
            (["tunnel."], "tunnel.closed", True),
            (["tunnel.*"], "token.revoked", False),
            (["login.failed", "token.*"], "token.revoked", True),
        ],
    )
    def test_matches(self, patterns, kind, expected) -> None:
        assert EventFilter(patterns).matches(kind) is expected


class TestPayload:
    event = Event(
        type="client.disconnected", at=1795647600.0, client="alice", address="198.51.100.7:50312",
        detail="heartbeat timeout: nothing heard for 30 s",
    )

    def test_generic_document(self) -> None:
        url, body, headers = render(self.event, "edge-1", "https://example.org/hook", "json", None, 0)
        assert url == "https://example.org/hook"
        data = json.loads(body)
        assert data == document(self.event, "edge-1")
        assert data["event"] == "client.disconnected"
        assert data["time"] == "2026-11-25T23:00:00Z"
        assert data["server"] == "edge-1"
        assert data["client"] == "alice" and data["tunnel"] is None
        assert data["text"] == "[edge-1] client alice offline: heartbeat timeout: nothing heard for 30 s"
        assert "X-Gotaxy-Signature" not in headers
        assert headers["X-Gotaxy-Event"] == "client.disconnected"

    def test_signature_is_hmac_sha256_of_the_body(self) -> None:
        _, body, headers = render(self.event, "edge-1", "https://example.org/hook", "json", "s3cret", 0)
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["X-Gotaxy-Signature"] == expected == sign("s3cret", body)

    def test_slack(self) -> None:
        _, body, _ = render(self.event, "edge-1", "https://hooks.slack.com/services/T/B/X", "slack", None, 0)
        assert json.loads(body) == {"text": describe(self.event, "edge-1")}

    def test_dingtalk_signs_the_url(self) -> None:
        url, body, headers = render(
            self.event, "edge-1", "https://oapi.dingtalk.com/robot/send?access_token=T", "dingtalk", "SEC", 1700000000.5
        )
        assert json.loads(body) == {"msgtype": "text", "text": {"content": describe(self.event, "edge-1")}}
        query = parse_qs(urlsplit(url).query)
        assert query["access_token"] == ["T"] and query["timestamp"] == ["1700000000500"]
        mac = hmac.new(b"SEC", b"1700000000500\nSEC", hashlib.sha256).digest()
        assert query["sign"] == [base64.b64encode(mac).decode()]
        assert "X-Gotaxy-Signature" not in headers

    def test_feishu_signs_the_body(self) -> None:
        _, body, _ = render(self.event, "edge-1", "https://open.feishu.cn/open-apis/bot/v2/hook/X", "feishu", "SEC", 1700000000.5)
        data = json.loads(body)
        assert data["msg_type"] == "text" and data["content"] == {"text": describe(self.event, "edge-1")}
        assert data["timestamp"] == "1700000000"
        mac = hmac.new(b"1700000000\nSEC", b"", hashlib.sha256).digest()
        assert data["sign"] == base64.b64encode(mac).decode()

    def test_unknown_event_types_are_described_generically(self) -> None:
        text = describe(Event(type="something.new", at=0, client="bob", detail="x"), "s")
        assert text == "[s] something.new client=bob detail=x"


class RecordingTarget:
    def __init__(self, patterns=("*",)) -> None:
        self.filter = EventFilter(patterns)
        self.got: List[Event] = []
        self.label = "recording"
        self.pending = 0

    def wants(self, event: Event) -> bool:
        return self.filter.matches(event.type)

    def deliver(self, event: Event) -> None:
        self.got.append(event)

    def stop(self) -> None:
        pass


class Exploding(RecordingTarget):
    def deliver(self, event: Event) -> None:
        raise RuntimeError("boom")


class TestNotifier:
    def test_fans_out_through_flap_suppression_and_filters(self) -> None:
        clock = Clock()
        bus = EventBus()
        everything, offline_only, broken = RecordingTarget(), RecordingTarget(["client.disconnected"]), Exploding()
        notifier = Notifier(bus, [broken, everything, offline_only], 10.0, clock, FailureLog(clock))
        notifier.startService()
        bus.publish(ev("client.connected"))
        bus.publish(ev("client.disconnected", detail="connection lost"))
        clock.advance(3)
        bus.publish(ev("client.connected"))  # a flap: nothing
        bus.publish(ev("client.disconnected", detail="heartbeat timeout"))
        clock.advance(10)
        assert [e.type for e in everything.got] == ["client.connected", "client.disconnected"]
        assert [e.detail for e in offline_only.got] == ["heartbeat timeout"]
        notifier.stopService()
        bus.publish(ev("client.connected"))
        assert len(everything.got) == 2  # unsubscribed

    def test_build_notifier_from_config(self) -> None:
        config = ServerConfig(
            server_name="edge-1",
            webhooks=[WebhookSpec(url="https://example.org/a?token=x", name="ops"), WebhookSpec(url="http://hooks.example.net/b")],
        )
        config = replace(config, {"notify.flap_grace": 3.0})
        notifier = build_notifier(config, EventBus(), Clock(), http=object())
        assert [t.label for t in notifier.targets] == ["ops", "webhook #2 (hooks.example.net)"]
        assert notifier.flaps.grace == 3.0
        assert all(isinstance(t, WebhookTarget) for t in notifier.targets)
        assert "token=x" not in repr(notifier.targets[0]) and "token=x" not in repr(config)


class TestFailureLog(unittest.TestCase):
    async def test_failures_are_counted_and_stored_in_batches(self) -> None:
        from twisted.internet import reactor

        directory = tempfile.mkdtemp(prefix="gotaxy-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        store = ThreadedStore(Store(default_url(directory)), reactor)
        store.start()
        self.addCleanup(store.stop)
        failures = FailureLog(reactor, store)
        for n in range(3):
            failures.record("ops", "client.disconnected", f"HTTP 500 #{n}")
        assert failures.counts == {"ops": 3} and failures.total == 3
        assert [f.reason for f in failures.recent] == ["HTTP 500 #0", "HTTP 500 #1", "HTTP 500 #2"]
        await failures.flush()
        stored = await failures.stored()
        assert [(f.target, f.event, f.reason) for f in stored] == [
            ("ops", "client.disconnected", "HTTP 500 #2"),
            ("ops", "client.disconnected", "HTTP 500 #1"),
            ("ops", "client.disconnected", "HTTP 500 #0"),
        ]
