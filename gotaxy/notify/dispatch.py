# -*- test-case-name: tests.test_notify -*-
"""
``Notifier``: from the server's event bus to the notification targets.

Events arrive on the reactor thread from ``EventBus.publish``.  The
notifier passes them through the ``FlapSuppressor`` and then offers each
one to every target; a target that wants it queues it and returns at once,
so the event bus (and so the tunnel code that published the event) never
waits for a delivery.

With a store (a server), the notifier sends only the events this node is
the sender of and marks them done, and takes over those a stopped node left
unsent (``gotaxy.notify.once``): each event notifies once across every
server process on the store.  Without one (tests, tools) it sends every
event it hears.
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
from gotaxy.notify.once import Marks, OrphanedEvents, Remembered


class Notifier(Service):
    log = Logger(observer=gotaxy_observer)
    name = "notifications"

    def __init__(
        self, bus: EventBus, targets: Sequence[Any], grace: float, reactor: Any, failures: FailureLog,
        store: Any = None,
    ) -> None:
        self.bus = bus
        self.targets: List[Any] = list(targets)
        self.failures = failures
        self.flaps = FlapSuppressor(grace, reactor, self._forwarded, dropped=self._dropped)
        self._unsubscribe: Optional[Callable[[], None]] = None
        #: The targets server.toml defines (``[[webhooks]]``, ``[smtp]``), which a reload replaces.
        self.from_file: List[Any] = list(targets)
        #: Builds the targets of a config (``build_notifier`` sets it), for ``apply``.
        self.config: Optional[ServerConfig] = None
        self._reactor = reactor
        self._http: Any = None
        #: This node, when it shares the store's events with others (a server); None: send everything heard.
        self.node: Optional[str] = store.store.node if store is not None else None
        self.marks = Marks(store, reactor) if self.node is not None else None
        self.orphans = OrphanedEvents(self, store, reactor) if self.node is not None else None
        self._held_back = Remembered()  #: events our flap suppressor dropped (a taken-over one is then only marked)
        self._taken = Remembered()  #: events taken over while our flap suppressor held them: ours when it lets go
        self._heard = Remembered()  #: events the bus brought here
        self._sent_first = Remembered()  #: our own events the start's search sent before the bus brought them

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self.bus.subscribe(self._hear)
        if self.orphans is not None:
            self.orphans.startService()

    def stopService(self) -> Deferred:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.flaps.stop()
        waits = []
        if self.orphans is not None and self.orphans.running:
            waits.append(self.orphans.stopService())
        # Webhooks give up at once (what they had not delivered stays unmarked,
        # for the next sender); e-mail sends its last batch (bounded by
        # smtp.timeout), whose events count as done once it is handed over.
        # Marks and failures are written now, while the store still runs.
        waits += [d for d in (t.stop() for t in self.targets) if isinstance(d, Deferred)]
        waits.append(self.failures.close())
        if self.marks is not None:
            waits.append(self.marks.close())
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

    # -- which events this node sends (gotaxy.notify.once) ---------------------

    def _hear(self, event: Event) -> None:
        if event.id is not None:
            if event.id in self._sent_first:
                return
            self._heard.add(event.id)
        self.flaps(event)

    def heard(self, event_id: int) -> bool:
        """Whether the bus brought ``event_id`` here (so it is in hand: sent, held or dropped)."""
        return event_id in self._heard

    def _ours(self, event: Event) -> bool:
        if self.node is None or event.id is None:
            return True  # no store shared with others, or never recorded (notify.test)
        return event.node == self.node or event.id in self._taken

    def _forwarded(self, event: Event) -> None:
        """What the flap suppressor lets through: sent if this node is its sender."""
        if self._ours(event):
            self._fan_out(event)

    def _dropped(self, event: Event) -> None:
        """What the flap suppressor swallowed: done, if it is ours."""
        if event.id is None:
            return
        self._held_back.add(event.id)
        if self._ours(event):
            self.done(event)

    def take_over(self, event: Event) -> None:
        """``event`` was a stopped node's to send and is ours now (``OrphanedEvents`` won it)."""
        assert event.id is not None
        if event.id in self._held_back:
            self.done(event)  # our suppressor saw it flap: nothing to say
        elif self.flaps.held(event.id):
            self._taken.add(event.id)  # our suppressor sends or drops it (as ours now) when its grace period ends
        else:
            # Sent now.  Should the bus bring it only later, it is not sent twice:
            # another node's or the gotaxy command's is not ours there, and our own
            # (recorded at the start, before the notifier listened) is skipped.
            if event.node == self.node:
                self._sent_first.add(event.id)
            self._fan_out(event)

    def done(self, event: Event) -> None:
        """This node is done with ``event``'s notifications."""
        if self.marks is not None and event.id is not None:
            self._taken.discard(event.id)
            self.marks.add(event.id)

    def _fan_out(self, event: Event) -> None:
        deliveries = []
        for target in self.targets:
            try:
                if target.wants(event):
                    delivery = target.deliver(event)
                    if isinstance(delivery, Deferred):
                        deliveries.append(delivery)
            except Exception:
                self.log.failure("bug offering {type} to {target!r}", type=event.type, target=target)
        if not deliveries:
            self.done(event)
        else:
            DeferredList(deliveries).addCallback(lambda _: self.done(event))


def build_notifier(
    config: ServerConfig, bus: EventBus, reactor: Any, store: Any = None, http: Any = None
) -> Notifier:
    """The notifier for ``config``'s ``[[webhooks]]`` and ``[smtp]`` (it may have no targets)."""
    failures = FailureLog(reactor, store)
    shared = store if store is not None and getattr(store.store, "node", None) is not None else None
    notifier = Notifier(bus, _file_targets(config, reactor, failures, http), config.notify.flap_grace, reactor,
                        failures, store=shared)
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
