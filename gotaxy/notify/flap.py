# -*- test-case-name: tests.test_notify -*-
"""
Flap suppression: a client that drops and is back within the grace period
(``notify.flapGrace``, default 10 s) produces no notification at all.

The events themselves are recorded and published as always; only what
notification targets see changes::

    client.disconnected ──> held for `grace` seconds ──(no reconnect)──> delivered
                                 │
                                 └─(client.connected within grace)──> both dropped

While an offline event is held, the ``client.replaced`` that may follow it
(a reconnect the server noticed before the old connection died) is dropped
too, and so are the ``tunnel.opened`` events of the tunnels the client had
up before it dropped, when they come back within the grace period after the
reconnect: the flap changed nothing a person needs to hear about.  A tunnel
that was not up before is new and is delivered.

Every event it swallows is handed to ``dropped`` (the notifier marks it
done: ``gotaxy.notify.once``); one it holds is ``held`` until it is
delivered or dropped.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Set, Tuple

from gotaxy.events import Event
from gotaxy.store import CLIENT_CONNECTED, CLIENT_DISCONNECTED, CLIENT_REPLACED, TUNNEL_CLOSED, TUNNEL_OPENED


class FlapSuppressor:
    def __init__(self, grace: float, reactor: Any, forward: Callable[[Event], None],
                 dropped: Optional[Callable[[Event], None]] = None) -> None:
        self.grace = grace
        self._reactor = reactor
        self._forward = forward
        self._dropped = dropped if dropped is not None else (lambda event: None)
        self._up: Dict[str, Set[str]] = {}  # client -> tunnels up, as the events tell
        self._held: Dict[str, Tuple[Event, Any, Set[str]]] = {}  # client -> (offline event, timer, tunnels)
        self._restoring: Dict[str, Tuple[Set[str], Any]] = {}  # client -> (tunnels to expect back, timer)
        self.suppressed = 0  #: flaps that produced no notification

    def __call__(self, event: Event) -> None:
        kind, client = event.type, event.client
        if client is None:
            self._forward(event)
            return
        if kind == TUNNEL_OPENED and event.tunnel is not None:
            self._up.setdefault(client, set()).add(event.tunnel)
            restoring = self._restoring.get(client)
            if restoring is not None and event.tunnel in restoring[0]:
                restoring[0].discard(event.tunnel)
                self._dropped(event)
                return
        elif kind == TUNNEL_CLOSED and event.tunnel is not None:
            self._up.get(client, set()).discard(event.tunnel)
        elif kind == CLIENT_DISCONNECTED:
            tunnels = self._up.pop(client, set())
            if self.grace > 0:
                self._end_restoring(client)
                earlier = self._held.pop(client, None)
                if earlier is not None:  # offline twice without online between (two nodes noticed): one notice
                    earlier[1].cancel()
                    tunnels |= earlier[2]
                    self._dropped(earlier[0])
                timer = self._reactor.callLater(self.grace, self._release, client)
                self._held[client] = (event, timer, tunnels)
                return
        elif kind == CLIENT_REPLACED and client in self._held:
            self._dropped(event)
            return
        elif kind == CLIENT_CONNECTED and client in self._held:
            offline, timer, tunnels = self._held.pop(client)
            timer.cancel()
            self.suppressed += 1
            self._dropped(offline)
            self._dropped(event)
            if tunnels:
                self._restoring[client] = (tunnels, self._reactor.callLater(self.grace, self._end_restoring, client))
            return
        self._forward(event)

    def _release(self, client: str) -> None:
        event, _, _ = self._held.pop(client)
        self._forward(event)

    def _end_restoring(self, client: str) -> None:
        restoring = self._restoring.pop(client, None)
        if restoring is not None and restoring[1].active():
            restoring[1].cancel()

    def held(self, event_id: int) -> bool:
        """Whether the offline event ``event_id`` is waiting out its grace period here."""
        return any(event.id == event_id for event, _, _ in self._held.values())

    @property
    def holding(self) -> int:
        """Offline notifications waiting out their grace period."""
        return len(self._held)

    def stop(self) -> None:
        """Cancel the timers; held offline notifications are not sent (the server is stopping)."""
        for _, timer, _ in self._held.values():
            if timer.active():
                timer.cancel()
        self._held.clear()
        for client in list(self._restoring):
            self._end_restoring(client)
