"""
Tests for gotaxy.store (and the secrets in gotaxy.credentials): tokens,
clients, tunnels and their ports, events, operator accounts, and the
thread that keeps database work off the reactor.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Callable, List

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gotaxy.proxy import PublicAddress
from gotaxy.credentials import TOKEN_PREFIX, hash_password, new_password, tokens_equal, verify_password
from gotaxy.store import (
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    LOGIN_FAILED,
    TOKEN_CREATED,
    TOKEN_REVOKED,
    TUNNEL_CLOSED,
    TUNNEL_OPENED,
    Store,
    StoreError,
    ThreadedStore,
)

DAY = 86400.0


class FakeTime:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def now() -> FakeTime:
    return FakeTime()


@pytest.fixture
def store(store_url: str, now: FakeTime):
    """A fresh store on SQLite, then on PostgreSQL (``store_url`` in tests/conftest.py)."""
    s = Store(store_url, clock=now)
    yield s
    s.close()


def database_bytes(url: str) -> bytes:
    """
    Everything the database holds: on SQLite the file and its WAL/SHM side
    files as written, on PostgreSQL every row of every table.
    """
    if url.startswith("sqlite:///"):
        directory = Path(url[len("sqlite:///"):]).parent
        return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.name.startswith("gotaxy.db"))
    reader = Store(url)
    try:
        return b"".join(
            repr(list(reader.db.query(f"SELECT * FROM {table}"))).encode() for table in reader.db.tables
        )
    finally:
        reader.close()


# -- tokens ------------------------------------------------------------------


def test_created_token_authenticates_and_its_text_is_never_stored(store_url: str, store: Store) -> None:
    record, token = store.create_token("laptop")
    assert record.name == "laptop"
    assert token.startswith(TOKEN_PREFIX) and len(token) > 40
    assert store.authenticate_token(token).name == "laptop"

    # Force everything to disk (WAL included) and look for the secret.
    store.close()
    data = database_bytes(store_url)
    assert b"laptop" in data  # we are looking in the right place
    assert token.encode() not in data
    assert token[len(TOKEN_PREFIX) :].encode() not in data
    # Not in the records either: nothing can show it again.
    reopened = Store(store_url)
    try:
        assert token not in repr(reopened.list_tokens())
        assert token not in repr(reopened.events())
        assert reopened.authenticate_token(token) is not None
    finally:
        reopened.close()


def test_tokens_are_unique(store: Store) -> None:
    tokens = {store.create_token(f"c{i}")[1] for i in range(20)}
    assert len(tokens) == 20


@pytest.mark.parametrize("wrong", ["", "gtx_", "gtx_wrong", "x" * 100])
def test_wrong_token_is_refused(store: Store, wrong: str) -> None:
    store.create_token("laptop")
    assert store.authenticate_token(wrong) is None


def test_a_token_is_bound_to_its_own_name(store: Store) -> None:
    _, a = store.create_token("alice")
    _, b = store.create_token("bob")
    assert store.authenticate_token(a).name == "alice"
    assert store.authenticate_token(b).name == "bob"
    assert store.authenticate_token(a[:-1] + ("A" if a[-1] != "A" else "B")) is None


def test_revoked_token_no_longer_authenticates(store: Store, now: FakeTime) -> None:
    _, token = store.create_token("laptop")
    now.now += 10
    assert store.revoke_token("laptop") is True
    assert store.authenticate_token(token) is None
    (record,) = store.list_tokens()
    assert record.revoked_at == now.now and not record.active(now.now)
    # Nothing left to revoke.
    assert store.revoke_token("laptop") is False
    assert store.revoke_token("nobody") is False


def test_revoking_one_client_leaves_the_others(store: Store) -> None:
    _, a = store.create_token("alice")
    _, b = store.create_token("bob")
    store.revoke_token("alice")
    assert store.authenticate_token(a) is None
    assert store.authenticate_token(b).name == "bob"


def test_token_expires_at_its_time(store: Store, now: FakeTime) -> None:
    _, token = store.create_token("temp", expires_at=now.now + 7 * DAY)
    now.now += 7 * DAY - 1
    assert store.authenticate_token(token) is not None
    now.now += 1
    assert store.authenticate_token(token) is None
    assert not store.list_tokens()[0].active(now.now)


def test_authentication_records_last_use(store: Store, now: FakeTime) -> None:
    _, token = store.create_token("laptop")
    assert store.list_tokens()[0].last_used_at is None
    now.now += 100
    store.authenticate_token(token)
    assert store.list_tokens()[0].last_used_at == now.now


def test_duplicate_active_name_is_refused(store: Store) -> None:
    _, first = store.create_token("laptop")
    with pytest.raises(StoreError, match="already exists; revoke it first"):
        store.create_token("laptop")
    # The first token is untouched by the refusal.
    assert store.authenticate_token(first).name == "laptop"
    assert len(store.list_tokens()) == 1


def test_name_can_be_reused_after_revoking(store: Store) -> None:
    _, old = store.create_token("laptop")
    store.revoke_token("laptop")
    _, new = store.create_token("laptop")
    assert store.authenticate_token(new).name == "laptop"
    assert store.authenticate_token(old) is None
    assert [t.revoked_at is None for t in store.list_tokens()] == [False, True]


@pytest.mark.parametrize("name", ["", "x" * 65])
def test_token_name_length_is_checked(store: Store, name: str) -> None:
    with pytest.raises(StoreError, match="must be 1 to 64 letters, digits"):
        store.create_token(name)


def test_inactive_tokens_finds_revoked_expired_and_unknown_names(store: Store, now: FakeTime) -> None:
    store.create_token("ok")
    store.create_token("revoked")
    store.create_token("expiring", expires_at=now.now + 5)
    store.revoke_token("revoked")
    assert store.inactive_tokens(["ok", "revoked", "expiring", "ghost"]) == {"revoked", "ghost"}
    now.now += 5
    assert store.inactive_tokens(["ok", "expiring"]) == {"expiring"}
    assert store.inactive_tokens([]) == set()


def test_tokens_survive_reopening_the_store(store_url: str, now: FakeTime) -> None:
    url = store_url
    first = Store(url, clock=now)
    _, token = first.create_token("laptop")
    first.close()
    second = Store(url, clock=now)
    try:
        assert second.authenticate_token(token).name == "laptop"
    finally:
        second.close()


# -- clients and tunnels -----------------------------------------------------


def test_reservations(store: Store) -> None:
    assert store.address_owner(PublicAddress.tcp(6000)) is None
    assert store.held_ports("tcp") == set()
    store.tunnel_up("alice", "ssh", "tcp", "127.0.0.1:22", PublicAddress.tcp(6000), {})
    store.tunnel_up("bob", "web", "tcp", "127.0.0.1:80", PublicAddress.tcp(6001), {})
    assert store.get_tunnel("alice", "ssh").address == PublicAddress.tcp(6000)
    assert store.address_owner(PublicAddress.tcp(6000)) == ("alice", "ssh")
    assert store.address_owner(PublicAddress.tcp(6001)) == ("bob", "web")
    assert store.held_ports("tcp") == {6000, 6001}
    # A UDP port of the same number is another address.
    assert store.address_owner(PublicAddress("udp", 6000)) is None
    assert store.held_ports("udp") == set()


def test_a_tunnel_keeps_its_port_while_down(store: Store) -> None:
    store.tunnel_up("alice", "ssh", "tcp", "127.0.0.1:22", PublicAddress.tcp(6000), {})
    store.tunnel_down("alice", "ssh", "down", "client disconnected", TUNNEL_CLOSED)
    assert store.address_owner(PublicAddress.tcp(6000)) == ("alice", "ssh")
    (tunnel,) = store.list_tunnels()
    assert (tunnel.status, tunnel.reason, tunnel.address) == ("down", "client disconnected", PublicAddress.tcp(6000))
    # Coming back up on the same port updates the one row.
    store.tunnel_up("alice", "ssh", "tcp", "127.0.0.1:2222", PublicAddress.tcp(6000), {})
    (tunnel,) = store.list_tunnels()
    assert (tunnel.status, tunnel.reason, tunnel.local_addr) == ("up", None, "127.0.0.1:2222")


def test_tunnel_down_for_an_unknown_tunnel_only_records_the_event(store: Store) -> None:
    store.tunnel_down("alice", "ghost", "refused", "port 22 is not allowed", "tunnel.refused")
    assert store.list_tunnels() == []
    assert store.events()[0].type == "tunnel.refused"
    assert store.events()[0].detail == "port 22 is not allowed"


def test_client_connect_and_disconnect(store: Store, now: FakeTime) -> None:
    store.client_connected("alice", "198.51.100.7:40000", "0.1.0")
    store.tunnel_up("alice", "ssh", "tcp", "127.0.0.1:22", PublicAddress.tcp(6000), {})
    store.tunnel_up("alice", "web", "tcp", "127.0.0.1:80", PublicAddress.tcp(6001), {})
    store.tunnel_up("bob", "db", "tcp", "127.0.0.1:5432", PublicAddress.tcp(6002), {})
    (client,) = store.list_clients()
    assert client.online and client.address == "198.51.100.7:40000" and client.version == "0.1.0"
    assert client.connected_at == now.now

    now.now += 60
    store.client_disconnected("alice", "198.51.100.7:40000", "heartbeat timeout")
    (client,) = store.list_clients()
    assert not client.online and client.last_seen_at == now.now
    status = {(t.client, t.name): (t.status, t.reason) for t in store.list_tunnels()}
    assert status == {
        ("alice", "ssh"): ("down", "heartbeat timeout"),
        ("alice", "web"): ("down", "heartbeat timeout"),
        ("bob", "db"): ("up", None),
    }
    # Ports stay reserved for alice.
    assert store.held_ports("tcp") == {6000, 6001, 6002}


def test_a_database_from_before_proxy_types_keeps_its_tunnels(tmp_path: Path) -> None:
    """Rows that kept a port in remote_port get it as their address, and an operator's its settings."""
    import dataset

    from gotaxy.store import default_url

    url = default_url(str(tmp_path))
    old = dataset.connect(url)
    old["tunnels"].insert(dict(client="alice", name="ssh", type="tcp", local_addr="127.0.0.1:22", remote_port=6000,
                               status="down", reason="client disconnected", source="client", enabled=True))
    old["tunnels"].insert(dict(client="alice", name="db", type="tcp", local_addr="[::1]:5432", remote_port=15432,
                               status="down", reason="not opened yet", source="server", enabled=True))
    old["tunnels"].insert(dict(client="bob", name="web", type="tcp", local_addr="127.0.0.1:80", remote_port=None,
                               status="refused", reason="port 80 is not allowed", source="client", enabled=True))
    old.close()
    store = Store(url)
    try:
        tunnels = {(t.client, t.name): t for t in store.list_tunnels()}
        assert tunnels[("alice", "ssh")].address == PublicAddress.tcp(6000)
        assert tunnels[("alice", "db")].address == PublicAddress.tcp(15432)
        assert tunnels[("alice", "db")].spec == {"type": "tcp", "localIP": "::1", "localPort": 5432, "remotePort": 15432}
        assert tunnels[("bob", "web")].address is None
        assert store.address_owner(PublicAddress.tcp(6000)) == ("alice", "ssh")
        assert store.held_ports("tcp") == {6000, 15432}
    finally:
        store.close()


