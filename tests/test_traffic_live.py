"""
The server's traffic totals through a real tunnel on loopback, read from the
same meters as /metrics (``gotaxy.server.traffic``).
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from gotaxy.server.traffic import Reading
from tests.inprocess import LiveSystem, listen_echo, wait_until


class _Held(Protocol):
    """A public connection kept open: what comes back is collected."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ServerTotalsTest(unittest.TestCase):
    timeout = 60

    async def test_bytes_of_a_connection_that_outlives_its_tunnel_count_in_the_server_totals(self) -> None:
        # Before one meter per tunnel, the server's totals took a tunnel's
        # bytes when its listener closed, and lost what its open connections
        # moved after that; /metrics (its own ledger) counted them.  Now both
        # read the same meter.
        echo = listen_echo(self)
        live = await LiveSystem.start(self, [f"echo=tcp:127.0.0.1:{echo}"])
        port = await live.wait_up("echo")
        held = _Held()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), held)
        self.addCleanup(lambda: held.transport.loseConnection())
        held.transport.write(b"x" * 1000)
        await wait_until(lambda: len(held.received) == 1000)
        tunnel = live.core.tunnels[("alice", "echo")]
        closed: Deferred = live.core.close_tunnel(tunnel, "closed by the test")  # connections are kept
        await closed
        held.transport.write(b"y" * 500)
        await wait_until(lambda: len(held.received) == 1500)
        await wait_until(lambda: live.core.traffic()[:2] == (1500, 1500))
        meter = live.core.meters.tunnel("alice", "echo")
        assert meter.reading() == Reading(opened=1, bytes_in=1500, bytes_out=1500)
        status = await live.management.status()
        assert (status.bytes_in, status.bytes_out) == (1500, 1500)
