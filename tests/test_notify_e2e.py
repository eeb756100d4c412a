"""
End to end: a real ``twistd gotaxy-server`` delivers signed webhooks to a
receiver on loopback as a real client comes and goes, and keeps the
webhook secret out of its output and log files.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, List, Tuple

from tests.e2e import echo_once, tunnel_port

SECRET = "e2e-hook-s3cret-value"


class Receiver:
    def __init__(self) -> None:
        self.requests: List[Tuple[dict, bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def events(self) -> List[dict]:
        return [json.loads(body) for _, body in list(self.requests)]

    def wait_for(self, kinds: List[str], timeout: float = 20.0) -> List[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if [e["event"] for e in self.events()] == kinds:
                return self.events()
            time.sleep(0.05)
        raise AssertionError(f"receiver got {[e['event'] for e in self.events()]}, expected {kinds}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_webhooks_from_a_real_server(procs, echo, tmp_path):
    receiver = Receiver()
    try:
        config = tmp_path / "server.toml"
        config.write_text(
            'serverName = "e2e-edge"\n'
            "notify.flapGrace = 1\n"
            "[[webhooks]]\n"
            f'url = "http://127.0.0.1:{receiver.port}/hook"\n'
            f'secret = "{SECRET}"\n'
            'events = ["client.*", "tunnel.opened"]\n'
        )
        server = procs.server("--config", str(config), "--console-port", "0")
        client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
        port = tunnel_port(client, "echo")
        assert echo_once(port, b"ping") == b"ping"
        events = receiver.wait_for(["client.connected", "tunnel.opened"])
        assert all(e["server"] == "e2e-edge" for e in events)
        assert events[0]["client"] == events[1]["client"] == "default"  # the token's name
        assert events[1]["tunnel"] == "echo"
        for headers, body in receiver.requests:
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Gotaxy-Signature"], expected)

        client.stop()
        events = receiver.wait_for(["client.connected", "tunnel.opened", "client.disconnected"])
        assert events[-1]["detail"]  # the reason
        server.stop()
        logs = "".join(p.read_text(errors="replace") for p in (server.data_dir / "logs").glob("*"))
        assert SECRET not in server.output() and SECRET not in logs
    finally:
        receiver.close()
