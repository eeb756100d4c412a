# -*- test-case-name: tests.test_units -*-
"""
Byte counts and rates as people read them, the same in every face.

Gotaxy counts in 1024s and writes the IEC symbols: ``999 B``, ``1.5 KiB``,
``2.4 MiB/s``.  Why 1024: the sizes Gotaxy reads are frp's, and frp's
``transport.bandwidthLimit = "1MB"`` (issue 13) means 1024 × 1024 bytes a
second, so a tunnel limited to "1MB" must show "1.0 MiB/s", not "1.0 MB/s"
in one place and "1.0 MiB/s" in another; the buffer and frame sizes in
docs/protocol.md are powers of two as well.  The IEC symbols (KiB, not KB)
leave no doubt that 1024 is meant.

Sizes people write (``log.maxSize = "10MiB"``, and frp's ``"512KB"``) are read
by ``parse_size`` the same way: KB and KiB are both 1024, MB and MiB 1024².

``format_bytes`` is the only Python formatter: the console, ``gotaxy`` on the
command line and the metrics' help text use it.  The panel has its twin,
``formatBytes`` in ``www/units.js``; ``tests/test_units.py`` runs both on the
same values and requires the same text.  So that the two agree to the last
digit, neither uses its language's float formatting (Python rounds half to
even, JavaScript's ``toFixed`` does not): a value is rounded to whole bytes
(half up), then to tenths of its unit in integer arithmetic, and moves up a
unit when the tenths would read 1024.0.
"""

from __future__ import annotations

import math
import re

__all__ = ["UNITS", "format_bytes", "format_rate", "parse_size"]

#: The symbols, each 1024 times the one before.
UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(count: float) -> str:
    """``count`` bytes as ``"999 B"``, ``"1.5 KiB"``, ... ``"3.0 TiB"`` (negative counts show as 0)."""
    n = max(0, math.floor(count + 0.5))
    if n < 1024:
        return f"{n} B"
    for power in range(1, len(UNITS)):
        size = 1024**power
        tenths = (n * 10 + size // 2) // size
        if tenths < 10240 or power == len(UNITS) - 1:
            return f"{tenths // 10}.{tenths % 10} {UNITS[power]}"
    raise AssertionError("unreachable")


def format_rate(per_second: float) -> str:
    """A rate in bytes per second: ``"2.4 MiB/s"``."""
    return format_bytes(per_second) + "/s"


_SIZE = re.compile(r"([0-9]+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def parse_size(text: str) -> int:
    """
    ``"10MiB"``, ``"512KB"``, ``"4096"`` as a number of bytes (KB = KiB = 1024, as frp reads them).

    @raise ValueError: if ``text`` is not a whole number with one of those units.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size such as \"10MiB\" or \"512KB\"")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
