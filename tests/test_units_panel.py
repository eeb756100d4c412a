"""
The panel's ``formatBytes`` / ``formatRate`` (``www/units.js``, run under
node) write the same text as the console's ``gotaxy.units`` for the same
values.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from gotaxy.units import format_bytes, format_rate
from tests.test_units import VALUES, WWW


def test_the_panel_writes_what_the_console_writes():
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("no node to run the panel's units.js: install Debian's nodejs package (see .ci/apt-packages)")
    script = (
        f"const u = require({json.dumps(str(WWW / 'units.js'))});"
        f"const values = {json.dumps(VALUES)};"
        "console.log(JSON.stringify(values.map((v) => [u.formatBytes(v), u.formatRate(v)])));"
    )
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60, check=True)
    panel = json.loads(result.stdout)
    console = [[format_bytes(v), format_rate(v)] for v in VALUES]
    assert panel == console
