"""
Proxy types (``gotaxy.proxy``): the public address, the tcp spec, the
registry, the preface seam, and a proxy type that exists only in this test
(an echo that needs no local service), registered without touching the
core, the control protocols, the store or ``Management``.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional

import attrs
import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientCreator, Protocol, ServerFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from gotaxy.proxy import (
    AddressError,
    ExposeContext,
    Exposure,
    ProxySpec,
    ProxyType,
    PublicAddress,
    SpecError,
    TunnelRefused,
    parse_spec,
    registry,
)
from gotaxy.proxy.tcp import TcpSpec
from gotaxy.server.tunnel import LiveTunnel, PublicConnection
from gotaxy.wire import FrameDecoder, FrameType, encode_control
from tests.inprocess import LiveSystem, listen_echo, wait_until

# -- PublicAddress ---------------------------------------------------------------


def test_every_face_shows_the_description() -> None:
    assert PublicAddress.tcp(16000).description == "port 16000"
    assert PublicAddress("udp", 5353).description == "udp port 5353"
    assert PublicAddress("http", 0, ("wiki.example.com",)).description == "http://wiki.example.com"
    assert PublicAddress("https", 8443, ("a.example.com", "b.example.com")).description == (
        "https://a.example.com:8443, https://b.example.com:8443"
    )
    assert str(PublicAddress.tcp(1)) == "port 1"
    assert PublicAddress.tcp(16000).at("203.0.113.5") == "203.0.113.5:16000"
    assert PublicAddress("udp", 53).at("::1") == "udp ::1:53"


@pytest.mark.parametrize("address", [
    PublicAddress.tcp(16000), PublicAddress("udp", 16000), PublicAddress("http", 0, ("a.example.com", "*.b.example.com")),
])
def test_text_and_wire_forms_round_trip(address: PublicAddress) -> None:
    assert PublicAddress.parse(address.text) == address
    assert PublicAddress.from_wire(json.loads(json.dumps(address.to_wire()))) == address


def test_a_tcp_and_a_udp_port_of_one_number_are_separate_claims() -> None:
    assert PublicAddress.tcp(53).claim_keys == (("tcp-port", "53"),)
    assert PublicAddress("udp", 53).claim_keys == (("udp-port", "53"),)
    assert PublicAddress.tcp(53) != PublicAddress("udp", 53)
    assert PublicAddress("http", 0, ("a.example.com",)).claim_keys == (("domain", "a.example.com"),)


@pytest.mark.parametrize("message", [
    None, [], {"scheme": "tcp", "port": True}, {"scheme": "tcp", "port": 70000}, {"scheme": "TCP", "port": 1},
    {"scheme": 7, "port": 1}, {"scheme": "http", "hosts": "a.example.com"}, {"scheme": "http", "hosts": ["a b"]},
    {"scheme": "http", "hosts": ["x" * 300]}, {"scheme": "http", "hosts": ["a.example.com"] * 17},
])
def test_a_peer_cannot_send_a_malformed_address(message: Any) -> None:
    with pytest.raises(AddressError):
        PublicAddress.from_wire(message)


# -- the tcp spec ----------------------------------------------------------------


def test_the_tcp_spec_reads_and_gives_back_frps_keys() -> None:
    spec = parse_spec({"type": "tcp", "localIP": "::1", "localPort": 5432, "remotePort": 15432})
    assert spec == TcpSpec(local_ip="::1", local_port=5432, remote_port=15432)
    assert parse_spec(spec.to_keys()) == spec
    assert spec.local_description == "[::1]:5432"
    assert spec.requested == PublicAddress.tcp(15432)
    assert parse_spec({"localPort": 22}) == TcpSpec(local_port=22)  # type tcp, localIP 127.0.0.1 by default
    assert parse_spec({"localPort": 22}).requested is None


@pytest.mark.parametrize("keys, message", [
    ({"type": "tcp"}, "a tcp tunnel needs 'localPort', the port of the local service"),
    ({"localPort": True}, "'localPort' must be an integer from 1 to 65535"),
    ({"localPort": 22, "remotePort": 22.5}, "'remotePort' must be an integer from 0 to 65535 (0 lets the server pick)"),
    ({"localPort": 22, "localIP": "[::1]"}, "'localIP' must be a host name or an IP address (without brackets)"),
    ({"localPort": 22, "customDomains": ["a"]}, "a tcp tunnel has no setting 'customDomains'"),
    ({"type": "teleport"}, "tunnel type 'teleport' is not supported by this version of Gotaxy (only 'tcp', 'http', 'udp', 'https')"),
    ([1], "a tunnel's settings must be an object of frp keys"),
])
def test_a_bad_spec_is_one_sentence_naming_the_key(keys: Any, message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(keys)
    assert str(e.value).startswith(message)


# -- the preface seam ---------------------------------------------------------------


class FakeSession:
    """Just enough of a client session for a public connection to open a stream on."""

    def __init__(self) -> None:
        self.opened: List[Any] = []

    def open_stream(self, tunnel: str, peer: str) -> Any:
        stream = RecordingStream()
        self.opened.append(stream)
        return stream


class RecordingStream:
    bytes_in = bytes_out = 0

    def __init__(self) -> None:
        self.written: List[bytes] = []
        self.transport: Any = None

    def attach(self, transport: Any) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        assert self.transport is not None or not self.written, "only the preface may come before attach"
        self.written.append(data)


class FirstLineFront(PublicConnection):
    """A front that must read a line before it knows where the connection goes (as a Host header)."""

    def __init__(self, route: Callable[[bytes], LiveTunnel]) -> None:
        super().__init__(None)
        self.route = route
        self.buffered = b""

    def dataReceived(self, data: bytes) -> None:
        if self.stream is not None:
            return super().dataReceived(data)
        self.buffered += data
        if b"\n" in self.buffered:
            line = self.buffered.split(b"\n", 1)[0]
            self.open_stream(self.route(line), preface=self.buffered)


def test_a_front_opens_the_stream_after_reading_and_the_bytes_it_read_go_first_once() -> None:
    session = FakeSession()
    tunnel = LiveTunnel(client="c", name="site", spec=TcpSpec(local_port=1), session=session,
                        address=PublicAddress.tcp(1))
    connection = FirstLineFront(lambda line: tunnel)
    connection.makeConnection(StringTransport())
    assert session.opened == []  # nothing opened before the front has read what it needs
    connection.dataReceived(b"HOST site")
    assert session.opened == []
    connection.dataReceived(b"\nbody")
    (stream,) = session.opened
    assert stream.written == [b"HOST site\nbody"]  # the preface, once
    connection.dataReceived(b"more")
    assert stream.written == [b"HOST site\nbody", b"more"]  # then straight through, as for tcp
    assert tunnel.streams == {stream: connection} and tunnel.opened == 1


def test_a_tcp_connection_opens_its_stream_at_once_without_a_preface() -> None:
    session = FakeSession()
    tunnel = LiveTunnel(client="c", name="ssh", spec=TcpSpec(local_port=22), session=session,
                        address=PublicAddress.tcp(2))
    connection = PublicConnection(tunnel)
    connection.makeConnection(StringTransport())
    (stream,) = session.opened
    assert stream.written == [] and stream.transport is connection.transport


# -- a proxy type that exists only here --------------------------------------------


@attrs.frozen
class EchoSpec(ProxySpec):
    """``type = "echo"``: the client answers every stream itself, upper-casing what follows the first line."""

    type = "echo"
    remote_port: int = attrs.field(default=0)

    @remote_port.validator
    def _check(self, attribute: Any, value: Any) -> None:
        if type(value) is not int or not 0 <= value <= 65535:
            raise SpecError("'remotePort' must be an integer from 0 to 65535")

    def to_keys(self) -> Dict[str, Any]:
        return {"type": "echo", "remotePort": self.remote_port}

    @property
    def local_description(self) -> str:
        return "echo (no local service)"

    @property
    def requested(self) -> Optional[PublicAddress]:
        return PublicAddress.tcp(self.remote_port) if self.remote_port else None


class _EchoFrontFactory(ServerFactory):
    def __init__(self, tunnel: LiveTunnel) -> None:
        self.tunnel = tunnel

    def buildProtocol(self, addr: Any) -> FirstLineFront:
        return FirstLineFront(lambda line: self.tunnel)


class _EchoSink:
    """The client's side: a transport that sends back what the stream brings (no socket at all)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.upper())

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def loseWriteConnection(self) -> None:
        self.stream.write_eof()

    def loseConnection(self) -> None:
        self.stream.local_closed("echo done")

    def abortConnection(self) -> None:
        pass


