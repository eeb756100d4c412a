"""
Tests for gotaxy.sealing and the TOTP secrets sealed with it: a copy of the
store holds no second factor in plain text, and a store from before sealing
(the 0.1.0 dump, whose admin has TOTP on) is sealed at start and its
operator's authenticator keeps working.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pyotp
import pytest
from cryptography.fernet import Fernet

from gotaxy.sealing import InvalidToken, Sealer, key_path, load_key
from gotaxy.store import Store
from gotaxy.web.auth import TOTP_STEP, PanelAuth

from tests.test_store_migrations import load_old_release

#: The TOTP secret of the admin in tests/data/store-0.1.0.sql, stored there in plain text (32 base32
#: characters, as 0.1.0 made them with pyotp.random_base32).
OLD_SECRET = "U6PKNNF7T7QC6ISML36H3Z4TWZ4CHRDR"


def test_the_key_is_made_once_readable_only_by_the_server(tmp_path: Path) -> None:
    path = key_path(str(tmp_path))
    key = load_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(path) == key  # never overwritten
    assert key_path(str(tmp_path), "/etc/gotaxy/other.key") == "/etc/gotaxy/other.key"


def test_a_sealed_secret_opens_only_under_its_key() -> None:
    sealer = Sealer(Fernet.generate_key())
    sealed = sealer.seal(OLD_SECRET)
    assert OLD_SECRET not in sealed
    assert sealer.open(sealed) == OLD_SECRET
    with pytest.raises(InvalidToken):
        Sealer(Fernet.generate_key()).open(sealed)


def test_a_store_from_before_sealing_is_sealed_at_start_and_its_codes_still_work(empty_store_url: str,
                                                                                  tmp_path: Path) -> None:
    load_old_release(empty_store_url, tmp_path)
    store = Store(empty_store_url)  # migrates
    try:
        clock = SimpleNamespace(seconds=lambda: 1_900_000_000.0)
        sealer = Sealer.at(key_path(str(tmp_path)))
        auth = PanelAuth(SimpleNamespace(store=SimpleNamespace(store=store)), None, clock, sealer)
        assert auth.seal_plain_secrets() == 1
        row = store.db["web_totp"].find_one(username="admin")
        assert row["secret"] == "" and OLD_SECRET not in repr(row)
        assert sealer.open(row["sealed_secret"]) == OLD_SECRET
        assert auth.seal_plain_secrets() == 0  # nothing left in plain text
        code = pyotp.TOTP(OLD_SECRET).at(clock.seconds())
        assert auth._use_code("admin", code, clock.seconds())
        assert not auth._use_code("admin", code, clock.seconds())  # once only
        later = pyotp.TOTP(OLD_SECRET).at(clock.seconds() + TOTP_STEP)
        assert auth._use_code("admin", later, clock.seconds() + TOTP_STEP)
    finally:
        store.close()
