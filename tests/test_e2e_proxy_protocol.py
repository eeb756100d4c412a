"""
PROXY protocol read by a real consumer: nginx (Debian's nginx-light) with
``proxy_protocol`` on its listen line, behind a tcp tunnel with
``transport.proxyProtocolVersion`` v1 and then v2, logs the visitor's own
address and port (``$proxy_protocol_addr``, ``$proxy_protocol_port``), not
the Gotaxy client's connection.  The visitor is on loopback too, so its
source *port* is what tells the two apart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Any, List, Optional

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from tests.e2e import free_port
from tests.inprocess import LiveSystem, wait_until

pytestmark = pytest.mark.e2e

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format real '$proxy_protocol_addr $proxy_protocol_port';
    access_log {dir}/access.log real;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{ return 200 "seen $proxy_protocol_addr:$proxy_protocol_port\\n"; }}
    }}
}}
"""


class Nginx:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="gotaxy-nginx-")
        self.port = free_port()
        with open(os.path.join(self.dir, "nginx.conf"), "w") as f:
            f.write(CONFIG.format(dir=self.dir, port=self.port))
        self.process = subprocess.Popen([NGINX, "-c", os.path.join(self.dir, "nginx.conf"), "-p", self.dir],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        import socket

        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {self.error_log()}")
                time.sleep(0.05)  # nginx is starting; there is nothing to wait on but its port

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def access_lines(self) -> List[str]:
        try:
            with open(os.path.join(self.dir, "access.log")) as f:
                return f.read().splitlines()
        except OSError:
            return []

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class Visitor(Protocol):
    def __init__(self) -> None:
        self.received: List[bytes] = []
        self.done: Deferred = Deferred()
        self.port: Optional[int] = None

    def connectionMade(self) -> None:
        self.port = self.transport.getHost().port
        self.transport.write(b"GET / HTTP/1.0\r\nHost: site\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(b"".join(self.received))


class ProxyProtocolTests(unittest.TestCase):
    timeout = 60

    async def test_nginx_logs_the_visitors_address_with_v1_and_v2(self) -> None:
        if not os.path.exists(NGINX):
            raise unittest.SkipTest("needs nginx (Debian's nginx-light)")
        nginx = Nginx()
        self.addCleanup(nginx.close)
        live = await LiveSystem.start(self)
        # (A client needs one tunnel of its own to start.)
        await live.start_client([f"own=tcp:127.0.0.1:{nginx.port}"], allow_operator_tunnels=[f"127.0.0.1:{nginx.port}"])
        for version in ("v1", "v2"):
            name = f"web-{version}"
            await live.management.define_tunnel("alice", name, {
                "type": "tcp", "localIP": "127.0.0.1", "localPort": nginx.port,
                "transport.proxyProtocolVersion": version})
            port = await live.wait_up(name)
            visitor = Visitor()
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), visitor)
            body = await visitor.done
            seen = f"127.0.0.1 {visitor.port}"
            self.assertIn(f"seen 127.0.0.1:{visitor.port}".encode(), body, nginx.error_log())
            await wait_until(lambda: seen in nginx.access_lines(), timeout=10)
