"""
Status and traffic across real processes (issue 16): two ``twistd
gotaxy-server`` nodes on one PostgreSQL database, a client on node a
pushing bytes through its tunnel.  Node b's console ``status`` and REST
API count the client and tunnel a holds in the totals, with a breakdown by
node, and show the tunnel's rate (from a's history samples, taken every
second here) where it showed 0.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading

import pytest

from tests.cluster import wait_until
from tests.e2e import tunnel_port

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (openssh-client)")


class Pusher:
    """A thread that keeps sending bytes through a tunnel to the echo service (and reads them back)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.stopping = threading.Event()
        self.echoed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        chunk = b"x" * 65536
        try:
            while not self.stopping.is_set():
                self.sock.sendall(chunk)
                got = 0
                while got < len(chunk):
                    data = self.sock.recv(len(chunk) - got)
                    if not data:
                        return
                    got += len(data)
                self.echoed += got
        except OSError:
            return

    def stop(self) -> None:
        self.stopping.set()
        self.sock.close()
        self.thread.join(10)


def test_b_status_and_api_count_a_s_client_tunnel_and_traffic(cluster, echo, tmp_path):
    config = tmp_path / "server.toml"
    config.write_text("[history]\nsampleInterval = 1\n")
    nodes = cluster(2, "--config", str(config))
    a, b = nodes["a"], nodes["b"]
    client = nodes.client(a, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    pusher = Pusher(port)
    try:
        wait_until(lambda: pusher.echoed > 0, 20, "bytes echoed through the tunnel on a")

        # b's REST API: the tunnel a holds, with a's rate of it (it showed 0 B/s on every node but a).
        seen: list = []

        def b_tunnel_rate() -> bool:
            [tunnel] = b.api.get("/tunnels")["tunnels"]
            seen.append(tunnel)
            return tunnel["node"] == "a" and tunnel["rate_in"] > 0

        wait_until(b_tunnel_rate, 30, "b's REST API showing the rate of a's tunnel", interval=0.2)
        assert seen[-1]["traffic_at"] is not None, seen[-1]

        # b's status (REST): cluster-wide totals and the breakdown by node.
        statuses: list = []

        def b_status() -> bool:
            statuses.append(b.api.get("/status"))
            return statuses[-1]["rate_in"] > 0

        wait_until(b_status, 30, "b's status counting a's traffic", interval=0.2)
        status = statuses[-1]
        assert (status["clients_online"], status["tunnels_up"]) == (1, 1), status  # it said 0 and 0 on b
        by_node = {n["node"]: n for n in status["nodes"]}
        assert set(by_node) == {"a", "b"}, status
        assert (by_node["a"]["clients"], by_node["a"]["tunnels_up"], by_node["a"]["here"]) == (["default"], 1, False)
        assert by_node["a"]["rate_in"] > 0
        assert (by_node["b"]["clients"], by_node["b"]["tunnels_up"], by_node["b"]["here"]) == ([], 0, True)

        # b's console: the same, as ``status`` prints it, and as JSON.
        text = b.console.ok("status")
        print("\n" + text)
        assert re.search(r"^clients +1 online on all nodes, 1 known$", text, re.M), text
        assert re.search(r"^tunnels +1 up on all nodes, 1 defined$", text, re.M), text
        assert re.search(r"^nodes +2 up, 2 known$", text, re.M), text
        assert re.search(r"^a +up +1 +1 ", text, re.M), text
        assert re.search(r"^\* b +up +0 +0 ", text, re.M), text
        assert re.search(r"^rate +in \S+ \S+, out \S+ \S+ \(sampled on a at ", b.console.ok("tunnel", "default/echo"),
                         re.M)
        as_json = json.loads(b.console.ok("status", "--json"))
        assert (as_json["clients_online"], as_json["tunnels_up"], len(as_json["nodes"])) == (1, 1, 2), as_json

        # a, asked the same: the same totals (its own live).
        status_a = a.api.get("/status")
        assert (status_a["clients_online"], status_a["tunnels_up"]) == (1, 1), status_a
    finally:
        pusher.stop()
