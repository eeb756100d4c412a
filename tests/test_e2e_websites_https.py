"""
A private website published over HTTPS, with real programs on loopback:
``twistd`` server and client processes, Let's Encrypt's test CA (Pebble, with
a dnsmasq that sends every name under gotaxy.test to 127.0.0.1: see
``tests/pebble.py``), curl, and Chromium (Debian's, driven by Playwright).

The server has ``vhostHTTPPort``, ``vhostHTTPSPort``, ``subDomainHost =
"gotaxy.test"`` and ACME pointed at Pebble; the client publishes a local web
app as ``subdomain = "wiki"``.  The first claim of wiki.gotaxy.test makes the
server ask Pebble, which validates HTTP-01 on the server's HTTP port; then
curl, trusting only Pebble's root, and Chromium, with Pebble's root in a
profile of its own and ``--host-resolver-rules`` for the name, load
https://wiki.gotaxy.test, and the page renders.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
from typing import Any

import pytest

from tests import pebble
from tests.e2e import free_port

CHROMIUM = os.environ.get("GOTAXY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PAGE = (b"<!DOCTYPE html><html><head><title>Private wiki</title></head>"
        b"<body><h1 id=\"greeting\">Hello from the private wiki</h1></body></html>")

pytestmark = pytest.mark.e2e


class _Wiki(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.send_header("X-Seen-Proto", self.headers.get("X-Forwarded-Proto", "-"))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def wiki():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Wiki)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(300)
def test_a_private_site_over_https_with_a_certificate_pebble_issued(procs, tmp_path, wiki):
    if not pebble.available():
        pytest.skip(pebble.HOW_TO_GET_IT)
    http_port, https_port = free_port(), free_port()
    ca = pebble.AcmeTestCA(http_port)
    try:
        (tmp_path / "server.toml").write_text(
            f'vhostHTTPPort = {http_port}\nvhostHTTPSPort = {https_port}\nsubDomainHost = "gotaxy.test"\n'
            f'[acme]\nenable = true\ndirectory = "{ca.directory_url}"\ncaFile = "{ca.ca_file}"\n'
            'email = "ops@example.com"\n'
        )
        server = procs.server("--config", str(tmp_path / "server.toml"))
        (tmp_path / "client.toml").write_text(
            f'[[proxies]]\nname = "wiki"\ntype = "http"\nlocalPort = {wiki}\nsubdomain = "wiki"\n'
        )
        procs.client(server, args=["--config", str(tmp_path / "client.toml")])
        server.wait_for(r"ACME: certificate for wiki\.gotaxy\.test issued", timeout=90)
        root = tmp_path / "pebble-root.pem"
        root.write_bytes(ca.issuing_root())
        url = f"https://wiki.gotaxy.test:{https_port}/"

        # curl trusts Pebble's root and nothing else.
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", str(root), "--resolve",
             f"wiki.gotaxy.test:{https_port}:127.0.0.1", "-D", "-", url],
            capture_output=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert PAGE in result.stdout
        assert b"x-seen-proto: https" in result.stdout.lower()  # the local app hears it came over HTTPS
        # TLS 1.1 is refused.
        old = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", str(root), "--tlsv1.1", "--tls-max", "1.1",
             "--resolve", f"wiki.gotaxy.test:{https_port}:127.0.0.1", url],
            capture_output=True, timeout=60,
        )
        assert old.returncode != 0

        # Chromium, with Pebble's root in a profile of its own.
        if not os.path.exists(CHROMIUM) or not shutil.which("certutil"):
            pytest.skip("the browser half needs Debian's chromium and libnss3-tools (certutil)")
        sync_api = pytest.importorskip("playwright.sync_api")
        home = tmp_path / "home"
        nssdb = home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, timeout=30)
        subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-n", "pebble", "-t", "C,,", "-i", str(root)],
                       check=True, timeout=30)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, env={**os.environ, "HOME": str(home)},
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync",
                      "--host-resolver-rules=MAP *.gotaxy.test 127.0.0.1"],
            )
            try:
                page = browser.new_page()
                response = page.goto(url, timeout=30000)
                assert response is not None and response.status == 200
                assert page.title() == "Private wiki"
                assert page.text_content("#greeting") == "Hello from the private wiki"
                assert response.security_details()["protocol"] in ("TLS 1.2", "TLS 1.3")
            finally:
                browser.close()
    finally:
        ca.close()


@pytest.mark.parametrize("key", ["vhostHTTPSPort", "vhostHTTPPort"])
def test_a_busy_website_port_is_one_line_and_exit_1(procs, tmp_path, key):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        (tmp_path / "server.toml").write_text(f"{key} = {port}\n")
        server = procs.twistd("gotaxy-server", ["--config", str(tmp_path / "server.toml"), "--data-dir", "d",
                                                "--bind-addr", "127.0.0.1", "--bind-port", str(free_port())], "server")
        assert server.wait_exit(30) == 1
    finally:
        busy.close()
    out = server.output()
    assert f"cannot listen on 127.0.0.1:{port}: the HTTP" in out and f"({key} = {port}) cannot be opened" in out
    assert "Traceback" not in out and "listening for clients" not in out
