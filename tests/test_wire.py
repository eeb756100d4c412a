"""
Tests for gotaxy.wire: the frame format and the incremental FrameDecoder.
"""

from __future__ import annotations

import json
import random
from typing import List, Tuple

import pytest

from gotaxy.wire import (
    HEADER,
    HEADER_SIZE,
    MAX_CONTROL,
    MAX_DATA,
    MAX_JSON_DEPTH,
    MAX_PAYLOAD,
    PREAMBLE,
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

Event = Tuple[str, int, int, bytes]  # ("frame", type, stream, payload) or ("data", DATA, stream, bytes)


class Recorder:
    """Collects what a FrameDecoder hands out."""

    def __init__(self) -> None:
        self.events: List[Event] = []
        self.decoder = FrameDecoder(self.on_frame, self.on_data)

    def on_frame(self, frame_type: int, stream_id: int, payload: bytes) -> None:
        assert isinstance(payload, bytes)
        self.events.append(("frame", frame_type, stream_id, payload))

    def on_data(self, stream_id: int, chunk: bytes) -> None:
        assert chunk, "the decoder must never hand out an empty DATA piece"
        self.events.append(("data", FrameType.DATA, stream_id, bytes(chunk)))

    def merged(self) -> List[Event]:
        """Events with adjacent DATA pieces of one stream joined: DATA has no framing meaning."""
        out: List[Event] = []
        for event in self.events:
            if out and event[0] == "data" and out[-1][0] == "data" and out[-1][2] == event[2]:
                out[-1] = ("data", FrameType.DATA, event[2], out[-1][3] + event[3])
            else:
                out.append(event)
        return out


def decode(data: bytes) -> List[Event]:
    recorder = Recorder()
    recorder.decoder.feed(data)
    return recorder.merged()


SAMPLE_PAYLOADS = {
    FrameType.CONTROL: (0, encode_control({"type": "login", "token": "x"})[HEADER_SIZE:]),
    FrameType.OPEN: (2, b'{"tunnel":"ssh","peer":"203.0.113.5:40000"}'),
    FrameType.DATA: (2, bytes(range(256)) * 3),
    FrameType.WINDOW: (2, WINDOW_INCREMENT.pack(131072)),
    FrameType.FIN: (2, b""),
    FrameType.CLOSE: (2, "done \u2713".encode("utf-8")),
    FrameType.PING: (0, b"\x01\x02\x03\x04\x05\x06\x07\x08"),
    FrameType.PONG: (0, b"\x08\x07\x06\x05\x04\x03\x02\x01"),
    FrameType.DATAGRAM: (6, b"\x00one datagram, whole\xff"),
}


def sample_stream() -> bytes:
    """Every frame type, some twice, with DATA on two streams interleaved."""
    parts = [encode_frame(t, s, p) for t, (s, p) in SAMPLE_PAYLOADS.items()]
    parts += [
        encode_frame(FrameType.DATA, 4, b"x" * 37),
        encode_frame(FrameType.DATA, 2, b"y"),
        encode_frame(FrameType.DATA, 4, b"z" * 20),
        encode_frame(FrameType.FIN, 4),
        encode_close(4, ""),
        encode_control({"type": "bye"}),
    ]
    return b"".join(parts)


def test_preamble_is_magic_and_version_one() -> None:
    # Fixed by docs/protocol.md: changing it breaks every deployed client.
    assert PREAMBLE.pack(b"GTXY", 1) == b"GTXY\x00\x00\x00\x01"


def test_header_layout_is_type_stream_length_big_endian() -> None:
    frame = encode_frame(FrameType.DATA, 0x01020304, b"abc")
    assert frame == b"\x03\x01\x02\x03\x04\x00\x00\x00\x03abc"


@pytest.mark.parametrize("frame_type", list(FrameType))
def test_every_frame_type_round_trips(frame_type: FrameType) -> None:
    stream_id, payload = SAMPLE_PAYLOADS[frame_type]
    events = decode(encode_frame(frame_type, stream_id, payload))
    kind = "data" if frame_type == FrameType.DATA else "frame"
    assert events == [(kind, frame_type, stream_id, payload)]


def test_a_datagram_arrives_as_one_frame_however_the_bytes_are_split() -> None:
    datagram = bytes(range(256)) * 5 + b"end"
    wire = encode_frame(FrameType.DATAGRAM, 6, datagram) + encode_frame(FrameType.DATAGRAM, 6, b"")
    for cut in (1, 9, 10, 700, len(wire) - 1):
        events: list = []
        decoder = FrameDecoder(lambda t, s, p: events.append((t, s, p)), lambda s, c: events.append(("data", s, c)))
        decoder.feed(wire[:cut])
        decoder.feed(wire[cut:])
        assert events == [(FrameType.DATAGRAM, 6, datagram), (FrameType.DATAGRAM, 6, b"")]  # never split, never merged
    with pytest.raises(ProtocolError, match="DATAGRAM frame of 65536 bytes exceeds the limit of 65535"):
        FrameDecoder(lambda *a: None, lambda *a: None).feed(HEADER.pack(FrameType.DATAGRAM, 6, 65536))


def test_control_and_json_helpers_round_trip() -> None:
    message = {"type": "tunnel_open", "name": "web \u00e9", "remotePort": 8080, "nested": {"a": [1, None]}}
    events = decode(encode_control(message))
    assert [(e[1], e[2]) for e in events] == [(FrameType.CONTROL, 0)]
    assert decode_json(events[0][3]) == message

    events = decode(encode_json(FrameType.OPEN, 6, {"tunnel": "t", "peer": "1.2.3.4:5"}))
    assert [(e[1], e[2]) for e in events] == [(FrameType.OPEN, 6)]
    assert decode_json(events[0][3]) == {"tunnel": "t", "peer": "1.2.3.4:5"}


def test_max_stream_id_round_trips() -> None:
    assert decode(encode_frame(FrameType.FIN, 0xFFFFFFFF)) == [("frame", FrameType.FIN, 0xFFFFFFFF, b"")]


def test_every_split_point_gives_the_same_frames() -> None:
    data = sample_stream()
    expected = decode(data)
    assert len(expected) >= 12
    for cut in range(len(data) + 1):
        recorder = Recorder()
        recorder.decoder.feed(data[:cut])
        recorder.decoder.feed(data[cut:])
        assert recorder.merged() == expected, f"split at byte {cut}"


def test_two_split_points_give_the_same_frames() -> None:
    data = sample_stream()
    expected = decode(data)
    # Every pair of cuts around the frame boundaries of the first few frames
    # (headers straddling two feeds, a feed inside one header, ...).
    for a in range(0, 120):
        for b in range(a, 120, 7):
            recorder = Recorder()
            for piece in (data[:a], data[a:b], data[b:]):
                recorder.decoder.feed(piece)
            assert recorder.merged() == expected, f"cuts at {a} and {b}"


def test_one_byte_at_a_time_gives_the_same_frames() -> None:
    data = sample_stream()
    recorder = Recorder()
    for i in range(len(data)):
        recorder.decoder.feed(data[i : i + 1])
    assert recorder.merged() == decode(data)


def test_random_splits_give_the_same_frames() -> None:
    rng = random.Random(1234)
    data = sample_stream() * 5
    expected = decode(data)
    for _ in range(200):
        recorder = Recorder()
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 40)
            recorder.decoder.feed(data[pos : pos + step])
            pos += step
        assert recorder.merged() == expected


