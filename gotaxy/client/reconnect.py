# -*- test-case-name: tests.test_client_reconnect -*-
"""
When the client tries its server again, and the one line that says why.

``ClientService`` asks ``Reconnection`` (its retry policy) for a delay
after every connection that ended or failed.  The schedule keeps one
*level*, the delay before jitter, which only failures raise:

* **Goodbye.**  A server that stops cleanly (SIGTERM, twistd's shutdown)
  sends ``goodbye`` with ``reconnectWithin``, a few tenths of a second
  (more when it had many clients).  The next attempt comes at a random
  moment within that time, not counted as a failure, and the level starts
  again from nothing: the server asked for this.
* **Nothing listening** (connection refused: a server restarting, or killed
  and not back yet) or **a connection lost**: 0.1 s, doubling per failure
  in a row.  For ``FAST_WINDOW`` seconds after the last session ended (or
  the client started) the level stays at most ``FAST_CAP``, so a server
  that is back after a second finds its clients within a quarter of one;
  after that it doubles on up to ``RECONNECT_CAP``.
* **A failure a quick retry cannot fix** (log-in refused, TLS failure, no
  answer within the timeout, the server closing the connection before the
  log-in, as it does when too many are waiting to log in): 2 s, doubling to
  ``RECONNECT_CAP``, in or out of the window.  A bad token is never tried
  more than the slow schedule allows.
* **A session that lasted** ``STABLE_SESSION`` seconds resets the level when
  it ends; a shorter one does not, so a server that lets the client log in
  and drops it at once is backed off like one that refuses it.

Every delay is the level times 50-100 % (``rng``), so that a thousand
clients cut off at once do not come back in step.  Lines repeat only when
they say something new: a failure the same as the last one, retried within
a second, is counted, and the next line that is shown says how many
attempts were made.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional

from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gotaxy.logs import gotaxy_observer

#: The longest wait between two attempts, in seconds.
RECONNECT_CAP = 30.0
#: The first wait after a connection refused or lost (before jitter).
FAST_FIRST = 0.1
#: The longest wait within ``FAST_WINDOW`` of the last session's end.
FAST_CAP = 0.25
#: Seconds after a session ended (or the client started) in which a server
#: that does not listen is tried again every ``FAST_CAP`` at most: longer
#: than a server takes to start (about 1 s, docs/benchmarks.md).
FAST_WINDOW = 10.0
#: The first wait after a failure a quick retry cannot fix (before jitter).
SLOW_FIRST = 2.0
#: A session that lasted this many seconds resets the back-off when it ends.
STABLE_SESSION = 5.0
#: Longest ``reconnectWithin`` a server's goodbye may ask for.
MAX_GOODBYE_SPREAD = 60.0
#: Repeated failures retried sooner than this are counted, not each logged.
QUIET_BELOW = 1.0


class LoginTimeout(Exception):
    """No ``login_ok`` within ``LOGIN_TIMEOUT``."""


def _tls_reason(failure: Failure) -> str:
    # pyOpenSSL's errors are a list of (library, function, reason) triples.
    parts = [str(item[-1]) for item in (failure.value.args[0] if failure.value.args else []) if item]
    return "; ".join(p for p in parts if p) or failure.getErrorMessage()


def describe_connect_failure(failure: Failure) -> str:
    """Why a connection to the server failed, in a few words a user can act on."""
    if failure.check(net_error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(net_error.DNSLookupError):
        return "name not resolved"
    if failure.check(net_error.TimeoutError, net_error.UserError, CancelledError, LoginTimeout):
        # HostnameEndpoint's timeout cancels the attempt; UserError is how a
        # cancelled connectTCP reports itself.
        return "timed out"
    if failure.check(SSL.Error):
        return f"TLS failure ({_tls_reason(failure)}); is this the server's control port (bindPort)?"
    if failure.check(net_error.ConnectionDone, net_error.ConnectionLost):
        return "the server closed the connection before the log-in"
    return failure.getErrorMessage()


def _when(delay: float) -> str:
    if delay >= 1:
        return f"{delay:.0f} s"
    return f"{delay:.1f} s" if delay >= 0.1 else f"{delay:.2f} s"


class Reconnection:
    """
    ``ClientService``'s retry policy: the delay before the next attempt, and
    the one line that says why there is one (module docstring: the schedule).

    ``ClientService`` counts a connection that was made as a success, so a
    server that accepts the TCP connection and then refuses the token (with
    ``loginFailExit = false``) or fails the TLS handshake would be retried
    every second forever.  Here only a session that lasted, or a server's
    goodbye, starts the schedule again.

    The connection side reports what happened (``failed``, ``refused``,
    ``logged_in``, ``told_to_reconnect``, ``session_ended``); ``__call__``
    (the policy) chooses the delay and logs it.
    """

    log = Logger(observer=gotaxy_observer, namespace="gotaxy.client")

    def __init__(self, address: str, clock: Any, rng: Callable[[], float] = random.random) -> None:
        self.address = address
        self.clock = clock
        self.rng = rng
        #: The wait before jitter that the next failure doubles; 0 when nothing failed since the last reset.
        self.level = 0.0
        #: When the fast window began: the start, the last lasting session's end, a goodbye.
        self.since = clock.seconds()
        self._why: Optional[str] = None
        self._slow = False
        self._refused: Optional[str] = None
        self._hint = ""
        self._repeated = False
        self._session_start: Optional[float] = None
        #: A goodbye's (reason, reconnectWithin) for the next delay.
        self._goodbye: Optional["tuple[str, float]"] = None
        self._last_line: Optional[str] = None
        self._quiet = 0

    # -- what the connection side reports ------------------------------------

    def failed(self, failure: Failure) -> None:
        """A connection attempt failed, or closed before its log-in (the first reason counts)."""
        if self._refused is None and self._why is None:
            self._why = describe_connect_failure(failure)
            # Only "nothing listens there" is worth trying again soon.
            self._slow = not failure.check(net_error.ConnectionRefusedError)

    def refused(self, reason: str, hint: str = "", repeated: bool = False) -> None:
        """The server refused the log-in (and ``loginFailExit`` is off); ``repeated``: as last time."""
        self._refused = reason
        self._hint = hint
        self._repeated = repeated

    def logged_in(self) -> None:
        self._why = self._refused = None
        self._session_start = self.clock.seconds()
        self._last_line = None
        self._quiet = 0

    def told_to_reconnect(self, reason: str, within: float) -> None:
        """The server is stopping and asks us to come back within ``within`` seconds (its ``goodbye``)."""
        self._goodbye = (reason, within)

    def session_ended(self) -> None:
        """The logged-in connection is gone; a lasting one (or a goodbye) starts the schedule again."""
        start, self._session_start = self._session_start, None
        now = self.clock.seconds()
        if self._goodbye is not None or (start is not None and now - start >= STABLE_SESSION):
            self.level = 0.0
            self.since = now

    # -- the policy ------------------------------------------------------------

    def next_level(self, slow: bool) -> float:
        """The level after one more failure (``slow``: one a quick retry cannot fix)."""
        level = self.level
        if slow:
            return min(RECONNECT_CAP, max(SLOW_FIRST, level * 2))
        doubled = min(RECONNECT_CAP, max(FAST_FIRST, level * 2))
        if self.clock.seconds() - self.since < FAST_WINDOW and level <= FAST_CAP:
            return min(FAST_CAP, doubled)
        return doubled

    def __call__(self, attempt: int) -> float:
        # ``attempt`` is ClientService's count, which restarts at every TCP
        # connection; the level restarts only as the module docstring says.
        if self._goodbye is not None:
            reason, within = self._goodbye
            self._goodbye = None
            self._why = self._refused = None
            delay = within * self.rng()
            self.log.info(
                "the server said goodbye ({reason}) and asked us to reconnect; reconnecting to {address} in {when}",
                reason=reason, address=self.address, when=_when(delay),
            )
            return delay
        slow = self._refused is not None or (self._why is not None and self._slow)
        self.level = self.next_level(slow)
        delay = self.level * (0.5 + self.rng() / 2)
        self._report(delay)
        self._why = self._refused = None
        return delay

    def _report(self, delay: float) -> None:
        when = _when(delay)
        if self._refused is not None and self._repeated:
            self.log.warn("log-in refused again, for the same reason; retrying in {when}", when=when)
            return
        if self._refused is not None:
            self.log.error(
                "the server refused our login: {reason}; retrying in {when}{hint}",
                reason=self._refused, when=when, hint=f"; {self._hint}" if self._hint else "",
            )
            return
        line = self._why
        if line is not None and line == self._last_line and delay < QUIET_BELOW:
            self._quiet += 1  # said a moment ago; the next line shown counts it
            return
        attempts = f" ({self._quiet + 1} attempts since the last line)" if self._quiet else ""
        self._last_line, self._quiet = line, 0
        if line is not None:
            self.log.warn("cannot reach {address}: {why}; retrying in {when}{attempts}",
                          address=self.address, why=line, when=when, attempts=attempts)
        else:
            self.log.info("reconnecting to {address} in {when}", address=self.address, when=when)


class ReportingEndpoint:
    """Wraps the server's endpoint so that a failed connect reaches ``Reconnection``."""

    def __init__(self, endpoint: Any, reconnection: Reconnection) -> None:
        self.endpoint = endpoint
        self.reconnection = reconnection

    def connect(self, factory: Any) -> Deferred:
        def failed(failure: Failure) -> Failure:
            self.reconnection.failed(failure)
            return failure

        return self.endpoint.connect(factory).addErrback(failed)  # type: ignore[no-any-return]
