"""
End to end: attacks on a live server and client (issue "Under attack"),
each run against real ``twistd`` processes on loopback.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from gotaxy.store import Store, default_url
from gotaxy.tls import load_or_create_server_credentials
from gotaxy.wire import PROTOCOL_VERSION
from tests.e2e import FixedReply, echo_once, free_port, gotaxy_cli, tunnel_port


PREAMBLE = b"GTXY" + struct.pack("!I", PROTOCOL_VERSION)
HEADER = struct.Struct("!BII")
CONTROL, PING, PONG = 1, 7, 8


def tls_connect(port: int, rcvbuf: Optional[int] = None) -> ssl.SSLSocket:
    """A TLS connection to the control port that checks nothing (an attacker's)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.socket()
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    return context.wrap_socket(raw)


def frame(frame_type: int, stream_id: int, payload: bytes) -> bytes:
    return HEADER.pack(frame_type, stream_id, len(payload)) + payload


def control(message: Dict[str, Any]) -> bytes:
    return frame(CONTROL, 0, json.dumps(message).encode())


def read_frames(sock: ssl.SSLSocket, timeout: float = 10.0) -> Tuple[List[Tuple[int, bytes]], bool]:
    """Frames until the server closes (True) or ``timeout`` passes (False)."""
    sock.settimeout(timeout)
    data = b""
    closed = False
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    except socket.timeout:
        pass
    except (ConnectionResetError, ssl.SSLError):
        closed = True
    out = []
    while len(data) >= HEADER.size:
        kind, _, length = HEADER.unpack_from(data)
        out.append((kind, data[HEADER.size : HEADER.size + length]))
        data = data[HEADER.size + length :]
    return out, closed


def controls(frames: List[Tuple[int, bytes]]) -> List[Dict[str, Any]]:
    return [json.loads(p) for k, p in frames if k == CONTROL]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def log_file(server: Any) -> str:
    return (server.data_dir / "logs" / "gotaxy.log").read_text(errors="replace")


# -- item 7: nested JSON -------------------------------------------------------


def test_deeply_nested_control_frame_is_a_protocol_error_without_traceback(procs):
    server = procs.server()
    for _ in range(3):
        with tls_connect(server.port) as s:
            s.sendall(PREAMBLE + frame(CONTROL, 0, b"[" * 8000))
            frames, closed = read_frames(s)
        assert closed
        (error,) = controls(frames)
        assert error["type"] == "error" and "nested deeper than 16 levels" in error["reason"]
    server.wait_for(r"protocol error: JSON payload nested deeper than 16 levels")
    for text in (server.output(), log_file(server)):
        assert "Traceback" not in text and "RecursionError" not in text


# -- item 1: the shared token cannot take over a per-client token's client ------


def test_shared_token_with_a_token_holders_name_gets_its_own_namespace(procs, echo, tmp_path):
    shared = "shared-secret-0123456789"
    reserved = free_port()
    server = procs.server("--token", shared)
    alice_token = re.search(r"gtx_\S+", gotaxy_cli("--data-dir", str(server.data_dir), "token", "create", "alice")).group(0)
    alice = procs.client(server, f"web=tcp:127.0.0.1:{echo.port}:{reserved}", token=alice_token, name="alice")
    assert tunnel_port(alice, "web") == reserved
    server.wait_for(r"client alice connected")
    assert echo_once(reserved, b"alice's password") == b"alice's password"

    trap = FixedReply(b"captured by the impostor")
    try:
        mark = server.mark()
        impostor = procs.client(
            server, f"web=tcp:127.0.0.1:{trap.port}:{reserved}", f"other=tcp:127.0.0.1:{trap.port}",
            token=shared, args=["--user", "alice"], name="impostor",
        )
        impostor.wait_for(r"logged in to 127\.0\.0\.1:\d+ as shared:alice")
        impostor.wait_for(rf"tunnel web refused by the server: port {reserved} is reserved by tunnel 'web' of client 'alice'")
        tunnel_port(impostor, "other")  # it is a client of its own, with tunnels of its own

        # Alice keeps her session, her name and her port; her visitors reach her service.
        assert echo_once(reserved, b"alice's password") == b"alice's password"
        assert "reconnected" not in server.output()[mark:]
        assert "disconnected from the server" not in alice.output()
        server.wait_for(r"client shared:alice connected", start=mark)
    finally:
        trap.close()
    store = Store(default_url(str(server.data_dir)))
    try:
        clients = {c.name: c.online for c in store.list_clients()}
        assert clients == {"alice": True, "shared:alice": True}
        owners = {(t.client, t.name): t.address.port for t in store.list_tunnels() if t.address}
        assert owners[("alice", "web")] == reserved
        assert owners.get(("shared:alice", "web")) != reserved
    finally:
        store.close()


# -- item 2: answers to a peer that does not read are bounded --------------------


def flood_pings(sock: ssl.SSLSocket, ceiling: int, deadline: float) -> Tuple[int, bool]:
    """Send PINGs without reading until the server drops us; (bytes sent, dropped)."""
    burst = frame(PING, 0, b"12345678") * 4096
    sent = 0
    sock.settimeout(10)
    try:
        while sent < ceiling and time.monotonic() < deadline:
            sock.sendall(burst)
            sent += len(burst)
    except OSError:  # reset, broken pipe, TLS alert: the server dropped us
        return sent, True
    return sent, False


def test_unauthenticated_ping_flood_is_not_answered(procs):
    server = procs.server()
    before = rss_kib(server.pid)
    with tls_connect(server.port, rcvbuf=4096) as s:
        s.sendall(PREAMBLE)
        flood_pings(s, 32 * 1024 * 1024, time.monotonic() + 60)
        frames, _ = read_frames(s, timeout=5)
    server.wait_for(r"protocol error: PING frame before login")
    assert [k for k, _ in frames] == [CONTROL], "the server answered PINGs before log-in"
    assert controls(frames)[0]["reason"] == "protocol error: PING frame before login"
    assert rss_kib(server.pid) - before < 16 * 1024


def test_logged_in_peer_that_does_not_read_is_dropped_and_costs_bounded_memory(procs):
    server = procs.server("--heartbeat-interval", "1", "--heartbeat-timeout", "3")
    before = rss_kib(server.pid)
    with tls_connect(server.port, rcvbuf=4096) as s:
        s.sendall(PREAMBLE + control({"type": "login", "token": server.token, "user": "", "hostname": "h", "version": "0"}))
        s.settimeout(10)
        assert b"login_ok" in s.recv(4096)
        started = time.monotonic()
        sent, dropped = flood_pings(s, 256 * 1024 * 1024, started + 90)
        assert dropped, f"still connected after sending {sent} bytes of PINGs and reading nothing"
    server.wait_for(r"dropping connection from 127\.0\.0\.1:\d+: it has read nothing for 3 s")
    server.wait_for(r"client default offline")
    assert rss_kib(server.pid) - before < 32 * 1024
    assert "Traceback" not in server.output()


# -- item 15: a hostile server cannot crash the client ---------------------------


class HostileServer:
    """
    A TLS server on loopback that logs the client in, then sends one of
    ``attack`` (raw CONTROL payloads, one per connection in turn) and keeps
    the connection open.  Counts connections.
    """

    def __init__(self, tls_dir: Path, attack: List[bytes]) -> None:
        credentials = load_or_create_server_credentials(str(tls_dir))
        (tls_dir / "leaf.pem").write_bytes(credentials.certificate_pem)
        (tls_dir / "leaf.key").write_bytes(credentials.key_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(tls_dir / "leaf.pem"), str(tls_dir / "leaf.key"))
        self.attack = attack
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            payload = self.attack[self.connections % len(self.attack)]
            self.connections += 1
            threading.Thread(target=self._handle, args=(raw, payload), daemon=True).start()

    def _handle(self, raw: socket.socket, payload: bytes) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as s:
                s.settimeout(20)
                data = b""
                while b"login" not in data:
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                s.sendall(control({"type": "login_ok", "client": "victim", "serverVersion": "evil"}))
                s.sendall(frame(CONTROL, 0, payload))
                while s.recv(65536):
                    pass
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def test_hostile_server_numbers_do_not_crash_the_client(procs, tmp_path):
    attack = [
        b'{"type":"tunnel_add","name":"x","spec":{"type":"tcp","localPort":22,"remotePort":Infinity}}',
        b'{"type":"tunnel_add","name":"x","spec":{"type":"tcp","localPort":22,"remotePort":1e400}}',
        b'{"type":"tunnel_up","name":"web","address":{"scheme":"tcp","port":true}}',
        b'{"type":"tunnel_add","name":"y","spec":{"type":"tcp","localPort":22,"remotePort":22.5}}',
    ]
    hostile = HostileServer(tmp_path / "hostile-tls", attack)
    try:
        client = procs.twistd(
            "gotaxy-client",
            ["--server", f"127.0.0.1:{hostile.port}", "--token", "gtx_x", "--insecure",
             "--data-dir", str(tmp_path / "c"), "--tunnel", "web=tcp:127.0.0.1:9"],
            "client",
        )
        client.wait_for(r"logged in to 127\.0\.0\.1:\d+ as victim \(server evil\)")
        # The client drops each such connection cleanly and tries again, alive.
        client.wait_for(r"protocol error: malformed JSON payload: Infinity is not a JSON value")
        client.wait_for(r"protocol error: malformed JSON payload: number 1e400 is out of range", timeout=40)
        client.wait_for(r"protocol error: tunnel_up: 'address': the public port must be an integer from 0 to 65535", timeout=40)
        client.wait_for(r"protocol error: tunnel_add: 'remotePort' must be an integer from 0 to 65535", timeout=40)
        deadline = time.monotonic() + 40
        while hostile.connections < 5:
            assert client.running() and time.monotonic() < deadline, client.output()[-3000:]
            time.sleep(0.05)
        assert client.running()
        assert "Traceback" not in client.output() and "OverflowError" not in client.output()
    finally:
        hostile.close()


# -- issue 9 item 6: two machines under one identity ------------------------------


def test_second_machine_with_the_same_token_is_refused_and_the_first_keeps_working(procs, echo, tmp_path):
    server = procs.server()
    first = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", name="first")
    port = tunnel_port(first, "echo")
    # Another machine (its own data directory) given the same token.
    second = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", name="second")
    assert second.wait_exit(30) == 2
    out = second.output()
    assert "client 'default' is already connected from 127.0.0.1 by another installation" in out
    assert "gotaxy token create NAME" in out and "check the token" not in out
    assert echo_once(port, b"still mine") == b"still mine"
    assert "disconnected from the server" not in first.output()
    server.wait_for(r"client default: refused a log-in from 127\.0\.0\.1:\d+: another installation is connected")

    # One that keeps retrying (loginFailExit = false) is told once, and the
    # server says it once: no loop of replacements, no flood of lines.
    (tmp_path / "retry.toml").write_text("loginFailExit = false\n")
    third = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", name="third",
                         args=["--config", str(tmp_path / "retry.toml")])
    third.wait_for(r"already connected from 127\.0\.0\.1 by another installation.*; retrying")
    mark = server.mark()
    retries = re.compile(r"Scheduling retry|retrying in")
    deadline = time.monotonic() + 60
    while len(retries.findall(third.output())) < 4:  # it has tried again three times
        assert third.running() and time.monotonic() < deadline, third.output()[-3000:]
        time.sleep(0.05)
    assert third.output().count("already connected from") == 1
    assert server.output().count("refused a log-in from") == 1
    assert "reconnected" not in server.output()[mark:]
    assert echo_once(port, b"still mine") == b"still mine"


def test_two_machines_with_the_shared_token_and_one_user_name(procs, echo):
    shared = "shared-secret-abcdef012345"
    server = procs.server("--token", shared)
    first = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", token=shared, args=["--user", "office"],
                         name="first")
    port = tunnel_port(first, "echo")
    second = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", token=shared, args=["--user", "office"],
                          name="second")
    assert second.wait_exit(30) == 2
    assert "client 'shared:office' is already connected" in second.output()
    assert 'set user = "NAME" (or --user NAME)' in second.output()
    assert echo_once(port, b"office") == b"office"
