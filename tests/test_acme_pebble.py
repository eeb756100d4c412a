"""
ACME (``gotaxy.tls.acme``) against Let's Encrypt's test CA, Pebble, on
loopback (``tests.pebble``, which starts pebble and a dnsmasq that sends
every name under gotaxy.test to 127.0.0.1): a certificate issued for a name
on its first claim and kept in the data directory with 0600 permissions,
renewal when it is within ``acme.renewBefore`` of expiry, and a clear event
when the challenge cannot be answered.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import Any, Tuple

import pytest
from cryptography import x509
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.server import Site

from gotaxy.events import CERTIFICATE_FAILED, CERTIFICATE_ISSUED, CERTIFICATE_RENEWED
from gotaxy.tls.acme import TLS_ALPN_01, AcmeClientSettings, AcmeManager, ChallengeResource, ChallengeStore
from tests import pebble
from tests.test_acme import Recorder

pytestmark = pytest.mark.e2e

NAME = f"wiki.{pebble.TEST_DOMAIN}"


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class PebbleTests(unittest.TestCase):
    """Real issuance by Pebble, validated over HTTP-01 on loopback."""

    timeout = 120

    def setUp(self) -> None:
        if not pebble.available():
            raise unittest.SkipTest(pebble.HOW_TO_GET_IT)
        self.data_dir = tempfile.mkdtemp(prefix="gotaxy-test-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.challenges = ChallengeStore()
        #: what the plain-HTTP front answers from (the manager's store, unless a test says otherwise)
        self.served = self.challenges
        site = Site(ChallengeResource(_Served(self)))
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.ca = pebble.AcmeTestCA(port.getHost().port)
        self.addCleanup(self.ca.close)

    def manager(self, renew_before_days: float = 30) -> Tuple[AcmeManager, Recorder]:
        record = Recorder()
        settings = AcmeClientSettings(directory=self.ca.directory_url, email="ops@example.com", ca_file=self.ca.ca_file,
                                renew_before=renew_before_days * 86400)
        manager = AcmeManager(reactor, settings, self.data_dir, self.challenges, record)
        manager.startService()
        self.addCleanup(manager.stopService)
        return manager, record

    async def test_a_first_claim_gets_a_certificate_that_is_kept_private(self) -> None:
        manager, record = self.manager()
        certificate = await manager.want(NAME)
        self.assertIsNotNone(certificate, self.ca.log())
        self.assertEqual([(e[0], e[1]) for e in record.events], [(CERTIFICATE_ISSUED, NAME)])
        self.assertIn("valid until", record.events[0][2])
        leaf = x509.load_pem_x509_certificate(certificate.chain_pem)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), [NAME])
        root = x509.load_pem_x509_certificate(self.ca.issuing_root())
        chain = x509.load_pem_x509_certificates(certificate.chain_pem)
        self.assertEqual(chain[-1].issuer, root.subject)  # the intermediate Pebble's root signed
        acme_dir = os.path.join(self.data_dir, "acme")
        self.assertEqual(_mode(os.path.join(acme_dir, "account.key")), 0o600)
        self.assertEqual(_mode(os.path.join(acme_dir, "certs", NAME + ".pem")), 0o600)
        self.assertEqual(_mode(acme_dir), 0o700)
        self.assertEqual(len(self.challenges), 0)  # answers go once the order is done
        # A restart finds it on disk and asks the CA for nothing.
        manager.stopService()
        again, again_record = self.manager()
        kept = await again.want(NAME)
        self.assertEqual(kept.chain_pem, certificate.chain_pem)
        self.assertEqual(again_record.events, [])

    async def test_a_certificate_within_renew_before_of_expiry_is_renewed(self) -> None:
        # Pebble's certificates last years; a renewBefore beyond that makes this one due at once.
        manager, record = self.manager(renew_before_days=365 * 20)
        first = await manager.want(NAME)
        self.assertIsNotNone(first, self.ca.log())
        await manager.check_renewals()
        renewed = manager.certificate(NAME)
        self.assertEqual([e[0] for e in record.events], [CERTIFICATE_ISSUED, CERTIFICATE_RENEWED])
        self.assertNotEqual(x509.load_pem_x509_certificate(renewed.chain_pem).serial_number,
                            x509.load_pem_x509_certificate(first.chain_pem).serial_number)

    async def test_a_challenge_nobody_answers_fails_with_an_event_and_a_retry(self) -> None:
        self.served = ChallengeStore()  # the front answers from a store the manager does not fill
        manager, record = self.manager()
        certificate = await manager.want(NAME)
        self.assertIsNone(certificate)
        self.assertIsNone(manager.certificate(NAME))
        [(kind, address, detail)] = record.events
        self.assertEqual((kind, address), (CERTIFICATE_FAILED, NAME))
        self.assertIn("validation failed", detail)
        self.assertIn("next attempt in 10 min", detail)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "acme", "certs", NAME + ".pem")))


class TlsAlpnTests(unittest.TestCase):
    """Real issuance by Pebble, validated over TLS-ALPN-01 on the HTTPS front's port (no plain-HTTP port)."""

    timeout = 120

    def setUp(self) -> None:
        if not pebble.available():
            raise unittest.SkipTest(pebble.HOW_TO_GET_IT)
        from gotaxy.config import HttpsSettings
        from gotaxy.proxy.httpsfront import HttpsFront
        from gotaxy.testing import server_config

        self.data_dir = tempfile.mkdtemp(prefix="gotaxy-test-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.challenges = ChallengeStore()
        # The HTTPS front as the server runs it: ClientHellos read, a validation handed to TLS.
        self.front = HttpsFront(server_config(https=HttpsSettings(port=1, hello_timeout=10.0)), reactor)
        self.front.challenges = self.challenges
        port = reactor.listenTCP(0, self.front.factory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        # Nothing answers HTTP-01 (its port refuses): only TLS-ALPN-01 can succeed.
        self.ca = pebble.AcmeTestCA(pebble.free_port(), tls_port=port.getHost().port)
        self.addCleanup(self.ca.close)

    async def test_a_name_is_validated_over_tls_alpn_on_the_https_port(self) -> None:
        record = Recorder()
        settings = AcmeClientSettings(directory=self.ca.directory_url, email="ops@example.com", ca_file=self.ca.ca_file,
                                      challenges=(TLS_ALPN_01,))
        manager = AcmeManager(reactor, settings, self.data_dir, self.challenges, record)
        manager.startService()
        self.addCleanup(manager.stopService)
        certificate = await manager.want(NAME)
        self.assertIsNotNone(certificate, (record.events, self.ca.log()))  # (HTTP-01's port refuses)
        self.assertEqual([(e[0], e[1]) for e in record.events], [(CERTIFICATE_ISSUED, NAME)])
        names = x509.load_pem_x509_certificate(certificate.chain_pem).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), [NAME])
        self.assertIsNone(self.challenges.alpn_options(NAME))  # the answer goes once the order is done

    async def test_without_an_answer_on_the_https_port_it_fails_with_an_event(self) -> None:
        record = Recorder()
        self.front.challenges = ChallengeStore()  # the front answers from a store the manager does not fill
        settings = AcmeClientSettings(directory=self.ca.directory_url, email="ops@example.com", ca_file=self.ca.ca_file,
                                      challenges=(TLS_ALPN_01,))
        manager = AcmeManager(reactor, settings, self.data_dir, self.challenges, record)
        manager.startService()
        self.addCleanup(manager.stopService)
        self.assertIsNone(await manager.want(NAME))
        [(kind, address, detail)] = record.events
        self.assertEqual((kind, address), (CERTIFICATE_FAILED, NAME))


class _Served:
    """The store the test's HTTP-01 server answers from, chosen by the test at request time."""

    def __init__(self, test: PebbleTests) -> None:
        self.test = test

    def answer(self, path: bytes) -> Any:
        return self.test.served.answer(path)
