"""
The console's command language (``gotaxy.console.commands``) against a live
server and client in this process: what each command prints, its exit
status, its JSON, and the one-line errors.
"""

from __future__ import annotations

import json
import socket

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from gotaxy.console.commands import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    MAX_LINE,
    Commands,
)
from gotaxy.console.text import WIDTH
from gotaxy.server.manage import ManagementError
from tests.inprocess import LiveSystem, echo_through, free_port, listen_echo, port_refused, wait_until


class CommandTests(unittest.TestCase):
    timeout = 60

    async def _live(self, *tunnels: str, server_args=(), allow_operator_tunnels=()) -> LiveSystem:
        self.echo = listen_echo(self)
        specs = [t.replace("ECHO", str(self.echo)) for t in tunnels]
        allowed = [a.replace("ECHO", str(self.echo)) for a in allow_operator_tunnels]
        live = await LiveSystem.start(self, specs, server_args=["--console-port", "0", *server_args],
                                      allow_operator_tunnels=allowed)
        self.commands = Commands(live.management)
        return live

    async def tunnel_json_when(self, ref: str, predicate, timeout: float = 10.0) -> dict:
        """``tunnel REF --json``, once ``predicate`` holds for it."""
        deadline = reactor.seconds() + timeout
        while True:
            view = json.loads((await self.cmd(f"tunnel {ref} --json")).text)
            if predicate(view):
                return view
            if reactor.seconds() > deadline:
                raise AssertionError(f"tunnel {ref} did not get there within {timeout} s: {view}")
            await deferLater(reactor, 0.05, lambda: None)

    async def cmd(self, line: str, status: int = EXIT_OK):
        result = await self.commands.run(line)
        self.assertEqual(result.status, status, f"{line!r} -> {result}")
        return result

    def assertFits(self, text: str) -> None:
        for line in text.split("\n"):
            self.assertLessEqual(len(line), WIDTH, line)

    async def test_status_text_and_json(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        port = await live.wait_up("echo")
        self.assertEqual(await echo_through(port, b"ping"), b"ping")
        await wait_until(lambda: live.core.traffic()[0] >= 4)
        text = (await self.cmd("status")).text
        self.assertIn("version      0.1.0", text)
        self.assertIn("clients      1 online, 1 known", text)
        self.assertIn("tunnels      1 up, 1 defined", text)
        self.assertFits(text)
        data = json.loads((await self.cmd("status --json")).text)
        self.assertEqual((data["clients_online"], data["tunnels_up"]), (1, 1))
        self.assertGreaterEqual(data["bytes_in"], 4)

    async def test_clients_and_client(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        await live.wait_up("echo")
        text = (await self.cmd("clients")).text
        header, row = text.split("\n")
        node = live.core.store.store.node
        self.assertTrue(header.startswith("CLIENT  STATE   NODE"), header)
        self.assertRegex(row, rf"^alice +online +{node} +127\.0\.0\.1:")
        self.assertFits(text)
        (view,) = json.loads((await self.cmd("clients --json")).text)
        self.assertEqual((view["name"], view["online"], view["tunnels"], view["node"]), ("alice", True, ["echo"], node))
        detail = (await self.cmd("client alice")).text
        self.assertIn("state         online", detail)
        self.assertIn("tunnels       echo", detail)
        self.assertEqual(json.loads((await self.cmd("client alice --json")).text)["name"], "alice")
        missing = await self.cmd("client bob", EXIT_FAILED)
        self.assertEqual(missing.text, "error: no client named 'bob'")

    async def test_tunnels_table_and_details_with_connections_and_rates(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        port = await live.wait_up("echo")
        # Hold one public connection open and push data through it.
        sock = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(sock.close)
        sock.sendall(b"x" * 200_000)
        tunnel = live.core.tunnels[("alice", "echo")]
        await wait_until(lambda: tunnel.connections == 1 and tunnel.rate_in > 0, timeout=15)
        text = (await self.cmd("tunnels")).text
        header, row = text.split("\n")
        self.assertEqual(header.split(), ["TUNNEL", "ADDRESS", "LOCAL", "STATUS", "CONNS", "IN/S", "OUT/S"])
        self.assertEqual(row.split()[:6], ["alice/echo", "port", str(port), f"127.0.0.1:{self.echo}", "up", "1"])
        self.assertFits(text)
        detail = (await self.cmd("tunnel echo")).text
        self.assertIn("connections    1 open, 1 since up", detail)
        self.assertRegex(detail, r"rate +in [1-9][0-9.]* (B|KiB|MiB)/s")
        self.assertIn("tunnel         alice/echo", (await self.cmd("tunnel alice/echo")).text)
        data = json.loads((await self.cmd("tunnel alice/echo --json")).text)
        self.assertEqual((data["connections"], data["address"]["port"], data["status"]), (1, port, "up"))
        (listed,) = json.loads((await self.cmd("tunnels --json")).text)
        self.assertEqual((listed["client"], listed["name"]), ("alice", "echo"))
        self.assertEqual(json.loads((await self.cmd("tunnels --client nobody --json")).text), [])

    async def test_long_names_still_fit_80_columns(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        await live.wait_up("echo")
        long_name = "a-very-long-tunnel-name-that-goes-on-and-on-" + "x" * 20
        await live.management.create_token("some-client-with-a-long-name")
        await self.cmd(f"tunnel add some-client-with-a-long-name {long_name} [::1]:65535 0")
        text = (await self.cmd("tunnels")).text
        self.assertFits(text)
        self.assertIn("~", text)
        self.assertFits((await self.cmd("events --limit 50")).text)
        self.assertFits((await self.cmd("help")).text)

    async def test_tunnel_add_disable_enable_remove_with_the_panels_rules(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO", allow_operator_tunnels=["127.0.0.1:ECHO"])
        await live.wait_up("echo")
        wanted = free_port()
        added = await self.cmd(f"tunnel add alice pushed 127.0.0.1:{self.echo} {wanted}")
        self.assertEqual(added.text, f"tunnel alice/pushed added (port {wanted}); it opens now")
        port = await live.wait_up("pushed")
        self.assertEqual((port, await echo_through(port, b"hi")), (wanted, b"hi"))

        # The same errors as Management (and so as the panel), word for word.
        with self.assertRaises(ManagementError) as direct:
            await live.management.add_tunnel("alice", "pushed", f"127.0.0.1:{self.echo}", 0)
        duplicate = await self.cmd(f"tunnel add alice pushed 127.0.0.1:{self.echo}", EXIT_FAILED)
        self.assertEqual(duplicate.text, f"error: {direct.exception}")
        bad = await self.cmd("tunnel add alice other nowhere", EXIT_USAGE)
        self.assertTrue(bad.text.startswith("error: local address 'nowhere'"), bad.text)
        taken = await self.cmd(f"tunnel add alice third 127.0.0.1:1 {wanted}", EXIT_FAILED)
        self.assertIn(str(wanted), taken.text)
        self.assertEqual((await self.cmd("tunnel add alice x 127.0.0.1:1 port", EXIT_USAGE)).text,
                         "tunnel add: PUBLICPORT must be a number, not 'port'; type 'help tunnel add' for usage")

        disabled = await self.cmd("tunnel disable pushed")
        self.assertEqual(disabled.text, "tunnel alice/pushed disabled; status disabled, port %d" % wanted)
        await wait_until(lambda: ("alice", "pushed") not in live.core.tunnels)
        self.assertTrue(await port_refused(wanted))
        enabled = json.loads((await self.cmd("tunnel enable alice/pushed --json")).text)
        self.assertTrue(enabled["enabled"])
        await wait_until(lambda: ("alice", "pushed") in live.core.tunnels)
        self.assertEqual(await echo_through(wanted, b"back"), b"back")
        restarted = await self.cmd("tunnel restart pushed")
        self.assertTrue(restarted.text.startswith("tunnel alice/pushed restarted"), restarted.text)

        refused = await self.cmd("tunnel remove echo", EXIT_FAILED)
        self.assertEqual(refused.text, "error: tunnel 'echo' is defined in client 'alice''s own config; "
                                       "remove it there, or disable it")
        self.assertEqual((await self.cmd("tunnel remove alice/pushed")).text, "tunnel alice/pushed removed")
        await wait_until(lambda: ("alice", "pushed") not in live.core.tunnels)
        self.assertEqual((await self.cmd("tunnel pushed", EXIT_FAILED)).text,
                         "error: no tunnel named 'pushed'; 'tunnels' lists them")

    async def test_tunnel_edit(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO", allow_operator_tunnels=["127.0.0.1:ECHO"])
        await live.wait_up("echo")
        await self.cmd("tunnel add alice pushed 127.0.0.1:1")
        # The client does not allow 127.0.0.1:1; the operator sees why.
        refused = await self.tunnel_json_when("pushed", lambda t: t["status"] == "refused")
        self.assertIn("not in this client's allowOperatorTunnels", refused["reason"])
        wanted = free_port()
        edited = json.loads((await self.cmd(f"tunnel edit pushed --local 127.0.0.1:{self.echo} --port {wanted} --json")).text)
        self.assertEqual((edited["client"], edited["name"], edited["source"]), ("alice", "pushed", "server"))
        await wait_until(lambda: live.core.tunnels.get(("alice", "pushed")) is not None
                         and live.core.tunnels[("alice", "pushed")].address.port == wanted)
        now = json.loads((await self.cmd("tunnel pushed --json")).text)
        self.assertEqual((now["local_addr"], now["address"]["port"]), (f"127.0.0.1:{self.echo}", wanted))
        self.assertEqual(await echo_through(wanted, b"edited"), b"edited")
        nothing = await self.cmd("tunnel edit pushed", EXIT_USAGE)
        self.assertEqual(nothing.text, "error: nothing to change: give a local address (--local), a public port (--port) "
                                        "or a --KEY VALUE setting")

    async def test_tunnel_add_and_edit_take_the_types_keys(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO", allow_operator_tunnels=["127.0.0.1:ECHO"])
        await live.wait_up("echo")
        wanted = free_port()
        added = await self.cmd(f"tunnel add alice keyed --type tcp --localPort {self.echo} --remotePort={wanted}")
        self.assertEqual(added.text, f"tunnel alice/keyed added (port {wanted}); it opens now")
        self.assertEqual(await echo_through(await live.wait_up("keyed"), b"keys"), b"keys")
        # Each type's keys are in the help, with what they take.
        help_text = (await self.cmd("help tunnel add")).text
        self.assertIn("  tcp:", help_text)
        self.assertIn("--localPort PORT (required): the port of the local service", help_text)
        self.assertFits(help_text[help_text.index("Types and their keys"):])
        errors = [
            ("tunnel add alice x --type teleport --localPort 1",
             "tunnel add: --type 'teleport' is not a tunnel type of this server (it has tcp"),
            ("tunnel add alice x --localPort one", "tunnel add: 'localPort' must be a whole number, not 'one'"),
            ("tunnel add alice x --localPort 0", "error: 'localPort' must be an integer from 1 to 65535"),
            ("tunnel add alice x --nonsense 1", "tunnel add: unknown option '--nonsense'"),
            ("tunnel add alice x --localPort", "tunnel add: --localPort needs a value"),
            ("tunnel add alice x", "tunnel add: missing LOCALHOST:PORT"),
        ]
        for line, start in errors:
            text = (await self.cmd(line, EXIT_USAGE)).text
            self.assertTrue(text.startswith(start), f"{line!r} -> {text!r}")
        # An empty value puts a setting back to its default: remotePort 0, the server picks.
        edited = json.loads((await self.cmd("tunnel edit keyed --remotePort '' --json")).text)
        self.assertEqual(edited["spec"]["remotePort"], 0)

    async def test_a_udp_tunnel_from_the_console_shows_its_datagrams(self):
        from twisted.internet.protocol import DatagramProtocol

        class Echo(DatagramProtocol):
            def datagramReceived(self, data, address):
                self.transport.write(data, address)

        echo = reactor.listenUDP(0, Echo(), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        udp_port = echo.getHost().port
        live = await self._live("echo=tcp:127.0.0.1:ECHO", allow_operator_tunnels=[f"127.0.0.1:{udp_port}"])
        await live.wait_up("echo")
        added = await self.cmd(f"tunnel add alice dns 127.0.0.1:{udp_port} --type udp --idleTimeout 30")
        self.assertTrue(added.text.startswith("tunnel alice/dns added"), added.text)
        public = await live.wait_up("dns")
        view = json.loads((await self.cmd("tunnel alice/dns --json")).text)
        self.assertEqual((view["type"], view["spec"]["idleTimeout"], view["address"]["description"]),
                         ("udp", 30, f"udp port {public}"))
        detail = (await self.cmd("tunnel alice/dns")).text
        self.assertIn("datagrams      in 0, out 0; dropped 0 too large, 0 queue full, 0 no slot", detail)
        self.assertFits(detail)
        self.assertIn(f"udp port {public}", (await self.cmd("tunnels")).text)
        bad = await self.cmd("tunnel add alice dns2 127.0.0.1:1 --type udp --customDomains a.example.com", EXIT_USAGE)
        self.assertTrue(bad.text.startswith("tunnel add: a udp tunnel has no setting --customDomains"), bad.text)

    async def test_tunnel_add_for_a_client_nobody_can_be_is_refused_with_the_known_ones(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        await live.wait_up("echo")
        await live.management.create_token("laptop")
        refused = await self.cmd("tunnel add alcie web 127.0.0.1:8080", EXIT_FAILED)
        self.assertEqual(refused.text, "error: no client named 'alcie' (known clients: alice, laptop); a tunnel can "
                                       "be added only for a client that has connected once or has a token "
                                       "('gotaxy token create NAME')")
        # Nothing of it shows anywhere.
        self.assertEqual([c["name"] for c in json.loads((await self.cmd("clients --json")).text)], ["alice"])
        self.assertEqual([t["client"] for t in json.loads((await self.cmd("tunnels --json")).text)], ["alice"])
        self.assertEqual(json.loads((await self.cmd("events --type tunnel.added --json")).text), [])
        await self.cmd("client alcie", EXIT_FAILED)
        # A client with a token that has not connected yet can get one.
        added = await self.cmd("tunnel add laptop web 127.0.0.1:8080")
        self.assertTrue(added.text.endswith("it opens when laptop connects"), added.text)
        await self.cmd("token revoke laptop")
        gone = await self.cmd("tunnel add laptop ssh 127.0.0.1:22", EXIT_FAILED)
        self.assertIn("no client named 'laptop' (known clients: alice)", gone.text)

    async def test_ambiguous_tunnel_names_need_the_client(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        await live.wait_up("echo")
        await live.management.create_token("bob")
        offline = await self.cmd("tunnel add bob echo 127.0.0.1:1")
        self.assertEqual(offline.text, "tunnel bob/echo added (address picked by the server); "
                                       "it opens when bob connects")
        ambiguous = await self.cmd("tunnel echo", EXIT_USAGE)
        self.assertEqual(ambiguous.text, "error: several clients have a tunnel named 'echo' "
                                         "(alice/echo, bob/echo); say which, as CLIENT/NAME")
        self.assertIn("status         up", (await self.cmd("tunnel alice/echo")).text)
        self.assertIn("status         down", (await self.cmd("tunnel bob/echo")).text)
        await self.cmd("tunnel disable echo", EXIT_USAGE)
        self.assertEqual((await self.cmd("tunnel /echo", EXIT_USAGE)).text,
                         "tunnel: '/echo' is not a tunnel; write CLIENT/NAME or NAME; type 'help tunnel' for usage")

    async def test_token_limit_and_limits(self):
        live = await self._live()
        await self.cmd("token create laptop")
        self.assertEqual((await self.cmd("token limit laptop 10MB")).text,
                         "client laptop is limited to 10.0 MiB/s each way, at once on its open connections")
        await wait_until(lambda: live.core.bandwidth.rate_of("laptop") == 10 * 1024 * 1024)  # token.changed applied
        self.assertEqual(json.loads((await self.cmd("token limit laptop 512KB --json")).text)["max_bandwidth"], 524288)
        self.assertIn("512.0 KiB/s", (await self.cmd("tokens")).text)
        limits = json.loads((await self.cmd("limits --json")).text)
        self.assertEqual((limits["maxBandwidth"], limits["tunnelMaxConnections"]), (0, 0))
        self.assertIn("maxBandwidthPerClient", (await self.cmd("limits")).text)
        self.assertEqual((await self.cmd("token limit laptop 0")).text,
                         "client laptop has no bandwidth limit of its own now (maxBandwidthPerClient applies)")
        self.assertTrue((await self.cmd("token limit laptop fast", EXIT_USAGE)).text.startswith(
            "error: max_bandwidth must be a rate a second such as \"10MB\""))
        self.assertEqual((await self.cmd("token limit nobody 1MB", EXIT_FAILED)).text,
                         "error: no active token named 'nobody'")

    async def test_tokens(self):
        live = await self._live()
        created = await self.cmd("token create laptop")
        first, token = created.text.split("\n")
        self.assertEqual(first, "token for client laptop (shown only now; keep it):")
        self.assertGreater(len(token), 20)
        listing = (await self.cmd("tokens")).text
        self.assertIn("laptop", listing)
        self.assertNotIn(token, listing)
        self.assertNotIn(token, (await self.cmd("tokens --json")).text)
        data = json.loads((await self.cmd("token create phone --json")).text)
        self.assertEqual(data["name"], "phone")
        self.assertTrue(data["token"])
        await self.cmd("token create shop --domains shop.example.com,*.shop.example.com")
        shown = json.loads((await self.cmd("tokens --json")).text)
        self.assertEqual([t["allow_domains"] for t in shown if t["name"] == "shop"],
                         [["shop.example.com", "*.shop.example.com"]])
        self.assertEqual((await self.cmd("token domains shop wiki.example.com")).text,
                         "client shop may claim: wiki.example.com")
        self.assertEqual((await self.cmd("token domains shop")).text,
                         "client shop may claim the custom domains the server allows")
        # The token works: a client logs in with it.
        await live.start_client([f"echo=tcp:127.0.0.1:{self.echo}"], token=token)
        # Wait for its tunnel too: revoking while the tunnel is still opening is another test.
        await wait_until(lambda: ("laptop", "echo") in live.core.tunnels)
        self.assertEqual((await self.cmd("token revoke laptop")).text, "token laptop revoked; its client is cut off")
        await wait_until(lambda: "laptop" not in live.core.sessions)
        states = {t["name"]: t["revoked_at"] for t in json.loads((await self.cmd("tokens --json")).text)}
        self.assertIsNotNone(states["laptop"])
        self.assertIsNone(states["phone"])
        self.assertEqual((await self.cmd("token revoke laptop", EXIT_FAILED)).text,
                         "error: no active token named 'laptop'")
        self.assertEqual((await self.cmd("token create 'bad name'", EXIT_USAGE)).text,
                         "error: a token's name (its client's name) must be 1 to 64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit (got 'bad name')")

    async def test_kick_makes_the_client_reconnect(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        await live.wait_up("echo")
        before = live.core.sessions["alice"]
        self.assertEqual((await self.cmd("kick alice")).text, "client alice disconnected")
        await wait_until(lambda: live.core.sessions.get("alice") not in (None, before), timeout=20)
        self.assertEqual((await self.cmd("kick nobody", EXIT_FAILED)).text,
                         "error: client 'nobody' is not connected")
        kicked = json.loads((await self.cmd("events --type client.kicked --json")).text)
        self.assertEqual([e["client"] for e in kicked], ["alice"])

    async def test_events_filters_and_limits(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        await live.wait_up("echo")
        await live.management.create_token("bob")
        await self.cmd("tunnel add bob one 127.0.0.1:1")
        await self.cmd("tunnel add bob two 127.0.0.1:2")
        text = (await self.cmd("events --type tunnel.added")).text
        lines = text.split("\n")
        self.assertEqual(lines[0].split(), ["TIME", "(UTC)", "TYPE", "DETAIL"])
        self.assertEqual(len(lines), 3)
        self.assertIn("tunnel.added  bob/two", lines[1])  # newest first
        one = json.loads((await self.cmd("events --type tunnel. --client bob --limit 1 --json")).text)
        self.assertEqual([(e["type"], e["tunnel"]) for e in one], [("tunnel.added", "two")])
        everything = json.loads((await self.cmd("events --limit 1000 --json")).text)
        self.assertIn("client.connected", {e["type"] for e in everything})
        for bad, message in [
            ("events --limit 0", "events: --limit must be from 1 to 1000; type 'help events' for usage"),
            ("events --limit 1001", "events: --limit must be from 1 to 1000; type 'help events' for usage"),
            ("events --limit many", "events: --limit must be a number, not 'many'; type 'help events' for usage"),
            ("events --limit", "events: --limit needs a value; type 'help events' for usage"),
            ("events --json=yes", "events: --json takes no value; type 'help events' for usage"),
        ]:
            self.assertEqual((await self.cmd(bad, EXIT_USAGE)).text, message)

    async def test_reload(self):
        live = await self._live()
        self.assertEqual((await self.cmd("reload")).text, "config reloaded: no setting changed")
        (event,) = await live.management.events(type_="config.reloaded")
        self.assertEqual(event.type, "config.reloaded")
        self.assertIn("console", event.address)

    async def test_bad_commands_get_one_line_that_points_at_help(self):
        await self._live()
        for line, message in [
            ("frobnicate", "unknown command 'frobnicate'; type 'help' for the list of commands"),
            ("tunnels --colour", "tunnels: unknown option '--colour'; type 'help tunnels' for usage"),
            ("client", "client: missing NAME; type 'help client' for usage"),
            ("kick a b", "kick: unexpected argument 'b'; type 'help kick' for usage"),
            ("tunnel add alice web", "tunnel add: missing LOCALHOST:PORT; type 'help tunnel add' for usage"),
            ("token", "token: say 'token create NAME', 'token domains NAME [DOMAIN ...]', 'token limit NAME RATE' or "
                      "'token revoke NAME' ('tokens' lists them); "
                      "type 'help token' for usage"),
            ("status 'unclosed", "cannot read the command: No closing quotation; type 'help' for the syntax"),
            ("help nothing", "help: no command 'nothing'; type 'help' for the list of commands"),
            ("x" * (MAX_LINE + 1), f"the command is too long (more than {MAX_LINE} characters)"),
        ]:
            result = await self.cmd(line, EXIT_USAGE)
            self.assertEqual(result.text, message)
            self.assertNotIn("\n", result.text)
        self.assertEqual((await self.cmd("   ")).text, "")

    async def test_nodes(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        await live.wait_up("echo")
        node = live.core.store.store.node
        text = (await self.cmd("nodes")).text
        header, row = text.split("\n")
        self.assertTrue(header.startswith("NODE"), header)
        self.assertRegex(row, rf"^\* {node} +up +1 +1 ")
        self.assertFits(text)
        (view,) = json.loads((await self.cmd("nodes --json")).text)
        self.assertEqual((view["node"], view["state"], view["here"], view["clients"], view["tunnels_up"]),
                         (node, "up", True, ["alice"], 1))
        self.assertIsNone(view["traffic_at"])

    async def test_help(self):
        await self._live()
        overview = (await self.cmd("help")).text
        for name in ["status", "clients", "client NAME", "kick NAME", "tunnels", "tunnel TUNNEL", "tunnel add",
                     "tunnel remove", "tunnel enable", "tunnel disable", "tunnel restart", "tokens",
                     "token create", "token revoke", "events", "reload", "watch", "python", "exit"]:
            self.assertIn(name, overview)
        self.assertEqual((await self.cmd("help kick")).text.split("\n")[0], "usage: kick NAME")
        group = (await self.cmd("help tunnel")).text
        self.assertIn("tunnel add CLIENT NAME LOCALHOST:PORT [PUBLICPORT]", group)
        self.assertIn("tunnel restart TUNNEL", group)
        self.assertIn("usage: events", (await self.cmd("? events")).text)

    async def test_actions_for_the_session(self):
        await self._live()
        self.assertEqual((await self.cmd("watch")).action, "watch")
        self.assertEqual((await self.cmd("quit")).action, "exit")
        off = await self.cmd("python", EXIT_FAILED)
        self.assertIsNone(off.action)
        self.assertIn("console.python = true", off.text)
        self.commands.python_allowed = True
        self.assertEqual((await self.cmd("python")).action, "python")

    async def test_an_unexpected_error_is_reported_and_logged(self):
        live = await self._live()

        async def broken() -> None:
            raise RuntimeError("boom")

        live.management.status = broken
        result = await self.cmd("status", EXIT_FAILED)
        self.assertEqual(result.text, "internal error while running 'status'; the details are in the server's log")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual((await self.cmd("tokens")).status, EXIT_OK)  # and the console goes on

    async def test_completion(self):
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        await live.wait_up("echo")
        # bob has connected once and is offline now; carol has a token and never connected.
        _, bob_token = await live.management.create_token("bob")
        alice = live.client
        bob = await live.start_client([f"echo=tcp:127.0.0.1:{self.echo}"], token=bob_token)
        # Up on the client means recorded in the store: the server answers after it wrote.
        await wait_until(lambda: bob.factory.current is not None and "echo" in bob.factory.current.up)
        await bob.stopService()
        await wait_until(lambda: "bob" not in live.core.sessions)
        live.client = alice
        await live.management.create_token("carol")
        await self.cmd("tunnel add bob solo 127.0.0.1:2")
        await self.commands.refresh_names()
        complete = self.commands.complete
        self.assertEqual(complete("st"), ["status"])
        self.assertEqual(complete("tok"), ["token", "tokens"])
        self.assertEqual(complete("token "), ["create", "domains", "limit", "revoke"])
        self.assertEqual(complete("tunnel re"), ["remove", "restart"])
        # A name two clients use completes only as CLIENT/NAME.
        self.assertEqual(complete("tunnel disable "), ["alice/echo", "bob/echo", "bob/solo", "solo"])
        self.assertEqual(complete("kick a"), ["alice"])
        self.assertEqual(complete("kick "), ["alice"])  # only the online ones
        self.assertEqual(complete("client "), ["alice", "bob"])
        self.assertEqual(complete("tunnel add "), ["alice", "bob", "carol"])
        self.assertEqual(complete("events --type tunnel.o"), ["tunnel.opened"])
        self.assertEqual(complete("events --cl"), ["--client"])
        self.assertEqual(complete("help tu"), ["tunnel", "tunnels"])
        self.assertEqual(complete("help tunnel "), ["add", "disable", "edit", "enable", "remove", "restart"])
        self.assertEqual(complete("token revoke "), ["alice", "bob", "carol"])
        self.assertEqual(complete("frob "), [])

    async def test_notify_add_list_test_remove(self):
        from twisted.web.server import Site

        from tests.test_notify_webhook import Receiver, listen

        receiver = Receiver()
        port = listen(self, Site(receiver))
        live = await self._live("echo=tcp:127.0.0.1:ECHO")
        # Its tunnel.opened event comes before the webhook, not to it.
        await live.wait_up("echo")
        self.assertIn("(none)", (await self.cmd("notify")).text)
        added = await self.cmd(
            f"notify add ops http://127.0.0.1:{port}/secret-path --events client.*,tunnel.* --format slack --secret s3"
        )
        self.assertIn(f"http://127.0.0.1:{port}/…", added.text)
        self.assertNotIn("secret-path", added.text)
        self.assertFits(added.text)
        (view,) = json.loads((await self.cmd("notify --json")).text)
        self.assertEqual(
            (view["name"], view["events"], view["format"], view["signed"], view["source"]),
            ("ops", ["client.*", "tunnel.*"], "slack", True, "operator"),
        )
        await self.cmd("notify test ops")
        await wait_until(lambda: len(receiver.requests) == 1)
        self.assertIn("test notification", receiver.requests[0][2].decode())
        await self.cmd("notify add ops http://127.0.0.1:1/", EXIT_FAILED)
        await self.cmd("notify add x ftp://nowhere/", EXIT_USAGE)
        await self.cmd("notify add x", EXIT_USAGE)
        self.assertIn("removed", (await self.cmd("notify remove ops")).text)
        await self.cmd("notify remove ops", EXIT_FAILED)
        await self.cmd("notify test ops", EXIT_FAILED)

    async def test_mail_add_list_test_remove(self):
        from tests.test_notify_mail import MailServer

        mail = MailServer(self, open_relay=True)
        import os
        import tempfile

        config = os.path.join(tempfile.mkdtemp(prefix="gotaxy-test-"), "server.toml")
        with open(config, "w") as f:
            f.write(f'[smtp]\nhost = "127.0.0.1"\nport = {mail.number}\ntls = "none"\nfrom = "g@example.test"\n'
                    f'to = ["ops@example.test"]\nbatchSeconds = 0.2\n')
        await self._live(server_args=["--config", config])
        listed = (await self.cmd("mail")).text
        self.assertIn("ops@example.test", listed)
        self.assertIn("config", listed)
        added = await self.cmd("mail add dev@example.test --events token.*,client.*")
        self.assertIn("operator", added.text)
        (ops, dev) = json.loads((await self.cmd("mail --json")).text)
        self.assertEqual(dev, {"address": "dev@example.test", "events": ["token.*", "client.*"], "source": "operator"})
        await self.cmd("mail test dev@example.test")
        # (ops@, configured for every event, also gets server.started.)
        await wait_until(lambda: any(m["To"] == "dev@example.test" for m in mail.messages()), timeout=15)
        await self.cmd("mail add dev@example.test", EXIT_FAILED)
        await self.cmd("mail add not-an-address", EXIT_USAGE)
        await self.cmd("mail remove ops@example.test", EXIT_FAILED)
        self.assertIn("no longer", (await self.cmd("mail remove dev@example.test")).text)
        await self.cmd("mail test dev@example.test", EXIT_FAILED)
