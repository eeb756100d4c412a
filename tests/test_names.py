"""
One rule for every name (``gotaxy.names``), held at every entry point.

``re.match`` with ``$`` let ``"w\\n"`` through (``$`` matches before a
trailing newline), so a client, tunnel or token name could carry a newline
or a terminal escape into log lines, the panel and the console.  Each entry
point (the wire, the REST API, the console, config files and flags,
``gotaxy token create``, the store) must refuse such names with the one
sentence that says what a name may be.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from twisted.trial import unittest

from gotaxy.cli import main as gotaxy_main
from gotaxy.config import ConfigError, parse_client_config, parse_server_config, parse_tunnel_flag
from gotaxy.console.commands import EXIT_USAGE, Commands
from gotaxy.names import NAME_RULE, InvalidName, check_name, is_valid_name
from gotaxy.store import Store, StoreError, default_url
from gotaxy.web.openapi import API_PREFIX as API
from gotaxy.web.testing import WebClient, make_panel
from tests.e2e import ROOT
from tests.inprocess import ADMIN_PASSWORD, LiveSystem, RawControlClient, listen_echo, wait_until

#: Names that must be refused everywhere: newline, carriage return, a
#: terminal escape, a trailing newline after an otherwise good name.
HOSTILE = ["w\n", "w\r", "a\x1b[31m", "laptop\n"]


@pytest.mark.parametrize("name", HOSTILE + ["", "-x", "a" * 65, "a b", "ü", 7, None])
def test_hostile_and_malformed_names_are_refused(name):
    assert not is_valid_name(name)
    with pytest.raises(InvalidName) as e:
        check_name(name, "a tunnel name")
    assert str(e.value).startswith(f"a tunnel name must be {NAME_RULE} (got ")
    assert "\n" not in str(e.value) and "\r" not in str(e.value) and "\x1b" not in str(e.value)


@pytest.mark.parametrize("name", ["a", "laptop", "web-1.prod_2", "A" * 64, "0"])
def test_good_names_pass(name):
    assert is_valid_name(name)
    assert check_name(name, "a name") == name


@pytest.mark.parametrize("name", HOSTILE)
def test_config_files_and_flags_refuse_hostile_names(name):
    with pytest.raises(ConfigError, match="must be 1 to 64 letters"):
        parse_client_config({"user": name})
    with pytest.raises(ConfigError, match="must be 1 to 64 letters"):
        parse_client_config({"proxies": [{"name": name, "type": "tcp", "localPort": 22}]})
    with pytest.raises(ConfigError, match="must be 1 to 64 letters"):
        parse_server_config({"webhooks": [{"name": name, "url": "https://example.org/hook"}]})
    with pytest.raises(ConfigError, match="the tunnel name must be 1 to 64 letters"):
        parse_tunnel_flag(f"{name}=tcp:127.0.0.1:22")


@pytest.mark.parametrize("name", HOSTILE)
def test_the_store_refuses_hostile_token_names(tmp_path, name):
    store = Store(default_url(str(tmp_path)))
    try:
        with pytest.raises(StoreError, match="a token's name \\(its client's name\\) must be 1 to 64 letters"):
            store.create_token(name)
        assert store.list_tokens() == []
    finally:
        store.close()


@pytest.mark.parametrize("name", HOSTILE)
def test_gotaxy_token_create_refuses_hostile_names(tmp_path, capsys, name):
    Store(default_url(str(tmp_path))).close()
    assert gotaxy_main(["--data-dir", str(tmp_path), "token", "create", name]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gotaxy: a token's name (its client's name) must be 1 to 64 letters")
    assert err.count("\n") == 1  # one line: the name is shown escaped
    store = Store(default_url(str(tmp_path)))
    try:
        assert store.list_tokens() == []
    finally:
        store.close()


def test_gotaxy_token_create_with_a_newline_in_a_real_process(tmp_path):
    Store(default_url(str(tmp_path))).close()
    result = subprocess.run(
        [sys.executable, "-m", "gotaxy.cli", "--data-dir", str(tmp_path), "token", "create", "w\n"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "gotaxy: a token's name (its client's name) must be 1 to 64 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit (got 'w\\n')\n"
    )
    listing = subprocess.run(
        [sys.executable, "-m", "gotaxy.cli", "--data-dir", str(tmp_path), "token", "list"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert listing.returncode == 0 and listing.stdout.count("\n") == 1  # the header only


class LiveEntryPointTests(unittest.TestCase):
    """The wire, the REST API and the console of a live server."""

    timeout = 60
    SHARED = "shared-secret-for-the-test"

    async def _live(self) -> LiveSystem:
        self.echo = listen_echo(self)
        self.live = await LiveSystem.start(self, server_args=["--token", self.SHARED])
        return self.live

    async def test_wire_login_with_the_shared_token_refuses_hostile_client_names(self):
        live = await self._live()
        for name in HOSTILE:
            raw = await RawControlClient.connect(live.control_port)
            raw.login(token=self.SHARED, user=name)
            reply = await raw.reply()
            self.assertEqual(reply["type"], "login_failed", reply)
            self.assertIn("logging in with the shared auth.token needs a client name", reply["reason"])
            await raw.closed
        # Nor through the host name the client reports, when it sends no user.
        raw = await RawControlClient.connect(live.control_port)
        raw.login(token=self.SHARED, hostname="w\n.example.org")
        self.assertEqual((await raw.reply())["type"], "login_failed")
        await raw.closed
        self.assertEqual(live.core.sessions, {})
        self.assertEqual([c.name for c in await live.management.clients()], [])

    async def test_wire_tunnel_open_refuses_hostile_tunnel_names(self):
        live = await self._live()
        raw = await RawControlClient.connect(live.control_port)
        self.addCleanup(raw.close)
        raw.login(token=live.token)
        self.assertEqual((await raw.reply())["type"], "login_ok")
        for name in HOSTILE:
            raw.send({"type": "tunnel_open", "name": name, "spec": {"type": "tcp", "localPort": self.echo}})
            reply = await raw.reply()
            self.assertEqual(reply["type"], "tunnel_refused", reply)
            self.assertEqual(reply["reason"], f"a tunnel name must be {NAME_RULE} (got {name!r})")
        self.assertEqual(live.core.tunnels, {})
        self.assertEqual(await live.management.tunnels(), [])

    async def test_rest_api_refuses_hostile_names(self):
        live = await self._live()
        web = WebClient.for_panel(make_panel(live))
        self.assertEqual((await web.login(ADMIN_PASSWORD)).status, 200)
        for name in HOSTILE:
            for path, body, message in [
                ("tokens", {"name": name}, "a token's name (its client's name) must be"),
                ("tunnels", {"client": "alice", "name": name, "local_addr": "127.0.0.1:22"}, "a tunnel name must be"),
                ("tunnels", {"client": name, "name": "ssh", "local_addr": "127.0.0.1:22"}, "a client name must be"),
                ("api-tokens", {"name": name}, "an API token's name must be"),
            ]:
                response = await web.post(f"{API}/{path}", body)
                self.assertEqual(response.status, 400, (path, body, response.raw))
                text = response.error["message"]
                self.assertTrue(text.startswith(f"{message} {NAME_RULE}"), text)
                self.assertIn(f"(got {name!r})", text)
        self.assertEqual([t.name for t in await live.management.tokens()], ["alice"])
        self.assertEqual(await live.management.tunnels(), [])

    async def test_console_refuses_hostile_names(self):
        live = await self._live()
        commands = Commands(live.management)
        result = await commands.run("token create 'a\x1b[31m'")
        self.assertEqual(result.status, EXIT_USAGE, result)
        self.assertEqual(
            result.text, f"error: a token's name (its client's name) must be {NAME_RULE} (got 'a\\x1b[31m')"
        )
        result = await commands.run("tunnel add alice 'w\r' 127.0.0.1:22")
        self.assertEqual(result.status, EXIT_USAGE, result)
        self.assertEqual(result.text, f"error: a tunnel name must be {NAME_RULE} (got 'w\\r')")
        self.assertEqual([t.name for t in await live.management.tokens()], ["alice"])

    async def test_the_management_layer_refuses_every_hostile_name(self):
        from gotaxy.server.manage import ManagementError

        live = await self._live()
        m = live.management
        for name in HOSTILE:
            for call in (
                lambda: m.create_token(name),
                lambda: m.add_tunnel("alice", name, "127.0.0.1:22"),
                lambda: m.add_tunnel(name, "ssh", "127.0.0.1:22"),
            ):
                with self.assertRaises(ManagementError) as e:
                    await call()
                self.assertEqual(e.exception.kind, "invalid")
                self.assertIn(NAME_RULE, str(e.exception))