def test_reconnecting_client_is_one_row(store: Store) -> None:
    store.client_connected("alice", "a:1", "0.1.0")
    store.client_disconnected("alice", "a:1", "bye")
    store.client_connected("alice", "b:2", "0.2.0")
    (client,) = store.list_clients()
    assert client.online and client.address == "b:2" and client.version == "0.2.0"


# -- events ------------------------------------------------------------------


def test_events_newest_first_with_filters_and_limit(store: Store, now: FakeTime) -> None:
    store.record_event(LOGIN_FAILED, address="203.0.113.1:1", detail="bad token")
    now.now += 1
    store.client_connected("alice", "a:1", "0.1.0")
    now.now += 1
    store.tunnel_up("alice", "ssh", "tcp", "127.0.0.1:22", PublicAddress.tcp(6000), {})
    now.now += 1
    store.client_connected("bob", "b:1", "0.1.0")
    now.now += 1
    store.client_disconnected("alice", "a:1", "bye")

    types = [e.type for e in store.events()]
    assert types == [CLIENT_DISCONNECTED, CLIENT_CONNECTED, TUNNEL_OPENED, CLIENT_CONNECTED, LOGIN_FAILED]
    times = [e.at for e in store.events()]
    assert times == sorted(times, reverse=True)

    assert [e.type for e in store.events(limit=2)] == [CLIENT_DISCONNECTED, CLIENT_CONNECTED]
    assert [e.client for e in store.events(type_=CLIENT_CONNECTED)] == ["bob", "alice"]
    assert [e.type for e in store.events(client="alice")] == [CLIENT_DISCONNECTED, TUNNEL_OPENED, CLIENT_CONNECTED]
    assert [e.type for e in store.events(client="alice", type_=CLIENT_CONNECTED)] == [CLIENT_CONNECTED]
    assert store.events(client="nobody") == []

    opened = store.events(type_=TUNNEL_OPENED)[0]
    assert (opened.client, opened.tunnel) == ("alice", "ssh")
    assert "6000" in opened.detail and "127.0.0.1:22" in opened.detail
    failed = store.events(type_=LOGIN_FAILED)[0]
    assert (failed.address, failed.detail) == ("203.0.113.1:1", "bad token")


