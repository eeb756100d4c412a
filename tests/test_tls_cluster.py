"""
The cluster's TLS identity (gotaxy.tls.cluster): one CA signs every node's
certificates; a client that pins it (join token, --fingerprint,
known_servers) accepts every node and refuses other servers; nodes accept
only each other on node-to-node connections.
"""

from __future__ import annotations

import datetime
import stat
from pathlib import Path
from typing import Any, List, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from zope.interface import implementer

from gotaxy.tls import ServerCredentials, ServerIdentityError, ServerVerifier, load_or_create_server_credentials
from gotaxy.tls.clients import WRONG_USAGE, ClientCertificateRefused, ClientCertificateVerifier, issue_client_certificate
from gotaxy.tls.cluster import (
    NODE_URI_PREFIX,
    NodeIdentity,
    issue_node_bundle,
    load_node_identity,
    node_name_of,
    peer_node,
)
from gotaxy.tls.credentials import issue_certificate
from gotaxy.tls.fingerprint import fingerprint_of_certificate
from tests.test_tls import handshake


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def node(tmp_path: Path, first: Path, name: str, *addresses: str) -> ServerCredentials:
    """A new node's control-port credentials, as the new node loads them from the bundle copied to it."""
    out = tmp_path / f"{first.name}-{name}"
    issue_node_bundle(str(first), name, list(addresses), str(out))
    return load_or_create_server_credentials(str(out))


@pytest.fixture
def cluster(tmp_path: Path) -> "tuple[ServerCredentials, ServerCredentials, Path]":
    """Node A (a server that started once: its generated CA is the cluster's) and node B, added from A."""
    first = tmp_path / "a-tls"
    a = load_or_create_server_credentials(str(first))
    b = node(tmp_path, first, "b.example.com", "10.0.0.2")
    return a, b, first


# -- gotaxy cluster add-node's files ---------------------------------------------------


