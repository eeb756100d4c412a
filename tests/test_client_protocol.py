"""
The client's end of the control protocol against a hostile or broken server:
every field from the wire is checked, and nothing a server sends can raise
out of the protocol.  In memory: a ``ClientControlProtocol`` on a
``StringTransport`` with a ``MemoryReactorClock``.
"""

from __future__ import annotations

import copy
import json
import random
import struct
from typing import Any, Dict, List, Tuple

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from gotaxy.client.control import ClientControlFactory, ClientControlProtocol
from gotaxy.config import ClientConfig, TunnelSpec
from gotaxy.proxy import PublicAddress
from gotaxy.proxy.tcp import TcpSpec
from gotaxy.wire import MAX_CONTROL, FrameDecoder, FrameType, ProtocolError, encode_control, encode_frame, encode_json

PUSHED = {"type": "tcp", "localIP": "127.0.0.1", "localPort": 22, "remotePort": 0}
LOGIN_OK = {"type": "login_ok", "client": "alice", "serverVersion": "0.1.0", "heartbeatInterval": 10, "heartbeatTimeout": 30}

TEMPLATES: List[Dict[str, Any]] = [
    LOGIN_OK,
    {"type": "login_failed", "reason": "invalid, expired or revoked token"},
    {"type": "tunnel_up", "name": "web", "address": {"scheme": "tcp", "port": 6000}},
    {"type": "tunnel_refused", "name": "web", "reason": "port 6000 is used by another tunnel"},
    {"type": "tunnel_add", "name": "pushed", "spec": {"type": "tcp", "localIP": "127.0.0.1", "localPort": 22, "remotePort": 0}},
    {"type": "tunnel_remove", "name": "pushed"},
    {"type": "tunnel_down", "name": "web", "reason": "disabled by the operator"},
    {"type": "connections_refused", "name": "web", "count": 3, "reason": "too many open streams"},
    {"type": "error", "reason": "server shutting down"},
    {"type": "surprise"},
]

ODD_VALUES: List[Any] = [
    None, True, False, 0, -1, 1, 65535, 65536, 2**64, -(2**63), 1.5, 6000.0, 1e308, -0.0,
    "", "web", "pushed", "127.0.0.1:22", "[::1]:22", "Infinity", "6000", "x" * 5000,
    "line\nforged 2026-01-01 [gotaxy] tunnel web up", "\x1b[31mred\x00", "\udcff",
    [], {}, [6000], {"a": [1]}, [[[[]]]],
]

KEYS = ["type", "name", "spec", "address", "remotePort", "localIP", "localPort", "scheme", "port", "hosts",
        "reason", "client", "serverVersion", "count", "heartbeatInterval", "heartbeatTimeout", "extra"]


class Client:
    def __init__(self) -> None:
        config = ClientConfig(token="gtx_test", tunnels=(TunnelSpec(name="web", local_port=8080),))
        self.reactor = MemoryReactorClock()
        self.fatal: List[str] = []
        factory = ClientControlFactory(config, verifier=None, reactor=self.reactor, fatal=self.fatal.append)
        self.protocol: ClientControlProtocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def message(self, message: Dict[str, Any]) -> None:
        self.feed(encode_control(message))

    def sent(self) -> List[Tuple[int, int, bytes]]:
        out: List[Tuple[int, int, bytes]] = []
        FrameDecoder(lambda t, s, p: out.append((t, s, p)), lambda s, c: out.append((FrameType.DATA, s, c))).feed(
            self.transport.value()
        )
        return out

    def errors(self) -> List[str]:
        return [json.loads(p)["reason"] for t, _, p in self.sent() if t == FrameType.CONTROL and b'"error"' in p]

    def check_invariants(self) -> None:
        """What a client that handled or dropped its input must look like."""
        p = self.protocol
        for name, address in p.up.items():
            assert isinstance(name, str) and name in p.tunnels
            assert isinstance(address, PublicAddress)
            assert type(address.port) is int and 1 <= address.port <= 65535, address
        for name, spec in p.tunnels.items():
            assert isinstance(spec, TunnelSpec)
            proxy = p.proxies[name]
            assert isinstance(proxy, TcpSpec)
            assert type(proxy.remote_port) is int and 0 <= proxy.remote_port <= 65535
        if p.disconnecting:
            assert self.transport.disconnecting  # closed, not left half-open


