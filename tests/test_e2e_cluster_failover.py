"""
End to end: a client that lists every node of a cluster (``--server
a,b,c``) fails over between them (issue 16, "Clients fail over" and
"Nothing lost when a node dies").

Three real ``twistd gotaxy-server`` nodes on one real PostgreSQL
(tests/cluster.py) and one real ``twistd gotaxy-client``:

* ``kill -9`` of the node the client is on, during a transfer: the client is
  logged in on the next node within 5 s (the measured time is printed), its
  tunnel answers again on the same port with the bytes intact, the store
  says the client is online on that node and on no dead one, the events say
  what happened (one ``client.disconnected``), and the disconnect webhook
  (a receiver on loopback) fires exactly once (once per live node until
  notifications are sent once cluster-wide: ``ONCE_PER_CLUSTER``);
* a rolling restart of every node while the client keeps its tunnel: at
  most one short interruption per restart, and the tunnel is never lost
  (each interruption is printed).

The nodes share one TLS identity (node a's key and certificate, copied into
the others' data directories before they start), so one pin accepts all.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import threading
import time
from typing import Any, List

import pytest

from tests.cluster import wait_until
from tests.e2e import echo_once, stream_through, tunnel_port
from tests.test_notify_e2e import Receiver

#: Webhooks are sent once per event cluster-wide (not once per node that reads the event).
ONCE_PER_CLUSTER = importlib.util.find_spec("gotaxy.notify.once") is not None


def start_cluster(cluster: Any, receiver: Receiver, tmp_path: Any) -> Any:
    """Three nodes with one TLS identity and a webhook for client events, flap suppression off."""
    config = tmp_path / "server.toml"
    config.write_text(
        "notify.flapGrace = 0\n"  # a fail-over is a flap: with the default grace no notification is sent at all
        "[[webhooks]]\n"
        f'url = "http://127.0.0.1:{receiver.port}/hook"\n'
        'events = ["client.*"]\n'
    )
    nodes = cluster(3, "--config", str(config), start=False)
    first = nodes["a"].start()
    for node in list(nodes)[1:]:
        (node.data_dir / "tls").mkdir(parents=True, mode=0o700)
        for path in (first.data_dir / "tls").iterdir():
            shutil.copy(path, node.data_dir / "tls" / path.name)
        node.start()
    assert len({node.fingerprint for node in nodes}) == 1
    return nodes


def failover_client(nodes: Any, *tunnels: str) -> Any:
    first = nodes["a"]
    for node in nodes:
        nodes._note_token(node)
    argv = ["--server", ",".join(f"127.0.0.1:{node.port}" for node in nodes), "--token", nodes.token,
            "--fingerprint", first.fingerprint, "--data-dir", str(nodes.procs.workdir / "client-data")]
    for tunnel in tunnels:
        argv += ["--tunnel", tunnel]
    return nodes.procs.twistd("gotaxy-client", argv, "client")


def store_rows(nodes: Any, query: str) -> List[Any]:
    import psycopg

    url = nodes.url  # postgresql://role@/db?host=DIR
    role = url.split("//")[1].split("@")[0]
    database, host = url.split("@/")[1].split("?host=")
    with psycopg.connect(host=host, user=role, dbname=database) as connection:
        return list(connection.execute(query))


def logged_in_on(client: Any, node: Any, start: int, timeout: float) -> None:
    client.wait_for(rf"logged in to 127\.0\.0\.1:{node.port} as", timeout, start)


class Transfer(threading.Thread):
    """Echo bytes through the tunnel until the connection breaks; how many came back."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.echoed = 0
        self.flowing = threading.Event()
        self.ended: Any = None

    def run(self) -> None:
        block = b"x" * 65536
        try:
            while True:
                self.sock.sendall(block)
                got = self.sock.recv(262144)
                if not got:
                    self.ended = "closed"
                    return
                self.echoed += len(got)
                if self.echoed > 1 << 20:
                    self.flowing.set()
        except OSError as e:
            self.ended = e
        finally:
            self.flowing.set()
            self.sock.close()


