# -*- test-case-name: tests.test_manage -*-
"""
In-process fan-out of server events.

Everything the server records in the store's events table is also published
here, as it happens, for whoever is watching the live server: the web
panel's live view, the console's ``watch``, notifications and metrics.
Subscribers are called on the reactor thread and must not block; an
exception in one is logged and does not affect the others.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import attrs
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer


@attrs.frozen
class Event:
    type: str  #: one of the ``gotaxy.store`` event type constants
    at: float  #: UNIX time
    client: Optional[str] = None
    tunnel: Optional[str] = None
    address: Optional[str] = None
    detail: Optional[str] = None
    count: int = 1  #: occurrences it stands for: more than 1 for repeated failed log-ins from one address


Subscriber = Callable[[Event], None]


class EventBus:
    log = Logger(observer=gotaxy_observer)

    def __init__(self) -> None:
        self._subscribers: List[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with every event; returns the unsubscribe function."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def publish(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                self.log.failure("event subscriber {s!r} failed on {type}", s=subscriber, type=event.type)
