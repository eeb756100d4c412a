# -*- test-case-name: tests.test_store -*-
"""
Client tokens and operator passwords: how they are made, stored and checked.

* **Client tokens** are 256 random bits (``gtx_`` + 43 URL-safe characters).
  Only their SHA-256 is stored.  A slow hash adds nothing for a secret with
  that much entropy (nobody can guess it), and a fast one lets the server look
  a token up by its hash in one indexed query; the final comparison of the
  stored and presented hashes is constant-time all the same.  Nothing can
  show a token again after it was created: lose it, create a new one.

* **Passwords** are chosen by people and may be weak, so they are hashed with
  argon2id (argon2-cffi's defaults) and verified through it.

* A shared frp-style ``auth.token`` from the server's config is compared in
  constant time too (``tokens_equal``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

TOKEN_PREFIX = "gtx_"
#: argon2id with argon2-cffi's defaults (64 MiB, 3 passes: tens of
#: milliseconds per check, on purpose).  The in-memory test tier swaps in
#: cheap parameters (``tests/conftest.py``); a hash records the parameters it
#: was made with, so hashes made either way verify either way.
PASSWORD_HASHER = PasswordHasher()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_password() -> str:
    # 20 URL-safe characters: about 120 bits, easy to paste.
    return secrets.token_urlsafe(15)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def hash_password(password: str) -> str:
    return PASSWORD_HASHER.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return PASSWORD_HASHER.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