class EchoProxy(ProxyType):
    name = "echo"
    label = "Echo"

    def parse(self, keys: Mapping[str, Any]) -> EchoSpec:
        # The client's config hands every type localIP and localPort; an echo has no use for them.
        return EchoSpec(remote_port=keys.get("remotePort", 0))

    async def expose(self, tunnel: LiveTunnel, context: ExposeContext) -> Exposure:
        spec = tunnel.spec
        assert isinstance(spec, EchoSpec)
        listening = context.reactor.listenTCP(spec.remote_port, _EchoFrontFactory(tunnel), interface="127.0.0.1")
        address = PublicAddress.tcp(listening.getHost().port)
        try:
            await context.claims.claim(address)
        except TunnelRefused:
            listening.stopListening()
            raise
        return Exposure(address=address, close=listening.stopListening)

    def connect(self, reactor: Any, spec: ProxySpec, stream: Any, failed: Callable[[Failure], None]) -> None:
        stream.attach(_EchoSink(stream))


class _Collect(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.received)


class RegisteredTypeTests(unittest.TestCase):
    """A new proxy type is one module and one registry entry: the rest of Gotaxy carries it as it is."""

    def setUp(self) -> None:
        registry.register(EchoProxy())
        self.addCleanup(registry.unregister, "echo")

    async def test_a_type_registered_by_a_test_opens_serves_and_is_shown_by_its_address(self):
        live = await LiveSystem.start(self, ["hello=echo:127.0.0.1:1"])
        port = await live.wait_up("hello")

        # The front read the first line, opened the stream with it as the
        # preface, and the client's side answered without any local service.
        client = await ClientCreator(reactor, _Collect).connectTCP("127.0.0.1", port)
        client.transport.write(b"first line\nand the rest")
        await wait_until(lambda: client.received == b"FIRST LINE\nAND THE REST")
        client.transport.loseConnection()

        (view,) = await live.management.tunnels()
        self.assertEqual((view.type, view.status, view.address, view.local_addr),
                         ("echo", "up", PublicAddress.tcp(port), "echo (no local service)"))
        self.assertEqual(view.spec, {"type": "echo", "remotePort": 0})
        record = await live.core.store.call(live.core.store.store.get_tunnel, "alice", "hello")
        self.assertEqual((record.type, record.address), ("echo", PublicAddress.tcp(port)))
        opened = [e for e in await live.management.events() if e.type == "tunnel.opened"]
        self.assertEqual(opened[-1].detail, f"port {port} -> echo (no local service)")

    async def test_an_operator_defines_a_tunnel_of_the_new_type_through_management(self):
        live = await LiveSystem.start(self, [f"own=tcp:127.0.0.1:{listen_echo(self)}"])
        await live.wait_up("own")
        # An echo has no local address for allowOperatorTunnels to allow: the client declines it.
        view = await live.management.define_tunnel("alice", "pushed", {"type": "echo"})
        self.assertEqual((view.type, view.source, view.address), ("echo", "server", None))
        store = live.core.store.store
        await wait_until(lambda: store.get_tunnel("alice", "pushed").status == "refused")
        record = store.get_tunnel("alice", "pushed")
        self.assertIn("has no local address that allowOperatorTunnels could allow", record.reason)
        with self.assertRaises(Exception) as e:
            await live.management.define_tunnel("alice", "bad", {"type": "echo", "remotePort": "x"})
        self.assertEqual(str(e.exception), "'remotePort' must be an integer from 0 to 65535")


