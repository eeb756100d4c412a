# -*- test-case-name: tests.test_names -*-
"""
The one rule for names: clients, tokens, tunnels, webhooks.

A name is 1 to 64 ASCII letters, digits, ``.``, ``_`` or ``-``, starting
with a letter or digit.  Names end up in log lines, event rows, panel pages
and shell output, so the check is ``fullmatch``: ``re.match`` with ``$``
would let a trailing newline through (``$`` matches before one), and with it
forged log lines.  Every place that accepts a name (the wire, the REST API,
the console, config files and flags, ``gotaxy token create``, the store)
checks it here, with the same sentence.
"""

from __future__ import annotations

import re
from typing import Any

#: A valid name, for ``fullmatch`` only.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: Completes "... must be": the rule, for error messages.
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


class InvalidName(ValueError):
    """A name breaks the rule; the message names the thing and the rule."""


def is_valid_name(value: Any) -> bool:
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


def shown(value: Any) -> str:
    """``value`` as it may be quoted in a message or a log line: escaped, kept short."""
    if isinstance(value, str) and len(value) > 64:
        return repr(value[:64]) + "..."
    return repr(value)


def check_name(value: Any, what: str) -> str:
    """
    Return ``value`` if it is a valid name, else raise ``InvalidName``:
    "a tunnel name must be 1 to 64 letters, ... (got 'w\\n')".
    """
    if not is_valid_name(value):
        raise InvalidName(f"{what} must be {NAME_RULE} (got {shown(value)})")
    return value
