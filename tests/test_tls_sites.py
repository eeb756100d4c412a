"""
TLS terminated on the HTTPS front for websites (``gotaxy.tls.sites``), on
loopback: a visitor that trusts the operator's CA gets the page over TLS
1.2+, with the certificate for the name it asked for (a wildcard one for
any subdomain); a replaced file is served after the next look at the
directory without a restart; TLS 1.1, unknown names and broken files are
refused with a reason.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from typing import Any, List, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from gotaxy.config import HttpsSettings
from gotaxy.proxy.https import REFUSED_UNKNOWN
from gotaxy.proxy.httpsfront import HttpsFront
from gotaxy.testing import server_config
from gotaxy.tls.sites import SiteCertificates, Termination

NOW = datetime.datetime.now(datetime.timezone.utc)


class SitesCA:
    """A CA for the test and certificates it signs, as PEM."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gotaxy test sites CA")])
        self.certificate = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(days=3))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, names: Sequence[str], days: int = 2) -> Tuple[bytes, bytes]:
        """(chain PEM, key PEM) for ``names``."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return (leaf.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


class Page(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello from " + (request.getHeader(b"host") or b"?") + (b" over TLS" if request.isSecure() else b"")


class Client(Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received: List[bytes] = []
        self.done: Deferred = Deferred()
        self.protocol: Optional[bytes] = None
        self.version: Optional[str] = None
        self.peer_names: List[str] = []

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.version is None:
            connection = self.transport.getHandle()
            self.version = connection.get_protocol_version_name()
            self.protocol = connection.get_alpn_proto_negotiated()
            peer = connection.get_peer_certificate(as_cryptography=True)
            alternatives = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            self.peer_names = alternatives.get_values_for_type(x509.DNSName)
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(b"".join(self.received))


class TerminationTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.ca = SitesCA()
        self.directory = tempfile.mkdtemp(prefix="gotaxy-test-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.write("wiki", *self.ca.issue(["wiki.gotaxy.test"]))
        chain, key = self.ca.issue(["*.apps.gotaxy.test"])
        with open(os.path.join(self.directory, "apps.crt"), "wb") as f:
            f.write(chain)
        with open(os.path.join(self.directory, "apps.key"), "wb") as f:
            f.write(key)
        self.certificates = SiteCertificates(reactor, self.directory)
        self.addCleanup(self.certificates.stopService)
        self.front = HttpsFront(server_config(https=HttpsSettings(port=1, hello_timeout=5.0)), reactor)
        site = Site(Page())
        site.noisy = False
        self.front.terminate_with(Termination(self.certificates, site, reactor))
        listening = reactor.listenTCP(0, self.front.factory(), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.port = listening.getHost().port

    def write(self, stem: str, chain: bytes, key: bytes) -> None:
        # Key first: a file may hold them in either order.
        with open(os.path.join(self.directory, stem + ".pem"), "wb") as f:
            f.write(key + chain)

    async def visit(self, name: str, maximum: Any = None) -> Client:
        options: Any = optionsForClientTLS(name, trustRoot=Certificate.loadPEM(self.ca.pem),
                                           acceptableProtocols=[b"h2", b"http/1.1"])
        if maximum is not None:
            options = _OldClient(name, maximum)
        client = Client(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5))
        await connectProtocol(endpoint, client)
        await client.done
        return client

    async def test_a_website_is_served_over_tls_with_its_certificate(self) -> None:
        await self.certificates.reload()
        client = await self.visit("wiki.gotaxy.test")
        body = b"".join(client.received)
        self.assertTrue(body.endswith(b"hello from wiki.gotaxy.test over TLS"), body)
        self.assertIn(client.version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(client.protocol, b"http/1.1")
        self.assertEqual(client.peer_names, ["wiki.gotaxy.test"])

    async def test_a_wildcard_certificate_serves_every_name_under_it(self) -> None:
        await self.certificates.reload()
        client = await self.visit("alice.apps.gotaxy.test")
        self.assertTrue(b"".join(client.received).endswith(b"hello from alice.apps.gotaxy.test over TLS"))
        self.assertEqual(client.peer_names, ["*.apps.gotaxy.test"])
        # One label only (RFC 6125): a.b.apps... is not covered.
        self.assertFalse(self.certificates.covered("a.b.apps.gotaxy.test"))

    async def test_tls_older_than_1_2_is_refused(self) -> None:
        await self.certificates.reload()
        # A client willing to go as low as TLS 1.0 (OpenSSL's security level 0) gets 1.2 ...
        self.assertEqual((await self.visit("wiki.gotaxy.test", maximum=SSL.TLS1_2_VERSION)).version, "TLSv1.2")
        # ... and one that stops at 1.1 gets nothing.
        client = await self.visit("wiki.gotaxy.test", maximum=SSL.TLS1_1_VERSION)
        self.assertEqual(client.received, [])
        self.assertIsNone(client.version)

    async def test_a_name_without_a_certificate_is_closed_and_counted(self) -> None:
        await self.certificates.reload()
        client = Client(b"")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        hello = _client_hello(b"other.gotaxy.test")
        client.transport.write(hello)
        self.assertEqual(await client.done, b"")
        self.assertEqual(self.front.refusals[REFUSED_UNKNOWN], 1)

    async def test_a_replaced_certificate_is_served_after_the_next_look(self) -> None:
        await self.certificates.reload()
        chain, key = self.ca.issue(["wiki.gotaxy.test", "docs.gotaxy.test"])
        self.write("wiki", chain, key)
        os.utime(os.path.join(self.directory, "wiki.pem"), (1, 1))  # a new mtime, even within one second
        await self.certificates.reload()
        client = await self.visit("docs.gotaxy.test")
        self.assertEqual(client.peer_names, ["wiki.gotaxy.test", "docs.gotaxy.test"])
        os.unlink(os.path.join(self.directory, "wiki.pem"))
        await self.certificates.reload()
        self.assertFalse(self.certificates.covered("wiki.gotaxy.test"))

    async def test_a_broken_file_is_skipped_and_the_others_are_served(self) -> None:
        with open(os.path.join(self.directory, "broken.pem"), "wb") as f:
            f.write(self.ca.issue(["broken.gotaxy.test"])[0])  # a certificate without its key
        _, stray_key = self.ca.issue(["x.gotaxy.test"])
        chain, _ = self.ca.issue(["mismatch.gotaxy.test"])
        self.write("mismatch", chain, stray_key)
        from gotaxy.testing import LogCapture

        with LogCapture() as log:
            await self.certificates.reload()
        self.assertTrue(log.has("broken.pem not used"), log.lines)
        self.assertTrue(log.has("mismatch.pem not used: the key of"), log.lines)
        self.assertFalse(self.certificates.covered("broken.gotaxy.test"))
        self.assertTrue(self.certificates.covered("wiki.gotaxy.test"))


@implementer(IOpenSSLClientConnectionCreator)
class _OldClient:
    """A client that offers TLS up to ``maximum`` only, down to 1.0, without checking the server."""

    def __init__(self, name: str, maximum: int) -> None:
        self.name = name.encode()
        self.maximum = maximum

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_max_proto_version(self.maximum)
        connection = SSL.Connection(context, None)
        connection.set_tlsext_host_name(self.name)
        connection.set_connect_state()
        return connection


def _client_hello(name: bytes) -> bytes:
    context = SSL.Context(SSL.TLS_METHOD)
    connection = SSL.Connection(context, None)
    connection.set_tlsext_host_name(name)
    connection.set_connect_state()
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)
