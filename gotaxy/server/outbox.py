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
    The tail starts at the newest id at start-up, read by the server before
    it listens (what happened before is in the event log, not news) and then asks, every ``POLL_INTERVAL``
    seconds on the reactor's clock, for at most ``BATCH`` rows after it,
    through ``ThreadedStore`` (never on the reactor thread).  A full batch
    is followed by another read at once (``gotaxy.server.poller``, the loop
    it shares with the node commands), so a backlog drains in bounded
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

from gotaxy.events import EventBus
from gotaxy.server.poller import StorePoller

#: Seconds between two reads of the events table.
POLL_INTERVAL = 0.5
#: Most rows one read returns.
BATCH = 200
#: Seconds an id skipped below the cursor is still waited for.
GAP_WAIT = 30.0
#: Most skipped ids waited for at once; a larger jump is not a commit race.
MAX_GAPS = 100


class EventTail(StorePoller):
    name = "event-tail"
    reading = "new events"

    def __init__(self, store: Any, bus: EventBus, reactor: Any, node: str,
                 interval: float = POLL_INTERVAL, batch: int = BATCH, start: Optional[int] = None) -> None:
        super().__init__(reactor, interval)
        self.store = store  #: a ThreadedStore (``call``, ``store``)
        self.bus = bus
        self.node = node  #: rows with this node id were published when recorded
        self.batch = batch
        #: The highest id read; None until the start-up read is back.  The server
        #: passes the newest id it read while it was built (``start``), before it
        #: listens, so that an event another node records while this one comes up
        #: (a ban, a revocation) is not taken for old news by a first read that a
        #: busy store thread answers late.
        self.cursor: Optional[int] = None if start is None else start
        self.gaps: Dict[int, float] = {}  #: ids skipped below the cursor -> when first missed

    async def poll(self) -> bool:
        """Publish the rows other processes wrote since the last read; True if the batch was full."""
        db = self.store.store
        if self.cursor is None:
            newest = await self.store.call(db.newest_event_id)
            self.cursor = newest or 0
            return False
        rows, newest = await self.store.call(db.events_after, self.cursor, self.batch, sorted(self.gaps))
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