def test_frames_counts_headers_decoded() -> None:
    recorder = Recorder()
    data = encode_frame(FrameType.PING, 0, b"12345678") + encode_frame(FrameType.DATA, 2, b"abc")
    recorder.decoder.feed(data[:5])
    assert recorder.decoder.frames == 0
    recorder.decoder.feed(data[5:])
    assert recorder.decoder.frames == 2


def test_large_data_frame_is_handed_out_piece_by_piece_without_buffering() -> None:
    payload = random.Random(7).randbytes(MAX_DATA)
    frame = encode_frame(FrameType.DATA, 8, payload)
    recorder = Recorder()
    recorder.decoder.feed(frame[:HEADER_SIZE])
    assert recorder.events == []
    body = frame[HEADER_SIZE:]
    for i in range(64):
        recorder.decoder.feed(body[i * 1024 : (i + 1) * 1024])
        # Each piece is out as soon as it arrives: nothing waits for the rest.
        assert len(recorder.events) == i + 1
        assert recorder.events[-1] == ("data", FrameType.DATA, 8, body[i * 1024 : (i + 1) * 1024])
    assert b"".join(e[3] for e in recorder.events) == payload
    # And the decoder is back at a frame boundary.
    recorder.decoder.feed(encode_frame(FrameType.FIN, 8))
    assert recorder.events[-1] == ("frame", FrameType.FIN, 8, b"")


def test_data_piece_followed_by_next_frame_in_one_feed() -> None:
    recorder = Recorder()
    frame = encode_frame(FrameType.DATA, 2, b"hello world")
    recorder.decoder.feed(frame[:12])
    recorder.decoder.feed(frame[12:] + encode_frame(FrameType.FIN, 2))
    assert recorder.merged() == [("data", FrameType.DATA, 2, b"hello world"), ("frame", FrameType.FIN, 2, b"")]


@pytest.mark.parametrize(
    "frame_type, length",
    [
        (FrameType.DATA, MAX_DATA + 1),
        (FrameType.DATA, 0xFFFFFFFF),
        (FrameType.CONTROL, MAX_CONTROL + 1),
        (FrameType.OPEN, MAX_PAYLOAD[FrameType.OPEN] + 1),
        (FrameType.WINDOW, 5),
        (FrameType.FIN, 1),
        (FrameType.CLOSE, MAX_PAYLOAD[FrameType.CLOSE] + 1),
        (FrameType.PING, 9),
        (FrameType.PONG, 9),
    ],
)
def test_oversized_length_is_refused_from_the_header_alone(frame_type: FrameType, length: int) -> None:
    recorder = Recorder()
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        # Only the header: the decoder must not wait for (or buffer) the payload.
        recorder.decoder.feed(HEADER.pack(frame_type, 2, length))
    assert recorder.events == []


