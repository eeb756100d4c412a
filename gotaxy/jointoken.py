# -*- test-case-name: tests.test_jointoken -*-
"""
Join tokens: a client token that also says which server to trust.

A join token is three parts separated by dots::

    gtx1.<pin>.<secret>
    gtx1.q3Ow5B0s1bE2N9nWkFtS4h8y3F0e1b7UyvK2bq6D0pA.gtx_Rk1...

``gtx1``
    the format's name and version.
``pin``
    the SHA-256 of the DER encoding of the certificate the client must find
    in the server's TLS chain, in base64url without padding (43
    characters).  It is the CA Gotaxy creates at first start
    (``tls/ca.pem``) when the server uses the certificate it generated, so
    renewing the server's own certificate from that CA keeps every token
    valid; it is the server's certificate itself when the operator gave
    their own (``transport.tls.certFile``).  See
    ``gotaxy.tls.ServerVerifier`` for the check.
``secret``
    the token the server checks, as it is stored (a per-client token,
    ``gtx_...``, or the shared ``auth.token``).  The client sends only this
    part, and only after the server's certificate passed the pin.

Tokens that do not start with ``gtx`` and a version number and a dot are
old-style tokens: sent whole, with the server trusted on first use (or by
``--fingerprint`` / ``--ca``).  A generated token never contains a dot, so
no old token can be mistaken for a join token.
"""

from __future__ import annotations

import base64
import re

import attrs

__all__ = ["JoinToken", "JoinTokenError", "make_join_token", "parse_join_token"]

VERSION = "gtx1"
_VERSIONED = re.compile(r"gtx([0-9]+)\.")
_PIN = re.compile(r"[A-Za-z0-9_-]{43}")
_HEX64 = re.compile(r"[0-9A-F]{64}")
_FINGERPRINT_PREFIX = "SHA256:"


class JoinTokenError(ValueError):
    """A malformed join token; the message is one sentence saying what to do."""


@attrs.frozen
class JoinToken:
    """
    @ivar pin: the certificate fingerprint the token pins, ``SHA256:`` and
        64 upper-case hex digits (the form the server prints).
    @ivar secret: what the client sends to log in.
    """

    pin: str
    secret: str = attrs.field(repr=False)

    def __str__(self) -> str:
        return make_join_token(self.pin, self.secret)


def _pin_to_fingerprint(pin: str) -> str:
    digest = base64.urlsafe_b64decode(pin + "=")
    return _FINGERPRINT_PREFIX + digest.hex().upper()


def make_join_token(fingerprint: str, secret: str) -> str:
    """
    The join token for ``secret`` that pins ``fingerprint`` (``SHA256:HEX``,
    as ``gotaxy.tls`` writes it).
    """
    digits = fingerprint[len(_FINGERPRINT_PREFIX):] if fingerprint.startswith(_FINGERPRINT_PREFIX) else ""
    if not _HEX64.fullmatch(digits):
        raise ValueError(f"{fingerprint!r} is not a canonical SHA256:HEX fingerprint")
    if not secret:
        raise ValueError("a join token needs a secret")
    pin = base64.urlsafe_b64encode(bytes.fromhex(digits)).decode("ascii").rstrip("=")
    return f"{VERSION}.{pin}.{secret}"


def parse_join_token(text: str) -> JoinToken | None:
    """
    The join token ``text`` is, or L{None} if it is an old-style token.

    @raise JoinTokenError: if ``text`` starts like a join token but is not
        one; the message never contains the secret.
    """
    versioned = _VERSIONED.match(text)
    if versioned is None:
        return None
    if versioned.group(0) != VERSION + ".":
        raise JoinTokenError(
            f"this is a version {versioned.group(1)} join token (gtx{versioned.group(1)}.), which this "
            f"Gotaxy client does not understand; upgrade the client, or ask for a gtx1. token"
        )
    pin, dot, secret = text[len(VERSION) + 1:].partition(".")
    if not dot:
        raise JoinTokenError(
            "the join token is cut short: it must read gtx1.<server pin>.<secret>; copy the whole "
            "token the server printed"
        )
    fingerprint = _pin_to_fingerprint(pin) if _PIN.fullmatch(pin) else None
    if fingerprint is None or make_join_token(fingerprint, "x").split(".")[1] != pin:
        raise JoinTokenError(
            "the join token's server pin (between its first two dots) is not 43 base64url "
            "characters of a SHA-256 hash; copy the whole token the server printed"
        )
    if not secret or any(c.isspace() for c in secret):
        raise JoinTokenError(
            "the join token has no secret after its second dot (or one with blanks in it); copy the "
            "whole token the server printed"
        )
    return JoinToken(pin=fingerprint, secret=secret)
