"""
The HTTP front (``gotaxy.proxy.vhost``) and ``type = "http"`` tunnels, in
memory: a real server core and clients on a ``MemoryNetwork``, real local
web servers (``twisted.web``) behind them, and visitors that speak raw
HTTP/1.1 to the front, as curl or a browser would.  Each test checks what a
visitor or an operator sees: the status, the page, the headers that reached
the local service, a refusal's count.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import h11
import pytest
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from gotaxy.config import TunnelSpec, VhostSettings
from gotaxy.proxy import PublicAddress
from gotaxy.server.operators import LOCK_AFTER
from gotaxy.testing import Collector, GotaxyClient, GotaxyServer, LogCapture, MemoryNetwork, server_config

FRONT = 8000  #: vhostHTTPPort


class Named(Resource):
    """A local website that says who it is and what it got."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.pending: List[Any] = []

    def render(self, request: Any) -> bytes:
        if request.path.startswith(b"/hang"):
            self.pending.append(request)
            return NOT_DONE_YET  # type: ignore[no-any-return]
        body = request.content.read()
        request.setHeader(b"x-local", self.name.encode())
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({
            "site": self.name,
            "path": request.uri.decode(),
            "headers": {k.decode().lower(): v[-1].decode() for k, v in request.requestHeaders.getAllRawHeaders()},
            "all": {k.decode().lower(): [x.decode() for x in v] for k, v in request.requestHeaders.getAllRawHeaders()},
            "body": len(body),
        }).encode()


@pytest.fixture
def log() -> Iterator[LogCapture]:
    with LogCapture() as capture:
        yield capture


@pytest.fixture
def network() -> MemoryNetwork:
    return MemoryNetwork()


def site(network: MemoryNetwork, port: int, name: str) -> Named:
    resource = Named(name)
    network.listenTCP(port, Site(resource, reactor=network), interface="127.0.0.1")
    return resource


def make_server(network: MemoryNetwork, **vhost: Any) -> GotaxyServer:
    vhost.setdefault("http_port", FRONT)
    return GotaxyServer(network, server_config(vhost=VhostSettings(**vhost)))


def http(name: str, port: int, **keys: Any) -> TunnelSpec:
    return TunnelSpec(name=name, type="http", local_port=port, **keys)


#: ``wiki(**vhost)``: a server with those vhost settings, a local site "wiki" on port 9001, and a
#: client "office" with the http tunnel "wiki" for wiki.example.com to it; (server, site).
WikiSite = Callable[..., Tuple[GotaxyServer, "Named"]]


@pytest.fixture
def wiki(network: MemoryNetwork) -> WikiSite:
    def start(**vhost: Any) -> Tuple[GotaxyServer, Named]:
        server = make_server(network, **vhost)
        local = site(network, 9001, "wiki")
        GotaxyClient(network, server.create_token("office"), tunnels=[
            http("wiki", 9001, custom_domains=("wiki.example.com",))]).start()
        return server, local

    return start


class Visitor(Collector):
    """A visitor's connection to the front: send raw requests, read the responses with h11."""

    def responses(self) -> List[Tuple[int, Dict[str, str], bytes]]:
        parser = h11.Connection(h11.CLIENT)
        # h11 needs to have sent the requests to read their answers: fake them.
        out: List[Tuple[int, Dict[str, str], bytes]] = []
        data = b"".join(self.received)
        if data:
            parser.receive_data(data)  # (b"" would mean the end)
        if self.lost is not None:
            parser.receive_data(b"")
        while True:
            if parser.our_state is h11.IDLE:
                parser.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
                parser.send(h11.EndOfMessage())
            event = parser.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return out
            if isinstance(event, h11.Response):
                status, headers, body = event.status_code, {k.decode(): v.decode() for k, v in event.headers}, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                out.append((status, headers, body))
                if parser.our_state is h11.MUST_CLOSE or parser.their_state is h11.MUST_CLOSE:
                    return out
                parser.start_next_cycle()


def visit(network: MemoryNetwork, *requests: bytes) -> Visitor:
    visitor = Visitor()
    network.connectTCP("127.0.0.1", FRONT, ClientFactory.forProtocol(lambda: visitor))
    network.flush()
    assert visitor.transport is not None, "the front did not accept"
    for request in requests:
        visitor.transport.write(request)
        network.flush()
    return visitor


