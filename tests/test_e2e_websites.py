"""
End to end: websites (``type = "http"``) through real ``twistd`` server and
client processes, visited with curl and a WebSocket client, on loopback.

The local websites are small HTTP/1.1 servers in this process (stdlib
``http.server``, one thread per connection): each says who it is and what
it got, streams a download of any size, hashes an upload, or takes its time.
The names are under ``gotaxy.test``, which curl resolves to 127.0.0.1
(``--resolve``), so nothing leaves loopback.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.e2e import free_port

DOMAIN = "gotaxy.test"
ERP = "erp.company.test"  #: a custom domain outside subDomainHost
GIB = 1 << 30
BLOCK = hashlib.sha256(b"gotaxy").digest() * (1 << 15)  # 1 MiB of a fixed pattern


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, len(BLOCK)):
        digest.update(BLOCK[: min(len(BLOCK), size - offset)])
    return digest.hexdigest()


class Website(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    site = "?"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Local", self.site)
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self, digest: Any) -> int:
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return total
                left = size
                while left:
                    piece = self.rfile.read(min(left, 1 << 20))
                    digest.update(piece)
                    left -= len(piece)
                total += size
                self.rfile.readline()
        left = int(self.headers.get("Content-Length", "0"))
        while left:
            piece = self.rfile.read(min(left, 1 << 20))
            digest.update(piece)
            left -= len(piece)
            total += len(piece)
        return total

    def do_GET(self) -> None:
        if self.path.startswith("/download/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for offset in range(0, size, len(BLOCK)):
                piece = BLOCK[: min(len(BLOCK), size - offset)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/slow"):
            time.sleep(6)
        self._send(200, json.dumps({
            "site": self.site, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode())

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        size = self._read_body(digest)
        self._send(200, json.dumps({"site": self.site, "size": size, "sha256": digest.hexdigest()}).encode())


class LocalSite:
    def __init__(self, name: str) -> None:
        handler = type(f"Site_{name}", (Website,), {"site": name})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sites() -> Iterator[Dict[str, LocalSite]]:
    made = {name: LocalSite(name) for name in ("wiki", "erp", "news", "private")}
    try:
        yield made
    finally:
        for site in made.values():
            site.close()


def start(procs: Any, tmp_path: Path, sites: Dict[str, LocalSite], extra_proxies: str = "") -> Tuple[Any, Any, int]:
    web = free_port()
    config = tmp_path / "server.toml"
    config.write_text(
        f'vhostHTTPPort = {web}\nsubDomainHost = "{DOMAIN}"\nvhostHTTPTimeout = 3\nvhostHTTPHeaderTimeout = 2\n'
        f'vhostHTTPMaxHeaderBytes = 16384\n'
    )
    server = procs.server("--config", str(config))
    proxies = tmp_path / "client.toml"
    proxies.write_text(f"""
[[proxies]]
name = "wiki"
type = "http"
localPort = {sites["wiki"].port}
subdomain = "wiki"
requestHeaders.set.X-From-Where = "gotaxy"
responseHeaders.set.X-Served-By = "gotaxy"

[[proxies]]
name = "erp"
type = "http"
localPort = {sites["erp"].port}
customDomains = ["{ERP}"]
hostHeaderRewrite = "intranet.local"

[[proxies]]
name = "news"
type = "http"
localPort = {sites["news"].port}
customDomains = ["{ERP}"]
locations = ["/news"]

[[proxies]]
name = "private"
type = "http"
localPort = {sites["private"].port}
subdomain = "private"
httpUser = "alice"
httpPassword = "correct horse"