def logged_in() -> Client:
    client = Client()
    client.message(LOGIN_OK)
    assert client.protocol.authenticated
    return client


# -- targeted ----------------------------------------------------------------


@pytest.mark.parametrize("port", [float("inf"), float("nan"), 1e308, 6000.0, True, "6000", None, -1, 65536, 2**64])
def test_tunnel_add_with_a_bad_remote_port_is_a_protocol_error(port: Any) -> None:
    client = logged_in()
    client.message({"type": "tunnel_add", "name": "pushed", "spec": dict(PUSHED, remotePort=port)})
    assert client.protocol.disconnecting and client.transport.disconnecting
    assert "pushed" not in client.protocol.tunnels
    (error,) = client.errors()
    assert error.startswith("protocol error:")
    assert "remotePort" in error or "malformed JSON" in error


def test_infinity_reaching_the_handler_is_refused_too() -> None:
    client = logged_in()
    with pytest.raises(ProtocolError, match="'remotePort' must be an integer from 0 to 65535"):
        client.protocol.control_received(
            {"type": "tunnel_add", "name": "pushed", "spec": dict(PUSHED, remotePort=float("inf"))}
        )


@pytest.mark.parametrize("port", [0, True, 1.0, 70000, "1"])
def test_tunnel_up_with_a_bad_port_is_a_protocol_error(port: Any) -> None:
    client = logged_in()
    client.message({"type": "tunnel_up", "name": "web", "address": {"scheme": "tcp", "port": port}})
    assert client.protocol.up == {}
    assert "tunnel_up: 'address': the public port must be an integer from " in client.errors()[0]


def test_a_tunnel_of_a_type_this_client_does_not_know_is_declined() -> None:
    """A newer server's tunnel type: the client says no, and stays connected."""
    client = logged_in()
    client.message({"type": "tunnel_add", "name": "site", "spec": {"type": "teleport", "localPort": 80}})
    assert not client.protocol.disconnecting and "site" not in client.protocol.tunnels
    (declined,) = [json.loads(p) for t, _, p in client.sent() if t == FrameType.CONTROL and b"tunnel_declined" in p]
    assert declined["name"] == "site" and "tunnel type 'teleport' is not supported" in declined["reason"]


@pytest.mark.parametrize(
    "interval, timeout",
    [(0, 30), (-1, 30), (30, 10), (True, 30), ("10", 30), (10, 1e9), (10, [30]), (10, None)],
)
def test_login_ok_heartbeats_are_checked(interval: Any, timeout: Any) -> None:
    client = Client()
    message = dict(LOGIN_OK, heartbeatInterval=interval)
    if timeout is None:
        del message["heartbeatTimeout"]
        message["heartbeatInterval"] = "soon"
    else:
        message["heartbeatTimeout"] = timeout
    client.message(message)
    assert not client.protocol.authenticated
    assert client.protocol.disconnecting
    assert "heartbeat" in client.errors()[0]


def test_the_window_budget_is_used_only_when_both_sides_announced_it(monkeypatch: Any) -> None:
    from gotaxy.budget import SMALL_WINDOW, WINDOW_BUDGET
    from gotaxy.mux import LEGACY_MAX_STREAMS, MAX_STREAMS
    from gotaxy.wire import INITIAL_WINDOW

    client = Client()
    client.message(dict(LOGIN_OK, features=[WINDOW_BUDGET]))
    assert (client.protocol.initial_window, client.protocol.max_streams) == (SMALL_WINDOW, MAX_STREAMS)
    older_server = Client()
    older_server.message(LOGIN_OK)
    assert older_server.protocol.budget is None
    assert (older_server.protocol.initial_window, older_server.protocol.max_streams) == (INITIAL_WINDOW,
                                                                                        LEGACY_MAX_STREAMS)
    # A client that did not announce it keeps the fixed windows the server expects of it.
    monkeypatch.setattr("gotaxy.client.control.LOGIN_FEATURES", ["connections_refused", "datagrams", "goodbye"])
    unannounced = Client()
    unannounced.message(dict(LOGIN_OK, features=[WINDOW_BUDGET]))
    assert unannounced.protocol.budget is None and unannounced.protocol.initial_window == INITIAL_WINDOW


