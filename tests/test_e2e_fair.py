"""
End to end: one tunnel cannot starve the client's others (issue 8, item 6).
Idle public connections to tunnel A once took every stream of the client,
so that connections through its tunnel B failed, with nothing in the
client's log.
"""

from __future__ import annotations

import re
import socket
import time

from tests.e2e import echo_once, tunnel_port


def server_with(procs, tmp_path, settings: str):
    path = tmp_path / "server.toml"
    path.write_text(settings)
    return procs.server("--config", str(path))


def through(port: int) -> bool:
    """Open a connection through a tunnel and hold it; True if it carries data."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        sock.sendall(b"a")
        if sock.recv(1) == b"a":
            return sock  # type: ignore[return-value]
    except ConnectionResetError:
        pass
    sock.close()
    return False


def test_idle_connections_to_one_tunnel_leave_the_others_their_share(procs, echo, tmp_path):
    # 64 streams for the client, two tunnels: each keeps min(32, 64 // 2) =
    # 32 for itself, so A may hold 32 and B can always open 32.
    server = server_with(procs, tmp_path, "maxConnectionsPerClient = 64\ntunnelIdleTimeout = 0\n")
    client = procs.client(server, f"a=tcp:127.0.0.1:{echo.port}", f"b=tcp:127.0.0.1:{echo.port}")
    a, b = tunnel_port(client, "a"), tunnel_port(client, "b")
    held = []
    started = time.monotonic()
    try:
        refused = 0
        for _ in range(80):
            sock = through(a)
            if sock:
                held.append(sock)
            else:
                refused += 1
        assert (len(held), refused) == (32, 48)
        # B still works, as often as its share allows, while A's connections stay open.
        for n in range(40):
            assert echo_once(b, b"through b %d" % n) == b"through b %d" % n
        reason = (
            r"it has 32 connections open, its fair share of the client's 64: the rest are kept for "
            r"the client's 1 other tunnel\(s\), 32 each"
        )
        server.wait_for(rf"tunnel \S+/a: refused \d+ public connection\(s\) \(said at most once per 10 s\): {reason}")
        client.wait_for(rf"tunnel a: the server refused \d+ public connection\(s\): {reason}")
        elapsed = time.monotonic() - started
        # Once per interval (10 s), not once per connection.
        reports = len(re.findall(r"tunnel \S+/a: refused", server.output()))
        assert 1 <= reports <= 1 + elapsed // 10, reports
        assert len(re.findall(r"tunnel a: the server refused", client.output())) <= reports
        assert "tunnel b" not in re.sub(r"tunnel b up at", "", server.output() + client.output())
    finally:
        for sock in held:
            sock.close()


def test_an_idle_public_connection_is_closed_after_the_idle_timeout(procs, echo, tmp_path):
    server = server_with(procs, tmp_path, "tunnelIdleTimeout = 1\n")
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"hello")
        assert sock.recv(5) == b"hello"
        quiet_since = time.monotonic()
        # Wait for the server to close it: recv returns at EOF.
        assert sock.recv(1) == b""
        assert time.monotonic() - quiet_since >= 0.9
    server.wait_for(r"tunnel \S+/echo: closed 1 public connection\(s\) idle for 1 s \(tunnelIdleTimeout\)")
    # The tunnel itself stays up and carries new connections.
    assert echo_once(port, b"still up") == b"still up"
