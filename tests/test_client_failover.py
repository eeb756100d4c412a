"""
A client with several servers (``serverAddr`` a list, a comma-separated
string, ``--server a,b``, or a DNS name with several addresses): the forms
it accepts, the order it tries them in (the next one 0.3 s after the
last, whether that one refused or is silent, a server that took the connection but no log-in came of it
goes to the back), and each server checked under its own name.  In memory:
``MemoryReactorClock`` records the connection attempts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from gotaxy.client import tap
from gotaxy.client.servers import ServerList
from gotaxy.config import ClientConfig, ConfigError, load_client_file


def client_toml(tmp_path: Any, line: str) -> ClientConfig:
    path = tmp_path / "client.toml"
    path.write_text(f'{line}\nauth.token = "t"\n')
    return load_client_file(str(path), base=ClientConfig()).config


@pytest.mark.parametrize("line, servers", [
    ('serverAddr = "tunnel.example.org"', (("tunnel.example.org", 7000),)),  # frp's form, unchanged
    ('serverAddr = "a.example.org, b.example.org:7001"', (("a.example.org", 7000), ("b.example.org", 7001))),
    ('serverAddr = ["192.0.2.1", "[2001:db8::1]:7002"]\nserverPort = 7100',
     (("192.0.2.1", 7100), ("2001:db8::1", 7002))),
    ('serverAddr = ["a.example.org"]', (("a.example.org", 7000),)),
])
def test_server_addr_takes_one_host_a_list_or_a_comma_separated_string(tmp_path, line, servers):
    assert client_toml(tmp_path, line).servers == servers


def test_the_documented_example_lists_three_servers(tmp_path):
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    (example,) = [block.split("```")[0] for block in doc.split("```toml\n")[1:] if "a client of a cluster" in block]
    loaded = client_toml(tmp_path, example).servers
    assert loaded == (("tunnel-a.example.org", 7000), ("tunnel-b.example.org", 7000), ("tunnel-c.example.org", 7001))
    for line in example.splitlines():  # the other forms it shows
        if line.startswith("# the same: ") or line.startswith("# or one name"):
            text = line.split(": ", 1)[1]
            assert client_toml(tmp_path, text + "\nserverPort = 7000").servers[0][0].startswith("tunnel")


@pytest.mark.parametrize("line", [
    'serverAddr = "example.org:7000"',  # frp's serverAddr has no port: serverPort says it
    'serverAddr = []',
    'serverAddr = "a.example.org,,b.example.org"',
    'serverAddr = ["a.example.org", 7000]',
    'serverAddr = ["a b"]',
    'serverAddr = [' + ", ".join(f'"n{i}.example.org"' for i in range(17)) + "]",
])
def test_a_server_list_it_cannot_use_names_the_key(tmp_path, line):
    with pytest.raises(ConfigError) as e:
        client_toml(tmp_path, line)
    assert "'serverAddr' must be a host name or IP address without a port, or up to 16 servers" in str(e.value)


def test_the_server_flag_takes_several_servers():
    options = tap.Options()
    options.parseOptions(["--server", "127.0.0.1:7000,[::1]:7001,b.example.org", "--token", "t",
                          "--tunnel", "ssh=tcp:22"])
    config = options.loaded_config
    assert config.servers == (("127.0.0.1", 7000), ("::1", 7001), ("b.example.org", 7000))
    assert options.warnings == ["--server b.example.org has no port; using 7000, the default (write --server "
                                "b.example.org:PORT if the server's bindPort is another)"]
    single = tap.Options()
    single.parseOptions(["--server", "a.example.org:7005", "--token", "t", "--tunnel", "ssh=tcp:22"])
    assert (single.loaded_config.server_addr, single.loaded_config.server_port) == ("a.example.org", 7005)


def test_a_bad_entry_of_the_server_flag_is_named():
    with pytest.raises(usage.UsageError) as e:
        tap.Options().parseOptions(["--server", "127.0.0.1:7000,https://b.example.org", "--token", "t",
                                    "--tunnel", "ssh=tcp:22"])
    assert str(e.value) == ("--server \"https://b.example.org\": write HOST:PORT without https://, e.g. "
                            "--server b.example.org:7000")


def test_each_server_is_checked_under_its_own_name_and_port(tmp_path):
    config = ClientConfig(server_addr=["a.example.org", "b.example.org:7001"], token="t", data_dir=str(tmp_path))
    verifiers = tap.make_verifiers(config)
    assert {entry: (v.server_name, v.server_port) for entry, v in verifiers.items()} == {
        ("a.example.org", 7000): ("a.example.org", 7000),
        ("b.example.org", 7001): ("b.example.org", 7001),
    }


# -- the order of attempts -----------------------------------------------------


@implementer(IResolutionReceiver)
class Received:
    def __init__(self) -> None:
        self.addresses: List[Any] = []
        self.complete = False

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.complete = True


class FakeDNS:
    """The reactor's resolver for names: answers from a table when told to."""

    def __init__(self, table: dict) -> None:
        self.table = table
        self.pending: List[Any] = []

    def resolveHostName(self, receiver: Any, name: str, portNumber: int = 0, **kwargs: Any) -> None:
        self.pending.append((receiver, name, portNumber))

    def answer(self) -> None:
        pending, self.pending = self.pending, []
        for receiver, name, port in pending:
            for ip in self.table[name]:
                receiver.addressResolved((IPv6Address if ":" in ip else IPv4Address)("TCP", ip, port))
            receiver.resolutionComplete()


