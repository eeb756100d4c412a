"""
End to end: operating-system limits of a public server (issue 8): listen
backlogs (item 12) and file descriptors (item 18), against real processes.
"""

from __future__ import annotations

import socket
import subprocess
from typing import Dict

from gotaxy.oslimits import LISTEN_BACKLOG, listen_backlog
from tests.e2e import GotaxyServer, Process, echo_once, free_port, tunnel_port, twistd


def listen_backlogs() -> Dict[int, int]:
    """Local port -> backlog of every listening TCP socket (``ss``'s Send-Q for LISTEN)."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True, timeout=30).stdout
    backlogs: Dict[int, int] = {}
    for line in out.splitlines():
        fields = line.split()
        # State Recv-Q Send-Q Local:Port Peer:Port
        backlogs[int(fields[3].rsplit(":", 1)[1])] = int(fields[2])
    return backlogs


def test_every_listener_has_a_backlog_fit_for_a_public_server(procs, echo):
    expected = listen_backlog()
    assert expected > 50  # the kernel here allows more than Twisted's default
    panel, console = free_port(), free_port()
    server = procs.server("--web-port", str(panel), "--console-port", str(console))
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    assert echo_once(port, b"x") == b"x"
    backlogs = listen_backlogs()
    assert {
        "control": backlogs.get(server.port),
        "tunnel": backlogs.get(port),
        "panel": backlogs.get(panel),
        "console": backlogs.get(console),
    } == dict.fromkeys(["control", "tunnel", "panel", "console"], expected)
    assert expected == min(LISTEN_BACKLOG, int(open("/proc/sys/net/core/somaxconn").read()))


def test_a_client_out_of_descriptors_says_so_instead_of_blaming_the_local_service(procs, echo):
    server = procs.server()
    limit = 64
    argv = [
        "prlimit", f"--nofile={limit}:{limit}", twistd(), "-n", "--pidfile=", "gotaxy-client",
        "--server", f"127.0.0.1:{server.port}", "--token", server.token, "--fingerprint", server.fingerprint,
        "--data-dir", str(procs.workdir / "client-data"), "--tunnel", f"echo=tcp:127.0.0.1:{echo.port}",
    ]
    client = Process(argv, procs.workdir, "client")
    procs.started.append(client)
    client.wait_for(rf"file descriptor limit: {limit} \(already the hard limit\); every tunneled connection "
                    r"needs one, so raise LimitNOFILE \(systemd\) or ulimit -Hn to 4096 or more")
    port = tunnel_port(client, "echo")
    held = []
    try:
        # Every connection through the tunnel holds a descriptor on the
        # client; open them until the client has none left for the next.
        for _ in range(2 * limit):
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            held.append(sock)
            sock.sendall(b"ping")
            if sock.recv(4) != b"ping":
                break
        else:
            raise AssertionError(f"{2 * limit} connections went through a client limited to {limit} descriptors")
        client.wait_for(
            rf"tunnel echo: cannot connect to 127\.0\.0\.1:{echo.port}: the client is out of file "
            rf"descriptors \(limit {limit}\): raise LimitNOFILE / ulimit -n"
        )
        server.wait_for(r"closed: the client is out of file descriptors \(limit 64\)")
        assert "cannot reach local service" not in client.output()
        assert "cannot reach local service" not in server.output()
    finally:
        for sock in held:
            sock.close()


def test_a_server_out_of_descriptors_says_so_once_per_interval(procs, echo):
    limit = 64
    port = free_port()
    argv = [
        "prlimit", f"--nofile={limit}:{limit}", twistd(), "-n", "--pidfile=", "gotaxy-server",
        "--web-port", "0", "--console-port", "0", "--data-dir", "server-data",
        "--bind-addr", "127.0.0.1", "--bind-port", str(port),
    ]
    process = Process(argv, procs.workdir, "server")
    procs.started.append(process)
    server = GotaxyServer(process, port, procs.workdir / "server-data")
    server.wait_for(rf"file descriptor limit: {limit} \(already the hard limit\)")
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    public = tunnel_port(client, "echo")
    held = []
    try:
        # Every public connection holds a descriptor on the server.
        for _ in range(2 * limit):
            sock = socket.create_connection(("127.0.0.1", public), timeout=20)
            held.append(sock)
            try:
                sock.sendall(b"ping")
                if sock.recv(4) != b"ping":
                    break
            except ConnectionResetError:
                break
        else:
            raise AssertionError(f"{2 * limit} connections went through a server limited to {limit} descriptors")
        server.wait_for(
            r"tunnel default/echo: turned 1 public connection\(s\) away \(said at most once per 10 s\): "
            rf"the server is out of file descriptors \(limit {limit}\): raise LimitNOFILE / ulimit -n"
        )
        # Twisted's own line for every refused connection is not there.
        assert "EMFILE" not in server.output()
    finally:
        for sock in held:
            sock.close()
