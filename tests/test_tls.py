"""
Tests for L{gotaxy.tls} (credentials and verify): server credentials on disk and the client's checks
of the server identity, over real TLS handshakes on in-memory transports.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import stat
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from zope.interface import implementer

from gotaxy.tls import (
    ServerCredentials,
    ServerIdentityError,
    ServerVerifier,
    fingerprint_of_certificate,
    load_or_create_server_credentials,
    normalise_fingerprint,
    peer_chain,
)

FQDN = "gotaxy-test.example"


@pytest.fixture(autouse=True)
def fixed_fqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda: FQDN)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leaf_of(credentials: ServerCredentials) -> x509.Certificate:
    return x509.load_pem_x509_certificate(credentials.certificate_pem)


# ---------------------------------------------------------------------------
# In-memory TLS


@implementer(IHandshakeListener)
class HandshakeRecorder(Protocol):
    """
    Remember, at the end of the handshake, what each side can observe.
    """

    chain: list[x509.Certificate] | None = None
    server_name: bytes | None = None
    version: str | None = None

    def handshakeCompleted(self) -> None:
        handle: SSL.Connection = self.transport.getHandle()  # type: ignore[union-attr]
        self.chain = peer_chain(self.transport)
        self.server_name = handle.get_servername()
        self.version = handle.get_protocol_version_name()


@attrs.frozen
class Handshake:
    client: HandshakeRecorder
    server: HandshakeRecorder

    @property
    def chain(self) -> list[x509.Certificate]:
        assert self.client.chain is not None, "handshake did not complete"
        return self.client.chain


def handshake(credentials: ServerCredentials, verifier: ServerVerifier) -> Handshake:
    server_factory = TLSMemoryBIOFactory(
        credentials.server_context(), False, Factory.forProtocol(HandshakeRecorder)
    )
    client_factory = TLSMemoryBIOFactory(
        verifier.connection_creator(), True, Factory.forProtocol(HandshakeRecorder)
    )
    client, server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
    )
    pump.flush()
    return Handshake(client.wrappedProtocol, server.wrappedProtocol)


@pytest.fixture
def credentials(tmp_path: Path) -> ServerCredentials:
    return load_or_create_server_credentials(str(tmp_path / "server-tls"))


# ---------------------------------------------------------------------------
# Server credentials


def test_first_call_generates_private_files(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    first = load_or_create_server_credentials(str(tls_dir))

    assert first.generated is True
    assert mode_of(tls_dir) == 0o700
    assert sorted(os.listdir(tls_dir)) == ["ca.key", "ca.pem", "server.key", "server.pem"]
    assert mode_of(tls_dir / "ca.key") == 0o600
    assert mode_of(tls_dir / "server.key") == 0o600
    assert first.fingerprint == fingerprint_of_certificate(leaf_of(first))
    assert (tls_dir / "server.key").read_bytes() == first.key_pem

    second = load_or_create_server_credentials(str(tls_dir))
    assert second.generated is False
    assert second.fingerprint == first.fingerprint
    assert second.certificate_pem == first.certificate_pem


def test_generated_certificate_contents(tmp_path: Path) -> None:
    credentials = load_or_create_server_credentials(
        str(tmp_path), extra_names=["tunnel.example.org", "203.0.113.7", "[2001:db8::1]"]
    )
    leaf, ca = x509.load_pem_x509_certificates(credentials.certificate_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "localhost",
        FQDN,
        "tunnel.example.org",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ["127.0.0.1", "::1", "203.0.113.7", "2001:db8::1"]
    ]
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert leaf.signature_hash_algorithm is not None
    assert leaf.signature_hash_algorithm.name == "sha256"
    assert leaf.issuer == ca.subject
    years = lambda c: (c.not_valid_after_utc - c.not_valid_before_utc).days // 365
    assert years(leaf) == 10
    assert years(ca) == 20
    assert ca.public_bytes(serialization.Encoding.PEM) == (tmp_path / "ca.pem").read_bytes()


def test_invalid_fqdn_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda: "my_laptop")
    leaf = leaf_of(load_or_create_server_credentials(str(tmp_path)))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_invalid_extra_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not_a name"):
        load_or_create_server_credentials(str(tmp_path), extra_names=["not_a name"])


def test_missing_server_certificate_reuses_the_ca(tmp_path: Path) -> None:
    first = load_or_create_server_credentials(str(tmp_path))
    ca_before = (tmp_path / "ca.pem").read_bytes()
    (tmp_path / "server.pem").unlink()

    second = load_or_create_server_credentials(str(tmp_path))
    assert second.generated is True
    assert second.fingerprint != first.fingerprint
    assert (tmp_path / "ca.pem").read_bytes() == ca_before


def test_bring_your_own_pair_is_used_as_is(tmp_path: Path) -> None:
    own = load_or_create_server_credentials(str(tmp_path / "elsewhere"))
    cert_file = tmp_path / "cert.pem"
    key_file = tmp_path / "key.pem"
    cert_file.write_bytes(own.certificate_pem)  # leaf + chain
    key_file.write_bytes(own.key_pem)
    unused_dir = tmp_path / "unused"

    loaded = load_or_create_server_credentials(
        str(unused_dir), cert_file=str(cert_file), key_file=str(key_file)
    )
    assert loaded.generated is False
    assert loaded.fingerprint == own.fingerprint
    assert len(x509.load_pem_x509_certificates(loaded.certificate_pem)) == 2
    assert not unused_dir.exists()


def test_bring_your_own_errors(tmp_path: Path) -> None:
    one = load_or_create_server_credentials(str(tmp_path / "one"))
    two = load_or_create_server_credentials(str(tmp_path / "two"))
    cert_file = tmp_path / "one" / "server.pem"
    other_key = tmp_path / "two" / "server.key"
    assert one.fingerprint != two.fingerprint

    with pytest.raises(ValueError, match="does not belong"):
        load_or_create_server_credentials(
            str(tmp_path), cert_file=str(cert_file), key_file=str(other_key)
        )
    with pytest.raises(ValueError, match="Cannot read the TLS certificate file"):
        load_or_create_server_credentials(
            str(tmp_path), cert_file=str(tmp_path / "nope.pem"), key_file=str(other_key)
        )
    with pytest.raises(ValueError, match="together"):
        load_or_create_server_credentials(str(tmp_path), cert_file=str(cert_file))
    with pytest.raises(ValueError, match="does not contain a PEM certificate"):
        load_or_create_server_credentials(
            str(tmp_path), cert_file=str(other_key), key_file=str(other_key)
        )

    key = serialization.load_pem_private_key(one.key_pem, password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ValueError, match="encrypted"):
        load_or_create_server_credentials(
            str(tmp_path), cert_file=str(cert_file), key_file=str(encrypted)
        )


def test_existing_certificate_is_not_changed_for_new_names(tmp_path: Path) -> None:
    first = load_or_create_server_credentials(str(tmp_path))
    with capturedLogs() as events:
        again = load_or_create_server_credentials(
            str(tmp_path), extra_names=["localhost", "new.example.org"]
        )
    assert again.fingerprint == first.fingerprint
    assert len(events) == 1
    assert events[0]["missing"] == "new.example.org"


# ---------------------------------------------------------------------------
# Fingerprints


def test_fingerprint_of_every_certificate_type(credentials: ServerCredentials) -> None:
    leaf = leaf_of(credentials)
    der = leaf.public_bytes(serialization.Encoding.DER)
    expected = credentials.fingerprint
    assert expected.startswith("SHA256:")
    assert len(expected) == len("SHA256:") + 64
    assert expected[7:] == expected[7:].upper()
    assert fingerprint_of_certificate(der) == expected
    assert fingerprint_of_certificate(crypto.X509.from_cryptography(leaf)) == expected


def test_fingerprint_of_known_bytes() -> None:
    # sha256(b"test"), the docstring example.
    assert fingerprint_of_certificate(b"test") == (
        "SHA256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
    )


HEX = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
CANONICAL = "SHA256:" + HEX.upper()


@pytest.mark.parametrize(
    "text",
    [
        CANONICAL,
        "sha256:" + HEX,
        HEX,
        HEX.upper(),
        ":".join(HEX[i : i + 2] for i in range(0, 64, 2)),
        "SHA256:" + ":".join(HEX[i : i + 2] for i in range(0, 64, 2)).upper(),
        f"  {CANONICAL}\n",
    ],
)
def test_normalise_fingerprint_forms(text: str) -> None:
    assert normalise_fingerprint(text) == CANONICAL


@pytest.mark.parametrize(
    "text",
    ["", "SHA256:", HEX[:-1], HEX + "0", "SHA1:" + HEX, HEX[:-1] + "g", "MD5:" + HEX[:32]],
)
def test_normalise_fingerprint_errors(text: str) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        normalise_fingerprint(text)


# ---------------------------------------------------------------------------
# The handshake itself


def test_handshake_sends_sni_for_dns_names(credentials: ServerCredentials) -> None:
    result = handshake(credentials, ServerVerifier("localhost", 7000, insecure=True))
    assert result.server.server_name == b"localhost"
    assert result.client.version in ("TLSv1.2", "TLSv1.3")
    assert [fingerprint_of_certificate(c) for c in result.chain][0] == credentials.fingerprint
    assert len(result.chain) == 2  # leaf and CA, as presented


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "[::1]"])
def test_handshake_sends_no_sni_for_addresses(
    credentials: ServerCredentials, address: str
) -> None:
    result = handshake(credentials, ServerVerifier(address, 7000, insecure=True))
    assert result.server.server_name is None
    assert result.client.chain


# ---------------------------------------------------------------------------
# Pinned fingerprint


def test_pinned_fingerprint(credentials: ServerCredentials) -> None:
    pin = credentials.fingerprint.lower().replace("sha256:", "")
    verifier = ServerVerifier("localhost", 7000, fingerprint=pin)
    chain = handshake(credentials, verifier).chain
    assert verifier.verify(chain) == credentials.fingerprint


def test_wrong_pinned_fingerprint(credentials: ServerCredentials) -> None:
    verifier = ServerVerifier("localhost", 7000, fingerprint=CANONICAL)
    chain = handshake(credentials, verifier).chain
    with pytest.raises(ServerIdentityError) as error:
        verifier.verify(chain)
    message = str(error.value)
    assert "localhost:7000" in message
    assert CANONICAL in message
    assert credentials.fingerprint in message
    assert "--fingerprint" in message


def test_verify_accepts_pyopenssl_certificates(credentials: ServerCredentials) -> None:
    verifier = ServerVerifier("localhost", 7000, fingerprint=credentials.fingerprint)
    chain = handshake(credentials, verifier).chain
    assert verifier.verify([crypto.X509.from_cryptography(c) for c in chain]) == (
        credentials.fingerprint
    )


def test_empty_chain_is_refused() -> None:
    verifier = ServerVerifier("localhost", 7000, insecure=True)
    with pytest.raises(ServerIdentityError, match="no TLS certificate"):
        verifier.verify([])


# ---------------------------------------------------------------------------
# CA file


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1", FQDN.upper()])
def test_ca_file_accepts_valid_names(tmp_path: Path, name: str) -> None:
    credentials = load_or_create_server_credentials(str(tmp_path))
    verifier = ServerVerifier(name, 7000, ca_file=str(tmp_path / "ca.pem"))
    chain = handshake(credentials, verifier).chain
    assert verifier.verify(chain) == credentials.fingerprint


def test_ca_file_with_leaf_only_chain(tmp_path: Path) -> None:
    """
    A server that sends only its leaf is still verified against the CA file.
    """
    generated = load_or_create_server_credentials(str(tmp_path))
    leaf_only = attrs.evolve(
        generated, certificate_pem=leaf_of(generated).public_bytes(serialization.Encoding.PEM)
    )
    verifier = ServerVerifier("localhost", 7000, ca_file=str(tmp_path / "ca.pem"))
    chain = handshake(leaf_only, verifier).chain
    assert len(chain) == 1
    assert verifier.verify(chain) == generated.fingerprint


def test_ca_file_refuses_other_ca(tmp_path: Path) -> None:
    credentials = load_or_create_server_credentials(str(tmp_path / "server"))
    load_or_create_server_credentials(str(tmp_path / "other"))
    other_ca = str(tmp_path / "other" / "ca.pem")
    verifier = ServerVerifier("localhost", 7000, ca_file=other_ca)
    chain = handshake(credentials, verifier).chain
    with pytest.raises(ServerIdentityError) as error:
        verifier.verify(chain)
    assert "localhost:7000" in str(error.value)
    assert other_ca in str(error.value)


@pytest.mark.parametrize("name", ["example.com", "192.0.2.1"])
def test_ca_file_refuses_wrong_name(tmp_path: Path, name: str) -> None:
    credentials = load_or_create_server_credentials(str(tmp_path))
    verifier = ServerVerifier(name, 7000, ca_file=str(tmp_path / "ca.pem"))
    chain = handshake(credentials, verifier).chain
    with pytest.raises(ServerIdentityError, match=f"not valid for {name}"):
        verifier.verify(chain)


def test_ca_file_refuses_expired_certificate(tmp_path: Path) -> None:
    credentials = load_or_create_server_credentials(str(tmp_path))
    clock = Clock()
    clock.advance(
        (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=11 * 365))
        .timestamp()
    )
    verifier = ServerVerifier("localhost", 7000, ca_file=str(tmp_path / "ca.pem"), clock=clock)
    chain = handshake(credentials, verifier).chain
    with pytest.raises(ServerIdentityError, match="localhost:7000"):
        verifier.verify(chain)


def test_pin_and_ca_file_must_both_pass(tmp_path: Path) -> None:
    credentials = load_or_create_server_credentials(str(tmp_path))
    ca_file = str(tmp_path / "ca.pem")
    good = ServerVerifier("localhost", 7000, fingerprint=credentials.fingerprint, ca_file=ca_file)
    chain = handshake(credentials, good).chain
    assert good.verify(chain) == credentials.fingerprint
    bad = ServerVerifier("localhost", 7000, fingerprint=CANONICAL, ca_file=ca_file)
    with pytest.raises(ServerIdentityError, match="pinned"):
        bad.verify(chain)


def test_unusable_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Cannot read the CA file"):
        ServerVerifier("localhost", 7000, ca_file=str(tmp_path / "missing.pem"))
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        ServerVerifier("localhost", 7000, ca_file=str(empty))


# ---------------------------------------------------------------------------
# Trust on first use


def test_trust_on_first_use(tmp_path: Path) -> None:
    credentials = load_or_create_server_credentials(str(tmp_path / "server"))
    known = tmp_path / "client" / "known_servers"
    verifier = ServerVerifier("LocalHost", 7000, known_servers_path=str(known))

    with capturedLogs() as events:
        assert verifier.verify(handshake(credentials, verifier).chain) == (
            credentials.fingerprint
        )
    # The certificate, and the CA Gotaxy generated that issued it.
    assert known.read_text() == f"localhost:7000 {credentials.fingerprint} ca={credentials.ca_fingerprint}\n"
    assert mode_of(known.parent) == 0o700
    assert [e["log_level"].name for e in events] == ["warn"]
    assert events[0]["fingerprint"] == credentials.fingerprint
    assert "first use" in events[0]["log_format"]

    # Known now: accepted again, quietly, by a fresh verifier.
    again = ServerVerifier("localhost", 7000, known_servers_path=str(known))
    with capturedLogs() as events:
        assert again.verify(handshake(credentials, again).chain) == credentials.fingerprint
    assert events == []
    assert len(known.read_text().splitlines()) == 1


def test_trust_on_first_use_refuses_changed_certificate(tmp_path: Path) -> None:
    original = load_or_create_server_credentials(str(tmp_path / "server"))
    known = tmp_path / "client" / "known_servers"
    verifier = ServerVerifier("127.0.0.1", 7000, known_servers_path=str(known))
    verifier.verify(handshake(original, verifier).chain)

    impostor = load_or_create_server_credentials(str(tmp_path / "reinstalled"))
    with pytest.raises(ServerIdentityError) as error:
        verifier.verify(handshake(impostor, verifier).chain)
    message = str(error.value)
    assert original.fingerprint in message
    assert impostor.fingerprint in message
    assert "127.0.0.1:7000" in message
    assert str(known) in message
    assert "--fingerprint" in message
    assert known.read_text() == f"127.0.0.1:7000 {original.fingerprint} ca={original.ca_fingerprint}\n"


def test_trust_on_first_use_keys_on_host_and_port(tmp_path: Path) -> None:
    one = load_or_create_server_credentials(str(tmp_path / "one"))
    two = load_or_create_server_credentials(str(tmp_path / "two"))
    known = tmp_path / "known_servers"
    known.write_text("# comment\nexample.com:7000 " + CANONICAL)  # no final newline

    for host, port, credentials in [("::1", 7000, one), ("::1", 7001, two)]:
        verifier = ServerVerifier(host, port, known_servers_path=str(known))
        verifier.verify(handshake(credentials, verifier).chain)
    assert known.read_text().splitlines() == [
        "# comment",
        "example.com:7000 " + CANONICAL,
        f"[::1]:7000 {one.fingerprint} ca={one.ca_fingerprint}",
        f"[::1]:7001 {two.fingerprint} ca={two.ca_fingerprint}",
    ]


# ---------------------------------------------------------------------------
# Insecure, and contradictory options


def test_insecure_accepts_anything(tmp_path: Path) -> None:
    credentials = load_or_create_server_credentials(str(tmp_path))
    verifier = ServerVerifier("example.com", 7000, insecure=True)
    assert verifier.verify(handshake(credentials, verifier).chain) == (
        credentials.fingerprint
    )


def test_contradictory_or_missing_options() -> None:
    with pytest.raises(ValueError, match="--insecure"):
        ServerVerifier("localhost", 7000, insecure=True, fingerprint=CANONICAL)
    with pytest.raises(ValueError, match="known_servers"):
        ServerVerifier("localhost", 7000)
    with pytest.raises(ValueError, match="64 hex digits"):
        ServerVerifier("localhost", 7000, fingerprint="SHA256:nope")


# ---------------------------------------------------------------------------
# Join tokens' pins


def test_join_pin_is_the_generated_ca_and_survives_a_new_server_certificate(tmp_path: Path) -> None:
    first = load_or_create_server_credentials(str(tmp_path))
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    assert first.join_pin == fingerprint_of_certificate(ca) != first.fingerprint
    assert load_or_create_server_credentials(str(tmp_path)).join_pin == first.join_pin  # reloaded

    # A renewed server certificate from the same CA: old join tokens still pass.
    (tmp_path / "server.pem").unlink()
    renewed = load_or_create_server_credentials(str(tmp_path))
    assert renewed.fingerprint != first.fingerprint
    assert renewed.join_pin == first.join_pin
    verifier = ServerVerifier("203.0.113.9", 7000, join_pin=first.join_pin)  # a name not in the certificate
    assert verifier.verify(handshake(renewed, verifier).chain) == renewed.fingerprint


def test_join_pin_of_an_own_certificate_is_that_certificate(tmp_path: Path) -> None:
    own = load_or_create_server_credentials(str(tmp_path / "elsewhere"))
    (tmp_path / "cert.pem").write_bytes(own.certificate_pem)
    (tmp_path / "key.pem").write_bytes(own.key_pem)
    loaded = load_or_create_server_credentials(
        str(tmp_path / "unused"), cert_file=str(tmp_path / "cert.pem"), key_file=str(tmp_path / "key.pem")
    )
    assert loaded.join_pin == loaded.fingerprint
    verifier = ServerVerifier("localhost", 7000, join_pin=loaded.fingerprint)
    assert verifier.verify(handshake(loaded, verifier).chain) == loaded.fingerprint


def test_join_pin_of_another_server_is_refused_naming_both(tmp_path: Path) -> None:
    ours = load_or_create_server_credentials(str(tmp_path / "ours"))
    theirs = load_or_create_server_credentials(str(tmp_path / "theirs"))
    verifier = ServerVerifier("localhost", 7000, join_pin=ours.join_pin)
    with pytest.raises(ServerIdentityError) as error:
        verifier.verify(handshake(theirs, verifier).chain)
    assert str(error.value) == (
        f"Server localhost:7000 presented certificate {theirs.fingerprint} issued by {theirs.join_pin}, "
        f"but the join token pins {ours.join_pin}; the token was made for another server or cluster, or "
        f"someone is intercepting the connection, so nothing was sent: check --server, or get a new token from this "
        f"server's 'gotaxy token create'."
    )


def test_join_pin_ca_sent_along_with_a_leaf_it_did_not_issue(tmp_path: Path) -> None:
    ours = load_or_create_server_credentials(str(tmp_path / "ours"))
    theirs = load_or_create_server_credentials(str(tmp_path / "theirs"))
    our_ca = (tmp_path / "ours" / "ca.pem").read_bytes()
    # An impostor presents its own leaf followed by our (public) CA certificate.
    impostor = attrs.evolve(
        theirs, certificate_pem=x509.load_pem_x509_certificates(theirs.certificate_pem)[0].public_bytes(
            serialization.Encoding.PEM) + our_ca
    )
    verifier = ServerVerifier("localhost", 7000, join_pin=ours.join_pin)
    with pytest.raises(ServerIdentityError, match="was not issued by it; someone may be intercepting"):
        verifier.verify(handshake(impostor, verifier).chain)


def test_join_pin_refuses_a_certificate_that_is_not_valid_now(tmp_path: Path) -> None:
    credentials = load_or_create_server_credentials(str(tmp_path))
    clock = Clock()
    clock.advance((datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=11 * 365)).timestamp())
    verifier = ServerVerifier("localhost", 7000, join_pin=credentials.join_pin, clock=clock)
    with pytest.raises(ServerIdentityError, match="is not valid now .*check this machine's clock"):
        verifier.verify(handshake(credentials, verifier).chain)


def test_join_pin_needs_no_known_servers_and_insecure_skips_it(tmp_path: Path) -> None:
    ours = load_or_create_server_credentials(str(tmp_path / "ours"))
    theirs = load_or_create_server_credentials(str(tmp_path / "theirs"))
    verifier = ServerVerifier("localhost", 7000, join_pin=ours.join_pin, known_servers_path=None)
    assert verifier.verify(handshake(ours, verifier).chain) == ours.fingerprint
    insecure = ServerVerifier("localhost", 7000, join_pin=ours.join_pin, insecure=True)
    assert insecure.verify(handshake(theirs, insecure).chain) == theirs.fingerprint