# -- protocol version --------------------------------------------------------------


def test_a_client_of_the_previous_protocol_is_told_to_upgrade_in_a_message_it_understands() -> None:
    from gotaxy import __version__
    from gotaxy.server.control import Admission, ServerControlProtocol
    from gotaxy.wire import PREAMBLE, PREAMBLE_MAGIC, PROTOCOL_VERSION

    from gotaxy.config import ServerConfig

    class Core:
        config = ServerConfig()

    clock = MemoryReactorClock()
    admission = Admission(16, 16, clock)
    assert admission.admit("127.0.0.1")
    server = ServerControlProtocol(Core(), admission, clock)
    transport = StringTransport()
    server.makeConnection(transport)
    old = PREAMBLE.pack(PREAMBLE_MAGIC, PROTOCOL_VERSION - 1)
    server.dataReceived(old + encode_control({"type": "login", "token": "gtx_x", "remotePort": 22}))
    out: List[Any] = []
    FrameDecoder(lambda t, s, p: out.append((t, json.loads(p))), lambda s, c: None).feed(transport.value())
    assert out == [(FrameType.CONTROL, {
        "type": "login_failed", "code": "version",
        "reason": f"this client speaks Gotaxy protocol version {PROTOCOL_VERSION - 1} and the server version "
                  f"{PROTOCOL_VERSION}: upgrade the client to Gotaxy {__version__} or later",
    })]
    assert transport.disconnecting


