# -*- test-case-name: tests.test_mux -*-
"""
Stream multiplexing with per-stream flow control over one connection.

Every tunneled TCP connection is a ``Stream`` on the client's single TLS
connection (a ``MuxProtocol``).  The design follows SSH channels and yamux:

* **Windows.**  Each direction of each stream starts with ``INITIAL_WINDOW``
  bytes of credit.  DATA spends the sender's credit; the receiver returns it
  with WINDOW frames once the bytes have been handed to the local socket
  *and that socket has not asked us to pause*.  A slow reader therefore stops
  only its own stream: its window runs dry, the sending side pauses the one
  socket that feeds it, and every other stream keeps flowing.

* **Backpressure, both ways.**  A ``Stream`` is attached to one TCP
  transport (the public connection on the server, the local service
  connection on the client), which is both its *source* and its *sink*:

  - as the sink's producer (``registerProducer(stream, True)``), the stream
    hears ``pauseProducing`` when that socket's send buffer is full and then
    withholds WINDOW credit;
  - as the source's consumer, the stream pauses the socket's reading when
    its send window is exhausted, or when the mux connection itself is
    paused by its transport (``MuxProtocol`` registers as the producer of
    the TLS transport), and resumes it when both clear.  A paused
    connection tells no stream: the next read of each socket is held in its
    stream (``held_streams``), which pauses that socket then, and the held
    streams are flushed when the connection resumes, so a pause costs
    nothing for the thousands of streams that are idle.

  Memory per stream is therefore bounded by its window plus one socket read,
  and with a peer that announces ``window_budget`` the windows of all
  streams of a connection are bounded together: they start at 16 KiB and
  grow only from the connection's pool (``gotaxy.budget``, the credit
  hooks ``_send_credit`` and ``widen_reads``).

* **Closing.**  FIN is a half-close and is queued behind any data still
  waiting for window.  When the local socket is gone, the stream sends CLOSE
  after its buffered data; on CLOSE the peer flushes what it has and closes
  its socket.  If the mux connection itself is lost, every stream's socket
  is aborted (RST), so a truncated transfer never looks like a clean end.

* **Fair shares.**  One connection carries at most ``max_streams`` streams
  (``MAX_STREAMS``, or the server's ``maxConnectionsPerClient``), and one
  tunnel must not take them all: 10,000 idle connections to one public port
  would otherwise lock every other tunnel of the client out.  Each tunnel of
  the connection (``fair_share_tunnels``) is guaranteed ``R = min(
  TUNNEL_RESERVE, max_streams // tunnels)`` streams, and any tunnel may
  borrow beyond its ``R`` only from what is not kept for the others: a
  stream for tunnel T opens only if, afterwards, ::

      open streams + sum over tunnels U != T of max(0, R - streams of U) <= max_streams

  so every other tunnel can still open up to its ``R`` at any moment.  With
  two tunnels and 1,024 streams one tunnel may hold 992; a lone tunnel may
  hold all of them.  ``stream_refusal`` says which rule refused a stream.
  A peer without the window budget gets at most ``LEGACY_MAX_STREAMS``.

* **Bandwidth limits.**  A stream may have a ``send_bucket`` and a
  ``recv_bucket`` (``gotaxy.bandwidth``): past its limit it pauses its
  socket's reading, or withholds the peer's window credit, until the
  bucket refills; nothing is buffered beyond the window.

Stream ids are never reused within a connection, so late frames for a closed
stream are recognised and dropped.

**Datagram flows.**  A UDP tunnel's visitor is a ``Flow``, not a
``Stream``: opened by the server with an OPEN that says ``"mode":
"datagram"``, it carries whole datagrams, one per DATAGRAM frame, in both
directions, with no window.  ``Flow.send`` writes a datagram at once or,
when the connection is backed up (paused by its transport, or more than
``DATAGRAM_BACKLOG`` bytes already waiting for the peer), drops it and says
so: datagrams are never queued, so a UDP flood cannot grow a buffer or hold
up a stream's data, and a stream's bulk transfer is served first (it may
fill the send buffer to ``MUX_SOCKET_BUFFER``, datagrams only to
``DATAGRAM_BACKLOG``).  On a fast path the buffer rarely fills: what runs
out is CPU, and each datagram costs several times a stream's CPU per
byte.  So while the connection's streams are busy, datagrams get at most a
share of it (``DatagramShare``): each datagram is charged its bytes plus
``DATAGRAM_OVERHEAD`` (what its frame, read and write cost beyond a
stream's bytes), and in each 50 ms the datagrams may be charged
``DATAGRAM_SHARE`` of the bytes the streams moved in the 50 ms before
(and at least 1 MiB/s), about 3 % of the CPU; the rest are dropped.  When
the streams are idle the datagrams have it all.  A flood beyond that share is dropped at
the first check, and the proxy type stops reading its socket for a moment,
so the kernel drops the rest without costing us anything
(``gotaxy.proxy.udp``).  Flows have ids from the same sequence as streams,
do not count against ``max_streams`` (their proxy type caps them per
tunnel), and end with CLOSE from either side or when the connection is lost.

**Bounded writes.**  Everything written toward the peer is bounded, also
when the peer does not read.  DATA is bounded by the windows and by pausing
the streams' sockets.  Answers to the peer (PONG, control messages, refusals)
are bounded because the peer cannot make us answer before log-in (a PING
then is a protocol error), PINGs are not answered while the connection's
send buffer is full, more answers are refused by dropping the connection
once ``MAX_BUFFERED_OUTPUT`` bytes wait, and a connection whose full send
buffer has not drained at all for ``write_stall_timeout`` seconds is
dropped.  Stopping to *read* instead would deadlock two honest peers that
both push bulk data over a slow link.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Collection, Deque, Dict, Optional, Set

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gotaxy.budget import SMALL_READ, SMALL_WINDOW, TWISTED_READ, WINDOW_POOL, WindowBudget
from gotaxy.wire import (
    CLOSE_ERROR_PREFIX,
    INITIAL_WINDOW,
    MAX_DATA,
    MAX_WINDOW,
    PREAMBLE,
    PREAMBLE_MAGIC,
    MAX_DATAGRAM,
    PROTOCOL_VERSION,
    WINDOW_INCREMENT,
    FrameDecoder,
    FrameType,
    ProtocolError,
    decode_json,
    encode_close,
    encode_control,
    encode_frame,
    encode_json,
)

#: Concurrent streams one connection may carry; more public connections than
#: this for one client are refused.  Their windows are bounded by the
#: connection's budget (``gotaxy.budget``), not only each by its own.
MAX_STREAMS = 10000

#: The limit with a peer that does not take part in the budget (an older
#: Gotaxy): each of its streams may hold a fixed 512 KiB window.
LEGACY_MAX_STREAMS = 1024

#: Streams each tunnel of a connection can always open, however many the
#: connection's other tunnels hold (fewer when so many tunnels share the
#: connection that MAX_STREAMS does not go round).  See "Fair shares".
TUNNEL_RESERVE = 32

#: Send buffer of the mux's TCP socket before its streams are paused (and
#: also the size of its reads).
MUX_SOCKET_BUFFER = 512 * 1024

#: Bytes waiting in the connection's send buffer beyond which a peer that
#: keeps asking for answers it does not read is dropped.
MAX_BUFFERED_OUTPUT = 8 * 1024 * 1024

#: Seconds a full send buffer may go without draining before the peer is
#: dropped (subclasses use their heartbeat timeout).
WRITE_STALL_TIMEOUT = 30.0

#: Bytes waiting for the peer beyond which a datagram is dropped rather than
#: sent (a quarter of what streams may fill), so that streams come first.
DATAGRAM_BACKLOG = MUX_SOCKET_BUFFER // 4

#: What a datagram costs, in stream bytes of the same CPU, beyond its own
#: length: a frame, a read and a write of its own at each end, where a
#: stream's bytes go 64 KiB at a time.  Measured (benchmarks/run.py's
#: tunnels, iperf3 -u at 60 Mbit/s against one TCP stream): a 1,200-byte
#: datagram took the server and client as much CPU as 4,300 to 4,900 stream
#: bytes.  The share charges each datagram its length plus this, so that it
#: bounds the CPU datagrams take, small ones included.
DATAGRAM_OVERHEAD = 3 * 1024

#: While the connection's streams are busy, datagrams may cost at most this
#: much (their bytes plus ``DATAGRAM_OVERHEAD`` each) for each byte its
#: streams moved (either way) in the period before; see "Datagram flows".
#: 1/32 is about 3 % of the CPU; 1/16 of the bytes alone, as before, let
#: 1,200-byte datagrams take a quarter of it.
DATAGRAM_SHARE = 1 / 32

#: Seconds over which the share is reckoned.
DATAGRAM_SHARE_PERIOD = 0.05

#: Stream bytes per period (about 1.3 MB/s) below which the streams count as
#: idle and datagrams have the connection to themselves.
DATAGRAM_SHARE_BUSY = 64 * 1024

#: What datagrams may always cost per period (1 MiB/s, reckoned as the
#: share is: about 245 datagrams of 1,200 bytes a second, 320 of 200),
#: however little the share: on a slow link (where the send buffer, not CPU, is the limit) a
#: call or a game beside a download keeps its packets, while on a machine
#: short of CPU the floor costs the streams little.
DATAGRAM_SHARE_FLOOR = 1024 * 1024 * DATAGRAM_SHARE_PERIOD

#: Datagram flows one connection may carry (each proxy type caps its own per tunnel).
MAX_FLOWS = 65536

_DATA_HEADER = FrameType.DATA
_DATAGRAM = FrameType.DATAGRAM
_MAX_STREAM_ID = 0xFFFFFFFF


def set_no_delay(transport: object) -> None:
    """
    Turn off Nagle's algorithm: a tunnel adds a hop, and delaying small
    writes at each end (request headers, WINDOW frames) costs far more
    latency than the few extra packets cost bandwidth.  Transports that are
    not TCP (UNIX sockets, in-memory test transports) have nothing to turn off.
    """
    set_option = getattr(transport, "setTcpNoDelay", None)
    if set_option is not None:
        set_option(True)


def _half_close_sink(transport: Any) -> None:
    # Twisted postpones loseWriteConnection/loseConnection while a paused
    # streaming producer is registered (a drained buffer resumes the producer
    # instead of closing), so stop being the producer first: once the peer
    # has finished sending there is nothing left to hold back.
    transport.unregisterProducer()
    transport.loseWriteConnection()


def _close_sink(transport: Any) -> None:
    transport.unregisterProducer()
    transport.loseConnection()


@implementer(IPushProducer)
class Stream:
    """One tunneled connection.  See the module docstring for the rules."""

    __slots__ = (
        "mux",
        "id",
        "tunnel",
        "peer",
        "send_window",
        "recv_window",
        "bytes_in",
        "bytes_out",
        "_send_buffer",
        "_eof_pending",
        "_close_pending",
        "fin_sent",
        "fin_received",
        "closed",
        "_transport",
        "_source_paused",
        "_sink_paused",
        "_inbox",
        "_unacked",
        "close_reason",
        "send_bucket",
        "recv_bucket",
        "_rate_paused",
        "_credit_held",
        "recv_limit",
        "_small_reads",
    )

    def __init__(self, mux: "MuxProtocol", stream_id: int, tunnel: str, peer: str) -> None:
        self.mux = mux
        self.id = stream_id
        self.tunnel = tunnel
        self.peer = peer
        window = INITIAL_WINDOW if mux is None else mux.initial_window  # (tests make streams without a mux)
        self.send_window = window
        self.recv_window = window
        #: what ``recv_window`` and the bytes not yet credited add up to (grown by ``mux.budget``)
        self.recv_limit = window
        #: our socket is read in small pieces while both windows are small (``gotaxy.budget``)
        self._small_reads = mux is not None and mux.budget is not None
        self.bytes_in = 0  #: bytes received from the peer (written to our socket)
        self.bytes_out = 0  #: bytes read from our socket (sent to the peer)
        # Made when first needed: an empty deque is 760 bytes, a third of what
        # an idle stream costs (10,000 idle streams: 7 MiB on each side).
        self._send_buffer: Optional[Deque[bytes]] = None
        self._eof_pending = False
        self._close_pending: Optional[str] = None
        self.fin_sent = False
        self.fin_received = False
        self.closed = False
        self._transport: Any = None
        self._source_paused = False
        self._sink_paused = False
        self._inbox: Optional[list] = []  # data that arrived before attach()
        self._unacked = 0
        self.close_reason: Optional[str] = None
        #: bandwidth limits (``gotaxy.bandwidth.TokenBucket``) on what we send and receive; None: none
        self.send_bucket: Any = None
        self.recv_bucket: Any = None
        self._rate_paused = False  # our socket waits for send_bucket
        self._credit_held = False  # window credit waits for recv_bucket

    # -- wiring ------------------------------------------------------------

    def attach(self, transport: Any) -> None:
        """
        Splice this stream to a TCP transport: what the peer sends is written
        to it, and ``write`` is fed by its ``dataReceived``.
        """
        self._transport = transport
        if self._small_reads:
            _set_read_size(transport, SMALL_READ)
        transport.registerProducer(self, True)
        inbox, self._inbox = self._inbox, None
        for chunk in inbox or ():
            transport.write(chunk)
            self._consumed(len(chunk))
        if self.closed:
            _close_sink(transport)
        elif self.fin_received:
            _half_close_sink(transport)
        self._update_source()

    # -- our socket -> peer --------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send bytes read from our socket to the peer."""
        if self.closed or self.fin_sent or self._eof_pending:
            return
        n = len(data)
        self.bytes_out += n
        if self.send_bucket is not None:
            self._spend_send(n)
        mux = self.mux
        if not self._send_buffer and n <= self.send_window and n <= MAX_DATA and not mux.paused:
            self.send_window -= n
            mux.transport.write(encode_frame(_DATA_HEADER, self.id, data))
            return
        buffer = self._send_buffer
        if buffer is None:
            buffer = self._send_buffer = deque()
        buffer.append(data)
        self._flush()
        self._update_source()

    def _spend_send(self, n: int) -> None:
        # The bytes were read already and go out as usual; past the limit the
        # socket stops being read until the bucket has refilled.
        if not self.send_bucket.spend(n) and not self._rate_paused:
            self._rate_paused = True
            self.send_bucket.wait(self._send_refilled)
            self._update_source()

    def _send_refilled(self) -> None:
        self._rate_paused = False
        self._update_source()

    def write_eof(self) -> None:
        """Our socket will send no more: half-close towards the peer."""
        if self.closed or self.fin_sent:
            return
        self._eof_pending = True
        self._flush()

    def cut(self, reason: str) -> None:
        """End the stream from our side: reset our socket and tell the peer (what is buffered is dropped)."""
        transport = self._transport
        self._send_buffer = None
        self.local_closed(CLOSE_ERROR_PREFIX + reason if not reason.startswith(CLOSE_ERROR_PREFIX) else reason)
        if transport is not None:
            transport.abortConnection()

    def local_closed(self, reason: str) -> None:
        """Our socket is gone; tell the peer once our buffered data is out."""
        self._transport = None
        if self.closed:
            return
        self._close_pending = reason
        self._flush()

    def _flush(self) -> None:
        mux = self.mux
        buffer = self._send_buffer
        if buffer and mux.paused:
            mux.held_streams.add(self)  # flushed when the connection takes data again
            return
        write = mux.transport.write
        while buffer and self.send_window > 0:
            chunk = buffer[0]
            take = min(len(chunk), self.send_window, MAX_DATA)
            if take == len(chunk):
                buffer.popleft()
            else:
                buffer[0] = chunk[take:]
                chunk = chunk[:take]
            self.send_window -= take
            write(encode_frame(_DATA_HEADER, self.id, chunk))
        if buffer:
            return
        if self._eof_pending and not self.fin_sent:
            self._eof_pending = False
            self.fin_sent = True
            write(encode_frame(FrameType.FIN, self.id))
        if self._close_pending is not None and not self.closed:
            write(encode_close(self.id, self._close_pending))
            self._finish(self._close_pending)

    def _update_source(self) -> None:
        transport = self._transport
        if transport is None:
            return
        # A paused connection holds what a stream reads in the stream's own
        # buffer (``_flush``), which pauses its socket here: sockets are paused
        # one by one as data comes, not all 10,000 at every pause of the connection.
        want_paused = bool(self._send_buffer) or self._rate_paused
        if want_paused != self._source_paused:
            self._source_paused = want_paused
            if want_paused:
                transport.pauseProducing()
            else:
                transport.resumeProducing()

    # -- peer -> our socket ---------------------------------------------------

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self.recv_window -= n
        if self.recv_window < 0:
            raise ProtocolError(f"stream {self.id}: peer sent beyond its flow-control window")
        self.bytes_in += n
        if self._transport is not None:
            self._transport.write(data)
            self._consumed(n)
        elif self._inbox is not None:
            self._inbox.append(data)
        # else: our socket is gone; the data is dropped and never credited.

    def _consumed(self, n: int) -> None:
        self._unacked += n
        bucket = self.recv_bucket
        if bucket is not None and not bucket.spend(n) and not self._credit_held:
            # Past the limit: the peer gets no more window until the bucket refills.
            self._credit_held = True
            bucket.wait(self._credit_refilled)
        if not self._sink_paused and not self._credit_held and self._unacked >= self.recv_limit >> 2:
            self._send_credit()

    def _credit_refilled(self) -> None:
        self._credit_held = False
        if not self._sink_paused and not self.closed and self._unacked >= self.recv_limit >> 2:
            self._send_credit()

    def _send_credit(self) -> None:
        credit, self._unacked = self._unacked, 0
        budget = self.mux.budget
        if budget is not None:
            if self.closed:
                return  # its part of the pool went back as it closed
            credit = budget.credit(self, credit)  # grown, or less while it gives back its share
            if not credit:
                return
        self.recv_window += credit
        self.mux.transport.write(encode_frame(FrameType.WINDOW, self.id, WINDOW_INCREMENT.pack(credit)))

    def window_received(self, increment: int) -> None:
        self.send_window += increment
        if self.send_window > MAX_WINDOW:
            raise ProtocolError(f"stream {self.id}: window grew beyond {MAX_WINDOW}")
        if self._small_reads and self.send_window > SMALL_READ:
            self.widen_reads()
        self._flush()
        self._update_source()

    def fin_received_from_peer(self) -> None:
        if self.fin_received:
            raise ProtocolError(f"stream {self.id}: second FIN")
        self.fin_received = True
        if self._transport is not None:
            _half_close_sink(self._transport)

    def close_received(self, reason: str) -> None:
        """The peer is done: flush what we have to our socket and close it."""
        transport = self._transport
        inbox = self._inbox
        self._finish(reason)
        if transport is not None:
            _close_sink(transport)
        else:
            # Not attached yet: attach() still delivers what arrived, then closes.
            self._inbox = inbox

    def abort(self, reason: str) -> None:
        """The mux connection is gone: reset our socket, drop everything."""
        transport = self._transport
        self._send_buffer = None
        self._finish(reason)
        if transport is not None:
            transport.abortConnection()

    def _finish(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self._inbox = None
        self.mux.stream_closed(self)

    # -- the connection's budget (``gotaxy.budget``) ------------------------------

    def widen_reads(self) -> None:
        """A window of this stream outgrew ``SMALL_READ``: read its socket in Twisted's usual pieces."""
        if self._small_reads:
            self._small_reads = False
            if self._transport is not None:
                _set_read_size(self._transport, TWISTED_READ)

    def buffered(self) -> int:
        """Bytes this stream holds in this process now: waiting for window, before attach, in its socket's output."""
        held = sum(map(len, self._send_buffer or ())) + sum(map(len, self._inbox or ()))
        return held + _output_backlog(self._transport)

    # -- IPushProducer: our socket's send buffer tells us to hold credit --------

    def pauseProducing(self) -> None:
        self._sink_paused = True

    def resumeProducing(self) -> None:
        self._sink_paused = False
        if self._unacked >= self.recv_limit >> 2 and not self.closed and not self._credit_held:
            self._send_credit()

    def stopProducing(self) -> None:
        self._sink_paused = True


def _set_read_size(transport: Any, size: int) -> None:
    # Twisted's bufferSize is both how much a read takes and how much
    # buffered output pauses its producer; transports without it (TLS, test
    # doubles) keep what they do.
    if isinstance(getattr(transport, "bufferSize", None), int):
        transport.bufferSize = size


def _output_backlog(transport: Any) -> int:
    """Bytes written to a Twisted socket transport that its socket has not taken yet (0 if it cannot tell)."""
    if transport is None:
        return 0
    data = getattr(transport, "dataBuffer", None)
    if data is None:
        return 0
    return len(data) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)


