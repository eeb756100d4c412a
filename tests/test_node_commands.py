"""
Operator commands reach the node that holds the client
(``gotaxy.server.commands``, ``gotaxy.store.commands``): two real servers,
in this process, on one SQLite store; a client on node A; actions issued on
node B's ``Management`` (what the panel, console and REST API call) take
effect on A, and their results, errors included, come back to B as a
local result would.  The same store functions on PostgreSQL when the
test tier has it (tests/postgres.py).
"""

from __future__ import annotations

import os
import time

import pytest
from twisted.trial import unittest

from gotaxy.server.manage import ManagementError
from gotaxy.store import Store
from gotaxy.store import commands as stored
from gotaxy.store.commands import MAX_ARGS, NodeUnavailable
from tests.inprocess import LiveSystem, echo_through, listen_echo, port_refused, wait_until


class TwoNodes(unittest.TestCase):
    timeout = 60

    async def start(self, allow_operator_tunnels: bool = False):
        self.shared = self.mktemp()
        os.makedirs(self.shared)
        url = "sqlite:///" + os.path.abspath(os.path.join(self.shared, "gotaxy.db"))
        # Servers on one store share the notification key (docs/configuration.md).
        config = os.path.join(self.shared, "server.toml")
        with open(config, "w") as f:
            f.write(f'[notify]\nkeyFile = "{os.path.abspath(os.path.join(self.shared, "notify.key"))}"\n')
        self.echo = echo = listen_echo(self)
        self.a = await LiveSystem.start(self, tunnels=[f"echo=tcp:127.0.0.1:{echo}"], database_url=url,
                                        server_args=["--config", config],
                                        allow_operator_tunnels=[f"127.0.0.1:{echo}"] if allow_operator_tunnels else [])
        self.port = await self.a.wait_up("echo")
        self.b = await LiveSystem.start(self, database_url=url, create_token=False, server_args=["--config", config])
        self.node_a = self.a.core.store.store.node
        assert self.node_a != self.b.core.store.store.node
        assert "alice" in self.a.core.sessions and "alice" not in self.b.core.sessions

    async def test_kick_on_b_disconnects_the_client_on_a_and_it_comes_back(self):
        await self.start()
        first = self.a.core.sessions["alice"]
        kicked = []
        self.a.core.events.subscribe(lambda e: kicked.append(e) if e.type == "client.kicked" else None)
        await self.b.management.kick("alice")
        # Carried out on A before B's answer: A recorded the kick and dropped the session.
        assert [e.client for e in kicked] == ["alice"] and first.dropped
        await wait_until(lambda: self.a.core.sessions.get("alice") not in (None, first))
        assert await echo_through(await self.a.wait_up("echo"), b"back") == b"back"

    async def test_disable_and_enable_on_b_close_and_open_the_port_on_a(self):
        await self.start()
        view = await self.b.management.set_enabled("alice", "echo", False)
        assert (view.status, view.enabled) == ("disabled", False)
        assert await port_refused(self.port)
        assert ("alice", "echo") not in self.a.core.tunnels
        view = await self.b.management.set_enabled("alice", "echo", True)
        # The view is A's: the live tunnel, up, on its port.
        assert view.status == "up" and view.address is not None and view.address.port == self.port
        assert await echo_through(self.port, b"again") == b"again"

    async def test_restart_on_b_reports_a_s_live_view(self):
        await self.start()
        before = self.a.core.tunnels[("alice", "echo")]
        view = await self.b.management.restart_tunnel("alice", "echo")
        assert view.status == "up" and self.a.core.tunnels[("alice", "echo")] is not before
        assert await echo_through(self.port, b"restarted") == b"restarted"

    async def test_an_error_on_a_comes_back_with_its_kind_and_field(self):
        await self.start()
        with self.assertRaises(ManagementError) as caught:
            await self.b.management.restart_tunnel("alice", "nope")
        assert (caught.exception.kind, caught.exception.field) == ("not_found", "name")
        assert "no tunnel named 'nope'" in str(caught.exception)
        # A client-defined tunnel cannot be edited: A's refusal, word for word.
        with self.assertRaises(ManagementError) as caught:
            await self.b.management.edit_tunnel("alice", "echo", remote_port=0)
        assert caught.exception.kind == "conflict" and "own config" in str(caught.exception)

    async def test_an_operator_tunnel_added_on_b_is_pushed_by_a(self):
        await self.start(allow_operator_tunnels=True)
        await self.b.management.add_tunnel("alice", "pushed", f"127.0.0.1:{self.echo}")
        port = await self.a.wait_up("pushed")
        assert await echo_through(port, b"pushed") == b"pushed"
        await self.b.management.remove_tunnel("alice", "pushed")
        assert await port_refused(port)
        assert await self.b.core.store.call(self.b.core.store.store.get_tunnel, "alice", "pushed") is None

    async def test_a_node_whose_lease_ran_out_is_refused_at_once(self):
        await self.start()
        db = self.b.core.store.store

        def held_by_a_gone_node() -> None:
            db.db["clients"].upsert(dict(name="bob", online=True, node="gone-node"), ["name"])

        await self.b.core.store.call(held_by_a_gone_node)
        started = time.monotonic()
        with self.assertRaises(ManagementError) as caught:
            await self.b.management.kick("bob")
        assert caught.exception.kind == "unavailable"
        assert "node gone-node, which has left the store" in str(caught.exception)
        assert time.monotonic() - started < 2  # refused without waiting for an answer

    async def test_a_silent_node_times_out_and_the_command_is_never_carried_out(self):
        await self.start()
        db = self.b.core.store.store
        lease = self.b.core.reactor.seconds() + 60

        def held_by_a_silent_node() -> None:
            db.db["clients"].upsert(dict(name="carol", online=True, node="silent-node"), ["name"])
            db.db["nodes"].insert(dict(node_id="silent-node", host="", pid=0, started_at=0, lease_until=lease))

        await self.b.core.store.call(held_by_a_silent_node)
        self.b.management.commands.timeout = 0.5
        with self.assertRaises(ManagementError) as caught:
            await self.b.management.kick("carol")
        assert caught.exception.kind == "unavailable"
        assert str(caught.exception).startswith("server node silent-node did not answer within 0.5 s; it may be down")
        assert time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(lease)) in str(caught.exception)
        # Given up: the node finds nothing to take when it comes back.
        assert await self.b.core.store.call(stored.take, db, "silent-node", lease) == []


