# -*- test-case-name: tests.test_logs -*-
"""
Where Gotaxy's log lines go.

* Every Gotaxy module logs through ``Logger(observer=gotaxy_observer)``:
  events below ``log.level`` are dropped there, the rest reach Twisted's
  global publisher and so twistd's normal output (the terminal with ``-n``,
  the journal under systemd).
* ``ErrorLogService`` additionally writes warnings, errors and tracebacks
  (from any module) to ``DATA_DIR/logs/gotaxy.log``, rotated daily and at
  ``log.maxSize`` bytes (default 10 MiB), ``log.maxDays`` rotated files kept,
  none older than ``log.maxDays`` days: a bound on the disk the logs take,
  however much an attacker makes the server log.

Nothing here knows about secrets: the rule is that no log call is ever given
a token or password, and tests grep the logs to hold us to it.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

LEVELS = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

#: ``log.maxSize`` unless set: the log file rotates at this many bytes.
DEFAULT_MAX_SIZE = 10 * 2**20

_level_filter = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
gotaxy_observer = FilteringLogObserver(globalLogPublisher, [_level_filter])


def set_level(name: str) -> None:
    """Apply ``log.level`` to Gotaxy's own log lines."""
    _level_filter.setLogLevelForNamespace("", LEVELS[name])
    _level_filter.defaultLogLevel = LEVELS[name]


def _day(timestamp: float) -> Tuple[int, int, int]:
    return time.localtime(timestamp)[:3]


class RotatingLogFile(LogFile):
    """
    A log file rotated when it reaches ``max_size`` bytes and at its first
    write on a new (local) day, keeping at most ``max_days`` rotated files
    (``gotaxy.log.1`` the newest) and none older than ``max_days`` days.
    The directory so never holds much more than ``(max_days + 1) *
    max_size`` bytes, whoever writes the lines.

    Twisted has each half but not both: ``LogFile`` rotates by size and
    keeps a bounded number of numbered files; ``DailyLogFile`` rotates by
    day, names its files by date and gives up rotating while the day's name
    is taken, so it cannot rotate twice in a day.  Hence a ``LogFile`` (size,
    count) that also rotates when the day changes, and deletes rotated files
    by age (a quiet server still drops week-old files).
    """

    def __init__(
        self,
        name: str,
        directory: str,
        max_days: int,
        max_size: int,
        default_mode: Optional[int] = 0o600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_days = max_days
        self._clock = clock
        super().__init__(name, directory, rotateLength=max_size, defaultMode=default_mode, maxRotatedFiles=max_days)
        self.prune()

    def _openFile(self) -> None:
        super()._openFile()
        self.day = _day(os.stat(self.path).st_mtime)

    def shouldRotate(self) -> bool:
        if self.size == 0:
            return False  # nothing to keep: a new day or not, write on
        return bool(super().shouldRotate()) or _day(self._clock()) > self.day

    def write(self, data: str) -> None:
        super().write(data)
        self.day = max(self.day, _day(self._clock()))

    def listLogs(self) -> List[int]:
        # LogFile's own takes "2026_12_1" (DailyLogFile's names, kept by
        # older versions) for the number 2026121.
        prefix = self.name + "."
        numbers = [e[len(prefix):] for e in os.listdir(self.directory) if e.startswith(prefix)]
        return sorted(int(n) for n in numbers if n.isascii() and n.isdigit() and int(n) > 0)

    def rotate(self) -> None:
        super().rotate()
        self.prune()

    def prune(self, now: Optional[float] = None) -> None:
        """Delete rotated files (any ``NAME.*``, older names included) older than ``max_days``."""
        cutoff = (self._clock() if now is None else now) - self.max_days * 86400
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

    def __init__(self, directory: str, max_days: int, max_size: int = DEFAULT_MAX_SIZE, level: str = "info") -> None:
        self.level = level  #: log.level, which a reload may change (``apply``)
        self.directory = directory
        self.max_days = max_days
        self.max_size = max_size
        self._file: Optional[RotatingLogFile] = None
        self._observer: Optional[FilteringLogObserver] = None

    def startService(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._file = RotatingLogFile("gotaxy.log", self.directory, self.max_days, self.max_size)
        self._observer = FilteringLogObserver(
            textFileLogObserver(self._file),
            [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
        )
        globalLogPublisher.addObserver(self._observer)
        super().startService()

    def apply(self, config: Any) -> List[Any]:
        """``log.level``, ``log.maxDays`` and ``log.maxSize`` from a reload: at once."""
        from gotaxy.server.reload import applied

        done: List[Any] = []
        if config.log.level != self.level:
            self.level = config.log.level
            set_level(config.log.level)
            done.append(applied("log.level", config.log.level))
        if (config.log.max_days, config.log.max_size) != (self.max_days, self.max_size):
            self.max_days, self.max_size = config.log.max_days, config.log.max_size
            if self._file is not None:
                self._file.max_days = self._file.maxRotatedFiles = self.max_days
                self._file.rotateLength = self.max_size
            done.append(applied("log.maxDays / log.maxSize", f"{self.max_days} days, {self.max_size} bytes a file"))
        return done

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
