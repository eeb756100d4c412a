"""
Operator passwords: argon2id with OWASP's parameters, and the hash a
user name that does not exist is checked against.
"""

from __future__ import annotations

from argon2 import PasswordHasher, extract_parameters

from gotaxy import credentials

#: Gotaxy 0.1's parameters (argon2-cffi's defaults then): the hashes in existing stores.
OLD_HASHER = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4)


def test_the_parameters_are_owasps_recommendation() -> None:
    # Password Storage Cheat Sheet: argon2id, 19 MiB, 2 iterations, 1 degree of parallelism.
    p = credentials.PASSWORD_PARAMETERS
    assert (p.type.name, p.memory_cost, p.time_cost, p.parallelism) == ("ID", 19 * 1024, 2, 1)
    made = PasswordHasher.from_parameters(p).hash("a password")
    assert made.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_the_dummy_hash_has_the_parameters_real_hashes_have() -> None:
    """An unknown user name costs what a known one does, so timing does not tell which names exist."""
    assert extract_parameters(credentials._DUMMY_HASH) == credentials.PASSWORD_PARAMETERS


def test_the_dummy_hash_follows_the_hasher_in_use() -> None:
    # In this tier PASSWORD_HASHER is the cheap one (tests/conftest.py): the dummy matches it.
    dummy = credentials.dummy_hash()
    assert not credentials.PASSWORD_HASHER.check_needs_rehash(dummy)
    assert credentials.dummy_hash() == dummy
    assert not credentials.verify_password(dummy, "gotaxy")


def test_an_old_hash_verifies_and_gets_a_new_one_with_todays_parameters() -> None:
    old = OLD_HASHER.hash("the right password")
    assert credentials.password_needs_rehash(old)
    right, new = credentials.check_password(old, "the right password")
    assert right and new is not None
    assert not credentials.password_needs_rehash(new)
    assert credentials.verify_password(new, "the right password")


def test_a_wrong_password_or_a_current_hash_gives_no_new_hash() -> None:
    old = OLD_HASHER.hash("the right password")
    assert credentials.check_password(old, "wrong") == (False, None)
    current = credentials.hash_password("the right password")
    assert credentials.check_password(current, "the right password") == (True, None)
    assert credentials.check_password("not a hash", "the right password") == (False, None)
