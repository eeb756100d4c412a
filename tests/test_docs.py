"""
docs/configuration.md against the code: every flag in its settings tables
is one the server or client accepts, every default written as a plain value
is the code's default, and the commands it names exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gotaxy import config
from gotaxy.client import tap as client_tap
from gotaxy.server import tap as server_tap

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def table_rows(heading: str, text: str = CONFIGURATION) -> "list[list[str]]":
    """The rows of the first markdown table after ``heading`` in ``text``."""
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] not in ("Key", "---") and not set(cells[0]) <= {"-"}:
            rows.append(cells)
    return rows


def flags_of(options_class) -> "set[str]":
    options = options_class()
    names = {name for name, *_ in options.optParameters + getattr(options, "optFlags", [])}
    # Repeatable flags (--tunnel, --allow-operator-tunnel) are opt_ methods.
    methods = {name[len("opt_"):].replace("_", "-") for name in dir(options) if name.startswith("opt_")}
    return {"--" + name for name in names | methods}


def defaults_of(config_class) -> "dict[str, object]":
    return {key: f.default for key, _, f in config.settings_of(config_class)}


@pytest.mark.parametrize(
    "heading, options_class, config_class",
    [("## Server: `server.toml`", server_tap.Options, config.ServerConfig),
     ("## Client: `client.toml`", client_tap.Options, config.ClientConfig)],
)
def test_settings_tables_name_real_flags_and_the_codes_defaults(heading, options_class, config_class):
    known_flags = flags_of(options_class)
    defaults = defaults_of(config_class)
    rows = table_rows(heading)
    assert len(rows) > 10
    checked = 0
    for key_cell, default_cell, flag_cell, *_ in rows:
        for flag in re.findall(r"`(--[a-z-]+)", flag_cell):
            assert flag in known_flags, f"{key_cell}: {flag} is not a flag of twistd {options_class.__module__}"
        keys = re.findall(r"`([A-Za-z.]+)`", key_cell)
        literal = re.fullmatch(r"`([^`]+)`(?: \([^)]*\))?", default_cell)
        if len(keys) == 1 and keys[0] in defaults and defaults[keys[0]] is not None and literal:
            expected = defaults[keys[0]]
            written = literal.group(1).strip('"')
            if isinstance(expected, bool):
                written = {"true": True, "false": False}[written]
            elif isinstance(expected, (int, float)):
                written = type(expected)(written)
            elif isinstance(expected, tuple):
                written = tuple(re.findall(r'"([^"]*)"', literal.group(1)))
            assert written == expected, f"{keys[0]}: the docs say {default_cell}, the code {expected!r}"
            checked += 1
    assert checked > 5


def test_no_command_that_does_not_exist():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert not re.search(r"`gotaxy (server|client)\b", text), path
        assert "sudo pip install" not in text.replace('refuse `sudo pip install`', ""), path
