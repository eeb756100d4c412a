"""
Reloading server.toml while the server runs (``gotaxy.server.reload``):
what applies live, what needs a restart, and a wrong file changing nothing.
A real server and client in this process (``tests/inprocess.py``).
"""

from __future__ import annotations

import os
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from gotaxy.server.manage import ManagementError
from tests.inprocess import LiveSystem, RawControlClient, echo_through, free_port, listen_echo, port_refused, wait_until


class Held(Protocol):
    """A connection kept open through a tunnel, to prove a reload does not touch it."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    async def echo(self, payload: bytes) -> bytes:
        self.received = b""
        self.transport.write(payload)
        await wait_until(lambda: len(self.received) >= len(payload))
        return self.received


async def listening(port: int) -> bool:
    """Something accepts connections on ``port`` (the connection is closed at once)."""
    from twisted.internet.error import ConnectionRefusedError

    try:
        held = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), Held())
    except ConnectionRefusedError:
        return False
    held.transport.loseConnection()
    await held.lost
    return True


async def hold(port: int) -> Held:
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Held())


class ServerReloadTests(unittest.TestCase):
    def write(self, text: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    async def _live(self, toml: str, tunnels: List[str] = ()) -> LiveSystem:
        self.path = os.path.join(self.mktemp() + "-server.toml")
        self.write(toml)
        self.echo = listen_echo(self)
        live = await LiveSystem.start(
            self, [t.replace("ECHO", str(self.echo)) for t in tunnels], server_args=["--config", self.path]
        )
        self.events: list = []
        live.core.events.subscribe(self.events.append)
        return live

    def of_type(self, kind: str) -> list:
        return [e for e in self.events if e.type == kind]

    async def test_narrowing_allow_ports_closes_the_tunnel_outside_and_keeps_the_others(self):
        a, b = free_port(), free_port()
        live = await self._live(
            f"allowPorts = [{{single = {a}}}, {{single = {b}}}]\n",
            [f"a=tcp:127.0.0.1:ECHO:{a}", f"b=tcp:127.0.0.1:ECHO:{b}"],
        )
        await live.wait_up("a")
        await live.wait_up("b")
        kept = await hold(a)
        self.assertEqual(await kept.echo(b"before"), b"before")

        self.write(f"allowPorts = [{{single = {a}}}]\n")
        report = await live.management.reload("a test")

        (change,) = [c for c in report.applied if c.key == "allowPorts"]
        self.assertIn("1 open tunnel(s) outside them closed", change.detail)
        self.assertTrue(await port_refused(b))
        (closed,) = self.of_type("tunnel.closed")
        self.assertEqual(closed.tunnel, "b")
        self.assertIn(f"closed by a config reload: port {b}", closed.detail)
        self.assertIn("allowPorts", closed.detail)
        # The client is told, and tunnel a's open connection never noticed.
        await wait_until(lambda: "b" not in live.client.factory.current.up)
        self.assertEqual(await kept.echo(b"after"), b"after")
        self.assertFalse(kept.lost.called)
        (reloaded,) = self.of_type("config.reloaded")
        self.assertEqual(reloaded.address, "a test")
        self.assertIn("applied: allowPorts", reloaded.detail)

    async def test_lowering_max_ports_per_client_closes_the_newest_tunnels(self):
        live = await self._live("maxPortsPerClient = 3\n", ["a=tcp:127.0.0.1:ECHO", "b=tcp:127.0.0.1:ECHO",
                                                           "c=tcp:127.0.0.1:ECHO"])
        for name in "abc":
            await live.wait_up(name)
        newest = list(live.core.sessions["alice"].tunnels)[-1]
        self.write("maxPortsPerClient = 2\n")
        report = await live.management.reload("a test")
        self.assertIn("maxPortsPerClient", [c.key for c in report.applied])
        (closed,) = self.of_type("tunnel.closed")
        self.assertEqual(closed.tunnel, newest)
        self.assertIn("maxPortsPerClient is now 2", closed.detail)
        self.assertEqual(len(live.core.sessions["alice"].tunnels), 2)

    async def test_a_wrong_file_changes_nothing_and_the_error_names_the_key(self):
        port = free_port()
        live = await self._live(f"allowPorts = [{{single = {port}}}]\nlog.level = \"info\"\n",
                                [f"a=tcp:127.0.0.1:ECHO:{port}"])
        await live.wait_up("a")
        config = live.core.config
        self.write(f"allowPorts = [{{start = {port}, end = 1}}]\nlog.level = \"debug\"\n")
        with self.assertRaises(ManagementError) as caught:
            await live.management.reload("a test")
        self.assertEqual(caught.exception.kind, "invalid")
        self.assertIn("nothing changed", str(caught.exception))
        self.assertIn("'allowPorts' must be", str(caught.exception))
        self.assertIs(live.core.config, config)
        self.assertEqual(live.core.config.log.level, "info")
        self.assertEqual(await echo_through(port, b"still"), b"still")
        (failed,) = self.of_type("config.reload_failed")
        self.assertEqual(failed.address, "a test")
        self.assertIn("'allowPorts' must be", failed.detail)
        self.assertEqual(self.of_type("config.reloaded"), [])

    async def test_live_settings_are_applied_and_the_rest_is_reported(self):
        hook_port = free_port()
        live = await self._live("transport.maxPendingConnections = 256\n", ["a=tcp:127.0.0.1:ECHO"])
        await live.wait_up("a")
        server = live.server
        self.write(
            "transport.maxPendingConnections = 7\ntransport.maxPendingPerIP = 3\n"
            'log.level = "warn"\n'
            "history.sampleInterval = 5\n"
            'metrics.exposure = "open"\n'
            "transport.heartbeatInterval = 4\ntransport.heartbeatTimeout = 12\n"
            "console.python = true\n"
            "udpPacketSize = 1200\n"
            f'[[webhooks]]\nurl = "http://127.0.0.1:{hook_port}/hook"\n'
        )
        report = await server.management.reload("a test")
        applied = {c.key for c in report.applied}
        self.assertLessEqual({
            "transport.maxPendingConnections / transport.maxPendingPerIP", "log.level",
            "history.sampleInterval", "metrics.exposure / metrics.token / enablePrometheus",
            "transport.heartbeatInterval / transport.heartbeatTimeout", "webhooks", "udpPacketSize",
        }, applied)
        self.assertEqual((server.admission.max_pending, server.admission.max_per_ip), (7, 3))
        self.assertEqual(server.history.sample_interval, 5)
        self.assertEqual(server.metrics_resource.exposure, "open")
        monitor = live.core.sessions["alice"].heartbeat
        self.assertEqual((monitor.interval, monitor.timeout), (4, 12))
        self.assertEqual([t.spec.url for t in server.notifier.from_file], [f"http://127.0.0.1:{hook_port}/hook"])
        self.assertIn(server.notifier.from_file[0], server.notifier.targets)
        self.assertEqual([(c.key, c.detail) for c in report.restart],
                         [("console.python", "the console's sessions are set up at start")])
        self.assertIn("needs a restart: console.python", self.of_type("config.reloaded")[0].detail)

        # Removing the webhook from the file removes its target.
        self.write("")
        await server.management.reload("a test")
        self.assertEqual(server.notifier.from_file, [])
        self.assertEqual(server.metrics_resource.exposure, "off")
        self.assertEqual(server.admission.max_pending, 256)

    async def test_the_panel_moves_to_a_new_address_and_its_old_port_closes(self):
        first, second = free_port(), free_port()
        live = await self._live(f'webServer.endpoint = "tcp:{first}:interface=127.0.0.1"\n')
        self.assertTrue(await listening(first))
        self.write(f'webServer.endpoint = "tcp:{second}:interface=127.0.0.1"\n')
        report = await live.management.reload("a test")
        (change,) = [c for c in report.applied if c.key.startswith("webServer.addr")]
        self.assertIn(f"listens at 127.0.0.1:{second}", change.detail)
        self.assertFalse(await listening(first))
        self.assertTrue(await listening(second))

    async def test_the_https_port_moves(self):
        first, second = free_port(), free_port()
        live = await self._live(f"vhostHTTPSPort = {first}\nvhostHTTPSHelloTimeout = 10\n")
        self.assertTrue(await listening(first))
        self.write(f"vhostHTTPSPort = {second}\nvhostHTTPSHelloTimeout = 3\n")
        report = await live.management.reload("a test")
        self.assertEqual({c.key for c in report.applied}, {"vhostHTTPSPort", "vhostHTTPSHelloTimeout"})
        self.assertFalse(await listening(first))
        self.assertTrue(await listening(second))
        self.assertEqual(live.core.fronts["https"].hello_timeout, 3)

    async def test_a_port_that_cannot_be_had_keeps_the_old_listener(self):
        first = free_port()
        busy = listen_echo(self)
        live = await self._live(f'webServer.endpoint = "tcp:{first}:interface=127.0.0.1"\n')
        self.write(f'webServer.endpoint = "tcp:{busy}:interface=127.0.0.1"\n')
        report = await live.management.reload("a test")
        (change,) = [c for c in report.restart if c.key.startswith("webServer.addr")]
        self.assertIn("already uses that port", change.detail)
        self.assertIn(f"still listens at 127.0.0.1:{first}", change.detail)
        self.assertTrue(await listening(first))

    async def test_changing_the_shared_token_disconnects_its_clients(self):
        live = await self._live('auth.token = "old-shared-secret"\n')
        raw = await RawControlClient.connect(live.control_port)
        self.addCleanup(raw.close)
        raw.login("old-shared-secret", user="office")
        self.assertEqual((await raw.reply())["type"], "login_ok")
        self.write('auth.token = "new-shared-secret"\n')
        report = await live.management.reload("a test")
        (change,) = [c for c in report.applied if c.key == "auth.token"]
        self.assertIn("1 client(s) logged in with the old shared token disconnected", change.detail)
        await raw.closed
        self.assertIn("shared auth.token changed", str(raw.replies[-1]))
        self.assertNotIn("shared-secret", repr(report))
        self.assertNotIn("shared-secret", self.of_type("config.reloaded")[0].detail)


def test_the_docs_say_for_every_server_setting_whether_it_applies_live():
    """docs/configuration.md's "Changing configuration live" table: a new setting must get its row (and its rule)."""
    import re
    from pathlib import Path

    from gotaxy.server.reload import _SETTINGS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    table = doc.split("## Changing configuration live", 1)[1].split("### The client", 1)[0]
    named = re.findall(r"`([^`]+)`", table)

    def listed(key: str) -> bool:
        return any(n == key or (n.endswith(".*") and key.startswith(n[:-1])) for n in named)

    missing = [key for key in _SETTINGS if not listed(key)]
    assert missing == [], f"docs/configuration.md does not say whether these apply live: {missing}"
