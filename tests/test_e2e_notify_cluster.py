"""
Webhooks fire once per event across a cluster (``gotaxy.notify.once``):
two real ``twistd gotaxy-server`` nodes on one real PostgreSQL
(tests/cluster.py), both with the same ``[[webhooks]]``, and one webhook
receiver on loopback.  A client's connect and disconnect reach the receiver
once each, not once per node; and when the node that recorded the
disconnect is killed (``kill -9``) while the receiver is failing, the other
node sends it, once, with the same ``X-Gotaxy-Event-Id``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, List, Tuple

import pytest

from gotaxy.server.lease import LEASE
from gotaxy.store import Store
from tests.cluster import wait_until
from tests.e2e import tunnel_port

#: Seconds in which another node would have sent a duplicate: its outbox tail
#: reads every 0.5 s, its orphan search every 1 s; four times that and more.
DUPLICATE_WINDOW = 6.0


class Receiver:
    """A webhook receiver: answers ``status`` (204, or 500 to make senders retry) and notes every request."""

    def __init__(self) -> None:
        self.status = 204
        self.requests: List[Tuple[int, dict, dict]] = []  #: (status answered, headers, document)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.status
                with receiver.lock:
                    receiver.requests.append((status, dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def accepted(self, event: str) -> List[dict]:
        """The deliveries of ``event`` answered with success: what a receiver acts on."""
        with self.lock:
            return [dict(headers) for status, headers, doc in self.requests if status < 300 and doc["event"] == event]

    def attempts(self, event: str) -> List[dict]:
        with self.lock:
            return [dict(headers) for _, headers, doc in self.requests if doc["event"] == event]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.close()


def config(tmp_path: Any, receiver: Receiver) -> str:
    path = tmp_path / "cluster-server.toml"
    path.write_text(
        "[notify]\nflapGrace = 0\n\n"  # a stopped client is offline at once: no grace period to wait out
        f'[[webhooks]]\nname = "ops"\nurl = "{receiver.url}"\nevents = ["client.*"]\nretryFor = 600\n'
    )
    return str(path)


def stored(url: str, event_type: str) -> List[dict]:
    store = Store(url)
    try:
        return [dict(row) for row in store.db["events"].find(type=event_type, order_by="id")]
    finally:
        store.close()


def test_a_client_s_connect_and_disconnect_fire_the_webhook_once_each_not_once_per_node(
        cluster, echo, receiver, tmp_path):
    nodes = cluster(2, "--config", config(tmp_path, receiver))
    a, b = nodes["a"], nodes["b"]
    client = nodes.client(a, f"echo=tcp:127.0.0.1:{echo.port}")
    tunnel_port(client, "echo")
    wait_until(lambda: receiver.accepted("client.connected"), what="the connect's webhook")
    client.stop()
    wait_until(lambda: receiver.accepted("client.disconnected"), what="the disconnect's webhook")
    deadline = time.monotonic() + DUPLICATE_WINDOW
    while time.monotonic() < deadline:  # b heard both events too: it must not send them
        assert len(receiver.accepted("client.connected")) == 1 and len(receiver.accepted("client.disconnected")) == 1
        time.sleep(0.1)
    for kind in ("client.connected", "client.disconnected"):
        (row,) = stored(nodes.url, kind)
        # Recorded and sent by a, marked done; the id the receiver saw is the row's.
        assert row["node"] == "a" and row["notify_node"] is None and row["notified"] is not None
        (headers,) = receiver.accepted(kind)
        assert headers["X-Gotaxy-Event-Id"] == str(row["id"])
    assert b.running()


def test_a_disconnect_whose_node_is_killed_before_sending_it_is_sent_once_by_the_other(
        cluster, echo, receiver, tmp_path):
    nodes = cluster(2, "--config", config(tmp_path, receiver))
    a, b = nodes["a"], nodes["b"]
    client = nodes.client(a, f"echo=tcp:127.0.0.1:{echo.port}")
    tunnel_port(client, "echo")
    wait_until(lambda: receiver.accepted("client.connected"), what="the connect's webhook")
    receiver.status = 500  # the receiver is down: a keeps retrying the disconnect
    client.stop()
    wait_until(lambda: receiver.attempts("client.disconnected"), what="a's first try of the disconnect")
    (row,) = stored(nodes.url, "client.disconnected")
    assert row["node"] == "a" and row["notified"] is None
    a.kill()
    killed = time.monotonic()
    receiver.status = 204  # back: whoever sends now is heard
    # a's lease runs out LEASE seconds after its last renewal; b takes the event over within a second of that.
    wait_until(lambda: receiver.accepted("client.disconnected"), timeout=LEASE + 30,
               what="b sending the disconnect a left unsent")
    taken_over_after = time.monotonic() - killed
    deadline = time.monotonic() + DUPLICATE_WINDOW
    while time.monotonic() < deadline:
        assert len(receiver.accepted("client.disconnected")) == 1
        time.sleep(0.1)
    (headers,) = receiver.accepted("client.disconnected")
    assert {h["X-Gotaxy-Event-Id"] for h in receiver.attempts("client.disconnected")} == {str(row["id"])}
    (row,) = stored(nodes.url, "client.disconnected")
    assert row["notify_node"] == "b" and row["notified"] is not None
    assert len(receiver.accepted("client.connected")) == 1
    print(f"disconnect sent by b {taken_over_after:.1f} s after a was killed (lease {LEASE:g} s)")
