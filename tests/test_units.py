"""
One unit convention (``gotaxy.units``, ``www/units.js``): the console and the
panel write the same text for the same byte count or rate, in 1024s with the
IEC symbols, and sizes in the config are read the same way.  The panel's
twin runs under node in tests/test_units_panel.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gotaxy.units import format_bytes, format_rate, parse_size

ROOT = Path(__file__).resolve().parent.parent
WWW = ROOT / "www"

# Edges: the switch to KiB, halves that Python's and JavaScript's own float
# formatting round differently (1280 B is exactly 1.25 KiB), a value that
# would read "1024.0 KiB", fractions of a byte in rates, beyond TiB, negative.
VALUES = [
    0, 0.4, 0.5, 1, 999, 1023, 1023.5, 1024, 1075, 1280, 1500, 1433.6, 10 * 1024 - 52,
    1024 * 1024 - 51, 1024 * 1024 - 52, 1024 * 1024, 2_500_000, 3.75 * 1024**3, 1234.5678,
    5 * 1024**4, 3 * 1024**5, 123_456_789_012, -5,
]


def test_known_texts():
    assert [format_bytes(v) for v in (0, 999, 1023, 1024, 1280, 1500, 2_500_000)] == [
        "0 B", "999 B", "1023 B", "1.0 KiB", "1.3 KiB", "1.5 KiB", "2.4 MiB",
    ]
    assert format_bytes(1024 * 1024 - 51) == "1.0 MiB"  # not "1024.0 KiB"
    assert format_bytes(5 * 1024**4) == "5.0 TiB"
    assert format_bytes(3 * 1024**5) == "3072.0 TiB"
    assert format_bytes(-5) == "0 B"
    assert format_rate(120) == "120 B/s"
    assert format_rate(2.4 * 1024) == "2.4 KiB/s"


def test_the_panel_has_no_formatter_of_its_own():
    index = (WWW / "index.html").read_text(encoding="utf-8")
    assert index.index('src="units.js"') < index.index('src="app.js"')
    app = (WWW / "app.js").read_text(encoding="utf-8")
    assert "KiB" not in app and "formatBytes(" in app


@pytest.mark.parametrize(
    "text, size",
    [("4096", 4096), ("64KiB", 65536), ("500KB", 512_000), ("10MiB", 10 * 2**20), ("10 MB", 10 * 2**20),
     ("1GB", 2**30), ("7B", 7)],
)
def test_sizes_are_read_in_1024s_as_frp_reads_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "1.5MB", "10 mb", "-1KB", "10TB"])
def test_sizes_that_are_not_sizes(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)
