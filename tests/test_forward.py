"""
gotaxy.server.forward in memory: which node serves a name (RemoteSites, as
the HTTP front's Router routes), and what the owner takes from a peer before
it hands anything to its front (the first line: its size, its time, its form).
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gotaxy.server.forward import LINE_TIMEOUT, MAX_LINE, PeerConnection, RemoteSites, split_key


def test_claim_keys_split_into_user_host_and_path() -> None:
    assert split_key("wiki.example.com") == ("", "wiki.example.com", "/")
    assert split_key("alice@wiki.example.com/news") == ("alice", "wiki.example.com", "/news")
    assert split_key("*.example.com") == ("", "*.example.com", "/")


def test_remote_names_route_as_the_front_routes() -> None:
    sites = RemoteSites()
    sites.load([("wiki.example.com", "a", "10.0.0.1:7100"), ("wiki.example.com/news", "b", "10.0.0.2:7100"),
                ("alice@wiki.example.com", "c", "10.0.0.3:7100"), ("*.example.com", "b", "10.0.0.2:7100")])
    assert sites.lookup("wiki.example.com", "/page").node == "a"
    assert sites.lookup("wiki.example.com", "/news/today").node == "b"  # the longest location
    assert sites.lookup("wiki.example.com", "/", "alice").node == "c"  # the user's route first
    assert sites.lookup("shop.example.com").node == "b"  # a wildcard
    assert sites.lookup("example.org") is None
    sites.load([])  # each refresh replaces what was known
    assert sites.lookup("wiki.example.com") is None


class _Listener:
    def __init__(self) -> None:
        self.reactor = Clock()
        self.refused = 0
        self.made: List[Any] = []

    def visitor_protocol(self, kind: str, scheme: str, peer: Any) -> Any:
        listener = self

        class Visitor:
            def makeConnection(self, transport: Any) -> None:
                self.transport = transport
                self.data = b""
                listener.made.append((kind, scheme, transport.getPeer(), self))

            def dataReceived(self, data: bytes) -> None:
                self.data += data

            def connectionLost(self, reason: Any = None) -> None:
                pass

        return Visitor()


def _connection() -> tuple:
    listener = _Listener()
    protocol = PeerConnection(listener)  # type: ignore[arg-type]
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.2", 5000))
    protocol.makeConnection(transport)
    return listener, protocol, transport


def test_the_first_line_names_the_visitor_and_the_rest_goes_to_the_front() -> None:
    listener, protocol, transport = _connection()
    protocol.dataReceived(b"GOTAXY-FORWARD 1 http https 192.0.2.7 4444\nGET / HT")
    protocol.dataReceived(b"TP/1.1\r\n")
    [(kind, scheme, peer, visitor)] = listener.made
    assert (kind, scheme, peer.host, peer.port) == ("http", "https", "192.0.2.7", 4444)
    assert visitor.data == b"GET / HTTP/1.1\r\n"
    assert not transport.disconnecting and listener.refused == 0


def test_a_first_line_too_long_malformed_or_too_slow_is_refused() -> None:
    for data in (b"GOTAXY-FORWARD 1 http http " + b"9" * MAX_LINE,
                 b"GET / HTTP/1.1\n",
                 b"GOTAXY-FORWARD 1 ftp http 192.0.2.7 1\n",
                 b"GOTAXY-FORWARD 1 http http not-an-address 1\n",
                 b"GOTAXY-FORWARD 1 http http 192.0.2.7 70000\n"):
        listener, protocol, transport = _connection()
        protocol.dataReceived(data)
        assert listener.made == [] and listener.refused == 1, data
        assert transport.disconnected or transport.disconnecting
        protocol.dataReceived(b"more is not read\n")
        assert listener.made == []
    listener, protocol, transport = _connection()
    protocol.dataReceived(b"GOTAXY-FORWARD 1 ht")
    listener.reactor.advance(LINE_TIMEOUT)
    assert listener.refused == 1 and listener.made == []


def test_the_documented_cluster_settings_parse_and_say_where_other_nodes_connect() -> None:
    from pathlib import Path

    import pytest

    from gotaxy.config import ConfigError, parse_server_config

    import tomllib

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    (example,) = [block.split("```")[0] for block in doc.split("```toml\n")[1:] if "[cluster]" in block]
    cluster = parse_server_config(tomllib.loads(example)).config.cluster
    assert (cluster.bind_port, cluster.advertised()) == (7100, "10.0.0.5:7100")
    assert parse_server_config({}).config.cluster.advertised() == ""  # off by default
    with pytest.raises(ConfigError, match="cluster.advertiseAddr"):
        parse_server_config({"cluster": {"bindPort": 7100}})


def test_with_the_servers_own_ca_the_node_port_takes_a_nodes_certificate_and_not_a_clients(tmp_path):
    # DATA_DIR/tls/ca.pem signs the client certificates of `gotaxy cert issue` too: one of
    # those must not open the node-to-node port (its first line names the visitor's address).
    from OpenSSL import crypto

    from gotaxy.server.forward import peer_is_a_node
    from gotaxy.tls.clients import issue_client_certificate
    from gotaxy.tls.cluster import issue_node_bundle

    tls = tmp_path / "tls"
    client = issue_client_certificate(str(tls), "laptop")  # makes the server's CA there, as a first start does
    bundle = issue_node_bundle(str(tls), "b", ["127.0.0.1"], str(tmp_path / "node-b"))
    node_pem = (tmp_path / "node-b" / "node.pem").read_bytes()
    as_x509 = lambda pem: crypto.load_certificate(crypto.FILETYPE_PEM, pem)  # noqa: E731
    assert bundle.name == "b"
    assert peer_is_a_node(None, as_x509(node_pem), 0, 0, 1)
    assert not peer_is_a_node(None, as_x509(client.certificate_pem), 0, 0, 1)
    assert not peer_is_a_node(None, as_x509(node_pem), 20, 0, 0)  # OpenSSL's own verdict stands
