# -*- test-case-name: tests.test_tls -*-
"""
Private files written so that no one else can read them and no crash leaves
half of one behind: keys, certificates and C{known_servers}.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["make_private_dir", "write_atomically"]


def make_private_dir(path: str) -> None:
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        # makedirs is subject to the umask only for looser bits; be explicit.
        os.chmod(path, 0o700)


def write_atomically(path: str, data: bytes, mode: int) -> None:
    """
    Replace C{path} with C{data}, never exposing a partial file or, for
    keys, a moment where the file is readable by others.
    """
    directory = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