def test_a_client_newer_than_the_server_is_told_to_upgrade_the_server() -> None:
    from gotaxy.server.control import version_refusal
    from gotaxy.wire import PROTOCOL_VERSION

    assert "upgrade the server" in version_refusal(PROTOCOL_VERSION + 1)


# -- claims through the core -------------------------------------------------------


class ClaimTests(unittest.TestCase):
    """expose() claims the address in the store's claims table; what it could not serve it gives back."""

    def _busy_port(self) -> int:
        busy = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        return busy.getHost().port

    async def _refused(self, live: LiveSystem, name: str) -> Any:
        store = live.core.store.store
        await wait_until(lambda: getattr(store.get_tunnel("alice", name), "status", None) == "refused")
        return store.get_tunnel("alice", name)

    async def test_a_port_claimed_for_a_tunnel_that_cannot_bind_it_is_given_back(self):
        port = self._busy_port()
        live = await LiveSystem.start(self, [f"web=tcp:127.0.0.1:{listen_echo(self)}:{port}"])
        record = await self._refused(live, "web")
        self.assertEqual(record.reason, f"port {port} is busy on the server")
        store = live.core.store.store
        self.assertNotIn(port, store.reserved_ports())
        self.assertIsNone(store.port_owner(port))

    async def test_a_port_the_tunnel_held_before_stays_its_own_when_it_cannot_bind_it(self):
        port = self._busy_port()
        live = await LiveSystem.start(self)
        store = live.core.store.store
        # Up on that port before (a restart since): the claim is the tunnel's.
        store.tunnel_up("alice", "web", "tcp", "127.0.0.1:1", PublicAddress.tcp(port), {})
        store.tunnel_down("alice", "web", "down", "client disconnected", "tunnel.closed")
        await live.start_client([f"web=tcp:127.0.0.1:{listen_echo(self)}"])
        record = await self._refused(live, "web")
        self.assertEqual(record.reason, f"port {port} is busy on the server")
        self.assertEqual(store.port_owner(port), ("alice", "web"))

    async def test_a_port_another_clients_tunnel_holds_is_refused_naming_the_holder(self):
        live = await LiveSystem.start(self)
        store = live.core.store.store
        port = self._busy_port()  # only so that the number is one nobody else uses
        store.claim_port("laptop", "ssh", port)
        await live.start_client([f"web=tcp:127.0.0.1:{listen_echo(self)}:{port}"])
        record = await self._refused(live, "web")
        self.assertTrue(record.reason.startswith(f"port {port} is reserved by tunnel 'ssh' of client 'laptop'"),
                        record.reason)
        self.assertEqual(store.port_owner(port), ("laptop", "ssh"))
