"""
OCSP stapling (``gotaxy.tls.ocsp``) with a real responder's answer:
``openssl ocsp`` signs the response for a test CA's index (offline: its
``-port`` server would listen on every address, not loopback only, so a
``twisted.web`` resource on 127.0.0.1 serves what it signed, for the very
request the stapler sends), a website certificate that names that URL, and
``openssl s_client -status`` reading the staple in the handshake of the
server's own TLS options (``gotaxy.tls.sites``).
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tempfile
from typing import Any, Optional, Tuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from gotaxy.tls.ocsp import OcspStapler, responder_of
from gotaxy.tls.sites import SiteCertificates, tls_options
from tests.e2e import free_port
from tests.inprocess import wait_until

NAME = "site.example.test"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificates(ocsp_url: Optional[str]) -> Tuple[Any, x509.Certificate, Any, x509.Certificate]:
    """A CA (key, certificate) and a website's (key, certificate) it signed, naming ``ocsp_url``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Gotaxy test OCSP CA")).issuer_name(_name("Gotaxy test OCSP CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name(NAME)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=10))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False))
    if ocsp_url is not None:
        builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]), critical=False)
    return ca_key, ca, key, builder.sign(ca_key, hashes.SHA256())


class _Nothing(Protocol):
    pass


class _Responder(Resource):
    """An OCSP responder's HTTP face: the signed answer for the one request it expects (RFC 6960 A.1, POST)."""

    isLeaf = True

    def __init__(self, expected: bytes, answer: bytes) -> None:
        super().__init__()
        self.expected, self.answer, self.asked = expected, answer, 0

    def render_POST(self, request: Any) -> bytes:
        self.asked += 1
        if request.getHeader(b"content-type") != b"application/ocsp-request" or request.content.read() != self.expected:
            request.setResponseCode(400)
            return b""
        request.setHeader(b"content-type", b"application/ocsp-response")
        return self.answer


@pytest.mark.e2e
class StaplingTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            raise unittest.SkipTest("the OCSP test needs the openssl command")
        self.directory = tempfile.mkdtemp(prefix="gotaxy-ocsp-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.port = free_port()
        ca_key, self.ca, self.key, self.leaf = _certificates(f"http://127.0.0.1:{self.port}")
        pem = serialization.Encoding.PEM
        with open(os.path.join(self.directory, "ca.pem"), "wb") as f:
            f.write(self.ca.public_bytes(pem))
        with open(os.path.join(self.directory, "ca.key"), "wb") as f:
            f.write(ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        expiry = self.leaf.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        with open(os.path.join(self.directory, "index.txt"), "w") as f:  # openssl ca's database: one valid certificate
            f.write(f"V\t{expiry}\t\t{self.leaf.serial_number:X}\tunknown\t/CN={NAME}\n")
        request = ocsp.OCSPRequestBuilder().add_certificate(self.leaf, self.ca, hashes.SHA1()).build()
        with open(os.path.join(self.directory, "request.der"), "wb") as f:
            f.write(request.public_bytes(serialization.Encoding.DER))
        subprocess.run(["openssl", "ocsp", "-index", "index.txt", "-rsigner", "ca.pem", "-rkey", "ca.key",
                        "-CA", "ca.pem", "-reqin", "request.der", "-respout", "response.der", "-ndays", "1"],
                       cwd=self.directory, check=True, capture_output=True, timeout=30)
        with open(os.path.join(self.directory, "response.der"), "rb") as f:
            self.responder = _Responder(request.public_bytes(serialization.Encoding.DER), f.read())
        listening = reactor.listenTCP(self.port, Site(self.responder), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)

    async def test_the_responders_answer_is_stapled_in_the_handshake(self) -> None:
        # The operator's file in vhostHTTPSCertDir: the key, then the chain.
        certs_dir = os.path.join(self.directory, "certs")
        os.mkdir(certs_dir)
        pem = serialization.Encoding.PEM
        with open(os.path.join(certs_dir, NAME + ".pem"), "wb") as f:
            f.write(self.key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            f.write(self.leaf.public_bytes(pem) + self.ca.public_bytes(pem))
        certificates = SiteCertificates(reactor, certs_dir)
        self.addCleanup(certificates.stopService)
        await certificates.reload()
        options = certificates.options_for(NAME)
        stapler = certificates.stapler
        await wait_until(lambda: stapler.staple(self.leaf), timeout=30)
        self.assertEqual(self.responder.asked, 1)
        factory = TLSMemoryBIOFactory(options, False, Factory.forProtocol(_Nothing))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        done = await threads.deferToThread(subprocess.run, [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port.getHost().port}", "-servername", NAME, "-status"],
            input=b"", capture_output=True, timeout=20)
        shown = done.stdout.decode(errors="replace")
        self.assertIn("OCSP Response Status: successful", shown)
        self.assertIn("Cert Status: good", shown)


class WithoutResponderTests(unittest.TestCase):
    def test_a_certificate_that_names_no_responder_is_served_without_a_staple(self) -> None:
        _, ca, key, leaf = _certificates(None)
        self.assertIsNone(responder_of(leaf))
        options = tls_options([leaf, ca], key)
        self.assertFalse(hasattr(options, "stapler"))  # plain CertificateOptions
        stapler = OcspStapler(reactor)
        self.assertFalse(stapler.track(leaf, ca))
        self.assertEqual(stapler.staple(leaf), b"")