[[proxies]]
name = "gone"
type = "http"
localPort = {free_port()}
subdomain = "gone"
{extra_proxies}
""")
    client = procs.client(server, args=["--config", str(proxies)])
    for name in ("wiki", "erp", "news", "private", "gone"):
        client.wait_for(rf"tunnel {name} up at http://")
    return server, client, web


def curl(web: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    resolve = [arg for name in ("wiki", "erp", "private", "gone", "nobody", "ws")
               for arg in ("--resolve", f"{host(name)}:{web}:127.0.0.1")]
    return subprocess.run(["curl", "-sS", *resolve, *args], capture_output=True, timeout=timeout)


def status_and_body(web: int, url: str, *args: str) -> Tuple[int, bytes]:
    result = curl(web, "-o", "-", "-w", "\n%{http_code}", url, *args)
    body, _, code = result.stdout.rpartition(b"\n")
    return int(code), body


def host(name: str) -> str:
    return ERP if name == "erp" else f"{name}.{DOMAIN}"


def url(name: str, web: int, path: str = "/") -> str:
    return f"http://{host(name)}:{web}{path}"


def test_websites_by_name_with_curl(procs: Any, tmp_path: Path, sites: Dict[str, LocalSite]) -> None:
    server, client, web = start(procs, tmp_path, sites)

    # Routing by Host, two (here three) tunnels on one port; header rules both ways.
    result = curl(web, "-i", url("wiki", web, "/page?x=1"))
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    got = json.loads(body)
    assert (got["site"], got["path"]) == ("wiki", "/page?x=1")
    assert got["headers"]["x-from-where"] == "gotaxy"
    assert got["headers"]["x-forwarded-for"] == "127.0.0.1" and got["headers"]["x-forwarded-proto"] == "http"
    assert b"x-served-by: gotaxy" in head.lower()
    erp = json.loads(curl(web, url("erp", web)).stdout)
    assert erp["site"] == "erp" and erp["headers"]["host"] == "intranet.local"
    assert erp["headers"]["x-forwarded-host"] == f"{ERP}:{web}"
    # locations: /news on the same name goes to another tunnel.
    assert json.loads(curl(web, url("erp", web, "/news/today")).stdout)["site"] == "news"

    # A keep-alive connection that switches hosts reaches each host's own tunnel.
    switching = curl(web, "-v", f"http://127.0.0.1:{web}/", "-H", f"Host: wiki.{DOMAIN}",
                     "--next", f"http://127.0.0.1:{web}/", "-H", f"Host: {ERP}",
                     "--next", f"http://127.0.0.1:{web}/", "-H", f"Host: nobody.{DOMAIN}")
    assert b"Re-using existing connection" in switching.stderr or b"Reusing existing" in switching.stderr
    assert re.findall(rb'\{"site": "(\w+)"', switching.stdout) == [b"wiki", b"erp"]
    assert switching.stdout.index(b'"site": "erp"') < switching.stdout.index(b"There is no website named nobody")

    # Basic auth.
    assert status_and_body(web, url("private", web))[0] == 401
    assert status_and_body(web, url("private", web), "-u", "alice:wrong")[0] == 401
    code, body = status_and_body(web, url("private", web), "-u", "alice:correct horse")
    assert code == 200 and json.loads(body)["site"] == "private"

    # Error pages: unknown name, local service down, no answer in vhostHTTPTimeout.
    code, body = status_and_body(web, url("nobody", web))
    assert code == 404 and b"nobody." in body
    code, body = status_and_body(web, url("gone", web))
    assert code == 502 and b"not answering" in body
    began = time.monotonic()
    code, body = status_and_body(web, url("wiki", web, "/slow"))
    assert code == 504 and 2.5 < time.monotonic() - began < 20
    assert "Traceback" not in server.output() + client.output()


def test_slowloris_and_oversized_headers_are_refused_while_another_site_keeps_serving(
    procs: Any, tmp_path: Path, sites: Dict[str, LocalSite]
) -> None:
    server, client, web = start(procs, tmp_path, sites)
    slow = [socket.create_connection(("127.0.0.1", web)) for _ in range(20)]
    for sock in slow:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: wiki.{DOMAIN}\r\nX-A: 1\r\n".encode())
    for _ in range(3):  # while the slow ones hang, the other site answers at once
        assert json.loads(curl(web, url("erp", web), timeout=10).stdout)["site"] == "erp"
    big = status_and_body(web, url("erp", web), "-H", "X-Big: " + "a" * 20000)
    assert big[0] == 431
    many = status_and_body(web, url("erp", web), *[arg for i in range(120) for arg in ("-H", f"X-{i}: {i}")])
    assert many[0] == 431
    for sock in slow:  # each trickle is cut after vhostHTTPHeaderTimeout, with a 408
        sock.settimeout(15)
        answer = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        sock.close()
    assert json.loads(curl(web, url("erp", web)).stdout)["site"] == "erp"


def test_a_gib_streams_up_and_down_intact_in_bounded_memory(procs: Any, tmp_path: Path,
                                                           sites: Dict[str, LocalSite]) -> None:
    server, client, web = start(procs, tmp_path, sites)
    # Download: chunked from the local site, through the tunnel, hashed as curl writes it out.
    began = time.monotonic()
    download = subprocess.Popen(
        ["curl", "-sS", "--resolve", f"wiki.{DOMAIN}:{web}:127.0.0.1", "-o", "-", url("wiki", web, f"/download/{GIB}")],
        stdout=subprocess.PIPE,
    )
    digest, size = hashlib.sha256(), 0
    assert download.stdout is not None
    while True:
        piece = download.stdout.read(1 << 20)
        if not piece:
            break
        digest.update(piece)
        size += len(piece)
    assert download.wait(timeout=600) == 0
    assert (size, digest.hexdigest()) == (GIB, pattern_digest(GIB))
    print(f"1 GiB down through the http tunnel: {GIB / (time.monotonic() - began) / 2**20:.0f} MiB/s")

    # Upload: chunked from curl's stdin, hashed by the local site.
    began = time.monotonic()
    upload = subprocess.Popen(
        ["curl", "-sS", "--resolve", f"wiki.{DOMAIN}:{web}:127.0.0.1", "-T", "-", "-X", "POST",
         "-H", "Transfer-Encoding: chunked", url("wiki", web, "/upload")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert upload.stdin is not None and upload.stdout is not None
    for _ in range(GIB // len(BLOCK)):
        upload.stdin.write(BLOCK)
    upload.stdin.close()
    answer = json.loads(upload.stdout.read())
    assert upload.wait(timeout=600) == 0
    assert (answer["size"], answer["sha256"]) == (GIB, pattern_digest(GIB))
    print(f"1 GiB up through the http tunnel: {GIB / (time.monotonic() - began) / 2**20:.0f} MiB/s")

    # Memory stayed bounded by the windows, not by the body: the peak of each process.
    for process in (server.process, client):
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
        print(f"{process.name}: peak resident memory {peak_kib // 1024} MiB")
        assert peak_kib < 300 * 1024, f"{process.name} peaked at {peak_kib // 1024} MiB"


def test_a_websocket_echoes_ten_thousand_messages(procs: Any, tmp_path: Path, sites: Dict[str, LocalSite]) -> None:
    import asyncio

    from websockets.asyncio.server import serve
    from websockets.sync.client import connect

    ws_port = free_port()
    ready = threading.Event()
    stop: List[Any] = []

    async def echo(connection: Any) -> None:
        async for message in connection:
            await connection.send(message)

    async def main() -> None:
        stopped = asyncio.get_running_loop().create_future()
        stop.append((asyncio.get_running_loop(), stopped))
        async with serve(echo, "127.0.0.1", ws_port):
            ready.set()
            await stopped

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        server, client, web = start(procs, tmp_path, sites, extra_proxies=f"""
[[proxies]]
name = "ws"
type = "http"
localPort = {ws_port}
subdomain = "ws"
""")
        client.wait_for(r"tunnel ws up at http://")
        sock = socket.create_connection(("127.0.0.1", web))
        with connect(f"ws://ws.{DOMAIN}:{web}/chat", sock=sock, open_timeout=10) as ws:
            for i in range(10_000):
                message = f"message {i} " + "x" * (i % 200)
                ws.send(message)
                assert ws.recv(timeout=10) == message
    finally:
        loop, stopped = stop[0]
        loop.call_soon_threadsafe(stopped.set_result, None)
        thread.join(10)
