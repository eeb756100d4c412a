"""
A server restart, both ends in memory (``gotaxy.testing``): a server that
stops cleanly says goodbye, its clients come back as soon as the next one
listens, and a client that does not know ``goodbye`` gets the ``error``
message it always got.  Time passes only when the test says so, so "as
soon as" is a statement about the schedule, not about this machine.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from gotaxy.client import control
from gotaxy.client.reconnect import FAST_CAP, SLOW_FIRST
from gotaxy.config import TunnelSpec, parse_allow_ports
from gotaxy.server.core import GOODBYE_MAX, GOODBYE_MIN, goodbye_spread
from gotaxy.testing import EchoFactory, GotaxyClient, GotaxyServer, LogCapture, MemoryNetwork, server_config

LOCAL_PORT = 8080
TOKEN = "a-shared-token-for-both-servers"


@pytest.fixture
def network() -> MemoryNetwork:
    network = MemoryNetwork()
    network.listenTCP(LOCAL_PORT, EchoFactory(), interface="127.0.0.1")
    return network


@pytest.fixture
def log() -> Iterator[LogCapture]:
    with LogCapture() as capture:
        yield capture


def _server(network: MemoryNetwork) -> GotaxyServer:
    # The shared auth.token: the second server's store is a new one.
    return GotaxyServer(network, server_config(token=TOKEN, allow_ports=parse_allow_ports("6000")))


def _client(network: MemoryNetwork) -> GotaxyClient:
    web = TunnelSpec(name="web", local_port=LOCAL_PORT, remote_port=6000)
    return GotaxyClient(network, TOKEN, tunnels=[web], user="alice").start()


def test_after_a_goodbye_the_client_is_back_as_soon_as_the_next_server_listens(network, log):
    server = _server(network)
    client = _client(network)
    assert network.exchange(6000, b"before") == b"before"
    before = client.protocol

    server.shutdown()
    assert log.has("the server said goodbye (server shutting down) and asked us to reconnect; "
                   "reconnecting to 127.0.0.1:7000 in ")
    assert not log.has("server closed the connection")  # the old clients' line
    network.pass_time(1.0)  # the next server takes a second to start: the client is refused meanwhile
    assert log.has("cannot reach 127.0.0.1:7000: connection refused; retrying in ")
    assert client.protocol is None

    _server(network)
    network.pass_time(FAST_CAP)  # the longest the client waits between attempts now
    assert client.protocol is not None and client.protocol is not before
    assert client.up == {"web": 6000}
    assert network.exchange(6000, b"after") == b"after"
    assert not log.has("retrying in 2 s") and not log.has("retrying in 1 s")


def test_a_client_that_does_not_know_goodbye_is_told_why_as_before(network, log, monkeypatch):
    monkeypatch.setattr(control, "LOGIN_FEATURES", ["connections_refused", "datagrams"])
    server = _server(network)
    client = _client(network)
    first = client.protocol

    server.shutdown()
    assert log.has("server closed the connection: server shutting down")
    assert not log.has("said goodbye") and not log.has("protocol error")
    _server(network)
    network.pass_time(SLOW_FIRST)
    assert client.protocol is not None and client.protocol is not first
    assert network.exchange(6000, b"after") == b"after"


def test_a_goodbye_that_asks_for_too_long_a_wait_is_a_protocol_error(network, log):
    server = _server(network)
    client = _client(network)
    first = client.protocol
    server.session("shared:alice").send_control({"type": "goodbye", "reason": "x", "reconnectWithin": 3600})
    network.flush()
    assert log.has("goodbye: 'reconnectWithin' must be a number of seconds from 0 to 60")
    assert client.protocol is not first  # dropped, as after any protocol error


def test_the_more_clients_a_server_has_the_longer_it_asks_them_to_spread_their_return():
    assert goodbye_spread(1) == GOODBYE_MIN
    assert goodbye_spread(1000) == 2.0
    assert goodbye_spread(10**6) == GOODBYE_MAX
