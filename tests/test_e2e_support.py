"""
``tests.e2e.free_port``: a port handed to a test stays its own until the
test ends, so a server told to listen there finds it free, and nothing
else (no outgoing connection, no other bind) can take it meanwhile.
"""

from __future__ import annotations

import errno
import socket

import pytest

from tests.e2e import _held, free_port, free_port_range, release_ports


def test_a_port_from_free_port_is_held_for_servers_only() -> None:
    port = free_port()
    # Any other program's plain bind is refused ...
    with socket.socket() as other:
        with pytest.raises(OSError) as refused:
            other.bind(("127.0.0.1", port))
    assert refused.value.errno == errno.EADDRINUSE
    # ... the kernel never hands it out ...
    handed = set()
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            handed.add(s.getsockname()[1])
    assert port not in handed
    # ... nothing answers there ...
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # ... and a server (SO_REUSEADDR, as Twisted's listeners) listens on it, on any address.
    for address in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((address, port))
            server.listen(1)
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                server.accept()[0].close()


def test_a_port_range_is_held_the_same_way_and_let_go_after_the_test() -> None:
    low, high = free_port_range(3)
    with socket.socket() as other:
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", low + 1))
    count = len(_held)
    assert count >= 3
    release_ports()  # what tests/conftest.py does after each test
    assert _held == []
    with socket.socket() as other:
        other.bind(("127.0.0.1", high))
