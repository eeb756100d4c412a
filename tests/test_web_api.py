"""
The panel's REST API against a live server and client in this process,
driven through ``treq.testing.StubTreq``.  Every answer is checked against
the OpenAPI document (``gotaxy.web.testing.check_schema``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

import pyotp
import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from gotaxy.proxy import PublicAddress
from gotaxy.jointoken import parse_join_token
from gotaxy.sealing import Sealer, key_path
from gotaxy.web.app import Panel
from gotaxy.web.auth import TOTP_LOCK_AFTER, TOTP_STEP
from gotaxy.events import TYPES
from gotaxy.web.openapi import API_PREFIX, openapi_document
from gotaxy.web.service import make_site
from gotaxy.web.testing import WebClient, cookie_attributes, make_panel
from tests.inprocess import ADMIN_PASSWORD, LiveSystem, ca_fingerprint, echo_through, free_port, listen_echo, wait_until

API = API_PREFIX



async def _forget_operator_failures(live: Any) -> None:
    """Forget failed operator log-ins (they are counted in the store), as a right password would."""
    from gotaxy.store import lockouts

    store = live.core.store
    await store.call(lambda: (store.store.db[lockouts.FAILURES].delete(scope=lockouts.OPERATOR),
                              store.store.db[lockouts.LOCKS].delete(scope=lockouts.OPERATOR)))

class WebTestCase(unittest.TestCase):
    timeout = 60

    async def _live(self, with_client: bool = True, secure: bool = False, allow_operator: bool = False) -> LiveSystem:
        self.echo = listen_echo(self)
        tunnels = [f"echo=tcp:127.0.0.1:{self.echo}"] if with_client else []
        # With allow_operator, the client accepts operator-defined tunnels to its echo service.
        allowed = [f"127.0.0.1:{self.echo}"] if allow_operator else []
        self.live = await LiveSystem.start(self, tunnels, allow_operator_tunnels=allowed)
        if with_client:
            self.echo_port = await self.live.wait_up("echo")
        self.panel = make_panel(self.live, secure=secure)
        return self.live

    async def rows(self, table: str) -> list:
        db = self.live.core.store.store.db
        return await self.live.core.store.call(lambda: list(db[table].all()))

    def client(self) -> WebClient:
        return WebClient.for_panel(self.panel)

    async def fetch_over_socket(self, path: str) -> tuple:
        """GET ``path`` from the panel served on a loopback port: (status, headers, body)."""
        port = reactor.listenTCP(0, make_site(self.panel), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{port.getHost().port}{path}", pool=pool, timeout=10)
        return response.code, response.headers, await treq.content(response)

    async def logged_in(self) -> WebClient:
        web = self.client()
        response = await web.login(ADMIN_PASSWORD)
        self.assertEqual(response.status, 200, response.raw)
        return web

    async def refused(self, port: int) -> bool:
        try:
            await echo_through(port, b"x", timeout=2)
        except ConnectionRefusedError:
            return True
        return False


class DocumentTests(unittest.TestCase):
    def test_every_route_is_documented_and_every_documented_route_exists(self):
        served = set()
        for rule in Panel.app.url_map.iter_rules():
            if not rule.rule.startswith(API + "/") or "__rest__" in rule.rule or rule.rule == API + "/":
                continue
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                served.add((method.lower(), path))
        documented = {
            (method, path)
            for path, item in openapi_document()["paths"].items()
            for method in item
            if method in ("get", "post", "patch", "delete", "put")
        }
        self.assertEqual(served, documented)
        self.assertGreater(len(served), 25)

    def test_document_is_valid_openapi_shape(self):
        document = openapi_document()
        self.assertEqual(document["openapi"], "3.1.0")
        for path, item in document["paths"].items():
            for name in re.findall(r"\{([^}]+)\}", path):
                self.assertIn(name, [p["name"] for p in item["parameters"]])
            text = repr(item)
            for ref in re.findall(r"#/components/schemas/(\w+)", text):
                self.assertIn(ref, document["components"]["schemas"])


class AuthenticationTests(WebTestCase):
    async def test_health_and_static_files_need_no_login_everything_else_401_json(self):
        await self._live(with_client=False)
        web = self.client()
        health = await web.get(f"{API}/health")
        self.assertEqual((health.status, health.json["status"]), (200, "ok"))
        # Static files over a real socket: StubTreq's in-memory pump races
        # twisted.web.static's producer and fails now and then under load.
        status, headers, body = await self.fetch_over_socket("/")
        self.assertEqual(status, 200)
        self.assertIn(b"<html", body)
        self.assertIn("default-src 'self'", headers.getRawHeaders("content-security-policy")[0])
        self.assertEqual((await self.fetch_over_socket("/app.js"))[0], 200)
        self.assertEqual((await self.fetch_over_socket("/i18n/"))[0], 404)  # no directory listings
        for path, item in openapi_document()["paths"].items():
            concrete = path.replace("{client}", "alice").replace("{name}", "x")
            concrete = concrete.replace("{address}", "x%40example.org")
            for method, operation in item.items():
                if method == "parameters" or operation.get("security") == []:
                    continue
                response = await web.request(method.upper(), concrete, body={} if method != "get" else None)
                self.assertEqual(response.status, 401, f"{method} {path}")
                self.assertEqual(response.header("content-type"), "application/json; charset=utf-8")
                self.assertEqual(response.error["kind"], "unauthorized")
        unknown = await web.get(f"{API}/no/such/thing")
        self.assertEqual(unknown.status, 401)

    async def test_login_cookie_flags_and_logout(self):
        await self._live(with_client=False)
        web = self.client()
        wrong = await web.login("not the password")
        self.assertEqual((wrong.status, wrong.error["field"]), (401, "password"))
        self.assertIsNone(wrong.header("set-cookie"))
        response = await web.login(ADMIN_PASSWORD)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json["username"], "admin")
        name, flags = cookie_attributes(response.header("set-cookie"))
        self.assertTrue(name.startswith("gotaxy_session="))
        self.assertIn("httponly", flags)
        self.assertIn("samesite=strict", flags)
        self.assertNotIn("secure", flags)
        account = await web.get(f"{API}/account")
        self.assertEqual((account.status, account.json["csrf_token"]), (200, web.csrf))
        # The session is stored hashed, never as the cookie's value.
        rows = await self.rows("web_sessions")
        self.assertEqual(len(rows), 1)
        self.assertNotEqual(rows[0]["session_hash"], web.session)
        self.assertNotIn(web.session, repr(rows))
        self.assertEqual((await web.post(f"{API}/logout")).status, 204)
        self.assertEqual((await web.get(f"{API}/account")).status, 401)
        self.assertEqual(await self.rows("web_sessions"), [])

    async def test_secure_cookie_under_https(self):
        await self._live(with_client=False, secure=True)
        response = await self.client().login(ADMIN_PASSWORD)
        _, flags = cookie_attributes(response.header("set-cookie"))
        self.assertIn("secure", flags)

    async def test_failed_logins_slow_down_then_lock_out_with_events(self):
        await self._live(with_client=False)
        web = self.client()
        for _ in range(3):
            self.assertEqual((await web.login("wrong password")).status, 401)
        locked = await web.login(ADMIN_PASSWORD)  # even the right password waits now
        self.assertEqual(locked.status, 429)
        self.assertEqual(locked.error["kind"], "locked")
        self.assertGreaterEqual(int(locked.header("retry-after")), 1)
        events = await self.live.management.events(type_="operator.login_failed")
        self.assertEqual(len(events), 3)
        self.assertTrue(all(e.address == "127.0.0.1" for e in events))
        self.assertTrue(all("web" in e.detail for e in events))
        self.assertTrue(all(ADMIN_PASSWORD not in (e.detail or "") for e in events))

    async def test_state_changes_need_the_csrf_token_and_json(self):
        await self._live(with_client=False)
        web = await self.logged_in()
        no_token = await web.post(f"{API}/tokens", {"name": "bob"}, csrf=False)
        self.assertEqual((no_token.status, no_token.error["kind"]), (403, "forbidden"))
        wrong = await web.post(f"{API}/tokens", {"name": "bob"}, csrf=False, headers={"X-CSRF-Token": "nope"})
        self.assertEqual(wrong.status, 403)
        cross_site = await web.post(f"{API}/tokens", {"name": "bob"}, headers={"Origin": "https://evil.example"})
        self.assertEqual(cross_site.status, 403)
        as_form = await web.post(
            f"{API}/tokens", raw=b"name=bob", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        self.assertEqual(as_form.status, 415)
        login_form = await self.client().post(
            f"{API}/login", raw=b"username=admin", headers={"Content-Type": "text/plain"}
        )
        self.assertEqual(login_form.status, 415)
        self.assertEqual(await self.live.management.tokens() and [t.name for t in await self.live.management.tokens()
                                                                  if t.name == "bob"], [])
        done = await web.post(f"{API}/tokens", {"name": "bob"}, headers={"Origin": "http://127.0.0.1:7500"})
        self.assertEqual(done.status, 201)

    async def test_api_tokens_for_scripts(self):
        await self._live(with_client=False)
        web = await self.logged_in()
        created = await web.post(f"{API}/api-tokens", {"name": "backup-script"})
        self.assertEqual(created.status, 201)
        secret = created.json["token"]
        self.assertTrue(secret.startswith("gtxapi_"))
        self.assertEqual((await web.post(f"{API}/api-tokens", {"name": "backup-script"})).status, 409)
        rows = await self.rows("web_api_tokens")
        self.assertNotIn(secret, repr(rows))

        script = self.client()
        script.bearer = secret
        self.assertEqual((await script.get(f"{API}/status")).status, 200)
        # No cookie, so no CSRF token is needed; but account changes are refused.
        self.assertEqual((await script.post(f"{API}/tokens", {"name": "carol"})).status, 201)
        refused = await script.post(f"{API}/account/password", {"old_password": ADMIN_PASSWORD,
                                                                 "new_password": "a much longer one"})
        self.assertEqual(refused.status, 403)
        listed = await web.get(f"{API}/api-tokens")
        (token,) = listed.json["api_tokens"]
        self.assertIsNotNone(token["last_used_at"])
        self.assertEqual((await web.delete(f"{API}/api-tokens/backup-script")).status, 204)
        self.assertEqual((await web.delete(f"{API}/api-tokens/backup-script")).status, 404)
        self.assertEqual((await script.get(f"{API}/status")).status, 401)
        script.bearer = "gtxapi_made-up"
        self.assertEqual((await script.get(f"{API}/status")).status, 401)

    async def test_change_password(self):
        await self._live(with_client=False)
        web = await self.logged_in()
        other = await self.logged_in()
        wrong = await web.post(f"{API}/account/password", {"old_password": "nope", "new_password": "long enough pw"})
        self.assertEqual((wrong.status, wrong.error["field"]), (400, "old_password"))
        # Wrong current passwords count as failed log-ins (the shared slow-down); clear them.
        await _forget_operator_failures(self.live)
        short = await web.post(f"{API}/account/password", {"old_password": ADMIN_PASSWORD, "new_password": "short"})
        self.assertEqual((short.status, short.error["field"]), (400, "new_password"))
        done = await web.post(f"{API}/account/password",
                              {"old_password": ADMIN_PASSWORD, "new_password": "a brand new password"})
        self.assertEqual(done.status, 204)
        self.assertEqual((await web.get(f"{API}/account")).status, 200)
        self.assertEqual((await other.get(f"{API}/account")).status, 401)  # other sessions end
        self.assertEqual((await self.client().login(ADMIN_PASSWORD)).status, 401)
        self.assertEqual((await self.client().login("a brand new password")).status, 200)

    async def test_totp_enrolment_and_login(self):
        await self._live(with_client=False)
        web = await self.logged_in()
        self.assertFalse((await web.get(f"{API}/account")).json["totp_enabled"])
        setup = await web.post(f"{API}/account/totp")
        self.assertEqual(setup.status, 200)
        self.assertTrue(setup.json["qr_svg"].startswith("data:image/svg+xml;base64,"))
        self.assertIn("issuer=Gotaxy", setup.json["uri"])
        totp = pyotp.TOTP(setup.json["secret"])
        # What a copy of the database holds: the secret sealed, nowhere in plain text.
        row = self.live.core.store.store.db["web_totp"].find_one(username="admin")
        self.assertEqual(row["secret"], "")
        self.assertNotIn(setup.json["secret"], repr(row))
        self.assertEqual(Sealer.at(key_path(self.live.data_dir)).open(row["sealed_secret"]), setup.json["secret"])
        bad = await web.post(f"{API}/account/totp/confirm", {"code": "000000" if totp.now() != "000000" else "111111"})
        self.assertEqual((bad.status, bad.error["field"]), (400, "code"))
        used = totp.now()  # kept: under load the next step may begin before the replay below
        confirmed = await web.post(f"{API}/account/totp/confirm", {"code": used})
        self.assertEqual(confirmed.status, 200)
        self.assertTrue(confirmed.json["totp_enabled"])

        browser = self.client()
        need = await browser.login(ADMIN_PASSWORD)
        self.assertEqual(need.status, 401)
        self.assertTrue(need.error["totp_required"])
        self.assertEqual(need.error["field"], "code")
        # The code used to confirm cannot be replayed; the next step's code works.
        replay = await browser.login(ADMIN_PASSWORD, code=used)
        self.assertEqual(replay.status, 401)
        await _forget_operator_failures(self.live)
        later = totp.at(reactor.seconds() + TOTP_STEP)
        self.assertEqual((await browser.login(ADMIN_PASSWORD, code=later)).status, 200)
        failed = await self.live.management.events(type_="operator.login_failed")
        self.assertTrue(any("second-factor" in (e.detail or "") for e in failed))

        off = await browser.post(f"{API}/account/totp/disable", {"code": "12345x"})
        self.assertEqual(off.status, 400)
        self.assertEqual((await browser.post(f"{API}/account/totp")).status, 409)


    async def test_wrong_totp_codes_lock_the_user_out(self):
        await self._live(with_client=False)
        web = await self.logged_in()
        secret = (await web.post(f"{API}/account/totp")).json["secret"]
        await web.post(f"{API}/account/totp/confirm", {"code": pyotp.TOTP(secret).now()})
        browser = self.client()
        for attempt in range(TOTP_LOCK_AFTER):
            await _forget_operator_failures(self.live)  # only the second factor's count matters here
            wrong = await browser.login(ADMIN_PASSWORD, code="000000")
            self.assertEqual((wrong.status, wrong.error["field"]), (401, "code"), attempt)
        locked = await browser.login(ADMIN_PASSWORD, code=pyotp.TOTP(secret).at(reactor.seconds() + TOTP_STEP))
        self.assertEqual(locked.status, 429)
        events = await self.live.management.events(type_="operator.locked_out")
        self.assertEqual(len(events), 1)

    async def test_expired_sessions_are_refused(self):
        await self._live(with_client=False)
        web = await self.logged_in()
        db = self.live.core.store.store.db
        await self.live.core.store.call(lambda: db["web_sessions"].update(dict(username="admin", expires_at=1.0),
                                                                          ["username"]))
        response = await web.get(f"{API}/account")
        self.assertEqual(response.status, 401)
        self.assertEqual(await self.rows("web_sessions"), [])


class OperatorActionTests(WebTestCase):
    async def test_status_clients_and_kick(self):
        await self._live()
        web = await self.logged_in()
        self.assertEqual(await echo_through(self.echo_port, b"hello"), b"hello")
        await wait_until(lambda: self.live.core.traffic()[0] >= 5)
        status = (await web.get(f"{API}/status")).json
        self.assertEqual((status["clients_online"], status["tunnels_up"]), (1, 1))
        self.assertGreaterEqual(status["bytes_in"], 5)
        (alice,) = (await web.get(f"{API}/clients")).json["clients"]
        self.assertEqual((alice["name"], alice["online"], alice["tunnels"]), ("alice", True, ["echo"]))
        self.assertEqual((await web.get(f"{API}/clients/alice")).json["name"], "alice")
        self.assertEqual((await web.get(f"{API}/clients/nobody")).status, 404)

        first = self.live.core.sessions["alice"]
        self.assertEqual((await web.post(f"{API}/clients/alice/kick")).status, 204)
        await wait_until(lambda: "alice" in self.live.core.sessions and self.live.core.sessions["alice"] is not first)
        self.assertEqual((await web.post(f"{API}/clients/nobody/kick")).status, 404)

    async def test_tunnel_lifecycle(self):
        await self._live(allow_operator=True)
        web = await self.logged_in()
        (echo,) = (await web.get(f"{API}/tunnels")).json["tunnels"]
        self.assertEqual((echo["status"], echo["source"], echo["address"]["port"]), ("up", "client", self.echo_port))
        wanted = free_port()
        created = await web.post(
            f"{API}/tunnels", {"client": "alice", "name": "web", "local_addr": f"127.0.0.1:{self.echo}",
                               "remote_port": wanted}
        )
        self.assertEqual(created.status, 201, created.raw)
        self.assertEqual(created.json["source"], "server")
        self.assertEqual(await self.live.wait_up("web"), wanted)
        self.assertEqual(await echo_through(wanted, b"via the panel"), b"via the panel")
        one = await web.get(f"{API}/tunnels/alice/web")
        self.assertEqual((one.json["status"], one.json["address"]["port"]), ("up", wanted))
        self.assertEqual(len((await web.get(f"{API}/tunnels?client=alice")).json["tunnels"]), 2)
        self.assertEqual((await web.get(f"{API}/tunnels?client=bob")).json["tunnels"], [])

        moved = free_port()
        edited = await web.patch(f"{API}/tunnels/alice/web", {"remote_port": moved})
        self.assertEqual(edited.status, 200, edited.raw)
        await wait_until(lambda: self.live.client.factory.current.up.get("web") == PublicAddress.tcp(moved))
        self.assertEqual(await echo_through(moved, b"moved"), b"moved")

        disabled = await web.post(f"{API}/tunnels/alice/web/disable")
        self.assertEqual(disabled.json["status"], "disabled")
        self.assertTrue(await self.refused(moved))
        self.assertEqual((await web.post(f"{API}/tunnels/alice/web/restart")).status, 409)
        await web.post(f"{API}/tunnels/alice/web/enable")
        await wait_until(lambda: ("alice", "web") in self.live.core.tunnels)
        self.assertEqual(await echo_through(moved, b"back"), b"back")
        restarted = await web.post(f"{API}/tunnels/alice/web/restart")
        self.assertEqual(restarted.status, 200)
        await wait_until(lambda: ("alice", "web") in self.live.core.tunnels)
        self.assertEqual(await echo_through(moved, b"again"), b"again")

        # Client-defined tunnels can be disabled but not edited or removed here.
        self.assertEqual((await web.patch(f"{API}/tunnels/alice/echo", {"remote_port": 0})).status, 409)
        self.assertEqual((await web.delete(f"{API}/tunnels/alice/echo")).status, 409)
        self.assertEqual((await web.delete(f"{API}/tunnels/alice/web")).status, 204)
        self.assertTrue(await self.refused(moved))
        self.assertEqual((await web.get(f"{API}/tunnels/alice/web")).status, 404)

    async def test_proxy_types_list_each_types_fields_and_any_types_spec_is_accepted(self):
        await self._live(allow_operator=True)
        web = await self.logged_in()
        types = (await web.get(f"{API}/proxy-types")).json["types"]
        (tcp,) = [t for t in types if t["name"] == "tcp"]
        self.assertEqual([(f["key"], f["kind"], f["required"]) for f in tcp["fields"]],
                         [("localIP", "host", False), ("localPort", "port", True), ("remotePort", "port", False),
                          ("transport.proxyProtocolVersion", "choice", False),
                          ("transport.bandwidthLimit", "size", False),
                          ("transport.bandwidthLimitMode", "choice", False),
                          ("transport.maxConnections", "integer", False),
                          ("transport.maxConnectionsPerIP", "integer", False),
                          ("transport.connectionRatePerIP", "integer", False)])
        self.assertEqual(tcp["fields"][2]["minimum"], 0)
        wanted = free_port()
        created = await web.post(f"{API}/tunnels", {"client": "alice", "name": "web", "spec": {
            "type": "tcp", "localIP": "127.0.0.1", "localPort": self.echo, "remotePort": wanted}})
        self.assertEqual(created.status, 201, created.raw)
        self.assertEqual(await self.live.wait_up("web"), wanted)
        # An emptied setting (null) goes back to its default: the server picks a port.
        edited = await web.patch(f"{API}/tunnels/alice/web", {"spec": {"remotePort": None}})
        self.assertEqual((edited.status, edited.json["spec"]["remotePort"]), (200, 0), edited.raw)

    async def test_tunnel_errors(self):
        await self._live()
        web = await self.logged_in()
        good = {"client": "alice", "name": "db", "local_addr": f"127.0.0.1:{self.echo}"}
        bad_json = await web.post(f"{API}/tunnels", raw=b"{not json")
        self.assertEqual((bad_json.status, bad_json.error["kind"]), (400, "invalid"))
        self.assertEqual((await web.post(f"{API}/tunnels", [1, 2])).status, 400)
        missing = await web.post(f"{API}/tunnels", {"client": "alice", "name": "db"})
        self.assertEqual((missing.status, missing.error["field"]), (400, "local_addr"))
        out_of_range = await web.post(f"{API}/tunnels", dict(good, remote_port=70000))
        self.assertEqual((out_of_range.status, out_of_range.error["field"]), (400, "remote_port"))
        not_int = await web.post(f"{API}/tunnels", dict(good, remote_port="80"))
        self.assertEqual((not_int.status, not_int.error["field"]), (400, "remote_port"))
        bad_local = await web.post(f"{API}/tunnels", dict(good, local_addr="nowhere"))
        self.assertEqual((bad_local.status, bad_local.error["field"]), (400, "local_addr"))
        conflict = await web.post(f"{API}/tunnels", dict(good, remote_port=self.echo_port))
        self.assertEqual((conflict.status, conflict.error["field"]), (409, "remote_port"))
        self.assertIn(str(self.echo_port), conflict.error["message"])
        duplicate = await web.post(f"{API}/tunnels", dict(good, name="echo"))
        self.assertEqual((duplicate.status, duplicate.error["field"]), (409, "name"))
        self.assertEqual((await web.get(f"{API}/tunnels/alice/nope")).status, 404)
        self.assertEqual((await web.post(f"{API}/tunnels/alice/nope/disable")).status, 404)
        self.assertEqual((await web.patch(f"{API}/tunnels/alice/nope", {"remote_port": 1})).status, 404)
        huge = await web.post(f"{API}/tunnels", raw=b'{"x": "' + b"a" * (70 * 1024) + b'"}')
        self.assertEqual(huge.status, 413)
        wrong_method = await web.request("PUT", f"{API}/tunnels")
        self.assertEqual((wrong_method.status, wrong_method.header("allow")), (405, "GET, POST"))
        self.assertEqual((await web.get(f"{API}/no/such/route")).status, 404)
        phantom = await web.post(f"{API}/tunnels", dict(good, client="alcie"))
        self.assertEqual((phantom.status, phantom.error["kind"], phantom.error["field"]), (404, "not_found", "client"))
        self.assertTrue(phantom.error["message"].startswith("no client named 'alcie' (known clients: alice);"),
                        phantom.error)
        self.assertEqual([c["name"] for c in (await web.get(f"{API}/clients")).json["clients"]], ["alice"])
        self.assertEqual((await web.get(f"{API}/tunnels?client=alcie")).json["tunnels"], [])
        edit_nothing = await web.post(f"{API}/tunnels", dict(good, remote_port=0))
        self.assertEqual(edit_nothing.status, 201)
        self.assertEqual((await web.patch(f"{API}/tunnels/alice/db", {})).status, 400)

    async def test_a_clients_own_bandwidth_limit_and_the_limits_in_force(self):
        await self._live()
        web = await self.logged_in()
        self.assertEqual((await web.post(f"{API}/tokens", {"name": "bob"})).status, 201)
        changed = await web.patch(f"{API}/tokens/bob", {"max_bandwidth": "10MB"})
        self.assertEqual((changed.status, changed.json["max_bandwidth"]), (200, 10 * 1024 * 1024), changed.raw)
        listed = {t["name"]: t for t in (await web.get(f"{API}/tokens")).json["tokens"]}
        self.assertEqual(listed["bob"]["max_bandwidth"], 10 * 1024 * 1024)
        wrong = await web.patch(f"{API}/tokens/bob", {"max_bandwidth": "fast"})
        self.assertEqual((wrong.status, wrong.error["field"]), (400, "max_bandwidth"))
        other = await web.patch(f"{API}/tokens/bob", {"name": "robert"})
        self.assertEqual(other.status, 400)
        missing = await web.patch(f"{API}/tokens/nobody", {"max_bandwidth": 0})
        self.assertEqual(missing.status, 404)
        self.assertEqual((await web.patch(f"{API}/tokens/bob", {"max_bandwidth": None})).json["max_bandwidth"], 0)
        limits = await web.get(f"{API}/limits")
        self.assertEqual(limits.status, 200)
        self.assertEqual(set(limits.json) >= {"maxBandwidth", "maxBandwidthPerClient", "tunnelMaxConnections",
                                              "clients"}, True)

    async def test_tokens(self):
        await self._live()
        web = await self.logged_in()
        expires = reactor.seconds() + 86400
        created = await web.post(f"{API}/tokens", {"name": "bob", "expires_at": expires})
        self.assertEqual(created.status, 201)
        # A join token: the secret, with the pin of the server's CA.
        self.assertEqual(parse_join_token(created.json["secret"]).pin, ca_fingerprint(self.live.data_dir))
        self.assertEqual(created.json["token"]["expires_at"], expires)
        self.assertEqual((await web.post(f"{API}/tokens", {"name": "bob"})).status, 409)
        past = await web.post(f"{API}/tokens", {"name": "carol", "expires_at": 1000})
        self.assertEqual((past.status, past.error["field"]), (400, "expires_at"))
        bad_name = await web.post(f"{API}/tokens", {"name": "no spaces please"})
        self.assertEqual(bad_name.status, 400)
        tokens = {t["name"]: t for t in (await web.get(f"{API}/tokens")).json["tokens"]}
        self.assertIsNotNone(tokens["alice"]["last_used_at"])
        self.assertTrue(tokens["bob"]["active"])
        # The custom domains a token's client may claim (gotaxy.server.domains).
        limited = await web.post(f"{API}/tokens", {"name": "shop", "allow_domains": ["Shop.example.com"]})
        self.assertEqual(limited.json["token"]["allow_domains"], ["shop.example.com"])
        changed = await web.patch(f"{API}/tokens/shop", {"allow_domains": ["*.shop.example.com", "shop.example.com"]})
        self.assertEqual((changed.status, changed.json["allow_domains"]), (200, ["*.shop.example.com", "shop.example.com"]))
        wrong = await web.patch(f"{API}/tokens/shop", {"allow_domains": ["https://shop.example.com"]})
        self.assertEqual((wrong.status, wrong.error["field"]), (400, "allow_domains"))
        self.assertEqual((await web.patch(f"{API}/tokens/nobody", {"allow_domains": []})).status, 404)

        revoked = await web.delete(f"{API}/tokens/alice")
        self.assertEqual(revoked.status, 204)
        await wait_until(lambda: "alice" not in self.live.core.sessions)
        self.assertTrue(await self.refused(self.echo_port))
        self.assertEqual((await web.delete(f"{API}/tokens/alice")).status, 404)
        tokens = {t["name"]: t for t in (await web.get(f"{API}/tokens")).json["tokens"]}
        self.assertFalse(tokens["alice"]["active"])

    async def test_events_filters_and_paging(self):
        await self._live()
        web = await self.logged_in()
        for name in ("t1", "t2", "t3"):
            await web.post(f"{API}/tokens", {"name": name})
        page = (await web.get(f"{API}/events?type=token.created&limit=2")).json
        self.assertEqual([e["client"] for e in page["events"]], ["t3", "t2"])
        self.assertTrue(page["has_more"])
        rest = (await web.get(f"{API}/events?type=token.created&limit=2&offset=2")).json
        self.assertEqual([e["client"] for e in rest["events"]], ["t1", "alice"])  # alice's: LiveSystem made it
        self.assertFalse(rest["has_more"])
        alice = (await web.get(f"{API}/events?client=alice")).json["events"]
        self.assertTrue(alice and all(e["client"] == "alice" for e in alice))
        family = (await web.get(f"{API}/events?type=tunnel.")).json["events"]
        self.assertTrue(family and all(e["type"].startswith("tunnel.") for e in family))
        future = (await web.get(f"{API}/events?since={reactor.seconds() + 3600}")).json["events"]
        self.assertEqual(future, [])
        past = (await web.get(f"{API}/events?until=1")).json["events"]
        self.assertEqual(past, [])
        self.assertEqual((await web.get(f"{API}/events?limit=0")).status, 400)
        self.assertEqual((await web.get(f"{API}/events?limit=5000")).status, 400)
        self.assertEqual((await web.get(f"{API}/events?since=yesterday")).status, 400)
        self.assertEqual((await web.get(f"{API}/events?offset=-1")).status, 400)

    async def test_event_types_come_from_the_catalogue_and_an_unknown_filter_is_refused(self):
        await self._live(with_client=False)
        web = await self.logged_in()
        listed = (await web.get(f"{API}/events/types")).json["types"]
        self.assertEqual([t["type"] for t in listed], list(TYPES))
        revoked = next(t for t in listed if t["type"] == "token.revoked")
        self.assertEqual((revoked["family"], revoked["fields"], revoked["recorded"]), ("token", ["client"], True))
        wrong = await web.get(f"{API}/events?type=tunnel.up")
        self.assertEqual((wrong.status, wrong.error["field"]), (400, "type"))
        self.assertIn("tunnel.opened", wrong.error["message"])

    async def test_a_bug_is_a_json_500_and_logged(self):
        await self._live(with_client=False)
        web = await self.logged_in()

        async def broken():
            raise RuntimeError("a bug")

        self.panel.management.status = broken
        response = await web.get(f"{API}/status")
        self.assertEqual((response.status, response.error["kind"]), (500, "internal"))
        self.assertNotIn("a bug", response.raw.decode())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_reload(self):
        await self._live(with_client=False)
        web = await self.logged_in()
        response = await web.post(f"{API}/reload")
        self.assertEqual((response.status, response.json), (200, {"applied": [], "restart": [], "warnings": []}))
        (event,) = (await web.get(f"{API}/events?type=config.reloaded")).json["events"]
        self.assertEqual(event["type"], "config.reloaded")
        self.assertEqual(event["address"], "panel operator admin")


    async def test_each_validation_error_names_its_field_whatever_the_names_in_its_message(self):
        # Names that hold the words "port" and "name": the field comes from
        # the error itself, never from the wording of its message.
        await self._live()
        web = await self.logged_in()
        local = f"127.0.0.1:{self.echo}"
        self.assertEqual((await web.post(f"{API}/tunnels", {"client": "alice", "name": "export",
                                                            "local_addr": local})).status, 201)
        self.assertEqual((await web.post(f"{API}/tokens", {"name": "report"})).status, 201)
        cases = [
            ("POST", "/tunnels", {"client": "no such!", "name": "db", "local_addr": local}, 400, "client"),
            ("POST", "/tunnels", {"client": "alice", "name": "bad name!", "local_addr": local}, 400, "name"),
            ("POST", "/tunnels", {"client": "alice", "name": "export", "local_addr": local}, 409, "name"),
            ("POST", "/tunnels", {"client": "alice", "name": "db", "local_addr": "name:port"}, 400, "local_addr"),
            ("POST", "/tunnels", {"client": "alice", "name": "named", "local_addr": local,
                                  "remote_port": self.echo_port}, 409, "remote_port"),
            ("PATCH", "/tunnels/alice/export", {"local_addr": "nowhere"}, 400, "local_addr"),
            ("PATCH", "/tunnels/alice/export", {"remote_port": 70000}, 400, "remote_port"),
            # The spec form (any type): the field is the frp key inside 'spec'.
            ("POST", "/tunnels", {"client": "alice", "name": "db", "spec": {"type": "tcp", "localPort": 0}},
             400, "spec.localPort"),
            ("POST", "/tunnels", {"client": "alice", "name": "db", "spec": {"type": "tcp"}}, 400, "spec.localPort"),
            ("POST", "/tunnels", {"client": "alice", "name": "db", "spec": {"localPort": 1, "localIP": "[::1]"}},
             400, "spec.localIP"),
            ("POST", "/tunnels", {"client": "alice", "name": "db", "spec": {"localPort": 1, "subdomain": "x"}},
             400, "spec.subdomain"),
            ("POST", "/tunnels", {"client": "alice", "name": "db", "spec": {"type": "teleport"}}, 400, "spec.type"),
            ("POST", "/tunnels", {"client": "alice", "name": "db", "spec": [1]}, 400, "spec"),
            ("POST", "/tunnels", {"client": "alice", "name": "db",
                                  "spec": {"localPort": self.echo, "remotePort": self.echo_port}}, 409,
             "spec.remotePort"),
            ("PATCH", "/tunnels/alice/export", {"spec": {"remotePort": -1}}, 400, "spec.remotePort"),
            ("POST", "/tokens", {"name": "report"}, 409, "name"),
            ("POST", "/tokens", {"name": "bad name!"}, 400, "name"),
            ("DELETE", "/tokens/support", None, 404, "name"),
            ("GET", "/clients/transport", None, 404, "name"),
        ]
        for method, path, body, status, field in cases:
            response = await web.request(method, API + path, body)
            self.assertEqual((response.status, response.error["field"]), (status, field),
                             f"{method} {path} {body}: {response.error}")


class HistoryTests(WebTestCase):
    """The charts' data: recorded throughput samples and clients' stability."""

    async def test_throughput_comes_from_recorded_samples(self):
        await self._live()
        history = self.live.server.history
        web = await self.logged_in()
        empty = await web.get(f"{API}/throughput")
        self.assertEqual((empty.status, empty.json["points"], empty.json["window"]), (200, [], 3600))
        self.assertEqual(empty.json["interval"], history.sample_interval)
        history.sample()  # the counters before the traffic
        await history.flush()
        payload = os.urandom(200_000)
        self.assertEqual(await echo_through(self.echo_port, payload), payload)
        await wait_until(lambda: self.live.core.traffic()[1] >= len(payload))
        history.sample()
        await history.flush()
        answer = await web.get(f"{API}/throughput?window=600")
        self.assertEqual(answer.status, 200)
        points = answer.json["points"]
        self.assertEqual(len(points), 2)
        self.assertLess(points[0]["at"], points[1]["at"])
        last = points[-1]
        self.assertGreaterEqual(last["bytes_in"], len(payload))
        self.assertGreaterEqual(last["bytes_out"], len(payload))
        self.assertLess(abs(last["rate_in"] * last["seconds"] - last["bytes_in"]), last["bytes_in"] * 0.01)
        # A window that reaches no sample, and a window out of range.
        self.assertLessEqual(answer.json["until"] - last["at"], 600)
        for window in ("10", "100000", "soon"):
            wrong = await web.get(f"{API}/throughput?window={window}")
            self.assertEqual((wrong.status, wrong.error["field"]), (400, "window"), window)

    async def test_client_stability_after_a_disconnect(self):
        await self._live()
        web = await self.logged_in()
        first = self.live.core.sessions["alice"]
        self.assertEqual((await web.post(f"{API}/clients/alice/kick")).status, 204)
        await wait_until(lambda: "alice" in self.live.core.sessions and self.live.core.sessions["alice"] is not first)
        self.live.server.history.sample()
        await self.live.server.history.flush()

        async def stability():
            answer = await web.get(f"{API}/clients/alice/stability")
            self.assertEqual(answer.status, 200)
            return answer.json

        record = await stability()
        for _ in range(500):  # the disconnect event reaches the store on its thread
            if record["disconnects_24h"] >= 1:
                break
            await deferLater(reactor, 0.02, lambda: None)
            record = await stability()
        self.assertEqual((record["client"], record["online"]), ("alice", True))
        self.assertEqual((record["disconnects_24h"], record["disconnects_7d"]), (1, 1))
        self.assertGreaterEqual(record["connects_24h"], 2)
        self.assertIsNotNone(record["uptime_24h"])
        self.assertLess(record["uptime_24h"], 100.0)  # offline between kick and reconnect
        self.assertGreater(record["uptime_24h"], 0.0)
        sessions = record["sessions_7d"]
        self.assertEqual([s["open"] for s in sessions], [False, True])
        self.assertLessEqual(sessions[0]["ended"], sessions[1]["started"])
        self.assertTrue(sessions[0]["reason"])
        self.assertEqual(len(record["rtt_samples_24h"]), 1)  # the sample just taken
        (summary,) = (await web.get(f"{API}/stability")).json["clients"]
        self.assertEqual((summary["client"], summary["disconnects_24h"]), ("alice", 1))
        self.assertNotIn("rtt_samples_24h", summary)
        self.assertEqual((await web.get(f"{API}/clients/nobody/stability")).status, 404)

    async def test_long_series_are_merged_into_at_most_720_points(self):
        await self._live()
        history = self.live.server.history
        web = await self.logged_in()
        for _ in range(800):
            history.sample()
        await history.flush()
        points = (await web.get(f"{API}/throughput")).json["points"]
        self.assertTrue(400 <= len(points) <= 720, len(points))
        rtt = (await web.get(f"{API}/clients/alice/stability")).json["rtt_samples_24h"]
        self.assertTrue(400 <= len(rtt) <= 720, len(rtt))

    async def test_without_history_the_charts_answer_503(self):
        await self._live(with_client=False)
        self.panel.history = None
        web = await self.logged_in()
        for path in ("/throughput", "/stability", "/clients/alice/stability"):
            answer = await web.get(API + path)
            self.assertEqual((answer.status, answer.error["kind"]), (503, "unavailable"), path)


class WebhookTests(WebTestCase):
    """Notification targets: listed, added, removed and tested from the panel."""

    SECRET = "do-not-show-this-secret"
    CONFIG = (
        '[[webhooks]]\nname = "ops"\nurl = "http://127.0.0.1:9/services/T0/B0/chat-token"\n'
        'events = ["client.*"]\nformat = "slack"\n'
    )

    async def _with_config_webhook(self) -> None:
        directory = tempfile.mkdtemp(prefix="gotaxy-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "server.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.CONFIG)
        self.live = await LiveSystem.start(self, server_args=["--config", path])
        self.panel = make_panel(self.live)

    async def test_add_list_test_and_remove(self):
        await self._with_config_webhook()
        web = await self.logged_in()
        (ops,) = (await web.get(f"{API}/webhooks")).json["webhooks"]
        self.assertEqual(
            (ops["name"], ops["url"], ops["events"], ops["format"], ops["signed"], ops["source"]),
            ("ops", "http://127.0.0.1:9/…", ["client.*"], "slack", False, "config"),
        )
        received = []
        receiver = Resource()
        receiver.isLeaf = True

        def render_POST(request):
            received.append(request.content.read())
            return b"ok"

        receiver.render_POST = render_POST
        port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        created = await web.post(
            f"{API}/webhooks",
            {"name": "alerts", "url": f"http://127.0.0.1:{number}/hook/path-token",
             "events": ["tunnel.*", "client.disconnected"], "format": "json", "secret": self.SECRET},
        )
        self.assertEqual(created.status, 201, created.raw)
        self.assertEqual(
            created.json,
            {"name": "alerts", "url": f"http://127.0.0.1:{number}/…", "events": ["tunnel.*", "client.disconnected"],
             "format": "json", "signed": True, "source": "operator"},
        )
        defaults = await web.post(f"{API}/webhooks", {"name": "all", "url": "http://127.0.0.1:9/x"})
        self.assertEqual(defaults.status, 201, defaults.raw)
        self.assertEqual((defaults.json["events"], defaults.json["format"], defaults.json["signed"]),
                         (["*"], "json", False))
        listed = await web.get(f"{API}/webhooks")
        self.assertEqual([w["name"] for w in listed.json["webhooks"]], ["ops", "alerts", "all"])
        # Neither the secret nor a URL's path (it may hold a chat token) is ever sent back.
        for response in (created, defaults, listed):
            self.assertNotIn(self.SECRET, response.raw.decode())
            self.assertNotIn("token", response.raw.decode())
            self.assertNotIn("secret", response.raw.decode())

        self.assertEqual((await web.post(f"{API}/webhooks/alerts/test")).status, 202)
        await wait_until(lambda: received)
        self.assertIn(b"notify.test", received[0])
        self.assertEqual((await web.post(f"{API}/webhooks/ops/test")).status, 202)

        self.assertEqual((await web.delete(f"{API}/webhooks/alerts")).status, 204)
        self.assertEqual([w["name"] for w in (await web.get(f"{API}/webhooks")).json["webhooks"]], ["ops", "all"])
        self.assertEqual((await web.delete(f"{API}/webhooks/alerts")).status, 404)

    async def test_errors(self):
        await self._with_config_webhook()
        web = await self.logged_in()
        good = {"name": "alerts", "url": "http://127.0.0.1:9/abc"}
        bad_json = await web.post(f"{API}/webhooks", raw=b"{not json")
        self.assertEqual((bad_json.status, bad_json.error["kind"]), (400, "invalid"))
        self.assertEqual((await web.post(f"{API}/webhooks", ["alerts"])).status, 400)
        missing = await web.post(f"{API}/webhooks", {"name": "alerts"})
        self.assertEqual((missing.status, missing.error["field"]), (400, "url"))
        no_name = await web.post(f"{API}/webhooks", {"url": good["url"]})
        self.assertEqual((no_name.status, no_name.error["field"]), (400, "name"))
        bad_name = await web.post(f"{API}/webhooks", dict(good, name="no spaces please"))
        self.assertEqual((bad_name.status, bad_name.error["field"]), (400, "name"))
        bad_url = await web.post(f"{API}/webhooks", dict(good, url="ftp://files.example.org/secret-path"))
        self.assertEqual((bad_url.status, bad_url.error["field"]), (400, "url"))
        self.assertNotIn("secret-path", bad_url.raw.decode())
        bad_format = await web.post(f"{API}/webhooks", dict(good, format="teams"))
        self.assertEqual((bad_format.status, bad_format.error["field"]), (400, "format"))
        self.assertIn("feishu", bad_format.error["message"])
        bad_events = await web.post(f"{API}/webhooks", dict(good, events="tunnel.*"))
        self.assertEqual((bad_events.status, bad_events.error["field"]), (400, "events"))
        bad_pattern = await web.post(f"{API}/webhooks", dict(good, events=["not an event"]))
        self.assertEqual((bad_pattern.status, bad_pattern.error["field"]), (400, "events"))
        empty_secret = await web.post(f"{API}/webhooks", dict(good, secret=""))
        self.assertEqual((empty_secret.status, empty_secret.error["field"]), (400, "secret"))
        self.assertEqual((await web.get(f"{API}/webhooks")).json["webhooks"][1:], [])  # nothing was added

        duplicate = await web.post(f"{API}/webhooks", dict(good, name="ops"))
        self.assertEqual((duplicate.status, duplicate.error["kind"], duplicate.error["field"]),
                         (409, "conflict", "name"))
        self.assertEqual((await web.post(f"{API}/webhooks", good)).status, 201)
        self.assertEqual((await web.post(f"{API}/webhooks", good)).status, 409)

        from_config = await web.delete(f"{API}/webhooks/ops")
        self.assertEqual((from_config.status, from_config.error["kind"]), (409, "conflict"))
        self.assertIn("server.toml", from_config.error["message"])
        self.assertEqual((await web.delete(f"{API}/webhooks/nobody")).status, 404)
        self.assertEqual((await web.post(f"{API}/webhooks/nobody/test")).status, 404)
        wrong_method = await web.request("PUT", f"{API}/webhooks")
        self.assertEqual((wrong_method.status, wrong_method.header("allow")), (405, "GET, POST"))
        no_csrf = await web.post(f"{API}/webhooks", dict(good, name="other"), csrf=False)
        self.assertEqual(no_csrf.status, 403)

        stranger = self.client()
        for method, path, body in (("GET", "/webhooks", None), ("POST", "/webhooks", dict(good, name="x")),
                                   ("DELETE", "/webhooks/alerts", None), ("POST", "/webhooks/alerts/test", None)):
            response = await stranger.request(method, API + path, body)
            self.assertEqual((response.status, response.error["kind"]), (401, "unauthorized"), f"{method} {path}")
        self.assertEqual([w["name"] for w in (await web.get(f"{API}/webhooks")).json["webhooks"]], ["ops", "alerts"])

    async def test_an_api_token_can_manage_webhooks(self):
        await self._live(with_client=False)
        web = await self.logged_in()
        script = self.client()
        script.bearer = (await web.post(f"{API}/api-tokens", {"name": "ci"})).json["token"]
        created = await script.post(f"{API}/webhooks", {"name": "ci", "url": "http://127.0.0.1:9/hook",
                                                        "format": "feishu", "secret": self.SECRET})
        self.assertEqual((created.status, created.json["signed"]), (201, True))
        self.assertEqual([w["name"] for w in (await web.get(f"{API}/webhooks")).json["webhooks"]], ["ci"])
        self.assertEqual((await script.delete(f"{API}/webhooks/ci")).status, 204)
        self.assertEqual((await web.get(f"{API}/webhooks")).json["webhooks"], [])


class MailRecipientTests(WebTestCase):
    """E-mail recipients: listed, added, removed and tested from the panel."""

    async def _with_smtp(self) -> None:
        # Nothing listens on the SMTP port: the tests here stop at "queued"; delivery is tested in tests/test_notify*.
        directory = tempfile.mkdtemp(prefix="gotaxy-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "server.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f'[smtp]\nhost = "127.0.0.1"\nport = {free_port()}\ntls = "none"\n'
                'from = "gotaxy@example.test"\nto = ["ops@example.test"]\n'
            )
        self.live = await LiveSystem.start(self, server_args=["--config", path])
        self.panel = make_panel(self.live)

    async def addresses(self, web: WebClient) -> list:
        return [r["address"] for r in (await web.get(f"{API}/mail-recipients")).json["recipients"]]

    async def test_add_list_test_and_remove(self):
        await self._with_smtp()
        web = await self.logged_in()
        listed = await web.get(f"{API}/mail-recipients")
        self.assertEqual(listed.status, 200, listed.raw)
        self.assertEqual(listed.json,
                         {"recipients": [{"address": "ops@example.test", "events": ["*"], "source": "config"}]})
        created = await web.post(
            f"{API}/mail-recipients",
            {"address": "oncall+gotaxy@example.test", "events": ["client.disconnected", "tunnel.*"]},
        )
        self.assertEqual(created.status, 201, created.raw)
        self.assertEqual(created.json, {"address": "oncall+gotaxy@example.test",
                                        "events": ["client.disconnected", "tunnel.*"], "source": "operator"})
        defaults = await web.post(f"{API}/mail-recipients", {"address": "all@example.test"})
        self.assertEqual((defaults.status, defaults.json["events"]), (201, ["*"]))
        self.assertEqual(await self.addresses(web),
                         ["ops@example.test", "oncall+gotaxy@example.test", "all@example.test"])

        # The panel sends the address percent-encoded ('@' as %40, '+' as %2B); both spellings work.
        self.assertEqual((await web.post(f"{API}/mail-recipients/oncall%2Bgotaxy%40example.test/test")).status, 202)
        self.assertEqual((await web.post(f"{API}/mail-recipients/ops@example.test/test")).status, 202)
        self.assertEqual((await web.delete(f"{API}/mail-recipients/oncall%2Bgotaxy%40example.test")).status, 204)
        self.assertEqual(await self.addresses(web), ["ops@example.test", "all@example.test"])
        self.assertEqual((await web.delete(f"{API}/mail-recipients/oncall%2Bgotaxy%40example.test")).status, 404)

    async def test_errors(self):
        await self._with_smtp()
        web = await self.logged_in()
        good = {"address": "oncall@example.test"}
        bad_json = await web.post(f"{API}/mail-recipients", raw=b"{not json")
        self.assertEqual((bad_json.status, bad_json.error["kind"]), (400, "invalid"))
        self.assertEqual((await web.post(f"{API}/mail-recipients", ["oncall@example.test"])).status, 400)
        missing = await web.post(f"{API}/mail-recipients", {"events": ["*"]})
        self.assertEqual((missing.status, missing.error["field"]), (400, "address"))
        for wrong in ("not an address", "oncall@", "@example.test", "a@b@example.test", 42):
            bad_address = await web.post(f"{API}/mail-recipients", {"address": wrong})
            self.assertEqual((bad_address.status, bad_address.error["field"]), (400, "address"), repr(wrong))
        bad_events = await web.post(f"{API}/mail-recipients", dict(good, events="tunnel.*"))
        self.assertEqual((bad_events.status, bad_events.error["field"]), (400, "events"))
        bad_pattern = await web.post(f"{API}/mail-recipients", dict(good, events=["not an event"]))
        self.assertEqual((bad_pattern.status, bad_pattern.error["field"]), (400, "events"))
        self.assertEqual(await self.addresses(web), ["ops@example.test"])  # nothing was added

        duplicate = await web.post(f"{API}/mail-recipients", {"address": "ops@example.test"})
        self.assertEqual((duplicate.status, duplicate.error["kind"], duplicate.error["field"]),
                         (409, "conflict", "address"))
        self.assertEqual((await web.post(f"{API}/mail-recipients", good)).status, 201)
        again = await web.post(f"{API}/mail-recipients", good)
        self.assertEqual((again.status, again.error["field"]), (409, "address"))

        from_config = await web.delete(f"{API}/mail-recipients/ops%40example.test")
        self.assertEqual((from_config.status, from_config.error["kind"]), (409, "conflict"))
        self.assertIn("server.toml", from_config.error["message"])
        self.assertEqual((await web.delete(f"{API}/mail-recipients/nobody%40example.test")).status, 404)
        self.assertEqual((await web.post(f"{API}/mail-recipients/nobody%40example.test/test")).status, 404)
        wrong_method = await web.request("PUT", f"{API}/mail-recipients")
        self.assertEqual((wrong_method.status, wrong_method.header("allow")), (405, "GET, POST"))
        no_csrf = await web.post(f"{API}/mail-recipients", {"address": "other@example.test"}, csrf=False)
        self.assertEqual(no_csrf.status, 403)

        stranger = self.client()
        for method, path, body in (
            ("GET", "/mail-recipients", None),
            ("POST", "/mail-recipients", {"address": "x@example.test"}),
            ("DELETE", "/mail-recipients/oncall%40example.test", None),
            ("POST", "/mail-recipients/oncall%40example.test/test", None),
        ):
            response = await stranger.request(method, API + path, body)
            self.assertEqual((response.status, response.error["kind"]), (401, "unauthorized"), f"{method} {path}")
        self.assertEqual(await self.addresses(web), ["ops@example.test", "oncall@example.test"])

    async def test_without_smtp_the_list_is_empty_and_adding_says_how_to_set_it_up(self):
        await self._live(with_client=False)
        web = await self.logged_in()
        listed = await web.get(f"{API}/mail-recipients")
        self.assertEqual((listed.status, listed.json), (200, {"recipients": []}))
        refused = await web.post(f"{API}/mail-recipients", {"address": "ops@example.test"})
        self.assertEqual((refused.status, refused.error["kind"], refused.error["field"]), (409, "conflict", None))
        for word in ("[smtp]", "host", "from", "server.toml"):
            self.assertIn(word, refused.error["message"])
        self.assertEqual((await web.post(f"{API}/mail-recipients/ops%40example.test/test")).status, 404)
        self.assertEqual((await web.get(f"{API}/mail-recipients")).json["recipients"], [])


class LiveAndMountTests(WebTestCase):
    """Over a real socket: server-sent events and extra resources such as /metrics."""

    async def test_live_events_and_extra_resources(self):
        await self._live()
        metrics = Resource()
        metrics.isLeaf = True
        metrics.render_GET = lambda request: b"gotaxy_up 1\n"
        site = make_site(self.panel, {b"metrics": metrics})
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        web = await self.logged_in()
        api_token = (await web.post(f"{API}/api-tokens", {"name": "watcher"})).json["token"]

        received = []
        connected: Deferred = Deferred()

        class Raw(Protocol):
            def __init__(self, request: bytes) -> None:
                self.request = request

            def connectionMade(self) -> None:
                self.transport.write(self.request)

            def dataReceived(self, data: bytes) -> None:
                received.append(data)
                if not connected.called:
                    connected.callback(None)

            def connectionLost(self, reason=None) -> None:
                if not connected.called:
                    connected.callback(None)

        async def fetch(path: bytes, headers: bytes = b"") -> bytes:
            chunks = []
            done: Deferred = Deferred()

            class Once(Protocol):
                def connectionMade(self) -> None:
                    self.transport.write(b"GET " + path + b" HTTP/1.0\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")

                def dataReceived(self, data: bytes) -> None:
                    chunks.append(data)

                def connectionLost(self, reason=None) -> None:
                    done.callback(b"".join(chunks))

            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", number), Once())
            return await done

        self.assertIn(b"gotaxy_up 1", await fetch(b"/metrics"))  # no panel log-in needed
        self.assertIn(b"401", (await fetch(b"/api/v0.1/status")).split(b"\r\n")[0])
        self.assertIn(b"200", (await fetch(b"/api/v0.1/health")).split(b"\r\n")[0])

        stream = Raw(
            b"GET /api/v0.1/live HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + api_token.encode()
            + b"\r\n\r\n"
        )
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", number), stream)
        self.addCleanup(lambda: stream.transport.loseConnection())
        await connected
        await wait_until(lambda: b"retry:" in b"".join(received))
        self.assertIn(b"text/event-stream", b"".join(received))
        await self.live.management.set_enabled("alice", "echo", False)
        await wait_until(lambda: b'"type":"tunnel.disabled"' in b"".join(received))
        self.assertIn(b"event: change", b"".join(received))
        self.assertEqual(self.panel._streams, 1)
        stream.transport.loseConnection()
        await wait_until(lambda: self.panel._streams == 0)


class MalformedPathTests(WebTestCase):
    """Item 13 of issue 8: a malformed path is a 400 in JSON, never a 500 and a traceback."""

    async def test_malformed_paths_are_400_without_a_log_in(self):
        await self._live(with_client=False)
        web = self.client()
        logged: list = []
        from twisted.logger import globalLogPublisher

        def observe(event: dict) -> None:
            if event.get("log_failure") is not None or event.get("isError"):
                logged.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for path in ("/%00", "/a%00b/c", "/%0a", "/%zz", "/%ff", "/%c0%ae", f"/{'a' * 3000}",
                     f"{API}/%00", f"{API}/tunnels/%00/x", "/metrics%00"):
            response = await web.get(path, check=False)
            self.assertEqual(response.status, 400, path)
            self.assertEqual(response.error["kind"], "invalid", path)
            self.assertIn("address", response.error["message"])
            self.assertEqual(response.header("x-content-type-options"), "nosniff")
        self.assertEqual(logged, [])
        # Well-formed paths still work (the real-socket test in test_panel_e2e fetches the page itself).
        self.assertEqual((await web.get(f"{API}/health")).status, 200)
        self.assertEqual((await web.get(f"{API}/tunnels/%61lice/x", check=False)).status, 401)  # "%61" is "a"
        self.assertEqual((await web.get("/no-such-page")).status, 404)


class BanTests(WebTestCase):
    """Bans and the address rules from the REST API: listed, added and lifted, each with its event."""

    async def test_ban_list_and_lift(self):
        await self._live(with_client=False)
        web = await self.logged_in()
        created = await web.post(f"{API}/bans", {"address": "2001:db8::7", "seconds": 3600, "reason": "scanner"})
        self.assertEqual(created.status, 201, created.raw)
        # An IPv6 address is banned as its /64 (access.ban.ipv6Prefix).
        self.assertEqual((created.json["address"], created.json["by"], created.json["reason"]),
                         ("2001:db8::/64", "panel operator admin", "scanner"))
        self.assertTrue(3590 < created.json["remaining"] <= 3600, created.json)
        listed = (await web.get(f"{API}/bans")).json["bans"]
        self.assertEqual([b["address"] for b in listed], ["2001:db8::/64"])
        self.assertFalse(self.live.core.access.admits("control", "2001:db8::7"))
        self.assertFalse(self.live.core.access.admits("control", "2001:db8::8"))
        rules = (await web.get(f"{API}/access")).json
        self.assertEqual(rules["listeners"]["control"], {"allow": [], "deny": []})
        lifted = await web.delete(f"{API}/bans/2001%3Adb8%3A%3A%2F64")  # as listed, its '/' percent-encoded too
        self.assertEqual(lifted.status, 204, lifted.raw)
        self.assertEqual((await web.get(f"{API}/bans")).json["bans"], [])
        again = await web.delete(f"{API}/bans/2001%3Adb8%3A%3A7")
        self.assertEqual((again.status, again.error["field"]), (404, "address"))
        await web.post(f"{API}/bans", {"address": "198.51.100.7"})
        lifted = await web.delete(f"{API}/bans/198.51.100.7")
        self.assertEqual(lifted.status, 204, lifted.raw)
        wrong = await web.post(f"{API}/bans", {"address": "example.com"})
        self.assertEqual((wrong.status, wrong.error["field"]), (400, "address"))
        types = [e["type"] for e in (await web.get(f"{API}/events?type=ban.")).json["events"]]
        self.assertEqual(types, ["ban.lifted", "ban.added", "ban.lifted", "ban.added"])
