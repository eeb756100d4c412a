# -*- test-case-name: tests.test_wire -*-
"""
The Gotaxy wire format: frames on the client's single TLS connection.

After the TLS handshake the client sends an 8-byte preamble, ``b"GTXY"``
followed by the protocol version as a big-endian uint32 (currently 2; version
2 carries tunnels as proxy specs and public addresses, see ``gotaxy.proxy``).
A server refuses another version with a ``login_failed`` control message
(code ``version``) that names the side to upgrade: the frame format and that
message are the same in every version, so an old client shows it.  From
then on both directions carry frames, each a 9-byte header and a payload::

    +--------+-----------------+-----------------+------------------+
    | type:1 | stream id:4     | length:4        | payload:length   |
    +--------+-----------------+-----------------+------------------+

(all integers big-endian).  Stream 0 is the control stream; streams 1..2**32-1
are tunneled connections, opened by the server with even ids (the client's
odd ids are reserved for a later version).  Ids are never reused within one
TLS connection, so a frame that arrives for a stream already closed is
dropped without ambiguity.

Payload limits are checked *before* any payload is buffered, so a peer that
announces a huge length is cut off at once; see ``MAX_PAYLOAD``.  DATA
payloads are not buffered at all: ``FrameDecoder`` hands every piece of a
DATA frame to ``on_data`` as soon as it arrives, which keeps the relay path
free of copies and the memory bound independent of frame size.

**Datagram flows** (UDP tunnels): an OPEN whose JSON has ``"mode":
"datagram"`` opens a *flow* instead of a byte stream: one visitor's
association.  Each DATAGRAM frame on it carries exactly one datagram, whole
(the frame is buffered until complete, like CONTROL, and handed over as
one), so datagrams are never merged or split.  A flow has no window, FIN or
WINDOW frames: a sender whose connection is backed up drops the datagram
instead (UDP's contract), so datagrams never hold up a stream.  CLOSE ends
a flow from either side.  The frame type is additive within version 2: it
is only ever sent on a flow of a ``udp`` tunnel, and a peer without the
``udp`` type refuses such a tunnel by name ("tunnel type 'udp' is not
supported by this version") before any flow exists.

``docs/protocol.md`` is the user-facing description of the same format; keep
the two in step.
"""

from __future__ import annotations

import enum
import json
import math
import re
import struct
from typing import Any, Callable, Dict

PREAMBLE_MAGIC = b"GTXY"
PROTOCOL_VERSION = 2
PREAMBLE = struct.Struct("!4sI")

HEADER = struct.Struct("!BII")
HEADER_SIZE = HEADER.size


class FrameType(enum.IntEnum):
    CONTROL = 1  #: stream 0 only; payload is one UTF-8 JSON object
    OPEN = 2  #: opens a stream; payload JSON {"tunnel": name, "peer": "ip:port"}
    DATA = 3  #: stream bytes; consumes the receiver's window
    WINDOW = 4  #: payload uint32: more bytes the sender of WINDOW will accept
    FIN = 5  #: the sender will send no more DATA on this stream (half-close)
    CLOSE = 6  #: the sender is done with the stream; payload: UTF-8 reason
    PING = 7  #: payload 8 opaque bytes, echoed in PONG
    PONG = 8
    DATAGRAM = 9  #: one whole datagram of a datagram flow (OPEN with "mode": "datagram"); no window


#: Largest payload accepted per frame type; anything larger is a protocol
#: error that ends the connection.
MAX_DATA = 65536
MAX_CONTROL = 16384
#: The largest UDP payload there is (65,535 less the IP and UDP headers, rounded up).
MAX_DATAGRAM = 65535
MAX_PAYLOAD: Dict[int, int] = {
    FrameType.CONTROL: MAX_CONTROL,
    FrameType.OPEN: 1024,
    FrameType.DATA: MAX_DATA,
    FrameType.WINDOW: 4,
    FrameType.FIN: 0,
    FrameType.CLOSE: 1024,
    FrameType.PING: 8,
    FrameType.PONG: 8,
    FrameType.DATAGRAM: MAX_DATAGRAM,
}

#: Bytes each side may send on a new stream before it hears a WINDOW frame.
INITIAL_WINDOW = 512 * 1024
#: A receiver's window may never exceed this (WINDOW frames that would push
#: it higher are a protocol error), which bounds per-stream buffering.
MAX_WINDOW = 16 * 1024 * 1024

WINDOW_INCREMENT = struct.Struct("!I")


#: A CLOSE reason starting with this reports a failure (the local service
#: could not be reached, ...) rather than an ordinary end of connection; the
#: receiving side logs it.
CLOSE_ERROR_PREFIX = "error: "


class ProtocolError(Exception):
    """The peer broke the wire format; the connection must be dropped."""


