# -*- test-case-name: tests.test_client_retry -*-
"""
frp's ``healthCheck`` of type ``tcp`` for one tunnel: every
``healthCheck.intervalSeconds`` the client opens a TCP connection to the
tunnel's local service (and closes it at once); a connection not made
within ``healthCheck.timeoutSeconds`` fails.  After
``healthCheck.maxFailed`` failures in a row the check reports the service
down, and up again at the first check that passes.

frp closes the proxy on the server while its check fails.  Gotaxy keeps the
public port open and reports the tunnel as down instead: the port stays
this tunnel's (nobody takes it in the meantime, and there is no re-open
that could be refused), and the panel and console say why.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from gotaxy.config import TunnelSpec


class _Probe(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


class LocalHealthCheck:
    """Probes ``spec``'s local service; calls ``changed(healthy, reason)`` when its state flips."""

    def __init__(self, reactor: Any, spec: TunnelSpec, changed: Callable[[bool, str], None]) -> None:
        self.reactor = reactor
        self.spec = spec
        self.changed = changed
        self.failures = 0
        self.healthy = True
        self.last_error = ""
        self._probing = False
        self._loop: Optional[LoopingCall] = None

    @property
    def address(self) -> str:
        return f"{self.spec.local_ip}:{self.spec.local_port}"

    def start(self) -> None:
        self._loop = LoopingCall(self._probe)
        self._loop.clock = self.reactor
        self._loop.start(self.spec.health_check_interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _probe(self) -> None:
        if self._probing:  # the last probe has not timed out yet
            return
        self._probing = True
        endpoint = HostnameEndpoint(
            self.reactor, self.spec.local_ip, self.spec.local_port, timeout=self.spec.health_check_timeout
        )
        endpoint.connect(Factory.forProtocol(_Probe)).addCallbacks(self._passed, self._failed)

    def _passed(self, _: Any) -> None:
        self._probing = False
        self.failures = 0
        if self._loop is not None and not self.healthy:
            self.healthy = True
            self.changed(True, "")

    def _failed(self, failure: Failure) -> None:
        self._probing = False
        self.failures += 1
        self.last_error = failure.getErrorMessage()
        if self._loop is not None and self.healthy and self.failures >= self.spec.health_check_max_failed:
            self.healthy = False
            self.changed(False, f"local service {self.address} not answering")
