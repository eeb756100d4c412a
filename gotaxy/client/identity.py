# -*- test-case-name: tests.test_client_identity -*-
"""
The installation id: a random value kept in the client's data directory
(``instance_id``) and sent with every log-in.

Two machines given the same identity (one token, or the shared
``auth.token`` with the same ``user`` or host name) would otherwise replace
each other's session every time either reconnects.  The server lets a new
log-in replace a session it still holds only when both carry the same
installation id: the same client reconnecting after a network change or a
restart.  Any other log-in under a name already connected is refused with a
message that says how to give each machine its own identity.

The id is not a secret that grants anything by itself (the token does), but
with the token it lets a session be replaced, so it is kept readable by its
owner only and never logged.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from typing import Optional

INSTANCE_ID_FILENAME = "instance_id"

_INSTANCE_ID = re.compile(r"[0-9a-f]{32}")


def load_or_create_instance_id(data_dir: str) -> str:
    """
    The id kept in ``data_dir``, created on first use.  Two processes that
    start at once on one data directory end up with the same id.

    @raise OSError: the directory or the file cannot be created or read.
    """
    data_dir = os.path.expanduser(data_dir)
    path = os.path.join(data_dir, INSTANCE_ID_FILENAME)
    existing = _read(path)
    if existing is not None:
        return existing
    if not os.path.isdir(data_dir):
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=data_dir, prefix=".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16) + "\n")
        try:
            os.link(temp, path)  # fails if another process was first, or a bad file is there
        except FileExistsError:
            if _read(path) is None:
                os.replace(temp, path)  # not an id (truncated, edited): start afresh
                temp = ""
    finally:
        if temp:
            os.unlink(temp)
    found = _read(path)
    if found is None:
        raise OSError(f"{path} does not hold an installation id")
    return found


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            text = f.read(100).strip()
    except FileNotFoundError:
        return None
    return text if _INSTANCE_ID.fullmatch(text) else None
