# -*- test-case-name: tests.test_outbox -*-
"""
``StorePoller``: a service that reads the store on a timer.

Several parts of a node learn what other nodes did by reading the store
every fraction of a second (the event outbox's tail, the node commands,
the notifications other nodes left unsent).  They share this loop:

* one ``poll`` at a time: a tick that finds the previous read still going
  (a slow store, a long command) does nothing, the next tick tries again;
* ``poll`` returning True (a full batch) reads again at once instead of
  waiting for the next tick, so a backlog drains in bounded steps;
* a failing read is logged once, with its traceback, and its recovery once,
  not every tick while the database is away;
* stopping waits for the read in progress, so nothing touches the store
  after the services that close it.

Everything runs on the reactor's clock, every store call through
``ThreadedStore`` (in ``poll``).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer
from gotaxy.store import StoreUnreachable


class StorePoller(Service):
    log = Logger(observer=gotaxy_observer)
    #: What a poll reads, for the log: "reading {reading} from the store failed".
    reading = "the store"

    def __init__(self, reactor: Any, interval: float) -> None:
        self.reactor = reactor
        self.interval = interval
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._polling: Optional[Deferred] = None
        self._failing = False

    async def poll(self) -> bool:
        """One read (and what follows from it); True to read again at once."""
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return self._polling if self._polling is not None else succeed(None)

    def _tick(self) -> None:
        if self._polling is not None:
            return
        self._polling = Deferred.fromCoroutine(self.poll())
        self._polling.addCallbacks(self._worked, self._failed)

        def done(again: Any) -> None:
            self._polling = None
            if again is True and self.running:
                self.reactor.callLater(0, self._tick)

        self._polling.addBoth(done)

    def _worked(self, again: Any) -> Any:
        if self._failing:
            self._failing = False
            self.log.info("reading {reading} from the store works again", reading=self.reading)
        return again

    def _failed(self, failure: Any) -> None:
        if failure.check(StoreUnreachable):
            return  # an outage: said once by the server (ServerCore), and read again when it ends
        if not self._failing:
            self._failing = True
            self.log.failure("reading {reading} from the store failed; trying again every {interval:g} s",
                             failure, reading=self.reading, interval=self.interval)
