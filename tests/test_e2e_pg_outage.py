"""
End to end: PostgreSQL stopped for 10 s under a real ``twistd`` server.
A client connected before keeps its tunnel carrying bytes, on the
connection it had open and on new ones; a client that logs in during the
outage is told why it is refused (its log line says so), and gets in once
the database is back, without anything restarted; what happened during the
outage (a client leaving) is in the events table afterwards, with its time.

The test runs a PostgreSQL of its own (tests/postgres.py ``pause`` and
``resume``), not the one the other tests share.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Iterator

import pytest

from tests.e2e import echo_once, tunnel_port

OUTAGE = 10.0


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    from tests.postgres import running_postgres

    yield from running_postgres()


def echo_on(connection: socket.socket, payload: bytes) -> bytes:
    connection.sendall(payload)
    received = b""
    while len(received) < len(payload):
        data = connection.recv(65536)
        assert data, "the tunnel closed the connection"
        received += data
    return received


def test_postgresql_stopped_for_10_s_connected_clients_keep_working_and_new_log_ins_wait_for_it(
    procs, echo, own_postgres
) -> None:
    from gotaxy.store import Store

    url = own_postgres.url(own_postgres.database())
    server = procs.server("--database-url", url)
    store = Store(url)
    try:
        _, late_token = store.create_token("late")
        _, leaving_token = store.create_token("leaving")
    finally:
        store.close()
    steady = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", name="steady")
    port = tunnel_port(steady, "echo")
    leaving = procs.client(server, f"gone=tcp:127.0.0.1:{echo.port}", token=leaving_token, name="leaving")
    tunnel_port(leaving, "gone")
    held = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        assert echo_on(held, b"before the outage") == b"before the outage"

        server_mark = server.mark()
        own_postgres.pause()
        stopped = time.time()
        # The connected client's tunnel carries bytes: on the connection it had, and on new ones.
        assert echo_on(held, b"during the outage") == b"during the outage"
        assert echo_once(port, b"a new connection during the outage") == b"a new connection during the outage"
        # A client leaves: its disconnect is kept until the database is back.
        leaving.stop()
        server.wait_for(r"client leaving offline", start=server_mark)
        left = time.time()
        late = procs.client(server, f"late=tcp:127.0.0.1:{echo.port}", token=late_token, name="late")
        late.wait_for(r"server closed the connection: the server's database is unreachable, so it cannot check "
                      r"log-ins now \(connected clients keep working\); retrying", timeout=30)
        server.wait_for(r"the server's database \(postgresql://gotaxy@/.*\) is unreachable", start=server_mark)
        assert echo_on(held, b"still during the outage") == b"still during the outage"
        while time.time() - stopped < OUTAGE:  # the outage the issue asks for: 10 s in all
            assert echo_on(held, b"tick") == b"tick"
            time.sleep(0.5)
        late_mark = late.mark()
        own_postgres.resume()
        resumed = time.monotonic()

        # The late client gets in by itself (its back-off), its tunnel works; nothing was restarted.
        late_port = tunnel_port(late, "late", timeout=60, start=late_mark)
        print(f"the late client's tunnel was up {time.monotonic() - resumed:.1f} s after PostgreSQL was back")
        import os
        if os.environ.get("OUTAGE_SHOW"):
            print(server.output()[server_mark:]); print(late.output())
        assert echo_once(late_port, b"after the outage") == b"after the outage"
        assert echo_on(held, b"after the outage too") == b"after the outage too"
        server.wait_for(r"the server's database is reachable again; \d+ log-in\(s\) were refused meanwhile",
                        start=server_mark)
        assert server.running() and steady.running()
        assert "Traceback" not in late.output() and "refused our login" not in late.output()
    finally:
        held.close()

    store = Store(url)
    try:
        rows, _ = store.events_after(0, 500)
        clients = {c.name: c.online for c in store.list_clients()}
    finally:
        store.close()
    gone = [e for e in rows if e.type == "client.disconnected" and e.client == "leaving"]
    assert len(gone) == 1, rows
    assert stopped <= gone[0].at <= left  # written after the outage, with the time it happened
    assert clients["leaving"] is False and clients["late"] is True and clients["default"] is True