def test_event_limit_is_at_least_one(store: Store) -> None:
    store.record_event(LOGIN_FAILED)
    store.record_event(LOGIN_FAILED)
    assert len(store.events(limit=0)) == 1


def test_token_changes_are_events(store: Store) -> None:
    store.create_token("alice")
    store.revoke_token("alice")
    assert [(e.type, e.client) for e in store.events()] == [(TOKEN_REVOKED, "alice"), (TOKEN_CREATED, "alice")]


# -- operator accounts -------------------------------------------------------


def test_admin_password_is_hashed_with_argon2(store_url: str, store: Store) -> None:
    password = "correct horse battery staple"
    assert store.ensure_admin("admin", password) is True
    row = store.db["admins"].find_one(username="admin")
    assert row["password_hash"].startswith("$argon2id$")
    assert password not in row["password_hash"]
    store.close()
    assert password.encode() not in database_bytes(store_url)


def test_verify_admin_and_ensure_admin_never_overwrites(store: Store) -> None:
    assert store.ensure_admin("admin", "s3cret-pass") is True
    assert store.ensure_admin("admin", "other-pass") is False
    assert store.verify_admin("admin", "s3cret-pass") is True
    assert store.verify_admin("admin", "other-pass") is False
    assert store.verify_admin("admin", "s3cret-Pass") is False
    assert store.verify_admin("root", "s3cret-pass") is False


