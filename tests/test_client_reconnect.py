"""
``gotaxy.client.reconnect.Reconnection``: the delay before the next attempt
and the one line that says why, on a fake clock (end to end in
``test_e2e_startup``, ``test_e2e_lifecycle`` and ``test_e2e_restart``).
"""

from __future__ import annotations

import itertools

import pytest
from typing import List

from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher, formatEvent
from twisted.python.failure import Failure

from gotaxy.client.control import LOGIN_TIMEOUT, ClientControlFactory
from gotaxy.client.reconnect import (
    FAST_CAP,
    FAST_FIRST,
    FAST_WINDOW,
    RECONNECT_CAP,
    SLOW_FIRST,
    STABLE_SESSION,
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


def _reconnection(address: str = "example.org:7000", rng: float = 1.0) -> "tuple[Reconnection, Clock]":
    clock = Clock()
    return Reconnection(address, clock, rng=lambda: rng), clock


def _refused(retry: Reconnection) -> float:
    retry.failed(Failure(error.ConnectionRefusedError()))
    return retry(1)


def _session(retry: Reconnection, clock: Clock, seconds: float = STABLE_SESSION) -> None:
    retry.logged_in()
    clock.advance(seconds)
    retry.session_ended()


def test_a_server_that_is_not_listening_is_tried_again_soon_then_less_and_less_often():
    retry, clock = _reconnection()
    delays = []
    while clock.seconds() < 120:
        delays.append(_refused(retry))
        clock.advance(delays[-1])
    # Within the window after the start: 0.1 s doubling, but never more than a quarter second...
    assert delays[:4] == [FAST_FIRST, 0.2, FAST_CAP, FAST_CAP]
    started = list(itertools.accumulate([0.0] + delays))
    in_window = [d for d, at in zip(delays, started) if at < FAST_WINDOW]
    assert max(in_window) == FAST_CAP
    # ...then doubling on to the cap, never beyond it.
    assert delays[len(in_window):][:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == delays[-1] == RECONNECT_CAP


def test_jitter_spreads_each_delay_over_half_to_all_of_it():
    lowest, _ = _reconnection(rng=0.0)
    assert [_refused(lowest) for _ in range(3)] == [FAST_FIRST / 2, 0.1, FAST_CAP / 2]


def test_a_refused_token_backs_off_from_two_seconds_even_in_the_window():
    retry, clock = _reconnection()
    delays = []
    for _ in range(7):
        retry.refused("invalid, expired or revoked token")
        delays.append(retry(1))  # ClientService says 1 each time: it counts a TCP connection as success
        clock.advance(0.01)  # a bad token is refused at once: still well within the window
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    # A log-in that is dropped at once (the token revoked right after, a kick) resets nothing.
    retry.logged_in()
    retry.session_ended()
    retry.refused("invalid, expired or revoked token")
    assert retry(1) == RECONNECT_CAP


def test_tls_failures_timeouts_and_turned_away_log_ins_back_off_slowly_too():
    retry, _ = _reconnection()
    retry.failed(Failure(SSL.Error([("SSL routines", "", "wrong version number")])))
    assert retry(1) == SLOW_FIRST
    retry.failed(Failure(LoginTimeout()))
    assert retry(1) == 2 * SLOW_FIRST
    retry.failed(Failure(error.ConnectionDone()))  # closed before the log-in: too many waiting to log in
    assert retry(1) == 4 * SLOW_FIRST
    # A refused connection after those does not bring the wait down.
    assert _refused(retry) == 8 * SLOW_FIRST


def test_a_session_that_lasted_starts_the_schedule_again():
    retry, clock = _reconnection()
    for _ in range(12):
        _refused(retry)
        clock.advance(5)
    assert retry.level > 1
    _session(retry, clock)
    assert retry(1) == FAST_FIRST  # the lost connection: tried again at once
    assert _refused(retry) == 0.2  # and a server that is restarting: soon, again and again
    assert max(_refused(retry) for _ in range(20)) == FAST_CAP


def test_sessions_that_do_not_last_keep_the_back_off_growing():
    retry, clock = _reconnection()
    clock.advance(FAST_WINDOW)
    delays = []
    for _ in range(6):
        _session(retry, clock, STABLE_SESSION - 1)  # logged in, dropped a moment later
        delays.append(retry(1))
        clock.advance(FAST_WINDOW)
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]


def test_a_goodbye_brings_the_client_back_within_the_time_the_server_asked_for():
    retry, clock = _reconnection(rng=0.5)
    for _ in range(12):
        _refused(retry)
        clock.advance(5)
    retry.logged_in()
    clock.advance(1)  # a short session: here only the goodbye resets the back-off
    retry.told_to_reconnect("server shutting down", 0.3)
    retry.session_ended()
    assert retry(1) == 0.15  # a random moment within the 0.3 s
    # Not counted as a failure; the restarting server is then tried every quarter second at most.
    assert [_refused(retry) for _ in range(4)] == pytest.approx([0.075, 0.15, 0.1875, 0.1875])


def test_what_the_client_says_while_it_reconnects():
    events, stop = _capture()
    try:
        retry, clock = _reconnection("127.0.0.1:7999", rng=1.0)
        _session(retry, clock, 60)
        retry.level = 8.0  # some failures before; the goodbye forgets them
        retry.told_to_reconnect("server shutting down", 0.1)
        retry.session_ended()
        retry(1)
        while clock.seconds() < 60 + FAST_WINDOW + 1:  # the server takes a while: two lines, not forty-three
            clock.advance(_refused(retry))
        retry.refused("invalid, expired or revoked token", "check the token (auth.token / --token)")
        retry(1)
        _session(retry, clock)
        retry(1)  # a logged-in connection was lost: no reason to give
    finally:
        stop()
    lines = _lines(events)
    assert lines[-5:] == [
        "the server said goodbye (server shutting down) and asked us to reconnect; "
        "reconnecting to 127.0.0.1:7999 in 0.1 s",
        "cannot reach 127.0.0.1:7999: connection refused; retrying in 0.1 s",
        "cannot reach 127.0.0.1:7999: connection refused; retrying in 1 s (42 attempts since the last line)",
        "the server refused our login: invalid, expired or revoked token; retrying in 2 s; "
        "check the token (auth.token / --token)",
        "reconnecting to 127.0.0.1:7999 in 0.1 s",
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
    reconnection = Reconnection("127.0.0.1:7000", clock, rng=lambda: 0.0)
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
    assert f"cannot reach 127.0.0.1:7000: timed out; retrying in {SLOW_FIRST / 2:.0f} s" in _lines(events)
