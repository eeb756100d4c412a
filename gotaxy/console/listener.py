# -*- test-case-name: tests.test_console_service -*-
"""
The console's listener, and the SSH server behind it made at its first
connection.

The port binds at start like every other listener (a busy port still ends
the start: ``gotaxy.listeners``), but the SSH server (``gotaxy.console.service``:
Conch, the host key, the log-in checkers, the sessions) is made by
``ConsoleSSHFactory`` when the first connection comes.  Conch, with bcrypt
and twisted.spread that it imports, was about a tenth of a server's CPU
before its control port listened (py-spy, issue 15 goal 4) and 3 MiB of an
idle server that nobody logs in to; a client reconnecting after a restart
needs none of it, and an operator's ``ssh`` waits the tenth of a second
once.  The host key is made (first start) at that first connection too.

This module imports no Conch, so the server can import it at start.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

import attrs
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gotaxy.listeners import CONSOLE, Listener, listen_at
from gotaxy.logs import gotaxy_observer

if TYPE_CHECKING:
    from gotaxy.console.service import ConsoleFactory
    from gotaxy.server.manage import Management
    from gotaxy.server.operators import OperatorAuth
    from gotaxy.web.auth import PanelAuth

log = Logger(observer=gotaxy_observer, namespace="gotaxy.console")


@attrs.frozen
class ConsoleAccess:
    """What the console needs of the server, and no more."""

    #: What operators may see and do (the same as the panel).
    management: "Management"
    #: Operators' passwords and lock-outs (shared with the panel).
    operators: "OperatorAuth"
    #: The second factor (TOTP): the panel's own, so wrong codes count together.
    second_factor: "PanelAuth"
    #: The ``python`` prompt's objects (for the admin, with console.python on).
    namespace: Callable[[], Dict[str, Any]]


class ConsoleSSHFactory(ServerFactory):
    """
    The console's factory as the listener holds it: the SSH server's
    ``ConsoleFactory`` is made by ``build`` at the first ``buildProtocol``
    (module docstring: why), started if the listener is, and then does
    everything; until then there is nothing to ``cut``.
    """

    noisy = False

    def __init__(self, build: Callable[[], "ConsoleFactory"]) -> None:
        self._build = build
        self._made: "Optional[ConsoleFactory]" = None
        self._started = False
        self._on_refused: Callable[[str], None] = lambda host: None

    @property
    def made(self) -> bool:
        return self._made is not None

    @property
    def ssh(self) -> "ConsoleFactory":
        """The SSH server's factory, made now if it was not yet."""
        if self._made is None:
            made = self._build()
            made.on_refused = self._on_refused
            self._made = made
            if self._started:
                made.doStart()
        return self._made

    @property
    def on_refused(self) -> Callable[[str], None]:
        """Called with the address of each connection refused as a flood (the server counts it towards a ban)."""
        return self._on_refused

    @on_refused.setter
    def on_refused(self, hook: Callable[[str], None]) -> None:
        self._on_refused = hook
        if self._made is not None:
            self._made.on_refused = hook

    def startFactory(self) -> None:
        self._started = True
        if self._made is not None:
            self._made.doStart()

    def stopFactory(self) -> None:
        self._started = False
        if self._made is not None:
            self._made.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        return self.ssh.buildProtocol(addr)

    def cut(self, banned: str, under: Callable[[str], bool]) -> int:
        """Close the connections from under a new ban of ``banned`` (none before the first connection)."""
        return self._made.cut(banned, under) if self._made is not None else 0


class ConsoleService(Listener):
    """
    Listens for console connections.  Like the other listeners, a port it
    cannot bind stops the server's start (``gotaxy.listeners``).
    """

    def __init__(self, reactor: Any, at: Any, factory_: Any) -> None:
        super().__init__(reactor, at, factory_, CONSOLE, on_listening=self._listening)

    def _listening(self, port: Any) -> None:
        log.info("SSH operator console listening on {where}", where=self.bound())


def make_console_service(config: Any, data_dir: str, access: ConsoleAccess, reactor: Any) -> Optional[ConsoleService]:
    """
    The console service for ``config`` on ``console.addr:port`` or the
    endpoint string ``console.endpoint``, or None when ``console.port`` is 0
    and no endpoint is set.
    """
    at = listen_at(CONSOLE, config.console.endpoint, config.console.addr, config.console.port)
    if at is None:
        return None
    python = bool(config.console.python)
    idle_timeout = config.console.idle_timeout

    def build() -> "ConsoleFactory":
        from gotaxy.console.service import make_console_factory

        return make_console_factory(data_dir, access, reactor, python, idle_timeout)

    return ConsoleService(reactor, at, ConsoleSSHFactory(build))
