"""
The operator's actions on a client's tunnels (add, edit, disable, enable,
restart, remove), in memory: a ``ServerCore`` on a fake reactor, a store
whose calls complete one at a time as the clock turns (like its one
thread), and a client session that records what it is told.  No sockets,
no threads, no waiting on wall-clock time.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Set

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.testing import MemoryReactorClock, _FakePort

from gotaxy.config import ServerConfig
from gotaxy.server.control import Admission, ServerControlProtocol
from gotaxy.server.core import ServerCore, TunnelRefused
from gotaxy.server.manage import Management, ManagementError
from gotaxy.server.session import ClientLocks, ClientSession
from gotaxy.store import Store

LOCAL = "127.0.0.1:8080"
SPEC = {"type": "tcp", "localIP": "127.0.0.1", "localPort": 8080}


class Reactor(MemoryReactorClock):
    """A memory reactor that knows which ports are listening now."""

    def __init__(self) -> None:
        super().__init__()
        self.listening: Dict[int, Any] = {}

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        listening = super().listenTCP(port, factory, backlog, interface)
        reactor = self

        class Port(_FakePort):
            def stopListening(self) -> None:
                reactor.listening.pop(port, None)

        self.listening[port] = factory
        return Port(listening.getHost())


class SteppedStore:
    """``ThreadedStore``'s face: each call runs on a later turn of the clock, in the order made."""

    def __init__(self, store: Store, clock: Reactor) -> None:
        self.store = store
        self._clock = clock

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        done: Deferred = Deferred()

        def run() -> None:
            try:
                result = function(*args, **kwargs)
            except Exception as e:
                done.errback(e)
            else:
                done.callback(result)

        self._clock.callLater(0, run)
        return done

    def keep(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """A write kept through an outage: here, the same as any call."""
        return self.call(function, *args, **kwargs)


class FakeSession:
    """A logged-in client that records what the core tells it."""

    def __init__(self, name: str) -> None:
        self.client_name: Optional[str] = name
        self.peer_address = "127.0.0.1:50000"
        self.client_version = "test"
        self.token_checked = True
        self.instance = ""
        self.lost = False
        self.dropped = False
        self.tunnels: Dict[str, Any] = {}
        self.removed_tunnels: Set[str] = set()
        self.offered: Dict[str, str] = {}
        self.retry_at: Dict[str, float] = {}
        self.heartbeat = None
        self.told: List[tuple] = []

    def offer_tunnel(self, name: str, spec: Any) -> None:
        self.offered[name] = spec.local_description
        self.told.append(("add", name, spec.local_description, spec.remote_port))

    def withdraw_tunnel(self, name: str) -> None:
        self.told.append(("remove", name))

    def tunnel_up(self, tunnel: Any) -> None:
        self.told.append(("up", tunnel.name, tunnel.address.port))

    def tunnel_down(self, name: str, reason: str) -> None:
        self.told.append(("down", name, reason))

    def close_with_error(self, reason: str) -> None:
        self.lost = True


class Server:
    def __init__(self, tmp_path: Any) -> None:
        self.reactor = Reactor()
        self.db = Store("sqlite://", clock=self.reactor.seconds)  # in memory, one thread
        self.core = ServerCore(ServerConfig(data_dir=str(tmp_path)), SteppedStore(self.db, self.reactor), self.reactor)
        self.management = Management(self.core)
        self.session = FakeSession("alice")
        self.core.sessions["alice"] = self.session  # type: ignore[assignment]
        self.db.create_token("alice")

    def run(self, *coroutines: Any) -> List[Any]:
        """Start every coroutine at once, turn the clock until all are done; their results or exceptions."""
        outcomes: List[Any] = [None] * len(coroutines)
        done: List[bool] = [False] * len(coroutines)
        for i, coroutine in enumerate(coroutines):
            def finish(result: Any, i: int = i) -> None:
                outcomes[i] = result.value if hasattr(result, "value") and isinstance(result.value, Exception) else result
                done[i] = True
            ensureDeferred(coroutine).addBoth(finish)
        for _ in range(1000):
            if all(done):
                return outcomes
            self.reactor.advance(0)
        raise AssertionError("the operations did not finish")

    def one(self, coroutine: Any) -> Any:
        (outcome,) = self.run(coroutine)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def client_opens(self, name: str, port: int) -> Any:
        return self.one(self.core.open_tunnel(self.session, {"name": name, "spec": dict(SPEC, remotePort=port)}))

    def stored(self, name: str) -> Any:
        return self.db.get_tunnel("alice", name)


@pytest.fixture
def server(tmp_path: Any) -> Server:
    return Server(tmp_path)


def test_the_control_protocol_is_a_client_session(server: Server) -> None:
    protocol = ServerControlProtocol(server.core, Admission(1, 1, server.reactor), server.reactor)
    assert isinstance(protocol, ClientSession)
    assert not isinstance(object(), ClientSession)


def test_add_pushes_the_tunnel_to_an_online_client_only(server: Server) -> None:
    view = server.one(server.management.add_tunnel("alice", "web", LOCAL, 16001))
    assert (view.source, view.status, view.address.port) == ("server", "down", 16001)
    assert server.session.told == [("add", "web", LOCAL, 16001)]
    # The client opens it like its own.
    tunnel = server.client_opens("web", 16001)
    assert (tunnel.address.port, 16001 in server.reactor.listening) == (16001, True)

    del server.core.sessions["alice"]
    server.one(server.management.add_tunnel("alice", "later", LOCAL, 0))
    assert server.session.told == [("add", "web", LOCAL, 16001)]
    assert server.stored("later").source == "server"


def test_edit_closes_the_tunnel_and_pushes_the_new_settings(server: Server) -> None:
    server.one(server.management.add_tunnel("alice", "web", LOCAL, 16001))
    server.client_opens("web", 16001)
    server.one(server.management.edit_tunnel("alice", "web", remote_port=16002))
    assert 16001 not in server.reactor.listening
    assert server.session.told[-1] == ("add", "web", LOCAL, 16002)
    assert server.stored("web").address.port == 16002

    server.client_opens("mine", 16003)
    with pytest.raises(ManagementError) as e:
        server.one(server.management.edit_tunnel("alice", "mine", remote_port=16004))
    assert (e.value.kind, str(e.value)) == (
        "conflict", "tunnel 'mine' is defined in client 'alice''s own config; change it there")
    assert 16003 in server.reactor.listening


def test_remove_closes_forgets_and_tells_the_client(server: Server) -> None:
    server.one(server.management.add_tunnel("alice", "web", LOCAL, 16001))
    server.client_opens("web", 16001)
    server.one(server.management.remove_tunnel("alice", "web"))
    assert 16001 not in server.reactor.listening
    assert server.session.told[-1] == ("remove", "web")
    assert server.stored("web") is None
    # A tunnel_open the client sent before it heard does not bring it back.
    with pytest.raises(TunnelRefused, match="removed by the operator"):
        server.client_opens("web", 16001)
    assert 16001 not in server.reactor.listening

    server.client_opens("mine", 16003)
    with pytest.raises(ManagementError) as e:
        server.one(server.management.remove_tunnel("alice", "mine"))
    assert e.value.kind == "conflict"
    with pytest.raises(ManagementError) as e:
        server.one(server.management.remove_tunnel("alice", "ghost"))
    assert (e.value.kind, str(e.value)) == ("not_found", "client 'alice' has no tunnel named 'ghost'")


def test_disable_closes_and_keeps_it_closed_enable_reopens(server: Server) -> None:
    server.client_opens("mine", 16003)
    view = server.one(server.management.set_enabled("alice", "mine", False))
    assert view.status == "disabled"
    assert 16003 not in server.reactor.listening
    assert server.session.told[-1] == ("down", "mine", "disabled by the operator")
    with pytest.raises(TunnelRefused, match="disabled by the operator"):
        server.client_opens("mine", 16003)

    view = server.one(server.management.set_enabled("alice", "mine", True))
    assert (view.status, view.address.port) == ("up", 16003)
    assert 16003 in server.reactor.listening
    assert server.session.told[-1] == ("up", "mine", 16003)


def test_restart_reopens_on_the_same_port(server: Server) -> None:
    first = server.client_opens("mine", 16003)
    view = server.one(server.management.restart_tunnel("alice", "mine"))
    assert (view.status, view.address.port) == ("up", 16003)
    assert server.core.tunnels[("alice", "mine")] is not first
    assert server.session.told[-1] == ("up", "mine", 16003)

    server.one(server.management.set_enabled("alice", "mine", False))
    with pytest.raises(ManagementError, match="disabled; enable it instead"):
        server.one(server.management.restart_tunnel("alice", "mine"))
    server.one(server.management.set_enabled("alice", "mine", True))
    del server.core.sessions["alice"]
    with pytest.raises(ManagementError, match="is offline"):
        server.one(server.management.restart_tunnel("alice", "mine"))


def test_a_restart_and_a_disable_at_once_leave_it_disabled_and_closed(server: Server) -> None:
    # Without one lock, the restart reads the tunnel as enabled, the disable
    # closes it while the restart's reopen is on its way, and the reopen then
    # leaves a disabled tunnel listening.
    server.client_opens("mine", 16003)
    restart, disable = server.run(
        server.management.restart_tunnel("alice", "mine"), server.management.set_enabled("alice", "mine", False)
    )
    assert restart.status == "up"  # the restart ran first, whole
    assert disable.status == "disabled"
    assert 16003 not in server.reactor.listening
    assert ("alice", "mine") not in server.core.tunnels
    assert server.stored("mine").enabled is False


def test_an_enable_and_a_disable_at_once_end_as_the_last_one_asked(server: Server) -> None:
    server.client_opens("mine", 16003)
    server.one(server.management.set_enabled("alice", "mine", False))
    server.run(server.management.set_enabled("alice", "mine", True), server.management.set_enabled("alice", "mine", False))
    assert 16003 not in server.reactor.listening
    assert server.stored("mine").enabled is False


def test_a_removal_racing_the_clients_open_wins(server: Server) -> None:
    # The client asks for an operator's tunnel just as the operator removes it.
    server.one(server.management.add_tunnel("alice", "web", LOCAL, 16001))
    opened, removed = server.run(
        server.core.open_tunnel(server.session, {"name": "web", "spec": dict(SPEC, remotePort=16001)}),
        server.management.remove_tunnel("alice", "web"),
    )
    assert removed is None
    assert 16001 not in server.reactor.listening
    assert server.stored("web") is None


def test_a_clients_lock_is_forgotten_when_its_work_is_done(server: Server) -> None:
    locks = ClientLocks()
    order: List[str] = []
    gate: Deferred = Deferred()

    async def first() -> str:
        order.append("first starts")
        await gate
        order.append("first ends")
        return "one"

    async def second() -> str:
        order.append("second")
        return "two"

    a = ensureDeferred(locks.run("alice", first))
    b = ensureDeferred(locks.run("alice", second))
    c = ensureDeferred(locks.run("bob", second))  # another client does not wait
    assert order == ["first starts", "second"]
    gate.callback(None)
    assert order == ["first starts", "second", "first ends", "second"]
    assert [a.result, b.result, c.result] == ["one", "two", "two"]
    assert not locks.busy("alice") and not locks.busy("bob")
