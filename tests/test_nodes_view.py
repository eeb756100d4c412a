"""
The nodes view (issue 16): every node's panel, console and REST API show
every node (up or down by its lease, its clients, its tunnels and traffic)
and every client and tunnel with the node that holds it.  Two real servers
in this process on one SQLite store, a client on node A, asked on node B
(``Management``: what the three faces call).
"""

from __future__ import annotations

import os

from sqlalchemy import update
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from gotaxy.store.schema import NODES
from tests.inprocess import LiveSystem, echo_through, listen_echo


class NodesView(unittest.TestCase):
    timeout = 60

    async def start(self) -> None:
        shared = self.mktemp()
        os.makedirs(shared)
        url = "sqlite:///" + os.path.abspath(os.path.join(shared, "gotaxy.db"))
        config = os.path.join(shared, "server.toml")  # nodes on one store share the notification key
        with open(config, "w") as f:
            f.write(f'[notify]\nkeyFile = "{os.path.abspath(os.path.join(shared, "notify.key"))}"\n')
        echo = listen_echo(self)
        self.a = await LiveSystem.start(self, tunnels=[f"echo=tcp:127.0.0.1:{echo}"], database_url=url,
                                        server_args=["--config", config])
        self.port = await self.a.wait_up("echo")
        self.b = await LiveSystem.start(self, database_url=url, create_token=False, server_args=["--config", config])
        self.node_a = self.a.core.store.store.node
        self.node_b = self.b.core.store.store.node

    async def test_b_shows_the_tunnel_and_client_that_a_holds_as_up_on_a(self):
        await self.start()
        # The bug: a tunnel held by another node showed "down".
        [tunnel] = await self.b.management.tunnels()
        assert (tunnel.status, tunnel.node) == ("up", self.node_a), tunnel
        assert (await self.b.management.tunnel("alice", "echo")).node == self.node_a
        [client] = await self.b.management.clients()
        assert (client.online, client.node) == (True, self.node_a), client
        # A says the same of itself.
        [tunnel] = await self.a.management.tunnels()
        assert (tunnel.status, tunnel.node) == ("up", self.node_a)
        assert (await self.a.management.client("alice")).node == self.node_a

    async def test_every_node_lists_every_node_with_its_clients(self):
        await self.start()
        for asking, here in ((self.b, self.node_b), (self.a, self.node_a)):
            views = {v.node: v for v in await asking.management.nodes()}
            assert set(views) == {self.node_a, self.node_b}, views
            assert [v.node for v in views.values() if v.here] == [here]
            a, b = views[self.node_a], views[self.node_b]
            assert (a.state, a.clients, a.tunnels_up) == ("up", ("alice",), 1), a
            assert (b.state, b.clients, b.tunnels_up) == ("up", (), 0), b
            assert a.lease_until is not None and a.lease_until > asking.core.reactor.seconds()

    async def test_a_node_whose_lease_ran_out_is_down_and_holds_nothing_up(self):
        await self.start()
        store = self.b.core.store.store
        nodes = store.db[NODES].table
        with store.db as tx:  # as if A had been killed half a minute ago (its rows not released yet)
            tx.executable.execute(update(nodes).where(nodes.c.node_id == self.node_a).values(lease_until=1.0))
        views = {v.node: v for v in await self.b.management.nodes()}
        assert views[self.node_a].state == "down", views
        [tunnel] = await self.b.management.tunnels()
        assert (tunnel.status, tunnel.node) == ("down", None), tunnel
        [client] = await self.b.management.clients()
        assert (client.online, client.node) == (False, None), client

    async def test_b_shows_the_rate_of_a_tunnel_that_a_holds_and_status_totals_of_both_nodes(self):
        await self.start()
        live = self.a.core.tunnels[("alice", "echo")]
        pushed = []

        async def measured() -> bool:  # bytes through A's tunnel until A's meter shows a rate
            pushed.append(await echo_through(self.port, b"x" * 100_000))
            return live.rate_in > 0

        for _ in range(200):  # (the meters take their rates once a second)
            if await measured():
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert live.rate_in > 0 and pushed[-1] == b"x" * 100_000
        self.a.server.history.sample()  # A's history sample of it, as its timer takes and writes one
        await self.a.server.history.flush()
        db = self.a.core.store.store.db
        [sample] = await self.a.core.store.call(lambda: list(db["history_samples"].find(tunnel="echo")))
        assert sample["rate_in"] > 0, sample

        # The bug: on B the tunnel A holds showed 0 B/s, and B's status counted B's own clients only.
        [tunnel] = await self.b.management.tunnels()
        assert (tunnel.node, tunnel.rate_in, tunnel.traffic_at) == (self.node_a, sample["rate_in"], sample["at"])
        assert (await self.b.management.tunnel("alice", "echo")).rate_in == sample["rate_in"]
        status = await self.b.management.status()
        assert (status.clients_online, status.clients_total, status.tunnels_up, status.tunnels_total) == (1, 1, 1, 1)
        assert status.rate_in == sample["rate_in"] + self.b.core.traffic()[2], status
        by_node = {n.node: n for n in status.nodes}
        assert (by_node[self.node_a].clients, by_node[self.node_a].tunnels_up) == (("alice",), 1)
        assert (by_node[self.node_b].clients, by_node[self.node_b].tunnels_up, by_node[self.node_b].here) == ((), 0, True)
        assert by_node[self.node_a].rate_in == sample["rate_in"]

        # A counts its own live, and B's (nothing) from the store: the same totals.
        status_a = await self.a.management.status()
        assert (status_a.clients_online, status_a.tunnels_up) == (1, 1)
        [tunnel_a] = await self.a.management.tunnels()
        assert (tunnel_a.node, tunnel_a.traffic_at) == (self.node_a, None)  # live, not a sample

    async def test_status_leaves_out_a_node_whose_lease_ran_out(self):
        await self.start()
        store = self.b.core.store.store
        nodes = store.db[NODES].table
        with store.db as tx:  # as if A had been killed half a minute ago (its rows not released yet)
            tx.executable.execute(update(nodes).where(nodes.c.node_id == self.node_a).values(lease_until=1.0))
        status = await self.b.management.status()
        assert (status.clients_online, status.tunnels_up) == (0, 0), status
        assert {n.node: n.state for n in status.nodes} == {self.node_a: "down", self.node_b: "up"}
