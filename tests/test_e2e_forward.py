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


def _through_peer_port(port: int, certificate: Any, host: str, web: int,
                       first: bytes = b"GOTAXY-FORWARD 1 http http 192.0.2.7 4444\n", extra: bytes = b"") -> bytes:
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
            tls.sendall(first + f"GET / HTTP/1.1\r\nHost: {host}:{web}\r\nConnection: close\r\n".encode()
                        + extra + b"\r\n")
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
    # A link of requests (what nodes of this version send): each request's visitor is its header's.
    answer = _through_peer_port(peer, (ports["a"]["cert"], ports["a"]["key"]), host, web,
                                b"GOTAXY-FORWARD 1 requests http\n", b"x-gotaxy-visitor: 192.0.2.9 5555\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    headers = json.loads(answer.partition(b"\r\n\r\n")[2])["headers"]
    assert (headers["x-forwarded-for"], headers["x-real-ip"]) == ("192.0.2.9", "192.0.2.9")
    assert "x-gotaxy-visitor" not in headers
    # Without a certificate, and with one another CA issued: not a byte of HTTP.
    assert _through_peer_port(peer, None, host, web) == b""
    stranger = OpenSSLCA(tmp_path / "other-ca", "/CN=Another CA")
    assert _through_peer_port(peer, stranger.client("intruder", usage="serverAuth,clientAuth"), host, web) == b""
    assert "Traceback" not in a.output()


def _exchange(sock: socket.socket, host: str, web: int, path: str) -> Tuple[int, bytes]:
    """One keep-alive request on ``sock`` for ``host``; (status, body) of its answer (h11 reads it)."""
    import h11

    parser = h11.Connection(h11.CLIENT)
    sock.sendall(parser.send(h11.Request(method="GET", target=path, headers=[("Host", f"{host}:{web}")]))
                 + parser.send(h11.EndOfMessage()))
    status, body = 0, b""
    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            assert data, f"the connection closed before the answer to {host}{path} was whole"
            parser.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
            assert (b"connection", b"close") not in event.headers, "the node closes the visitor's connection"
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, body


def _site_of(body: bytes) -> Any:
    try:
        return json.loads(body)["site"]
    except ValueError:
        return body[:80]


def test_each_request_of_one_keep_alive_connection_goes_to_the_node_that_serves_its_name(
    cluster: Any, tmp_path: Path
) -> None:
    made = {name: LocalSite(name) for name in ("wiki", "news")}
    try:
        nodes, ports, _ = start_nodes(cluster, tmp_path)
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        on_a = nodes.client(a, name="office", args=["--config", str(proxies(tmp_path, wiki=made["wiki"].port))])
        (tmp_path / "c").mkdir()
        from tests.e2e import gotaxy_cli

        made_token = gotaxy_cli("--data-dir", str(c.data_dir), "--database-url", nodes.url, "token", "create", "shop")
        shop = re.search(r"token for client 'shop' \(shown only now\): (\S+)", made_token).group(1)  # type: ignore[union-attr]
        on_c = nodes.client(c, name="shop", token=shop,
                            args=["--config", str(proxies(tmp_path / "c", news=made["news"].port))])
        on_a.wait_for(r"tunnel wiki up at http://")
        on_c.wait_for(r"tunnel news up at http://")
        web_b, web_c = ports["b"]["web"], ports["c"]["web"]
        wiki, news, nobody = f"wiki.{DOMAIN}", f"news.{DOMAIN}", f"nobody.{DOMAIN}"

        def both_known() -> bool:
            with socket.create_connection(("127.0.0.1", web_b), timeout=20) as probe:
                return (_site_of(_exchange(probe, wiki, web_b, "/")[1]) == "wiki"
                        and _site_of(_exchange(probe, news, web_b, "/")[1]) == "news")

        wait_until(both_known, timeout=20, what="node b knows which nodes serve wiki and news")
        # On node b (neither name is its own): a, c, nobody, a again, c again, on one connection.
        with socket.create_connection(("127.0.0.1", web_b), timeout=20) as sock:
            answers = [(status, _site_of(body) if status == 200 else status)
                       for status, body in (_exchange(sock, host, web_b, f"/b{i}") for i, host in
                                            enumerate((wiki, news, nobody, wiki, news, nobody, news)))]
        assert answers == [(200, "wiki"), (200, "news"), (404, 404), (200, "wiki"), (200, "news"), (404, 404),
                           (200, "news")]
        # On node c (news is its own): forwarded, local, refused, forwarded, on one connection.
        with socket.create_connection(("127.0.0.1", web_c), timeout=20) as sock:
            got = []
            for host, path in ((wiki, "/c0"), (news, "/c1"), (nobody, "/c2"), (wiki, "/c3?x=1")):
                status, body = _exchange(sock, host, web_c, path)
                got.append((status, json.loads(body)["path"] if status == 200 else status))
            status, body = _exchange(sock, wiki, web_c, "/who")
        assert got == [(200, "/c0"), (200, "/c1"), (404, 404), (200, "/c3?x=1")]
        # Forwarded per request, the owner still sees the visitor (not node c) and what it asked for.
        headers = json.loads(body)["headers"]
        assert (headers["x-forwarded-for"], headers["x-real-ip"]) == ("127.0.0.1", "127.0.0.1")
        assert headers["x-forwarded-host"] == f"{wiki}:{web_c}" and "x-gotaxy-visitor" not in headers
        # curl --next: one connection, three requests, each where its name is.
        many = curl(web_b, "-v", "--resolve", f"{news}:{web_b}:127.0.0.1", f"http://{wiki}:{web_b}/k0",
                    "--next", f"http://{news}:{web_b}/k1", "--next", f"http://{wiki}:{web_b}/k2")
        assert b"Re-using existing connection" in many.stderr or b"Reusing existing" in many.stderr
        assert re.findall(rb'"site": "(\w+)", "path": "(/k\d)"', many.stdout) == [
            (b"wiki", b"/k0"), (b"news", b"/k1"), (b"wiki", b"/k2")]
        for node in nodes:
            assert "Traceback" not in node.output()
    finally:
        for site in made.values():
            site.close()


def test_a_node_that_holds_the_name_but_cannot_be_reached_gives_a_502_page_within_the_connect_timeout(
    cluster: Any, tmp_path: Path, sites: Dict[str, LocalSite]
) -> None:
    import os
    import signal
    import time

    nodes, ports, _ = start_nodes(cluster, tmp_path, size=2)
    a, b = nodes["a"], nodes["b"]
    client = nodes.client(a, args=["--config", str(proxies(tmp_path, wiki=sites["wiki"].port))])
    client.wait_for(r"tunnel wiki up at http://")
    web_b = ports["b"]["web"]
    wait_until(lambda: isinstance(served(web_b), dict), timeout=15, what="node b forwards wiki to node a")
    # This visitor connection holds the one link b has to a (the requests so far came one after the
    # other), so the next request needs a new link.
    held = socket.create_connection(("127.0.0.1", web_b), timeout=20)
    assert _exchange(held, f"wiki.{DOMAIN}", web_b, "/held")[0] == 200
    # Node a stops answering (stopped, not dead: its lease runs, its port takes connections into the
    # kernel's backlog, but nothing completes a TLS handshake).
    pid = a.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        begun = time.monotonic()
        result = curl(web_b, "-o", "-", "-w", "\n%{http_code}", f"http://wiki.{DOMAIN}:{web_b}/", timeout=60)
        took = time.monotonic() - begun
    finally:
        os.kill(pid, signal.SIGCONT)
        held.close()
    page, _, code = result.stdout.rpartition(b"\n")
    assert code == b"502", result
    # The connect timeout (cluster.connectTimeout, 5 s by default), not the response timeout (60 s), ended it.
    assert b"did not complete its TLS handshake in 5 s" in page, page
    assert took < 30, took
    assert "could not be forwarded" in b.output()
    # Once a answers again, so does the site through b.
    wait_until(lambda: isinstance(served(web_b), dict), timeout=20, what="node b forwards wiki again")
    a.kill()  # gone, its lease not yet expired (30 s): its port refuses at once
    result = curl(web_b, "-o", "-", "-w", "\n%{http_code}", f"http://wiki.{DOMAIN}:{web_b}/", timeout=30)
    page, _, code = result.stdout.rpartition(b"\n")
    assert code == b"502", result
    assert "Traceback" not in b.output()


class _TlsSite:
    """A private HTTPS service on loopback whose certificate ``ca`` issued for ``name``."""

    def __init__(self, directory: Path, name: str) -> None:
        import http.server

        directory.mkdir(parents=True, exist_ok=True)
        self.ca = directory / "private-ca.pem"
        ca_key, key, cert = directory / "private-ca.key", directory / "site.key", directory / "site.pem"
        curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"]
        for args in (
            ["req", "-x509", *curve, "-keyout", str(ca_key), "-out", str(self.ca), "-subj", "/CN=private service CA"],
            ["req", "-x509", *curve, "-CA", str(self.ca), "-CAkey", str(ca_key), "-keyout", str(key), "-out",
             str(cert), "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
             "-addext", "basicConstraints=critical,CA:FALSE"],
        ):
            done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr

        class Hello(http.server.BaseHTTPRequestHandler):
            # Keep-alive: curl closes first, having read the body (a server that closes first, its TLS
            # unfinished, may reset the connection under the last bytes).
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = b"private service over its own TLS\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_https_passthrough_name_held_on_another_node_is_forwarded_with_the_private_services_certificate(
    cluster: Any, tmp_path: Path
) -> None:
    name = f"secure.{DOMAIN}"
    private = _TlsSite(tmp_path / "private", name)
    try:
        ca = OpenSSLCA(tmp_path / "cluster-ca", "/CN=Test cluster CA")
        nodes = cluster(2, start=False)
        ports: Dict[str, int] = {}
        for node in nodes:
            cert, key = ca.client(f"node-{node.name}", usage="serverAuth,clientAuth")
            ports[node.name] = secure = free_port()
            peer = free_port()
            config = tmp_path / f"{node.name}.toml"
            config.write_text(
                f'vhostHTTPSPort = {secure}\nsubDomainHost = "{DOMAIN}"\n'
                f'[cluster]\nbindAddr = "127.0.0.1"\nbindPort = {peer}\nadvertiseAddr = "127.0.0.1"\n'
                f'tls.certFile = "{cert}"\ntls.keyFile = "{key}"\ntls.trustedCaFile = "{ca.ca_file}"\n')
            node.start("--config", str(config))
            node.wait_for(r"node-to-node listener on port %d" % peer)
        a, b = nodes["a"], nodes["b"]
        client_file = tmp_path / "client.toml"
        client_file.write_text(f'[[proxies]]\nname = "secure"\ntype = "https"\nlocalPort = {private.port}\n'
                               f'subdomain = "secure"\n')
        client = nodes.client(a, args=["--config", str(client_file)])
        client.wait_for(r"tunnel secure up at https://")

        def through(port: int) -> subprocess.CompletedProcess:
            # curl checks the certificate against the private service's own CA and the name (SNI).
            return subprocess.run(["curl", "-sS", "--cacert", str(private.ca), "--resolve", f"{name}:{port}:127.0.0.1",
                                   f"https://{name}:{port}/"], capture_output=True, timeout=30)

        assert through(ports["a"]).stdout == b"private service over its own TLS\n"
        wait_until(lambda: through(ports["b"]).returncode == 0, timeout=20, what="node b forwards secure to node a")
        for _ in range(3):  # (and again: each a connection of its own)
            answer = through(ports["b"])
            assert answer.stdout == b"private service over its own TLS\n", (answer, b.output()[-3000:],
                                                                             a.output()[-3000:])
        # And the certificate that came through b is the private service's, byte for byte.
        context = ssl.create_default_context(cafile=str(private.ca))
        with socket.create_connection(("127.0.0.1", ports["b"]), timeout=20) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True)
        own = ssl.PEM_cert_to_DER_cert((tmp_path / "private" / "site.pem").read_text())
        assert der == own
        for node in nodes:
            assert "Traceback" not in node.output()
    finally:
        private.close()
