"""
ACME's decisions in memory (``gotaxy.tls.acme``): the HTTP-01 answers, and
the backoff after failures on a fake clock.  The issuance itself, against a
real CA, is in ``tests/test_acme_pebble.py``.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import Any, List, Tuple

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.server import Site

from gotaxy.events import CERTIFICATE_FAILED, CERTIFICATE_ISSUED, CERTIFICATE_RENEWED, TYPES
from gotaxy.tls.acme import (
    BACKOFF_FIRST,
    MAX_PENDING_CHALLENGES,
    AcmeError,
    AcmeManager,
    AcmeClientSettings,
    ChallengeResource,
    ChallengeStore,
)
NAME = "wiki.gotaxy.test"


class Recorder:
    def __init__(self) -> None:
        self.events: List[Tuple[str, str, str]] = []

    async def __call__(self, type_: str, address: str, detail: str) -> None:
        assert type_ in TYPES
        self.events.append((type_, address, detail))


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class ChallengeStoreTests(unittest.TestCase):
    def test_a_pending_token_is_answered_and_others_are_not(self) -> None:
        store = ChallengeStore()
        store.add("abc_DEF-123", "abc_DEF-123.thumbprint")
        self.assertEqual(store.answer(b"/.well-known/acme-challenge/abc_DEF-123"), b"abc_DEF-123.thumbprint")
        self.assertIsNone(store.answer(b"/.well-known/acme-challenge/other"))
        self.assertIsNone(store.answer(b"/abc_DEF-123"))
        self.assertTrue(store.is_challenge(b"/.well-known/acme-challenge/other"))
        store.remove("abc_DEF-123")
        self.assertIsNone(store.answer(b"/.well-known/acme-challenge/abc_DEF-123"))

    def test_tokens_that_are_not_base64url_and_floods_are_refused(self) -> None:
        store = ChallengeStore()
        self.assertRaises(AcmeError, store.add, "../etc/passwd", "x")
        for i in range(MAX_PENDING_CHALLENGES):
            store.add(f"t{i}", "x")
        self.assertRaises(AcmeError, store.add, "one-more", "x")


class _FailingManager(AcmeManager):
    """The decisions on a fake clock: the CA conversation replaced by an outcome the test sets."""

    outcome: Any = None

    def _in_pool(self, function: Any, *args: Any) -> Any:
        if function == self.files.load_all:
            return succeed([])
        if isinstance(self.outcome, Exception):
            return fail(self.outcome)
        return succeed(self.outcome)


class BackoffTests(unittest.TestCase):
    def setUp(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="gotaxy-test-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.clock = Clock()
        self.record = Recorder()
        self.manager = _FailingManager(self.clock, AcmeClientSettings(directory="https://ca.invalid/dir"),
                                       self.data_dir, ChallengeStore(), self.record)
        self.manager.startService()
        self.addCleanup(self.manager.stopService)

    def test_failures_are_retried_with_a_doubling_delay_and_each_is_an_event(self) -> None:
        self.manager.outcome = AcmeError("the CA is down")
        got: list = []
        self.manager.want(NAME).addCallback(got.append)
        self.assertEqual(got, [None])
        self.assertEqual([e[0] for e in self.record.events], [CERTIFICATE_FAILED])
        self.assertIn("the CA is down; next attempt in 10 min", self.record.events[0][2])
        # Asking again while backing off costs the CA nothing.
        self.manager.want(NAME)
        self.assertEqual(len(self.record.events), 1)
        self.clock.advance(BACKOFF_FIRST)
        self.assertEqual(len(self.record.events), 2)
        self.assertIn("next attempt in 20 min", self.record.events[1][2])
        self.clock.advance(BACKOFF_FIRST)
        self.assertEqual(len(self.record.events), 2)
        self.clock.advance(BACKOFF_FIRST)
        self.assertEqual(len(self.record.events), 3)

    def test_a_name_no_tunnel_wants_any_more_is_not_retried(self) -> None:
        self.manager.outcome = AcmeError("the CA is down")
        self.manager.want(NAME)
        self.manager.unwant(NAME)
        self.clock.advance(10 * BACKOFF_FIRST)
        self.assertEqual(len(self.record.events), 1)


class ConfigTests(unittest.TestCase):
    def test_acme_without_the_https_port_is_refused_with_the_fix(self) -> None:
        from gotaxy.config import ConfigError, parse_server_config

        with self.assertRaises(ConfigError) as caught:
            parse_server_config({"acme": {"enable": True}})
        self.assertIn("so set vhostHTTPSPort (443, say", str(caught.exception))
        # Without vhostHTTPPort the challenges are TLS-ALPN-01 on vhostHTTPSPort; with it, HTTP-01 first.
        from gotaxy.tls.acme import HTTP_01, TLS_ALPN_01, settings_from

        alpn_only = parse_server_config({"vhostHTTPSPort": 8443, "acme": {"enable": True}}).config
        self.assertEqual(settings_from(alpn_only).challenges, (TLS_ALPN_01,))
        both = parse_server_config({"vhostHTTPSPort": 8443, "vhostHTTPPort": 8080, "acme": {"enable": True}}).config
        self.assertEqual(settings_from(both).challenges, (HTTP_01, TLS_ALPN_01))
        loaded = parse_server_config({"vhostHTTPSPort": 8443, "vhostHTTPPort": 8080,
                                      "acme": {"enable": True, "renewBefore": 20}})
        self.assertEqual(loaded.config.acme.renew_before_days, 20)
        limited = parse_server_config({"vhostHTTPSPort": 8443, "vhostHTTPPort": 8080,
                                       "acme": {"enable": True, "domains": ["Example.com"]}})
        self.assertEqual(limited.config.acme.domains, ("example.com",))
        with self.assertRaises(ConfigError):
            parse_server_config({"acme": {"domains": ["*.example.com"]}})


class FirstClaimTests(unittest.TestCase):
    """ACME is asked for an http tunnel's names when it opens, except what a file or a wildcard covers."""

    def test_names_of_an_http_tunnel_are_asked_for_once_it_is_up(self) -> None:
        from gotaxy.events import Event
        from gotaxy.proxy.address import PublicAddress
        from gotaxy.tls.sites import CertificatesForTunnels

        class Acme:
            def __init__(self) -> None:
                self.wanted: list = []
                self.unwanted: list = []

            def want(self, name: str) -> Any:
                self.wanted.append(name)
                return succeed(None)

            def unwant(self, name: str) -> None:
                self.unwanted.append(name)

            settings = AcmeClientSettings(domains=("example.com",))

        class Files:
            def covered(self, name: str) -> bool:
                return name == "wiki.example.com"

        class Tunnel:
            def __init__(self, address: Any) -> None:
                self.address = address

        core = type("Core", (), {})()
        core.tunnels = {
            ("alice", "site"): Tunnel(PublicAddress("http", 0, ("erp.example.com", "wiki.example.com", "*.dev.example.com",
                                                                "elsewhere.org"))),
            ("alice", "ssh"): Tunnel(PublicAddress.tcp(16000)),
        }
        acme = Acme()
        hear = CertificatesForTunnels(core, acme, Files())
        hear(Event("tunnel.opened", 0.0, client="alice", tunnel="ssh"))
        hear(Event("tunnel.opened", 0.0, client="alice", tunnel="site"))
        self.assertEqual(acme.wanted, ["erp.example.com"])
        hear(Event("tunnel.removed", 0.0, client="alice", tunnel="site"))
        self.assertEqual(acme.unwanted, ["erp.example.com"])
