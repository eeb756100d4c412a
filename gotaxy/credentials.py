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
  argon2id and verified through it, with the parameters OWASP's Password
  Storage Cheat Sheet recommends (m = 19 MiB, t = 2, p = 1).  A hash records
  the parameters it was made with, so hashes made with other ones (Gotaxy
  0.1 used argon2-cffi's defaults, 64 MiB) still verify, and are made again
  with these at the next successful log-in (``password_needs_rehash``).

* A shared frp-style ``auth.token`` from the server's config is compared in
  constant time too (``tokens_equal``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Dict

from argon2 import Parameters, PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

TOKEN_PREFIX = "gtx_"
#: argon2id at OWASP's recommendation (Password Storage Cheat Sheet: "a
#: minimum configuration of 19 MiB of memory, an iteration count of 2, and 1
#: degree of parallelism"): slow on purpose (96 ms per check on the shared
#: 2-core test host) and 19 MiB while it runs, where argon2-cffi's defaults
#: (RFC 9106's low-memory profile: 64 MiB, t = 3, 4 lanes; 279 ms there) took
#: 64 MiB, a third of the server's peak memory.  The in-memory test tier swaps in cheap parameters
#: (``tests/conftest.py``); a hash records the parameters it was made with,
#: so hashes made either way verify either way.
PASSWORD_PARAMETERS = Parameters(
    type=Type.ID, version=19, salt_len=16, hash_len=32, time_cost=2, memory_cost=19 * 1024, parallelism=1
)
PASSWORD_HASHER = PasswordHasher.from_parameters(PASSWORD_PARAMETERS)

#: A hash of no one's password, made with ``PASSWORD_HASHER``'s parameters
#: (``dummy_hash``): written here rather than computed at import, which cost
#: every process that imported the store one hash (64 MiB then) at start.
#: ``tests/test_credentials.py`` checks that its parameters are ``PASSWORD_PARAMETERS``.
_DUMMY_HASH = "$argon2id$v=19$m=19456,t=2,p=1$l0RHcRnilB6qnovTeTGZZQ$3rmm6/QOiqe6Qyy7a3B2Ckd0wr8evQOzdGnl+lE4HLQ"
_dummies: Dict[str, str] = {}


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


def password_needs_rehash(stored_hash: str) -> bool:
    """Whether ``stored_hash`` was made with other parameters than ``PASSWORD_HASHER``'s (hash it again)."""
    try:
        return PASSWORD_HASHER.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return False  # verify_password refuses it anyway


def check_password(stored_hash: str, password: str) -> "tuple[bool, str | None]":
    """
    Whether ``password`` is right, and, if it is and ``stored_hash`` has
    parameters other than ``PASSWORD_HASHER``'s, its new hash to store: the
    only moment the password is at hand to hash again.  Slow (two hashes
    then): call it off the reactor thread, as ``verify_password``.
    """
    if not verify_password(stored_hash, password):
        return False, None
    return True, hash_password(password) if password_needs_rehash(stored_hash) else None


def dummy_hash() -> str:
    """
    A hash to verify against for a user name that does not exist, so that
    the answer takes as long as for one that does; with ``PASSWORD_HASHER``'s
    parameters (made once, for the tests' cheap hasher).
    """
    if not password_needs_rehash(_DUMMY_HASH):
        return _DUMMY_HASH
    hasher = PASSWORD_HASHER
    key = f"{hasher.time_cost},{hasher.memory_cost},{hasher.parallelism},{hasher.type}"
    if key not in _dummies:
        _dummies[key] = hasher.hash("gotaxy-no-such-user")
    return _dummies[key]
