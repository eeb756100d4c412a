# -*- test-case-name: tests.test_notify_once -*-
"""
Each event notifies once across every server process on the store, not
once per process.

Every node hears every event: its own straight from the record, the
others' from the events table (``gotaxy.server.outbox``).  All of them
pass every event through their ``FlapSuppressor``, so that each node knows
whether a client only flapped, also when it dropped from one node and came
back on another.  But only one node sends an event's notifications, its
*sender* (``gotaxy.store.notified``):

* normally the node that recorded it: the one that acted, which has it at
  once and in order with what caused it;
* if that node stops before it is done with the event (a crash, ``kill
  -9``, a stop while a webhook was still retrying), another node: once the
  recorder's lease in the store has run out (30 s after a crash; at once
  after a clean stop, which ends the lease), every node's ``OrphanedEvents``
  finds the event still without ``notified``, and the one whose ``UPDATE
  ... WHERE`` names the old sender first becomes the new sender and sends
  it.  Events the ``gotaxy`` command writes have no node and are taken the
  same way, within a second.
* at a start, a node's own unmarked events that the bus has not brought to
  this process: an earlier process of the node died with them before its
  lease ran out (so no other node took them), or they were recorded while
  this one started, before the notifier listened.

The sender marks an event ``notified`` when every target that wanted it is
done with it (delivered, or failed for good and in the failure log), when
its flap suppressor held it back, or at once when no target wants it; marks
are written in batches, at most one store call every ``MARK_DELAY``
seconds.

What a crash can still do: a node that dies after a delivery reached the
receiver but before its mark was written has its event sent again by the
next sender, so delivery is *at least once* at that edge, never lost;
webhooks carry ``X-Gotaxy-Event-Id`` (the event's row id), the same in
every attempt from every node, for receivers that must not act twice.  An
orphan recorded more than ``HORIZON`` seconds ago is not sent at all (a
whole cluster down for hours would otherwise page about the past): it is
marked and written to the failure log instead.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer
from gotaxy.server.poller import StorePoller
from gotaxy.store import notified

if TYPE_CHECKING:
    from gotaxy.notify.dispatch import Notifier

#: Seconds between the reads that look for orphaned events.
POLL_INTERVAL = 1.0
#: Seconds marks wait to be written together.
MARK_DELAY = 0.25
#: Most marks waiting for the store; beyond this the oldest are left to a later sender.
MAX_MARKS = 10000
#: Seconds after which an orphan is too old to send.
HORIZON = 3600.0
#: Event ids a node remembers its flap suppressor held back.
REMEMBERED = 10000


class Marks:
    """The events this node is done with, written to the store in batches."""

    log = Logger(observer=gotaxy_observer, namespace="gotaxy.notify")

    def __init__(self, store: Any, reactor: Any) -> None:
        self.store = store  #: a ThreadedStore
        self.reactor = reactor
        self._waiting: "OrderedDict[int, None]" = OrderedDict()
        self._timer: Any = None
        self._writing: Any = None
        self._closed = False
        self.written = 0  #: events marked in the store

    def add(self, event_id: int) -> None:
        if self._closed:
            return
        self._waiting[event_id] = None
        while len(self._waiting) > MAX_MARKS:
            self._waiting.popitem(last=False)
        if self._timer is None and self._writing is None:
            self._timer = self.reactor.callLater(MARK_DELAY, self._write)

    def _write(self) -> Any:
        self._timer = None
        if not self._waiting or self._writing is not None or self._closed:
            return self._writing if self._writing is not None else succeed(None)
        ids = list(self._waiting)
        self._waiting.clear()
        d = self._writing = self.store.call(notified.mark, self.store.store, ids, self.reactor.seconds())

        def written(count: int) -> None:
            self.written += count

        def failed(failure: Any) -> None:
            self.log.warn("could not mark {n} events notified (trying again): {error}", n=len(ids),
                              error=failure.getErrorMessage())
            for event_id in ids:
                self._waiting.setdefault(event_id, None)

        def done(_: Any) -> None:
            self._writing = None
            if self._waiting and self._timer is None and not self._closed:
                self._timer = self.reactor.callLater(MARK_DELAY, self._write)

        d.addCallbacks(written, failed).addBoth(done)
        return d

    def close(self) -> Deferred:
        """
        At a stop: write every mark now, and none later.  The store stops
        right after the services that use it, so the write is queued here,
        before that; an event finished after this is left unmarked (the
        next sender sends it again: at least once).
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._closed = True
        writes = [self._writing] if self._writing is not None else []
        if self._waiting:
            ids = list(self._waiting)
            self._waiting.clear()
            d = self.store.call(notified.mark, self.store.store, ids, self.reactor.seconds())
            d.addCallbacks(lambda count: setattr(self, "written", self.written + count),
                           lambda f: self.log.warn("could not mark {n} events notified at the stop: {error}",
                                                   n=len(ids), error=f.getErrorMessage()))
            writes.append(d)
        return DeferredList(writes)


class Remembered:
    """A bounded set of event ids, oldest forgotten first."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self.size = size
        self._ids: "OrderedDict[int, None]" = OrderedDict()

    def add(self, event_id: int) -> None:
        self._ids[event_id] = None
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def discard(self, event_id: int) -> None:
        self._ids.pop(event_id, None)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids


class OrphanedEvents(StorePoller):
    """Takes over the events whose sender stopped before it was done, and hands them to the notifier."""

    name = "orphaned-notifications"
    reading = "the notifications other servers left unsent"

    def __init__(self, notifier: "Notifier", store: Any, reactor: Any, interval: float = POLL_INTERVAL) -> None:
        super().__init__(reactor, interval)
        self.notifier = notifier
        self.store = store  #: a ThreadedStore
        self.started: Optional[float] = None
        self._left_after: Optional[int] = 0  #: the start-up pass over our own node's leftovers; None when done
        self.taken = 0  #: events this process took over

    @property
    def node(self) -> str:
        return self.store.store.node  # type: ignore[no-any-return]

    def startService(self) -> None:
        self.started = self.reactor.seconds()
        super().startService()

    async def poll(self) -> bool:
        db = self.store.store
        now = self.reactor.seconds()
        if self._left_after is not None:
            rows = await self.store.call(notified.left_by, db, self.node, self._left_after)
            for event, _ in rows:
                assert event.id is not None
                self._left_after = event.id
                if not self.notifier.heard(event.id):  # else this process has it in hand
                    self._hand_over(event, now, self.node)
            if len(rows) < notified.ORPHAN_BATCH:
                self._left_after = None
            return True  # then the other nodes' orphans, at once
        assert self.started is not None
        rows = await self.store.call(notified.orphans, db, self.node, self.started, now)
        for event, sender in rows:
            if not self.running:
                break
            assert event.id is not None
            if await self.store.call(notified.take, db, event.id, sender, self.node):
                self._hand_over(event, now, sender)
        return len(rows) >= notified.ORPHAN_BATCH

    def _hand_over(self, event: Any, now: float, sender: Optional[str]) -> None:
        self.taken += 1
        if now - event.at > HORIZON:
            self.notifier.failures.record(
                "notifications", event.type,
                f"not sent: recorded {now - event.at:.0f} s ago by {sender or 'the gotaxy command'}, which stopped "
                f"before sending it, and older than {HORIZON:g} s")
            self.notifier.done(event)
            return
        self.notifier.take_over(event)


__all__ = ["HORIZON", "MARK_DELAY", "POLL_INTERVAL", "Marks", "OrphanedEvents", "Remembered"]
