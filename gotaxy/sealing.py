# -*- test-case-name: tests.test_sealing -*-
"""
Secrets the store must keep readable, sealed under the server's key.

Some secrets cannot be stored as a hash because the server needs them
back: a webhook's URL and signing secret (``gotaxy.notify.managed``) and an
operator's TOTP secret (``gotaxy.web.auth``: the server computes the
expected code from it).  They are kept encrypted with Fernet (AES-128-CBC
and HMAC-SHA256, from ``cryptography``) under one key in
``DATA_DIR/notify.key`` (mode 0600, made at first start; ``notify.keyFile``
names another file), so a copy of the database (a PostgreSQL dump, a
backup of ``gotaxy.db``) gives nobody a second factor or a chat hook.

The file keeps its historical name: it was first the notification key.
Servers sharing one database share this file; the first start on a store
records a check value that a server with another key refuses to start on
(``ManagedWebhooks.load``).
"""

from __future__ import annotations

import os
from typing import Optional

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = "notify.key"

__all__ = ["KEY_FILE", "InvalidToken", "Sealer", "key_path", "load_key"]


def key_path(data_dir: str, configured: Optional[str] = None) -> str:
    """The key file: ``notify.keyFile`` when set, else ``DATA_DIR/notify.key``."""
    return configured if configured is not None else os.path.join(data_dir, KEY_FILE)


def load_key(path: str) -> bytes:
    """The key in ``path``, made (mode 0600, never overwritten) if there is none yet."""
    try:
        with open(path, "rb") as f:
            return f.read().strip()
    except FileNotFoundError:
        key = Fernet.generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key


class Sealer:
    """Seal and open short secrets (text) under one Fernet key."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def at(cls, path: str) -> "Sealer":
        return cls(load_key(path))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        """The secret; raises ``InvalidToken`` if another key sealed it or it was altered."""
        return self._fernet.decrypt(sealed.encode()).decode()