class Flow:
    """
    One datagram association (a UDP tunnel's visitor): whole datagrams both
    ways, dropped rather than queued.  See "Datagram flows" above.

    ``receiver`` is called with each datagram from the peer; ``on_close``
    once, with the reason, when the flow ends for any reason but our own
    ``close``.
    """

    __slots__ = (
        "mux", "id", "tunnel", "peer", "bytes_in", "bytes_out", "datagrams_in", "datagrams_out",
        "closed", "close_reason", "receiver", "on_close", "send_bucket", "recv_bucket",
    )

    #: Not a byte stream (``gotaxy.bandwidth`` tells them apart).
    is_flow = True

    def __init__(self, mux: "MuxProtocol", flow_id: int, tunnel: str, peer: str) -> None:
        self.mux = mux
        self.id = flow_id
        self.tunnel = tunnel
        self.peer = peer
        self.bytes_in = 0  #: bytes of datagrams from the peer (as a Stream counts them)
        self.bytes_out = 0  #: bytes of datagrams sent to the peer
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.closed = False
        self.close_reason: Optional[str] = None
        self.receiver: Any = None
        self.on_close: Any = None
        #: the tunnel's bandwidth limit (``gotaxy.bandwidth.TokenBucket``) on what we send and receive; None: none.
        #: The proxy type takes each datagram from them, or drops it (``gotaxy.proxy.udp``).
        self.send_bucket: Any = None
        self.recv_bucket: Any = None

    def send(self, datagram: bytes) -> bool:
        """
        Send one datagram to the peer now; False (dropped) if the connection
        is backed up, the datagrams have used their share of busy streams'
        connection, or the flow is closed.
        """
        mux = self.mux
        if self.closed or mux.paused or mux.disconnecting or len(datagram) > MAX_DATAGRAM:
            return False
        if not mux.datagram_share.allow(len(datagram)) or mux.buffered_output() > DATAGRAM_BACKLOG:
            return False
        self.bytes_out += len(datagram)
        self.datagrams_out += 1
        mux.transport.write(encode_frame(_DATAGRAM, self.id, datagram))
        return True

    def datagram_received(self, datagram: bytes) -> None:
        self.bytes_in += len(datagram)
        self.datagrams_in += 1
        receiver = self.receiver
        if receiver is not None:
            receiver(datagram)

    def close(self, reason: str) -> None:
        """We are done with it: tell the peer (``on_close`` is not called)."""
        if self.closed:
            return
        self._finish(reason)
        if not self.mux.disconnecting:
            self.mux.transport.write(encode_close(self.id, reason))

    def close_received(self, reason: str) -> None:
        self._ended(reason)

    def abort(self, reason: str) -> None:
        """The connection is gone."""
        self._ended(reason)

    def _ended(self, reason: str) -> None:
        if self.closed:
            return
        self._finish(reason)
        on_close = self.on_close
        if on_close is not None:
            on_close(reason)

    def _finish(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self.mux.flows.pop(self.id, None)


class DatagramShare:
    """
    What datagrams may send on one connection while its streams are busy:
    in each ``DATAGRAM_SHARE_PERIOD``, datagrams charged their bytes plus
    ``DATAGRAM_OVERHEAD`` each up to ``DATAGRAM_SHARE`` of the bytes the
    streams moved per period since the last reckoning, and at least
    ``DATAGRAM_SHARE_FLOOR`` (when they moved less than
    ``DATAGRAM_SHARE_BUSY`` per period, no limit).  Reckoned when a datagram
    asks, on the mux's reactor (none: no limit); no timer, and nothing is
    added to a stream's work per chunk.
    """

    __slots__ = ("mux", "budget", "renew_at", "since", "mark", "spent")

    def __init__(self, mux: "MuxProtocol") -> None:
        self.mux = mux
        self.budget: Optional[float] = None  #: what datagrams may still cost this period; None: no limit
        self.renew_at = 0.0
        self.since: Optional[float] = None  #: when the share was last reckoned
        self.mark = 0  #: the streams' byte count then
        self.spent = False  #: a datagram was refused this period

    def allow(self, n: int) -> bool:
        """May a datagram of ``n`` bytes go now? (It is counted as sent if so.)"""
        reactor = self.mux.reactor
        if reactor is None:
            return True
        now = reactor.seconds()
        if now >= self.renew_at:
            self._renew(now)
        budget = self.budget
        if budget is None:
            return True
        n += DATAGRAM_OVERHEAD
        if budget < n:
            self.spent = True
            return False
        self.budget = budget - n
        return True

    def wait(self) -> float:
        """Seconds until datagrams get more room, if their share is what refused one this period (else 0)."""
        reactor = self.mux.reactor
        if not self.spent or reactor is None:
            return 0.0
        return max(0.0, self.renew_at - reactor.seconds())

    def _renew(self, now: float) -> None:
        moved = self.mux.stream_bytes()
        since, self.since = self.since, now
        streamed, self.mark = max(0, moved - self.mark), moved
        self.renew_at = now + DATAGRAM_SHARE_PERIOD
        self.spent = False
        if since is None:
            self.budget = None
            return
        per_period = streamed * DATAGRAM_SHARE_PERIOD / max(now - since, DATAGRAM_SHARE_PERIOD)
        self.budget = (max(per_period * DATAGRAM_SHARE, DATAGRAM_SHARE_FLOOR)
                       if per_period >= DATAGRAM_SHARE_BUSY else None)


@implementer(IPushProducer)
class MuxProtocol(Protocol):
    """
    The frame layer of a control connection, shared by both ends.

    Subclasses implement ``control_received`` (JSON messages on stream 0),
    ``stream_opened`` (a peer-opened stream, client side only in protocol
    v1), ``stream_closed`` bookkeeping via ``super()``, and decide when the
    peer is ``authenticated`` (before that only CONTROL frames are
    accepted).
    """

    #: True on the side that accepted the TCP connection (the server).
    is_server = False
    log = Logger()
    #: Seconds a full send buffer may go without draining (see the module
    #: docstring); needs ``reactor`` to be set.
    write_stall_timeout = WRITE_STALL_TIMEOUT
    reactor: Any = None

    def __init__(self) -> None:
        self.streams: Dict[int, Stream] = {}
        #: datagram flows (UDP tunnels' visitors), by id
        self.flows: Dict[int, Flow] = {}
        #: what a proxy type keeps per connection, under its own name (udp: its associations)
        self.proxy_state: Dict[str, Any] = {}
        #: how much of the connection datagrams may take while streams are busy
        self.datagram_share = DatagramShare(self)
        #: bytes (both ways) of the streams that have ended, for ``stream_bytes``
        self._ended_stream_bytes = 0
        self.decoder = FrameDecoder(self._frame_received, self._data_received)
        self.paused = False
        self.authenticated = False
        self.disconnecting = False
        self.max_streams = MAX_STREAMS
        #: the window every new stream starts with, each way; the budget shares the rest (``gotaxy.budget``)
        self.initial_window = INITIAL_WINDOW
        self.budget: Optional[WindowBudget] = None
        #: streams holding data while the connection is paused, flushed when it resumes
        self.held_streams: Set[Stream] = set()
        #: Open streams per tunnel name, for the fair shares.
        self.tunnel_streams: Dict[str, int] = {}
        self._preamble: Optional[bytes] = b"" if self.is_server else None
        # Server-opened streams are even, client-opened odd (reserved).
        self._next_stream_id = 2 if self.is_server else 1
        self._highest_peer_stream = 0
        self.peer_address = "?"
        self._stall_check: Any = None
        self._stall_waiting = 0

    # -- Protocol ------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_address = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        set_no_delay(self.transport)  # a TLS transport passes it to its TCP transport
        # Twisted pauses a producer once 64 KiB wait in the socket's buffer,
        # which for a mux carrying 64 KiB frames means a pause and a resume
        # of every stream's socket per frame.  A larger buffer keeps the
        # pipe full and pauses only on a real backlog.
        tcp = getattr(self.transport, "transport", self.transport)
        if isinstance(getattr(tcp, "bufferSize", None), int):
            tcp.bufferSize = MUX_SOCKET_BUFFER
            # Twisted sends at most 128 KiB per turn of the reactor; let one
            # send() take all that may wait.  10 % more Gbit/s and 2 to 4 %
            # less CPU per GB with the relayed sockets' own limit raised
            # too (gotaxy.relay.large_sends; issue 15, compare.py).
            tcp.SEND_LIMIT = MUX_SOCKET_BUFFER
        self.transport.registerProducer(self, True)

    def send_preamble(self) -> None:
        self.transport.write(PREAMBLE.pack(PREAMBLE_MAGIC, PROTOCOL_VERSION))

    def dataReceived(self, data: bytes) -> None:
        if self.disconnecting:
            # Closing: what the peer sends now is not read (a TLS transport
            # may still deliver it after loseConnection).
            return
        try:
            if self._preamble is not None:
                data = self._read_preamble(data)
                if not data:
                    return
            self.decoder.feed(data)
        except ProtocolError as e:
            self.protocol_error(str(e))

    def _read_preamble(self, data: bytes) -> bytes:
        assert self._preamble is not None
        buffered = self._preamble + data
        if buffered[: len(PREAMBLE_MAGIC)] != PREAMBLE_MAGIC[: len(buffered)]:
            raise ProtocolError("not a Gotaxy client (bad preamble)")
        if len(buffered) < PREAMBLE.size:
            self._preamble = buffered
            return b""
        _, version = PREAMBLE.unpack_from(buffered)
        self._preamble = None
        if version != PROTOCOL_VERSION:
            self.version_mismatch(version)
            self.disconnecting = True  # nothing more it sends is read
            return b""
        return buffered[PREAMBLE.size :]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._stop_stall_watch()
        text = reason.getErrorMessage() if reason is not None else "connection closed"
        for stream in list(self.streams.values()):
            stream.abort(f"tunnel connection lost: {text}")
        self.streams.clear()
        self.tunnel_streams.clear()
        for flow in list(self.flows.values()):
            flow.abort(f"tunnel connection lost: {text}")
        self.flows.clear()

    # -- IPushProducer: the TLS transport's buffer -----------------------------

    def pauseProducing(self) -> None:
        # No stream is told: each holds what it reads next and pauses its own
        # socket then (``Stream._flush``).  Pausing and resuming every socket
        # at each pause of the connection cost 60 % of both processes' time
        # with 10,000 streams open (20,000 epoll changes per pause and resume).
        self.paused = True
        self._watch_stall()

    def resumeProducing(self) -> None:
        self.paused = False
        self._stop_stall_watch()
        held, self.held_streams = self.held_streams, set()
        for stream in held:
            if not stream.closed:
                stream._flush()
                stream._update_source()

    def stopProducing(self) -> None:
        self.paused = True

    # -- a peer that does not read ---------------------------------------------

    def buffered_output(self) -> int:
        """Bytes written toward the peer that its socket has not taken yet."""
        transport = self.transport
        waiting = sum(map(len, getattr(transport, "_appSendBuffer", ())))  # TLS, before the handshake
        tcp = getattr(transport, "transport", transport)  # a TLS transport's TCP transport
        data = getattr(tcp, "dataBuffer", None)
        if data is not None:
            waiting += len(data) - getattr(tcp, "offset", 0) + getattr(tcp, "_tempDataLen", 0)
        return waiting

    def _watch_stall(self) -> None:
        if self.reactor is None or self._stall_check is not None or self.disconnecting:
            return
        self._stall_waiting = self.buffered_output()
        self._stall_check = self.reactor.callLater(self.write_stall_timeout, self._check_stall)

    def _stop_stall_watch(self) -> None:
        if self._stall_check is not None and self._stall_check.active():
            self._stall_check.cancel()
        self._stall_check = None

    def _check_stall(self) -> None:
        self._stall_check = None
        if not self.paused or self.disconnecting:
            return
        waiting = self.buffered_output()
        if waiting >= self._stall_waiting:
            self.drop_unread(
                f"it has read nothing for {self.write_stall_timeout:g} s ({waiting} bytes are waiting for it)"
            )
            return
        self._watch_stall()  # it reads, slowly: keep watching

    def drop_unread(self, reason: str) -> None:
        """Drop a peer that does not read what we send (nothing more can reach it)."""
        self.log.warn("dropping connection from {peer}: {reason}", peer=self.peer_address, reason=reason)
        self.disconnecting = True
        self._stop_stall_watch()
        self.transport.abortConnection()

    def _write_answer(self, data: bytes) -> None:
        """Write a frame the peer asked for, unless too much waits for it already."""
        if self.disconnecting:
            return
        if self.paused and self.buffered_output() > MAX_BUFFERED_OUTPUT:
            self.drop_unread(f"it does not read what we send ({MAX_BUFFERED_OUTPUT} bytes are waiting for it)")
            return
        self.transport.write(data)

    # -- frames in -----------------------------------------------------------

    def _data_received(self, stream_id: int, chunk: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id in self.flows:
                raise ProtocolError(f"DATA frame for datagram flow {stream_id}")
            self._unknown_stream(stream_id, FrameType.DATA)
            return
        stream.data_received(chunk)

    def _frame_received(self, frame_type: int, stream_id: int, payload: bytes) -> None:
        if frame_type == FrameType.CONTROL:
            if stream_id != 0:
                raise ProtocolError("CONTROL frame on a data stream")
            self.control_received(decode_json(payload))
            return
        if not self.authenticated:
            # Nothing but the log-in is answered before log-in, PING included.
            raise ProtocolError(f"{FrameType(frame_type).name} frame before login")
        if frame_type == FrameType.PING:
            # While the peer has not taken what we sent, a PONG would only
            # queue up behind it; any frame proves we are alive anyway.
            if not self.paused:
                self.transport.write(encode_frame(FrameType.PONG, 0, payload))
            return
        if frame_type == FrameType.PONG:
            self.pong_received(payload)
            return
        if frame_type == FrameType.OPEN:
            self._open_received(stream_id, payload)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            flow = self.flows.get(stream_id)
            if flow is not None:
                self._flow_frame(flow, frame_type, payload)
            else:
                self._unknown_stream(stream_id, frame_type)
            return
        if frame_type == FrameType.DATAGRAM:
            raise ProtocolError(f"DATAGRAM frame for stream {stream_id}, which is a byte stream")
        if frame_type == FrameType.WINDOW:
            (increment,) = WINDOW_INCREMENT.unpack(payload.rjust(4, b"\0"))
            stream.window_received(increment)
        elif frame_type == FrameType.FIN:
            stream.fin_received_from_peer()
        elif frame_type == FrameType.CLOSE:
            stream.close_received(payload.decode("utf-8", "replace") or "closed by peer")

    def _flow_frame(self, flow: Flow, frame_type: int, payload: bytes) -> None:
        if frame_type == FrameType.DATAGRAM:
            flow.datagram_received(payload)
        elif frame_type == FrameType.CLOSE:
            flow.close_received(payload.decode("utf-8", "replace") or "closed by peer")
        else:
            raise ProtocolError(f"{FrameType(frame_type).name} frame for datagram flow {flow.id}")

    def _unknown_stream(self, stream_id: int, frame_type: int) -> None:
        if not self.authenticated:
            raise ProtocolError(f"{FrameType(frame_type).name} frame before login")
        # Frames for a stream we already closed are expected and dropped; a
        # stream that was never opened is a peer bug.
        ours = (stream_id % 2 == 0) == self.is_server
        if stream_id == 0 or (ours and stream_id >= self._next_stream_id) or (
            not ours and stream_id > self._highest_peer_stream
        ):
            raise ProtocolError(f"{FrameType(frame_type).name} frame for stream {stream_id}, which was never opened")

    def _open_received(self, stream_id: int, payload: bytes) -> None:
        if self.is_server or stream_id % 2 or stream_id <= self._highest_peer_stream:
            raise ProtocolError(f"invalid OPEN for stream {stream_id}")
        self._highest_peer_stream = stream_id
        header = decode_json(payload)
        if header.get("mode") == "datagram":
            flow = Flow(self, stream_id, str(header.get("tunnel", ""))[:256], str(header.get("peer", "?"))[:64])
            if len(self.flows) >= MAX_FLOWS:
                self._write_answer(encode_close(stream_id, "too many datagram flows"))
                return
            self.flows[stream_id] = flow
            self.flow_opened(flow)
            return
        stream = Stream(self, stream_id, str(header.get("tunnel", "")), str(header.get("peer", "?")))
        if len(self.streams) >= self.max_streams:
            reason = f"this side has {len(self.streams)} connections open, the most it takes"
            # Not an error reason: the server would log each one; this side says it once per interval.
            self._write_answer(encode_close(stream_id, reason))
            self.stream_refused(stream.tunnel[:256], reason)
            return
        self._add_stream(stream)
        self.stream_opened(stream)

    # -- frames out ----------------------------------------------------------

    def send_control(self, message: Dict[str, Any]) -> None:
        self._write_answer(encode_control(message))

    def send_ping(self, payload: bytes) -> None:
        self.transport.write(encode_frame(FrameType.PING, 0, payload))

    def open_stream(self, tunnel: str, peer: str) -> Optional[Stream]:
        """Open a stream towards the peer, or None if no more can be opened (see ``stream_refusal``)."""
        if self.stream_refusal(tunnel) is not None:
            return None
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        stream = Stream(self, stream_id, tunnel, peer)
        self._add_stream(stream)
        self.transport.write(encode_json(FrameType.OPEN, stream_id, {"tunnel": tunnel, "peer": peer}))
        return stream

    def open_flow(self, tunnel: str, peer: str) -> Optional[Flow]:
        """
        Open a datagram flow towards the peer for one visitor, or None if none
        can be opened now: also while the connection is backed up, so that a
        flood of new (spoofed) source addresses cannot queue OPEN frames
        any more than datagrams.
        """
        if self.disconnecting or self._next_stream_id > _MAX_STREAM_ID or len(self.flows) >= MAX_FLOWS:
            return None
        if self.paused or self.buffered_output() > DATAGRAM_BACKLOG:
            return None
        flow_id = self._next_stream_id
        self._next_stream_id += 2
        flow = Flow(self, flow_id, tunnel, peer)
        self.flows[flow_id] = flow
        self.transport.write(encode_json(FrameType.OPEN, flow_id, {"tunnel": tunnel, "peer": peer, "mode": "datagram"}))
        return flow

    def stream_refusal(self, tunnel: str) -> Optional[str]:
        """Why no stream for ``tunnel`` can open now (a clause for a log line), or None if one can."""
        if self.disconnecting:
            return "the client's connection is closing"
        if self._next_stream_id > _MAX_STREAM_ID:
            return "the client's connection has used up its stream ids and must reconnect"
        total = len(self.streams)
        if total >= self.max_streams:
            return f"the client has {total} connections open, the most one client may have"
        tunnels = self.fair_share_tunnels()
        if len(tunnels) > 1:
            reserve = min(TUNNEL_RESERVE, self.max_streams // len(tunnels))
            counts = self.tunnel_streams
            kept = sum(max(0, reserve - counts.get(name, 0)) for name in tunnels if name != tunnel)
            if total + 1 + kept > self.max_streams:
                return (
                    f"it has {counts.get(tunnel, 0)} connections open, its fair share of the client's "
                    f"{self.max_streams}: the rest are kept for the client's {len(tunnels) - 1} other "
                    f"tunnel(s), {reserve} each"
                )
        return None

    def use_window_budget(self, pool: int = WINDOW_POOL) -> None:
        """
        Both sides announced ``window_budget``: streams from now on start
        small and grow from the connection's pool (before any stream opens).
        """
        if self.streams:
            raise ProtocolError("the window budget must be agreed on before any stream opens")
        self.budget = WindowBudget(pool)
        self.initial_window = SMALL_WINDOW

    def use_legacy_windows(self) -> None:
        """The peer has no window budget: fixed 512 KiB windows, and the stream limit that bounds them."""
        self.max_streams = min(self.max_streams, LEGACY_MAX_STREAMS)

    def buffered_bytes(self) -> int:
        """Bytes this side holds for its streams now (``Stream.buffered``), all streams together."""
        return sum(stream.buffered() for stream in self.streams.values())

    def window_bytes(self) -> int:
        """What the streams' receive windows add up to: the most the peer may make us hold."""
        return sum(stream.recv_limit for stream in self.streams.values())

    def _add_stream(self, stream: Stream) -> None:
        self.streams[stream.id] = stream
        self.tunnel_streams[stream.tunnel] = self.tunnel_streams.get(stream.tunnel, 0) + 1

    def protocol_error(self, reason: str) -> None:
        self.log.warn("dropping connection from {peer}: protocol error: {reason}", peer=self.peer_address, reason=reason)
        self.close_with_error(f"protocol error: {reason}")

    def close_with_error(self, reason: str) -> None:
        if self.disconnecting:
            return
        try:
            self.send_control({"type": "error", "reason": reason})
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection after what was written so far."""
        self.disconnecting = True
        # A TLS transport waits for its producer to unregister before it
        # shuts down, and we are that producer.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- hooks ---------------------------------------------------------------

    def stream_bytes(self) -> int:
        """Bytes the connection's streams have moved, both ways, since it opened (``DatagramShare``)."""
        return self._ended_stream_bytes + sum(s.bytes_in + s.bytes_out for s in self.streams.values())

    def stream_closed(self, stream: Stream) -> None:
        if self.streams.pop(stream.id, None) is not None:
            self.held_streams.discard(stream)
            self._ended_stream_bytes += stream.bytes_in + stream.bytes_out
            if self.budget is not None:
                self.budget.release(stream)
            left = self.tunnel_streams[stream.tunnel] - 1
            if left:
                self.tunnel_streams[stream.tunnel] = left
            else:
                del self.tunnel_streams[stream.tunnel]

    def stream_refused(self, tunnel: str, reason: str) -> None:
        """We refused a stream the peer opened for ``tunnel`` (the client side: its own stream limit)."""

    def fair_share_tunnels(self) -> Collection[str]:
        """The tunnels that share this connection's streams fairly (none: first come, first served)."""
        return ()

    def control_received(self, message: Dict[str, Any]) -> None:
        raise NotImplementedError

    def version_mismatch(self, version: int) -> None:
        """The peer's preamble names another protocol version (the server's side reads preambles)."""
        raise ProtocolError(
            f"client speaks protocol version {version}, this server speaks {PROTOCOL_VERSION}; upgrade the older side"
        )

    def stream_opened(self, stream: Stream) -> None:
        raise NotImplementedError

    def flow_opened(self, flow: Flow) -> None:
        """The peer opened a datagram flow (client side); by default it is refused."""
        flow.close("datagram flows are not supported here")

    def pong_received(self, payload: bytes) -> None:
        pass