def get(host: str, path: str = "/", *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", f"Host: {host}", *headers, "", ""]
    return "\r\n".join(lines).encode()


def one(network: MemoryNetwork, request: bytes) -> Tuple[int, Dict[str, str], bytes]:
    (response,) = visit(network, request).responses()
    return response


def answer(response: Tuple[int, Dict[str, str], bytes]) -> Dict[str, Any]:
    status, _, body = response
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


# -- routing ---------------------------------------------------------------------


def test_two_sites_on_one_port_are_routed_by_host(network: MemoryNetwork) -> None:
    server = make_server(network)
    site(network, 9001, "wiki")
    site(network, 9002, "erp")
    GotaxyClient(network, server.create_token("office"), tunnels=[
        http("wiki", 9001, custom_domains=("wiki.example.com",)),
        http("erp", 9002, custom_domains=("erp.example.com",)),
    ]).start()
    assert answer(one(network, get("wiki.example.com")))["site"] == "wiki"
    assert answer(one(network, get("ERP.example.com:8000", "/x?y=1")))["path"] == "/x?y=1"
    status, headers, body = one(network, get("nobody.example.com"))
    assert status == 404 and b"nobody.example.com" in body
    assert server.core.fronts["http"].refusals["not_found"] == 1


def test_a_keep_alive_connection_that_names_another_host_goes_to_that_host(network: MemoryNetwork) -> None:
    server = make_server(network)
    site(network, 9001, "wiki")
    site(network, 9002, "erp")
    GotaxyClient(network, server.create_token("office"), tunnels=[
        http("wiki", 9001, custom_domains=("wiki.example.com",)),
        http("erp", 9002, custom_domains=("erp.example.com",)),
    ]).start()
    visitor = visit(network, get("wiki.example.com"), get("erp.example.com"), get("nobody.example.com"),
                    get("wiki.example.com"))
    sites = [(status, json.loads(body)["site"] if status == 200 else None) for status, _, body in visitor.responses()]
    assert sites == [(200, "wiki"), (200, "erp"), (404, None), (200, "wiki")]
    assert visitor.lost is None  # kept alive throughout


def test_pipelined_requests_are_answered_in_order(network: MemoryNetwork) -> None:
    server = make_server(network)
    site(network, 9001, "wiki")
    site(network, 9002, "erp")
    GotaxyClient(network, server.create_token("office"), tunnels=[
        http("wiki", 9001, custom_domains=("wiki.example.com",)),
        http("erp", 9002, custom_domains=("erp.example.com",)),
    ]).start()
    visitor = visit(network, get("wiki.example.com", "/1") + get("erp.example.com", "/2") + get("wiki.example.com", "/3"))
    assert [(json.loads(b)["site"], json.loads(b)["path"]) for _, _, b in visitor.responses()] == [
        ("wiki", "/1"), ("erp", "/2"), ("wiki", "/3"),
    ]


def test_http_1_0_is_answered_and_closed(network: MemoryNetwork, wiki: WikiSite) -> None:
    wiki()
    visitor = visit(network, get("wiki.example.com", version="1.0"))
    data = b"".join(visitor.received)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b'"site": "wiki"' in data
    assert visitor.lost is not None  # HTTP/1.0 without keep-alive: the end of the body is the close


def test_the_longest_location_wins(network: MemoryNetwork) -> None:
    server = make_server(network)
    site(network, 9001, "main")
    site(network, 9002, "news")
    site(network, 9003, "archive")
    GotaxyClient(network, server.create_token("office"), tunnels=[
        http("main", 9001, custom_domains=("web.example.com",)),
        http("news", 9002, custom_domains=("web.example.com",), locations=("/news",)),
        http("archive", 9003, custom_domains=("web.example.com",), locations=("/news/archive",)),
    ]).start()
    assert answer(one(network, get("web.example.com", "/about")))["site"] == "main"
    assert answer(one(network, get("web.example.com", "/news/today")))["site"] == "news"
    assert answer(one(network, get("web.example.com", "/news/archive/2020")))["site"] == "archive"


def test_an_exact_name_beats_a_wildcard_and_the_wildcard_catches_the_rest(network: MemoryNetwork) -> None:
    server = make_server(network)
    site(network, 9001, "any")
    site(network, 9002, "www")
    GotaxyClient(network, server.create_token("office"), tunnels=[
        http("any", 9001, custom_domains=("*.example.com",)),
        http("www", 9002, custom_domains=("www.example.com",)),
    ]).start()
    assert answer(one(network, get("www.example.com")))["site"] == "www"
    assert answer(one(network, get("shop.example.com")))["site"] == "any"
    assert one(network, get("example.com"))[0] == 404


def test_subdomain_is_under_the_servers_sub_domain_host(network: MemoryNetwork, log: LogCapture) -> None:
    server = make_server(network, sub_domain_host="tunnels.example.org")
    site(network, 9001, "wiki")
    client = GotaxyClient(network, server.create_token("office"), tunnels=[http("wiki", 9001, subdomain="wiki")]).start()
    assert answer(one(network, get("wiki.tunnels.example.org")))["site"] == "wiki"
    assert client.protocol.up["wiki"] == PublicAddress("http", FRONT, ("wiki.tunnels.example.org",))
    assert log.has("tunnel wiki up at http://wiki.tunnels.example.org:8000")


def test_subdomain_without_sub_domain_host_is_refused_with_the_fix(network: MemoryNetwork, log: LogCapture) -> None:
    server = make_server(network)
    GotaxyClient(network, server.create_token("office"), tunnels=[http("wiki", 9001, subdomain="wiki")]).start()
    assert log.has("this server has no subDomainHost, so 'subdomain' cannot be used")


def test_a_server_without_vhost_http_port_refuses_http_tunnels(network: MemoryNetwork, log: LogCapture) -> None:
    server = make_server(network, http_port=0)
    GotaxyClient(network, server.create_token("office"), tunnels=[http("wiki", 9001, custom_domains=("a.example.com",))]).start()
    assert log.has("ask the operator to set vhostHTTPPort")


# -- claims --------------------------------------------------------------------------


def test_a_second_claim_on_a_name_is_refused_naming_the_owner(network: MemoryNetwork, wiki: WikiSite, log: LogCapture) -> None:
    server, _ = wiki()
    GotaxyClient(network, server.create_token("intruder"), instance_id="other", tunnels=[
        http("mine", 9001, custom_domains=("wiki.example.com",)),
    ]).start()
    assert log.has("domain wiki.example.com is held by tunnel 'wiki' of client 'office'")
    assert answer(one(network, get("wiki.example.com")))["site"] == "wiki"


def test_a_name_stays_reserved_while_its_client_is_away(network: MemoryNetwork, log: LogCapture) -> None:
    server = make_server(network)
    site(network, 9001, "wiki")
    office = GotaxyClient(network, server.create_token("office"), tunnels=[
        http("wiki", 9001, custom_domains=("wiki.example.com",)),
    ]).start()
    office.stop()
    status, _, body = one(network, get("wiki.example.com"))
    assert status == 502 and b"offline" in body
    GotaxyClient(network, server.create_token("intruder"), instance_id="other", tunnels=[
        http("mine", 9001, custom_domains=("wiki.example.com",)),
    ]).start()
    assert log.has("domain wiki.example.com is held by tunnel 'wiki' of client 'office'")
    assert server.store.store.claim_holder("domain", "wiki.example.com").client == "office"


# -- what the local service gets, and what the visitor gets back -----------------------------


def test_forwarded_headers_are_appended_as_frp_does(network: MemoryNetwork, wiki: WikiSite) -> None:
    wiki()
    got = answer(one(network, get("wiki.example.com", "/", "X-Forwarded-For: 203.0.113.9")))["headers"]
    assert got["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert got["x-real-ip"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == "wiki.example.com"


def test_an_edge_server_replaces_what_the_visitor_claims(network: MemoryNetwork, wiki: WikiSite) -> None:
    wiki(forwarded_headers="replace")
    got = answer(one(network, get("wiki.example.com", "/", "X-Forwarded-For: 203.0.113.9", "X-Real-IP: 203.0.113.9",
                                  "X-Forwarded-Proto: https")))["all"]
    assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert got["x-real-ip"] == ["127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]


def test_header_rules_rewrite_the_host_and_set_headers_both_ways(network: MemoryNetwork) -> None:
    server = make_server(network)
    site(network, 9001, "wiki")
    GotaxyClient(network, server.create_token("office"), tunnels=[http(
        "wiki", 9001, custom_domains=("wiki.example.com",), host_header_rewrite="intranet.local",
        request_headers=(("X-From-Where", "gotaxy"),), response_headers=(("X-Served-By", "gotaxy"), ("X-Local", "hidden")),
    )]).start()
    status, headers, body = one(network, get("wiki.example.com", "/", "X-From-Where: visitor"))
    got = json.loads(body)["all"]
    assert got["host"] == ["intranet.local"] and got["x-forwarded-host"] == ["wiki.example.com"]
    assert got["x-from-where"] == ["gotaxy"]
    assert headers["x-served-by"] == "gotaxy" and headers["x-local"] == "hidden"


def test_basic_auth_is_asked_checked_and_failures_lock_the_address_out(network: MemoryNetwork) -> None:
    server = make_server(network)
    site(network, 9001, "wiki")
    GotaxyClient(network, server.create_token("office"), tunnels=[http(
        "wiki", 9001, custom_domains=("wiki.example.com",), http_user="alice", http_password="s3cret pass",
    )]).start()
    status, headers, _ = one(network, get("wiki.example.com"))
    assert status == 401 and headers["www-authenticate"] == 'Basic realm="Restricted"'
    good = "Authorization: Basic " + __import__("base64").b64encode(b"alice:s3cret pass").decode()
    bad = "Authorization: Basic " + __import__("base64").b64encode(b"alice:guess").decode()
    assert answer(one(network, get("wiki.example.com", "/", good)))["site"] == "wiki"
    for _ in range(LOCK_AFTER):
        assert one(network, get("wiki.example.com", "/", bad))[0] == 401
    assert one(network, get("wiki.example.com", "/", good))[0] == 429  # locked out, even with the right password
    front = server.core.fronts["http"]
    assert front.tunnel_refusals[("office", "wiki", "unauthorized")] == LOCK_AFTER + 1
    assert front.tunnel_refusals[("office", "wiki", "locked_out")] == 1


def test_route_by_http_user(network: MemoryNetwork) -> None:
    server = make_server(network)
    site(network, 9001, "everyone")
    site(network, 9002, "bob")
    GotaxyClient(network, server.create_token("office"), tunnels=[
        http("everyone", 9001, custom_domains=("web.example.com",)),
        http("bob", 9002, custom_domains=("web.example.com",), route_by_http_user="bob",
             http_user="bob", http_password="bobs password"),
    ]).start()
    auth = "Authorization: Basic " + __import__("base64").b64encode(b"bob:bobs password").decode()
    assert answer(one(network, get("web.example.com", "/", auth)))["site"] == "bob"
    assert answer(one(network, get("web.example.com")))["site"] == "everyone"


# -- errors a visitor sees -------------------------------------------------------------


def test_a_custom_404_page(network: MemoryNetwork, tmp_path: Any) -> None:
    page = tmp_path / "404.html"
    page.write_bytes(b"<h1>Nothing here, sorry</h1>")
    make_server(network, custom_404_page=str(page))
    status, _, body = one(network, get("nobody.example.com"))
    assert (status, body) == (404, b"<h1>Nothing here, sorry</h1>")


def test_a_local_service_that_refuses_gives_502(network: MemoryNetwork) -> None:
    server = make_server(network)
    GotaxyClient(network, server.create_token("office"), tunnels=[http("wiki", 9009, custom_domains=("wiki.example.com",))]).start()
    status, _, body = one(network, get("wiki.example.com"))
    assert status == 502 and b"not answering" in body
    assert server.core.fronts["http"].tunnel_refusals[("office", "wiki", "bad_gateway")] == 1


def test_no_response_headers_in_vhost_http_timeout_gives_504(network: MemoryNetwork, wiki: WikiSite) -> None:
    server, local = wiki(http_timeout=5.0)
    visitor = visit(network, get("wiki.example.com", "/hang"))
    assert local.pending and visitor.lost is None, (visitor.received, visitor.lost)
    assert visitor.responses() == []
    network.pass_time(5.0)
    (status, _, body), = visitor.responses()
    assert status == 504
    assert server.core.fronts["http"].tunnel_refusals[("office", "wiki", "timeout")] == 1


def test_slowloris_and_oversized_headers_are_refused_while_another_site_keeps_serving(network: MemoryNetwork, wiki: WikiSite) -> None:
    server, _ = wiki(header_timeout=10.0, max_header_bytes=4096, max_headers=20)
    slow = visit(network, b"GET / HTTP/1.1\r\nHost: wiki.example.com\r\nX-A: 1\r\n")
    big = visit(network, b"GET / HTTP/1.1\r\nHost: wiki.example.com\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    many = visit(network, get("wiki.example.com", "/", *[f"X-{i}: {i}" for i in range(30)]))
    assert big.responses()[0][0] == 431 and big.lost is not None
    assert many.responses()[0][0] == 431 and many.lost is not None
    network.pass_time(5.0)
    assert answer(one(network, get("wiki.example.com")))["site"] == "wiki"  # still serving
    slow.transport.write(b"X-B: 2\r\n")  # a trickle does not buy more time
    network.pass_time(5.0)
    assert slow.responses()[0][0] == 408 and slow.lost is not None
    front = server.core.fronts["http"]
    assert (front.refusals["headers_too_large"], front.refusals["header_timeout"]) == (2, 1)


def test_garbage_gets_400(network: MemoryNetwork) -> None:
    server = make_server(network)
    visitor = visit(network, b"\x16\x03\x01 not http\r\n\r\n")
    assert visitor.responses()[0][0] == 400 and visitor.lost is not None
    assert server.core.fronts["http"].refusals["bad_request"] == 1


def test_concurrent_requests_per_tunnel_are_capped_with_503(network: MemoryNetwork, wiki: WikiSite) -> None:
    local = wiki(max_requests_per_tunnel=2)[1]
    waiting = [visit(network, get("wiki.example.com", "/hang")) for _ in range(2)]
    status, headers, _ = one(network, get("wiki.example.com"))
    assert status == 503 and headers["retry-after"] == "1"
    for request in local.pending:
        request.write(b"done")
        request.finish()
    network.flush()
    assert [v.responses()[0][0] for v in waiting] == [200, 200]
    assert answer(one(network, get("wiki.example.com")))["site"] == "wiki"


# -- bodies and upgrades ------------------------------------------------------------------


def test_a_chunked_upload_arrives_whole(network: MemoryNetwork, wiki: WikiSite) -> None:
    wiki()
    chunks = b"".join(b"%x\r\n%s\r\n" % (1000, b"x" * 1000) for _ in range(300)) + b"0\r\n\r\n"
    visitor = visit(network, b"POST /up HTTP/1.1\r\nHost: wiki.example.com\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    assert answer(visitor.responses()[0])["body"] == 300_000


class UpgradeEcho(Protocol):
    """A local service that accepts any upgrade and then echoes raw bytes."""

    def __init__(self) -> None:
        self.buffer = b""
        self.upgraded = False

    def dataReceived(self, data: bytes) -> None:
        if self.upgraded:
            self.transport.write(data.upper())
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            assert b"upgrade: websocket" in head.lower()
            self.upgraded = True
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            if rest:
                self.transport.write(rest.upper())


def test_an_upgrade_becomes_a_splice(network: MemoryNetwork) -> None:
    server = make_server(network)
    network.listenTCP(9001, Factory.forProtocol(UpgradeEcho), interface="127.0.0.1")
    GotaxyClient(network, server.create_token("office"), tunnels=[http("ws", 9001, custom_domains=("ws.example.com",))]).start()
    visitor = visit(network, get("ws.example.com", "/chat", "Connection: Upgrade", "Upgrade: websocket") + b"hello")
    data = b"".join(visitor.received)
    assert data.startswith(b"HTTP/1.1 101 ") and data.endswith(b"\r\n\r\nHELLO")
    visitor.transport.write(b"more")
    network.flush()
    assert b"".join(visitor.received).endswith(b"HELLOMORE")


def test_refusals_are_counted_in_metrics_in_all_and_per_tunnel(network: MemoryNetwork) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from gotaxy.server.metrics import EventCounts, GotaxyCollector

    server = make_server(network)
    GotaxyClient(network, server.create_token("office"), tunnels=[http("wiki", 9009, custom_domains=("wiki.example.com",))]).start()
    one(network, get("nobody.example.com"))
    one(network, get("wiki.example.com"))  # its local service refuses: 502
    registry = CollectorRegistry()
    registry.register(GotaxyCollector(server.core, EventCounts()))
    text = generate_latest(registry).decode()
    assert 'gotaxy_http_refusals_total{reason="not_found"} 1.0' in text
    assert 'gotaxy_http_refusals_total{reason="bad_gateway"} 1.0' in text
    assert 'gotaxy_tunnel_http_refusals_total{client="office",reason="bad_gateway",tunnel="wiki"} 1.0' in text


# -- faces ------------------------------------------------------------------------------


def _refusal(network: MemoryNetwork, coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    from gotaxy.server.manage import ManagementError

    done = Deferred.fromCoroutine(coroutine)
    network.flush()
    failures: List[Any] = []
    done.addErrback(failures.append)
    assert failures, "the operator's request was not refused"
    assert failures[0].check(ManagementError), failures[0]
    return failures[0].value


def test_an_operators_http_tunnel_on_a_held_domain_is_an_error_on_that_field(network: MemoryNetwork, wiki: WikiSite) -> None:
    from gotaxy.server.manage import Management

    server, _ = wiki()
    management = Management(server.core)
    held = _refusal(network, management.define_tunnel(
        "office", "copy", {"type": "http", "localPort": 9001, "customDomains": ["wiki.example.com"]}))
    assert (held.kind, held.field) == ("conflict", "spec.customDomains")
    assert "domain wiki.example.com is held by tunnel 'wiki' of client 'office'" in str(held)
    no_sub = _refusal(network, management.define_tunnel("office", "sub", {"type": "http", "localPort": 9001, "subdomain": "x"}))
    assert (no_sub.kind, no_sub.field) == ("invalid", "spec.subdomain")


def test_acme_challenges_are_answered_for_any_name_before_routing(network: MemoryNetwork) -> None:
    from gotaxy.tls.acme import ChallengeStore

    server = make_server(network)
    challenges = ChallengeStore()
    challenges.add("tok3n_AZ-09", "tok3n_AZ-09.thumbprint")
    server.core.fronts["http"].challenges = challenges
    status, headers, body = one(network, get("wiki.example.com", "/.well-known/acme-challenge/tok3n_AZ-09"))
    assert (status, headers["content-type"], body) == (200, "text/plain", b"tok3n_AZ-09.thumbprint")
    assert one(network, get("wiki.example.com", "/.well-known/acme-challenge/other"))[0] == 404


def test_a_reload_moves_the_port_and_applies_the_limits(network: MemoryNetwork, wiki: WikiSite) -> None:
    from twisted.internet.defer import Deferred

    from gotaxy.config import replace

    server, _ = wiki()
    kept = visit(network)  # a visitor connected before the reload
    front = server.core.fronts["http"]
    new = replace(server.config, {"vhost": VhostSettings(http_port=8001, max_requests_per_tunnel=0)})
    done = Deferred.fromCoroutine(front.apply(new))
    network.flush()
    changes = {c.key: c.applied for c in done.result}
    assert changes == {"vhostHTTPMaxRequestsPerTunnel": True, "vhostHTTPPort": True}
    assert FRONT not in network.listeners and 8001 in network.listeners
    kept.transport.write(get("wiki.example.com"))
    network.flush()
    assert answer(kept.responses()[0])["site"] == "wiki"  # the open connection stays


# -- address rules and bans (gotaxy.server.access) -----------------------------------------


def test_a_tunnels_own_address_rules_refuse_with_403_while_its_neighbours_serve(network: MemoryNetwork) -> None:
    from gotaxy.config import parse_server_config

    access = parse_server_config({"access": {"perTunnel": {"office/private": {"deny": ["127.0.0.0/8"]}}}}).config.access
    server = GotaxyServer(network, server_config(vhost=VhostSettings(http_port=FRONT), access=access))
    site(network, 9001, "wiki")
    site(network, 9002, "private")
    GotaxyClient(network, server.create_token("office"), tunnels=[
        http("wiki", 9001, custom_domains=("wiki.example.com",)),
        http("private", 9002, custom_domains=("private.example.com",)),
    ]).start()
    assert one(network, get("private.example.com"))[0] == 403
    assert answer(one(network, get("wiki.example.com")))["site"] == "wiki"
    assert server.core.fronts["http"].tunnel_refusals[("office", "private", "denied")] == 1


def test_wrong_website_passwords_end_in_a_ban_on_the_front(network: MemoryNetwork) -> None:
    from gotaxy.config import AccessSettings

    access = AccessSettings(ban_exempt=(), ban_basic_auth_failures=3)
    server = GotaxyServer(network, server_config(vhost=VhostSettings(http_port=FRONT), access=access))
    site(network, 9001, "wiki")
    GotaxyClient(network, server.create_token("office"), tunnels=[http(
        "wiki", 9001, custom_domains=("wiki.example.com",), http_user="alice", http_password="s3cret pass",
    )]).start()
    bad = "Authorization: Basic " + __import__("base64").b64encode(b"alice:guess").decode()
    for _ in range(3):
        assert one(network, get("wiki.example.com", "/", bad))[0] == 401
    network.flush()
    refused = visit(network)  # banned: closed before a byte is read
    assert refused.lost is not None and refused.received == []


def test_a_request_that_names_two_hosts_is_refused(network: MemoryNetwork, wiki: WikiSite) -> None:
    # (h11 refuses it: the website could otherwise read another name than the one routed)
    wiki()
    visitor = visit(network, get("wiki.example.com", "/", "Host: admin.intranet"))
    assert visitor.responses()[0][0] == 400 and visitor.lost is not None


def test_a_chunked_body_reaches_the_website_without_a_content_length_to_misread(network: MemoryNetwork, wiki: WikiSite) -> None:
    wiki()
    visitor = visit(network, b"POST / HTTP/1.1\r\nHost: wiki.example.com\r\nContent-Length: 3\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    got = answer(visitor.responses()[0])
    assert got["body"] == 5 and "content-length" not in got["headers"]


def test_the_front_behind_tls_says_https_to_the_website(network: MemoryNetwork, wiki: WikiSite) -> None:
    # What the HTTPS front wraps in TLS: the same front, for scheme "https".
    server, _ = wiki()
    network.listenTCP(8443, server.core.fronts["http"].protocol_factory("https"), interface="127.0.0.1")
    visitor = Visitor()
    network.connectTCP("127.0.0.1", 8443, ClientFactory.forProtocol(lambda: visitor))
    network.flush()
    visitor.transport.write(get("wiki.example.com"))
    network.flush()
    assert answer(visitor.responses()[0])["headers"]["x-forwarded-proto"] == "https"


def test_a_tunnels_error_pages_are_shown_in_its_view_and_the_console(network: MemoryNetwork) -> None:
    from twisted.internet.defer import Deferred

    from gotaxy.console.text import tunnel_detail
    from gotaxy.server.manage import Management

    server = make_server(network)
    GotaxyClient(network, server.create_token("office"), tunnels=[http("wiki", 9009, custom_domains=("wiki.example.com",))]).start()
    one(network, get("wiki.example.com"))  # its local service is down: 502
    one(network, get("wiki.example.com"))
    done = Deferred.fromCoroutine(Management(server.core).tunnel("office", "wiki"))
    network.flush()
    view = done.result
    assert view.http_refused == {"bad_gateway": 2}
    assert "error pages" in tunnel_detail(view) and "2 bad_gateway" in tunnel_detail(view)


def test_after_a_restart_a_reserved_name_whose_client_is_away_is_502_not_404(network: MemoryNetwork) -> None:
    server = make_server(network)
    server.store.store.claim_address("office", "wiki", PublicAddress("http", 0, ("wiki.example.com",), ("/docs",)))
    front = server.core.fronts["http"]
    front.stop()
    front.start()  # as at a restart: the claims table is read
    network.flush()
    status, _, body = one(network, get("wiki.example.com", "/docs/x"))
    assert status == 502 and b"offline" in body
    assert one(network, get("other.example.com"))[0] == 404


# -- the fast way for plain responses (see gotaxy.proxy.vhost's docstring) -------


class Scripted(Protocol):
    """A local service that answers every request (a head without a body) with the next of ``answers``, byte by byte."""

    answers: List[bytes] = []
    #: the request heads it was sent, as they came
    heads: List[bytes] = []

    def connectionMade(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.heads.append(head)
            answer = self.answers.pop(0)
            close = answer.startswith(b"CLOSE:")
            answer = answer[len(b"CLOSE:"):] if close else answer
            for i in range(len(answer)):  # in the smallest pieces: the head and body are read across writes
                self.transport.write(answer[i:i + 1])
            if close:
                self.transport.loseConnection()


def scripted(network: MemoryNetwork, *answers: bytes) -> GotaxyServer:
    server = make_server(network)
    Scripted.answers = list(answers)
    Scripted.heads = []
    network.listenTCP(9001, Factory.forProtocol(Scripted), interface="127.0.0.1")
    GotaxyClient(network, server.create_token("office"), tunnels=[http("raw", 9001, custom_domains=("raw.example.com",))]).start()
    return server


def test_a_plain_response_drops_the_hops_headers_and_the_connection_stays_alive(network: MemoryNetwork) -> None:
    scripted(network,
             b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n"
             b"X-Hop: 1\r\nX-Kept:  yes \r\n\r\nhello",
             b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
             b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye")
    visitor = visit(network, get("raw.example.com", "/1"), get("raw.example.com", "/2"), get("raw.example.com", "/3"))
    (s1, h1, b1), (s2, _, b2), (s3, _, b3) = visitor.responses()
    assert (s1, b1, s2, b2, s3, b3) == (200, b"hello", 404, b"", 200, b"bye")
    assert h1 == {"Content-Length": "5", "X-Kept": "yes"} or {k.lower(): v for k, v in h1.items()} == {
        "content-length": "5", "x-kept": "yes"}
    assert visitor.lost is None


def test_bytes_after_the_content_length_are_not_taken_for_the_next_answer(network: MemoryNetwork) -> None:
    scripted(network,
             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale",
             b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
    visitor = visit(network, get("raw.example.com", "/1"), get("raw.example.com", "/2"))
    assert [(status, body) for status, _, body in visitor.responses()] == [(200, b"ok"), (200, b"fresh")]


def test_a_body_cut_short_is_not_passed_off_as_complete(network: MemoryNetwork) -> None:
    scripted(network, b"CLOSE:HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    visitor = visit(network, get("raw.example.com"))
    network.flush()
    assert b"".join(visitor.received).endswith(b"half") and visitor.lost is not None
    with pytest.raises(h11.RemoteProtocolError):  # as curl says: closed with outstanding read data
        visitor.responses()


def test_responses_the_fast_way_does_not_take_go_through_h11(network: MemoryNetwork) -> None:
    scripted(network,
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
             b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
             b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
             b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy")
    visitor = visit(network, get("raw.example.com", "/1"), get("raw.example.com", "/2"), get("raw.example.com", "/3"),
                    get("raw.example.com", "/4"))
    answers = [(status, body) for status, _, body in visitor.responses()]
    # chunked passes whole; 304 has no body whatever it says; HTTP/1.0 ends the website's connection;
    # two lengths are a response this server cannot read: 502
    assert answers[:3] == [(200, b"abc"), (304, b""), (200, b"hi")]
    assert answers[3][0] == 502


def test_a_response_that_is_not_http_gives_502(network: MemoryNetwork) -> None:
    scripted(network, b"SSH-2.0-OpenSSH_9.2\r\nContent-Length: 0\r\n\r\n")
    status, _, body = one(network, get("raw.example.com"))
    assert status == 502 and b"cannot read" in body


def test_request_rules_apply_on_the_fast_way_and_the_connection_is_kept(network: MemoryNetwork) -> None:
    server = make_server(network)
    site(network, 9001, "wiki")
    GotaxyClient(network, server.create_token("office"), tunnels=[http(
        "wiki", 9001, custom_domains=("wiki.example.com",), host_header_rewrite="intranet.local",
        request_headers=(("X-From-Where", "gotaxy"),),
    )]).start()
    visitor = visit(network, get("wiki.example.com", "/1", "X-From-Where: visitor", "Connection: keep-alive, X-Secret",
                                 "X-Secret: hop"),
                    get("wiki.example.com", "/2"))
    first, second = (json.loads(body) for _, _, body in visitor.responses())
    got = first["all"]
    assert got["host"] == ["intranet.local"] and got["x-forwarded-host"] == ["wiki.example.com"]
    assert got["x-from-where"] == ["gotaxy"] and "x-secret" not in got and "connection" not in got
    assert second["path"] == "/2" and visitor.lost is None


def test_the_fast_way_reads_a_head_as_h11_does(network: MemoryNetwork) -> None:
    # Names in any case, values with their optional whitespace, the hop's own headers: what the website
    # gets is what h11 would have read and written; a head h11 would refuse is refused.
    scripted(network, *[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"] * 2)
    visitor = visit(network, b"GET /a?b=c HTTP/1.1\r\nHOST:raw.example.com \r\nX-Spaced: \t a  b \t\r\n"
                             b"Connection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nX-Empty:\r\n\r\n",
                    get("raw.example.com", "/2"), b"GET /3 HTTP/1.1\r\nHost: raw.example.com\r\nno colon\r\n\r\n")
    (s1, _, b1), (s2, _, b2), (s3, _, _) = visitor.responses()
    assert (s1, b1, s2, b2, s3) == (200, b"ok", 200, b"ok", 400)
    first, second = Scripted.heads
    lines = first.split(b"\r\n")
    assert lines[0] == b"GET /a?b=c HTTP/1.1"
    assert lines[1:4] == [b"host: raw.example.com", b"x-spaced: a  b", b"x-empty: "]
    assert not [line for line in lines if line.lower().startswith((b"connection", b"keep-alive"))]
    assert b"x-forwarded-host: raw.example.com" in lines and second.startswith(b"GET /2 HTTP/1.1\r\n")


def test_a_request_that_asks_to_close_gets_its_answer_then_the_close(network: MemoryNetwork, wiki: WikiSite) -> None:
    wiki()
    visitor = visit(network, get("wiki.example.com", "/1", "Connection: close") + get("wiki.example.com", "/2"))
    (status, headers, body), = visitor.responses()
    assert status == 200 and json.loads(body)["path"] == "/1"
    assert {k.lower(): v for k, v in headers.items()}["connection"] == "close"
    assert visitor.lost is not None  # and the pipelined /2 was not answered


def test_a_website_that_closes_after_its_answer_leaves_the_visitor_connected(network: MemoryNetwork) -> None:
    scripted(network, b"CLOSE:HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
             b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain")
    visitor = visit(network, get("raw.example.com", "/1"))
    visitor.transport.write(get("raw.example.com", "/2"))
    network.flush()
    (s1, h1, b1), (s2, _, b2) = visitor.responses()
    assert (s1, b1, s2, b2) == (200, b"ok", 200, b"again")
    assert "connection" not in {k.lower() for k in h1} and visitor.lost is None


def test_every_request_of_a_keep_alive_connection_has_its_own_response_deadline(network: MemoryNetwork, wiki: WikiSite) -> None:
    wiki(http_timeout=5.0)
    visitor = visit(network, get("wiki.example.com", "/1"))
    network.pass_time(3.0)
    visitor.transport.write(get("wiki.example.com", "/hang"))
    network.flush()
    network.pass_time(4.9)  # past the first request's deadline, not the second's
    assert [status for status, _, _ in visitor.responses()] == [200]
    network.pass_time(0.2)
    assert [status for status, _, _ in visitor.responses()] == [200, 504]


def test_an_idle_keep_alive_connection_is_closed_after_its_wait(network: MemoryNetwork, wiki: WikiSite) -> None:
    wiki(http_timeout=5.0)
    visitor = visit(network, get("wiki.example.com", "/1"))
    network.pass_time(74.0)
    visitor.transport.write(get("wiki.example.com", "/2"))
    network.flush()
    network.pass_time(74.0)
    assert [status for status, _, _ in visitor.responses()] == [200, 200] and visitor.lost is None
    network.pass_time(1.5)
    assert visitor.lost is not None


def test_requests_the_short_reader_does_not_take_are_read_by_h11(network: MemoryNetwork, wiki: WikiSite) -> None:
    wiki()
    head = get("wiki.example.com", "/head", version="1.1").replace(b"GET", b"HEAD")
    visitor = visit(network, b"GET /split HTTP/1.1\r\nHost: wiki", b".example.com\r\n\r\n",
                    b"POST /post HTTP/1.1\r\nHost: wiki.example.com\r\nContent-Length: 3\r\n\r\nabc", head,
                    get("wiki.example.com", "/after"))
    network.flush()
    data = b"".join(visitor.received)
    assert data.count(b"HTTP/1.1 200 ") == 4 and visitor.lost is None
    assert b'"path": "/split"' in data and b'"body": 3' in data and b'"path": "/after"' in data
