"""
End to end, real processes: a tunnel with ``transport.bandwidthLimit =
"10MB"`` carries about 10 MiB/s each way (in: a visitor uploads, the client
enforces it, frp's default mode; out: the local service sends, the server
enforces it), while an unlimited tunnel of the same client carries data at
the same time.  The bounds are generous (wall-clock figures on a shared
machine); the precise check of the rate is tests/test_bandwidth.py, on a
fake clock.  The measured figures are printed (``pytest -s``).
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from typing import List, Tuple

from tests.e2e import _Server, tunnel_port

MiB = 1024 * 1024
LIMIT = 10 * MiB
TOTAL = 40 * MiB
#: The first bytes (the bucket's burst, the window, the connection's start) are not timed.
WARM_UP = 4 * MiB
BLOCK = b"x" * 65536


def receive(sock: socket.socket, total: int) -> Tuple[int, float]:
    """Read until EOF: the count, and the rate after WARM_UP bytes (bytes a second)."""
    count, started = 0, None
    while True:
        data = sock.recv(262144)
        if not data:
            break
        count += len(data)
        if started is None and count >= WARM_UP:
            started, at = time.monotonic(), count
    ended = time.monotonic()
    assert count == total, f"received {count} of {total} bytes"
    return count, (count - at) / (ended - started)


def send(sock: socket.socket, total: int) -> None:
    sent = 0
    while sent < total:
        sock.sendall(BLOCK[: total - sent])
        sent += min(len(BLOCK), total - sent)
    sock.shutdown(socket.SHUT_WR)


class LocalService:
    """A sink (what it received, at what rate) or a source of TOTAL bytes, on loopback in a thread."""

    def __init__(self, sink: bool) -> None:
        self.results: List[Tuple[int, float]] = []
        self.received = threading.Event()  #: set once a sink has read a whole upload
        service = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                if sink:
                    service.results.append(receive(self.request, TOTAL))
                    service.received.set()
                else:
                    send(self.request, TOTAL)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_limited_tunnel_carries_its_limit_each_way_beside_an_unlimited_one(procs, tmp_path):
    sink, source, fast_sink = LocalService(True), LocalService(False), LocalService(True)
    try:
        server = procs.server()
        config = tmp_path / "client.toml"
        config.write_text(f"""
[[proxies]]
name = "upload"
localPort = {sink.port}
transport.bandwidthLimit = "10MB"

[[proxies]]
name = "download"
localPort = {source.port}
transport.bandwidthLimit = "10MB"
transport.bandwidthLimitMode = "server"

[[proxies]]
name = "fast"
localPort = {fast_sink.port}
""")
        client = procs.client(server, args=["--config", str(config)])
        ports = {name: tunnel_port(client, name) for name in ("upload", "download", "fast")}

        # In (client mode) with the unlimited tunnel pushing at the same time.
        upload = socket.create_connection(("127.0.0.1", ports["upload"]), timeout=60)
        fast = socket.create_connection(("127.0.0.1", ports["fast"]), timeout=60)
        senders = [threading.Thread(target=send, args=(s, TOTAL)) for s in (upload, fast)]
        started = time.monotonic()
        for thread in senders:
            thread.start()
        assert fast_sink.received.wait(60), "the unlimited upload did not arrive"
        fast_seconds = time.monotonic() - started
        assert sink.received.wait(60), "the limited upload did not arrive"
        limited_seconds = time.monotonic() - started
        for thread in senders:
            thread.join(60)
        upload.close()
        fast.close()
        up_rate = sink.results[0][1]

        # Out (server mode): the local service sends, the visitor reads.
        with socket.create_connection(("127.0.0.1", ports["download"]), timeout=60) as download:
            _, down_rate = receive(download, TOTAL)

        print(f"10MB limit: in {up_rate / MiB:.2f} MiB/s (client enforces), out {down_rate / MiB:.2f} MiB/s "
              f"(server enforces); the unlimited tunnel beside it: {TOTAL / MiB / fast_seconds:.1f} MiB/s")
        assert 0.8 * LIMIT <= up_rate <= 1.2 * LIMIT, up_rate / MiB
        assert 0.8 * LIMIT <= down_rate <= 1.2 * LIMIT, down_rate / MiB
        # The unlimited tunnel was not held to the limit: the same upload, at the same time, finished first.
        assert fast_sink.results[0][0] == TOTAL
        assert fast_seconds < limited_seconds, (fast_seconds, limited_seconds)
    finally:
        for service in (sink, source, fast_sink):
            service.close()