def test_oversized_header_split_over_feeds_is_refused_when_complete() -> None:
    recorder = Recorder()
    header = HEADER.pack(FrameType.CONTROL, 0, 10_000_000)
    recorder.decoder.feed(header[:4])
    with pytest.raises(ProtocolError):
        recorder.decoder.feed(header[4:])


def test_largest_allowed_payloads_are_accepted() -> None:
    for frame_type, limit in MAX_PAYLOAD.items():
        if frame_type == FrameType.CONTROL:
            payload = b'{"a":"' + b"x" * (limit - 8) + b'"}'
        else:
            payload = b"\x01" * limit
        assert len(payload) == limit
        events = decode(encode_frame(frame_type, 2, payload))
        assert b"".join(e[3] for e in events) == payload


@pytest.mark.parametrize("frame_type", [0, 10, 255])
def test_unknown_frame_type_is_a_protocol_error(frame_type: int) -> None:
    with pytest.raises(ProtocolError, match="unknown frame type"):
        Recorder().decoder.feed(HEADER.pack(frame_type, 0, 0))


def test_empty_data_frame_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="empty DATA"):
        Recorder().decoder.feed(encode_frame(FrameType.DATA, 2, b""))


def test_empty_payload_frames_are_delivered_at_once() -> None:
    recorder = Recorder()
    recorder.decoder.feed(encode_frame(FrameType.FIN, 2) + encode_frame(FrameType.CLOSE, 2))
    assert recorder.events == [("frame", FrameType.FIN, 2, b""), ("frame", FrameType.CLOSE, 2, b"")]


def test_close_reason_is_truncated_without_splitting_a_character() -> None:
    limit = MAX_PAYLOAD[FrameType.CLOSE]
    for reason in ["\u00e9" * 1000, "a" * (limit - 1) + "\u20ac" * 5, "x" + "\U0001f600" * 400]:
        frame = encode_close(6, reason)
        (events,) = [decode(frame)]
        [(kind, frame_type, stream_id, payload)] = events
        assert (kind, frame_type, stream_id) == ("frame", FrameType.CLOSE, 6)
        assert len(payload) <= limit
        text = payload.decode("utf-8")  # strict: must be valid UTF-8
        assert reason.startswith(text)
        # Only as much as needed was cut: at most one character's worth.
        assert len(payload) > limit - 4


def test_short_close_reason_is_kept_whole() -> None:
    frame = encode_close(2, "error: connection refused by 127.0.0.1:22")
    assert decode(frame) == [("frame", FrameType.CLOSE, 2, b"error: connection refused by 127.0.0.1:22")]


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"3", b"null", b"true"])
def test_control_json_that_is_not_an_object_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="not an object"):
        decode_json(payload)


@pytest.mark.parametrize(
    "payload", [b"", b"{", b"\xff\xfe{}", b"{'a': 1}", b'{"remotePort":Infinity}', b'{"a":NaN}', b'{"a":-Infinity}', b'{"a":1e400}']
)
def test_malformed_json_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed JSON"):
        decode_json(payload)


def test_control_message_larger_than_the_limit_is_refused_by_the_sender() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_control({"blob": "x" * MAX_CONTROL})
    # Just under the limit is fine and the receiver accepts it.
    message = {"blob": "x" * (MAX_CONTROL - len(b'{"blob":""}'))}
    frame = encode_control(message)
    assert len(frame) - HEADER_SIZE == MAX_CONTROL
    assert json.loads(decode(frame)[0][3]) == message


@pytest.mark.parametrize(
    "payload",
    [b"[" * 8000, b"{" * 8000, b'{"a":' * 17 + b"1" + b"}" * 17, b"[" * 17 + b"]" * 17, b'{"a":' + b"[" * 5000],
    ids=["8000 [", "8000 {", "17 objects", "17 arrays", "unclosed"],
)
def test_deeply_nested_json_is_a_protocol_error_not_a_recursion_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        decode_json(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":' * (MAX_JSON_DEPTH - 1) + b"[1]" + b"}" * (MAX_JSON_DEPTH - 1),
        b'{"reason":"' + b"[{" * 4000 + b'"}',  # brackets inside a string do not nest
        b'{"reason":"\\"' + b"[" * 100 + b'","list":[' + b"[]," * 500 + b"[]]}",
    ],
    ids=["at the limit", "in a string", "wide, escaped quote"],
)
def test_nesting_up_to_the_limit_and_brackets_in_strings_are_fine(payload: bytes) -> None:
    assert isinstance(decode_json(payload), dict)
