"""
Tests for gotaxy.store.claims: one INSERT decides who holds a port, a name
or an account (two processes racing: tests/test_claims_race.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gotaxy.proxy import PublicAddress
from gotaxy.store import claims
from gotaxy.store.claims import Claimed, Owner
from gotaxy.store import TUNNEL_CLOSED, Store, StoreError, default_url


def _up(store: Store, client: str, name: str, local_addr: str, port: int) -> None:
    """The tunnel is up on TCP ``port``."""
    store.tunnel_up(client, name, "tcp", local_addr, PublicAddress.tcp(port), {})


def _operator_tunnel(store: Store, client: str, name: str, local_addr: str, port: int) -> None:
    """An operator defines a TCP tunnel (port 0: picked when it opens)."""
    store.add_server_tunnel(client, name, "tcp", local_addr, {"type": "tcp"},
                            PublicAddress.tcp(port) if port else None)


@pytest.fixture(scope="module")
def blank_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("blank-store")
    Store(default_url(str(directory))).close()
    return directory


@pytest.fixture
def store_dir(tmp_path: Path, blank_store: Path) -> Path:
    for path in blank_store.iterdir():
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


@pytest.fixture
def store(store_dir: Path):
    s = Store(default_url(str(store_dir)))
    yield s
    s.close()


# -- one process ---------------------------------------------------------------


def test_a_claim_is_refused_with_its_holder_and_the_fix(store: Store) -> None:
    assert store.claim_port("laptop", "ssh", 16000) is True
    with pytest.raises(Claimed) as refused:
        store.claim_port("desktop", "web", 16000)
    assert refused.value.owner == Owner.tunnel("laptop", "ssh")
    assert str(refused.value) == (
        "port 16000 is reserved by tunnel 'ssh' of client 'laptop'; choose another remotePort, or 0 to get a free one"
    )
    assert store.port_owner(16000) == ("laptop", "ssh")


def test_the_holder_claiming_again_is_harmless(store: Store) -> None:
    assert store.claim_port("laptop", "ssh", 16000) is True
    assert store.claim_port("laptop", "ssh", 16000) is False
    assert store.reserved_ports() == {16000}


def test_kinds_are_separate_namespaces(store: Store) -> None:
    owner = Owner.tunnel("laptop", "web")
    assert store.claim(claims.PORT, "443", owner)
    assert store.claim(claims.UDP_PORT, "443", Owner.tunnel("laptop", "dns"))
    assert store.claim(claims.DOMAIN, "wiki.example.com", owner)
    with pytest.raises(Claimed, match=r"^domain wiki\.example\.com is held by tunnel 'web' of client 'laptop'; "):
        store.claim(claims.DOMAIN, "wiki.example.com", Owner.tunnel("desktop", "wiki"))


def test_a_released_claim_can_be_taken(store: Store) -> None:
    store.claim_port("laptop", "ssh", 16000)
    assert store.release_port("desktop", "web", 16000) is False  # not theirs to give back
    assert store.release_port("laptop", "ssh", 16000) is True
    assert store.claim_port("desktop", "web", 16000) is True


def test_a_tunnel_moving_to_another_port_gives_the_old_one_back(store: Store) -> None:
    _up(store, "alice", "ssh", "127.0.0.1:22", 6000)
    _up(store, "alice", "ssh", "127.0.0.1:22", 6001)
    assert store.reserved_ports() == {6001}
    assert store.claim_port("bob", "web", 6000) is True


def test_a_down_tunnel_keeps_its_claim(store: Store) -> None:
    _up(store, "alice", "ssh", "127.0.0.1:22", 6000)
    store.tunnel_down("alice", "ssh", "down", "client disconnected", TUNNEL_CLOSED)
    with pytest.raises(Claimed, match="reserved by tunnel 'ssh' of client 'alice'"):
        store.claim_port("bob", "web", 6000)


def test_an_operator_tunnel_claims_its_name_and_port_and_removing_it_gives_them_back(store: Store) -> None:
    _operator_tunnel(store, "alice", "web", "127.0.0.1:80", 6000)
    with pytest.raises(StoreError, match=r"^client 'alice' already has a tunnel named 'web'; choose another name"):
        _operator_tunnel(store, "alice", "web", "127.0.0.1:81", 0)
    with pytest.raises(Claimed, match=r"^port 6000 is reserved by tunnel 'web' of client 'alice'"):
        _operator_tunnel(store, "bob", "web", "127.0.0.1:80", 6000)
    # The refused one left no claim behind: bob's name is free.
    _operator_tunnel(store, "bob", "web", "127.0.0.1:80", 6001)
    store.remove_tunnel("alice", "web")
    _operator_tunnel(store, "carol", "web", "127.0.0.1:80", 6000)
    _operator_tunnel(store, "alice", "web", "127.0.0.1:80", 0)


def test_editing_the_port_claims_the_new_one_and_gives_the_old_one_back(store: Store) -> None:
    _operator_tunnel(store, "alice", "web", "127.0.0.1:80", 6000)
    _operator_tunnel(store, "bob", "db", "127.0.0.1:5432", 6001)
    with pytest.raises(Claimed, match="port 6001 is reserved by tunnel 'db' of client 'bob'"):
        store.update_tunnel("alice", "web", "tunnel.edited", address=PublicAddress.tcp(6001))
    assert store.get_tunnel("alice", "web").address == PublicAddress.tcp(6000)
    store.update_tunnel("alice", "web", "tunnel.edited", address=PublicAddress.tcp(6002))
    assert store.reserved_ports() == {6001, 6002}
    store.update_tunnel("alice", "web", "tunnel.edited", address=None)
    assert store.reserved_ports() == {6001}


def test_a_token_name_is_free_again_once_revoked(store: Store) -> None:
    store.create_token("laptop")
    with pytest.raises(StoreError, match="a token named 'laptop' already exists; revoke it first"):
        store.create_token("laptop")
    store.revoke_token("laptop")
    store.create_token("laptop")


def test_existing_reservations_become_claims(empty_store_url: str, tmp_path: Path) -> None:
    """A store of the release before claims: its reserved ports, names and accounts are claimed when it migrates."""
    from sqlalchemy import create_engine, text

    from gotaxy.store.store import driver_url
    from tests.test_store_migrations import load_old_release

    load_old_release(empty_store_url, tmp_path)  # laptop/ssh on 16000, laptop/web on 16001, tokens laptop and nas (revoked)
    engine = create_engine(driver_url(empty_store_url))
    with engine.begin() as connection:
        # A tunnel that got port 16000 too, through the old read-then-write race: the older row keeps it.
        connection.execute(text(
            "INSERT INTO tunnels (client, name, type, local_addr, remote_port, status) "
            "VALUES ('bob', 'web', 'tcp', '127.0.0.1:80', 16000, 'down')"
        ))
        connection.execute(text(
            "INSERT INTO web_api_tokens (name, token_hash, username, created_at) VALUES ('backup', :h, 'admin', 1.0)"
        ), {"h": "y" * 64})
    engine.dispose()

    store = Store(empty_store_url)
    try:
        with pytest.raises(Claimed, match="port 16000 is reserved by tunnel 'ssh' of client 'laptop'"):
            store.claim_port("dave", "x", 16000)
        assert store.port_owner(16001) == ("laptop", "web")
        # ... and then the proxy types' migration gave the tunnel its address, the same port.
        assert store.get_tunnel("laptop", "ssh").address == PublicAddress.tcp(16000)
        with pytest.raises(StoreError, match="already has a tunnel named 'web'"):
            _operator_tunnel(store, "laptop", "web", "127.0.0.1:80", 0)
        with pytest.raises(StoreError, match="a token named 'laptop' already exists"):
            store.create_token("laptop")
        store.create_token("nas")  # its old token was revoked: the name is free
        assert store.ensure_admin("admin", "another password") is False
        with pytest.raises(Claimed, match="an API token named 'backup' exists; revoke it or choose another name"):
            store.claim(claims.API_TOKEN, "backup", Owner.api_token("other"))
    finally:
        store.close()


def test_a_claim_inside_a_transaction_is_a_bug(store: Store) -> None:
    with pytest.raises(RuntimeError, match="its own transaction"):
        with store.db:
            store.claim_port("alice", "ssh", 6000)


# -- cluster.portScope = "node": each node its own public address ---------------------


def test_with_ports_per_node_one_port_number_is_a_tunnel_on_each_node(store_dir: Path) -> None:
    a, b = Store(default_url(str(store_dir))), Store(default_url(str(store_dir)))
    try:
        a.port_scope, b.port_scope = "a", "b"
        _up(a, "laptop", "ssh", "127.0.0.1:22", 16000)
        _up(b, "desktop", "web", "127.0.0.1:80", 16000)  # the same number on node b's address
        assert a.held_ports("tcp") == b.held_ports("tcp") == {16000}
        assert a.port_owner(16000) == ("laptop", "ssh") and b.port_owner(16000) == ("desktop", "web")
        with pytest.raises(Claimed) as refused:
            a.claim_port("phone", "cam", 16000)
        assert str(refused.value) == (
            "port 16000 of node 'a' is reserved by tunnel 'ssh' of client 'laptop'; choose another remotePort, "
            "or 0 to get a free one"
        )
        # laptop's client fails over to node b, where 16000 is desktop's: refused there, kept on a.
        with pytest.raises(Claimed):
            _up(b, "laptop", "ssh", "127.0.0.1:22", 16000)
        assert a.port_owner(16000) == ("laptop", "ssh")
        # ... and to a third node, where it is free: claimed there, a's given back.
        c = Store(default_url(str(store_dir)))
        try:
            c.port_scope = "c"
            _up(c, "laptop", "ssh", "127.0.0.1:22", 16000)
            assert c.port_owner(16000) == ("laptop", "ssh") and a.port_owner(16000) is None
        finally:
            c.close()
    finally:
        a.close()
        b.close()


def test_with_ports_per_cluster_one_port_number_is_one_tunnel(store_dir: Path) -> None:
    a, b = Store(default_url(str(store_dir))), Store(default_url(str(store_dir)))
    try:
        _up(a, "laptop", "ssh", "127.0.0.1:22", 16000)
        with pytest.raises(Claimed) as refused:
            _up(b, "desktop", "web", "127.0.0.1:80", 16000)
        assert "port 16000 is reserved by tunnel 'ssh' of client 'laptop'" in str(refused.value)
        assert b.held_ports("tcp") == {16000}
    finally:
        a.close()
        b.close()
