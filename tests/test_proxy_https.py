"""
The HTTPS front's first reads, in memory (``gotaxy.proxy.https``): a
ClientHello is routed by its name once whole; what is not TLS, what is too
big, what is too slow or has no name is closed at once and counted by
reason; names route exact first, then the closest wildcard.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gotaxy.config import HttpsSettings
from gotaxy.proxy.https import (
    REFUSED_NO_NAME,
    REFUSED_NOT_TLS,
    REFUSED_SLOW,
    REFUSED_UNKNOWN,
    HttpsProxy,
    HttpsSpec,
)
from gotaxy.proxy.httpsfront import HttpsFront
from gotaxy.proxy.sitenames import candidates
from gotaxy.proxy.base import SpecError
from gotaxy.proxy.sni import MAX_BUFFERED
from gotaxy.testing import server_config
from tests.test_proxy_sni import client_hello


class _Terminator:
    def __init__(self, names: Tuple[str, ...]) -> None:
        self.names = names
        self.taken: List[Tuple[str, bytes]] = []

    def can_serve(self, name: str) -> bool:
        return name in self.names

    def take_over(self, connection: Any, name: str, buffered: bytes) -> None:
        self.taken.append((name, buffered))


@pytest.fixture
def front() -> HttpsFront:
    return HttpsFront(server_config(https=HttpsSettings(port=8443, hello_timeout=10.0)), Clock())


def connect(front: HttpsFront) -> Tuple[Any, StringTransport]:
    protocol = front.factory().buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_hello_for_a_terminated_name_is_handed_over_whole(front):
    terminator = _Terminator(("wiki.gotaxy.test",))
    front.terminate_with(terminator)
    protocol, transport = connect(front)
    hello = client_hello(b"wiki.gotaxy.test")
    protocol.dataReceived(hello[:40])
    assert terminator.taken == []
    protocol.dataReceived(hello[40:])
    assert terminator.taken == [("wiki.gotaxy.test", hello)]
    assert not transport.disconnecting
    front.reactor.advance(60)  # the hello timer is gone
    assert not transport.disconnecting and sum(front.refusals.values()) == 0


@pytest.mark.parametrize("data, reason", [
    (b"GET / HTTP/1.1\r\nHost: wiki.gotaxy.test\r\n\r\n", REFUSED_NOT_TLS),
    (client_hello(None), REFUSED_NO_NAME),
    (client_hello(b"nobody.gotaxy.test"), REFUSED_UNKNOWN),
])
def test_what_cannot_be_routed_is_closed_and_counted(front, data, reason):
    protocol, transport = connect(front)
    protocol.dataReceived(data)
    assert transport.disconnecting and front.refusals == {reason: 1}


def test_a_visitor_too_slow_with_its_hello_is_closed_on_the_timeout(front):
    protocol, transport = connect(front)
    protocol.dataReceived(client_hello()[:20])
    front.reactor.advance(9.9)
    assert not transport.disconnecting
    front.reactor.advance(0.2)
    assert transport.disconnecting and front.refusals == {REFUSED_SLOW: 1}


def test_records_that_never_make_a_hello_are_bounded(front):
    protocol, transport = connect(front)
    # Records of one byte each: a hello's header that claims 16 KiB, fed slowly.
    protocol.dataReceived(b"\x16\x03\x01\x00\x01\x01")
    for _ in range(MAX_BUFFERED // 6 + 1):
        if transport.disconnecting:
            break
        protocol.dataReceived(b"\x16\x03\x01\x00\x01\x00")
    assert transport.disconnecting and front.refusals == {REFUSED_NOT_TLS: 1}


def test_connections_still_sending_their_hello_are_bounded(front, monkeypatch):
    from gotaxy.proxy import httpsfront

    monkeypatch.setattr(httpsfront, "MAX_PENDING_HELLOS", 2)
    first, second = connect(front), connect(front)
    third = connect(front)
    assert third[1].disconnecting and front.refusals == {"too_many_pending": 1}
    first[0].dataReceived(b"GET / HTTP/1.0\r\n\r\n")  # refused: no longer pending
    first[0].connectionLost(None)
    assert front.pending == 1
    fourth = connect(front)
    assert not fourth[1].disconnecting and front.pending == 2
    front.reactor.advance(60)
    assert front.pending == 0


def test_exact_names_win_then_the_closest_wildcard():
    assert candidates("a.b.example.com") == ["a.b.example.com", "*.b.example.com", "*.example.com"]
    front = HttpsFront(server_config(), Clock())
    exact, near, far = object(), object(), object()
    front.routes.update({"a.b.example.com": exact, "*.b.example.com": near, "*.example.com": far})
    assert front.lookup("a.b.example.com") is exact
    assert front.lookup("c.b.example.com") is near
    assert front.lookup("c.example.com") is far
    assert front.lookup("example.com") is None


def test_the_spec_takes_frps_keys_and_says_what_is_missing():
    spec = HttpsProxy().parse({"type": "https", "localPort": 8443, "customDomains": ["App.Example.com"]})
    assert spec == HttpsSpec(local_port=8443, custom_domains=("app.example.com",))
    assert HttpsProxy().parse(spec.to_keys()) == spec
    with pytest.raises(SpecError, match="needs 'customDomains'"):
        HttpsProxy().parse({"type": "https", "localPort": 8443})
    with pytest.raises(SpecError, match="has no setting 'locations'"):
        HttpsProxy().parse({"type": "https", "localPort": 8443, "subdomain": "app", "locations": ["/"]})
    with pytest.raises(SpecError, match="subDomainHost"):
        HttpsProxy().parse({"type": "https", "localPort": 1, "subdomain": "app"}).address(None)
    assert HttpsSpec(local_port=1, subdomain="app").address("gotaxy.test").hosts == ("app.gotaxy.test",)


# -- passthrough, end to end in memory ------------------------------------------------

from twisted.internet.protocol import ClientFactory, Factory  # noqa: E402
from twisted.internet.ssl import Certificate, optionsForClientTLS  # noqa: E402
from twisted.protocols.tls import TLSMemoryBIOFactory  # noqa: E402

from gotaxy.config import TunnelSpec, parse_local_rule_flag  # noqa: E402
from gotaxy.proxy import registry  # noqa: E402
from gotaxy.proxy.https import HTTPS  # noqa: E402
from gotaxy.proxy.proxyprotocol import V2_SIGNATURE  # noqa: E402
from gotaxy.testing import Collector, Echo, GotaxyClient, GotaxyServer, MemoryNetwork  # noqa: E402
from gotaxy.tls.sites import tls_options  # noqa: E402

FRONT = 8443
LOCAL = 9443


@pytest.fixture
def https_registered():
    known = registry.get("https")
    registry.register(HTTPS)
    yield
    if known is None:
        registry.unregister("https")


def _service_options(ca: Any, names: Tuple[str, ...]) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    chain_pem, key_pem = ca.issue(list(names))
    return tls_options(x509.load_pem_x509_certificates(chain_pem), serialization.load_pem_private_key(key_pem, None))


def _system(network: MemoryNetwork, local_factory: Any) -> Tuple[GotaxyServer, GotaxyClient]:
    server = GotaxyServer(network, server_config(https=HttpsSettings(port=FRONT)))
    network.listenTCP(LOCAL, local_factory, interface="127.0.0.1")
    network.listenTCP(7001, Factory.forProtocol(Echo), interface="127.0.0.1")
    client = GotaxyClient(network, server.create_token("alice"), server_port=server.port,
                          tunnels=[TunnelSpec(name="own", local_port=7001)],
                          allow_operator_tunnels=(parse_local_rule_flag(f"127.0.0.1:{LOCAL}"),)).start()
    return server, client


async def _define(server: GotaxyServer, network: MemoryNetwork, spec: HttpsSpec) -> None:
    from twisted.internet.defer import ensureDeferred

    done = ensureDeferred(server.core.add_tunnel("alice", "app", spec))
    network.flush()
    assert done.called
    await done


def test_an_https_tunnel_passes_tls_through_to_the_service_that_holds_the_certificate(https_registered):
    from tests.test_tls_sites import SitesCA

    ca = SitesCA()
    network = MemoryNetwork()
    service = TLSMemoryBIOFactory(_service_options(ca, ("app.gotaxy.test",)), False, Factory.forProtocol(Echo),
                                  clock=network)
    server, client = _system(network, service)
    from twisted.internet.defer import ensureDeferred

    ensureDeferred(_define(server, network, HttpsSpec(local_port=LOCAL, custom_domains=("app.gotaxy.test",))))
    network.flush()
    tunnel = server.core.tunnels[("alice", "app")]
    assert tunnel.address.description == "https://app.gotaxy.test:8443"  # the port, as it is not 443
    visitor = Collector()
    options = optionsForClientTLS("app.gotaxy.test", trustRoot=Certificate.loadPEM(ca.pem))
    network.connectTCP("127.0.0.1", FRONT, TLSMemoryBIOFactory(options, True, ClientFactory.forProtocol(lambda: visitor),
                                                               clock=network))
    network.flush()
    visitor.transport.write(b"through, still encrypted")
    network.flush()
    assert b"".join(visitor.received) == b"through, still encrypted"
    # The certificate the visitor checked is the local service's: the server decrypted nothing.
    peer = visitor.transport.getPeerCertificate().to_cryptography()
    assert peer.subject.rfc4514_string() == "CN=app.gotaxy.test"


def test_proxy_protocol_on_an_https_tunnel_comes_before_the_client_hello(https_registered):
    network = MemoryNetwork()
    received: List[Any] = []

    def collector() -> Collector:
        received.append(Collector())
        return received[-1]

    server, client = _system(network, Factory.forProtocol(collector))
    from twisted.internet.defer import ensureDeferred

    ensureDeferred(_define(server, network, HttpsSpec(local_port=LOCAL, custom_domains=("app.gotaxy.test",),
                                                      proxy_protocol_version="v2")))
    network.flush()
    hello = client_hello(b"app.gotaxy.test")
    visitor = Collector()
    network.connectTCP("127.0.0.1", FRONT, ClientFactory.forProtocol(lambda: visitor))
    network.flush()
    visitor.transport.write(hello)
    network.flush()
    data = b"".join(received[0].received)
    assert data.startswith(V2_SIGNATURE + b"\x21\x11")
    assert data[16 + 12:] == hello


def test_closed_connections_are_counted_in_metrics(https_registered):
    from prometheus_client import CollectorRegistry, generate_latest

    from gotaxy.server.metrics import EventCounts, GotaxyCollector

    network = MemoryNetwork()
    server, _ = _system(network, Factory.forProtocol(Echo))
    for data in (b"GET / HTTP/1.1\r\n\r\n", client_hello(b"nobody.gotaxy.test")):
        visitor = Collector()
        network.connectTCP("127.0.0.1", FRONT, ClientFactory.forProtocol(lambda: visitor))
        network.flush()
        visitor.transport.write(data)
        network.flush()
        assert visitor.lost is not None
    registry = CollectorRegistry()
    registry.register(GotaxyCollector(server.core, EventCounts()))
    text = generate_latest(registry).decode()
    assert 'gotaxy_https_refusals_total{reason="not_tls"} 1.0' in text
    assert 'gotaxy_https_refusals_total{reason="unknown_name"} 1.0' in text


# -- websites over HTTPS: TLS terminated, then the http front ---------------------------

from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import Site  # noqa: E402

from gotaxy.config import VhostSettings  # noqa: E402
from gotaxy.tls.sites import Termination  # noqa: E402

PLAIN = 8080


class _Proto(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"proto=" + (request.getHeader(b"x-forwarded-proto") or b"-") + b" path=" + request.uri


class _Certificates:
    def __init__(self, options: Any, names: Tuple[str, ...]) -> None:
        self.options, self.names = options, names

    def options_for(self, name: str) -> Any:
        return self.options if name in self.names else None


def _website(network: MemoryNetwork, redirect: bool) -> Tuple[GotaxyServer, Any]:
    from tests.test_tls_sites import SitesCA

    ca = SitesCA()
    server = GotaxyServer(network, server_config(vhost=VhostSettings(http_port=PLAIN), https=HttpsSettings(port=FRONT)))
    certificates = _Certificates(_service_options(ca, ("wiki.example.com",)), ("wiki.example.com",))
    server.core.fronts["https"].terminate_with(
        Termination(certificates, server.core.fronts["http"].protocol_factory("https"), network))
    network.listenTCP(9009, Site(_Proto(), reactor=network), interface="127.0.0.1")
    GotaxyClient(network, server.create_token("office"), server_port=server.port,
                 tunnels=[TunnelSpec(name="wiki", type="http", local_port=9009, custom_domains=("wiki.example.com",),
                                     redirect_to_https=redirect)]).start()
    return server, ca


def _get(network: MemoryNetwork, port: int, request: bytes, tls: Any = None) -> bytes:
    visitor = Collector()
    factory: Any = ClientFactory.forProtocol(lambda: visitor)
    if tls is not None:
        factory = TLSMemoryBIOFactory(tls, True, factory, clock=network)
    network.connectTCP("127.0.0.1", port, factory)
    network.flush()
    visitor.transport.write(request)
    network.flush()
    return b"".join(visitor.received)


def test_a_website_is_served_over_https_and_its_app_hears_so(https_registered):
    network = MemoryNetwork()
    server, ca = _website(network, redirect=False)
    tls = optionsForClientTLS("wiki.example.com", trustRoot=Certificate.loadPEM(ca.pem))
    answer = _get(network, FRONT, b"GET /page?x=1 HTTP/1.1\r\nHost: wiki.example.com\r\nConnection: close\r\n\r\n", tls)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"proto=https path=/page?x=1")
    plain = _get(network, PLAIN, b"GET /page HTTP/1.1\r\nHost: wiki.example.com\r\nConnection: close\r\n\r\n")
    assert plain.endswith(b"proto=http path=/page")  # no redirect unless the tunnel asks for it


def test_plain_http_is_redirected_to_https_when_the_tunnel_asks(https_registered):
    network = MemoryNetwork()
    server, ca = _website(network, redirect=True)
    plain = _get(network, PLAIN, b"GET /page?x=1 HTTP/1.1\r\nHost: wiki.example.com\r\nConnection: close\r\n\r\n")
    assert plain.startswith(b"HTTP/1.1 308 ")
    assert b"\r\nlocation: https://wiki.example.com:8443/page?x=1\r\n" in plain.lower()
    tls = optionsForClientTLS("wiki.example.com", trustRoot=Certificate.loadPEM(ca.pem))
    secure = _get(network, FRONT, b"GET /page HTTP/1.1\r\nHost: wiki.example.com\r\nConnection: close\r\n\r\n", tls)
    assert secure.endswith(b"proto=https path=/page")
    # No Strict-Transport-Security unless the site sets it (responseHeaders.set).
    assert b"strict-transport-security" not in secure.lower()
