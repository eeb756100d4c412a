"""
End to end: configuration files, ports, restarts, heartbeats, identity and
bad input, with real ``twistd`` processes on loopback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import struct
import threading

from gotaxy.jointoken import parse_join_token
from gotaxy.store import Store, default_url
from gotaxy.wire import PROTOCOL_VERSION
from tests.e2e import (
    connection_refused,
    echo_once,
    free_port,
    free_port_range,
    gotaxy_cli,
    stream_through,
    tunnel_port,
)


def test_frp_style_toml_configs(procs, echo, tmp_path):
    low, high = free_port_range(20)
    single = free_port()
    outside = free_port()
    control = free_port()
    (tmp_path / "frps.toml").write_text(
        f"""
bindAddr = "127.0.0.1"
bindPort = {control}
allowPorts = [
  {{ start = {low}, end = {high} }},
  {{ single = {single} }},
]
auth.token = "shared-secret-9f8e7d"
maxPortsPerClient = 2
transport.heartbeatTimeout = 30
log.level = "info"
log.maxDays = 3
tcpmuxHTTPConnectPort = 1337
"""
    )
    server = procs.server("--config", str(tmp_path / "frps.toml"), port=control)
    server.wait_for(r"'tcpmuxHTTPConnectPort' is an frp setting that Gotaxy does not support yet")

    (tmp_path / "frpc.toml").write_text(
        f"""
serverAddr = "127.0.0.1"
serverPort = {control}
user = "office"
auth.token = "shared-secret-9f8e7d"
transport.tls.fingerprint = "{server.fingerprint}"
dataDir = "{tmp_path / 'frpc-data'}"

[[proxies]]
name = "fixed"
type = "tcp"
localIP = "127.0.0.1"
localPort = {echo.port}
remotePort = {single}
transport.useEncryption = true

[[proxies]]
name = "outside"
type = "tcp"
localIP = "127.0.0.1"
localPort = {echo.port}
remotePort = {outside}

[[proxies]]
name = "auto"
type = "tcp"
localIP = "127.0.0.1"
localPort = {echo.port}

[[proxies]]
name = "one-too-many"
type = "tcp"
localIP = "127.0.0.1"
localPort = {echo.port}

[[proxies]]
name = "dns"
type = "udp"
localIP = "127.0.0.1"
localPort = 53
remotePort = 6002

