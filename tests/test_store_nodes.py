"""
Several server processes on one store: each is a node with a lease; a start
releases only its own rows, rows of a node whose lease ran out are released
once, a late disconnect never marks a client that moved elsewhere offline,
each history hour is rolled up once.  On SQLite and PostgreSQL
(``store_url`` in tests/conftest.py); the last test runs two real servers.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Dict, List, Tuple

import pytest
from twisted.internet.task import Clock
from twisted.trial import unittest

from gotaxy.proxy import PublicAddress
from gotaxy.server.history import HOURLY, ROLLUPS, _flush
from gotaxy.server.lease import NodeLease, node_id
from gotaxy.store import CLIENT_DISCONNECTED, Store, ThreadedStore, default_url
from tests.e2e import FixedReply, free_port, free_port_range, tunnel_port

LEASE = 30.0
T0 = 1795600800.0  # on the hour


class FakeTime:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def now() -> FakeTime:
    return FakeTime()


@pytest.fixture
def open_store(store_url: str, now: FakeTime):
    opened: List[Store] = []

    def open_() -> Store:
        store = Store(store_url, clock=now)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def online(store: Store) -> Dict[str, bool]:
    return {c.name: c.online for c in store.list_clients()}


def status(store: Store) -> Dict[Tuple[str, str], Tuple[str, str]]:
    return {(t.client, t.name): (t.status, t.reason) for t in store.list_tunnels()}


def two_nodes(open_store) -> Tuple[Store, Store]:
    a, b = open_store(), open_store()
    a.join_node("node-a", LEASE, "server restarted")
    b.join_node("node-b", LEASE, "server restarted")
    a.client_connected("alice", "192.0.2.1:1", "0.1.0")
    a.tunnel_up("alice", "ssh", "tcp", "127.0.0.1:22", PublicAddress.tcp(16000), {})
    b.client_connected("bob", "192.0.2.2:1", "0.1.0")
    b.tunnel_up("bob", "web", "tcp", "127.0.0.1:80", PublicAddress.tcp(16001), {})
    return a, b


def test_a_restart_releases_only_its_own_rows(open_store) -> None:
    a, b = two_nodes(open_store)
    a.close()
    restarted = open_store()
    assert restarted.join_node("node-a", LEASE, "server restarted") == []
    assert online(restarted) == {"alice": False, "bob": True}
    assert status(restarted) == {
        ("alice", "ssh"): ("down", "server restarted"),
        ("bob", "web"): ("up", None),  # node-b's: untouched
    }


def test_a_start_releases_what_a_server_before_nodes_left(store_url: str, now: FakeTime) -> None:
    # Rows written without a node (Gotaxy 0.1.0, or the gotaxy command) are
    # released by the first server to start, as every start did before.
    old = Store(store_url, clock=now)
    old.client_connected("alice", "a:1", "0.1.0")
    old.client_connected("bob", "b:1", "0.1.0")
    old.tunnel_up("alice", "ssh", "tcp", "127.0.0.1:22", PublicAddress.tcp(6000), {})
    old.tunnel_up("bob", "web", "tcp", "127.0.0.1:80", PublicAddress.tcp(6001), {})
    old.tunnel_down("bob", "web", "refused", "port taken", "tunnel.refused")
    old.close()
    store = Store(store_url, clock=now)
    try:
        store.join_node("node-a", LEASE, "server restarted")
        assert [c.online for c in store.list_clients()] == [False, False]
        status = {t.name: (t.status, t.reason) for t in store.list_tunnels()}
        # Up tunnels go down with the reason; a refused one keeps its own story.
        assert status == {"ssh": ("down", "server restarted"), "web": ("refused", "port taken")}
    finally:
        store.close()


def test_the_rows_of_a_node_whose_lease_ran_out_are_released_once(open_store, now: FakeTime) -> None:
    a, b = two_nodes(open_store)
    c = open_store()
    c.join_node("node-c", LEASE, "server restarted")
    now.now += LEASE / 2
    assert b.renew_node(LEASE) and c.renew_node(LEASE)
    assert b.release_expired_nodes() == []  # node-a's lease still runs
    assert online(b) == {"alice": True, "bob": True}
    now.now += LEASE / 2 + 1  # node-a (killed, say) renewed nothing
    assert b.renew_node(LEASE) and c.renew_node(LEASE)
    results: List[List[str]] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.release_expired_nodes())) for s in (b, c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [[], ["node-a"]]  # one of them released it
    assert online(b) == {"alice": False, "bob": True}
    assert status(b) == {
        ("alice", "ssh"): ("down", "server node-a stopped renewing its lease"),
        ("bob", "web"): ("up", None),
    }
    assert [n for n, _ in b.live_nodes()] == ["node-b", "node-c"]


def test_a_node_that_lost_its_lease_takes_its_live_clients_back(open_store, now: FakeTime) -> None:
    a, b = two_nodes(open_store)
    now.now += LEASE + 1  # node-a stalled (or lost the database) for longer than its lease
    b.renew_node(LEASE)
    assert b.release_expired_nodes() == ["node-a"]
    assert online(a)["alice"] is False
    # node-a is back: its renewal finds its lease gone, and re-asserts what it holds.
    assert a.renew_node(LEASE, ["alice"], [("alice", "ssh")]) is False
    assert online(a) == {"alice": True, "bob": True}
    assert status(a)[("alice", "ssh")] == ("up", None)
    assert a.renew_node(LEASE) is True


def test_a_late_disconnect_leaves_a_client_that_moved_to_another_server(open_store, now: FakeTime) -> None:
    a, b = two_nodes(open_store)
    # alice's connection to node-a died; she is on node-b before node-a notices.
    b.client_connected("alice", "192.0.2.1:2", "0.1.0")
    b.tunnel_up("alice", "ssh", "tcp", "127.0.0.1:22", PublicAddress.tcp(16000), {})
    now.now += 20
    a.client_disconnected("alice", "192.0.2.1:1", "heartbeat timeout")
    assert online(a) == {"alice": True, "bob": True}
    assert status(a)[("alice", "ssh")] == ("up", None)
    # Her disconnect from node-a is recorded once, by node-b when it took her over; node-a's late one adds none.
    assert [e.detail for e in a.events(type_=CLIENT_DISCONNECTED)] == [
        "its connection to server node-a ended; it logged in again on server node-b"]
    # Her own node's disconnect counts.
    b.client_disconnected("alice", "192.0.2.1:2", "bye")
    assert online(a)["alice"] is False


def test_each_history_hour_is_rolled_up_once_with_the_samples_of_both_servers(open_store, now: FakeTime) -> None:
    a, b = open_store(), open_store()
    a.join_node("node-a", LEASE, "server restarted")
    b.join_node("node-b", LEASE, "server restarted")

    def samples(client: str, at: float) -> List[dict]:
        return [dict(at=at, client=client, tunnel="ssh", connections=1, opened=1, bytes_in=100, bytes_out=200,
                     rate_in=1.0, rate_out=2.0)]

    for minute in range(1, 61):
        _flush(a, samples("alice", T0 + 60 * minute), [], T0 + 60 * minute, False, 48, 90, 120.0)
        _flush(b, samples("bob", T0 + 60 * minute + 30), [], T0 + 60 * minute + 30, False, 48, 90, 120.0)
    # Right after the hour, with another server running, the hour waits for its last samples.
    now.now = T0 + 3600 + 10
    assert a.renew_node(LEASE) and b.renew_node(LEASE)
    assert _flush(a, [], [], now.now, True, 48, 90, 120.0) is True
    assert a.db[HOURLY].count() == 0
    # Two intervals later both try at once: one of them rolls it up.
    now.now = T0 + 3600 + 125
    assert a.renew_node(LEASE) and b.renew_node(LEASE)
    results: List[bool] = []
    threads = [
        threading.Thread(target=lambda s=s: results.append(_flush(s, [], [], now.now, True, 48, 90, 120.0)))
        for s in (a, b)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [False, False]
    rows = sorted((r["hour"], r["client"], int(r["bytes_in"]), r["samples"]) for r in a.db[HOURLY].all())
    # bob's sample at T0 + 3630 belongs to the next hour.
    assert rows == [(T0, "alice", 6000, 60), (T0, "bob", 5900, 59)]
    assert [r["hour"] for r in a.db[ROLLUPS].all()] == [T0]


def test_a_server_alone_rolls_an_hour_up_as_soon_as_it_ends(open_store, now: FakeTime) -> None:
    a = open_store()
    a.join_node("node-a", LEASE, "server restarted")
    _flush(a, [dict(at=T0 + 60, client="alice", tunnel="", rtt=0.02)], [], T0 + 60, False, 48, 90, 120.0)
    now.now = T0 + 3600 + 1
    assert a.renew_node(LEASE)
    assert _flush(a, [], [], now.now, True, 48, 90, 120.0) is False
    assert [(r["hour"], r["client"]) for r in a.db[HOURLY].all()] == [(T0, "alice")]


def test_the_history_reads_run_on_every_database(open_store, now: FakeTime) -> None:
    # The panel's charts read with hand-written SQL: portable SQL, checked on SQLite and PostgreSQL.
    from gotaxy.server import history

    a = open_store()
    a.join_node("node-a", LEASE, "server restarted")
    a.record_event("client.connected", client="alice")
    a.record_event("client.disconnected", client="alice", detail="bye")
    rows = [dict(at=T0 + 60, client="alice", tunnel="", rtt=0.02),
            dict(at=T0 + 60, client="alice", tunnel="ssh", connections=1, opened=1, bytes_in=100, bytes_out=200,
                 rate_in=1.0, rate_out=2.0)]
    session = dict(client="alice", started=T0, ended=T0 + 60, reason="bye", open=False)
    now.now = T0 + 3600 + 1
    history._flush(a, rows, [session], now.now, True, 48, 90, 120.0)
    stats = history._stability(a, "alice", now.now, None, 60.0)
    assert (stats["connects_24h"], stats["disconnects_24h"], stats["online_seconds"]) == (1, 1, 60.0)
    assert stats["disconnect_reasons_7d"][0]["reason"] == "bye"
    assert history._client_names(a) == ["alice"]
    assert [r["at"] for r in history._series(a, "alice", "ssh", T0, now.now, False)] == [T0 + 60]
    assert [int(r["bytes_in"]) for r in history._series(a, "alice", "ssh", T0, now.now, True)] == [100]
    assert [r["reason"] for r in history._sessions(a, "alice", T0, now.now, None)] == ["bye"]
    assert history._throughput(a, T0, now.now) == [(T0 + 60, 100, 200)]


def test_a_failed_delivery_with_a_long_target_label_is_stored_on_every_database(store_url: str) -> None:
    # PostgreSQL enforces the columns' lengths; a webhook's label may name a 253-character host.
    from twisted.internet.defer import succeed

    from gotaxy.notify.failures import FailureLog

    class SyncStore:
        def __init__(self, store: Store) -> None:
            self.store = store

        def call(self, function, *args):
            return succeed(function(*args))

    store = Store(store_url)
    try:
        log = FailureLog(Clock(), SyncStore(store))
        label = "webhook #1 (" + "h" * 240 + ".example)"
        log.record(label, "client.disconnected", "HTTP 500")
        failures: List[object] = []
        log.flush()
        log.stored(10).addCallback(failures.extend)
        assert [(f.target, f.reason) for f in failures] == [(label[:128], "HTTP 500")]
    finally:
        store.close()


# -- two real servers on one database ------------------------------------------


def test_two_servers_on_one_database_a_restart_leaves_the_other_servers_clients_online(
    procs, echo, store_url: str
) -> None:
    setup = Store(store_url)
    _, alpha_token = setup.create_token("alpha")
    _, beta_token = setup.create_token("beta")
    setup.close()
    a_low, a_high = free_port_range(20)
    b_low, b_high = free_port_range(20)
    a = procs.server("--database-url", store_url, "--allow-ports", f"{a_low}-{a_high}", name="a", data_dir="a-data")
    # Servers sharing a database share the key of its webhooks (docs/configuration.md).
    (a.data_dir.parent / "b-data").mkdir(mode=0o700)
    shutil.copy(a.data_dir / "notify.key", a.data_dir.parent / "b-data" / "notify.key")
    b = procs.server("--database-url", store_url, "--allow-ports", f"{b_low}-{b_high}", name="b", data_dir="b-data")
    alpha = procs.client(a, f"echo=tcp:127.0.0.1:{echo.port}", token=alpha_token, name="alpha")
    beta = procs.client(b, f"echo=tcp:127.0.0.1:{echo.port}", token=beta_token, name="beta")
    tunnel_port(alpha, "echo", timeout=40)
    tunnel_port(beta, "echo", timeout=40)
    a_node = node_id(str(a.data_dir))
    b_node = node_id(str(b.data_dir))
    assert a_node != b_node

    def seen() -> Tuple[Dict[str, bool], Dict[str, str]]:
        store = Store(store_url)
        try:
            return online(store), {t.client: t.status for t in store.list_tunnels()}
        finally:
            store.close()

    deadline = time.monotonic() + 30
    while seen() != ({"alpha": True, "beta": True}, {"alpha": "up", "beta": "up"}):
        assert time.monotonic() < deadline, seen()
        time.sleep(0.1)

    b.stop()
    mark = beta.mark()
    b2 = procs.server("--database-url", store_url, "--allow-ports", f"{b_low}-{b_high}", name="b2",
                      data_dir="b-data", port=b.port)
    # b's start released its own rows only: alpha, on a, is still online and up.
    clients, tunnels = seen()
    assert clients["alpha"] is True and tunnels["alpha"] == "up"
    tunnel_port(beta, "echo", timeout=40, start=mark)
    deadline = time.monotonic() + 30
    while seen() != ({"alpha": True, "beta": True}, {"alpha": "up", "beta": "up"}):
        assert time.monotonic() < deadline, seen()
        time.sleep(0.1)
    assert "store node " + b_node in b2.output()


# -- NodeLease: the timer that renews ---------------------------------------------


class NodeLeaseTests(unittest.TestCase):
    timeout = 60

    async def test_the_lease_is_renewed_on_the_reactors_clock_and_ended_at_a_clean_stop(self) -> None:
        from twisted.internet import reactor

        now = FakeTime()
        url = default_url(self.mktemp())
        os.makedirs(os.path.dirname(url[len("sqlite:///"):]))
        dead, sync = Store(url, clock=now), Store(url, clock=now)
        self.addCleanup(dead.close)
        dead.join_node("node-dead", LEASE, "server restarted")
        dead.client_connected("alice", "a:1", "0.1.0")
        sync.join_node("node-b", LEASE, "server restarted")
        store = ThreadedStore(sync, reactor)
        store.start()
        self.addCleanup(store.stop)
        clock = Clock()
        core = fake_core(sessions={"bob": object()}, tunnels={})
        lease = NodeLease(store, core, clock, lease=LEASE)
        lease.startService()
        now.now += LEASE + 1  # node-dead renews nothing; node-b renews on its timer
        clock.advance(lease.renew_interval)
        await lease._renewing
        nodes = dict(await store.call(sync.live_nodes))
        assert list(nodes) == ["node-b"] and nodes["node-b"] == now.now + LEASE
        assert (await store.call(online, sync)) == {"alice": False}
        await lease.stopService()
        assert await store.call(sync.live_nodes) == []


    async def test_a_configured_lease_is_renewed_every_third_of_it(self) -> None:
        from twisted.internet import reactor

        now = FakeTime()
        url = default_url(self.mktemp())
        os.makedirs(os.path.dirname(url[len("sqlite:///"):]))
        sync = Store(url, clock=now)
        sync.join_node("node-b", 6.0, "server restarted")
        store = ThreadedStore(sync, reactor)
        store.start()
        self.addCleanup(store.stop)
        clock = Clock()
        lease = NodeLease(store, fake_core(sessions={}, tunnels={}), clock, lease=6.0)
        lease.startService()
        self.addCleanup(lease.stopService)
        now.now += 1.9
        clock.advance(1.9)
        assert lease._renewing is None  # not yet: a third of 6 s is 2 s
        now.now += 0.1
        clock.advance(0.1)
        await lease._renewing
        assert dict(await store.call(sync.live_nodes))["node-b"] == now.now + 6.0


def test_cluster_lease_seconds_defaults_to_the_lease_and_is_bounded_with_a_sentence_naming_it() -> None:
    from gotaxy.config import ConfigError, parse_server_config
    from gotaxy.server import lease

    assert parse_server_config({}).config.cluster.lease_seconds == lease.LEASE == 30.0
    assert parse_server_config({"cluster": {"leaseSeconds": 12}}).config.cluster.lease_seconds == 12.0
    assert parse_server_config({"cluster": {"leaseSeconds": 7.5}}).config.cluster.lease_seconds == 7.5
    for wrong in (2, 0, -5, 3601, "30", True):
        with pytest.raises(ConfigError) as caught:
            parse_server_config({"cluster": {"leaseSeconds": wrong}})
        assert "cluster.leaseSeconds" in str(caught.value) and "from 3 to 3600" in str(caught.value), caught.value


def test_cluster_port_scope_is_cluster_or_node_and_node_is_refused_with_workers() -> None:
    from gotaxy.config import ConfigError, parse_server_config

    assert parse_server_config({}).config.cluster.port_scope == "cluster"
    assert parse_server_config({"cluster": {"portScope": "node"}}).config.cluster.port_scope == "node"
    with pytest.raises(ConfigError) as caught:
        parse_server_config({"cluster": {"portScope": "machine"}})
    assert "cluster.portScope" in str(caught.value) and '"cluster"' in str(caught.value), caught.value
    with pytest.raises(ConfigError, match=r'set cluster.portScope = "cluster"'):
        parse_server_config({"workers": 2, "cluster": {"portScope": "node"}})


def test_a_killed_node_with_a_short_configured_lease_has_its_client_marked_offline_by_the_other_soon(
    procs, echo, store_url: str, tmp_path
) -> None:
    # cluster.leaseSeconds = 3 on both nodes: node b releases killed node a's client within a lease and a
    # renewal or two, where the default 30 s lease would keep it "online" for 30 to 40 s.
    config = tmp_path / "server.toml"
    config.write_text("[cluster]\nleaseSeconds = 3\n")
    a = procs.server("--config", str(config), "--database-url", store_url, name="a", data_dir="a-data")
    (a.data_dir.parent / "b-data").mkdir(mode=0o700)
    shutil.copy(a.data_dir / "notify.key", a.data_dir.parent / "b-data" / "notify.key")
    b = procs.server("--config", str(config), "--database-url", store_url, name="b", data_dir="b-data")
    assert "lease 3 s" in a.output() and "lease 3 s" in b.output()
    alpha = procs.client(a, f"echo=tcp:127.0.0.1:{echo.port}", token=a.token, name="alpha")
    tunnel_port(alpha, "echo", timeout=40)

    def alpha_online() -> object:
        store = Store(store_url)
        try:
            states = list(online(store).values())  # the one client there is
            return states[0] if len(states) == 1 else states
        finally:
            store.close()

    deadline = time.monotonic() + 30
    while alpha_online() is not True:
        assert time.monotonic() < deadline, alpha_online()
        time.sleep(0.1)
    a.process.kill()
    killed = time.monotonic()
    while alpha_online() is not False:
        assert time.monotonic() < killed + 20, "node b did not release killed node a's client within 20 s"
        time.sleep(0.1)
    b.process.wait_for("node " + node_id(str(a.data_dir)) + " stopped renewing its lease")


def fake_core(**fields: object) -> object:
    class Core:
        pass

    core = Core()
    core.__dict__.update(fields)
    return core


def test_a_second_server_with_another_notify_key_refuses_to_start_with_one_sentence(procs, tmp_path) -> None:
    url = default_url(str(tmp_path / "shared"))
    (tmp_path / "shared").mkdir()
    a = procs.server("--database-url", url, name="a", data_dir="a-data")
    b = procs.twistd("gotaxy-server", ["--database-url", url, "--data-dir", "b-data", "--bind-addr", "127.0.0.1",
                                       "--bind-port", str(free_port())], "b")
    assert b.wait_exit(60) == 1
    assert "notify.key is not the key this store's webhooks are encrypted with" in b.output()
    assert "copy notify.key from that server's data directory" in b.output()
    assert "Traceback" not in b.output()
    assert a.running()


def test_a_client_that_fails_over_first_is_disconnected_once_whoever_writes_first(open_store, now: FakeTime) -> None:
    a, b = two_nodes(open_store)
    # node-a stops cleanly and writes alice's disconnect before she logs in on node-b ...
    a.client_disconnected("alice", "192.0.2.1:1", "server stopping")
    b.client_connected("alice", "192.0.2.1:2", "0.1.0")
    assert [e.detail for e in a.events(type_=CLIENT_DISCONNECTED)] == ["server stopping"]
    assert online(a)["alice"] is True
    assert a.db["clients"].find_one(name="alice")["node"] == "node-b"


def test_the_clients_of_a_node_whose_lease_ran_out_are_disconnected_once(open_store, now: FakeTime) -> None:
    a, b = two_nodes(open_store)
    a.client_connected("carol", "192.0.2.3:1", "0.1.0")
    b.client_connected("alice", "192.0.2.1:2", "0.1.0")  # node-a was killed; alice came back on node-b
    now.now += LEASE + 1
    b.renew_node(LEASE)
    assert b.release_expired_nodes() == ["node-a"]
    c = open_store()
    assert c.join_node("node-c", LEASE, "server restarted") == []  # released once: by whoever deleted its row
    assert online(b) == {"alice": True, "bob": True, "carol": False}
    disconnects = {e.client: e.detail for e in b.events(type_=CLIENT_DISCONNECTED)}
    assert disconnects == {
        "alice": "its connection to server node-a ended; it logged in again on server node-b",
        "carol": "server node-a stopped renewing its lease (killed, or its machine gone)",
    }


def test_with_ports_per_node_two_nodes_give_one_port_number_to_two_tunnels(procs, store_url: str, tmp_path) -> None:
    # cluster.portScope = "node": node a's tunnels on 127.0.0.1, node b's on ::1 (each node its own public
    # address); one port number, two clients, two tunnels, each reached at its own node's address.
    import socket

    port = free_port()
    first, second = FixedReply(b"first"), FixedReply(b"second")
    try:
        configs = {}
        for name, host in (("a", "127.0.0.1"), ("b", "::1")):
            configs[name] = tmp_path / f"{name}.toml"
            configs[name].write_text(f'proxyBindAddr = "{host}"\n[cluster]\nportScope = "node"\n')
        a = procs.server("--config", str(configs["a"]), "--database-url", store_url, name="a", data_dir="a-data")
        (a.data_dir.parent / "b-data").mkdir(mode=0o700)
        shutil.copy(a.data_dir / "notify.key", a.data_dir.parent / "b-data" / "notify.key")
        shutil.copytree(a.data_dir / "tls", a.data_dir.parent / "b-data" / "tls")  # one identity: a's token works on b
        b = procs.server("--config", str(configs["b"]), "--database-url", store_url, name="b", data_dir="b-data")
        alpha = procs.client(a, f"banner=tcp:127.0.0.1:{first.port}:{port}", token=a.token, name="alpha")
        store = Store(store_url)
        try:
            _, beta_token = store.create_token("beta")  # another client than alpha (the default token's)
        finally:
            store.close()
        beta = procs.client(b, f"banner=tcp:127.0.0.1:{second.port}:{port}", token=beta_token, name="beta")
        alpha.wait_for(rf"tunnel banner up at 127\.0\.0\.1:{port}\b", 40)
        beta.wait_for(rf"tunnel banner up at \S+:{port}\b", 40)  # the client is told the host it dialled
        for family, host, expected in ((socket.AF_INET, "127.0.0.1", b"first"), (socket.AF_INET6, "::1", b"second")):
            with socket.socket(family) as visitor:
                visitor.settimeout(20)
                visitor.connect((host, port))
                received = b""
                while len(received) < len(expected):
                    piece = visitor.recv(64)
                    if not piece:
                        break
                    received += piece
            assert received == expected, (host, received)
    finally:
        first.close()
        second.close()
