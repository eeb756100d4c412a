"""
End to end on a cluster (tests/cluster.py: real nodes on one PostgreSQL
database): ``maxBandwidth`` set live on one node's REST API is in force on
the others within about a second (the ``limits.changed`` event through the
events table), a node restarted afterwards starts with it, and clearing it
on another node puts server.toml's back everywhere.
"""

from __future__ import annotations

from tests.cluster import wait_until

MiB = 1024 * 1024


def test_a_live_limit_set_on_one_node_holds_on_every_node_and_after_a_restart(cluster):
    nodes = cluster(2)
    a, b = nodes["a"], nodes["b"]
    status, limits = a.api.call("PATCH", "/limits", {"maxBandwidth": "10MB"})
    assert (status, limits["maxBandwidth"]) == (200, 10 * MiB), limits
    took = wait_until(lambda: b.api.get("/limits")["maxBandwidth"] == 10 * MiB, what="b holding a's live limit")
    print(f"maxBandwidth set live on node a was in force on node b after {took:.2f} s")
    assert b.api.get("/limits")["live"]["maxBandwidth"]["by"] == "panel operator admin"
    b.restart()
    limits = b.api.get("/limits")
    assert (limits["maxBandwidth"], limits["file"]["maxBandwidth"]) == (10 * MiB, 0), limits
    status, limits = b.api.call("PATCH", "/limits", {"maxBandwidth": None})
    assert (status, limits["maxBandwidth"], limits["live"]) == (200, 0, {}), limits
    wait_until(lambda: a.api.get("/limits")["live"] == {}, what="a dropping the live limit b cleared")
    events = a.api.get("/events?type=limits.changed")["events"]
    assert [e["detail"] for e in events] == ["maxBandwidth back to server.toml's no limit (was live 10.0 MiB/s)",
                                             "maxBandwidth 10.0 MiB/s (was server.toml's no limit)"]
