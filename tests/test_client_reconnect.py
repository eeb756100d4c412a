"""
``gotaxy.client.control.Reconnection``: the delay before the next attempt
and the one line that says why (end to end in ``test_e2e_startup``).
"""

from __future__ import annotations

from typing import List

from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher, formatEvent
from twisted.python.failure import Failure

from gotaxy.client.control import (
    LOGIN_TIMEOUT,
    ClientControlFactory,
    LoginTimeout,
    Reconnection,
    describe_connect_failure,
)
from gotaxy.config import ClientConfig


def _lines(test_events: List[dict]) -> List[str]:
    return [formatEvent(e) for e in test_events if e.get("log_level", LogLevel.info) >= LogLevel.info]


def _capture() -> "tuple[List[dict], callable]":
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    return events, lambda: globalLogPublisher.removeObserver(events.append)


def test_every_failure_backs_off_until_a_log_in_succeeds():
    retry = Reconnection("example.org:7000", rng=lambda: 1.0)
    delays = []
    for _ in range(7):
        retry.refused("invalid, expired or revoked token")
        delays.append(retry(1))  # ClientService says 1 each time: it counts a TCP connection as success
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    retry.logged_in()
    assert retry(1) == 2.0


def test_the_line_names_the_address_the_reason_and_the_delay():
    events, stop = _capture()
    try:
        retry = Reconnection("127.0.0.1:7999", rng=lambda: 0.0)
        retry.failed(Failure(error.ConnectionRefusedError()))
        retry(1)
        retry.refused("invalid, expired or revoked token", "check the token (auth.token / --token)")
        retry(1)
        retry(1)  # a logged-in connection was lost: no reason to give
    finally:
        stop()
    assert _lines(events)[-3:] == [
        "cannot reach 127.0.0.1:7999: connection refused; retrying in 1 s",
        "the server refused our login: invalid, expired or revoked token; retrying in 2 s; "
        "check the token (auth.token / --token)",
        "reconnecting to 127.0.0.1:7999 in 4 s",
    ]


def test_reasons_in_a_few_words():
    assert describe_connect_failure(Failure(error.DNSLookupError("x"))) == "name not resolved"
    assert describe_connect_failure(Failure(error.TimeoutError())) == "timed out"
    assert describe_connect_failure(Failure(LoginTimeout())) == "timed out"
    assert describe_connect_failure(Failure(error.ConnectionDone())) == (
        "the server closed the connection before the log-in"
    )


def test_a_server_that_never_answers_is_dropped_after_the_login_timeout():
    clock = MemoryReactorClock()
    reconnection = Reconnection("127.0.0.1:7000", rng=lambda: 0.0)
    factory = ClientControlFactory(ClientConfig(token="t"), None, clock, lambda message: None, reconnection=reconnection)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    clock.advance(LOGIN_TIMEOUT - 1)
    assert not transport.disconnecting
    events, stop = _capture()
    try:
        clock.advance(1)
        assert transport.disconnecting  # aborted
        protocol.connectionLost(Failure(error.ConnectionAborted()))
        reconnection(1)
    finally:
        stop()
    assert "cannot reach 127.0.0.1:7000: timed out; retrying in 1 s" in _lines(events)
