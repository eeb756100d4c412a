"""
The operator's actions (``gotaxy.server.manage``) against a live server and
client in this process: what the panel and the console both rely on.
"""

from __future__ import annotations

import socket

from twisted.application.service import Service
from twisted.internet import reactor
from twisted.trial import unittest

from gotaxy.proxy import PublicAddress
from gotaxy.events import Event
from gotaxy.jointoken import parse_join_token
from gotaxy.server.manage import ManagementError
from tests.inprocess import LiveSystem, ca_fingerprint, echo_through, free_port, listen_echo, port_refused, wait_until


class ManagementTests(unittest.TestCase):
    timeout = 60

    async def _live(self, *tunnels: str, server_args=(), allow_operator_tunnels=()) -> LiveSystem:
        self.echo = listen_echo(self)
        specs = [t.replace("ECHO", str(self.echo)) for t in tunnels]
        allowed = [a.replace("ECHO", str(self.echo)) for a in allow_operator_tunnels]
        live = await LiveSystem.start(self, specs, server_args=list(server_args), allow_operator_tunnels=allowed)
        self.events: list = []
        live.core.events.subscribe(self.events.append)
        return live

    async def test_status_and_client_views(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        port = await live.wait_up("echo")
        self.assertEqual(await echo_through(port, b"ping"), b"ping")
        await wait_until(lambda: live.core.traffic()[0] >= 4)
        status = await live.management.status()
        self.assertEqual((status.clients_online, status.clients_total, status.tunnels_up), (1, 1, 1))
        self.assertGreaterEqual(status.bytes_in, 4)
        self.assertGreaterEqual(status.bytes_out, 4)
        (client,) = await live.management.clients()
        self.assertEqual((client.name, client.online, client.tunnels), ("alice", True, ("echo",)))
        self.assertTrue(client.address.startswith("127.0.0.1:"))
        (tunnel,) = await live.management.tunnels()
        self.assertEqual((tunnel.status, tunnel.address.port, tunnel.source), ("up", port, "client"))

    async def test_add_tunnel_pushes_it_to_the_client(self):
        # The client opens operator-defined tunnels only to addresses it allows.
        live = await self._live("echo=tcp:127.0.0.1:ECHO", allow_operator_tunnels=["127.0.0.1:ECHO"])
        await live.wait_up("echo")
        wanted = free_port()
        view = await live.management.add_tunnel("alice", "pushed", f"127.0.0.1:{self.echo}", wanted)
        self.assertEqual(view.source, "server")
        port = await live.wait_up("pushed")
        self.assertEqual(port, wanted)
        self.assertEqual(await echo_through(port, b"from the panel"), b"from the panel")
        self.assertIn("tunnel.added", [e.type for e in self.events])

        # Editing moves it; removing closes the port and releases it.
        moved = free_port()
        await live.management.edit_tunnel("alice", "pushed", remote_port=moved)
        await wait_until(lambda: live.client.factory.current.up.get("pushed") == PublicAddress.tcp(moved))
        self.assertEqual(await echo_through(moved, b"moved"), b"moved")
        await live.management.remove_tunnel("alice", "pushed")
        self.assertTrue(await port_refused(moved))
        await wait_until(lambda: "pushed" not in live.client.factory.current.tunnels)
        with self.assertRaises(ManagementError) as e:
            await live.management.tunnel("alice", "pushed")
        self.assertEqual(e.exception.kind, "not_found")

    async def test_a_client_declines_only_what_it_was_offered(self):
        # A client may refuse an operator-defined tunnel it was sent, once;
        # a "decline" for anything else (its own tunnels, names never sent)
        # changes nothing, so it cannot write the operator's tunnel list.
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        port = await live.wait_up("echo")
        session = live.core.sessions["alice"]
        await live.core.client_declines_tunnel(session, {"type": "tunnel_declined", "name": "echo", "reason": "x"})
        await live.core.client_declines_tunnel(session, {"type": "tunnel_declined", "name": "ghost", "reason": "x"})
        self.assertEqual([(t.name, t.status) for t in await live.management.tunnels()], [("echo", "up")])
        self.assertEqual(await echo_through(port, b"still up"), b"still up")

        await live.management.add_tunnel("alice", "pushed", f"127.0.0.1:{self.echo}", 0)
        await wait_until(lambda: "pushed" not in session.offered)
        await wait_until(lambda: "tunnel.refused" in [e.type for e in self.events])
        view = await live.management.tunnel("alice", "pushed")
        self.assertEqual(view.status, "refused")
        self.assertTrue(view.reason.startswith("refused by the client: this client accepts no operator-defined"))
        refused = [e for e in self.events if e.type == "tunnel.refused"]
        await live.core.client_declines_tunnel(
            session, {"type": "tunnel_declined", "name": "pushed", "reason": "again\x1b[2J"}
        )
        self.assertEqual([e for e in self.events if e.type == "tunnel.refused"], refused)

    async def test_disable_enable_restart(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        port = await live.wait_up("echo")
        view = await live.management.set_enabled("alice", "echo", False)
        self.assertEqual(view.status, "disabled")
        self.assertTrue(await port_refused(port))
        view = await live.management.set_enabled("alice", "echo", True)
        self.assertEqual((view.status, view.address.port), ("up", port))
        self.assertEqual(await echo_through(port, b"again"), b"again")
        view = await live.management.restart_tunnel("alice", "echo")
        self.assertEqual(view.status, "up")
        self.assertEqual(await echo_through(port, b"restarted"), b"restarted")
        types = [e.type for e in self.events]
        self.assertIn("tunnel.disabled", types)
        self.assertIn("tunnel.enabled", types)

    async def test_disabled_tunnel_stays_down_after_reconnect(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        port = await live.wait_up("echo")
        await live.management.set_enabled("alice", "echo", False)
        await live.management.kick("alice")
        await wait_until(lambda: "alice" in live.core.sessions, timeout=20)
        await wait_until(lambda: any(e.type == "tunnel.refused" for e in self.events), timeout=10)
        self.assertTrue(await port_refused(port))

    async def test_a_port_or_name_held_by_another_tunnel_is_refused_with_its_holder_on_that_field(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        port = await live.wait_up("echo")
        m = live.management
        with self.assertRaises(ManagementError) as held:
            await m.add_tunnel("alice", "other", "127.0.0.1:1", port)
        self.assertEqual((held.exception.kind, held.exception.field), ("conflict", "remote_port"))
        self.assertIn(f"port {port} is reserved by tunnel 'echo' of client 'alice'", str(held.exception))
        await m.add_tunnel("alice", "pushed", "127.0.0.1:1")
        with self.assertRaises(ManagementError) as moved:
            await m.edit_tunnel("alice", "pushed", remote_port=port)
        self.assertEqual((moved.exception.kind, moved.exception.field), ("conflict", "remote_port"))
        with self.assertRaises(ManagementError) as named:
            await m.add_tunnel("alice", "pushed", "127.0.0.1:2")
        self.assertEqual((named.exception.kind, named.exception.field), ("conflict", "name"))
        self.assertIn("already has a tunnel named 'pushed'", str(named.exception))

    async def test_errors(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        port = await live.wait_up("echo")
        m = live.management
        cases = [
            (m.add_tunnel("alice", "bad name!", "127.0.0.1:1"), "invalid"),
            (m.add_tunnel("alice", "x", "nowhere"), "invalid"),
            (m.add_tunnel("alice", "x", "127.0.0.1:1", 70000), "invalid"),
            (m.add_tunnel("alice", "x", "127.0.0.1:1", port), "conflict"),
            (m.add_tunnel("alice", "echo", "127.0.0.1:1"), "conflict"),
            (m.remove_tunnel("alice", "echo"), "conflict"),
            (m.edit_tunnel("alice", "echo", remote_port=1234), "conflict"),
            (m.tunnel("alice", "nope"), "not_found"),
            (m.kick("nobody"), "not_found"),
            (m.revoke_token("nobody"), "not_found"),
            (m.events(limit=0), "invalid"),
        ]
        for coroutine, kind in cases:
            with self.assertRaises(ManagementError) as e:
                await coroutine
            self.assertEqual(e.exception.kind, kind, str(e.exception))

    async def test_shared_token_clients_are_managed_under_their_own_names(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        m = live.management
        with self.assertRaises(ManagementError) as e:
            await m.add_tunnel("shared:office", "pushed", f"127.0.0.1:{self.echo}")
        self.assertEqual(e.exception.kind, "not_found")  # not connected yet: nobody is shared:office
        await live.core.store.call(live.core.store.store.client_connected, "shared:office", "127.0.0.1:1", "0.1.0")
        view = await m.add_tunnel("shared:office", "pushed", f"127.0.0.1:{self.echo}")
        self.assertEqual((view.client, view.name), ("shared:office", "pushed"))
        for client in ("shared:", "shared:a:b", "other:office", "shared:" + "x" * 58):
            with self.assertRaises(ManagementError) as e:
                await m.add_tunnel(client, "pushed", "127.0.0.1:1")
            self.assertEqual(e.exception.kind, "invalid", client)

    async def test_reload_rereads_the_config_and_records_it(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        await live.wait_up("echo")
        report = await live.management.reload("a test")
        self.assertEqual((report.applied, report.restart, report.warnings), ((), (), ()))
        (event,) = [e for e in self.events if e.type == "config.reloaded"]
        self.assertEqual((event.address, event.detail), ("a test", "no setting changed"))

    async def test_port_outside_allow_ports_is_a_conflict(self):
        inside = free_port()
        live = await self._live("echo=tcp:127.0.0.1:ECHO", server_args=["--allow-ports", str(inside)])
        await live.wait_up("echo")
        with self.assertRaises(ManagementError) as e:
            await live.management.add_tunnel("alice", "x", "127.0.0.1:1", inside + 1 if inside < 65535 else inside - 1)
        self.assertIn("not allowed", str(e.exception))

    async def test_kick_and_revoke(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        await live.wait_up("echo")
        first = live.core.sessions["alice"]
        await live.management.kick("alice")
        await wait_until(lambda: live.core.sessions.get("alice") not in (None, first), timeout=20)
        self.assertIn("client.kicked", [e.type for e in self.events])

        record, token = await live.management.create_token("bob")
        self.assertEqual(record.name, "bob")
        # A join token: the secret, with the pin of the server's CA.
        join = parse_join_token(token)
        self.assertEqual(join.pin, ca_fingerprint(live.data_dir))
        self.assertIsNotNone(await live.core.store.call(live.core.store.store.authenticate_token, join.secret))
        names = [t.name for t in await live.management.tokens()]
        self.assertEqual(sorted(names), ["alice", "bob"])
        await live.management.revoke_token("alice")
        self.assertNotIn("alice", live.core.sessions)
        self.assertIn("token.revoked", [e.type for e in self.events])

    async def test_events_are_filtered_and_paged(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        await live.wait_up("echo")
        events = await live.management.events(client="alice")
        self.assertTrue(events)
        self.assertTrue(all(e.client == "alice" for e in events))
        tunnel_events = await live.management.events(type_="tunnel.")
        self.assertTrue(all(e.type.startswith("tunnel.") for e in tunnel_events))
        first, second = await live.management.events(limit=1), await live.management.events(limit=1, offset=1)
        self.assertGreater(first[0].id, second[0].id)
        self.assertEqual(await live.management.events(since=reactor.seconds() + 3600), [])
        await live.management.create_token("carol")
        self.assertEqual(self.events[-1].type, "token.created")
        self.assertIsInstance(self.events[-1], Event)
        self.assertEqual((await live.management.events(limit=1))[0].type, "token.created")


class TunnelErrorTests(unittest.TestCase):
    timeout = 60

    async def test_dead_local_service_is_one_tunnel_error_event_a_minute(self):
        dead = free_port()
        live = await LiveSystem.start(self, [f"dead=tcp:127.0.0.1:{dead}"])
        events: list = []
        live.core.events.subscribe(events.append)
        port = await live.wait_up("dead")
        for _ in range(3):
            self.assertEqual(await echo_through(port, b"anyone?"), b"")
        await wait_until(lambda: any(e.type == "tunnel.error" for e in events))
        errors = [e for e in events if e.type == "tunnel.error"]
        self.assertEqual(len(errors), 1)
        self.assertEqual((errors[0].client, errors[0].tunnel), ("alice", "dead"))
        self.assertIn(f"cannot reach local service 127.0.0.1:{dead}", errors[0].detail)
        stored = await live.management.events(type_="tunnel.error")
        self.assertEqual(len(stored), 1)


class ServerStartedTests(unittest.TestCase):
    timeout = 30

    async def test_server_started_is_published_once_every_service_runs(self):
        published: list = []

        class Subscriber(Service):
            """Subscribes in its startService, as the notifier does."""

            def startService(self) -> None:
                super().startService()
                self.parent.server.core.events.subscribe(published.append)

        live = await LiveSystem.start(self, services=[Subscriber()])
        (event,) = [e for e in published if e.type == "server.started"]
        self.assertEqual(event.detail, "version 0.1.0")
        self.assertEqual([e.type for e in await live.management.events(type_="server.started")], ["server.started"])
