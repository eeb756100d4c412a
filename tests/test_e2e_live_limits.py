"""
End to end, real processes: an operator changes ``maxBandwidth`` live over
the REST API while a download runs through a tunnel.  The same connection
carries on at the new rate (measured from the server's own byte counters
and uptime, ``GET /status``, so on the server's clock), none is dropped,
every byte arrives in order, and the live value survives a restart of the
server, ahead of server.toml's.  The bounds are generous (a shared machine);
the precise check of the rates is tests/test_live_limits.py, on a fake
clock.  The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import socketserver
import threading
import time
from typing import Any, Dict, Optional, Tuple

from tests.e2e import _Server, free_port, tunnel_port

KiB, MiB = 1024, 1024 * 1024
TOTAL = 6 * MiB
WARM_UP = 1 * MiB
PASSWORD = "live limits e2e password"
#: Seconds of the server's clock each rate is measured over.
WINDOW = 1.5


def pattern(total: int) -> bytes:
    """Bytes that show a lost, repeated or reordered piece: each 4-byte word is its own offset."""
    return b"".join((i * 4).to_bytes(4, "big") for i in range(total // 4))


class Source:
    """A local service that sends ``pattern(TOTAL)`` to whoever connects, then closes."""

    def __init__(self) -> None:
        data = pattern(TOTAL)

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.sendall(data)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Panel:
    """The REST API as an operator's script uses it: a session cookie and its CSRF token."""

    def __init__(self, port: int) -> None:
        self.port = port
        deadline = time.monotonic() + 30
        while True:
            try:
                status, account, headers = self._request("POST", "/api/v0.1/login",
                                                         {"username": "admin", "password": PASSWORD})
                break
            except OSError:
                assert time.monotonic() < deadline, "the panel did not start listening"
                time.sleep(0.1)
        assert status == 200, account
        self.cookie = headers["Set-Cookie"].split(";", 1)[0]
        self.csrf = account["csrf_token"]

    def _request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                 headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            connection.request(method, path, json.dumps(body) if body is not None else None,
                               {"Content-Type": "application/json", **(headers or {})})
            response = connection.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None, response.headers
        finally:
            connection.close()

    def call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        status, answer, _ = self._request(method, "/api/v0.1" + path, body,
                                          {"Cookie": self.cookie, "X-CSRF-Token": self.csrf})
        assert status == 200, (status, answer)
        return answer

    def moved(self) -> Tuple[float, int]:
        """The server's uptime and the bytes it carried, from one answer (the server's own clock)."""
        status = self.call("GET", "/status")
        return status["uptime"], status["bytes_in"] + status["bytes_out"]

    def rate(self) -> float:
        """Bytes a second the server carried over WINDOW seconds of its uptime."""
        start, before = self.moved()
        while True:
            time.sleep(0.1)  # sampling a rate, not waiting for an event: the window is on the server's clock
            now, after = self.moved()
            if now - start >= WINDOW:
                return (after - before) / (now - start)


def test_a_live_bandwidth_change_holds_the_open_connection_and_survives_a_restart(procs):
    source = Source()
    config = procs.workdir / "server.toml"
    config.write_text('maxBandwidth = "256KB"\n')
    web_port = free_port()
    env = {"GOTAXY_ADMIN_PASSWORD": PASSWORD}
    received = bytearray()
    try:
        server = procs.server("--config", str(config), "--web-port", str(web_port), env=env)
        panel = Panel(web_port)
        client = procs.client(server, f"download=tcp:127.0.0.1:{source.port}")
        port = tunnel_port(client, "download")
        done = threading.Event()

        def download() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as visitor:
                while True:
                    data = visitor.recv(262144)
                    if not data:
                        break
                    received.extend(data)
            done.set()

        threading.Thread(target=download, daemon=True).start()
        deadline = time.monotonic() + 30
        # A limit lets one window more through at first (gotaxy.bandwidth: at most one window in flight), and
        # the window grows to 512 KiB with the first bytes (gotaxy.budget): measure once that has passed.
        while len(received) < WARM_UP:
            assert time.monotonic() < deadline and not done.is_set(), len(received)
            time.sleep(0.05)
        before = panel.rate()
        limits = panel.call("PATCH", "/limits", {"maxBandwidth": "1MB"})
        assert (limits["maxBandwidth"], limits["file"]["maxBandwidth"]) == (MiB, 256 * KiB)
        panel.rate()  # the window already granted at the old rate drains
        after = panel.rate()
        print(f"server.toml maxBandwidth 256KB: {before / KiB:.0f} KiB/s; live 1MB on the same connection: "
              f"{after / KiB:.0f} KiB/s (server's clock)")
        assert 0.5 * 256 * KiB <= before <= 1.5 * 256 * KiB, before / KiB
        assert 0.5 * MiB <= after <= 1.5 * MiB, after / KiB
        assert not done.is_set() and len(received) < TOTAL  # still the one connection, midway
        panel.call("PATCH", "/limits", {"maxBandwidth": 0})  # no limit, live: the rest comes at once
        assert done.wait(60), f"the download stopped at {len(received)} of {TOTAL} bytes"
        assert bytes(received) == pattern(TOTAL)  # every byte, once, in order: nothing was dropped or cut
        (tunnel,) = panel.call("GET", "/tunnels")["tunnels"]
        assert tunnel["opened"] == 1, tunnel  # one public connection carried it all
        events = panel.call("GET", "/events?type=limits.changed")["events"]
        assert [(e["address"], e["detail"]) for e in events] == [
            ("panel operator admin", "maxBandwidth no limit (was live 1.0 MiB/s)"),
            ("panel operator admin", "maxBandwidth 1.0 MiB/s (was server.toml's 256.0 KiB/s)"),
        ]

        # A restart keeps the live value ahead of server.toml's.
        assert server.stop() in (0, -signal.SIGTERM)  # twistd re-raises SIGTERM after a clean shutdown
        procs.server("--config", str(config), "--web-port", str(web_port), env=env, port=server.port)
        limits = Panel(web_port).call("GET", "/limits")
        assert (limits["maxBandwidth"], limits["file"]["maxBandwidth"]) == (0, 256 * KiB), limits
        assert limits["live"]["maxBandwidth"]["by"] == "panel operator admin"
    finally:
        source.close()