[[proxies]]
name = "secret"
type = "stcp"
localIP = "127.0.0.1"
localPort = 22
"""
    )
    client = procs.twistd("gotaxy-client", ["--config", str(tmp_path / "frpc.toml")], "client")
    assert tunnel_port(client, "fixed") == single
    auto = tunnel_port(client, "auto")
    assert low <= auto <= high
    client.wait_for(rf"tunnel outside refused by the server: port {outside} is not allowed")
    client.wait_for(r"tunnel one-too-many refused by the server: .*maxPortsPerClient is 2")
    client.wait_for(r"'transport.useEncryption'.*not support")
    # udp is a tunnel type now, under the same per-client limit; stcp is not (yet).
    client.wait_for(r"tunnel dns refused by the server: .*maxPortsPerClient is 2")
    client.wait_for(r"proxy 'secret' has type \"stcp\", which Gotaxy does not support yet \(only \"tcp\", .*\"udp\".*\); skipped")
    assert echo_once(single, b"via frp config") == b"via frp config"
    assert echo_once(auto, b"auto port") == b"auto port"
    server.wait_for(r"client shared:office connected")


def test_ports_are_kept_across_server_restarts(procs, echo):
    low, high = free_port_range(50)
    server = procs.server("--allow-ports", f"{low}-{high}")
    control, token, fingerprint = server.port, server.token, server.fingerprint
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    assert low <= port <= high

    # A clean restart: the auto-allocated port comes back.
    # twistd re-raises SIGTERM after a clean shutdown.
    assert server.stop() in (0, -signal.SIGTERM)
    assert "Server Shut Down." in server.output()
    mark = client.mark()
    server = procs.server("--allow-ports", f"{low}-{high}", port=control, name="server2")
    assert server.token is None  # secrets are printed on first start only
    assert tunnel_port(client, "echo", timeout=40, start=mark) == port
    assert echo_once(port, b"after restart") == b"after restart"

    # A crash: the client notices, retries until the server is back, and
    # reopens the tunnel on the same port.
    server.kill()
    client.wait_for(r"disconnected from the server", start=mark)
    mark = client.mark()
    # The client retries against the closed port meanwhile (which stays
    # held for this test: free_port).
    client.wait_for(r"cannot reach 127\.0\.0\.1:\d+: connection refused; retrying in", start=mark)
    server = procs.server("--allow-ports", f"{low}-{high}", port=control, name="server3")
    assert tunnel_port(client, "echo", timeout=40, start=mark) == port
    assert echo_once(port, b"after crash") == b"after crash"
    assert token and fingerprint


def test_client_started_before_server_retries_until_it_is_up(procs, echo, tmp_path):
    # Start the server once to create its credentials, then stop it.
    server = procs.server()
    control, token, fingerprint = server.port, server.token, server.fingerprint
    server.stop()
    client = procs.twistd(
        "gotaxy-client",
        ["--server", f"127.0.0.1:{control}", "--token", token, "--fingerprint", fingerprint,
         "--data-dir", str(tmp_path / "c"), "--tunnel", f"echo=tcp:127.0.0.1:{echo.port}"],
        "client",
    )
    client.wait_for(r"cannot reach 127\.0\.0\.1:\d+: connection refused; retrying in", timeout=20)
    procs.server(port=control, name="server2")
    port = tunnel_port(client, "echo", timeout=40)
    assert echo_once(port, b"late server") == b"late server"


def test_frozen_client_is_marked_offline_after_heartbeat_timeout(procs, echo):
    server = procs.server("--heartbeat-interval", "0.5", "--heartbeat-timeout", "2")
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    assert echo_once(port, b"alive") == b"alive"

    # SIGSTOP: the client's TCP connection stays open but nothing answers,
    # which is what a machine that lost power or network looks like.
    client.signal(signal.SIGSTOP)
    silent = server.wait_for(r"client default \(127\.0\.0\.1:\d+\) silent for (\d+) s", timeout=30)
    # Not before the timeout, by the server's own clock (the wall clock of
    # a loaded machine says nothing about the server).
    assert int(silent.group(1)) >= 2, silent.group(0)
    server.wait_for(r"client default offline: heartbeat timeout")
    assert connection_refused(port)
    store = Store(default_url(str(server.data_dir)))
    try:
        (record,) = [c for c in store.list_clients() if c.name == "default"]
        assert record.online is False
        (tunnel,) = [t for t in store.list_tunnels() if t.name == "echo"]
        assert tunnel.status == "down" and "heartbeat timeout" in tunnel.reason
        assert any(e.type == "client.disconnected" and "heartbeat" in (e.detail or "") for e in store.events())
    finally:
        store.close()

    # Thawed, the client finds its connection dead, reconnects, and gets
    # its port back.
    mark = client.mark()
    client.signal(signal.SIGCONT)
    assert tunnel_port(client, "echo", timeout=40, start=mark) == port
    assert echo_once(port, b"back") == b"back"


def test_wrong_token_exits_nonzero_and_is_logged_without_the_token(procs, echo):
    server = procs.server()
    wrong = "gtx_" + "A" * 43
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", token=wrong)
    assert client.wait_exit(30) == 2
    assert "the server refused our login: invalid, expired or revoked token" in client.output()
    server.wait_for(r"login failed from 127\.0\.0\.1:\d+: invalid, expired or revoked token")
    # Warnings also land in the rotated log file in the data directory.
    assert "login failed from 127.0.0.1" in (server.data_dir / "logs" / "gotaxy.log").read_text()

    # No token, right or wrong, in any log line or log file.
    good = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", name="good")
    tunnel_port(good, "echo")
    log_text = server.output().split("=" * 72)[-1]  # everything after the first-start banner
    for secret in (wrong, server.token, parse_join_token(server.token).secret):
        assert secret not in log_text
        assert secret not in client.output() and secret not in good.output()
        for path in (server.data_dir / "logs").iterdir():
            assert secret not in path.read_text()
    assert server.output().count(server.token) == 2  # the banner: the token line and the command to paste


def test_changed_server_certificate_is_refused(procs, echo, tmp_path):
    # Old-style tokens (without the join token's pin) trust on first use.
    server = procs.server(data_dir="first")
    control = server.port
    argv = ["--server", f"127.0.0.1:{control}", "--data-dir", str(tmp_path / "c"),
            "--tunnel", f"echo=tcp:127.0.0.1:{echo.port}"]
    first = procs.twistd("gotaxy-client", [*argv, "--token", parse_join_token(server.token).secret], "first")
    tunnel_port(first, "echo")
    first.wait_for(r"first use")
    known = (tmp_path / "c" / "known_servers").read_text()
    assert server.fingerprint in known
    first.stop()
    server.stop()

    # Same address, new certificate (e.g. an impostor): refused, loudly.
    impostor = procs.server(data_dir="second", port=control, name="impostor")
    assert impostor.fingerprint != server.fingerprint
    second = procs.twistd("gotaxy-client", [*argv, "--token", parse_join_token(impostor.token).secret], "second")
    assert second.wait_exit(30) == 2
    out = second.output()
    assert server.fingerprint in out and impostor.fingerprint in out
    assert "login failed" not in impostor.output()  # the token was never sent


def test_revoked_token_cuts_the_client_off(procs, echo):
    server = procs.server("--heartbeat-interval", "1", "--heartbeat-timeout", "5")
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    assert "revoked" in gotaxy_cli("--data-dir", str(server.data_dir), "token", "revoke", "default")
    server.wait_for(r"client default: token revoked or expired; disconnecting", timeout=15)
    assert client.wait_exit(30) == 2
    assert connection_refused(port)


def _tls(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw)


def test_garbage_and_floods_on_the_control_port_do_not_disturb_tunnels(procs, echo, tmp_path):
    (tmp_path / "frps.toml").write_text("transport.authTimeout = 2\n")
    server = procs.server("--config", str(tmp_path / "frps.toml"))
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")

    results = []
    mark = server.mark()  # the start-up lines mention TLS too
    transfer = threading.Thread(target=lambda: results.append(stream_through(port, 48 * 1024 * 1024)))
    transfer.start()

    # Plain garbage instead of TLS.
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(os.urandom(2000))
    # TLS, then not our protocol.
    with _tls(server.port) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    # Right preamble, then a frame announcing a 2 GiB payload.
    with _tls(server.port) as s:
        s.sendall(b"GTXY" + struct.pack("!I", PROTOCOL_VERSION) + struct.pack("!BII", 1, 0, 2**31))
        server.wait_for(r"CONTROL frame of 2147483648 bytes exceeds the limit of 16384", start=mark)
    # Right preamble, then data before logging in.
    with _tls(server.port) as s:
        s.sendall(b"GTXY" + struct.pack("!I", PROTOCOL_VERSION) + struct.pack("!BII", 3, 2, 5) + b"hello")
        server.wait_for(r"DATA frame before login", start=mark)
    # A flood of connections that never say anything.
    idle = []
    for _ in range(400):
        try:
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        except OSError:
            break
    assert echo_once(port, b"during the flood") == b"during the flood"

    transfer.join(120)
    assert results and results[0][0] == results[0][1]

    # The garbage is refused by TLS, each connection with one line.
    server.wait_for(r"connection from 127\.0\.0\.1:\d+ closed before login: \[\('SSL routines'", timeout=10, start=mark)
    server.wait_for(r"not a Gotaxy client", start=mark)
    server.wait_for(r"refusing connection from 127\.0\.0\.1: \d+ connections are waiting to log in", start=mark)
    server.wait_for(r"no login within 2 s", timeout=10, start=mark)
    # The idle connections are cut after authTimeout ...
    closed = 0
    for s in idle:
        s.settimeout(10)
        try:
            if s.recv(1) == b"":
                closed += 1
        except (ConnectionResetError, socket.timeout):
            closed += 1
        s.close()
    assert closed == len(idle)
    # ... and honest clients can log in again.
    # (A machine of its own, so a token of its own: one token is one client.)
    late_token = re.search(r"gtx_\S+", gotaxy_cli("--data-dir", str(server.data_dir), "token", "create", "late")).group(0)
    late = procs.client(server, f"late=tcp:127.0.0.1:{echo.port}", name="late", token=late_token)
    assert echo_once(tunnel_port(late, "late"), b"still serving") == b"still serving"
    assert re.search(r"Traceback", server.output()) is None


def test_new_login_replaces_a_session_the_server_still_holds(procs, echo):
    server = procs.server()
    old = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", name="old")
    port = tunnel_port(old, "echo")
    # The old client freezes without closing its connection; before the
    # heartbeat gives up, the same installation (its data directory, after
    # a network change, say) logs in again.
    old.signal(signal.SIGSTOP)
    new = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", name="new",
                       args=["--data-dir", str(procs.workdir / "old-data")])
    assert tunnel_port(new, "echo") == port
    server.wait_for(r"client default reconnected from 127\.0\.0\.1:\d+; closing its previous connection")
    assert echo_once(port, b"new session") == b"new session"
    store = Store(default_url(str(server.data_dir)))
    try:
        assert any(e.type == "client.replaced" for e in store.events())
    finally:
        store.close()


def test_ca_file_verification_and_insecure_mode(procs, echo, tmp_path):
    server = procs.server()
    ca = server.data_dir / "tls" / "ca.pem"
    argv = ["--server", f"127.0.0.1:{server.port}", "--token", server.token,
            "--tunnel", f"echo=tcp:127.0.0.1:{echo.port}"]
    with_ca = procs.twistd("gotaxy-client", [*argv, "--ca", str(ca), "--data-dir", str(tmp_path / "a")], "with-ca")
    assert echo_once(tunnel_port(with_ca, "echo"), b"ca") == b"ca"
    with_ca.stop()

    # A CA that did not issue the server's certificate is refused.
    other = procs.server(data_dir="other-server", name="other")
    wrong = procs.twistd(
        "gotaxy-client",
        [*argv, "--ca", str(other.data_dir / "tls" / "ca.pem"), "--data-dir", str(tmp_path / "b")],
        "wrong-ca",
    )
    assert wrong.wait_exit(30) == 2
    assert "not valid for 127.0.0.1" in wrong.output()

    insecure = procs.twistd("gotaxy-client", [*argv, "--insecure", "--data-dir", str(tmp_path / "c")], "insecure")
    insecure.wait_for(r"INSECURE: --insecure is set, the server's certificate is NOT checked")
    assert echo_once(tunnel_port(insecure, "echo"), b"insecure") == b"insecure"


def test_ipv6_loopback(procs, echo, tmp_path):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        import pytest

        pytest.skip("no IPv6 loopback on this machine")
    control = free_port("::1")
    server_proc = procs.twistd(
        "gotaxy-server",
        ["--data-dir", "v6", "--bind-addr", "::1", "--bind-port", str(control)],
        "server6",
    )
    server_proc.wait_for(r"listening for clients on ::1:")
    out = server_proc.output()
    token = re.search(r"client token \('default'\):\s+(\S+)", out).group(1)
    fingerprint = re.search(r"(SHA256:[0-9A-F]{64})", out).group(1)
    client = procs.twistd(
        "gotaxy-client",
        ["--server", f"[::1]:{control}", "--token", token, "--fingerprint", fingerprint,
         "--data-dir", str(tmp_path / "c6"), "--tunnel", f"echo=tcp:127.0.0.1:{echo.port}"],
        "client6",
    )
    match = client.wait_for(r"tunnel echo up at ::1:(\d+)")
    port = int(match.group(1))
    with socket.create_connection(("::1", port), timeout=10) as s:
        s.sendall(b"over IPv6")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(100):
            data += chunk
    assert data == b"over IPv6"
