"""
``RepeatThrottle`` (gotaxy.server.throttle) and the refusal warnings of
``Admission`` it rate-limits, on a fake clock.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from gotaxy.server.control import Admission
from gotaxy.server.throttle import OTHERS, RepeatThrottle


def make(interval: float = 60.0, max_keys: int = 100) -> Tuple[Clock, RepeatThrottle, List[Tuple[Any, int, Any, bool]]]:
    clock = Clock()
    reports: List[Tuple[Any, int, Any, bool]] = []
    throttle = RepeatThrottle(clock, interval, lambda *report: reports.append(report), max_keys=max_keys)
    return clock, throttle, reports


def test_first_occurrence_is_reported_at_once_and_the_rest_once_per_interval():
    clock, throttle, reports = make()
    for i in range(1000):
        throttle.add("203.0.113.7", f"203.0.113.7:{i}")
    assert reports == [("203.0.113.7", 1, "203.0.113.7:0", True)]
    clock.advance(59.9)
    assert len(reports) == 1
    clock.advance(0.1)
    assert reports[1] == ("203.0.113.7", 999, "203.0.113.7:999", False)
    # Still going: one report a window, each counting its own window.
    for i in range(50):
        throttle.add("203.0.113.7", "x")
    clock.advance(60)
    assert reports[2] == ("203.0.113.7", 50, "x", False)
    # A quiet window: nothing to say, and the key is forgotten.
    clock.advance(60)
    assert len(reports) == 3 and len(throttle) == 0
    assert sum(count for _, count, _, _ in reports) == 1050
    assert clock.getDelayedCalls() == []
    # The next attack is reported at once again.
    throttle.add("203.0.113.7", "again")
    assert reports[3] == ("203.0.113.7", 1, "again", True)


def test_keys_are_independent():
    clock, throttle, reports = make()
    throttle.add("a")
    throttle.add("b")
    throttle.add("a")
    assert [(k, n) for k, n, _, _ in reports] == [("a", 1), ("b", 1)]
    clock.advance(60)
    assert [(k, n) for k, n, _, _ in reports] == [("a", 1), ("b", 1), ("a", 1)]


def test_keys_beyond_the_limit_are_counted_together():
    clock, throttle, reports = make(max_keys=3)
    for host in ["h1", "h2", "h3", "h4", "h5", "h6"]:
        throttle.add(host, host)
    # Three addresses of their own; h4, h5 and h6 share OTHERS.
    assert len(throttle) == 4
    assert [k for k, _, _, _ in reports] == ["h1", "h2", "h3", OTHERS]
    clock.advance(60)
    assert reports[-1] == (OTHERS, 2, "h6", False)


def test_flush_reports_pending_counts_and_cancels_timers():
    clock, throttle, reports = make()
    throttle.add("a")
    throttle.add("a")
    throttle.add("b")
    throttle.flush()
    assert reports[-1] == ("a", 1, None, False)
    assert len(reports) == 3  # b had nothing pending
    assert clock.getDelayedCalls() == [] and len(throttle) == 0


def test_after_the_flush_each_occurrence_is_reported_at_once_and_leaves_no_timer():
    # A client failing to log in while the stopping server still has its port open.
    clock, throttle, reports = make()
    throttle.add("a")
    throttle.flush()
    throttle.add("a", "late")
    throttle.add("a", "later")
    assert reports[-2:] == [("a", 1, "late", True), ("a", 1, "later", True)]
    assert clock.getDelayedCalls() == [] and len(throttle) == 0


def test_a_failing_report_does_not_stop_counting():
    clock = Clock()
    seen: List[int] = []

    def report(key: Any, count: int, context: Any, first: bool) -> None:
        seen.append(count)
        raise RuntimeError("boom")

    logged: List[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        throttle = RepeatThrottle(clock, 10, report)
        throttle.add("a")
        throttle.add("a")
        clock.advance(10)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert seen == [1, 1]
    assert any(e.get("log_failure") is not None for e in logged)


def _warnings(events: List[dict]) -> List[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn and "refus" in e.get("log_format", "")]


def test_admission_refusals_are_one_warning_per_interval_with_a_count():
    clock = Clock()
    admission = Admission(max_pending=10, max_per_ip=2, reactor=clock)
    logged: List[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        assert admission.admit("198.51.100.9") and admission.admit("198.51.100.9")
        for _ in range(500):
            assert not admission.admit("198.51.100.9")
        warnings = _warnings(logged)
        assert len(warnings) == 1
        assert warnings[0].startswith("refusing connection from 198.51.100.9: 2 connections are waiting to log in")
        clock.advance(60)
        warnings = _warnings(logged)
        assert len(warnings) == 2
        assert warnings[1] == (
            "refused 499 more connections in the last 60 s: too many were waiting to log in "
            "(last from 198.51.100.9; limits 10 in all and 2 per address)"
        )
        assert admission.refused == 500  # the metric still counts every one
        admission.stop()
        assert clock.getDelayedCalls() == []
    finally:
        globalLogPublisher.removeObserver(logged.append)
