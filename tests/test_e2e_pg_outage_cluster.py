"""
End to end: PostgreSQL stopped for 10 s under two real ``twistd`` server
nodes sharing it (issue 16).  Each node keeps its connected client's tunnel
carrying bytes, on the connection it had open and on new ones; a client
that logs in on either node during the outage is told why it is refused,
and gets in by itself once the database is back; neither node marks the
other's clients offline for the outage (no lease was released).

The one-node version is tests/test_e2e_pg_outage.py; this test runs a
PostgreSQL of its own (``pause`` and ``resume``), not the shared one.
"""

from __future__ import annotations

import shutil
import socket
import time
from typing import Any, Iterator

import pytest

from tests.e2e import echo_once, tunnel_port
from tests.test_e2e_pg_outage import OUTAGE, echo_on

REFUSED = (r"server closed the connection: the server's database is unreachable, so it cannot check "
           r"log-ins now \(connected clients keep working\); retrying")


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    from tests.postgres import running_postgres

    yield from running_postgres()


def test_postgresql_stopped_for_10_s_under_two_nodes_both_keep_their_clients_and_refuse_new_log_ins_until_back(
    procs, echo, own_postgres
) -> None:
    from gotaxy.store import Store

    url = own_postgres.url(own_postgres.database())
    a = procs.server("--database-url", url, name="a", data_dir="a-data")
    # Nodes of one database share its notification key (docs/configuration.md).
    (a.data_dir.parent / "b-data").mkdir(mode=0o700)
    shutil.copy(a.data_dir / "notify.key", a.data_dir.parent / "b-data" / "notify.key")
    b = procs.server("--database-url", url, name="b", data_dir="b-data")
    store = Store(url)
    try:
        tokens = {name: store.create_token(name)[1] for name in ("on_b", "late_a", "late_b")}
    finally:
        store.close()
    steady = {"a": procs.client(a, f"echo=tcp:127.0.0.1:{echo.port}", token=a.token, name="on_a"),
              "b": procs.client(b, f"echo=tcp:127.0.0.1:{echo.port}", token=tokens["on_b"], name="on_b")}
    ports = {node: tunnel_port(client, "echo") for node, client in steady.items()}
    held = {node: socket.create_connection(("127.0.0.1", port), timeout=20) for node, port in ports.items()}
    try:
        for node in ("a", "b"):
            assert echo_on(held[node], b"before the outage") == b"before the outage"

        marks = {"a": a.mark(), "b": b.mark()}
        own_postgres.pause()
        stopped = time.time()
        for node in ("a", "b"):  # both nodes' clients: the connection they had, and new ones
            assert echo_on(held[node], b"during the outage") == b"during the outage"
            assert echo_once(ports[node], b"a new connection") == b"a new connection"
        late = {"a": procs.client(a, f"late=tcp:127.0.0.1:{echo.port}", token=tokens["late_a"], name="late_a"),
                "b": procs.client(b, f"late=tcp:127.0.0.1:{echo.port}", token=tokens["late_b"], name="late_b")}
        for node, server in (("a", a), ("b", b)):
            late[node].wait_for(REFUSED, timeout=30)
            server.wait_for(r"the server's database \(postgresql://gotaxy@/.*\) is unreachable", start=marks[node])
        while time.time() - stopped < OUTAGE:  # the outage the issue asks for: 10 s in all
            for node in ("a", "b"):
                assert echo_on(held[node], b"tick") == b"tick"
            time.sleep(0.5)
        late_marks = {node: client.mark() for node, client in late.items()}
        own_postgres.resume()
        resumed = time.monotonic()

        # Each late client gets in on its node by itself (its back-off); nothing was restarted.
        for node in ("a", "b"):
            late_port = tunnel_port(late[node], "late", timeout=60, start=late_marks[node])
            print(f"node {node}: the late client's tunnel was up {time.monotonic() - resumed:.1f} s after "
                  "PostgreSQL was back")
            assert echo_once(late_port, b"after the outage") == b"after the outage"
            assert echo_on(held[node], b"after the outage too") == b"after the outage too"
        for node, server in (("a", a), ("b", b)):
            server.wait_for(r"the server's database is reachable again; \d+ log-in\(s\) were refused meanwhile",
                            start=marks[node])
            assert server.running() and steady[node].running()
            assert "Traceback" not in late[node].output() and "refused our login" not in late[node].output()
            assert "stopped renewing its lease" not in server.output()[marks[node]:], server.output()[marks[node]:]
    finally:
        for connection in held.values():
            connection.close()

    store = Store(url)
    try:
        clients = {c.name: (c.online, c.node) for c in store.list_clients()}
    finally:
        store.close()
    node_a, node_b = ((a.data_dir / "node-id").read_text().strip(), (b.data_dir / "node-id").read_text().strip())
    assert clients == {"default": (True, node_a), "on_b": (True, node_b),
                       "late_a": (True, node_a), "late_b": (True, node_b)}, clients
