# -*- test-case-name: tests.test_outbox -*-
"""
The events table is an outbox: every server process tails it, so that an
event another process wrote (``gotaxy token revoke`` from a shell, another
server node on the same database) reaches this process's webhooks, e-mail,
the panel's live view and the console's ``watch``.

How an event travels
    ``ServerCore.record`` writes the row (with this process's node id) and
    publishes the recorded event on the bus at once.  ``EventTail`` reads
    the rows other writers added, by id, and publishes those with
    ``local=False``.  So each event reaches each process's subscribers
    exactly once: its own process hears it straight from ``record``, and
    the tail skips rows that carry its own node id.

    Why not everything through the tail: the process that records an event
    is the one acting on it.  Publishing at once keeps the order of an
    event and the action that caused it (the flap suppressor holds an
    offline event until the online one that follows), costs no poll
    interval of latency for the common case, and keeps working while the
    store is slow to read.  Subscribers that account for this process's
    own live state (the session history, traffic meters, the per-process
    event counters of /metrics) subscribe ``local_only`` and never see
    another process's events.

The cursor
    The tail starts at the newest id at start-up (what happened before is
    in the event log, not news) and then asks, every ``POLL_INTERVAL``
    seconds on the reactor's clock, for at most ``BATCH`` rows after it,
    through ``ThreadedStore`` (never on the reactor thread).  A full batch
    is followed by another read at once, so a backlog drains in bounded
    steps.  Rows are read by ``id > cursor``, never by "the next id", so
    the gaps ``events.retentionDays`` leaves (``gotaxy.server.retention``
    deletes the oldest rows) cannot stall it.  Two more cases:

    * A database whose ids are handed out before commit (PostgreSQL's
      sequences) can show id 11 before 10 commits.  An id skipped below
      the cursor is asked for again with every read for ``GAP_WAIT``
      seconds (at most ``MAX_GAPS`` of them), then given up: a rolled-back
      insert leaves a hole that never fills.
    * SQLite hands out max(id) + 1, so once retention has emptied the table
      ids start again from 1.  When the newest id is below the cursor, the
      rows there are all new, and the cursor goes back to 0.

Latency: an event another process records reaches subscribers here within
one ``POLL_INTERVAL`` (0.5 s) plus one read of the store.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gotaxy.events import EventBus
from gotaxy.logs import gotaxy_observer

#: Seconds between two reads of the events table.
POLL_INTERVAL = 0.5
#: Most rows one read returns.
BATCH = 200
#: Seconds an id skipped below the cursor is still waited for.
GAP_WAIT = 30.0
#: Most skipped ids waited for at once; a larger jump is not a commit race.
MAX_GAPS = 100


class EventTail(Service):
    log = Logger(observer=gotaxy_observer)
    name = "event-tail"

    def __init__(self, store: Any, bus: EventBus, reactor: Any, node: str,
                 interval: float = POLL_INTERVAL, batch: int = BATCH) -> None:
        self.store = store  #: a ThreadedStore (``call``, ``store``)
        self.bus = bus
        self.reactor = reactor
        self.node = node  #: rows with this node id were published when recorded
        self.interval = interval
        self.batch = batch
        self.cursor: Optional[int] = None  #: the highest id read; None until the start-up read is back
        self.gaps: Dict[int, float] = {}  #: ids skipped below the cursor -> when first missed
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._reading: Optional[Deferred] = None
        self._failing = False

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return self._reading if self._reading is not None else succeed(None)

    def _tick(self) -> None:
        if self._reading is not None:
            return  # a read is still going (a slow store): the next tick tries again
        self._reading = Deferred.fromCoroutine(self.poll())

        def done(result: Any) -> None:
            self._reading = None
            if result is True and self.running:
                self.reactor.callLater(0, self._tick)  # a full batch: read on at once

        self._reading.addErrback(self._failed).addBoth(done)

    def _failed(self, failure: Any) -> None:
        if not self._failing:
            self._failing = True
            self.log.failure("reading new events from the store failed; trying again every {interval:g} s",
                             failure, interval=self.interval)

    async def poll(self) -> bool:
        """Publish the rows other processes wrote since the last read; True if the batch was full."""
        db = self.store.store
        if self.cursor is None:
            newest = await self.store.call(db.newest_event_id)
            self.cursor = newest or 0
            return False
        rows, newest = await self.store.call(db.events_after, self.cursor, self.batch, sorted(self.gaps))
        if self._failing:
            self._failing = False
            self.log.info("reading new events from the store works again")
        if newest is None or newest < self.cursor:
            # Emptied (and, on SQLite, numbering from 1 again): what is there now is new.
            self.cursor, self.gaps = 0, {}
            if newest is not None:
                return True
        now = self.reactor.seconds()
        fresh = 0  # rows after the cursor, as opposed to gaps filled
        for event in rows:
            assert event.id is not None
            if event.id in self.gaps:
                del self.gaps[event.id]
            elif event.id > self.cursor:
                skipped = event.id - self.cursor - 1
                if 0 < skipped <= MAX_GAPS - len(self.gaps):
                    self.gaps.update((missing, now) for missing in range(self.cursor + 1, event.id))
                self.cursor = event.id
                fresh += 1
            else:
                continue  # read before (a gap's row can come back with a batch)
            if event.node != self.node:
                self.bus.publish(event, local=False)
        self.gaps = {gap: since for gap, since in self.gaps.items() if now - since < GAP_WAIT}
        return fresh >= self.batch

