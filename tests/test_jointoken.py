"""Tests for gotaxy.jointoken: the gtx1.PIN.SECRET format."""

from __future__ import annotations

import pytest

from gotaxy.config import ClientConfig, ConfigError
from gotaxy.jointoken import JoinToken, JoinTokenError, make_join_token, parse_join_token

FINGERPRINT = "SHA256:" + "0123456789ABCDEF" * 4
SECRET = "gtx_" + "s" * 43
TOKEN = make_join_token(FINGERPRINT, SECRET)
PIN = TOKEN.split(".")[1]


def test_round_trip():
    assert TOKEN.startswith("gtx1.")
    assert len(PIN) == 43
    assert parse_join_token(TOKEN) == JoinToken(pin=FINGERPRINT, secret=SECRET)
    assert str(parse_join_token(TOKEN)) == TOKEN


def test_the_secret_may_hold_dots_and_stays_out_of_repr():
    token = parse_join_token(make_join_token(FINGERPRINT, "shared.token.with.dots"))
    assert token.secret == "shared.token.with.dots"
    assert "shared" not in repr(token)


@pytest.mark.parametrize("old", [SECRET, "change-me", "frp.shared.token", "gtx_a.b.c", "GTX1.x.y", "gtx.a.b"])
def test_old_style_tokens_are_not_join_tokens(old):
    assert parse_join_token(old) is None
    assert ClientConfig(token=old).login_secret == old
    assert ClientConfig(token=old).join_token is None


def test_the_client_sends_only_the_secret():
    config = ClientConfig(token=TOKEN)
    assert config.login_secret == SECRET
    assert config.join_token.pin == FINGERPRINT


CUT_SHORT = ("the join token is cut short: it must read gtx1.<server pin>.<secret>; copy the whole token the "
             "server printed")
BAD_PIN = ("the join token's server pin (between its first two dots) is not 43 base64url characters of a "
           "SHA-256 hash; copy the whole token the server printed")
NO_SECRET = ("the join token has no secret after its second dot (or one with blanks in it); copy the whole "
             "token the server printed")


@pytest.mark.parametrize(
    "text, message",
    [
        ("gtx1.", CUT_SHORT),
        ("gtx1." + PIN, CUT_SHORT),
        ("gtx1.." + SECRET, BAD_PIN),
        ("gtx1." + PIN[:-1] + "." + SECRET, BAD_PIN),  # one character lost
        ("gtx1." + PIN + "A." + SECRET, BAD_PIN),  # one too many
        ("gtx1." + PIN[:-1] + "+." + SECRET, BAD_PIN),  # not base64url
        ("gtx1." + PIN[:-1] + "t." + SECRET, BAD_PIN),  # 43 characters, but not of 32 bytes
        ("gtx1." + PIN + ".", NO_SECRET),
        ("gtx1." + PIN + ".gtx_a b", NO_SECRET),
        ("gtx2." + PIN + "." + SECRET,
         "this is a version 2 join token (gtx2.), which this Gotaxy client does not understand; upgrade the "
         "client, or ask for a gtx1. token"),
    ],
)
def test_malformed_join_tokens_get_one_clear_sentence(text, message):
    with pytest.raises(JoinTokenError) as caught:
        parse_join_token(text)
    assert str(caught.value) == message
    with pytest.raises(ConfigError) as config_error:
        ClientConfig(token=text)
    assert str(config_error.value) == f"'auth.token' (--token): {message}"
    assert SECRET not in str(config_error.value)


def test_make_join_token_wants_a_canonical_fingerprint():
    with pytest.raises(ValueError):
        make_join_token("AB" * 32, SECRET)
    with pytest.raises(ValueError):
        make_join_token(FINGERPRINT, "")