def test_login_ok_without_heartbeats_is_fine() -> None:
    client = Client()
    client.message({"type": "login_ok", "client": "alice"})
    assert client.protocol.authenticated and not client.protocol.disconnecting


def test_strings_from_the_server_cannot_forge_log_lines() -> None:
    seen: List[str] = []

    def observe(event: Dict[str, Any]) -> None:
        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        client = logged_in()
        client.message({"type": "tunnel_refused", "name": "web", "reason": "no\n2026-01-01 [gotaxy] tunnel x up\x1b[2J"})
    finally:
        globalLogPublisher.removeObserver(observe)
    (line,) = [text for text in seen if "refused by the server" in text]
    assert "\n" not in line and "\x1b" not in line and "\\n2026" in line


# -- fuzz --------------------------------------------------------------------


def mutate_message(rng: random.Random) -> Dict[str, Any]:
    message = copy.deepcopy(rng.choice(TEMPLATES))
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        action = rng.random()
        key = rng.choice(list(message) if message and action < 0.6 else KEYS)
        if key == "type" and rng.random() < 0.8:
            continue  # mostly keep the type, to reach each handler
        if action < 0.15 and key in message:
            del message[key]
        else:
            message[key] = rng.choice(ODD_VALUES)
    return message


def random_frame(rng: random.Random) -> bytes:
    kind = rng.choice([0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 255])
    stream = rng.choice([0, 1, 2, 4, 6, 0xFFFFFFFF, rng.getrandbits(32)])
    if kind == FrameType.OPEN and rng.random() < 0.7:
        header = {"tunnel": rng.choice(ODD_VALUES[:26] + ["web"] * 5), "peer": rng.choice(ODD_VALUES)}
        try:
            return encode_json(FrameType.OPEN, stream, header)[:1033]
        except (TypeError, ValueError):
            return b""
    payload = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 4, 8, 9, 40])))
    if rng.random() < 0.1:  # a length that lies
        return struct.pack("!BII", kind, stream, rng.getrandbits(32)) + payload
    return encode_frame(kind, stream, payload)


def flip_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.getrandbits(8)
    return bytes(data)


def fuzz_input(rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.7:
        try:
            data = encode_control(mutate_message(rng))
        except ValueError:  # larger than a control frame may be
            data = encode_control({"type": "error", "reason": "x" * (MAX_CONTROL - 40)})
        return flip_bytes(rng, data) if rng.random() < 0.15 else data
    if choice < 0.95:
        return random_frame(rng)
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))


def test_fuzzed_server_messages_never_raise_out_of_the_client() -> None:
    rng = random.Random(20261201)
    outcomes = {"handled": 0, "dropped": 0}
    for case in range(4000):
        client = logged_in() if rng.random() < 0.85 else Client()
        inputs = [fuzz_input(rng) for _ in range(rng.randint(1, 4))]
        for data in inputs:
            try:
                # In any split: the decoder must not care.
                cut = rng.randint(0, len(data))
                client.feed(data[:cut])
                client.feed(data[cut:])
            except Exception as e:  # pragma: no cover - the failure report
                raise AssertionError(f"case {case}: {type(e).__name__}: {e} on {inputs!r}") from e
            client.check_invariants()
            if client.protocol.disconnecting:
                break
        outcomes["dropped" if client.protocol.disconnecting else "handled"] += 1
    # The fuzzer reaches both outcomes, so it explores more than the first check.
    assert outcomes["handled"] > 150 and outcomes["dropped"] > 1000, outcomes
