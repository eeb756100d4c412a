# -*- test-case-name: tests.test_server_tap -*-
"""
Ending the twistd process with a status code.

twistd always exits 0 after the reactor stops; a client whose token is
refused must exit non-zero so that systemd, Docker and scripts see the
failure (retrying cannot fix it).  ``exit_with`` stops the reactor and
registers an exit hook that ends the process with ``code`` once twistd has
finished its own shutdown.

``SignalReload`` is the other process-wide thing both programs share:
``SIGHUP`` asks for a reload.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Any, List, NoReturn, Optional, Tuple, Type

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.python import usage


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def exit_with(reactor: Any, code: int) -> None:
    atexit.register(_exit_now, code)
    if reactor.running:
        reactor.stop()


#: Exit status of a start that cannot succeed as configured (a busy port, a
#: data directory in use by another server).
EXIT_START_FAILED = 1
#: Exit status of a wrong option or config file.
EXIT_USAGE = 2


class StartError(Exception):
    """The process cannot start; the text says why and what to do, in one sentence."""


def exit_with_message(program: str, message: str, code: int) -> NoReturn:
    """
    End the process before the reactor runs: one line on stderr, then
    ``code``.  Used under twistd only, for errors found while it parses the
    options or builds the service (its logger is not running yet, and its
    own handling would print the whole usage text or a traceback first).
    """
    print(f"{program}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class TwistdOptions(usage.Options):
    """
    Options of a twistd plugin: under twistd a wrong option is one line and
    ``EXIT_USAGE``, not twistd's whole usage text in front of the error.
    Subclasses set ``program``.
    """

    program = "gotaxy"

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:  # parsed directly (tests, other programs): theirs to handle
                raise
            exit_with_message(self.program, f"{e} (twistd {self.program} --help lists the options)", EXIT_USAGE)


class SignalReload(Service):
    """
    ``SIGHUP`` reloads, as ``kill -HUP`` and ``systemctl reload`` expect; the
    old handler is put back at stop.  ``reloader`` is the server's
    ``ConfigReloader`` or the client's ``ClientReloader``: an async
    ``reload(who)`` and a ``log``; ``expected`` are the failures it has
    already logged (a wrong file), anything else is logged here.
    """

    def __init__(self, reloader: Any, reactor: Any, expected: Tuple[Type[BaseException], ...]) -> None:
        self.reloader = reloader
        self.reactor = reactor
        self.expected = expected
        self._previous: Any = None
        #: The reload in progress or last done (tests wait on it).
        self.last: Optional[Deferred] = None

    def startService(self) -> None:
        super().startService()
        if hasattr(signal, "SIGHUP"):
            self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> None:
        super().stopService()
        if hasattr(signal, "SIGHUP") and self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _hangup(self, signum: int, frame: Any) -> None:
        # A signal handler runs between two bytecodes of whatever the reactor
        # thread was doing: only schedule the reload.
        self.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        self.last = Deferred.fromCoroutine(self.reloader.reload("SIGHUP"))
        self.last.addErrback(lambda f: f.trap(*self.expected))
        self.last.addErrback(lambda f: self.reloader.log.failure("reloading on SIGHUP failed", f))
