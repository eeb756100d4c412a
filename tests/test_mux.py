"""
Tests for gotaxy.mux and gotaxy.relay: streams over one connection, their
flow-control windows, backpressure both ways, and closing.

Two ``MuxProtocol``s talk over in-memory transports that the tests pump by
hand, so each test decides exactly when frames cross.  Every stream is
attached to a ``FakeTCP`` transport that stands for the socket it is spliced
to (the public connection on the server, the local service on the client).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gotaxy.mux import MAX_BUFFERED_OUTPUT, MuxProtocol, Stream
from gotaxy.relay import StreamRelay
from gotaxy.wire import (
    INITIAL_WINDOW,
    MAX_DATA,
    PREAMBLE,
    PREAMBLE_MAGIC,
    PROTOCOL_VERSION,
    WINDOW_INCREMENT,
    FrameDecoder,
    FrameType,
    encode_control,
    encode_frame,
    encode_json,
)

CURRENT_PREAMBLE = PREAMBLE.pack(PREAMBLE_MAGIC, PROTOCOL_VERSION)


class FakeTCP(StringTransport):
    """
    A TCP transport that records half-closes.  ``lose_write_log`` remembers
    how many bytes had been written when the write side was shut, so tests
    can check that FIN came after the data.  Like a real TCP transport it
    tells a half-closeable protocol that its write side is done.
    """

    def __init__(self) -> None:
        super().__init__(lenient=True)
        self.write_closed = False
        self.bytes_at_write_close: Optional[int] = None
        self.bytes_at_close: Optional[int] = None
        self.protocol: Any = None

    def unregisterProducer(self) -> None:
        # Real TCP transports allow this without a producer.
        self.producer = None
        self.streaming = None

    def loseWriteConnection(self) -> None:
        self.write_closed = True
        self.bytes_at_write_close = len(self.value())
        if IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.writeConnectionLost()

    def loseConnection(self) -> None:
        if self.bytes_at_close is None:
            self.bytes_at_close = len(self.value())
        super().loseConnection()


class TestMux(MuxProtocol):
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        super().__init__()
        self.controls: List[Dict[str, Any]] = []
        self.opened: List[Stream] = []

    def control_received(self, message: Dict[str, Any]) -> None:
        self.controls.append(message)

    def stream_opened(self, stream: Stream) -> None:
        self.opened.append(stream)


class ServerMux(TestMux):
    is_server = True


class ClientMux(TestMux):
    is_server = False


def frames(data: bytes) -> List[Tuple[int, int, bytes]]:
    """Decode bytes written by a mux; DATA pieces come back one per frame."""
    out: List[Tuple[int, int, bytes]] = []
    decoder = FrameDecoder(lambda t, s, p: out.append((t, s, p)), lambda s, c: out.append((FrameType.DATA, s, c)))
    decoder.feed(data)
    return out


def data_bytes(data: bytes, stream_id: int) -> int:
    return sum(len(p) for t, s, p in frames(data) if t == FrameType.DATA and s == stream_id)


class Pair:
    """A server and a client mux joined by two hand-pumped transports."""

    def __init__(self) -> None:
        self.server = ServerMux()
        self.client = ClientMux()
        self.server.makeConnection(StringTransport())
        self.client.makeConnection(StringTransport())
        self.client.send_preamble()
        self.deliver_to_server()
        self.server.authenticated = self.client.authenticated = True

    def deliver_to_server(self) -> bytes:
        data = self.client.transport.value()
        self.client.transport.clear()
        self.server.dataReceived(data)
        return data

    def deliver_to_client(self) -> bytes:
        data = self.server.transport.value()
        self.server.transport.clear()
        self.client.dataReceived(data)
        return data

    def pump(self, rounds: int = 1000) -> None:
        for _ in range(rounds):
            if not (self.server.transport.value() or self.client.transport.value()):
                return
            self.deliver_to_client()
            self.deliver_to_server()
        raise AssertionError("the two sides never went quiet")

    def open(self, tunnel: str = "web") -> Tuple[Stream, Stream, FakeTCP, FakeTCP]:
        """A stream attached on both ends: (server stream, client stream, public socket, local socket)."""
        s = self.server.open_stream(tunnel, "203.0.113.9:50000")
        assert s is not None
        self.deliver_to_client()
        c = self.client.opened[-1]
        assert (c.id, c.tunnel, c.peer) == (s.id, tunnel, "203.0.113.9:50000")
        public, local = FakeTCP(), FakeTCP()
        s.attach(public)
        c.attach(local)
        return s, c, public, local


def last_error(transport: StringTransport) -> Optional[str]:
    controls = [json.loads(p) for t, _, p in frames(transport.value()) if t == FrameType.CONTROL]
    errors = [m["reason"] for m in controls if m.get("type") == "error"]
    return errors[-1] if errors else None


# -- the connection ----------------------------------------------------------


def test_preamble_may_arrive_in_pieces() -> None:
    server = ServerMux()
    server.makeConnection(StringTransport())
    preamble = CURRENT_PREAMBLE
    for i in range(len(preamble)):
        server.dataReceived(preamble[i : i + 1])
    server.dataReceived(encode_control({"type": "login"}))
    assert server.controls == [{"type": "login"}]
    assert not server.transport.disconnecting


def test_preamble_and_first_frame_in_one_read() -> None:
    server = ServerMux()
    server.makeConnection(StringTransport())
    server.dataReceived(CURRENT_PREAMBLE + encode_control({"type": "login"}))
    assert server.controls == [{"type": "login"}]


def test_wrong_magic_is_refused_at_the_first_bad_byte() -> None:
    server = ServerMux()
    server.makeConnection(StringTransport())
    server.dataReceived(b"GET ")
    assert server.transport.disconnecting
    assert "bad preamble" in last_error(server.transport)


def test_other_protocol_version_is_refused_with_advice() -> None:
    server = ServerMux()
    server.makeConnection(StringTransport())
    server.dataReceived(PREAMBLE.pack(PREAMBLE_MAGIC, PROTOCOL_VERSION + 1))
    assert server.transport.disconnecting
    assert "upgrade" in last_error(server.transport)


def test_only_control_before_login() -> None:
    server = ServerMux()
    server.makeConnection(StringTransport())
    server.dataReceived(CURRENT_PREAMBLE)
    server.dataReceived(encode_control({"type": "login"}))
    assert server.controls == [{"type": "login"}]
    server.dataReceived(encode_frame(FrameType.DATA, 2, b"sneaky"))
    assert server.transport.disconnecting
    assert "before login" in last_error(server.transport)


def test_ping_before_login_is_not_answered_but_a_protocol_error() -> None:
    server = ServerMux()
    server.makeConnection(StringTransport())
    server.dataReceived(CURRENT_PREAMBLE + encode_frame(FrameType.PING, 0, b"abcdefgh") * 1000)
    assert [t for t, _, _ in frames(server.transport.value())] == [FrameType.CONTROL]
    assert last_error(server.transport) == "protocol error: PING frame before login"
    assert server.transport.disconnecting


def test_ping_is_answered_with_its_payload() -> None:
    pair = Pair()
    pair.client.send_ping(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    pongs: List[bytes] = []
    pair.client.pong_received = pongs.append  # type: ignore[method-assign]
    pair.pump()
    assert pongs == [b"\x00\x01\x02\x03\x04\x05\x06\x07"]


def test_control_messages_cross_both_ways() -> None:
    pair = Pair()
    pair.client.send_control({"type": "tunnel_open", "name": "ssh"})
    pair.server.send_control({"type": "tunnel_ok", "name": "ssh", "remotePort": 6000})
    pair.pump()
    assert pair.server.controls == [{"type": "tunnel_open", "name": "ssh"}]
    assert pair.client.controls == [{"type": "tunnel_ok", "name": "ssh", "remotePort": 6000}]


# -- data both ways ----------------------------------------------------------


def test_bytes_arrive_intact_both_ways() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    assert public.producer is s and public.streaming
    assert local.producer is c and local.streaming

    s.write(b"GET / HTTP/1.1\r\n\r\n")
    pair.pump()
    assert local.value() == b"GET / HTTP/1.1\r\n\r\n"
    c.write(b"HTTP/1.1 200 OK\r\n\r\n")
    pair.pump()
    assert public.value() == b"HTTP/1.1 200 OK\r\n\r\n"


def test_megabytes_of_mixed_write_sizes_arrive_intact_both_ways() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    up = bytes(range(251)) * 12000  # ~3 MiB, a prime period shows any reordering
    down = bytes(range(241)) * 9000
    sizes = [1, 1000, MAX_DATA, MAX_DATA + 1, 200_000, 7]
    pos_up = pos_down = i = 0
    while pos_up < len(up) or pos_down < len(down):
        n = sizes[i % len(sizes)]
        i += 1
        if pos_up < len(up):
            s.write(up[pos_up : pos_up + n])
            pos_up += n
        if pos_down < len(down):
            c.write(down[pos_down : pos_down + n])
            pos_down += n
        pair.pump()
    assert local.value() == up
    assert public.value() == down
    assert (s.bytes_out, c.bytes_in) == (len(up), len(up))
    assert (c.bytes_out, s.bytes_in) == (len(down), len(down))
    # The sockets were never left paused once the data was through.
    assert public.producerState == local.producerState == "producing"


def test_no_data_frame_exceeds_the_frame_limit() -> None:
    pair = Pair()
    s, _, _, _ = pair.open()
    s.write(b"x" * (3 * MAX_DATA + 5))
    sizes = [len(p) for t, _, p in frames(pair.server.transport.value()) if t == FrameType.DATA]
    assert sum(sizes) == 3 * MAX_DATA + 5
    assert max(sizes) <= MAX_DATA


# -- flow control --------------------------------------------------------------


def test_sender_stops_at_the_initial_window_and_pauses_its_socket() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    for _ in range(16):
        s.write(b"a" * 65536)  # 1 MiB read from the public socket
    assert data_bytes(pair.server.transport.value(), s.id) == INITIAL_WINDOW
    assert public.producerState == "paused"

    # Nothing more goes out until the client returns credit.
    s.write(b"b" * 10)
    assert data_bytes(pair.server.transport.value(), s.id) == INITIAL_WINDOW

    pair.pump()
    # The write made while paused is not lost (a real socket would not have
    # read it, but if it did) and arrives in order.
    assert local.value() == b"a" * (16 * 65536) + b"b" * 10
    assert public.producerState == "producing"


def test_window_is_never_exceeded_on_the_wire() -> None:
    """Count DATA against WINDOW on the wire itself, with the client reading slowly."""
    pair = Pair()
    s, c, public, local = pair.open()
    budget = INITIAL_WINDOW
    total = 0
    s.write(b"z" * (4 * 1024 * 1024))
    for _ in range(200):
        out = pair.server.transport.value()
        for t, sid, p in frames(out):
            if t == FrameType.DATA and sid == s.id:
                budget -= len(p)
                total += len(p)
                assert budget >= 0, "the server sent more than the client's window"
        pair.deliver_to_client()
        back = pair.client.transport.value()
        for t, sid, p in frames(back):
            if t == FrameType.WINDOW and sid == s.id:
                budget += WINDOW_INCREMENT.unpack(p)[0]
        pair.deliver_to_server()
        if total == 4 * 1024 * 1024:
            break
    assert total == 4 * 1024 * 1024
    assert len(local.value()) == total


def test_slow_reader_stalls_only_its_own_stream() -> None:
    pair = Pair()
    s1, c1, public1, local1 = pair.open("slow")
    s2, c2, public2, local2 = pair.open("fast")

    # The first local socket's send buffer fills: it pauses its producer.
    local1.producer.pauseProducing()
    big = 4 * 1024 * 1024
    for _ in range(big // 65536):
        s1.write(b"1" * 65536)
        s2.write(b"2" * 65536)
        pair.pump()

    # The slow stream got exactly one window and its source is paused ...
    assert len(local1.value()) == INITIAL_WINDOW
    assert public1.producerState == "paused"
    # ... while the other stream on the same connection went all the way.
    assert local2.value() == b"2" * big
    assert public2.producerState == "producing"

    # The reader catches up: everything flows again.
    local1.producer.resumeProducing()
    pair.pump()
    assert local1.value() == b"1" * big
    assert public1.producerState == "producing"


def test_paused_reader_holds_credit_even_after_many_frames() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    local.producer.pauseProducing()
    s.write(b"q" * INITIAL_WINDOW)
    pair.pump()
    assert [f for f in frames(pair.client.transport.value()) if f[0] == FrameType.WINDOW] == []
    assert s.send_window == 0
    local.producer.resumeProducing()
    assert [f[0] for f in frames(pair.client.transport.value())] == [FrameType.WINDOW]
    pair.pump()
    assert s.send_window == INITIAL_WINDOW


def test_resume_without_pending_credit_sends_nothing() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    local.producer.pauseProducing()
    s.write(b"small")
    pair.pump()
    local.producer.resumeProducing()
    assert pair.client.transport.value() == b""
    assert local.value() == b"small"


def test_peer_exceeding_the_window_is_a_protocol_error() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    # A broken server ignores the window.
    local.producer.pauseProducing()  # so the client returns no credit
    for _ in range(INITIAL_WINDOW // MAX_DATA):
        pair.client.dataReceived(encode_frame(FrameType.DATA, s.id, b"x" * MAX_DATA))
    assert not pair.client.transport.disconnecting
    pair.client.dataReceived(encode_frame(FrameType.DATA, s.id, b"!"))
    assert pair.client.transport.disconnecting
    assert "window" in last_error(pair.client.transport)
    assert pair.client.disconnecting


def test_window_beyond_the_maximum_is_a_protocol_error() -> None:
    pair = Pair()
    s, c, _, _ = pair.open()
    pair.server.dataReceived(encode_frame(FrameType.WINDOW, s.id, WINDOW_INCREMENT.pack(0xFFFFFFFF)))
    assert pair.server.transport.disconnecting
    assert "window" in last_error(pair.server.transport)


# -- the mux connection's own backpressure ---------------------------------------


def test_paused_mux_holds_what_each_stream_reads_next_and_pauses_that_socket() -> None:
    pair = Pair()
    s1, _, public1, local1 = pair.open()
    s2, _, public2, local2 = pair.open()
    pair.pump()
    # The TLS transport's buffer is full: it pauses its producer, the mux.
    assert pair.server.transport.producer is pair.server
    pair.server.transport.producer.pauseProducing()
    # No socket is touched until it has something to send (10,000 idle ones cost nothing) ...
    assert public1.producerState == public2.producerState == "producing"
    written = len(pair.server.transport.value())
    s1.write(b"held while paused")
    # ... and then its bytes wait in the stream, not in the connection, and its socket pauses.
    assert len(pair.server.transport.value()) == written
    assert public1.producerState == "paused" and public2.producerState == "producing"
    assert s1.buffered() == len(b"held while paused")

    # A stream opened while paused is not paused either until it reads.
    s3, _, public3, local3 = pair.open()
    assert public3.producerState == "producing"
    s3.write(b"three")
    s3.write_eof()
    assert public3.producerState == "paused"

    pair.server.transport.producer.resumeProducing()
    assert public1.producerState == public2.producerState == public3.producerState == "producing"
    pair.pump()
    assert local1.value() == b"held while paused"
    assert local3.value() == b"three" and local3.write_closed  # FIN after the held data
    assert pair.server.held_streams == set()


def test_a_stream_that_closes_while_the_mux_is_paused_sends_its_held_data_then_close() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    pair.server.pauseProducing()
    s.write(b"last words")
    s.local_closed("done")
    assert not s.closed  # its CLOSE waits behind the held data
    pair.server.resumeProducing()
    pair.pump()
    assert local.value() == b"last words" and c.closed and s.closed


def test_mux_resume_keeps_a_stream_without_window_paused() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    s.write(b"w" * (INITIAL_WINDOW + 1))
    assert public.producerState == "paused"
    pair.server.pauseProducing()
    pair.server.resumeProducing()
    # Still no window: stays paused until credit arrives.
    assert public.producerState == "paused"
    pair.pump()
    assert public.producerState == "producing"
    assert len(local.value()) == INITIAL_WINDOW + 1


# -- closing ---------------------------------------------------------------------


def test_fin_is_delivered_after_buffered_data() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    payload = b"f" * (INITIAL_WINDOW * 2 + 123)
    s.write(payload)
    s.write_eof()
    # FIN waits behind the data that has no window yet.
    assert FrameType.FIN not in [f[0] for f in frames(pair.server.transport.value())]
    pair.pump()
    assert local.value() == payload
    assert local.write_closed
    assert local.bytes_at_write_close == len(payload)
    assert c.fin_received and s.fin_sent
    # Half-closed, not closed: the other direction still works.
    assert not local.disconnecting
    c.write(b"reply after FIN")
    pair.pump()
    assert public.value() == b"reply after FIN"


def test_fin_and_close_reach_a_socket_whose_send_buffer_is_full() -> None:
    # Twisted holds back a half-close while a paused producer is registered,
    # so the stream must step aside for the FIN/close to reach the socket.
    pair = Pair()
    s, c, public, local = pair.open()
    local.producer.pauseProducing()
    s.write(b"tail")
    s.write_eof()
    pair.pump()
    assert local.write_closed and local.producer is None
    public.producer.pauseProducing()
    c.local_closed("done")
    pair.pump()
    assert public.disconnecting and public.producer is None


def test_writes_after_eof_are_ignored() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    s.write(b"last")
    s.write_eof()
    s.write(b"too late")
    pair.pump()
    assert local.value() == b"last"


def test_second_fin_is_a_protocol_error() -> None:
    pair = Pair()
    s, c, _, _ = pair.open()
    pair.client.dataReceived(encode_frame(FrameType.FIN, s.id))
    assert not pair.client.transport.disconnecting
    pair.client.dataReceived(encode_frame(FrameType.FIN, s.id))
    assert pair.client.transport.disconnecting


def test_close_waits_for_buffered_data_then_closes_the_peers_socket() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    payload = b"c" * (INITIAL_WINDOW + 5000)
    s.write(payload)
    s.local_closed("the public client went away")
    # No CLOSE yet: 5000 bytes still wait for window.
    assert FrameType.CLOSE not in [f[0] for f in frames(pair.server.transport.value())]
    assert s.id in pair.server.streams
    pair.pump()
    assert local.value() == payload
    assert local.disconnecting and not local.disconnected  # clean close, not RST
    assert local.bytes_at_close == len(payload)
    assert s.id not in pair.server.streams and c.id not in pair.client.streams
    assert c.closed and c.close_reason == "the public client went away"


def test_close_with_nothing_buffered_goes_out_at_once() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    c.local_closed("error: connection refused")
    assert frames(pair.client.transport.value()) == [(FrameType.CLOSE, c.id, b"error: connection refused")]
    pair.pump()
    assert public.disconnecting and s.closed
    assert s.close_reason == "error: connection refused"


def test_frames_for_a_closed_stream_are_dropped() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    c.local_closed("done")
    pair.pump()
    assert s.id not in pair.server.streams
    # The client's late frames for the stream the server closed.
    for frame in [
        encode_frame(FrameType.DATA, s.id, b"late"),
        encode_frame(FrameType.WINDOW, s.id, WINDOW_INCREMENT.pack(10)),
        encode_frame(FrameType.FIN, s.id),
        encode_frame(FrameType.CLOSE, s.id, b"late"),
    ]:
        pair.server.dataReceived(frame)
        pair.client.dataReceived(frame)
    assert not pair.server.transport.disconnecting
    assert not pair.client.transport.disconnecting
    assert b"late" not in public.value()


@pytest.mark.parametrize("stream_id", [0, 3, 4, 1000])
def test_frames_for_a_never_opened_stream_are_errors_on_the_server(stream_id: int) -> None:
    pair = Pair()
    pair.open()  # stream 2
    pair.server.dataReceived(encode_frame(FrameType.DATA, stream_id, b"?"))
    assert pair.server.transport.disconnecting
    assert "never opened" in last_error(pair.server.transport)


@pytest.mark.parametrize("frame", ["data", "window", "fin", "close"])
def test_frames_for_a_never_opened_stream_are_errors_on_the_client(frame: str) -> None:
    pair = Pair()
    pair.open()  # stream 2
    encoded = {
        "data": encode_frame(FrameType.DATA, 4, b"?"),
        "window": encode_frame(FrameType.WINDOW, 4, WINDOW_INCREMENT.pack(1)),
        "fin": encode_frame(FrameType.FIN, 4),
        "close": encode_frame(FrameType.CLOSE, 4, b"x"),
    }[frame]
    pair.client.dataReceived(encoded)
    assert pair.client.transport.disconnecting
    assert "never opened" in last_error(pair.client.transport)


def test_open_from_the_client_or_reused_ids_are_refused() -> None:
    pair = Pair()
    pair.server.dataReceived(encode_json(FrameType.OPEN, 1, {"tunnel": "x", "peer": "y"}))
    assert pair.server.transport.disconnecting

    pair = Pair()
    s, _, _, _ = pair.open()
    pair.client.dataReceived(encode_json(FrameType.OPEN, s.id, {"tunnel": "x", "peer": "y"}))
    assert pair.client.transport.disconnecting
    assert "invalid OPEN" in last_error(pair.client.transport)


def test_connection_lost_aborts_every_stream() -> None:
    pair = Pair()
    s1, c1, public1, local1 = pair.open()
    s2, c2, public2, local2 = pair.open()
    s1.write(b"x" * (INITIAL_WINDOW + 10))  # one of them with unsent data
    pair.server.connectionLost(Failure(ConnectionLost("network unreachable")))
    pair.client.connectionLost(Failure(ConnectionDone()))
    for transport in (public1, public2, local1, local2):
        assert transport.disconnected  # abortConnection: RST, not a clean FIN
    assert pair.server.streams == {} and pair.client.streams == {}
    assert s1.closed and "tunnel connection lost" in s1.close_reason
    assert "network unreachable" in s1.close_reason


def test_stream_with_pending_close_is_aborted_when_the_connection_drops() -> None:
    pair = Pair()
    s, c, public, local = pair.open()
    s.write(b"x" * (INITIAL_WINDOW + 10))
    s.local_closed("bye")
    pair.server.connectionLost(Failure(ConnectionDone()))
    assert s.closed and pair.server.streams == {}


# -- streams that are not attached yet -------------------------------------------


def test_data_before_attach_is_delivered_on_attach() -> None:
    pair = Pair()
    s = pair.server.open_stream("web", "1.2.3.4:5")
    pair.deliver_to_client()
    (c,) = pair.client.opened
    s.write(b"early bytes")
    pair.pump()
    local = FakeTCP()
    c.attach(local)
    assert local.value() == b"early bytes"
    assert not local.write_closed and not local.disconnecting


def test_fin_before_attach_half_closes_after_the_data() -> None:
    pair = Pair()
    s = pair.server.open_stream("web", "1.2.3.4:5")
    pair.deliver_to_client()
    (c,) = pair.client.opened
    s.write(b"request")
    s.write_eof()
    pair.pump()
    local = FakeTCP()
    c.attach(local)
    assert local.value() == b"request"
    assert local.write_closed and local.bytes_at_write_close == len(b"request")


def test_close_before_attach_still_delivers_the_data() -> None:
    # A public client sends a message and disconnects before the client's
    # connection to its local service is up: the message must not be lost.
    pair = Pair()
    s = pair.server.open_stream("syslog", "1.2.3.4:5")
    s.attach(FakeTCP())
    pair.deliver_to_client()
    (c,) = pair.client.opened
    s.write(b"<13>hello")
    s.local_closed("closed")
    pair.pump()
    local = FakeTCP()
    c.attach(local)
    assert local.value() == b"<13>hello"
    assert local.disconnecting and local.bytes_at_close == len(b"<13>hello")


def test_unattached_stream_still_flow_controls() -> None:
    pair = Pair()
    s = pair.server.open_stream("web", "1.2.3.4:5")
    public = FakeTCP()
    s.attach(public)
    pair.deliver_to_client()
    (c,) = pair.client.opened
    s.write(b"u" * (INITIAL_WINDOW * 2))
    pair.pump()
    # Nothing consumed it yet: no credit, so only one window crossed.
    assert public.producerState == "paused"
    local = FakeTCP()
    c.attach(local)
    pair.pump()
    assert local.value() == b"u" * (INITIAL_WINDOW * 2)
    assert public.producerState == "producing"


# -- limits ----------------------------------------------------------------------


def test_max_streams_limits_open_stream() -> None:
    pair = Pair()
    pair.server.max_streams = 2
    a = pair.server.open_stream("t", "p")
    b = pair.server.open_stream("t", "p")
    assert a is not None and b is not None and a.id != b.id
    assert pair.server.open_stream("t", "p") is None
    a.local_closed("done")
    c = pair.server.open_stream("t", "p")
    assert c is not None and c.id not in (a.id, b.id)


class FairServerMux(ServerMux):
    __test__ = False

    def __init__(self, tunnels: Tuple[str, ...]) -> None:
        super().__init__()
        self.tunnel_names = tunnels

    def fair_share_tunnels(self) -> Tuple[str, ...]:
        return self.tunnel_names


def fair_server(tunnels: Tuple[str, ...], max_streams: int) -> FairServerMux:
    mux = FairServerMux(tunnels)
    mux.makeConnection(FakeTCP())
    mux.authenticated = True
    mux.max_streams = max_streams
    return mux


def fill(mux: MuxProtocol, tunnel: str) -> List[Stream]:
    opened = []
    while True:
        stream = mux.open_stream(tunnel, "p")
        if stream is None:
            return opened
        opened.append(stream)


def test_one_tunnel_cannot_take_the_streams_the_other_tunnels_need() -> None:
    from gotaxy.mux import MAX_STREAMS, TUNNEL_RESERVE

    mux = fair_server(("a", "b"), MAX_STREAMS)
    a = fill(mux, "a")
    assert len(a) == MAX_STREAMS - TUNNEL_RESERVE
    refusal = mux.stream_refusal("a")
    assert refusal is not None and f"its fair share of the client's {MAX_STREAMS}" in refusal
    assert len(fill(mux, "b")) == TUNNEL_RESERVE
    assert mux.stream_refusal("b") == f"the client has {MAX_STREAMS} connections open, the most one client may have"
    # One of A's ends: nothing needs keeping for A (it holds far more than
    # its reserve), so B may borrow the freed stream.
    a.pop().local_closed("done")
    assert mux.tunnel_streams == {"a": MAX_STREAMS - TUNNEL_RESERVE - 1, "b": TUNNEL_RESERVE}
    assert mux.open_stream("b", "p") is not None


def test_every_tunnel_gets_its_reserve_however_the_others_fill_up() -> None:
    mux = fair_server(("a", "b", "c", "d"), 64)  # reserve: min(32, 64 // 4) = 16
    assert len(fill(mux, "a")) == 64 - 3 * 16
    assert len(fill(mux, "b")) == 16
    assert len(fill(mux, "c")) == 16
    assert len(fill(mux, "d")) == 16
    assert len(mux.streams) == 64


def test_a_lone_tunnel_may_use_every_stream() -> None:
    mux = fair_server(("a",), 40)
    assert len(fill(mux, "a")) == 40


def test_per_tunnel_counts_follow_closes_and_connection_loss() -> None:
    mux = fair_server(("a", "b"), 8)
    streams = fill(mux, "a") + fill(mux, "b")
    assert mux.tunnel_streams == {"a": 4, "b": 4}
    streams[0].local_closed("done")
    streams[-1].close_received("closed by peer")
    assert mux.tunnel_streams == {"a": 3, "b": 3}
    mux.connectionLost(Failure(ConnectionLost()))
    assert mux.tunnel_streams == {} and mux.streams == {}


def test_stream_ids_are_even_increasing_and_never_reused() -> None:
    pair = Pair()
    ids = []
    for _ in range(5):
        stream = pair.server.open_stream("t", "p")
        ids.append(stream.id)
        stream.local_closed("done")
    assert ids == [2, 4, 6, 8, 10]


def test_client_refuses_streams_beyond_its_limit_without_dropping_the_connection() -> None:
    pair = Pair()
    pair.client.max_streams = 1
    s1, c1, public1, _ = pair.open()
    s2 = pair.server.open_stream("web", "x")
    public2 = FakeTCP()
    s2.attach(public2)
    s2.write(b"data for a refused stream")
    pair.pump()
    assert len(pair.client.opened) == 1
    assert s2.closed and s2.close_reason == "this side has 1 connections open, the most it takes"
    assert public2.disconnecting
    assert not pair.client.transport.disconnecting and not pair.server.transport.disconnecting
    # The first stream is unaffected.
    s1.write(b"still here")
    pair.pump()
    assert s1.id in pair.server.streams


def test_no_streams_open_while_disconnecting() -> None:
    pair = Pair()
    pair.server.close_with_error("going away")
    assert pair.server.open_stream("t", "p") is None
    assert last_error(pair.server.transport) == "going away"


def test_close_with_error_really_closes_once() -> None:
    pair = Pair()
    pair.server.close_with_error("your token was revoked or has expired")
    # A TLS transport only shuts down once its producer (the mux) is gone.
    assert pair.server.transport.producer is None
    assert pair.server.transport.disconnecting
    pair.server.close_with_error("second reason")
    pair.pump()
    assert pair.client.controls == [{"type": "error", "reason": "your token was revoked or has expired"}]


# -- StreamRelay: TCP connection <-> stream ----------------------------------------


def relay_pair() -> Tuple[Pair, StreamRelay, FakeTCP, StreamRelay, FakeTCP]:
    pair = Pair()
    s = pair.server.open_stream("web", "1.2.3.4:5")
    public = FakeTCP()
    public_relay = StreamRelay(s)
    public.protocol = public_relay
    public_relay.makeConnection(public)
    pair.deliver_to_client()
    (c,) = pair.client.opened
    local = FakeTCP()
    local_relay = StreamRelay(c)
    local.protocol = local_relay
    local_relay.makeConnection(local)
    return pair, public_relay, public, local_relay, local


def test_relay_carries_bytes_both_ways() -> None:
    pair, public_relay, public, local_relay, local = relay_pair()
    public_relay.dataReceived(b"ping")
    pair.pump()
    local_relay.dataReceived(b"pong")
    pair.pump()
    assert local.value() == b"ping" and public.value() == b"pong"


def test_relay_connects_a_stream_that_arrives_later() -> None:
    pair = Pair()
    relay = StreamRelay()
    public = FakeTCP()
    relay.makeConnection(public)
    s = pair.server.open_stream("web", "1.2.3.4:5")
    relay.connect_stream(s)
    assert public.producer is s
    pair.deliver_to_client()
    c = pair.client.opened[0]
    c.attach(FakeTCP())
    c.write(b"hi")
    pair.pump()
    assert public.value() == b"hi"


def test_relay_half_close_sends_fin_and_keeps_the_other_direction() -> None:
    pair, public_relay, public, local_relay, local = relay_pair()
    public_relay.dataReceived(b"request")
    public_relay.readConnectionLost()  # the public client did shutdown(SHUT_WR)
    pair.pump()
    assert local.value() == b"request" and local.write_closed
    assert not public.disconnecting
    local_relay.dataReceived(b"response")
    pair.pump()
    assert public.value() == b"response"
    assert not public.disconnecting


def test_relay_closes_once_both_halves_are_closed() -> None:
    pair, public_relay, public, local_relay, local = relay_pair()
    public_relay.readConnectionLost()
    pair.pump()
    # The local service reads the FIN; the write side of the local socket is
    # shut (FakeTCP tells the relay), but it can still read from the service.
    assert local.write_closed and not local.disconnecting
    local_relay.dataReceived(b"last words")
    local_relay.readConnectionLost()  # the service closes its side too
    assert local.disconnecting
    pair.pump()
    assert public.value() == b"last words"
    assert public.write_closed and public.disconnecting


def test_relay_connection_lost_closes_the_far_socket() -> None:
    pair, public_relay, public, local_relay, local = relay_pair()
    public_relay.dataReceived(b"bye")
    public_relay.connectionLost(Failure(ConnectionDone()))
    pair.pump()
    assert local.value() == b"bye"
    assert local.disconnecting and not local.disconnected
    assert pair.server.streams == {} and pair.client.streams == {}


def test_relay_on_an_already_closed_stream_closes_its_socket() -> None:
    # The client's local connection completes after the server gave up on the stream.
    pair = Pair()
    s = pair.server.open_stream("web", "1.2.3.4:5")
    s.attach(FakeTCP())
    pair.deliver_to_client()
    (c,) = pair.client.opened
    s.local_closed("gone")
    pair.pump()
    local = FakeTCP()
    relay = StreamRelay(c)
    relay.makeConnection(local)
    assert local.disconnecting
    relay.connectionLost(Failure(ConnectionDone()))
    assert pair.client.transport.value() == b""  # no second CLOSE



# -- a peer that does not read -------------------------------------------------


class UnreadTransport(StringTransport):
    """
    A connection whose peer reads nothing: what is written stays in the send
    buffer (``dataBuffer``, as on a real TCP transport), and like a real one
    it pauses its producer above ``bufferSize``.  ``drain`` plays the peer
    reading some of it.
    """

    bufferSize = 64 * 1024  # the mux raises it to MUX_SOCKET_BUFFER
    offset = 0
    _tempDataLen = 0

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.paused_producer = False

    @property
    def dataBuffer(self) -> bytes:
        return self.value()

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and not self.paused_producer and len(self.value()) > self.bufferSize:
            self.paused_producer = True
            self.producer.pauseProducing()

    def drain(self, n: int) -> None:
        rest = self.value()[n:]
        self.clear()
        self.io.write(rest)

    def abortConnection(self) -> None:
        self.aborted = True


def unread_server(clock: Clock) -> Tuple[ServerMux, UnreadTransport]:
    server = ServerMux()
    server.reactor = clock
    server.write_stall_timeout = 30
    transport = UnreadTransport()
    server.makeConnection(transport)
    server.dataReceived(CURRENT_PREAMBLE)
    server.authenticated = True
    return server, transport


def test_pings_from_a_peer_that_does_not_read_stop_being_answered() -> None:
    server, transport = unread_server(Clock())
    server.dataReceived(encode_frame(FrameType.PING, 0, b"abcdefgh") * 100_000)  # 1.7 MB of PINGs
    assert server.paused
    # PONGs stop once the send buffer is full: one buffer plus one frame.
    assert len(transport.value()) <= transport.bufferSize + 17
    assert not transport.aborted


def test_a_peer_whose_send_buffer_never_drains_is_dropped() -> None:
    clock = Clock()
    server, transport = unread_server(clock)
    server.dataReceived(encode_frame(FrameType.PING, 0, b"abcdefgh") * 100_000)
    assert server.paused
    clock.advance(29)
    assert not transport.aborted
    clock.advance(1)
    assert transport.aborted and server.disconnecting


def test_a_peer_that_reads_slowly_is_kept() -> None:
    clock = Clock()
    server, transport = unread_server(clock)
    server.dataReceived(encode_frame(FrameType.PING, 0, b"abcdefgh") * 100_000)
    for _ in range(10):
        transport.drain(1000)
        clock.advance(30)
        assert not transport.aborted
    server.resumeProducing()  # drained: the transport resumes us
    transport.clear()
    transport.paused_producer = False
    clock.advance(300)
    assert not transport.aborted
    assert clock.getDelayedCalls() == []


def test_answers_beyond_the_output_limit_drop_the_peer() -> None:
    server, transport = unread_server(Clock())
    message = {"type": "tunnel_refused", "reason": "x" * 8000}
    sent = 0
    while not transport.aborted:
        server.send_control(message)
        sent += 1
        assert sent < 10_000, "never dropped"
    assert MAX_BUFFERED_OUTPUT < len(transport.value()) <= MAX_BUFFERED_OUTPUT + 8100
    server.send_control(message)  # nothing more is written
    assert len(transport.value()) <= MAX_BUFFERED_OUTPUT + 8100


# -- datagram flows ------------------------------------------------------------


class FlowClientMux(ClientMux):
    def __init__(self) -> None:
        super().__init__()
        self.flows_opened: List[Any] = []

    def flow_opened(self, flow: Any) -> None:
        self.flows_opened.append(flow)


class FlowPair(Pair):
    def __init__(self) -> None:
        self.server = ServerMux()
        self.client = FlowClientMux()
        self.server.makeConnection(StringTransport())
        self.client.makeConnection(StringTransport())
        self.client.send_preamble()
        self.deliver_to_server()
        self.server.authenticated = self.client.authenticated = True

    def open_flow(self) -> Tuple[Any, Any, List[bytes], List[bytes]]:
        s = self.server.open_flow("dns", "203.0.113.9:5353")
        assert s is not None
        self.deliver_to_client()
        c = self.client.flows_opened[-1]
        assert (c.id, c.tunnel, c.peer) == (s.id, "dns", "203.0.113.9:5353")
        to_server: List[bytes] = []
        to_client: List[bytes] = []
        s.receiver, c.receiver = to_server.append, to_client.append
        return s, c, to_server, to_client


def test_datagrams_cross_whole_one_per_frame_both_ways() -> None:
    pair = FlowPair()
    s, c, to_server, to_client = pair.open_flow()
    sizes = [0, 1, 1200, 1500, 65535]
    for n in sizes:
        assert s.send(bytes([n % 256]) * n)
    assert [(t, i) for t, i, _ in frames(pair.server.transport.value())] == [(FrameType.DATAGRAM, s.id)] * len(sizes)
    pair.deliver_to_client()
    assert to_client == [bytes([n % 256]) * n for n in sizes]  # never merged, never split
    assert c.send(b"answer") and c.send(b"second")
    pair.deliver_to_server()
    assert to_server == [b"answer", b"second"]
    assert (s.datagrams_out, s.bytes_out, s.datagrams_in, s.bytes_in) == (5, sum(sizes), 2, 12)
    assert not c.send(b"x" * 65536)  # larger than any datagram: not sent
    # Flows are not streams: none of the stream limits or windows apply.
    assert pair.server.streams == {} and pair.client.streams == {}


def test_a_backed_up_connection_drops_datagrams_instead_of_queueing_them() -> None:
    pair = FlowPair()
    s, c, _, to_client = pair.open_flow()
    pair.server.pauseProducing()  # the TLS transport's buffer is full
    assert not s.send(b"dropped")
    pair.server.resumeProducing()
    assert s.send(b"sent")

    class Backlog:
        """A send buffer already holding more than DATAGRAM_BACKLOG (the TCP transport's dataBuffer)."""

        def __init__(self, waiting: int) -> None:
            self.dataBuffer, self.offset, self._tempDataLen = b"x" * waiting, 0, 0

    from gotaxy.mux import DATAGRAM_BACKLOG

    pair.server.transport.transport = Backlog(DATAGRAM_BACKLOG + 1)
    assert not s.send(b"dropped too")
    assert pair.server.open_flow("dns", "203.0.113.9:1") is None  # nor is a new flow opened: its OPEN would queue
    pair.server.transport.transport = Backlog(DATAGRAM_BACKLOG)
    assert s.send(b"sent too")
    pair.deliver_to_client()
    assert to_client == [b"sent", b"sent too"]
    pair.server.pauseProducing()
    assert pair.server.open_flow("dns", "203.0.113.9:2") is None


def test_while_streams_are_busy_datagrams_get_only_their_share_of_the_connection() -> None:
    from gotaxy.mux import DATAGRAM_OVERHEAD, DATAGRAM_SHARE, DATAGRAM_SHARE_FLOOR, DATAGRAM_SHARE_PERIOD

    pair = FlowPair()
    clock = pair.server.reactor = Clock()
    s, c, _, to_client = pair.open_flow()
    stream, _, _, local = pair.open()
    datagram = b"d" * 1200
    assert s.send(datagram)  # nothing streamed yet: no limit
    sent = 0
    for _ in range(64):  # 8 MiB through the stream in the first period: the streams are busy
        stream.write(b"s" * 131072)
        sent += 131072
        pair.pump()
    assert len(local.value()) == sent
    clock.advance(DATAGRAM_SHARE_PERIOD)
    share = sent * DATAGRAM_SHARE
    assert share > DATAGRAM_SHARE_FLOOR
    allowed = 0
    while s.send(datagram) and allowed < 10000:
        allowed += 1
    # Each is charged its bytes and what a datagram costs beyond them; the rest of this period's are dropped.
    assert allowed == int(share // (len(datagram) + DATAGRAM_OVERHEAD))
    # The share is what refused them: more room comes with the next period (a UDP port may stop reading till then).
    assert pair.server.datagram_share.wait() == pytest.approx(DATAGRAM_SHARE_PERIOD)
    clock.advance(DATAGRAM_SHARE_PERIOD / 2)
    assert pair.server.datagram_share.wait() == pytest.approx(DATAGRAM_SHARE_PERIOD / 2)
    clock.advance(DATAGRAM_SHARE_PERIOD / 2)
    assert all(s.send(datagram) for _ in range(2000))  # the stream went quiet: the datagrams have it all again
    assert pair.server.datagram_share.wait() == 0
    pair.deliver_to_client()
    assert len(to_client) == 1 + allowed + 2000 and set(to_client) == {datagram}


def test_a_slow_stream_leaves_datagrams_at_least_the_floor() -> None:
    from gotaxy.mux import DATAGRAM_OVERHEAD, DATAGRAM_SHARE_BUSY, DATAGRAM_SHARE_FLOOR, DATAGRAM_SHARE_PERIOD

    pair = FlowPair()
    clock = pair.server.reactor = Clock()
    s, _, _, _ = pair.open_flow()
    stream, _, _, _ = pair.open()
    assert s.send(b"first")
    stream.write(b"s" * DATAGRAM_SHARE_BUSY)  # busy, but its share would be tiny
    pair.pump()
    clock.advance(DATAGRAM_SHARE_PERIOD)
    allowed = 0
    while s.send(b"d" * 1000) and allowed < 10000:
        allowed += 1
    assert allowed == int(DATAGRAM_SHARE_FLOOR // (1000 + DATAGRAM_OVERHEAD))


def test_close_ends_a_flow_on_both_sides_and_late_datagrams_are_dropped() -> None:
    pair = FlowPair()
    s, c, to_server, to_client = pair.open_flow()
    ended: List[str] = []
    s.on_close = ended.append
    c.close("idle")
    assert c.closed and not c.send(b"late")
    assert s.send(b"crosses the close")  # in flight while the CLOSE travels
    pair.pump()
    assert ended == ["idle"] and s.closed and pair.server.flows == {} and pair.client.flows == {}
    assert to_client == [] and not pair.client.transport.disconnecting  # the late datagram was dropped quietly


def test_a_lost_connection_ends_every_flow() -> None:
    pair = FlowPair()
    s, c, _, _ = pair.open_flow()
    reasons: List[str] = []
    c.on_close = reasons.append
    pair.client.connectionLost(Failure(ConnectionLost("gone")))
    assert c.closed and reasons and reasons[0].startswith("tunnel connection lost")


@pytest.mark.parametrize("frame_type", [FrameType.DATA, FrameType.WINDOW, FrameType.FIN])
def test_stream_frames_on_a_flow_are_a_protocol_error(frame_type: FrameType) -> None:
    pair = FlowPair()
    s, _, _, _ = pair.open_flow()
    payload = WINDOW_INCREMENT.pack(1) if frame_type == FrameType.WINDOW else b"x" if frame_type == FrameType.DATA else b""
    pair.server.transport.write(encode_frame(frame_type, s.id, payload))
    pair.deliver_to_client()
    assert pair.client.transport.disconnecting
    assert "datagram flow" in (last_error(pair.client.transport) or "")


def test_a_datagram_on_a_byte_stream_is_a_protocol_error() -> None:
    pair = Pair()
    s, _, _, _ = pair.open()
    pair.server.transport.write(encode_frame(FrameType.DATAGRAM, s.id, b"x"))
    pair.deliver_to_client()
    assert "DATAGRAM frame for stream" in (last_error(pair.client.transport) or "")


def test_a_side_that_takes_no_flows_refuses_them() -> None:
    pair = Pair()  # its client has no flow_opened of its own
    flow = pair.server.open_flow("dns", "203.0.113.9:1")
    ended: List[str] = []
    flow.on_close = ended.append
    pair.pump()
    assert ended == ["datagram flows are not supported here"]
