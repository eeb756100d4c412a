"""
End to end (issue 15, goal 2): many concurrent connections through one
tunnel, with real ``twistd`` processes.  More than the old limit of 1,024
streams per client all carry their bytes intact at once, and streams whose
reader stalls hold no more than the connection's window budget allows,
read from the server's ``/metrics`` (its buffered-byte counters, not RSS).

The local service runs on an asyncio loop in a thread of the test process
(one thread for thousands of connections): a connection whose first line
is ``echo`` is echoed, one whose first line is ``push`` is sent data for as
long as it takes it, and the service counts the ones that have stopped
taking (asyncio's ``pause_writing``).
"""

from __future__ import annotations

import asyncio
import re
import resource
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from gotaxy.budget import SMALL_WINDOW, TWISTED_READ, WINDOW_POOL
from tests.e2e import free_port, tunnel_port

#: Concurrent connections in the echo test: more than the old limit of 1,024.
CONNECTIONS = 2000
#: Stalled connections in the memory test.  Fewer than in the echo test:
#: before anything backs up into the server, the kernel takes up to about
#: 2 MiB into each stalled public socket's send buffer (tcp_wmem), and
#: 1,500 of them exceed the machine's TCP memory (tcp_mem), which then
#: starves every socket on it, the tunnel's own connection included.
STALLED = 200


def enough_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class _Service(asyncio.Protocol):
    def __init__(self, owner: "LocalService") -> None:
        self.owner = owner
        self.mode: Optional[bytes] = None
        self.head = b""
        self.paused = False
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        # A small send buffer, so that a stalled reader stalls us soon (and the kernel holds little).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        self.transport.set_write_buffer_limits(high=65536)

    def data_received(self, data: bytes) -> None:
        if self.mode == b"echo":
            self.transport.write(data)
            return
        if self.mode is not None:
            return
        self.head += data
        if b"\n" not in self.head:
            return
        line, rest = self.head.split(b"\n", 1)
        self.mode = line
        if line == b"echo":
            self.owner.echoing += 1
            if rest:
                self.transport.write(rest)
        elif line == b"push":
            self._push()

    def _push(self) -> None:
        while not self.paused and not self.transport.is_closing():
            self.transport.write(self.owner.chunk)
            self.owner.written += len(self.owner.chunk)

    def pause_writing(self) -> None:
        if not self.paused:
            self.paused = True
            self.owner.stalled += 1

    def resume_writing(self) -> None:
        self.paused = False
        self.owner.stalled -= 1
        if self.mode == b"push":
            self._push()


class LocalService:
    """The tunnel's local service: an asyncio loop in a thread."""

    def __init__(self) -> None:
        self.chunk = bytes(range(256)) * 64  # 16 KiB
        self.echoing = 0
        self.stalled = 0
        self.written = 0  #: bytes pushed, all connections
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        async def start() -> None:
            server = await self.loop.create_server(lambda: _Service(self), "127.0.0.1", 0, backlog=4096)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        assert ready.wait(10), "the local service did not start"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def service():
    service = LocalService()
    yield service
    service.close()


def wait_until(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.1)


def connect(port: int, mode: bytes, rcvbuf: Optional[int] = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port))
    sock.sendall(mode + b"\n")
    return sock


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def metrics(web: int) -> Dict[str, float]:
    """The server's /metrics as {"name{labels}": value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=30) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def server_with_metrics(procs, tmp_path: Path):
    web = free_port()
    config = tmp_path / "server.toml"
    config.write_text('metrics.exposure = "open"\n')
    return procs.server("--config", str(config), "--web-port", str(web)), web


def test_two_thousand_concurrent_connections_through_one_tunnel_all_echo_intact(procs, service, tmp_path):
    enough_descriptors(2 * CONNECTIONS + 512)
    server, web = server_with_metrics(procs, tmp_path)
    client = procs.client(server, f"echo=tcp:127.0.0.1:{service.port}")
    port = tunnel_port(client, "echo")
    held: List[socket.socket] = []
    try:
        for n in range(CONNECTIONS):
            sock = connect(port, b"echo")
            held.append(sock)
        wait_until(lambda: service.echoing == CONNECTIONS, f"{CONNECTIONS} connections at the local service")
        values = metrics(web)
        assert values['gotaxy_client_streams{client="default"}'] == CONNECTIONS
        assert values['gotaxy_client_stream_limit{client="default"}'] == 10000
        # All of them open at once, each carries its own bytes, intact.
        payloads = [(b"%06d:" % n) + bytes([n % 251]) * 4000 for n in range(CONNECTIONS)]
        for sock, payload in zip(held, payloads):
            sock.sendall(payload)
        for sock, payload in zip(held, payloads):
            assert read_exactly(sock, len(payload)) == payload
    finally:
        for sock in held:
            sock.close()
    assert not re.search(r"refused \d+ public connection", server.output() + client.output())
    assert "Traceback" not in server.output() + client.output()


def test_stalled_streams_hold_no_more_than_the_connection_budget(procs, service, tmp_path):
    enough_descriptors(2 * STALLED + 512)
    server, web = server_with_metrics(procs, tmp_path)
    client = procs.client(server, f"push=tcp:127.0.0.1:{service.port}")
    port = tunnel_port(client, "push")
    key = '{client="default"}'
    held: List[socket.socket] = []
    try:
        # Each public connection asks for data and then reads nothing: the
        # local service pushes into every stream until it is stalled.
        for _ in range(STALLED):
            held.append(connect(port, b"push", rcvbuf=4096))
        windows_bound = STALLED * SMALL_WINDOW + WINDOW_POOL
        peak = 0.0
        written = -1
        deadline = time.monotonic() + 300
        # Until every push is stalled and nothing moves any more, each sample is within the budget.
        while not (service.stalled == STALLED and service.written == written):
            assert time.monotonic() < deadline, "the pushes never came to a stop"
            written = service.written
            values = metrics(web)
            assert values["gotaxy_client_streams" + key] == STALLED
            windows = values["gotaxy_client_window_bytes" + key]
            buffered = values["gotaxy_client_buffered_bytes" + key]
            # The windows the client may fill add up to the floors and the pool, no more ...
            assert windows <= windows_bound, windows
            assert values['gotaxy_client_window_pool_bytes{client="default",kind="lent"}'] <= WINDOW_POOL
            # ... and what the server holds is within them, plus each public socket's pause threshold and one piece.
            assert buffered <= windows + STALLED * 2 * TWISTED_READ, (buffered, windows)
            peak = max(peak, buffered)
            time.sleep(0.5)
        # The pushes did back up into the server (the test can see a budget broken) ...
        assert peak > STALLED * SMALL_WINDOW, peak
        # ... and a new connection through the stalled tunnel still carries a MiB both ways.
        with connect(port, b"echo") as sock:
            payload = bytes(range(256)) * 4096
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            assert read_exactly(sock, len(payload)) == payload
            sender.join(60)
    finally:
        for sock in held:
            sock.close()
    assert "Traceback" not in server.output() + client.output()
