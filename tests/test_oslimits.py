"""
Tests for gotaxy.oslimits: listen backlogs and file-descriptor limits.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactor

from gotaxy.oslimits import LISTEN_BACKLOG, backlog_warning, listen_backlog, tcp_server_endpoint


def somaxconn_file(tmp_path, value: str):
    path = tmp_path / "somaxconn"
    path.write_text(value)
    return str(path)


def test_backlog_is_ours_unless_the_kernel_caps_it_lower(tmp_path) -> None:
    assert listen_backlog(somaxconn_file(tmp_path, "65535\n")) == LISTEN_BACKLOG
    assert listen_backlog(somaxconn_file(tmp_path, "128\n")) == 128
    assert listen_backlog(str(tmp_path / "missing")) == LISTEN_BACKLOG
    assert LISTEN_BACKLOG >= 1024


def test_a_low_somaxconn_is_reported_with_the_sysctl(tmp_path) -> None:
    assert backlog_warning(somaxconn_file(tmp_path, "4096")) is None
    assert backlog_warning(str(tmp_path / "missing")) is None
    warning = backlog_warning(somaxconn_file(tmp_path, "128"))
    assert warning is not None
    assert "net.core.somaxconn is 128" in warning
    assert "sysctl -w net.core.somaxconn=4096 net.ipv4.tcp_max_syn_backlog=4096" in warning


def test_endpoints_listen_with_the_backlog_on_ipv4_and_ipv6() -> None:
    from twisted.internet.protocol import Factory

    reactor = MemoryReactor()
    for interface in ("127.0.0.1", "::1"):
        tcp_server_endpoint(reactor, 7000, interface).listen(Factory())
    assert [(port[0], port[2], port[3]) for port in reactor.tcpServers] == [
        (7000, listen_backlog(), "127.0.0.1"),
        (7000, listen_backlog(), "::1"),
    ]
