# -*- test-case-name: tests.test_notify -*-
"""Which events a target wants: ``events = ["client.disconnected", "tunnel.*"]``."""

from __future__ import annotations

from typing import Iterable


class EventFilter:
    """
    Matches event types against patterns: an exact type
    (``"client.disconnected"``), a family (``"tunnel.*"`` or ``"tunnel."``),
    or ``"*"`` for everything.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._all = "*" in self.patterns
        self._exact = frozenset(p for p in self.patterns if not p.endswith((".", ".*")))
        self._families = tuple(p.rstrip("*") for p in self.patterns if p.endswith((".", ".*")))

    def matches(self, event_type: str) -> bool:
        return self._all or event_type in self._exact or event_type.startswith(self._families)
