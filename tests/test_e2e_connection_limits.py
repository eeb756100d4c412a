"""
End to end: a tcp tunnel's ``transport.maxConnections`` (gotaxy.server.limits)
between real processes: the connection beyond the limit is closed at once
while the ones inside it keep their bytes flowing, and a place is free again
once one of them ends.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.e2e import tunnel_port

pytestmark = pytest.mark.e2e


def echoed(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        data = sock.recv(65536)
        if not data:
            break
        got += data
    return got


def closed_at_once(port: int) -> bool:
    """Connect and wait (up to 10 s) for the server to end the connection without a byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(b"let me in")
            return s.recv(65536) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


def test_max_connections_refuses_the_extra_connection_while_the_others_flow(procs, echo, tmp_path):
    config = tmp_path / "client.toml"
    config.write_text(
        "[[proxies]]\n"
        'name = "echo"\ntype = "tcp"\n'
        f"localPort = {echo.port}\n"
        "transport.maxConnections = 2\n"
    )
    server = procs.server()
    client = procs.client(server, args=["--config", str(config)])
    port = tunnel_port(client, "echo")
    first = socket.create_connection(("127.0.0.1", port), timeout=20)
    second = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        assert echoed(first, b"one") == b"one" and echoed(second, b"two") == b"two"
        assert closed_at_once(port)
        server.wait_for(r"tunnel \S+/echo: refused 1 public connection\(s\) .*transport\.maxConnections")
        block = bytes(range(256)) * 64  # 16 KiB at a time (no deadlock on full buffers): 1 MiB each way on both
        for _ in range(64):
            assert echoed(first, block) == block and echoed(second, block) == block
        first.close()
        deadline = time.monotonic() + 20
        while True:  # the server sees the end of the first one shortly
            try:  # a refused connection is cut at once: even the connect may see the reset
                with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
                    if echoed(third, b"three") == b"three":
                        break
            except (ConnectionResetError, BrokenPipeError):
                pass  # refused: the server had not yet seen the first one end
            assert time.monotonic() < deadline, "no place was freed when a connection ended"
            time.sleep(0.1)
        assert echoed(second, b"still") == b"still"
    finally:
        first.close()
        second.close()
