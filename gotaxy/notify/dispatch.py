# -*- test-case-name: tests.test_notify -*-
"""
``Notifier``: from the server's event bus to the notification targets.

Events arrive on the reactor thread from ``EventBus.publish``.  The
notifier passes them through the ``FlapSuppressor`` and then offers each
one to every target; a target that wants it queues it and returns at once,
so the event bus (and so the tunnel code that published the event) never
waits for a delivery.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from gotaxy.config import ServerConfig
from gotaxy.events import Event, EventBus
from gotaxy.logs import gotaxy_observer
from gotaxy.notify.failures import FailureLog
from gotaxy.notify.flap import FlapSuppressor


class Notifier(Service):
    log = Logger(observer=gotaxy_observer)
    name = "notifications"

    def __init__(
        self, bus: EventBus, targets: Sequence[Any], grace: float, reactor: Any, failures: FailureLog
    ) -> None:
        self.bus = bus
        self.targets: List[Any] = list(targets)
        self.failures = failures
        self.flaps = FlapSuppressor(grace, reactor, self._fan_out)
        self._unsubscribe: Optional[Callable[[], None]] = None
        #: The targets server.toml defines (``[[webhooks]]``, ``[smtp]``), which a reload replaces.
        self.from_file: List[Any] = list(targets)
        #: Builds the targets of a config (``build_notifier`` sets it), for ``apply``.
        self.config: Optional[ServerConfig] = None
        self._reactor = reactor
        self._http: Any = None

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self.bus.subscribe(self.flaps)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.flaps.stop()
        # Webhooks give up at once; e-mail sends its last batch (bounded by
        # smtp.timeout).  Failures are written now, while the store still runs.
        waits = [d for d in (t.stop() for t in self.targets) if isinstance(d, Deferred)]
        waits.append(self.failures.close())
        return DeferredList(waits)

    def add(self, target: Any) -> None:
        """Start offering events to ``target`` (an operator added it)."""
        self.targets.append(target)

    def remove(self, target: Any) -> None:
        """Stop ``target``: what it has queued is given up."""
        self.targets.remove(target)
        target.stop()

    def apply(self, config: ServerConfig) -> List[Any]:
        """
        ``[[webhooks]]``, ``[smtp]`` and ``notify.flapGrace`` from a reload:
        the file's targets are replaced by the new file's (what the old ones
        had queued is given up); targets operators added stay.
        """
        from gotaxy.server.reload import applied, changed_keys

        old = self.config
        if old is None:
            return []
        self.config = config
        done: List[Any] = []
        smtp = [k for k in changed_keys(old, config) if k.startswith("smtp.")]
        hooks = old.webhooks != config.webhooks
        if hooks or smtp:
            for target in self.from_file:
                if target in self.targets:
                    self.remove(target)
            self.from_file = _file_targets(config, self._reactor, self.failures, self._http)
            for target in self.from_file:
                self.add(target)
        if hooks:
            done.append(applied("webhooks", f"{len(config.webhooks)} webhook(s) from the file now"))
        if smtp:
            state = f"mail through {config.smtp.host}" if config.smtp.host else "e-mail off"
            done.append(applied(" / ".join(smtp), state))
        if old.notify.flap_grace != config.notify.flap_grace:
            self.flaps.grace = config.notify.flap_grace
            done.append(applied("notify.flapGrace", f"{config.notify.flap_grace:g} s, for the next drop"))
        return done

    def _fan_out(self, event: Event) -> None:
        for target in self.targets:
            try:
                if target.wants(event):
                    target.deliver(event)
            except Exception:
                self.log.failure("bug offering {type} to {target!r}", type=event.type, target=target)


def build_notifier(
    config: ServerConfig, bus: EventBus, reactor: Any, store: Any = None, http: Any = None
) -> Notifier:
    """The notifier for ``config``'s ``[[webhooks]]`` and ``[smtp]`` (it may have no targets)."""
    failures = FailureLog(reactor, store)
    notifier = Notifier(bus, _file_targets(config, reactor, failures, http), config.notify.flap_grace, reactor,
                        failures)
    notifier.config, notifier._http = config, http
    return notifier


def _file_targets(config: ServerConfig, reactor: Any, failures: FailureLog, http: Any) -> List[Any]:
    """The targets ``config``'s ``[[webhooks]]`` and ``[smtp]`` define."""
    from gotaxy.notify.mail import MailTarget
    from gotaxy.notify.webhook import WebhookTarget

    targets: List[Any] = [
        WebhookTarget(spec, config.server_name, reactor, failures, http=http, number=n)
        for n, spec in enumerate(config.webhooks, 1)
    ]
    if config.smtp.host is not None:
        targets.append(MailTarget.from_config(config, reactor, failures))
    return targets
