"""
End to end: changing configuration while real ``twistd`` processes run.

The client's file gains tunnel B, loses C and moves D to another local
port, by SIGHUP and then through the admin API, while a 256 MiB transfer
goes through tunnel A and arrives byte for byte; the server's file narrows
``allowPorts`` by SIGHUP; a broken file changes nothing; ``gotaxy verify``
and ``gotaxy-client`` run as the commands users type.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e import ROOT, EchoServer, connection_refused, echo_once, free_port, tunnel_port

TOTAL = 256 * 2**20
CHUNK = 1 << 20


class _Banner(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"this is D's new local service\n")


@pytest.fixture
def banner():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Banner)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def wait_refused(port: int, timeout: float = 20.0) -> None:
    """Wait until nothing accepts connections on ``port`` (the server closes a tunnel as it hears of it)."""
    deadline = time.monotonic() + timeout
    while not connection_refused(port):
        assert time.monotonic() < deadline, f"port {port} still accepts connections after {timeout:g} s"
        time.sleep(0.05)


def read_line(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        return s.makefile("rb").readline()


class Transfer:
    """
    TOTAL bytes pushed through an echo tunnel and read back on one connection,
    in threads: the first quarter at full speed, then at most about 10 MiB/s
    until ``go`` is set and the rest at full speed again, so the connection
    is open and carrying data all through what the test does in between.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sent, self.received = hashlib.sha256(), hashlib.sha256()
        self.count = 0
        self.error: BaseException | None = None
        self.go = threading.Event()
        self.quarter = threading.Event()
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer.start()
        self.reader.start()

    def _write(self) -> None:
        block = os.urandom(CHUNK)
        try:
            for n in range(TOTAL // CHUNK):
                if n >= TOTAL // CHUNK // 4 and not self.go.is_set():
                    self.go.wait(0.1)
                piece = n.to_bytes(8, "big") + block[8:]
                self.sent.update(piece)
                self.sock.sendall(piece)
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def _read(self) -> None:
        try:
            while True:
                data = self.sock.recv(262144)
                if not data:
                    return
                self.received.update(data)
                self.count += len(data)
                if self.count >= TOTAL // 4:
                    self.quarter.set()
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def finish(self) -> None:
        self.go.set()
        self.writer.join(300)
        self.reader.join(300)
        self.sock.close()
        assert self.error is None, f"the transfer failed: {self.error!r}"
        assert self.count == TOTAL, f"received {self.count} of {TOTAL} bytes"
        assert self.sent.hexdigest() == self.received.hexdigest()


def client_file(server, admin: int, proxies: str) -> str:
    return (
        f'serverAddr = "127.0.0.1"\nserverPort = {server.port}\nauth.token = "{server.token}"\n'
        f'transport.tls.fingerprint = "{server.fingerprint}"\n'
        f'webServer.port = {admin}\nwebServer.user = "ops"\nwebServer.password = "s3cret-admin"\n'
        + proxies
    )


def proxy(name: str, local: int, remote: int) -> str:
    return f'[[proxies]]\nname = "{name}"\nlocalPort = {local}\nremotePort = {remote}\n'


def admin_call(port: int, method: str, path: str, body: bytes | None = None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=body)
    request.add_header("Authorization", "Basic " + base64.b64encode(b"ops:s3cret-admin").decode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=60)


def test_client_reload_keeps_a_256_mib_transfer_intact(procs, echo, banner, tmp_path):
    server = procs.server()
    a, b, c, d, e, admin = (free_port() for _ in range(6))
    path = tmp_path / "client.toml"
    path.write_text(client_file(server, admin, proxy("a", echo.port, a) + proxy("c", echo.port, c)
                                + proxy("d", echo.port, d)))
    client = procs.twistd("gotaxy-client", ["--config", str(path), "--data-dir", str(tmp_path / "client-data")],
                          "client")
    for name in "acd":
        tunnel_port(client, name)
    assert echo_once(d, b"old d") == b"old d"

    transfer = Transfer(a)
    assert transfer.quarter.wait(120), "the first quarter of the transfer did not arrive"
    before = transfer.count

    # 1. SIGHUP: B added, C removed, D moved to another local port.
    mark = client.mark()
    path.write_text(client_file(server, admin, proxy("a", echo.port, a) + proxy("b", echo.port, b)
                                + proxy("d", banner, d)))
    client.signal(signal.SIGHUP)
    client.wait_for(r"config reloaded \(asked by SIGHUP\): opened: b; closed: c; reopened: d", start=mark)
    assert tunnel_port(client, "b", start=mark) == b
    assert echo_once(b, b"hello b") == b"hello b"
    assert tunnel_port(client, "d", start=mark) == d
    assert read_line(d) == b"this is D's new local service\n"
    wait_refused(c)

    # 2. The admin API: the file replaced through PUT /api/config (B gone, C back, E new).
    mark = client.mark()
    new = client_file(server, admin, proxy("a", echo.port, a) + proxy("c", echo.port, c) + proxy("d", banner, d)
                      + proxy("e", echo.port, e))
    report = admin_call(admin, "PUT", "/api/config", new.encode())
    assert (report["added"], report["removed"], report["changed"], report["unchanged"]) == (
        ["c", "e"], ["b"], [], ["a", "d"])
    assert tunnel_port(client, "e", start=mark) == e
    assert tunnel_port(client, "c", start=mark) == c
    assert echo_once(c, b"c again") == b"c again"
    status = {p["name"]: p for p in admin_call(admin, "GET", "/api/status")["tcp"]}
    assert {name: p["status"] for name, p in status.items()} == {
        "a": "running", "c": "running", "d": "running", "e": "running"}
    assert status["d"]["local_addr"] == f"127.0.0.1:{banner}"
    wait_refused(b)

    # 3. gotaxy-client reload, with nothing changed: nothing touched.
    result = run("-m", "gotaxy.client.admin", "-c", str(path), "reload")
    assert (result.returncode, result.stdout) == (0, "reloaded: nothing changed\n"), result.stderr

    # Tunnel A kept carrying data while all that happened, and its
    # connection was never reset: every byte arrived, in order.
    assert transfer.count > before, "no byte went through tunnel A while the config changed"
    assert transfer.count < TOTAL, "the transfer ended before the config changed; it proves nothing"
    transfer.finish()
    assert "Traceback" not in client.output() + server.output()
    # One session all along: the control connection stayed up.
    assert len(re.findall(r"client \S+ connected from", server.output())) == 1


def test_server_reload_narrowing_allow_ports(procs, echo, tmp_path):
    a, b = free_port(), free_port()
    config = tmp_path / "server.toml"
    config.write_text(f"allowPorts = [{{single = {a}}}, {{single = {b}}}]\n")
    server = procs.server("--config", str(config))
    client = procs.client(server, f"a=tcp:127.0.0.1:{echo.port}:{a}", f"b=tcp:127.0.0.1:{echo.port}:{b}")
    tunnel_port(client, "a")
    tunnel_port(client, "b")
    with socket.create_connection(("127.0.0.1", a), timeout=20) as held:
        held.sendall(b"before")
        assert held.recv(100) == b"before"

        # A broken file: nothing changes, and the log names the key.
        mark = server.mark()
        config.write_text(f"allowPorts = [{{single = {a}}}]\nmaxPortsPerClient = -1\n")
        server.signal(signal.SIGHUP)
        server.wait_for(r"reload asked by SIGHUP refused, nothing changed: .*'maxPortsPerClient' must be", start=mark)
        assert echo_once(b, b"b still") == b"b still"

        mark = server.mark()
        config.write_text(f"allowPorts = [{{single = {a}}}]\n")
        server.signal(signal.SIGHUP)
        server.wait_for(r"config reloaded \(asked by SIGHUP\): applied: allowPorts", start=mark)
        server.wait_for(rf"tunnel \S+/b closed: closed by a config reload: port {b}", start=mark)
        client.wait_for(rf"tunnel b down: closed by a config reload: port {b}")
        wait_refused(b)
        held.sendall(b"after")
        assert held.recv(100) == b"after"
    assert "Traceback" not in server.output()


def test_verify_and_includes_as_commands(tmp_path):
    frp = Path(__file__).resolve().parents[2] / "shared" / "frp-conf"
    if not frp.is_dir():
        frp = Path(__file__).resolve().parents[3] / "shared" / "frp-conf"
    for name in ("frps.toml", "frpc.toml", "frps_full_example.toml", "frpc_full_example.toml"):
        result = run("-m", "gotaxy.cli", "verify", str(frp / name))
        assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "confd").mkdir()
    main = tmp_path / "frpc.toml"
    main.write_text('serverAddr = "{{ .Envs.GTX_SERVER }}"\nincludes = ["./confd/*.toml"]\n')
    (tmp_path / "confd" / "a.toml").write_text('[[proxies]]\nname = "a"\nlocalPort = 22\n')
    result = run("-m", "gotaxy.cli", "verify", str(main))
    assert result.returncode == 1
    assert "'serverAddr' must be a host name" in result.stdout
    assert "GTX_SERVER is not set" in result.stdout
    (tmp_path / "confd" / "b.toml").write_text('[[proxies]]\nname = "a"\nlocalPort = 23\n')
    env_result = subprocess.run(
        [sys.executable, "-m", "gotaxy.cli", "verify", str(main)], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT), GTX_SERVER="203.0.113.5"),
    )
    assert env_result.returncode == 1
    assert "proxy 'a' is also defined in" in env_result.stdout
