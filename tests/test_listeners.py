"""
Where the server's listeners listen (``gotaxy.listeners``): endpoint strings,
made from frp's address and port keys when no endpoint is set, and the one
sentence a bad one gets.  In memory; socket activation end to end is in
``test_e2e_listeners``.
"""

from __future__ import annotations

import pytest
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from gotaxy.config import ConfigError, ServerConfig, WebSettings
from gotaxy.listeners import CONSOLE, CONTROL, WEB, Listener, endpoint_port, listen_at
from gotaxy.oslimits import listen_backlog
from gotaxy.ports import server_ports
from gotaxy.process import StartError


def test_address_and_port_become_a_tcp_endpoint_string() -> None:
    at = listen_at(CONTROL, None, "0.0.0.0", 7000)
    assert (at.description, at.explicit, at.shown) == (
        f"tcp:7000:interface=0.0.0.0:backlog={listen_backlog()}", False, "0.0.0.0:7000")
    at = listen_at(CONTROL, None, "::", 7000)
    assert (at.description, at.shown) == (f"tcp:7000:interface=\\:\\::backlog={listen_backlog()}", "[::]:7000")
    # Port 0 turns the panel and console off, unless an endpoint is set.
    assert listen_at(WEB, None, "127.0.0.1", 0) is None
    assert listen_at(CONSOLE, "tcp:2222", "127.0.0.1", 0).description == "tcp:2222"
    explicit = listen_at(CONTROL, "systemd:domain=INET6:name=control", "0.0.0.0", 7000)
    assert (explicit.description, explicit.explicit) == ("systemd:domain=INET6:name=control", True)


def test_a_derived_endpoint_listens_where_the_flags_say() -> None:
    reactor = MemoryReactor()
    listener = Listener(reactor, listen_at(CONTROL, None, "::1", 7443), Factory(), CONTROL)
    listener.startService()
    assert [(p[0], p[2], p[3]) for p in reactor.tcpServers] == [(7443, listen_backlog(), "::1")]


def test_a_bad_endpoint_string_is_one_sentence_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as e:
        ServerConfig(bind_endpoint="http:80")
    assert str(e.value).startswith("'bindEndpoint' (--bind-endpoint) must be a Twisted endpoint string")
    listener = Listener(MemoryReactor(), listen_at(WEB, "tcp:notaport", "127.0.0.1", 7500), Factory(), WEB)
    with pytest.raises(StartError) as caught:
        listener.startService()
    assert str(caught.value).startswith("webServer.endpoint or --web-endpoint 'tcp:notaport' is not an endpoint")
    assert "write it like tcp:7000:interface=0.0.0.0" in str(caught.value)


def test_a_systemd_socket_that_was_not_passed_is_named(monkeypatch) -> None:
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    at = listen_at(CONSOLE, "systemd:domain=INET:name=console", "127.0.0.1", 7022)
    with pytest.raises(StartError) as caught:
        Listener(MemoryReactor(), at, Factory(), CONSOLE).startService()
    assert "console.endpoint" in str(caught.value)
    assert "systemd passed no such socket" in str(caught.value)


def test_the_port_of_an_endpoint_string_is_never_a_tunnels() -> None:
    assert [endpoint_port(d) for d in ("tcp:7443", "tcp6:port=80:interface=\\:\\:", "ssl:443:privateKey=k",
                                       "systemd:domain=INET:index=0", "unix:/run/g.sock")] == [7443, 80, 443, None, None]
    own = server_ports(ServerConfig(bind_endpoint="tcp:7443:interface=0.0.0.0", web=WebSettings(endpoint="systemd:domain=INET:index=0")))
    assert own == {7443: "control port (tcp:7443:interface=0.0.0.0)", 7022: "SSH console port (console.port)"}
