"""
The nodes view across real processes (issue 16): three ``twistd
gotaxy-server`` nodes on one PostgreSQL database, a client on node a.  The
console (real OpenSSH ``ssh``) and the REST API of the other nodes show
every node, the client online on a and its tunnel up on a (it showed
"down" on any node but its holder); once a is killed and its lease runs
out (``cluster.leaseSeconds`` 6 here), they show a down and its tunnel not up.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from tests.cluster import wait_until
from tests.e2e import echo_once, tunnel_port

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (openssh-client)")


def test_every_node_shows_every_node_and_who_holds_each_client_and_tunnel(cluster, echo, tmp_path):
    config = tmp_path / "server.toml"
    config.write_text("[cluster]\nleaseSeconds = 6\n")  # a's lease runs out 6 s after its kill, not 30
    nodes = cluster(3, "--config", str(config))
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    client = nodes.client(a, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    assert echo_once(port, b"hello") == b"hello"

    # b's console: the nodes table, and the client and tunnel with their node.
    table = b.console.ok("nodes")
    print("\n" + table)
    assert re.search(r"^a +up +1 +1 ", table, re.M), table
    assert re.search(r"^\* b +up +0 +0 ", table, re.M), table
    assert re.search(r"^c +up +0 +0 ", table, re.M), table
    assert re.search(r"^default +online +a ", b.console.ok("clients"), re.M)
    [tunnel] = json.loads(b.console.ok("tunnels", "--json"))
    assert (tunnel["status"], tunnel["node"]) == ("up", "a"), tunnel
    assert re.search(r"^node +a$", b.console.ok("tunnel", "default/echo"), re.M)

    # c's REST API: the same.
    views = {n["node"]: n for n in c.api.get("/nodes")["nodes"]}
    assert set(views) == {"a", "b", "c"}, views
    assert [n for n, v in views.items() if v["here"]] == ["c"]
    assert (views["a"]["state"], views["a"]["clients"], views["a"]["tunnels_up"]) == ("up", ["default"], 1)
    assert all(views[n]["state"] == "up" and views[n]["clients"] == [] for n in ("b", "c"))
    [tunnel] = c.api.get("/tunnels")["tunnels"]
    assert (tunnel["status"], tunnel["node"]) == ("up", "a"), tunnel
    [seen] = c.api.get("/clients")["clients"]
    assert (seen["online"], seen["node"]) == (True, "a"), seen

    # a killed: within its lease (6 s) and a renewal, b shows it down (or gone, once released).
    a.kill()
    begun = time.monotonic()

    def a_not_up() -> bool:
        return {n["node"]: n["state"] for n in json.loads(b.console.ok("nodes", "--json"))}.get("a") != "up"

    wait_until(a_not_up, 60, "b showing node a not up after it was killed", interval=1)
    print(f"node a shown not up on b {time.monotonic() - begun:.1f} s after kill -9 (lease 6 s)")
    [tunnel] = c.api.get("/tunnels")["tunnels"]
    assert tunnel["status"] != "up" and tunnel["node"] is None, tunnel
    [seen] = c.api.get("/clients")["clients"]
    assert (seen["online"], seen["node"]) == (False, None), seen