def test_the_new_node_gets_the_ca_certificate_its_own_certificates_and_no_ca_key(tmp_path: Path) -> None:
    first = tmp_path / "a-tls"
    a = load_or_create_server_credentials(str(first))
    out = tmp_path / "b"
    bundle = issue_node_bundle(str(first), "b.example.com", ["10.0.0.2", "tunnels.example.com"], str(out))
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "node.key", "node.pem", "server.key", "server.pem"]
    assert mode_of(out) == 0o700 and mode_of(out / "server.key") == 0o600 and mode_of(out / "node.key") == 0o600
    assert (out / "ca.pem").read_bytes() == (first / "ca.pem").read_bytes()
    assert bundle.ca_fingerprint == a.ca_fingerprint == a.join_pin

    server = x509.load_pem_x509_certificates((out / "server.pem").read_bytes())
    san = server[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["b.example.com", "tunnels.example.com"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.2"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []  # a client's view: no node name
    assert fingerprint_of_certificate(server[1]) == a.ca_fingerprint
    assert bundle.server_fingerprint == fingerprint_of_certificate(server[0])

    b = load_or_create_server_credentials(str(out))  # the new node's first start: it generates nothing
    assert not b.generated and b.join_pin == a.join_pin and b.fingerprint == bundle.server_fingerprint

    identity = load_node_identity(str(out))
    assert identity.name == "b.example.com" and identity.ca_fingerprint == a.ca_fingerprint
    usages = identity.certificates[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_add_node_refuses_to_overwrite_bad_names_and_the_ca_directory(tmp_path: Path) -> None:
    first = tmp_path / "a-tls"
    load_or_create_server_credentials(str(first))
    out = tmp_path / "b"
    issue_node_bundle(str(first), "b.example.com", [], str(out))
    before = (out / "server.pem").read_bytes()
    with pytest.raises(ValueError, match=r"ca\.pem exists; choose another directory with --out, or pass --force"):
        issue_node_bundle(str(first), "b.example.com", [], str(out))
    assert (out / "server.pem").read_bytes() == before
    issue_node_bundle(str(first), "b.example.com", [], str(out), force=True)
    assert (out / "server.pem").read_bytes() != before
    with pytest.raises(ValueError, match="neither a DNS name nor an IP address"):
        issue_node_bundle(str(first), "not a name", [], str(tmp_path / "c"))
    with pytest.raises(ValueError, match="not a wildcard"):
        issue_node_bundle(str(first), "*.example.com", [], str(tmp_path / "c"))
    with pytest.raises(ValueError, match="is the directory of the CA itself"):
        issue_node_bundle(str(first), "c.example.com", [], str(first))
    assert not (first / "node.pem").exists()  # A's own files are untouched


# -- the client's pins: every node of the cluster, no other server -----------------------


def test_a_join_token_of_node_a_is_accepted_by_node_b_and_refused_by_another_cluster(cluster: Any,
                                                                                  tmp_path: Path) -> None:
    a, b, _ = cluster
    verifier = ServerVerifier("127.0.0.1", 7000, join_pin=a.join_pin)
    assert verifier.verify(handshake(b, verifier).chain) == b.fingerprint
    assert verifier.verify(handshake(a, verifier).chain) == a.fingerprint

    other_first = tmp_path / "other-a"
    load_or_create_server_credentials(str(other_first))
    stranger = node(tmp_path, other_first, "b.example.com")  # same name, other cluster
    with pytest.raises(ServerIdentityError) as error:
        verifier.verify(handshake(stranger, verifier).chain)
    assert str(error.value).startswith(
        f"Server 127.0.0.1:7000 presented certificate {stranger.fingerprint} issued by {stranger.join_pin}, but "
        f"the join token pins {a.join_pin}; the token was made for another server or cluster")


def test_fingerprint_may_pin_the_cluster_ca_and_a_node_certificate_still_pins_one_node(cluster: Any) -> None:
    a, b, _ = cluster
    by_ca = ServerVerifier("b.example.com", 7000, fingerprint=a.ca_fingerprint)
    assert by_ca.verify(handshake(b, by_ca).chain) == b.fingerprint
    assert by_ca.verify(handshake(a, by_ca).chain) == a.fingerprint
    # A pin of A's own certificate (what a single server's users hold) keeps meaning A only.
    by_leaf = ServerVerifier("b.example.com", 7000, fingerprint=a.fingerprint)
    assert by_leaf.verify(handshake(a, by_leaf).chain) == a.fingerprint
    with pytest.raises(ServerIdentityError, match=rf"presented certificate {b.fingerprint} issued by "
                                                  rf"{a.ca_fingerprint}, not the pinned {a.fingerprint}"):
        by_leaf.verify(handshake(b, by_leaf).chain)


def test_a_pinned_ca_sent_beside_a_leaf_it_did_not_issue_is_refused(cluster: Any, tmp_path: Path) -> None:
    a, _, _ = cluster
    impostor = load_or_create_server_credentials(str(tmp_path / "impostor"))
    forged = ServerCredentials(
        certificate_pem=impostor.certificate_pem.split(b"-----END CERTIFICATE-----\n")[0]
        + b"-----END CERTIFICATE-----\n" + (tmp_path / "a-tls" / "ca.pem").read_bytes(),
        key_pem=impostor.key_pem, fingerprint=impostor.fingerprint, generated=False,
    )
    verifier = ServerVerifier("127.0.0.1", 7000, fingerprint=a.ca_fingerprint)
    with pytest.raises(ServerIdentityError, match="was not issued by it; someone may be intercepting"):
        verifier.verify(handshake(forged, verifier).chain)


def test_trust_on_first_use_records_the_cluster_ca_so_every_node_is_accepted_at_one_name(cluster: Any,
                                                                                      tmp_path: Path) -> None:
    # One DNS name, several addresses: the client meets B first, then A.
    a, b, _ = cluster
    known = tmp_path / "client" / "known_servers"
    first = ServerVerifier("tunnels.example.com", 7000, known_servers_path=str(known))
    with capturedLogs() as events:
        first.verify(handshake(b, first).chain)
    assert known.read_text() == f"tunnels.example.com:7000 {b.fingerprint} ca={a.ca_fingerprint}\n"
    assert "first use" in events[0]["log_format"] and a.ca_fingerprint in events[0]["issuer"]
    again = ServerVerifier("tunnels.example.com", 7000, known_servers_path=str(known))
    assert again.verify(handshake(a, again).chain) == a.fingerprint
    assert len(known.read_text().splitlines()) == 1

    stranger = load_or_create_server_credentials(str(tmp_path / "stranger"))
    with pytest.raises(ServerIdentityError) as error:
        again.verify(handshake(stranger, again).chain)
    assert (f"presented certificate {stranger.fingerprint} issued by {stranger.ca_fingerprint}, but {known} records "
            f"{b.fingerprint} (CA {a.ca_fingerprint})") in str(error.value)


def test_a_server_known_by_its_certificate_alone_moves_its_clients_to_the_cluster_ca(cluster: Any,
                                                                                   tmp_path: Path) -> None:
    # A client of the single server A from before: its line holds A's certificate only.
    a, b, _ = cluster
    known = tmp_path / "known_servers"
    known.write_text(f"tunnels.example.com:7000 {a.fingerprint}\n")
    verifier = ServerVerifier("tunnels.example.com", 7000, known_servers_path=str(known))
    with pytest.raises(ServerIdentityError, match="records SHA256:"):
        verifier.verify(handshake(b, verifier).chain)  # B is not trusted on A's certificate alone
    assert known.read_text() == f"tunnels.example.com:7000 {a.fingerprint}\n"

    with capturedLogs() as events:
        verifier.verify(handshake(a, verifier).chain)  # the next connection to A, which its line authenticates
    assert known.read_text().splitlines() == [
        f"tunnels.example.com:7000 {a.fingerprint}",
        f"tunnels.example.com:7000 {a.fingerprint} ca={a.ca_fingerprint}",
    ]
    assert [e["log_level"].name for e in events] == ["info"]
    assert verifier.verify(handshake(b, verifier).chain) == b.fingerprint
    assert len(known.read_text().splitlines()) == 2


def _own_ca(tmp_path: Path, common_name: str) -> "tuple[str, str]":
    """A server certificate from an operator's own CA (a root that issues leaves directly), as PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(ski, critical=False).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_certificate(key, ca, ca_key, "corp", [x509.DNSName("localhost")], [ExtendedKeyUsageOID.SERVER_AUTH])
    cert_file, key_file = tmp_path / "own.pem", tmp_path / "own.key"
    cert_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca)))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_trust_on_first_use_records_no_ca_of_the_operators_own(tmp_path: Path) -> None:
    cert_file, key_file = _own_ca(tmp_path, "Corp Root")
    own = load_or_create_server_credentials(str(tmp_path / "unused"), cert_file, key_file)
    known = tmp_path / "known_servers"
    verifier = ServerVerifier("localhost", 7000, known_servers_path=str(known))
    verifier.verify(handshake(own, verifier).chain)
    assert known.read_text() == f"localhost:7000 {own.fingerprint}\n"


# -- node-to-node mTLS -----------------------------------------------------------------


@implementer(IHandshakeListener)
class Recorder(Protocol):
    completed = False
    peer: Optional[str] = None

    def handshakeCompleted(self) -> None:
        self.completed = True
        self.peer = peer_node(self.transport)


def mtls(server: NodeIdentity, client_options: Any) -> "tuple[Recorder, Recorder]":
    """The connecting and the listening end's protocols after an in-memory handshake."""
    ends = {"client": Recorder(), "server": Recorder()}

    def side(name: str) -> Factory:
        factory = Factory()
        factory.buildProtocol = lambda addr: ends[name]  # type: ignore[method-assign]
        return factory

    server_factory = TLSMemoryBIOFactory(server.server_options(), False, side("server"))
    client_factory = TLSMemoryBIOFactory(client_options, True, side("client"))
    connectedServerAndClient(
        lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None)
    )[2].flush()
    return ends["client"], ends["server"]


def test_two_nodes_of_one_cluster_connect_and_know_each_other(cluster: Any, tmp_path: Path) -> None:
    _, _, first = cluster
    a = load_node_identity(str(first), name="a.example.com")  # A holds the CA key: it makes its own
    assert (first / "node.pem").exists() and mode_of(first / "node.key") == 0o600
    assert load_node_identity(str(first)).fingerprint == a.fingerprint  # made once, then loaded
    b = load_node_identity(str(tmp_path / "a-tls-b.example.com"))
    client, server = mtls(a, b.client_options(expected="a.example.com"))
    assert client.completed and server.completed
    assert (client.peer, server.peer) == ("a.example.com", "b.example.com")


def _refused(events: List[dict]) -> List[str]:
    return [e["why"] for e in events if "refused a node-to-node" in e.get("log_format", "")]


def test_a_node_refuses_a_node_of_another_cluster_both_ways(cluster: Any, tmp_path: Path) -> None:
    _, _, first = cluster
    a = load_node_identity(str(first), name="a.example.com")
    other = tmp_path / "other"
    load_or_create_server_credentials(str(other))
    stranger = load_node_identity(str(other), name="a.example.com")
    for server, client in ((a, stranger), (stranger, a)):
        with capturedLogs() as events:
            connecting, listening = mtls(server, client.client_options())
        assert not (connecting.completed and listening.completed)
        assert listening.peer is None
        assert any("not issued by this cluster's CA" in why for why in _refused(events))


def test_a_client_certificate_or_a_server_certificate_of_the_same_ca_is_no_node(cluster: Any, tmp_path: Path) -> None:
    _, b, first = cluster
    a = load_node_identity(str(first), name="a.example.com")
    issued = issue_client_certificate(str(first), "alice")
    certs = x509.load_pem_x509_certificates(issued.certificate_pem)
    ca = x509.load_pem_x509_certificate((first / "ca.pem").read_bytes())
    alice = NodeIdentity(name="alice", certificates=certs, key=serialization.load_pem_private_key(issued.key_pem, None),
                         ca=ca)
    b_certs = x509.load_pem_x509_certificates(b.certificate_pem)
    b_server = NodeIdentity(name="b", certificates=b_certs, key=serialization.load_pem_private_key(b.key_pem, None),
                            ca=ca)
    for impostor, why in ((alice, "a certificate of this cluster's CA but not a node's (no urn:gotaxy:node: name)"),
                          (b_server, "not for this end of the connection (CN=b.example.com: OpenSSL verify error 26)")):
        with capturedLogs() as events:
            connecting, listening = mtls(a, impostor.client_options())
        assert listening.peer is None and not listening.completed
        assert len(_refused(events)) == 1 and _refused(events)[0].endswith(why)


def test_a_node_answering_for_another_is_refused(cluster: Any, tmp_path: Path) -> None:
    _, _, first = cluster
    a = load_node_identity(str(first), name="a.example.com")
    b = load_node_identity(str(tmp_path / "a-tls-b.example.com"))
    with capturedLogs() as events:
        connecting, _ = mtls(b, a.client_options(expected="c.example.com"))
    assert not connecting.completed
    assert _refused(events) == ["node 'b.example.com' answered where node 'c.example.com' was expected"]


def test_a_node_without_the_ca_key_or_a_node_certificate_is_told_what_to_do(tmp_path: Path) -> None:
    first = tmp_path / "a-tls"
    load_or_create_server_credentials(str(first))
    bundle = tmp_path / "b"
    issue_node_bundle(str(first), "b.example.com", [], str(bundle))
    (bundle / "node.pem").unlink()
    with pytest.raises(ValueError, match=r"no node certificate .* run 'gotaxy cluster add-node NAME --out DIR'"):
        load_node_identity(str(bundle))
    assert not (bundle / "node.pem").exists()


def test_a_node_certificate_is_refused_as_a_client_certificate(cluster: Any, tmp_path: Path) -> None:
    _, _, first = cluster
    b = load_node_identity(str(tmp_path / "a-tls-b.example.com"))
    assert node_name_of(b.certificates[0]) == "b.example.com"
    assert NODE_URI_PREFIX + "b.example.com" in b.certificates[0].extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    verifier = ClientCertificateVerifier(str(first / "ca.pem"))
    with pytest.raises(ClientCertificateRefused) as refused:
        verifier.judge(list(b.certificates))
    assert refused.value.reason == WRONG_USAGE
    assert "a cluster node's certificate, not a client's" in str(refused.value)


def test_add_node_makes_no_ca_where_there_is_none(tmp_path: Path) -> None:
    # A wrong --data-dir must not give the new node a CA of its own, which no client pins.
    with pytest.raises(ValueError, match=r"ca\.pem does not exist: run this on the first node"):
        issue_node_bundle(str(tmp_path / "empty" / "tls"), "b.example.com", [], str(tmp_path / "b"))
    assert not (tmp_path / "empty").exists() and not (tmp_path / "b").exists()


def test_gotaxy_cluster_add_node_writes_the_files_and_says_what_to_pin(tmp_path: Path, capsys: Any) -> None:
    import io

    from gotaxy.cli import main

    data_dir = tmp_path / "a-data"
    first = load_or_create_server_credentials(str(data_dir / "tls"))
    out = io.StringIO()
    target = tmp_path / "c"
    assert main(["--data-dir", str(data_dir), "cluster", "add-node", "c.example.com", "--address", "10.0.0.3",
                 "--out", str(target)], out=out) == 0
    text = out.getvalue()
    assert f"signed by the cluster CA {first.ca_fingerprint}" in text
    assert f"--fingerprint {first.ca_fingerprint}" in text
    assert not (target / "ca.key").exists()
    assert load_node_identity(str(target)).name == "c.example.com"
    # Again into the same directory: refused, one line, nothing replaced.
    assert main(["--data-dir", str(data_dir), "cluster", "add-node", "c.example.com", "--out", str(target)],
                out=io.StringIO()) == 1
    assert "exists; choose another directory with --out, or pass --force" in capsys.readouterr().err


def test_a_node_without_the_ca_key_never_makes_a_ca_of_its_own(cluster: Any, tmp_path: Path) -> None:
    # 'gotaxy cert issue' on node B (or a lost server.pem there) must not replace the cluster's ca.pem.
    _, b, first = cluster
    bundle = tmp_path / "a-tls-b.example.com"
    ca = (bundle / "ca.pem").read_bytes()
    with pytest.raises(ValueError, match=r"ca\.pem is here without its key .*ca\.key: this server's certificates "
                                         r"come from a CA kept elsewhere"):
        issue_client_certificate(str(bundle), "alice")
    (bundle / "server.pem").unlink()
    with pytest.raises(ValueError, match="come from a CA kept elsewhere"):
        load_or_create_server_credentials(str(bundle))
    assert (bundle / "ca.pem").read_bytes() == ca and not (bundle / "ca.key").exists()


def test_the_first_node_names_its_node_certificate_after_its_node_id(tmp_path: Path) -> None:
    # gotaxy.server.forward passes the node id (DATA_DIR/node-id), which need not be a DNS name.
    first = tmp_path / "a-tls"
    load_or_create_server_credentials(str(first))
    identity = load_node_identity(str(first), "web_1.a1b2c3d4")
    assert identity.name == "web_1.a1b2c3d4"
    load_or_create_server_credentials(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="cannot name a node certificate"):
        load_node_identity(str(tmp_path / "other"), "no spaces")