def test_credentials_helpers() -> None:
    stored = hash_password("pw")
    assert verify_password(stored, "pw") and not verify_password(stored, "pW")
    assert not verify_password("not a hash", "pw")
    assert tokens_equal("abc", "abc") and not tokens_equal("abc", "abd")
    passwords = {new_password() for _ in range(50)}
    assert len(passwords) == 50 and all(len(p) == 20 for p in passwords)


# -- ThreadedStore -----------------------------------------------------------


class ThreadHopReactor:
    """
    Just enough reactor for ``deferToThreadPool``: results come back through
    ``callFromThread``, which the test runs on its own (the "reactor") thread.
    """

    def __init__(self) -> None:
        self.calls: "queue.Queue[Any]" = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.calls.put((f, args, kwargs))

    def result(self, d: Deferred) -> Any:
        f, args, kwargs = self.calls.get(timeout=10)
        f(*args, **kwargs)
        results: List[Any] = []
        d.addBoth(results.append)
        return results[0]


def test_threaded_store_runs_calls_off_the_reactor_thread(store_url: str) -> None:
    reactor = ThreadHopReactor()
    threaded = ThreadedStore(Store(store_url), reactor)
    threaded.start()
    try:
        reactor_thread = threading.current_thread()
        seen = []

        def where() -> threading.Thread:
            seen.append(threading.current_thread())
            return threading.current_thread()

        first = reactor.result(threaded.call(where))
        second = reactor.result(threaded.call(where))
        assert first is not reactor_thread
        # One dedicated thread: calls are serialised.
        assert first is second

        record, token = reactor.result(threaded.call(threaded.store.create_token, "laptop"))
        assert record.name == "laptop"
        found = reactor.result(threaded.call(threaded.store.authenticate_token, token))
        assert found.name == "laptop"

        # A refusal arrives as a failed Deferred, not an exception on the thread.
        failure = reactor.result(threaded.call(threaded.store.create_token, "laptop"))
        assert isinstance(failure, Failure) and failure.check(StoreError)
    finally:
        threaded.stop()
    assert not any(t.is_alive() for t in seen)