def encode_frame(frame_type: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(frame_type, stream_id, len(payload)) + payload


#: One encoder for every message: ``json.dumps`` with ``separators`` builds a
#: new ``JSONEncoder`` per call, and every public connection's OPEN is
#: encoded here (1.6 instead of 3 µs of CPU per OPEN, issue 15).
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def encode_control(message: Dict[str, Any]) -> bytes:
    payload = _COMPACT_JSON.encode(message).encode("utf-8")
    if len(payload) > MAX_CONTROL:
        raise ValueError(f"control message of {len(payload)} bytes exceeds {MAX_CONTROL}")
    return encode_frame(FrameType.CONTROL, 0, payload)


def encode_json(frame_type: int, stream_id: int, message: Dict[str, Any]) -> bytes:
    return encode_frame(frame_type, stream_id, _COMPACT_JSON.encode(message).encode("utf-8"))


#: Deepest nesting of arrays and objects a JSON payload may have.  Our
#: messages are flat; the bound keeps ``json.loads`` from recursing on
#: ``[[[[...`` (8,000 of them exhaust Python's recursion limit).
MAX_JSON_DEPTH = 16

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_JSON_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def _too_deep(payload: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """
    True if the JSON text nests arrays/objects deeper than ``limit``,
    judged without recursion: drop strings (brackets inside them do not
    count; UTF-8 never puts ASCII bytes inside a multi-byte character), keep
    only the brackets, all as ``[]``, and peel off innermost pairs ``limit``
    times.  A payload with at most ``limit`` opening brackets skips all that.
    """
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", payload).translate(_JSON_AS_SQUARE, _JSON_NOT_BRACKET)
    for _ in range(limit):
        peeled = brackets.replace(b"[]", b"")
        if len(peeled) == len(brackets):
            break  # nothing left to peel: empty, or not balanced JSON
        brackets = peeled
    return bool(brackets)


def _not_json(constant: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and every peer) does not.
    raise ValueError(f"{constant} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 would become Infinity
        raise ValueError(f"number {text[:32]} is out of range")
    return value


#: One decoder for every payload, for the same reason as ``_COMPACT_JSON``
#: (``json.loads`` with hooks builds a ``JSONDecoder`` per call): 1.7
#: instead of 3 µs per OPEN on the client, the depth check included.
_STRICT_JSON = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite_float)


def decode_json(payload: bytes) -> Dict[str, Any]:
    if _too_deep(payload):
        raise ProtocolError(f"JSON payload nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        message = _STRICT_JSON.decode(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"malformed JSON payload: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("JSON payload is not an object")
    return message


def encode_close(stream_id: int, reason: str) -> bytes:
    data = reason.encode("utf-8")[: MAX_PAYLOAD[FrameType.CLOSE]]
    # Never cut a multi-byte character in half.
    data = data.decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(FrameType.CLOSE, stream_id, data)


class FrameDecoder:
    """
    Incremental decoder.  ``feed`` may be given any split of the byte
    stream; it calls ``on_frame(type, stream_id, payload)`` for complete
    non-DATA frames, and ``on_data(stream_id, chunk)`` for each piece of a
    DATA frame (a DATA frame may arrive as several chunks; ``on_data_end`` is
    not needed because DATA carries no framing meaning of its own).

    ``frames`` counts headers decoded; the heartbeat uses it as a cheap
    proof of life without reading the clock per frame.
    """

    __slots__ = ("_on_frame", "_on_data", "_header", "_type", "_stream", "_remaining", "_payload", "frames")

    def __init__(
        self,
        on_frame: Callable[[int, int, bytes], None],
        on_data: Callable[[int, bytes], None],
    ) -> None:
        self._on_frame = on_frame
        self._on_data = on_data
        self._header = b""
        self._type = 0
        self._stream = 0
        self._remaining = 0  # payload bytes still to come for the current frame
        self._payload = bytearray()
        self.frames = 0

    def feed(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                if self._type == FrameType.DATA:
                    self._remaining -= take
                    # Hand the caller the original object when we can.
                    chunk = data if take == end and pos == 0 else data[pos : pos + take]
                    pos += take
                    self._on_data(self._stream, chunk)
                    continue
                self._payload += data[pos : pos + take]
                self._remaining -= take
                pos += take
                if not self._remaining:
                    self._deliver(bytes(self._payload))
                continue

            need = HEADER_SIZE - len(self._header)
            if need == HEADER_SIZE and end - pos >= HEADER_SIZE:
                frame_type, stream_id, length = HEADER.unpack_from(data, pos)
                pos += HEADER_SIZE
            else:
                self._header += data[pos : pos + need]
                pos += min(need, end - pos)
                if len(self._header) < HEADER_SIZE:
                    return
                frame_type, stream_id, length = HEADER.unpack(self._header)
                self._header = b""
            self.frames += 1
            limit = MAX_PAYLOAD.get(frame_type)
            if limit is None:
                raise ProtocolError(f"unknown frame type {frame_type}")
            if length > limit:
                raise ProtocolError(
                    f"{FrameType(frame_type).name} frame of {length} bytes exceeds the limit of {limit}"
                )
            self._type = frame_type
            self._stream = stream_id
            if frame_type == FrameType.DATA:
                if length == 0:
                    raise ProtocolError("empty DATA frame")
                self._remaining = length
            elif length == 0:
                self._deliver(b"")
            else:
                self._remaining = length
                self._payload = bytearray()

    def _deliver(self, payload: bytes) -> None:
        self._on_frame(self._type, self._stream, payload)
