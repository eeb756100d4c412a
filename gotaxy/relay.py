# -*- test-case-name: tests.test_mux -*-
"""
The protocol that splices one TCP connection to one mux ``Stream``.

The same class serves both ends: on the server it is the public connection
a user opened to a tunnel's port; on the client it is the connection to the
local service.  It supports half-close, so a peer that sends FIN and keeps
reading (``shutdown(SHUT_WR)``) works end to end.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gotaxy.mux import Stream, set_no_delay
from gotaxy.wire import INITIAL_WINDOW

#: The most one send() on a relayed socket may take: what the stream may
#: have waiting for that socket, its largest window.  Twisted's own limit is
#: 128 KiB per turn of the reactor, so a full window took four turns.  With
#: the control connection's limit raised too: 10 % more Gbit/s and 2 to 4 %
#: less CPU per GB (issue 15, benchmarks/compare.py).
RELAY_SEND_LIMIT = INITIAL_WINDOW


def large_sends(transport: object) -> None:
    """Let a TCP transport send up to ``RELAY_SEND_LIMIT`` at once (others have no such limit)."""
    if isinstance(getattr(transport, "SEND_LIMIT", None), int):
        transport.SEND_LIMIT = RELAY_SEND_LIMIT  # type: ignore[attr-defined]


@implementer(IHalfCloseableProtocol)
class StreamRelay(Protocol):
    stream: Optional[Stream] = None

    def __init__(self, stream: Optional[Stream] = None) -> None:
        self.stream = stream
        self._read_closed = False
        self._write_closed = False

    def connect_stream(self, stream: Stream) -> None:
        """Attach the stream once both it and our transport exist."""
        self.stream = stream
        stream.attach(self.transport)

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        large_sends(self.transport)
        if self.stream is not None:
            self.stream.attach(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.stream.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self._read_closed = True
        if self.stream is not None:
            self.stream.write_eof()
        self._close_if_done()

    def writeConnectionLost(self) -> None:
        self._write_closed = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._read_closed and self._write_closed:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.stream is not None:
            self.stream.local_closed(reason.getErrorMessage() if reason is not None else "closed")
