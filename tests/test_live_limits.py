"""
maxBandwidth and maxBandwidthPerClient changed live (``gotaxy.store.overrides``,
``Management.set_limit`` / ``clear_limit``): on a fake clock, the open
connections follow a live change without a drop, a reload of server.toml
does not undo it, a restart keeps it, and a limited download's window stays
small enough that every second is near the limit.  Two real servers on one
store, the console and the REST API: tests/test_live_limits_faces.py.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory
from twisted.python.failure import Failure

from gotaxy.config import LimitsSettings, TunnelSpec
from gotaxy.server.core import ServerCore
from gotaxy.server.manage import Management, ManagementError
from gotaxy.testing import GotaxyClient, GotaxyServer, MemoryNetwork, server_config
from tests.test_bandwidth import Counter, Pusher

MiB = 1024 * 1024
ADMIN = "console operator admin from 127.0.0.1:5555"


# -- on a fake clock ---------------------------------------------------------------------


class HeldPusher(Pusher):
    """A ``Pusher`` that sends nothing until ``go``, and holds again after ``until`` bytes."""

    held = True
    until = None

    def go(self, until: Any = None) -> None:
        self.held, self.until = False, until
        self.resumeProducing()

    def resumeProducing(self) -> None:
        if self.until is not None and self.sent >= self.until:
            self.held = True
        if not self.held:
            super().resumeProducing()


class Pushing:
    """A server, a client with one tunnel, and one visitor pushing 64 MiB through it, on a MemoryNetwork."""

    def __init__(self, limits: LimitsSettings = LimitsSettings(), held: bool = False) -> None:
        self.network = MemoryNetwork()
        self.network.backpressure = True
        self.server = GotaxyServer(self.network, server_config(limits=limits))
        self.management = Management(self.server.core)
        self.client = GotaxyClient(self.network, self.server.create_token("alice"),
                                   tunnels=[TunnelSpec(name="a", local_port=8081)]).start()
        self.counter = Counter()
        self.network.listenTCP(8081, Factory.forProtocol(lambda: self.counter))
        self.pusher = HeldPusher(64 * MiB)
        self.network.connectTCP("127.0.0.1", self.client.up["a"], ClientFactory.forProtocol(lambda: self.pusher))
        self.network.flush()
        assert self.connections() == 1
        if not held:
            self.pusher.go()

    def rate(self, seconds: float = 4) -> float:
        """Bytes a second through the tunnel over ``seconds`` of the fake clock, after one to settle."""
        self.network.pass_time(1)
        before = self.counter.received
        self.network.pass_time(seconds)
        return (self.counter.received - before) / seconds

    def run(self, coroutine: Any) -> Any:
        done = Deferred.fromCoroutine(coroutine)
        self.network.flush()
        if isinstance(done.result, Failure):
            done.result.raiseException()
        return done.result

    def connections(self) -> int:
        return self.server.core.tunnels[("alice", "a")].connections

    def events(self) -> List[Any]:
        return self.server.store.store.events(type_="limits.changed")

    def stop(self) -> None:
        self.client.stop()
        self.server.shutdown()


def near(rate: float, limit: float) -> bool:
    return abs(rate - limit) <= 0.05 * limit


def test_a_live_limit_holds_a_connection_opened_without_one_and_clearing_it_lets_it_go():
    system = Pushing(held=True)  # opened while server.toml sets no limit
    limits = system.run(system.management.set_limit("maxBandwidth", "1MB", ADMIN))
    assert (limits["maxBandwidth"], limits["file"]["maxBandwidth"]) == (MiB, 0)
    assert limits["live"]["maxBandwidth"]["by"] == ADMIN
    system.pusher.go()
    rate = system.rate()
    print(f"live maxBandwidth 1MB on an open connection: {rate / MiB:.3f} MiB/s")
    assert near(rate, MiB)
    system.run(system.management.set_limit("maxBandwidth", 2 * MiB, ADMIN))
    assert near(system.rate(), 2 * MiB)
    assert system.connections() == 1  # the same connection all along
    limits = system.run(system.management.clear_limit("maxBandwidth", "panel operator admin"))
    assert (limits["maxBandwidth"], limits["live"]) == (0, {})
    system.network.flush()
    assert system.counter.received == 64 * MiB  # held no more: the rest arrived, nothing was lost
    # Each change is an event naming who made it and what it replaced, newest first.
    assert [(e.address, e.detail) for e in system.events()] == [
        ("panel operator admin", "maxBandwidth back to server.toml's no limit (was live 2.0 MiB/s)"),
        (ADMIN, "maxBandwidth 2.0 MiB/s (was live 1.0 MiB/s)"),
        (ADMIN, "maxBandwidth 1.0 MiB/s (was server.toml's no limit)"),
    ]
    system.stop()


def test_a_reload_keeps_the_live_value_and_says_so_and_a_restart_keeps_it_too():
    system = Pushing(LimitsSettings(max_bandwidth_per_client=MiB))
    assert near(system.rate(), MiB)
    system.run(system.management.set_limit("maxBandwidthPerClient", "2MB", ADMIN))
    assert near(system.rate(), 2 * MiB)
    # server.toml changes: the operator's live value stays in force, and the reload says so.
    changes = system.run(system.server.core.apply(server_config(limits=LimitsSettings(max_bandwidth_per_client=4 * MiB))))
    (change,) = [c for c in changes if c.key == "maxBandwidthPerClient"]
    assert change.detail == (f"server.toml's 4.0 MiB/s is kept for later: the live value 2.0 MiB/s set by {ADMIN} "
                             "stays in force until 'limits clear maxBandwidthPerClient'")
    assert near(system.rate(), 2 * MiB)
    assert system.management.limits()["file"]["maxBandwidthPerClient"] == 4 * MiB
    # A server that starts on this store holds the live value before its first connection.
    restarted = ServerCore(server_config(limits=LimitsSettings(max_bandwidth_per_client=4 * MiB)),
                           system.server.store, system.network)
    restarted.load_overrides(system.server.store.store)
    assert (restarted.in_force("maxBandwidthPerClient"), restarted.bandwidth.per_client) == (2 * MiB, 2 * MiB)
    assert restarted.overrides["maxBandwidthPerClient"].by == ADMIN
    # Cleared: server.toml's value as it is now (the reloaded one).
    system.run(system.management.clear_limit("maxBandwidthPerClient", ADMIN))
    assert near(system.rate(), 4 * MiB)
    assert system.connections() == 1
    system.stop()


def test_a_live_zero_lifts_the_files_limit_until_cleared():
    system = Pushing(LimitsSettings(max_bandwidth=MiB))
    assert near(system.rate(), MiB)
    limits = system.run(system.management.set_limit("maxBandwidth", 0, ADMIN))
    assert (limits["maxBandwidth"], limits["live"]["maxBandwidth"]["value"]) == (0, 0)
    system.network.flush()
    assert system.counter.received == 64 * MiB  # held no more
    limits = system.run(system.management.clear_limit("maxBandwidth", ADMIN))
    assert (limits["maxBandwidth"], system.server.core.bandwidth.total) == (MiB, MiB)
    system.stop()


def test_wrong_keys_and_values_are_refused_naming_them_and_change_nothing():
    system = Pushing()

    def refused(coroutine: Any) -> ManagementError:
        done = Deferred.fromCoroutine(coroutine)
        system.network.flush()
        error = done.result.value
        done.addErrback(lambda f: None)
        assert isinstance(error, ManagementError), error
        return error

    error = refused(system.management.set_limit("maxConnectionsPerClient", "10", ADMIN))
    assert (error.kind, error.field) == ("invalid", "key")
    assert str(error) == ("'maxConnectionsPerClient' cannot be changed live; the settings that can are maxBandwidth "
                          "and maxBandwidthPerClient")
    error = refused(system.management.set_limit("maxBandwidth", "fast", ADMIN))
    assert (error.kind, error.field) == ("invalid", "maxBandwidth")
    assert str(error).startswith("maxBandwidth must be a rate a second such as \"10MB\"")
    error = refused(system.management.clear_limit("maxBandwidth", ADMIN))
    assert (error.kind, error.field) == ("not_found", "maxBandwidth")
    assert system.management.limits()["live"] == {} and system.events() == []
    system.stop()


def test_a_limited_download_keeps_a_small_window_so_every_second_is_near_the_limit():
    # Download: the client sends what its local service sends, and the server holds the window credit.
    network = MemoryNetwork()
    network.backpressure = True
    server = GotaxyServer(network, server_config())
    management = Management(server.core)
    client = GotaxyClient(network, server.create_token("alice"),
                          tunnels=[TunnelSpec(name="a", local_port=8081)]).start()
    pusher = HeldPusher(64 * MiB)
    network.listenTCP(8081, Factory.forProtocol(lambda: pusher))
    counter = Counter()
    network.connectTCP("127.0.0.1", client.up["a"], ClientFactory.forProtocol(lambda: counter))
    network.flush()
    pusher.go(until=8 * MiB)
    network.flush()
    (stream,) = server.core.tunnels[("alice", "a")].streams
    assert counter.received == 8 * MiB and stream.recv_limit == 512 * 1024  # unlimited, it grew its window
    done = Deferred.fromCoroutine(management.set_limit("maxBandwidthPerClient", "1MB", ADMIN))
    network.flush()
    assert done.called
    pusher.go()
    network.pass_time(2)
    assert stream.recv_limit == 256 * 1024  # a quarter of a second of the limit (gotaxy.bandwidth.TokenBucket.window)
    seconds = []
    for _ in range(4):
        before = counter.received
        network.pass_time(1)
        seconds.append(counter.received - before)
    print("live maxBandwidthPerClient 1MB, a download, each second:", [f"{s / MiB:.3f}" for s in seconds])
    assert all(near(s, MiB) for s in seconds), seconds
    client.stop()
    server.shutdown()
