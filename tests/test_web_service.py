"""
The panel as ``twistd gotaxy-server`` runs it: wired into ``makeService``
(on by default, off with ``--web-port 0``), over a real socket, and over
HTTPS with ``webServer.tls.certFile`` / ``keyFile``.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from twisted.python import usage

from gotaxy.config import replace
from gotaxy.web.service import make_web_service
from tests.inprocess import ADMIN_PASSWORD, LiveSystem, free_port


def _request(port: int, method: str, path: str, body: object = None, https: bool = False, headers: dict = {}):
    if https:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                                 context=ssl._create_unverified_context())
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json"} if data else {}
        connection.request(method, path, data, {**sent, **headers})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


class WebServiceTests(unittest.TestCase):
    timeout = 60

    async def test_make_service_serves_the_panel_on_web_port(self):
        port = free_port()
        live = await LiveSystem.start(self, server_args=["--web-port", str(port)])
        self.assertIsNotNone(live.server.web)
        status, headers, body = await deferToThread(_request, port, "GET", "/")
        self.assertEqual(status, 200)
        self.assertIn(b'<script src="app.js"', body)
        status, _, body = await deferToThread(_request, port, "GET", "/i18n/zh-CN.json")
        self.assertEqual(json.loads(body)["nav.tunnels"], "隧道")
        status, headers, body = await deferToThread(
            _request, port, "POST", "/api/v0.1/login", {"username": "admin", "password": ADMIN_PASSWORD}
        )
        self.assertEqual(status, 200)
        self.assertNotIn("Secure", headers["Set-Cookie"])
        self.assertNotIn(b"Traceback", body)

        # A resource made later (such as /metrics) can be mounted; it needs no panel log-in.
        from twisted.web.static import Data

        live.server.web.mount(b"metrics", Data(b"gotaxy_up 1\n", "text/plain"))
        status, _, body = await deferToThread(_request, port, "GET", "/metrics")
        self.assertEqual((status, body), (200, b"gotaxy_up 1\n"))
        status, _, _ = await deferToThread(_request, port, "GET", "/api/v0.1/status")
        self.assertEqual(status, 401)

    async def test_the_console_gets_what_it_needs_and_shares_the_panels_second_factor(self):
        live = await LiveSystem.start(self, server_args=["--web-port", str(free_port()),
                                                         "--console-port", str(free_port())])
        server = live.server
        self.assertIs(live.service.server, server)
        self.assertEqual(server.listeners, (server.control, server.web, server.console))
        # Wrong TOTP codes at the panel and the console count together.
        self.assertIs(server.web.panel.auth, server.second_factor)
        access = server.console_access
        self.assertIs(access.second_factor, server.second_factor)
        self.assertEqual((access.management, access.operators), (server.management, server.operators))
        self.assertEqual(access.namespace()["core"], server.core)

    async def test_web_port_zero_turns_the_panel_off(self):
        live = await LiveSystem.start(self, server_args=["--web-port", "0"])
        self.assertIsNone(live.server.web)

    async def test_https_with_a_certificate_and_secure_cookie(self):
        live = await LiveSystem.start(self)
        tls = os.path.join(live.data_dir, "tls")
        config = replace(live.core.config, {
            "web.port": free_port(),
            "web.tls_cert_file": os.path.join(tls, "server.pem"),
            "web.tls_key_file": os.path.join(tls, "server.key"),
        })
        service = make_web_service(config, live.core, live.management, live.operators, reactor, live.data_dir)
        service.startService()
        self.addCleanup(service.stopService)
        status, headers, _ = await deferToThread(
            _request, config.web.port, "POST", "/api/v0.1/login",
            {"username": "admin", "password": ADMIN_PASSWORD}, True,
        )
        self.assertEqual(status, 200)
        flags = [f.strip().lower() for f in headers["Set-Cookie"].split(";")]
        self.assertIn("secure", flags)
        self.assertIn("httponly", flags)
        self.assertIn("samesite=strict", flags)

    async def test_unreadable_certificate_is_a_clear_error(self):
        live = await LiveSystem.start(self)
        config = replace(live.core.config, {
            "web.port": free_port(), "web.tls_cert_file": "/nonexistent/cert.pem",
            "web.tls_key_file": "/nonexistent/key.pem",
        })
        with self.assertRaises(usage.UsageError) as e:
            make_web_service(config, live.core, live.management, live.operators, reactor, live.data_dir)
        self.assertIn("webServer.tls.certFile", str(e.exception))

    async def test_plain_http_beyond_loopback_is_warned_about(self):
        from twisted.logger import formatEvent, globalLogPublisher

        live = await LiveSystem.start(self)
        seen: list = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)

        def warnings_for(addr: str, **tls: str) -> list:
            del seen[:]
            config = replace(live.core.config, {"web.addr": addr, "web.port": free_port(), **tls})
            make_web_service(config, live.core, live.management, live.operators, reactor, live.data_dir)
            return [formatEvent(e) for e in seen if "without TLS" in formatEvent(e)]

        for addr in ("0.0.0.0", "::", "192.0.2.10", "panel.example.org"):
            (warning,) = warnings_for(addr)
            self.assertIn(f"listens on {addr} without TLS", warning)
            self.assertIn("webServer.tls.certFile", warning)
        for addr in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
            self.assertEqual(warnings_for(addr), [], addr)
        tls = os.path.join(live.data_dir, "tls")
        self.assertEqual(warnings_for("0.0.0.0", **{"web.tls_cert_file": os.path.join(tls, "server.pem"),
                                                    "web.tls_key_file": os.path.join(tls, "server.key")}), [])


class TranslationTests(unittest.TestCase):
    """Every string the front end shows exists in both languages."""

    def test_both_languages_cover_every_key_the_page_uses(self):
        import re
        from gotaxy.web.app import www_directory

        www = www_directory()
        english = json.loads((www / "i18n" / "en.json").read_text("utf-8"))
        chinese = json.loads((www / "i18n" / "zh-CN.json").read_text("utf-8"))
        self.assertEqual(set(english), set(chinese))
        html = (www / "index.html").read_text("utf-8")
        script = (www / "app.js").read_text("utf-8")
        used = set(re.findall(r'data-i18n(?:-[a-z]+)?="([^"]+)"', html)) | set(re.findall(r'\bt\("([^"]+)"', script))
        used |= {f"error.{kind}" for kind in re.findall(r'"(\w+)"', json.dumps(list(_error_kinds())))}
        self.assertEqual(used - set(english), set())
        for key, text in chinese.items():
            if key not in ("error.network",):
                self.assertNotEqual(text, english[key], f"{key} is not translated")
        # No element with visible text lacks a translation key (except names, language names and
        # the server.toml keys the limits form sets, which are the same in every language).
        for tag, text in re.findall(r"<(h1|h2|button|th|span|p|a|option)(?![^>]*data-i18n)[^>]*>([^<]+)</\1>", html):
            self.assertIn(text.strip(), ("Gotaxy", "English", "简体中文", "", "client.*", "tunnel.*", "token.*",
                                         "operator.*", "login.*", "server.*", "config.*", "maxBandwidth",
                                         "maxBandwidthPerClient"), f"<{tag}>{text}")


def _error_kinds():
    from gotaxy.web.app import STATUS

    return list(STATUS) + ["network"]