def resolved(servers: ServerList) -> List[Any]:
    received = Received()
    servers.resolveHostName(received, "ignored")
    if not received.complete:
        servers.reactor.nameResolver.answer()
    assert received.complete
    return [(a.host, a.port) for a in received.addresses]


def test_every_servers_addresses_in_list_order_a_name_with_several_addresses_included():
    reactor = MemoryReactorClock()
    reactor.nameResolver = FakeDNS({"cluster.example.org": ["192.0.2.10", "2001:db8::10"]})
    servers = ServerList([("192.0.2.1", 7000), ("cluster.example.org", 7001)], reactor)
    assert resolved(servers) == [("192.0.2.1", 7000), ("192.0.2.10", 7001), ("2001:db8::10", 7001)]
    assert servers.entry_for(IPv6Address("TCP", "2001:db8::10", 7001)) == ("cluster.example.org", 7001)
    assert servers.entry_for(IPv4Address("TCP", "192.0.2.1", 7000)) == ("192.0.2.1", 7000)


def test_a_server_that_took_the_connection_but_gave_no_log_in_goes_to_the_back():
    reactor = MemoryReactorClock()
    servers = ServerList([("192.0.2.1", 7000), ("192.0.2.2", 7000), ("192.0.2.3", 7000)], reactor)
    resolved(servers)
    servers.passed_over(IPv4Address("TCP", "192.0.2.1", 7000))
    assert resolved(servers)[0] == ("192.0.2.2", 7000)
    servers.passed_over(IPv4Address("TCP", "192.0.2.3", 7000))  # not the first: the order stays
    assert resolved(servers)[0] == ("192.0.2.2", 7000)
    servers.passed_over(IPv4Address("TCP", "192.0.2.2", 7000))
    servers.passed_over(IPv4Address("TCP", "192.0.2.3", 7000))
    assert resolved(servers) == [("192.0.2.1", 7000), ("192.0.2.2", 7000), ("192.0.2.3", 7000)]


def attempts(reactor: MemoryReactorClock) -> List[Any]:
    return [(host, port) for host, port, *_ in reactor.tcpClients]


def test_the_next_server_is_tried_a_third_of_a_second_later_whether_the_first_refused_or_is_silent():
    reactor = MemoryReactorClock()
    servers = ServerList([("127.0.0.1", 7000), ("127.0.0.1", 7001), ("127.0.0.1", 7002)], reactor)
    connected: List[Any] = []
    servers.endpoint(timeout=10).connect(Factory.forProtocol(Protocol)).addCallback(connected.append)
    assert attempts(reactor) == [("127.0.0.1", 7000)]
    # node a was killed: refused.
    first = reactor.tcpClients[0][2]
    first.clientConnectionFailed(reactor.connectors[0], Failure(error.ConnectionRefusedError()))
    reactor.advance(0.3)
    assert attempts(reactor) == [("127.0.0.1", 7000), ("127.0.0.1", 7001)]
    # node b does not answer at all (unreachable): node c 0.3 s later, not after the 10 s dial timeout.
    reactor.advance(0.3)
    assert attempts(reactor)[-1] == ("127.0.0.1", 7002)
    reactor.tcpClients[2][2].buildProtocol(IPv4Address("TCP", "127.0.0.1", 7002)).makeConnection(StringTransport())
    assert len(connected) == 1
    assert reactor.connectors[1].stoppedConnecting  # the silent one's attempt is given up


def test_a_client_config_with_one_server_tries_only_that_one():
    reactor = MemoryReactorClock()
    servers = ServerList(ClientConfig(server_addr="127.0.0.1", server_port=7005, token="t").servers, reactor)
    servers.endpoint(timeout=10).connect(Factory.forProtocol(Protocol))
    reactor.advance(1)
    assert attempts(reactor) == [("127.0.0.1", 7005)]
    assert servers.entry_for(IPv4Address("TCP", "10.0.0.1", 1)) == ("127.0.0.1", 7005)
