# -*- test-case-name: tests.test_throttle -*-
"""
Reports of things that repeat, at most one per key per interval.

Peers that hold nothing (wrong tokens, connection floods) must not be able
to write without limit to the events table and the log file.  A
``RepeatThrottle`` stands between the occurrence and its report::

    first occurrence for KEY ──> report(KEY, 1, context, first=True) at once;
        │                        a window of ``interval`` seconds opens
        ▼
    more occurrences in the window: counted, nothing written
        │
    window ends ──(count > 0)──> report(KEY, count, last context, first=False);
        │                        the next window opens at once
        └─────────(count == 0)─> KEY is forgotten

So reports for one key are always at least ``interval`` apart, the first
is not delayed (an operator or a webhook hears of an attack at once), and
the sum of the reported counts is the number of occurrences: nothing is
lost, ``flush`` reports what is pending when the server stops; after it,
each occurrence is reported at once, without a window (a client may still
fail to log in while the server closes its port, and a window's timer
would outlive the server).  Keys come
from the network (source addresses), so at most ``max_keys`` are tracked
on their own; occurrences for further keys are counted together under
``OTHERS``.

``gotaxy.logs.Throttle`` is the lighter cousin for log lines alone: it
keeps no timer and tells what it held back with the next occurrence after
the interval, so a flood that stops leaves its last count untold.  Events
are counted here, where the count must reach the store.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Hashable

from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer

#: The key occurrences are counted under once ``max_keys`` keys are tracked.
OTHERS = "*"

#: Keys tracked at once by default (one small record and timer each).
MAX_KEYS = 4096

Report = Callable[[Hashable, int, Any, bool], Any]


class _Window:
    __slots__ = ("count", "context", "timer")

    def __init__(self, timer: Any) -> None:
        self.count = 0
        self.context: Any = None
        self.timer = timer


class RepeatThrottle:
    log = Logger(observer=gotaxy_observer)

    def __init__(self, reactor: Any, interval: float, report: Report, max_keys: int = MAX_KEYS) -> None:
        self.reactor = reactor
        self.interval = interval
        self.report = report
        self.max_keys = max_keys
        self._windows: Dict[Hashable, _Window] = {}
        self._flushed = False

    def __len__(self) -> int:
        return len(self._windows)

    def add(self, key: Hashable, context: Any = None) -> Any:
        """
        One occurrence for ``key``; ``context`` is handed to its report.
        Returns what the report returned if it was made now (the first
        occurrence), else None.
        """
        if self._flushed:
            return self._report(key, 1, context, True)
        window = self._windows.get(key)
        if window is None and len(self._windows) >= self.max_keys:
            key = OTHERS
            window = self._windows.get(key)
        if window is not None:
            window.count += 1
            window.context = context
            return None
        self._open(key)
        return self._report(key, 1, context, True)

    def flush(self) -> None:
        """Report every pending count now and forget every key (at shutdown); no window opens after it."""
        self._flushed = True
        windows, self._windows = self._windows, {}
        for key, window in windows.items():
            if window.timer.active():
                window.timer.cancel()
            if window.count:
                self._report(key, window.count, window.context, False)

    def _open(self, key: Hashable) -> None:
        self._windows[key] = _Window(self.reactor.callLater(self.interval, self._window_ended, key))

    def _window_ended(self, key: Hashable) -> None:
        window = self._windows.pop(key, None)
        if window is None or not window.count:
            return
        self._open(key)
        self._report(key, window.count, window.context, False)

    def _report(self, key: Hashable, count: int, context: Any, first: bool) -> Any:
        try:
            return self.report(key, count, context, first)
        except Exception:
            self.log.failure("reporting {count} repeated occurrences for {key!r} failed", count=count, key=key)
            return None

