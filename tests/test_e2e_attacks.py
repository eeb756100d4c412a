"""
End to end: attacks on a live server and client (issue "Under attack"),
each run against real ``twistd`` processes on loopback.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

PREAMBLE = b"GTXY" + struct.pack("!I", 1)
HEADER = struct.Struct("!BII")
CONTROL, PING, PONG = 1, 7, 8


def tls_connect(port: int, rcvbuf: Optional[int] = None) -> ssl.SSLSocket:
    """A TLS connection to the control port that checks nothing (an attacker's)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.socket()
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    return context.wrap_socket(raw)


def frame(frame_type: int, stream_id: int, payload: bytes) -> bytes:
    return HEADER.pack(frame_type, stream_id, len(payload)) + payload


def control(message: Dict[str, Any]) -> bytes:
    return frame(CONTROL, 0, json.dumps(message).encode())


def read_frames(sock: ssl.SSLSocket, timeout: float = 10.0) -> Tuple[List[Tuple[int, bytes]], bool]:
    """Frames until the server closes (True) or ``timeout`` passes (False)."""
    sock.settimeout(timeout)
    data = b""
    closed = False
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    except socket.timeout:
        pass
    except (ConnectionResetError, ssl.SSLError):
        closed = True
    out = []
    while len(data) >= HEADER.size:
        kind, _, length = HEADER.unpack_from(data)
        out.append((kind, data[HEADER.size : HEADER.size + length]))
        data = data[HEADER.size + length :]
    return out, closed


def controls(frames: List[Tuple[int, bytes]]) -> List[Dict[str, Any]]:
    return [json.loads(p) for k, p in frames if k == CONTROL]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def log_file(server: Any) -> str:
    return (server.data_dir / "logs" / "gotaxy.log").read_text(errors="replace")


# -- item 7: nested JSON -------------------------------------------------------


def test_deeply_nested_control_frame_is_a_protocol_error_without_traceback(procs):
    server = procs.server()
    for _ in range(3):
        with tls_connect(server.port) as s:
            s.sendall(PREAMBLE + frame(CONTROL, 0, b"[" * 8000))
            frames, closed = read_frames(s)
        assert closed
        (error,) = controls(frames)
        assert error["type"] == "error" and "nested deeper than 16 levels" in error["reason"]
    server.wait_for(r"protocol error: JSON payload nested deeper than 16 levels")
    for text in (server.output(), log_file(server)):
        assert "Traceback" not in text and "RecursionError" not in text
