"""
Tests for gotaxy.oslimits: listen backlogs and file-descriptor limits.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactor

from gotaxy.oslimits import LISTEN_BACKLOG, backlog_warning, listen_backlog


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
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory

    from gotaxy.listeners import CONTROL, listen_at

    reactor = MemoryReactor()
    for interface in ("127.0.0.1", "::1"):
        at = listen_at(CONTROL, None, interface, 7000)
        serverFromString(reactor, at.description).listen(Factory())
    assert [(port[0], port[2], port[3]) for port in reactor.tcpServers] == [
        (7000, listen_backlog(), "127.0.0.1"),
        (7000, listen_backlog(), "::1"),
    ]


def test_descriptor_exhaustion_is_recognised_in_every_shape_twisted_gives_it() -> None:
    import errno
    import socket

    from twisted.internet.error import CannotListenError, ConnectBindError, ConnectionRefusedError

    from gotaxy.oslimits import is_fd_exhaustion

    assert is_fd_exhaustion(ConnectBindError(errno.EMFILE, "Too many open files"))
    assert is_fd_exhaustion(OSError(errno.ENFILE, "Too many open files in system"))
    assert is_fd_exhaustion(CannotListenError("", 7000, OSError(errno.EMFILE, "Too many open files")))
    assert not is_fd_exhaustion(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert not is_fd_exhaustion(CannotListenError("", 7000, OSError(errno.EADDRINUSE, "in use")))
    assert not is_fd_exhaustion(socket.timeout())


def test_descriptor_exhaustion_message_names_the_limit_and_the_fix() -> None:
    from gotaxy.oslimits import fd_exhaustion

    assert fd_exhaustion(1024) == "out of file descriptors (limit 1024): raise LimitNOFILE / ulimit -n"


def test_soft_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from gotaxy.oslimits import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        limit, message = raise_fd_limit()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if hard == resource.RLIM_INFINITY:
            assert limit == now and now > lowered
        else:
            assert limit == now == hard
            if hard > lowered:
                assert message.startswith(f"file descriptor limit raised from {lowered} to {hard}")
        # Once at the hard limit, a second call only reports it.
        assert raise_fd_limit()[1].startswith(f"file descriptor limit: {now} (already the hard limit)")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_limit_too_low_for_the_configured_streams_is_said_with_the_number_needed() -> None:
    from gotaxy.oslimits import FD_HEADROOM, streams_fd_warning

    what = "maxConnectionsPerClient = 10000 (public connections of one client)"
    assert streams_fd_warning(20000, 10000, what) is None
    assert streams_fd_warning(None, 10000, what) is None  # no limit at all
    assert streams_fd_warning(10000 + FD_HEADROOM, 10000, what) is None
    assert streams_fd_warning(4096, 10000, what) == (
        f"file descriptor limit 4096 is below the {10000 + FD_HEADROOM} that {what} needs (one descriptor per "
        f"tunneled connection, 10000, and {FD_HEADROOM} besides): connections past about {4096 - FD_HEADROOM} "
        f"will fail; raise LimitNOFILE (systemd) or ulimit -Hn to {10000 + FD_HEADROOM} or more"
    )


def test_throttle_reports_once_per_interval_with_the_count() -> None:
    from twisted.internet.task import Clock

    from gotaxy.logs import Throttle

    clock = Clock()
    throttle = Throttle(clock, 10.0)
    assert throttle("a") == 1
    assert [throttle("a") for _ in range(5)] == [None] * 5
    assert throttle("b") == 1  # keys are independent
    clock.advance(9.9)
    assert throttle("a") is None
    clock.advance(0.1)
    assert throttle("a") == 7  # this one and the six held back
    clock.advance(10)
    assert throttle("a") == 1


def test_throttle_forgets_quiet_keys_so_it_stays_small() -> None:
    from twisted.internet.task import Clock

    from gotaxy.logs import Throttle

    clock = Clock()
    throttle = Throttle(clock, 1.0)
    for n in range(Throttle.MAX_KEYS):
        throttle(n)
    clock.advance(2)
    throttle("new")
    assert len(throttle._last) == 1


def test_accept_exhaustion_replaces_twisteds_lines_and_passes_the_rest_on() -> None:
    from twisted.logger import Logger

    from gotaxy.oslimits import watch_accepts

    forwarded: list = []
    reports: list = []

    class Port:
        _logger = Logger(namespace="twisted.internet.tcp.Port", observer=forwarded.append)

    port = Port()
    namespace = port._logger.namespace
    watch_accepts(port, lambda: reports.append(1))
    log = port._logger
    log.info("EMFILE encountered; releasing reserved file descriptor.")
    log.info("EMFILE recovery: Closed socket from {address}", address=("127.0.0.1", 5))
    log.info("Re-reserving EMFILE recovery file descriptor.")
    log.info("Could not accept new connection ({acceptError})", acceptError="ENFILE")
    log.info("Could not accept new connection ({acceptError})", acceptError="ENOBUFS")
    log.info("something else")
    assert reports == [1, 1]
    assert [e["log_format"] for e in forwarded] == ["Could not accept new connection ({acceptError})", "something else"]
    assert log.namespace == namespace


def test_ports_without_twisteds_accept_logger_are_left_alone() -> None:
    from gotaxy.oslimits import watch_accepts

    class Fake:
        pass

    fake = Fake()
    watch_accepts(fake, lambda: None)
    assert not hasattr(fake, "_logger")