# -- the store's side, on SQLite and PostgreSQL ---------------------------------


@pytest.fixture
def store(store_url):
    other = Store(store_url)
    other.join_node("node-b", 30.0, "test")
    other.close()
    s = Store(store_url)
    s.join_node("node-a", 30.0, "test")
    yield s
    s.close()


def test_a_command_is_taken_once_and_answered(store):
    now = time.time()
    command = stored.send(store, "node-b", "client.kick", {"name": "alice"}, "root", now)
    assert stored.result_of(store, command) is None
    (taken,) = stored.take(store, "node-b", now)
    assert (taken.id, taken.kind, taken.args, taken.who) == (command, "client.kick", {"name": "alice"}, "root")
    assert stored.take(store, "node-b", now) == []  # taken once
    assert not stored.give_up(store, command, now)  # too late to take back
    assert stored.finish(store, command, {"ok": True}, now)
    assert stored.result_of(store, command) == {"ok": True}
    assert not stored.finish(store, command, {"ok": True}, now)


def test_a_command_for_a_node_without_a_lease_is_refused_and_sizes_are_bounded(store):
    now = time.time()
    with pytest.raises(NodeUnavailable) as caught:
        stored.send(store, "node-c", "client.kick", {"name": "alice"}, "root", now)
    assert caught.value.lease_until is None
    with pytest.raises(NodeUnavailable):  # node-b's lease ran out 30 s from now
        stored.send(store, "node-b", "client.kick", {}, "root", now + 60)
    with pytest.raises(ValueError, match="over 64 KiB"):
        stored.send(store, "node-b", "tunnel.add", {"keys": "x" * MAX_ARGS}, "root", now)
    command = stored.send(store, "node-b", "client.kick", {}, "root", now)
    stored.take(store, "node-b", now)
    stored.finish(store, command, {"error": {"kind": "invalid", "message": "m" * 100_000, "field": "name"}}, now)
    error = stored.result_of(store, command)["error"]
    assert (error["kind"], error["field"]) == ("invalid", "name") and len(error["message"]) < 2000


def test_old_commands_are_deleted(store):
    now = time.time()
    old = stored.send(store, "node-b", "client.kick", {}, "root", now - 7200)
    new = stored.send(store, "node-b", "client.kick", {}, "root", now)
    assert stored.expire(store, now - 3600) == 1
    assert [c.id for c in stored.take(store, "node-b", now)] == [new] and old != new
