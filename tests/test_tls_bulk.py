"""
The control connection's TLS layer (``gotaxy.tls.bulk``): what is written
on one end arrives intact and in order on the other, whatever the sizes of
the writes, before and after the handshake, and up to a clean close.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from typing import List

from twisted.internet import ssl
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from gotaxy.tls import load_or_create_server_credentials
from gotaxy.tls.bulk import BulkTLSFactory, BulkTLSProtocol


class Collector(Protocol):
    def __init__(self) -> None:
        self.received: List[bytes] = []
        self.lost: List[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.append(reason)

    def data(self) -> bytes:
        return b"".join(self.received)


class BulkTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        server_options = load_or_create_server_credentials(directory).server_context()
        client_options = ssl.CertificateOptions()  # the test trusts anything; gotaxy's verifier is tested elsewhere
        server_factory = BulkTLSFactory(server_options, False, Factory.forProtocol(Collector), clock=self.clock)
        client_factory = BulkTLSFactory(client_options, True, Factory.forProtocol(Collector), clock=self.clock)
        self.server = server_factory.buildProtocol(None)
        self.client = client_factory.buildProtocol(None)
        self.assertIsInstance(self.server, BulkTLSProtocol)
        self.pump = connect(
            self.server, FakeTransport(self.server, isServer=True),
            self.client, FakeTransport(self.client, isServer=False),
            greet=False, clock=self.clock,
        )
        self.server_app, self.client_app = self.server.wrappedProtocol, self.client.wrappedProtocol

    def flush(self) -> None:
        for _ in range(1000):
            self.clock.advance(0)  # BufferingTLSTransport's batched writes
            if not self.pump.pump():
                self.clock.advance(0)
                if not self.pump.pump():
                    return
        self.fail("the connection never went quiet")

    def test_writes_of_every_size_arrive_intact_both_ways(self) -> None:
        """
        Small, record-sized, frame-sized and larger-than-a-BIO-read writes,
        mixed, arrive byte for byte and in order, in both directions.
        """
        rng = random.Random(15)
        sizes = [1, 9, 100, 16383, 16384, 16385, 64000, 65545, 65536 * 4 + 7, 300 * 1024, 3]
        sizes += [rng.randrange(1, 200_000) for _ in range(40)]
        sent = {"client": [], "server": []}
        for size in sizes:
            for name, end in (("client", self.client), ("server", self.server)):
                chunk = os.urandom(size)
                sent[name].append(chunk)
                end.write(chunk)
            if rng.random() < 0.3:
                self.flush()
        self.flush()
        self.assertEqual(self.server_app.data(), b"".join(sent["client"]))
        self.assertEqual(self.client_app.data(), b"".join(sent["server"]))

    def test_writes_before_the_handshake_arrive_after_it(self) -> None:
        """What is written before the handshake has finished is held, then delivered whole."""
        early = os.urandom(200_000)
        self.client.write(early)
        self.flush()
        self.assertTrue(self.client._handshakeDone)
        self.assertEqual(self.server_app.data(), early)

    def test_close_after_a_large_write_delivers_it_then_ends_cleanly(self) -> None:
        """loseConnection right after a large write: the peer gets every byte, then a clean end."""
        self.flush()
        last = os.urandom(1024 * 1024)
        self.server.write(last)
        self.server.loseConnection()
        self.flush()
        self.assertEqual(self.client_app.data(), last)
        self.assertEqual(len(self.client_app.lost), 1)
