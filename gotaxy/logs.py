# -*- test-case-name: tests.test_logs -*-
"""
Where Gotaxy's log lines go.

* Every Gotaxy module logs through ``Logger(observer=gotaxy_observer)``:
  events below ``log.level`` are dropped there, the rest reach Twisted's
  global publisher and so twistd's normal output (the terminal with ``-n``,
  the journal under systemd).
* ``ErrorLogService`` additionally writes warnings, errors and tracebacks
  (from any module) to ``DATA_DIR/logs/gotaxy.log``, rotated daily and kept
  ``log.maxDays`` days.

Nothing here knows about secrets: the rule is that no log call is ever given
a token or password, and tests grep the logs to hold us to it.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Hashable, Optional

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import DailyLogFile

LEVELS = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

_level_filter = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
gotaxy_observer = FilteringLogObserver(globalLogPublisher, [_level_filter])


def set_level(name: str) -> None:
    """Apply ``log.level`` to Gotaxy's own log lines."""
    _level_filter.setLogLevelForNamespace("", LEVELS[name])
    _level_filter.defaultLogLevel = LEVELS[name]


class RetainingDailyLogFile(DailyLogFile):
    """A ``DailyLogFile`` that deletes rotated files older than ``max_days``."""

    def __init__(self, name: str, directory: str, max_days: int, default_mode: Optional[int] = 0o600) -> None:
        self.max_days = max_days
        super().__init__(name, directory, defaultMode=default_mode)
        self.prune()

    def rotate(self) -> None:
        super().rotate()
        self.prune()

    def prune(self, now: Optional[float] = None) -> None:
        cutoff = (time.time() if now is None else now) - self.max_days * 86400
        prefix = self.name + "."
        for entry in os.listdir(self.directory):
            if not entry.startswith(prefix):
                continue
            path = os.path.join(self.directory, entry)
            try:
                if os.path.getmtime(path) < cutoff:
                    os.remove(path)
            except OSError:
                pass


class ErrorLogService(Service):
    """Copies warnings and worse to a rotated file in ``directory``."""

    def __init__(self, directory: str, max_days: int) -> None:
        self.directory = directory
        self.max_days = max_days
        self._file: Optional[RetainingDailyLogFile] = None
        self._observer: Optional[FilteringLogObserver] = None

    def startService(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._file = RetainingDailyLogFile("gotaxy.log", self.directory, self.max_days)
        self._observer = FilteringLogObserver(
            textFileLogObserver(self._file),
            [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
        )
        globalLogPublisher.addObserver(self._observer)
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None


class Throttle:
    """
    At most one log line per key every ``interval`` seconds, for failures
    that come in floods (one per refused connection): the first is reported
    at once, the rest of the interval is counted and reported with the next.
    """

    #: Forget keys quiet for an interval once this many are remembered.
    MAX_KEYS = 1024

    def __init__(self, reactor: Any, interval: float) -> None:
        self.reactor = reactor
        self.interval = interval
        self._last: Dict[Hashable, float] = {}
        self._held: Dict[Hashable, int] = {}

    def __call__(self, key: Hashable) -> Optional[int]:
        """
        None if this occurrence is to be kept quiet; otherwise how many
        occurrences (this one included) the line to log now stands for.
        """
        now = self.reactor.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if len(self._last) >= self.MAX_KEYS:
            self._forget(now)
        self._last[key] = now
        return self._held.pop(key, 0) + 1

    def _forget(self, now: float) -> None:
        for key in [k for k, at in self._last.items() if now - at >= self.interval]:
            del self._last[key]
            self._held.pop(key, None)
