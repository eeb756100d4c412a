"""
Support for end-to-end tests: real ``twistd`` processes on loopback.

Every process is started in its own process group and registered with a
``Processes`` registry whose ``cleanup`` kills whatever is still running, so
a failing test leaves nothing behind.  Local services (echo, sinks) run in
threads of the test process.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, List, Optional

ROOT = Path(__file__).resolve().parent.parent


def twistd() -> str:
    candidate = Path(sys.executable).with_name("twistd")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("twistd")
    if not found:
        raise RuntimeError("twistd not found; install the project (pip install .)")
    return found


#: Sockets that hold the ports ``free_port`` handed out, until ``release_ports``.
_held: List[socket.socket] = []


def free_port(host: str = "127.0.0.1") -> int:
    """
    A port on ``host`` that nothing else can take until the test ends.

    The port stays bound here (SO_REUSEADDR, never listening) until
    ``release_ports`` (tests/conftest.py calls it after each test).  A bound
    port is never handed out by the kernel, neither to another ``bind(0)``
    nor as the local port of an outgoing connection, and a plain bind fails;
    yet a server given the number can listen on it, because Twisted's
    listeners set SO_REUSEADDR too and ours does not listen.  A port that
    was merely free a moment ago could be taken by any connection made
    meanwhile, and the test would fail with "address in use" for nothing.
    """
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    _held.append(s)
    return s.getsockname()[1]


def release_ports() -> None:
    """Let the ports ``free_port`` handed out go."""
    while _held:
        _held.pop().close()


def free_port_range(size: int) -> "tuple[int, int]":
    """
    A run of ``size`` ports held for the test as ``free_port`` holds one,
    taken below the kernel's ephemeral range so that outgoing connections
    (which get their local ports from that range) never come near it.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError):
        ephemeral_low = 32768
    rng = random.Random()
    for _ in range(500):
        start = rng.randrange(10000, ephemeral_low - size)
        held = [_hold(port) for port in range(start, start + size)]
        if all(s is not None for s in held):
            _held.extend(held)  # type: ignore[arg-type]
            return start, start + size - 1
        for s in held:
            if s is not None:
                s.close()
    raise RuntimeError("no free port range found")


def _hold(port: int) -> "socket.socket | None":
    """
    A socket holding ``port`` as ``free_port`` holds one, or None if anyone
    has the port, another test's holder included (hence the plain bind
    first; SO_REUSEADDR, set after it, is what lets the server listen).
    """
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


class Process:
    def __init__(self, args: List[str], cwd: Path, name: str, env: Optional[dict] = None,
                 pass_fds: Iterable[int] = ()) -> None:
        self.name = name
        self.args = args
        self.log_path = cwd / f"{name}.out"
        environment = dict(os.environ)
        environment["PYTHONPATH"] = str(ROOT) + os.pathsep + environment.get("PYTHONPATH", "")
        environment["PYTHONUNBUFFERED"] = "1"
        environment.update(env or {})
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> "re.Match[str]":
        """Wait until ``pattern`` appears in the output after offset ``start``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output(), start)
            if match:
                return match
            if not self.running():
                raise AssertionError(
                    f"{self.name} exited ({self.popen.returncode}) before printing {pattern!r}:\n{self.output()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {pattern!r} within {timeout} s:\n{self.output()[-4000:]}")
            time.sleep(0.05)

    def mark(self) -> int:
        return len(self.output())

    def signal(self, sig: int) -> None:
        if self.running():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.wait(5)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def wait_exit(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def close(self) -> None:
        self.kill()
        self._log.close()


class Processes:
    """Starts twistd processes and kills all of them at clean-up."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: List[Process] = []

    def twistd(self, plugin: str, args: Iterable[str], name: str, env: Optional[dict] = None) -> Process:
        if plugin == "gotaxy-server":
            # No web panel or console unless a test asks for one (a later
            # flag wins): their default ports are fixed.
            args = ["--web-port", "0", "--console-port", "0", *args]
        process = Process([twistd(), "-n", "--pidfile=", plugin, *args], self.workdir, name, env)
        self.started.append(process)
        return process

    def server(self, *args: str, name: str = "server", data_dir: str = "server-data", port: Optional[int] = None,
               env: Optional[dict] = None) -> "GotaxyServer":
        port = port or free_port()
        process = self.twistd(
            "gotaxy-server", ["--data-dir", data_dir, "--bind-addr", "127.0.0.1", "--bind-port", str(port), *args],
            name, env,
        )
        return GotaxyServer(process, port, self.workdir / data_dir)

    def client(self, server: "GotaxyServer", *tunnels: str, token: Optional[str] = None, args: Iterable[str] = (),
               name: str = "client", pin: bool = True, env: Optional[dict] = None) -> Process:
        argv = ["--server", f"127.0.0.1:{server.port}", "--token", token or server.token,
                "--data-dir", str(self.workdir / f"{name}-data")]
        if pin:
            argv += ["--fingerprint", server.fingerprint]
        for tunnel in tunnels:
            argv += ["--tunnel", tunnel]
        return self.twistd("gotaxy-client", [*argv, *args], name, env)

    def cleanup(self) -> None:
        for process in self.started:
            process.close()