@pytest.mark.timeout(300)
def test_kill_9_of_the_clients_node_moves_it_to_the_next_within_seconds(cluster, echo, tmp_path):
    receiver = Receiver()
    try:
        nodes = start_cluster(cluster, receiver, tmp_path)
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        client = failover_client(nodes, f"echo=tcp:127.0.0.1:{echo.port}")
        logged_in_on(client, a, 0, 30)
        port = tunnel_port(client, "echo")
        assert echo_once(port, b"before") == b"before"
        wait_until(lambda: [e["event"] for e in receiver.events()].count("client.connected") >= 1, 20,
                   "the first client.connected webhook")

        transfer = Transfer(port)
        transfer.start()
        assert transfer.flowing.wait(30) and transfer.echoed > 1 << 20, transfer.ended
        mark = client.mark()
        killed_at = time.monotonic()
        a.kill()
        # On b (the next of the list) within 5 s of the kill.
        logged_in_on(client, b, mark, 5.0)
        on_b = time.monotonic() - killed_at
        back = tunnel_port(client, "echo", 10, mark)
        tunnel_back = time.monotonic() - killed_at
        print(f"\nkill -9 of node a: client logged in on node b after {on_b:.2f} s, tunnel echo up again after "
              f"{tunnel_back:.2f} s (transfer cut after {transfer.echoed} bytes echoed: {transfer.ended})")
        transfer.join(30)
        assert transfer.ended is not None  # the transfer through the dead node ended, it did not hang
        assert back == port  # the same public port, claimed for the tunnel across nodes
        sent, received = stream_through(back, 4 << 20)
        assert sent == received

        # The store: online on b, on no dead node.
        assert store_rows(nodes, "SELECT name, online, node FROM clients WHERE name = 'default'") == [
            ("default", True, "b")]
        assert store_rows(nodes, "SELECT count(*) FROM clients WHERE online AND node = 'a'") == [(0,)]
        assert store_rows(nodes, "SELECT status, node FROM tunnels WHERE client = 'default' AND name = 'echo'") == [
            ("up", "b")]

        # The events say what happened: one disconnect, from a, recorded by b when the client came back there.
        events = b.api.get("/events?client=default&limit=100")["events"]
        disconnects = [e for e in events if e["type"] == "client.disconnected"]
        assert [e["detail"] for e in disconnects] == [
            "its connection to server a ended; it logged in again on server b"]
        assert [e["type"] for e in events].count("client.connected") == 2

        # a's lease runs out (30 s): b or c releases it, and no further disconnect is recorded or sent.
        released = wait_until(lambda: "node a stopped renewing its lease" in b.output() + c.output(), 60,
                              "a node releasing node a's lease")
        print(f"node a's lease released {released:.1f} s after the tunnel was back")
        assert store_rows(nodes, "SELECT count(*) FROM nodes WHERE node_id = 'a'") == [(0,)]
        # A fence: the client's own clean stop, sent after everything above; then count the disconnects sent.
        client.stop()
        fence = lambda e: e["event"] == "client.disconnected" and e["detail"] != disconnects[0]["detail"]  # noqa: E731
        wait_until(lambda: any(fence(e) for e in receiver.events()), 20, "the webhook of the client's clean stop")
        print("webhooks received:", json.dumps([(e["event"], e["detail"]) for e in receiver.events()]))
        hooks = [e for e in receiver.events() if e["event"] == "client.disconnected" and not fence(e)]
        assert {e["client"] for e in hooks} == {"default"}
        if ONCE_PER_CLUSTER:
            assert len(hooks) == 1, hooks
        else:
            # Until notifications are sent once per event cluster-wide (helper "once", gotaxy/notify/once.py),
            # every live node sends each event it reads: the one disconnect is recorded once, sent by b and c.
            assert len(hooks) == 2, hooks
            print("NOTE: the disconnect was recorded once but each of the 2 live nodes sent its webhook")
    finally:
        receiver.close()


class Prober(threading.Thread):
    """Echo a few bytes through the tunnel every 50 ms; the stretches in which it did not answer."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.outages: List[List[float]] = []  # [first failure, first success after it]
        self.answers = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                ok = echo_once(self.port, b"probe", timeout=2) == b"probe"
            except OSError:
                ok = False
            now = time.monotonic()
            if ok:
                self.answers += 1
                if self.outages and len(self.outages[-1]) == 1:
                    self.outages[-1].append(now)
            elif not self.outages or len(self.outages[-1]) == 2:
                self.outages.append([now])
            self.done.wait(0.05)

    def answering(self) -> bool:
        return not self.outages or len(self.outages[-1]) == 2


@pytest.mark.timeout(400)
def test_a_rolling_restart_of_every_node_costs_one_short_interruption_each(cluster, echo, tmp_path):
    receiver = Receiver()
    prober = None
    try:
        nodes = start_cluster(cluster, receiver, tmp_path)
        client = failover_client(nodes, f"echo=tcp:127.0.0.1:{echo.port}")
        logged_in_on(client, nodes["a"], 0, 30)
        port = tunnel_port(client, "echo")
        prober = Prober(port)
        prober.start()
        wait_until(lambda: prober.answers > 0, 20, "the tunnel answering the prober")
        for node in nodes:
            mark = client.mark()
            before = len(prober.outages)
            node.restart()
            text = client.output()[mark:]
            moved = text.count("disconnected from the server")
            if moved:  # the client was on this node: it said goodbye and the client went to another
                assert tunnel_port(client, "echo", 20, mark) == port  # the same tunnel, the same port
            wait_until(prober.answering, 20, f"the tunnel answering again after node {node.name}'s restart")
            outages = [end - start for start, end in prober.outages[before:]]
            on = [line.split("logged in to ")[1].split(" as")[0] for line in text.splitlines() if "logged in to" in line]
            print(f"\nrestart of node {node.name}: client disconnected {moved} time(s), logged in to {on or 'none'}; "
                  f"tunnel interruptions seen by a prober every 50 ms: {[f'{o:.2f} s' for o in outages]}")
            assert moved <= 1, text
            assert len(outages) <= 1, outages
            assert echo_once(port, b"still here") == b"still here"
        assert client.output().count("disconnected from the server") >= 1  # it did move at least once
    finally:
        if prober is not None:
            prober.done.set()
            prober.join(5)
        receiver.close()
