"""
The client's reload and its admin API (``gotaxy.client.reload``,
``gotaxy.client.admin``): a real server and client in this process.
The same with real processes and a 256 MiB transfer: tests/test_e2e_reload.py.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, List

import treq
from twisted.internet import reactor
from twisted.trial import unittest

from gotaxy.client import tap as client_tap
from gotaxy.client.admin import AdminService, ClientAdmin, host_allowed, main as admin_main
from gotaxy.config import ConfigError
from tests.inprocess import LiveSystem, echo_through, free_port, listen_echo, port_refused, wait_until
from tests.test_server_reload import hold


def proxies(*entries: str) -> str:
    return "".join(f"[[proxies]]\n{entry}\n" for entry in entries)


class _Client(unittest.TestCase):
    def setUp(self) -> None:
        self.echo = listen_echo(self)
        self.other = listen_echo(self)

    def write(self, text: str, path: str = "") -> None:
        with open(path or self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def head(self) -> str:
        return (f'serverAddr = "127.0.0.1"\nserverPort = {self.live.control_port}\n'
                f'auth.token = "{self.live.token}"\ntransport.tls.insecureSkipVerify = true\n'
                f'dataDir = "{os.path.join(self.live.data_dir, "client")}"\n{self.extra}')

    async def start(self, body: str, extra: str = "") -> Any:
        self.live = await LiveSystem.start(self)
        self.extra = extra
        self.path = os.path.join(self.live.data_dir, "client.toml")
        self.write(self.head() + body)
        options = client_tap.Options()
        options.parseOptions(["--config", self.path])
        self.client = client_tap.makeService(options, reactor)
        self.live.client = self.client
        self.client.startService()
        self.addCleanup(self.client.stopService)
        await wait_until(lambda: self.client.factory.current is not None)
        return self.client

    def server_tunnels(self) -> List[str]:
        return sorted(name for client, name in self.live.core.tunnels)


class ClientReloadTests(_Client):
    async def test_reload_opens_added_closes_removed_reopens_changed_and_leaves_the_rest(self):
        a, c, d = free_port(), free_port(), free_port()
        await self.start(proxies(
            f'name = "a"\nlocalPort = ECHO\nremotePort = {a}',
            f'name = "c"\nlocalPort = ECHO\nremotePort = {c}',
            f'name = "d"\nlocalPort = ECHO\nremotePort = {d}',
        ).replace("ECHO", str(self.echo)))
        for name in "acd":
            await self.live.wait_up(name)
        kept = await hold(a)
        self.assertEqual(await kept.echo(b"before"), b"before")
        a_tunnel = self.live.core.tunnels[("alice", "a")]

        self.write(self.head() + proxies(
            f'name = "a"\nlocalPort = {self.echo}\nremotePort = {a}',
            f'name = "b"\nlocalPort = {self.echo}',
            f'name = "d"\nlocalPort = {self.other}\nremotePort = {d}',
        ))
        report = await self.client.reloader.reload("a test")
        self.assertEqual((report.added, report.removed, report.changed, report.unchanged),
                         (("b",), ("c",), ("d",), ("a",)))
        await self.live.wait_up("b")
        await wait_until(lambda: self.server_tunnels() == ["a", "b", "d"])
        await wait_until(lambda: "d" in self.client.factory.current.up)
        self.assertTrue(await port_refused(c))
        self.assertEqual(self.client.factory.current.proxies["d"].local_port, self.other)
        self.assertEqual(await echo_through(d, b"to the new port"), b"to the new port")
        (event,) = [e for e in await self.live.management.events(type_="client.reloaded")]
        self.assertEqual(event.client, "alice")
        self.assertEqual(event.detail, "asked by a test: opened: b; closed: c; reopened: d")
        # Tunnel a: the same live tunnel, its open connection untouched.
        self.assertIs(self.live.core.tunnels[("alice", "a")], a_tunnel)
        self.assertEqual(await kept.echo(b"after"), b"after")
        self.assertFalse(kept.lost.called)

    async def test_a_removed_tunnels_connections_drain_then_end_after_the_grace_period(self):
        from gotaxy.client import control

        self.patch(control, "DRAIN_GRACE", 1.0)
        c = free_port()
        await self.start(proxies(f'name = "c"\nlocalPort = {self.echo}\nremotePort = {c}'))
        await self.live.wait_up("c")
        held = await hold(c)
        self.assertEqual(await held.echo(b"before"), b"before")
        self.write(self.head())
        self.assertEqual((await self.client.reloader.reload("a test")).removed, ("c",))
        await wait_until(lambda: self.server_tunnels() == [])
        self.assertTrue(await port_refused(c))  # no new connection...
        self.assertEqual(await held.echo(b"draining"), b"draining")  # ...but the open one goes on
        await held.lost  # and ends once the grace period is over
        self.assertIsNotNone(self.client.factory.current)  # a client with no tunnel left stays connected

    async def test_enabled_false_closes_and_true_opens_again(self):
        await self.start(proxies(f'name = "a"\nlocalPort = {self.echo}'))
        await self.live.wait_up("a")
        self.write(self.head() + proxies(f'name = "a"\nlocalPort = {self.echo}\nenabled = false'))
        report = await self.client.reloader.reload("a test")
        self.assertEqual(report.removed, ("a",))
        await wait_until(lambda: self.server_tunnels() == [])
        self.write(self.head() + proxies(f'name = "a"\nlocalPort = {self.echo}'))
        report = await self.client.reloader.reload("a test")
        self.assertEqual(report.added, ("a",))
        await self.live.wait_up("a")

    async def test_a_wrong_file_changes_nothing(self):
        await self.start(proxies(f'name = "a"\nlocalPort = {self.echo}'))
        port = await self.live.wait_up("a")
        config = self.client.factory.config
        self.write(self.head() + proxies(f'name = "a"\nlocalPrt = {self.echo}', 'name = "b"\nlocalPort = 1'))
        with self.assertRaises(ConfigError) as caught:
            await self.client.reloader.reload("a test")
        self.assertIn("unknown key 'localPrt' in proxy 'a'; did you mean 'localPort'?", str(caught.exception))
        self.assertIs(self.client.factory.config, config)
        self.assertEqual(self.server_tunnels(), ["a"])
        self.assertEqual(await echo_through(port, b"still"), b"still")

    async def test_included_files_added_and_removed_between_reloads(self):
        confd = os.path.abspath(self.mktemp())
        os.makedirs(confd)
        await self.start(proxies(f'name = "main"\nlocalPort = {self.echo}'),
                         extra=f'includes = ["{confd}/*.toml"]\n')
        await self.live.wait_up("main")
        self.write(proxies(f'name = "x"\nlocalPort = {self.echo}'), os.path.join(confd, "x.toml"))
        self.assertEqual((await self.client.reloader.reload("a test")).added, ("x",))
        await self.live.wait_up("x")
        os.unlink(os.path.join(confd, "x.toml"))
        self.write(proxies(f'name = "y"\nlocalPort = {self.echo}'), os.path.join(confd, "y.toml"))
        report = await self.client.reloader.reload("a test")
        self.assertEqual((report.added, report.removed), (("y",), ("x",)))
        await wait_until(lambda: self.server_tunnels() == ["main", "y"])

    async def test_settings_of_the_connection_need_a_restart(self):
        await self.start(proxies(f'name = "a"\nlocalPort = {self.echo}'))
        await self.live.wait_up("a")
        self.write(self.head().replace(f"serverPort = {self.live.control_port}", "serverPort = 1")
                   + 'log.level = "debug"\n' + proxies(f'name = "a"\nlocalPort = {self.echo}'))
        report = await self.client.reloader.reload("a test")
        self.assertEqual((report.applied, report.restart), (("log.level",), ("serverPort",)))
        self.assertEqual(self.client.factory.config.server_port, self.live.control_port)
        self.assertIs(self.client.factory.current, self.client.factory.latest)


class ReloadNoticeTests(unittest.TestCase):
    """The client_reloaded message, as a server takes it from any client."""

    async def test_one_event_per_interval_and_malformed_notices_end_the_connection(self):
        from tests.inprocess import RawControlClient

        live = await LiveSystem.start(self)
        heard: list = []
        live.core.events.subscribe(lambda e: heard.append(e) if e.type == "client.reloaded" else None)
        raw = await RawControlClient.connect(live.control_port)
        self.addCleanup(raw.close)
        raw.login(live.token)
        ok = await raw.reply()
        self.assertIn("client_reloaded", ok["features"])
        raw.send({"type": "client_reloaded", "who": "SIGHUP", "detail": "opened: b\x1b[2J"})
        raw.send({"type": "client_reloaded", "who": "SIGHUP", "detail": "a second one, too soon"})
        await wait_until(lambda: bool(heard))
        raw.send({"type": "client_reloaded", "who": "SIGHUP", "detail": "x" * 2001})
        await raw.closed
        (event,) = heard
        self.assertEqual((event.client, event.detail), ("alice", "asked by SIGHUP: opened: b [2J"))


class AdminApiTests(_Client):
    async def admin(self, body: str, user: str = "admin", password: str = "s3cret") -> str:
        self.admin_port = free_port()
        extra = f'webServer.port = {self.admin_port}\n'
        if password:
            extra += f'webServer.user = "{user}"\nwebServer.password = "{password}"\n'
        await self.start(body, extra)
        self.stopped: List[bool] = []
        # The tap's admin service stops the reactor on /api/stop; this one records it.
        for service in list(self.client):
            if isinstance(service, AdminService):
                await service.stopService()
                service.disownServiceParent()
        admin = ClientAdmin(self.client.factory, self.client.reloader, self.path, reactor,
                            stop=lambda: self.stopped.append(True))
        service = AdminService(admin, "127.0.0.1", self.admin_port, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
        return f"http://127.0.0.1:{self.admin_port}"

    async def call(self, method: str, path: str, headers: Any = None, **kwargs: Any) -> Any:
        from twisted.web.client import HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.request(method, self.base + path, headers=headers if headers is not None else self.auth,
                                      pool=pool, **kwargs)
        body = await response.content()
        await pool.closeCachedConnections()
        return response.code, body

    async def test_status_reload_config_and_stop(self):
        self.base = await self.admin(proxies(f'name = "a"\nlocalPort = {self.echo}',
                                             'name = "off"\nlocalPort = 1\nenabled = false'))
        port = await self.live.wait_up("a")
        code, body = await self.call("GET", "/api/status")
        self.assertEqual(code, 200)
        by_name = {p["name"]: p for p in json.loads(body)["tcp"]}
        self.assertEqual(by_name["a"]["status"], "running")
        self.assertEqual(by_name["a"]["remote_addr"], f"127.0.0.1:{port}")
        self.assertEqual(by_name["a"]["local_addr"], f"127.0.0.1:{self.echo}")
        self.assertEqual(by_name["off"]["status"], "disabled")

        code, text = await self.call("GET", "/api/config")
        self.assertEqual((code, text.decode()), (200, open(self.path).read()))
        new = text.decode().replace('name = "off"\nlocalPort = 1\nenabled = false', f'name = "b"\nlocalPort = {self.echo}')
        code, body = await self.call("PUT", "/api/config", data=new.encode())
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["added"], ["b"])
        self.assertEqual(open(self.path).read(), new)
        await self.live.wait_up("b")

        code, body = await self.call("PUT", "/api/config", data=b'serverPort = "x"\n')
        self.assertEqual(code, 400)
        self.assertIn(f"the new file was refused and {self.path} kept", json.loads(body)["error"])
        self.assertEqual(open(self.path).read(), new)

        code, body = await self.call("POST", "/api/reload")
        self.assertEqual((code, json.loads(body)["unchanged"]), (200, ["a", "b"]))
        code, _ = await self.call("POST", "/api/stop")
        self.assertEqual(code, 200)
        await wait_until(lambda: self.stopped == [True])

    async def test_credentials_host_and_origin_are_checked(self):
        self.base = await self.admin(proxies(f'name = "a"\nlocalPort = {self.echo}'))
        self.assertEqual((await self.call("GET", "/healthz", headers={}))[0], 200)
        self.assertEqual((await self.call("GET", "/api/status", headers={}))[0], 401)
        wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:s3cre").decode()}
        self.assertEqual((await self.call("GET", "/api/status", headers=wrong))[0], 401)
        self.assertEqual((await self.call("POST", "/api/stop", headers=wrong))[0], 401)
        rebound = dict(self.auth, Host="evil.example")
        self.assertEqual((await self.call("GET", "/api/status", headers=rebound))[0], 403)
        cross = dict(self.auth, Origin="http://evil.example")
        self.assertEqual((await self.call("POST", "/api/reload", headers=cross))[0], 403)
        self.assertEqual(self.stopped, [])
        self.assertTrue(host_allowed("127.0.0.1:7400") and host_allowed("[::1]:7400") and host_allowed("localhost"))
        self.assertFalse(host_allowed("gotaxy.example:7400") or host_allowed(""))

    async def test_without_a_password_the_config_file_is_not_served(self):
        self.base = await self.admin(proxies(f'name = "a"\nlocalPort = {self.echo}'), password="")
        code, body = await self.call("GET", "/api/config", headers={})
        self.assertEqual(code, 403)
        self.assertIn("needs webServer.user and webServer.password", json.loads(body)["error"])
        self.assertEqual((await self.call("PUT", "/api/config", headers={}, data=b"x = 1\n"))[0], 403)
        self.assertEqual((await self.call("GET", "/api/status", headers={}))[0], 200)

    async def test_the_gotaxy_client_commands(self):
        self.base = await self.admin(proxies(f'name = "a"\nlocalPort = {self.echo}'))
        await self.live.wait_up("a")
        import io

        out, err = io.StringIO(), io.StringIO()
        code = await self._in_thread(admin_main, ["-c", self.path, "status"], out, err)
        self.assertEqual(code, 0, err.getvalue())
        self.assertIn("running", out.getvalue())
        self.write(open(self.path).read() + proxies(f'name = "b"\nlocalPort = {self.echo}'))
        out = io.StringIO()
        self.assertEqual(await self._in_thread(admin_main, ["-c", self.path, "reload"], out, err), 0)
        self.assertIn("opened: b", out.getvalue())

    def _in_thread(self, function: Any, *args: Any) -> Any:
        from twisted.internet.threads import deferToThread

        return deferToThread(function, *args)

    def test_beyond_loopback_needs_a_password(self):
        from gotaxy.config import parse_client_config

        with self.assertRaises(ConfigError) as caught:
            parse_client_config({"webServer": {"addr": "0.0.0.0", "port": 7400}})
        self.assertIn("'webServer.password' is not set", str(caught.exception))
        parse_client_config({"webServer": {"addr": "0.0.0.0", "port": 7400, "user": "a", "password": "b"}})
