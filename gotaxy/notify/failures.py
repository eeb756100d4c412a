# -*- test-case-name: tests.test_notify -*-
"""
Failed deliveries, kept where an operator can see them.

Every notification that could not be delivered (the target answered with
an error for longer than it may be retried, never answered, or the queue
was full and the oldest delivery was dropped) becomes a
``NotificationFailure``: counted per target (for ``/metrics``), kept in a
bounded in-memory list (for the panel), logged as a warning, and written to
the store's ``notification_failures`` table.  Writes are batched: at most
one store call per second, whatever the failure rate, and the batch waiting
for the store is itself bounded.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, List, Optional

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer

from gotaxy.store.schema import NOTIFICATION_FAILURES as TABLE

#: Failures waiting for the store; beyond this the oldest are only counted.
MAX_UNWRITTEN = 1000
#: Seconds between store writes.
WRITE_DELAY = 1.0


@attrs.frozen
class NotificationFailure:
    at: float
    target: str  #: the target's label: its name, or "webhook #N (host)"; never its URL
    event: str  #: the event type that was not delivered
    reason: str


def _write(store: Any, rows: List[Dict[str, Any]]) -> None:
    with store.db:
        store.db[TABLE].insert_many(rows, ensure=False)


def _read(store: Any, limit: int) -> List[NotificationFailure]:
    with store.db:  # ends the read transaction, so no snapshot is held
        rows = list(store.db[TABLE].find(order_by="-id", _limit=limit))
    return [NotificationFailure(r["at"], r["target"], r["event"], r["reason"]) for r in rows]


class FailureLog:
    log = Logger(observer=gotaxy_observer)

    def __init__(self, reactor: Any, store: Any = None, keep: int = 200) -> None:
        """``store`` is a ``ThreadedStore`` or ``None`` (memory only)."""
        self._reactor = reactor
        self._store = store
        self.recent: Deque[NotificationFailure] = deque(maxlen=keep)
        self.counts: Dict[str, int] = {}
        self._unwritten: Deque[Dict[str, Any]] = deque(maxlen=MAX_UNWRITTEN)
        self._timer: Any = None
        self._writing: Optional[Deferred] = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, target: str, event: str, reason: str) -> None:
        failure = NotificationFailure(self._reactor.seconds(), target, event, reason)
        self.recent.append(failure)
        self.counts[target] = self.counts.get(target, 0) + 1
        self.log.warn("notification {event} to {target} failed: {reason}", event=event, target=target, reason=reason)
        if self._store is None:
            return
        # Cut to the columns' lengths, which PostgreSQL enforces (a label may name a long host).
        row = attrs.asdict(failure)
        row.update(target=failure.target[:128], event=failure.event[:64])
        self._unwritten.append(row)
        if self._timer is None:
            self._timer = self._reactor.callLater(WRITE_DELAY, self._flush_now)

    def _flush_now(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> Deferred:
        """Write what is waiting; the Deferred fires when it is written."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._store is None or not self._unwritten:
            return succeed(None)
        rows = list(self._unwritten)
        self._unwritten.clear()
        d = self._store.call(_write, self._store.store, rows)
        d.addErrback(lambda f: self.log.failure("could not store {n} notification failures", f, n=len(rows)))
        return d

    def close(self) -> Deferred:
        """
        Write what is waiting now and keep later failures in memory only:
        the store stops right after the services that use it.
        """
        d = self.flush()
        self._store = None
        return d

    def stored(self, limit: int = 100) -> "Deferred[List[NotificationFailure]]":
        """The newest ``limit`` failures from the store, newest first."""
        if self._store is None:
            return succeed(list(reversed(self.recent))[:limit])
        return self._store.call(_read, self._store.store, limit)
