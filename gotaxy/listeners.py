# -*- test-case-name: tests.test_e2e_startup -*-
"""
The server's listening ports (control, web panel, SSH console) and what a
failure to bind one says.

A ``Listener`` binds in ``privilegedStartService``, which twistd calls for
every service before any ``startService``, so a busy port is found before
the server does anything else.  The failure is a ``StartError`` whose text
names the setting, the address and the fix in one sentence; the server's top
service turns it into one log line and exit status 1 (see
``gotaxy.server.tap.ServerService``).  The rule is the same for all three
listeners: a server that cannot listen where it was told to does not run.
"""

from __future__ import annotations

import errno
from typing import Any, Callable, List, Optional

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from gotaxy.process import StartError


@attrs.frozen
class ListenSetting:
    """Where a listener is configured, for the message when it cannot bind."""

    what: str  #: "the control port", "the web panel", ...
    port_key: str  #: config key of the port, e.g. "bindPort"
    port_flag: Optional[str]  #: command-line flag of the port, e.g. "--bind-port"
    addr_key: str  #: config key of the address, e.g. "bindAddr"
    addr_flag: Optional[str]
    can_turn_off: bool = False  #: port 0 turns it off


def _named(key: str, flag: Optional[str]) -> str:
    return f"{key} or {flag}" if flag else key


def cannot_listen_message(setting: ListenSetting, address: str, error: Optional[OSError]) -> str:
    """One sentence: which setting, which address, why, and what to do."""
    port = _named(setting.port_key, setting.port_flag)
    addr = _named(setting.addr_key, setting.addr_flag)
    head = f"cannot listen on {address} for {setting.what} ({setting.port_key})"
    off = ", or 0 to turn it off" if setting.can_turn_off else ""
    code = getattr(error, "errno", None)
    if code == errno.EADDRINUSE:
        return (
            f"{head}: another program (maybe another Gotaxy server) already uses that port; "
            f"stop it, or choose another port with {port}{off}"
        )
    if code == errno.EACCES:
        return (
            f"{head}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE); "
            f"choose a port above 1023 with {port}{off}"
        )
    if code == errno.EADDRNOTAVAIL:
        return f"{head}: this machine has no such address; fix {addr} (0.0.0.0 listens on every address)"
    reason = (getattr(error, "strerror", None) or str(error or "unknown error")).lower()
    return f"{head}: {reason}; check {addr} and {port}"


class Listener(Service):
    """
    Listens on ``endpoint`` with ``factory`` from ``privilegedStartService``
    (or ``startService``, for callers that skip the privileged phase), and
    raises ``StartError`` if it cannot.  ``port`` is the listening port.
    """

    def __init__(
        self,
        endpoint: Any,
        factory: Any,
        setting: ListenSetting,
        address: str,
        on_listening: Optional[Callable[[Any], None]] = None,
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.setting = setting
        self.address = address
        self.on_listening = on_listening
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        outcome: List[Any] = []
        # TCP and SSL server endpoints listen synchronously: the Deferred has
        # fired when listen() returns.
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise RuntimeError(f"{self.endpoint!r} did not listen synchronously")
        result = outcome[0]
        if isinstance(result, Failure):
            if result.check(CannotListenError):
                raise StartError(cannot_listen_message(self.setting, self.address, result.value.socketError))
            result.raiseException()
        self.port = result
        if self.on_listening is not None:
            self.on_listening(result)

    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()  # type: ignore[no-any-return]
        return None


CONTROL = ListenSetting("the control port", "bindPort", "--bind-port", "bindAddr", "--bind-addr")
WEB = ListenSetting("the web panel", "webServer.port", "--web-port", "webServer.addr", "--web-addr", can_turn_off=True)
CONSOLE = ListenSetting("the SSH console", "console.port", "--console-port", "console.addr", None, can_turn_off=True)


def show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
