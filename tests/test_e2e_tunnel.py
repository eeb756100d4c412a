"""
End to end: real ``twistd gotaxy-server`` and ``gotaxy-client`` processes on
loopback carry TCP to a local echo service.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading

from tests.e2e import echo_once, free_port, gotaxy_cli, read_all, stream_through, tunnel_port


def test_echo_round_trip_with_half_close(procs, echo):
    server = procs.server()
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", f"named=tcp:localhost:{echo.port}")
    port = tunnel_port(client, "echo")
    # A local service given by host name rather than address.
    assert echo_once(tunnel_port(client, "named"), b"by name") == b"by name"

    # The client half-closes after sending; the echo service only answers
    # the rest and closes once it sees that FIN, so this proves half-close
    # is carried in both directions.
    assert echo_once(port, b"hello through the tunnel") == b"hello through the tunnel"
    assert echo_once(port, b"x" * 300_000) == b"x" * 300_000


def test_64_mib_each_way_arrives_intact(procs, echo):
    server = procs.server()
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")

    sent, received = stream_through(port, 64 * 1024 * 1024)
    assert sent == received


def test_200_concurrent_connections_through_one_tunnel(procs, echo):
    server = procs.server()
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")

    sockets = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(200)]
    try:
        payloads = [os.urandom(4096) + i.to_bytes(4, "big") for i in range(200)]
        for s, payload in zip(sockets, payloads):
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        results = [read_all(s) for s in sockets]
    finally:
        for s in sockets:
            s.close()
    assert results == payloads


def test_local_service_down_closes_public_connection_cleanly(procs):
    server = procs.server()
    dead = free_port()
    client = procs.client(server, f"dead=tcp:127.0.0.1:{dead}")
    port = tunnel_port(client, "dead")

    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"anyone home?")
        # A clean close (EOF), not a reset and not a hang.
        assert s.recv(100) == b""
    client.wait_for(rf"cannot reach local service 127\.0\.0\.1:{dead}")
    server.wait_for(rf"cannot reach local service 127\.0\.0\.1:{dead}")


def test_slow_reader_does_not_stall_other_connections(procs, echo):
    server = procs.server()
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")

    # A connection that sends a lot and never reads its echo: its window
    # fills up and it stalls...
    stalled = socket.create_connection(("127.0.0.1", port), timeout=30)
    stalled.setblocking(False)
    pushed = 0
    block = b"s" * 65536
    try:
        for _ in range(2000):
            try:
                pushed += stalled.send(block)
            except BlockingIOError:
                break
        # ...while another connection on the same tunnel still flows.
        sent, received = stream_through(port, 8 * 1024 * 1024)
        assert sent == received
    finally:
        stalled.close()
    assert pushed < 2000 * 65536, "the stalled connection was never pushed back"


def test_many_tunnels_per_client_and_many_clients(procs, echo):
    server = procs.server()
    bob_token = gotaxy_cli("--data-dir", str(server.data_dir), "token", "create", "bob").split()[-1]
    alice = procs.client(server, *(f"e{i}=tcp:127.0.0.1:{echo.port}" for i in range(5)), name="alice")
    bob = procs.client(server, f"web=tcp:127.0.0.1:{echo.port}", token=bob_token, name="bob")

    ports = [tunnel_port(alice, f"e{i}") for i in range(5)] + [tunnel_port(bob, "web")]
    assert len(set(ports)) == 6
    for i, port in enumerate(ports):
        assert echo_once(port, b"tunnel %d" % i) == b"tunnel %d" % i
    server.wait_for(r"client bob connected")
    server.wait_for(r"client default connected")


def test_data_integrity_in_parallel(procs, echo):
    server = procs.server()
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    results = []

    def run() -> None:
        results.append(stream_through(port, 4 * 1024 * 1024, chunk=100_003))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 8
    assert all(sent == received for sent, received in results)
    assert len({sent for sent, _ in results}) == 8  # different data each time
    assert hashlib.sha256(b"").hexdigest() not in {s for s, _ in results}
