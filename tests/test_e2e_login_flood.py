"""
End to end: peers that hold nothing cannot grow the server's database and
log files without limit.  Hundreds of wrong-token log-ins from one address
against a real ``twistd`` server are one ``login.failed`` row (and one log
line) a minute, carrying the number of attempts.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

from gotaxy.store import LOGIN_FAILED, Store, default_url
from gotaxy.wire import PREAMBLE, PREAMBLE_MAGIC, PROTOCOL_VERSION, FrameDecoder, FrameType, decode_json, encode_control

ATTEMPTS = 300


def raw_login(port: int, token: str, timeout: float = 30.0) -> Dict[str, Any]:
    """One log-in over TLS and the real frame format; the server's first control message."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    frames: List[Any] = []
    decoder = FrameDecoder(lambda kind, stream, payload: frames.append((kind, stream, bytes(payload))), lambda s, c: None)
    login = {"type": "login", "token": token, "user": "", "hostname": "flood", "version": "test"}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(PREAMBLE.pack(PREAMBLE_MAGIC, PROTOCOL_VERSION) + encode_control(login))
            while not any(kind == FrameType.CONTROL for kind, _, _ in frames):
                try:
                    data = tls.recv(65536)
                except (ssl.SSLError, ConnectionError):
                    break
                if not data:
                    break
                decoder.feed(data)
    for kind, _, payload in frames:
        if kind == FrameType.CONTROL:
            return decode_json(payload)
    raise AssertionError("the server closed without answering the log-in")


def test_a_flood_of_wrong_tokens_is_one_event_and_log_line_per_minute(procs):
    server = procs.server()
    wrong = "gtx_" + "B" * 43
    # A few at a time, below transport.maxPendingPerIP, as fast as the server answers.
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda _: raw_login(server.port, wrong), range(ATTEMPTS)))
    minutes = (time.monotonic() - started) / 60
    assert all(r == {"type": "login_failed", "reason": "invalid, expired or revoked token"} for r in replies)

    # The first failure is told at once, with its address...
    server.wait_for(r"login failed from 127\.0\.0\.1:\d+: invalid, expired or revoked token")
    # ... the rest are counted, one line a minute; stopping the server writes the last count.
    server.stop()
    output = server.output()
    lines = output.count("login failed from")
    assert 2 <= lines <= 2 + int(minutes), output[-3000:]  # 2 on a machine that keeps up
    assert re.search(r"login failed from 127\.0\.0\.1: \d+ more attempts with an invalid", output)
    log_file = (server.data_dir / "logs" / "gotaxy.log").read_text()
    assert log_file.count("login failed from") == lines

    store = Store(default_url(str(server.data_dir)))
    try:
        rows = sorted(store.events(type_=LOGIN_FAILED, limit=1000), key=lambda r: r.id)
    finally:
        store.close()
    assert len(rows) == lines
    first, aggregates = rows[0], rows[1:]
    assert (first.count, first.detail) == (1, "invalid token")
    assert first.address.startswith("127.0.0.1:")
    for row in aggregates:
        assert row.address == "127.0.0.1"
        assert row.detail == f"invalid token; {row.count} more attempts in the last 60 s"
    assert sum(r.count for r in rows) == ATTEMPTS
    assert wrong not in output and wrong not in log_file
