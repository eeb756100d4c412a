# -*- test-case-name: tests.test_retention -*-
"""
Old events go: rows of the ``events`` table older than
``events.retentionDays`` (default 90) are deleted, and node commands
(``gotaxy.store.commands``) older than an hour.

``EventRetention`` is a service that runs ``run`` at start and then every
``EXPIRY_INTERVAL`` seconds on the reactor's clock.  ``run`` deletes in
batches of ``BATCH`` rows, each batch its own store call on the store's
thread, so a large backlog (the first run after an upgrade, say) never
blocks the reactor and never holds the store thread long: client log-ins
and tunnel opens queued meanwhile run between two batches.  Stopping waits
for the batch in flight and starts no other, so the store can close.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer

DAY = 86400.0
#: Seconds between two runs.
EXPIRY_INTERVAL = 3600.0
#: Rows deleted per store call.
BATCH = 1000
#: Seconds a node command's row is kept (``gotaxy.store.commands``): its answer is read within seconds.
COMMAND_KEEP = 3600.0


class EventRetention(Service):
    log = Logger(observer=gotaxy_observer)
    name = "event-retention"

    def __init__(self, core: Any, batch: int = BATCH, interval: float = EXPIRY_INTERVAL) -> None:
        self.core = core  #: its config (re-read on reload) says how long to keep events
        self._retention_days = core.config.events.retention_days
        self.batch = batch
        self.interval = interval
        self._loop = LoopingCall(self._tick)
        self._loop.clock = core.reactor
        self._running: Optional[Deferred] = None
        self._stopping = False

    def apply(self, config: Any) -> List[Any]:
        """``events.retentionDays``: it is read from the core's config at every run, so it applies at the next."""
        from gotaxy.server.reload import applied

        if config.events.retention_days == self._retention_days:
            return []
        self._retention_days = config.events.retention_days
        return [applied("events.retentionDays", f"{self._retention_days} days, from the next hourly run")]

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        if self._loop.running:
            self._loop.stop()
        return self._running if self._running is not None else succeed(None)

    def _tick(self) -> None:
        # The loop does not wait for a run (stopService does); a run still
        # going when the next is due is left to finish.
        if self._running is not None:
            return
        self._running = Deferred.fromCoroutine(self.run())
        self._running.addErrback(lambda f: self.log.failure("deleting old events failed", f))

        def done(_: Any) -> None:
            self._running = None

        self._running.addBoth(done)

    async def run(self) -> int:
        """Delete every event older than the retention period; return how many went."""
        days = self.core.config.events.retention_days
        before = self.core.reactor.seconds() - days * DAY
        store = self.core.store
        deleted = 0
        while True:
            n = await store.call(store.store.expire_events, before, self.batch)
            deleted += n
            if n < self.batch or self._stopping:
                break
        if deleted:
            self.log.info("deleted {n} events older than {days} days (events.retentionDays)", n=deleted, days=days)
        await self.expire_commands()
        return deleted

    async def expire_commands(self) -> int:
        """Delete node commands (``gotaxy.store.commands``) older than ``COMMAND_KEEP``: answered long ago."""
        from gotaxy.store import commands

        store = self.core.store
        before = self.core.reactor.seconds() - COMMAND_KEEP
        deleted = 0
        while True:
            n = await store.call(commands.expire, store.store, before, self.batch)
            deleted += n
            if n < self.batch or self._stopping:
                return deleted
