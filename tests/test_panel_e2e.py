"""
The web panel of a real ``twistd -n gotaxy-server`` on loopback, attacked
the way issue 8 found it weak: malformed paths, weak TLS suites, log-in
storms and concurrent wrong passwords.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.e2e import free_port

PASSWORD = "panel e2e password 42"


def start_panel(procs, *args: str, env: dict = {}):
    web_port = free_port()
    server = procs.server("--web-port", str(web_port), *args, env={"GOTAXY_ADMIN_PASSWORD": PASSWORD, **env})
    server.wait_for(r"Site starting on %d" % web_port)
    wait_for_port(web_port)
    return server, web_port


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def raw_get(port: int, path: bytes) -> bytes:
    """Send ``GET path`` exactly as given (no client-side normalisation); the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def log_text(server) -> str:
    logs = Path(server.data_dir) / "logs"
    return server.output() + "".join(p.read_text(errors="replace") for p in logs.iterdir() if p.is_file())


def test_malformed_paths_are_400_and_leave_no_traceback(procs):
    server, port = start_panel(procs)
    for path in (b"/%00", b"/a%00b/c", b"/%zz", b"/%ff", b"/%c0%ae", b"/" + b"a" * 9000,
                 b"/api/v0.1/%00", b"/api/v0.1/clients/%ff", b"/%0d%0aX-Injected:%20yes"):
        answer = raw_get(port, path)
        assert status_of(answer) in (400, 404), (path[:40], answer[:200])
        assert b"Traceback" not in answer
        assert b"X-Injected" not in answer.split(b"\r\n\r\n")[0]
    assert status_of(raw_get(port, b"/")) == 200
    text = log_text(server)
    assert "Traceback" not in text, text[-3000:]
    assert "embedded null byte" not in text
