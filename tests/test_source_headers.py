"""
A module's ``# -*- test-case-name: ... -*-`` header says where its tests
are (``trial --testmodule``, editors); one that names a missing module
sends the reader nowhere.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"^# -\*- test-case-name: *(\S+?) *-\*-", re.M)


def test_every_test_case_name_header_names_a_test_module_that_exists() -> None:
    missing = []
    for source in sorted((ROOT / "gotaxy").rglob("*.py")):
        match = HEADER.search(source.read_text(encoding="utf-8")[:500])
        if match is None:
            continue
        for name in match.group(1).split(","):
            if not (ROOT / (name.replace(".", "/") + ".py")).is_file():
                missing.append(f"{source.relative_to(ROOT)}: {name}")
    assert missing == [], "test-case-name headers naming no test module: " + ", ".join(missing)