class GotaxyServer:
    def __init__(self, process: Process, port: int, data_dir: Path) -> None:
        self.process = process
        self.port = port
        self.data_dir = data_dir
        process.wait_for(r"listening for clients on")
        out = process.output()
        token = re.search(r"client token \('default'\):\s+(\S+)", out)
        # The certificate of the start line (a warning before it may name another: a CA's).
        fingerprint = re.search(r"listening for clients on .*?certificate (SHA256:[0-9A-F]{64})", out)
        self.token = token.group(1) if token else None
        self.fingerprint = fingerprint.group(1) if fingerprint else None

    def __getattr__(self, name: str):
        return getattr(self.process, name)


def gotaxy_cli(*args: str) -> str:
    """Run the ``gotaxy`` command; return its output (fails the test on error)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "gotaxy.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def tunnel_port(client: Process, name: str, timeout: float = 20.0, start: int = 0) -> int:
    match = client.wait_for(rf"tunnel {re.escape(name)} up at 127\.0\.0\.1:(\d+)", timeout, start)
    return int(match.group(1))


# -- local services ------------------------------------------------------------


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        while True:
            data = sock.recv(262144)
            if not data:
                break
            sock.sendall(data)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


class FixedReply:
    """A local service that answers every connection with ``reply`` and closes."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


class EchoServer:
    """A half-close-aware echo service on loopback, in a thread."""

    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _EchoHandler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def echo_once(port: int, payload: bytes, timeout: float = 20.0) -> bytes:
    """Send ``payload``, half-close, and read everything back until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return read_all(s)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(262144)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def stream_through(port: int, total: int, chunk: int = 1 << 20, timeout: float = 120.0) -> "tuple[str, str]":
    """
    Push ``total`` pseudo-random bytes through an echo tunnel while reading
    the echo concurrently; return (sha256 sent, sha256 received).
    """
    sent = hashlib.sha256()
    received = hashlib.sha256()
    block = os.urandom(chunk)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        def writer() -> None:
            remaining = total
            counter = 0
            while remaining:
                piece = (counter.to_bytes(8, "big") + block)[: min(chunk, remaining)]
                sent.update(piece)
                s.sendall(piece)
                remaining -= len(piece)
                counter += 1
            s.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=writer)
        thread.start()
        count = 0
        while True:
            data = s.recv(262144)
            if not data:
                break
            received.update(data)
            count += len(data)
        thread.join(timeout)
    assert count == total, f"received {count} of {total} bytes"
    return sent.hexdigest(), received.hexdigest()


def connection_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
