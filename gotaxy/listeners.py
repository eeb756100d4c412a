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

Where a listener listens is a Twisted endpoint string (``ListenAt``): the
``*Endpoint`` settings take one as written (``tcp:7000:interface=\\:\\:``,
``systemd:domain=INET6:index=0`` for a socket systemd opened, ``unix:...``),
and frp's address and port keys (``bindAddr``/``bindPort``, and the web
panel's and console's) become one when no endpoint is set.  So socket
activation, or a listener on a privileged port, needs no code: only a string.
"""

from __future__ import annotations

import errno
import re
from typing import Any, Callable, List, Optional

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from gotaxy.oslimits import listen_backlog
from gotaxy.process import StartError


@attrs.frozen
class ListenSetting:
    """Where a listener is configured, for the message when it cannot bind."""

    what: str  #: "the control port", "the web panel", ...
    port_key: str  #: config key of the port, e.g. "bindPort"
    port_flag: Optional[str]  #: command-line flag of the port, e.g. "--bind-port"
    addr_key: str  #: config key of the address, e.g. "bindAddr"
    addr_flag: Optional[str]
    endpoint_key: str  #: config key of the endpoint string, e.g. "bindEndpoint"
    endpoint_flag: Optional[str]
    can_turn_off: bool = False  #: port 0 turns it off


def _named(key: str, flag: Optional[str]) -> str:
    return f"{key} or {flag}" if flag else key


@attrs.frozen
class ListenAt:
    """Where a listener listens: a Twisted endpoint string, and whether the user wrote it."""

    description: str
    #: From an ``*Endpoint`` setting (True) or made from the address and port keys.
    explicit: bool
    #: What to show in messages: "0.0.0.0:7000", or the string as written.
    shown: str


def listen_at(setting: ListenSetting, endpoint: Optional[str], addr: str, port: int) -> Optional[ListenAt]:
    """
    ``endpoint`` if set; else a TCP endpoint on ``addr``:``port`` with
    Gotaxy's backlog; None for a listener that port 0 turns off.
    """
    if endpoint:
        return ListenAt(endpoint, True, endpoint)
    if not port and setting.can_turn_off:
        return None
    description = f"tcp:{port}:interface={quoteStringArgument(addr)}:backlog={listen_backlog()}"
    return ListenAt(description, False, show_address(addr, port))


_TCP_PORT = re.compile(r"^(?:tcp6?|ssl):(?:port=)?(\d+)(?::|$)")


def endpoint_port(description: str) -> Optional[int]:
    """The TCP port a ``tcp:``/``ssl:`` endpoint string names first, if any (systemd's is not known)."""
    match = _TCP_PORT.match(description)
    return int(match.group(1)) if match else None


def endpoint_error(setting: ListenSetting, at: ListenAt, error: str) -> str:
    """The refusal of an endpoint string Twisted cannot parse."""
    return (
        f"{_named(setting.endpoint_key, setting.endpoint_flag)} {at.description!r} is not an endpoint this "
        f"server can listen on ({error}); write it like tcp:7000:interface=0.0.0.0, tcp6:7000:interface=\\:\\: "
        "or systemd:domain=INET6:index=0"
    )


def cannot_listen_message(setting: ListenSetting, address: str, error: Optional[OSError],
                          explicit: bool = False) -> str:
    """One sentence: which setting, which address, why, and what to do."""
    port = _named(setting.port_key, setting.port_flag)
    addr = _named(setting.addr_key, setting.addr_flag)
    if explicit:
        # The user wrote the endpoint string: that is the setting to fix.
        port = addr = _named(setting.endpoint_key, setting.endpoint_flag)
    head = f"cannot listen on {address} for {setting.what} ({setting.endpoint_key if explicit else setting.port_key})"
    off = ", or 0 to turn it off" if setting.can_turn_off and not explicit else ""
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
    Listens at ``at`` (an endpoint string) with ``factory`` from
    ``privilegedStartService`` (or ``startService``, for callers that skip
    the privileged phase), and raises ``StartError`` if it cannot.  ``port``
    is the listening port.
    """

    def __init__(
        self,
        reactor: Any,
        at: ListenAt,
        factory: Any,
        setting: ListenSetting,
        on_listening: Optional[Callable[[Any], None]] = None,
    ) -> None:
        self.reactor = reactor
        self.at = at
        self.factory = factory
        self.setting = setting
        self.address = at.shown
        self.on_listening = on_listening
        self.port: Any = None
        #: Fires once the port is closed after ``stopService`` (None before it stops).
        self.closed: Optional[Deferred] = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        self.port = self._listen(self.at)

    def _listen(self, at: ListenAt) -> Any:
        """Listen at ``at`` now and return the port, or raise ``StartError`` saying why not."""
        try:
            endpoint = serverFromString(self.reactor, at.description)
        except LookupError:
            if not at.description.startswith("systemd:"):
                raise StartError(endpoint_error(self.setting, at, "unknown argument")) from None
            raise StartError(
                f"{_named(self.setting.endpoint_key, self.setting.endpoint_flag)} {at.description!r}: systemd "
                "passed no such socket (LISTEN_FDS, LISTEN_FDNAMES); start the server through its .socket unit, "
                "or listen with a tcp: endpoint"
            ) from None
        except (ValueError, TypeError) as e:
            raise StartError(endpoint_error(self.setting, at, str(e))) from None
        outcome: List[Any] = []
        # TCP, SSL, UNIX and adopted (systemd) server endpoints listen
        # synchronously: the Deferred has fired when listen() returns.
        endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise StartError(
                f"{_named(self.setting.endpoint_key, self.setting.endpoint_flag)} {at.description!r}: "
                "this kind of endpoint cannot listen at start; use tcp:, tcp6:, ssl:, unix: or systemd:"
            )
        result = outcome[0]
        if isinstance(result, Failure):
            if result.check(CannotListenError):
                raise StartError(cannot_listen_message(self.setting, at.shown, result.value.socketError,
                                                       at.explicit))
            result.raiseException()
        if self.on_listening is not None:
            self.on_listening(result)
        return result

    async def apply(self, config: Any) -> List[Any]:
        """
        A reload's address for this listener: listen at the new one, then
        stop listening at the old one.  Connections it accepted stay open
        (a stopped port only stops accepting), so clients, panel sessions
        and console sessions are not cut.  Where both are the same port on
        different addresses, the old one is closed first, and listened on
        again if the new one fails.  A listener that was off at start needs
        a restart to be turned on.
        """
        from gotaxy.server.reload import applied, needs_restart, value_of

        s = self.setting
        keys = f"{s.addr_key} / {s.port_key} / {s.endpoint_key}"
        at = listen_at(s, value_of(config, s.endpoint_key), value_of(config, s.addr_key),
                       value_of(config, s.port_key))
        if at == self.at:
            return []
        if self.port is None:
            return [needs_restart(keys, f"{s.what} was not listening when the server started")]
        if at is None:
            port, self.port = self.port, None
            await port.stopListening()
            self.at = ListenAt("", False, "off")
            return [applied(keys, f"{s.what} no longer listens (turned off); open sessions stay")]
        old = self.port
        try:
            new = self._listen(at)
        except StartError as first:
            if endpoint_port(at.description) != endpoint_port(self.at.description):
                return [needs_restart(keys, f"{first}; it still listens at {self.bound()}")]
            # The same port on another address: free it, then try again.
            await old.stopListening()
            try:
                new = self._listen(at)
            except StartError as second:
                self.port = self._listen(self.at)
                return [needs_restart(keys, f"{second}; it still listens at {self.bound()}")]
        else:
            await old.stopListening()
        self.port, self.at, self.address = new, at, at.shown
        return [applied(keys, f"{s.what} listens at {self.bound()} now; open connections stay")]

    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            self.closed = Deferred()
            stopping: Deferred = port.stopListening()

            def closed(result: Any) -> Any:
                assert self.closed is not None
                self.closed.callback(None)
                return result

            return stopping.addBoth(closed)
        return None

    def bound(self) -> str:
        """Where it listens now, as "host:port" (the socket's own address: right for systemd's too)."""
        host = self.port.getHost() if self.port is not None else None
        if host is None or not hasattr(host, "port"):
            return self.address
        return show_address(host.host, host.port)


CONTROL = ListenSetting("the control port", "bindPort", "--bind-port", "bindAddr", "--bind-addr",
                        "bindEndpoint", "--bind-endpoint")
WEB = ListenSetting("the web panel", "webServer.port", "--web-port", "webServer.addr", "--web-addr",
                    "webServer.endpoint", "--web-endpoint", can_turn_off=True)
CONSOLE = ListenSetting("the SSH console", "console.port", "--console-port", "console.addr", None,
                        "console.endpoint", "--console-endpoint", can_turn_off=True)


def show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
