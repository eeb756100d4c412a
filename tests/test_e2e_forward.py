"""
End to end: website requests forwarded between nodes (``gotaxy.server.forward``),
three real ``twistd gotaxy-server`` nodes on one real PostgreSQL database
(tests/cluster.py), the client on node a, the visitor (curl, a WebSocket
client) on node c, which does not hold the client.  The node-to-node
connections are mutual TLS with one CA (tests/openssl_ca.py); a node whose
certificate another CA issued, or none, gets nothing through.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.cluster import Cluster, Node, wait_until
from tests.e2e import free_port
from tests.openssl_ca import OpenSSLCA
from tests.test_e2e_websites import DOMAIN, LocalSite, pattern_digest

pytestmark = pytest.mark.e2e

MIB = 1 << 20


@pytest.fixture
def sites() -> Iterator[Dict[str, LocalSite]]:
    made = {name: LocalSite(name) for name in ("wiki",)}
    try:
        yield made
    finally:
        for site in made.values():
            site.close()


@pytest.fixture
def echo_ws() -> Iterator[int]:
    """A WebSocket echo server (the websockets library) on loopback; its port."""
    import asyncio

    from websockets.asyncio.server import serve

    port = free_port()
    ready = threading.Event()
    stop: List[Any] = []

    async def echo(connection: Any) -> None:
        async for message in connection:
            await connection.send(message)

    async def main() -> None:
        stopped = asyncio.get_running_loop().create_future()
        stop.append((asyncio.get_running_loop(), stopped))
        async with serve(echo, "127.0.0.1", port):
            ready.set()
            await stopped

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield port
    finally:
        loop, stopped = stop[0]
        loop.call_soon_threadsafe(stopped.set_result, None)
        thread.join(10)


def start_nodes(cluster: Any, tmp_path: Path, size: int = 3) -> Tuple[Cluster, Dict[str, Dict[str, Any]], OpenSSLCA]:
    """``size`` nodes, each with vhostHTTPPort and a node-to-node listener, certificates from one CA."""
    ca = OpenSSLCA(tmp_path / "cluster-ca", "/CN=Test cluster CA")
    nodes = cluster(size, start=False)
    ports: Dict[str, Dict[str, Any]] = {}
    for node in nodes:
        cert, key = ca.client(f"node-{node.name}", usage="serverAuth,clientAuth")
        web, peer = free_port(), free_port()
        config = tmp_path / f"{node.name}.toml"
        config.write_text(
            f'vhostHTTPPort = {web}\nsubDomainHost = "{DOMAIN}"\n'
            f'[cluster]\nbindAddr = "127.0.0.1"\nbindPort = {peer}\nadvertiseAddr = "127.0.0.1"\n'
            f'tls.certFile = "{cert}"\ntls.keyFile = "{key}"\ntls.trustedCaFile = "{ca.ca_file}"\n'
        )
        ports[node.name] = {"web": web, "peer": peer, "cert": cert, "key": key}
        node.start("--config", str(config))
        node.wait_for(r"node-to-node listener on port %d" % peer)
    return nodes, ports, ca


def proxies(tmp_path: Path, **ports: int) -> Path:
    """A client file with one http tunnel per name: NAME.gotaxy.test to 127.0.0.1:PORT."""
    path = tmp_path / "client.toml"
    path.write_text("".join(f'[[proxies]]\nname = "{name}"\ntype = "http"\nlocalPort = {port}\nsubdomain = "{name}"\n\n'
                            for name, port in ports.items()))
    return path


def curl(web: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--resolve", f"wiki.{DOMAIN}:{web}:127.0.0.1",
                           "--resolve", f"ws.{DOMAIN}:{web}:127.0.0.1", *args],
                          capture_output=True, timeout=timeout)


def served(web: int, path: str = "/") -> Any:
    result = curl(web, "-o", "-", "-w", "\n%{http_code}", f"http://wiki.{DOMAIN}:{web}{path}", timeout=20)
    body, _, code = result.stdout.rpartition(b"\n")
    return json.loads(body) if code == b"200" else code


def test_a_request_to_another_node_is_forwarded_to_the_node_of_the_client(
    cluster: Any, tmp_path: Path, sites: Dict[str, LocalSite], echo_ws: int
) -> None:
    nodes, ports, _ = start_nodes(cluster, tmp_path)
    a, c = nodes["a"], nodes["c"]
    client = nodes.client(a, args=["--config", str(proxies(tmp_path, wiki=sites["wiki"].port, ws=echo_ws))])
    client.wait_for(r"tunnel wiki up at http://")
    client.wait_for(r"tunnel ws up at http://")
    web_a, web_c = ports["a"]["web"], ports["c"]["web"]
    assert isinstance(served(web_a), dict)  # served by a itself
    # c learns within a second or two that a serves the name (RemoteSites), then forwards.
    wait_until(lambda: isinstance(served(web_c), dict), timeout=15, what="node c forwards wiki to node a")
    got = served(web_c, "/page?x=1")
    assert (got["site"], got["path"]) == ("wiki", "/page?x=1")
    # The visitor's address, as if it had come to a: X-Forwarded-For is curl's, not node c's link.
    assert got["headers"]["x-forwarded-for"] == "127.0.0.1" and got["headers"]["x-forwarded-proto"] == "http"
    assert got["headers"]["x-forwarded-host"] == f"wiki.{DOMAIN}:{web_c}"

    # Keep-alive: three requests on one visitor connection, all served, the connection reused.
    many = curl(web_c, "-v", *[arg for i in range(3) for arg in
                               (("--next",) if i else ()) + (f"http://wiki.{DOMAIN}:{web_c}/k{i}",)])
    assert b"Re-using existing connection" in many.stderr or b"Reusing existing" in many.stderr
    assert re.findall(rb'"path": "(/k\d)"', many.stdout) == [b"/k0", b"/k1", b"/k2"]

    # 100 MiB down through c, hashed as curl writes it out.
    size = 100 * MIB
    download = subprocess.Popen(
        ["curl", "-sS", "--resolve", f"wiki.{DOMAIN}:{web_c}:127.0.0.1", "-o", "-",
         f"http://wiki.{DOMAIN}:{web_c}/download/{size}"], stdout=subprocess.PIPE)
    digest, total = hashlib.sha256(), 0
    assert download.stdout is not None
    while True:
        piece = download.stdout.read(MIB)
        if not piece:
            break
        digest.update(piece)
        total += len(piece)
    assert download.wait(timeout=300) == 0
    assert (total, digest.hexdigest()) == (size, pattern_digest(size))

    # An upload through c: streamed, hashed by the local site.
    upload = curl(web_c, "-X", "POST", "--data-binary", "@-", f"http://wiki.{DOMAIN}:{web_c}/upload")
    assert json.loads(upload.stdout)["size"] == 0

    # A WebSocket through c: the upgrade and a thousand messages each way.
    from websockets.sync.client import connect

    sock = socket.create_connection(("127.0.0.1", web_c))
    with connect(f"ws://ws.{DOMAIN}:{web_c}/chat", sock=sock, open_timeout=10) as ws:
        for i in range(1000):
            message = f"message {i} " + "x" * (i % 200)
            ws.send(message)
            assert ws.recv(timeout=10) == message

    # A name nobody serves is still c's own 404, not forwarded.
    result = curl(web_c, "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: nobody.{DOMAIN}",
                  f"http://127.0.0.1:{web_c}/")
    assert result.stdout == b"404"
    for node in nodes:
        assert "Traceback" not in node.output()


def _through_peer_port(port: int, certificate: Any, host: str, web: int) -> bytes:
    """A request written straight to a node-to-node port with ``certificate`` (None: none); what came back."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if certificate is not None:
        context.load_cert_chain(*certificate)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    answer = b""
    try:
        with context.wrap_socket(raw) as tls:
            tls.sendall(b"GOTAXY-FORWARD 1 http http 192.0.2.7 4444\n"
                        + f"GET / HTTP/1.1\r\nHost: {host}:{web}\r\nConnection: close\r\n\r\n".encode())
            while True:
                piece = tls.recv(65536)
                if not piece:
                    break
                answer += piece
    except (ssl.SSLError, OSError):
        pass
    return answer


def test_the_node_to_node_port_takes_only_a_certificate_of_the_cluster_ca(
    cluster: Any, tmp_path: Path, sites: Dict[str, LocalSite]
) -> None:
    nodes, ports, _ = start_nodes(cluster, tmp_path, size=1)
    a = nodes["a"]
    client = nodes.client(a, args=["--config", str(proxies(tmp_path, wiki=sites["wiki"].port))])
    client.wait_for(r"tunnel wiki up at http://")
    peer, web = ports["a"]["peer"], ports["a"]["web"]
    host = f"wiki.{DOMAIN}"
    # With the cluster's certificate: served, and the visitor is the one the first line names.
    answer = _through_peer_port(peer, (ports["a"]["cert"], ports["a"]["key"]), host, web)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["headers"]["x-forwarded-for"] == "192.0.2.7"
    # Without a certificate, and with one another CA issued: not a byte of HTTP.
    assert _through_peer_port(peer, None, host, web) == b""
    stranger = OpenSSLCA(tmp_path / "other-ca", "/CN=Another CA")
    assert _through_peer_port(peer, stranger.client("intruder", usage="serverAuth,clientAuth"), host, web) == b""
    assert "Traceback" not in a.output()
