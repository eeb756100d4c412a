"""
The control protocol, both ends, in memory (``gotaxy.testing``): a real
server core and a real client over real TLS on a ``MemoryNetwork``, where
time passes only when the test says so.  Each test checks what a user
would see: the log line, the tunnel's state, the connection closed.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from twisted.internet.protocol import ClientFactory

from gotaxy.config import LimitsSettings, TransportSettings, TunnelSpec, parse_allow_ports
from gotaxy.testing import (
    Collector,
    EchoFactory,
    GotaxyClient,
    GotaxyServer,
    LogCapture,
    MemoryNetwork,
    server_config,
)

LOCAL_PORT = 8080


@pytest.fixture
def network() -> MemoryNetwork:
    network = MemoryNetwork()
    network.listenTCP(LOCAL_PORT, EchoFactory(), interface="127.0.0.1")  # every test's local service
    return network


@pytest.fixture
def log() -> Iterator[LogCapture]:
    with LogCapture() as capture:
        yield capture


def web(**settings: Any) -> TunnelSpec:
    return TunnelSpec(name="web", local_port=LOCAL_PORT, **settings)


def raw_connection(network: MemoryNetwork, port: int) -> Collector:
    """A TCP connection to ``port`` that sends nothing (no TLS, no log-in)."""
    collector = Collector()
    network.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(lambda: collector))
    network.flush()
    return collector


# -- log-in --------------------------------------------------------------------


def test_a_client_logs_in_and_its_tunnel_carries_bytes(network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network)
    client = GotaxyClient(network, server.create_token("alice"), tunnels=[web()]).start()

    assert log.has("client alice connected from 127.0.0.1:")
    assert log.has("logged in to 127.0.0.1:7000 as alice (server ")
    port = client.up["web"]
    assert log.has(f"tunnel web up at 127.0.0.1:{port}")
    assert network.exchange(port, b"hello through the tunnel") == b"hello through the tunnel"
    assert [(c.name, c.online) for c in server.store.store.list_clients()] == [("alice", True)]

    server.shutdown()
    assert log.has("the server said goodbye (server shutting down) and asked us to reconnect")
    assert port not in network.listeners


def test_a_wrong_token_is_refused_and_the_client_stops_with_the_reason(
        network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network)
    client = GotaxyClient(network, "gtx_not-a-token", tunnels=[web()]).start()

    assert client.fatal == [
        "the server refused our login: invalid, expired or revoked token; check the token (auth.token / --token)"
    ]
    assert log.has("login failed from 127.0.0.1:")
    assert server.core.sessions == {}
    assert network.links == []  # closed
    network.pass_time(60)  # and never tried again
    assert network.links == []
    assert len(log.matching("the server refused our login")) == 1


def test_a_refused_login_is_retried_with_backoff_when_login_fail_exit_is_off(
        network: MemoryNetwork, log: LogCapture) -> None:
    GotaxyServer(network)
    client = GotaxyClient(network, "gtx_not-a-token", login_fail_exit=False).start()
    network.pass_time(10)

    assert client.fatal == []
    assert log.has("the server refused our login: invalid, expired or revoked token; retrying in ")
    assert log.has("log-in refused again, for the same reason; retrying in ")
    assert len(log.matching("invalid, expired or revoked token; retrying in")) == 1  # said once, not per attempt


# -- before the log-in -----------------------------------------------------------


def test_a_connection_that_never_logs_in_is_closed_after_auth_timeout(
        network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network, server_config(transport=TransportSettings(auth_timeout=5.0)))
    silent = raw_connection(network, server.port)
    assert server.admission.pending == 1

    network.pass_time(4.9)
    assert silent.lost is None
    network.pass_time(0.2)
    assert silent.lost is not None
    assert log.has("no login within 5 s")
    assert server.admission.pending == 0  # its place is free for an honest client


def test_connections_over_the_pending_limit_are_refused_and_logged_once(
        network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network, server_config(transport=TransportSettings(max_pending=10, max_pending_per_ip=2)))
    idle = [raw_connection(network, server.port) for _ in range(2)]
    refused = [raw_connection(network, server.port) for _ in range(3)]

    assert all(c.lost is None for c in idle)
    assert all(c.lost is not None for c in refused)
    assert len(log.matching("refusing connection from 127.0.0.1: 2 connections are waiting to log in")) == 1
    assert log.has("(2 from this address; limits 10 and 2)")

    # A client that comes when the idle ones are gone gets in.
    for connection in idle:
        connection.transport.loseConnection()
    network.flush()
    client = GotaxyClient(network, server.create_token("alice"), tunnels=[web()]).start()
    assert "web" in client.up


def test_a_client_turned_away_by_admission_says_so_and_retries(network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network, server_config(transport=TransportSettings(max_pending=1)))
    raw_connection(network, server.port)
    client = GotaxyClient(network, server.create_token("alice")).start()

    assert client.protocol is None
    assert log.has("cannot reach 127.0.0.1:7000: the server closed the connection before the log-in; retrying in ")


def test_a_second_login_on_a_logged_in_connection_is_a_protocol_error(
        network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network)
    client = GotaxyClient(network, server.create_token("alice")).start()

    client.protocol.send_control({"type": "login", "token": "gtx_someone-else"})
    network.flush()

    assert log.has("server closed the connection: protocol error: unknown control message 'login'")
    assert server.session("alice") is None


# -- sessions ------------------------------------------------------------------


def test_a_reconnecting_installation_replaces_its_stale_session_and_keeps_its_port(
        network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network, server_config(allow_ports=parse_allow_ports("6000-6010")))
    token = server.create_token("alice")
    first = GotaxyClient(network, token, tunnels=[web(remote_port=6000)], instance_id="laptop").start()
    assert first.up == {"web": 6000}
    old_session = server.session("alice")
    network.partition(first.link)  # the network changed under it; the server has not noticed

    second = GotaxyClient(network, token, tunnels=[web(remote_port=6000)], instance_id="laptop").start()

    assert log.has("client alice reconnected from 127.0.0.1:")
    assert log.has("closing its previous connection from 127.0.0.1:")
    assert server.session("alice") is not old_session and old_session.dropped
    assert second.up == {"web": 6000}  # the port came free and was taken again
    assert network.exchange(6000, b"ping") == b"ping"
    assert "client.replaced" in [e.type for e in server.store.store.events()]


def test_another_installation_with_the_same_token_is_refused_and_the_first_keeps_working(
        network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network)
    token = server.create_token("alice")
    first = GotaxyClient(network, token, tunnels=[web()], instance_id="laptop").start()
    port = first.up["web"]

    second = GotaxyClient(network, token, tunnels=[web()], instance_id="desktop").start()

    (message,) = second.fatal
    assert message.startswith("the server refused our login: client 'alice' is already connected from 127.0.0.1 "
                              "by another installation; one token is for one machine")
    assert log.has("refused a log-in from 127.0.0.1:")
    assert first.protocol is not None and first.up == {"web": port}
    assert network.exchange(port, b"still mine") == b"still mine"


def test_a_silent_client_is_dropped_after_the_heartbeat_timeout_and_its_port_closed(
        network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network, server_config(heartbeat_interval=10.0, heartbeat_timeout=30.0))
    client = GotaxyClient(network, server.create_token("alice"), tunnels=[web()]).start()
    port = client.up["web"]
    network.pass_time(120)  # heartbeats answered: nothing happens
    assert server.session("alice") is not None and not log.has("silent for")

    network.partition(client.link)
    network.pass_time(29)
    assert server.session("alice") is not None  # not yet
    network.pass_time(5)  # the verdict comes at most a tenth of the timeout late

    assert log.has("client alice (127.0.0.1:") and log.has("silent for 30 s; closing its tunnels")
    assert server.session("alice") is None
    assert port not in network.listeners  # the public port is closed
    assert [(c.name, c.online) for c in server.store.store.list_clients()] == [("alice", False)]


def test_a_client_whose_server_falls_silent_reconnects_and_gets_its_tunnel_back(
        network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network)
    client = GotaxyClient(network, server.create_token("alice"), tunnels=[web()],
                          heartbeat_interval=5.0, heartbeat_timeout=15.0).start()
    first = client.protocol
    network.partition(client.link)
    network.pass_time(50)

    assert log.has("server silent for 15 s; reconnecting")
    assert client.protocol is not None and client.protocol is not first
    assert network.exchange(client.up["web"], b"back") == b"back"


# -- control messages ------------------------------------------------------------


def test_an_unknown_message_from_a_client_closes_its_connection_with_the_reason(
        network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network)
    client = GotaxyClient(network, server.create_token("alice"), tunnels=[web()]).start()
    port = client.up["web"]
    connection = client.protocol

    connection.send_control({"type": "surprise"})
    network.flush()

    assert log.has("protocol error: unknown control message 'surprise'")
    assert log.has("server closed the connection: protocol error: unknown control message 'surprise'")
    assert log.has("client alice offline: connection lost")
    assert server.session("alice") is None and port not in network.listeners
    network.pass_time(5)  # the client comes back
    assert client.protocol is not connection and "web" in client.up


def test_an_unknown_message_from_the_server_is_refused_by_the_client(network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network)
    GotaxyClient(network, server.create_token("alice")).start()

    server.session("alice").send_control({"type": "surprise"})
    network.flush()

    assert log.has("protocol error: unexpected control message 'surprise'")
    assert log.has("client alice reports: protocol error: unexpected control message 'surprise'")
    assert log.has("client alice offline: connection lost")


def test_a_message_before_the_login_is_refused(network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network)
    client = GotaxyClient(network, server.create_token("alice"))
    # A client that opens a tunnel before it has logged in.
    original = client.factory.buildProtocol

    def build(addr: Any) -> Any:
        protocol = original(addr)

        def early() -> None:
            protocol.send_preamble()
            protocol.send_control({"type": "tunnel_open", "name": "web"})

        protocol.handshakeCompleted = early
        return protocol

    client.factory.buildProtocol = build  # type: ignore[method-assign]
    client.start()

    assert log.has("protocol error: expected one login message, got 'tunnel_open'")
    assert log.has("server closed the connection: protocol error: expected one login message, got 'tunnel_open'")
    assert server.core.sessions == {}


# -- tunnels -----------------------------------------------------------------------


def test_max_ports_per_client_refuses_the_tunnel_over_the_limit(network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network, server_config(limits=LimitsSettings(max_ports_per_client=1)))
    db = TunnelSpec(name="db", local_port=LOCAL_PORT)
    client = GotaxyClient(network, server.create_token("alice"), tunnels=[web(), db]).start()

    assert list(client.up) == ["web"]
    assert log.has("tunnel db refused by the server: client 'alice' already has 1 ports open; "
                   "maxPortsPerClient is 1; retrying in ")
    (session,) = server.core.sessions.values()
    assert "db" in session.retry_at  # the panel shows when it is asked for again
    assert [t.name for t in server.core.tunnels_of("alice")] == ["web"]


def test_no_free_port_in_allow_ports_refuses_the_tunnel_with_the_range(network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network, server_config(allow_ports=parse_allow_ports("6000-6001")))
    network.taken.add(6000)  # another program holds one of the two
    first = GotaxyClient(network, server.create_token("alice"), tunnels=[web()]).start()
    assert first.up == {"web": 6001}

    second = GotaxyClient(network, server.create_token("bob"), tunnels=[web()], instance_id="bob").start()

    assert second.up == {}
    assert log.has("tunnel web refused by the server: no free port left in allowPorts (6000-6001); "
                   "ask the operator to widen it; retrying in ")

    # Once the port comes free, the retry gets it.
    network.taken.discard(6000)
    network.pass_time(60)
    assert second.up == {"web": 6000}


def test_a_requested_port_busy_on_the_server_is_refused_by_name(network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network)
    network.taken.add(6000)
    client = GotaxyClient(network, server.create_token("alice"), tunnels=[web(remote_port=6000)]).start()

    assert client.up == {}
    assert log.has("tunnel web refused by the server: port 6000 is busy on the server; retrying in ")


# -- the server's identity ----------------------------------------------------------


def test_a_client_pinned_to_another_certificate_stops_before_sending_its_token(
        network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network)
    token = server.create_token("alice")
    wrong = "SHA256:" + ":".join(["AB"] * 32)
    client = GotaxyClient(network, token, fingerprint=wrong).start()

    (message,) = client.fatal
    assert message.startswith("Server 127.0.0.1:7000 presented certificate SHA256:")
    assert message.endswith(", not the pinned SHA256:" + "AB" * 32 + "; check --fingerprint against the one the server "
                            "prints at start-up.")
    assert server.core.sessions == {}
    assert not log.has("login failed") and not log.has("connected from")  # the token never left the client
    assert server.store.store.authenticate_token(token) is not None


def test_a_client_pinned_to_the_right_certificate_logs_in(network: MemoryNetwork, log: LogCapture) -> None:
    server = GotaxyServer(network)
    client = GotaxyClient(network, server.create_token("alice"), fingerprint=server.fingerprint).start()

    assert client.fatal == [] and client.protocol is not None
    assert not log.has("INSECURE")


def test_a_client_that_checks_the_servers_ca_logs_in(network: MemoryNetwork, log: LogCapture, tmp_path) -> None:
    # The network's clock is today's, so the certificates' validity holds.
    server = GotaxyServer(network)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(server.credentials.certificate_pem.split(b"-----END CERTIFICATE-----\n", 1)[1])
    client = GotaxyClient(network, server.create_token("alice"), trusted_ca_file=str(ca)).start()

    assert client.fatal == [] and client.protocol is not None
