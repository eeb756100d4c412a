"""
Tests for gotaxy.server.tunnel: closing idle public connections, and the
settings that bound a client's connections.
"""

from __future__ import annotations

import pytest

from gotaxy.config import ConfigError, ServerConfig, parse_server_config
from gotaxy.proxy import PublicAddress
from gotaxy.proxy.tcp import TcpSpec
from gotaxy.server.tunnel import LiveTunnel


class FakeStream:
    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0


class FakeConnection:
    def __init__(self) -> None:
        self.closes = 0

    def close_idle(self) -> bool:
        self.closes += 1
        return self.closes == 1


def tunnel_with(*streams: FakeStream) -> "tuple[LiveTunnel, list]":
    tunnel = LiveTunnel(client="c", name="t", spec=TcpSpec(local_port=1), session=None, address=PublicAddress.tcp(1))
    connections = []
    for stream in streams:
        connection = FakeConnection()
        tunnel.streams[stream] = connection  # type: ignore[index]
        connections.append(connection)
    return tunnel, connections


def test_only_connections_quiet_for_the_whole_timeout_are_closed() -> None:
    quiet, busy, reading = FakeStream(), FakeStream(), FakeStream()
    tunnel, (c_quiet, c_busy, c_reading) = tunnel_with(quiet, busy, reading)
    assert tunnel.close_idle(0.0, 10.0) == 0  # first look: remembers where each stands
    busy.bytes_out += 100  # the public user sends
    assert tunnel.close_idle(6.0, 10.0) == 0
    reading.bytes_in += 5  # the service answers
    busy.bytes_out += 1
    assert tunnel.close_idle(10.0, 10.0) == 1
    assert (c_quiet.closes, c_busy.closes, c_reading.closes) == (1, 0, 0)
    # Closing takes a moment; a connection on its way out is not counted twice.
    assert tunnel.close_idle(12.0, 10.0) == 0
    assert tunnel.close_idle(20.0, 10.0) == 2
    assert (c_busy.closes, c_reading.closes) == (1, 1)


def test_connection_limits_and_idle_timeout_settings() -> None:
    config = parse_server_config({"maxConnectionsPerClient": 64, "tunnelIdleTimeout": 0}).config
    assert (config.limits.max_connections_per_client, config.limits.tunnel_idle_timeout) == (64, 0.0)
    defaults = ServerConfig()
    assert (defaults.limits.max_connections_per_client, defaults.limits.tunnel_idle_timeout) == (10000, 600.0)
    with pytest.raises(ConfigError, match=r"'maxConnectionsPerClient' must be an integer from 1 to 10000"):
        parse_server_config({"maxConnectionsPerClient": 10001})
    with pytest.raises(ConfigError, match=r"'tunnelIdleTimeout' must be a number of seconds of at least 0"):
        parse_server_config({"tunnelIdleTimeout": -1})
