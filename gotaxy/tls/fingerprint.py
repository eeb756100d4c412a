# -*- test-case-name: tests.test_tls -*-
"""
Certificate fingerprints: the SHA-256 of the DER encoding of a certificate,
written C{SHA256:} followed by 64 upper-case hex digits, no colons.

A fingerprint is what a client pins (C{--fingerprint}, a join token, a line of
C{known_servers}) and what the server prints at start-up; L{normalise_fingerprint}
accepts the forms people paste.
"""

from __future__ import annotations

import hashlib
import re
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto

__all__ = [
    "AnyCertificate",
    "as_cryptography",
    "fingerprint_of_certificate",
    "issued_by",
    "normalise_fingerprint",
]

_FINGERPRINT_PREFIX = "SHA256:"
_HEX64 = re.compile(r"[0-9A-F]{64}")

AnyCertificate = Union[x509.Certificate, crypto.X509, bytes]


def as_cryptography(cert: AnyCertificate) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    if isinstance(cert, crypto.X509):
        return cert.to_cryptography()
    if isinstance(cert, (bytes, bytearray)):
        data = bytes(cert)
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    raise TypeError(f"not a certificate: {cert!r}")


def fingerprint_of_certificate(cert: AnyCertificate) -> str:
    """
    The canonical fingerprint, C{SHA256:} + 64 upper-case hex digits, of a
    certificate given as a L{cryptography.x509.Certificate}, an
    L{OpenSSL.crypto.X509} or DER bytes (PEM bytes are accepted too).
    """
    if isinstance(cert, (bytes, bytearray)) and not bytes(cert).lstrip().startswith(
        b"-----BEGIN"
    ):
        der = bytes(cert)
    else:
        der = as_cryptography(cert).public_bytes(serialization.Encoding.DER)
    return _FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest().upper()


def normalise_fingerprint(text: str) -> str:
    """
    Turn a fingerprint as a user may type it (C{SHA256:abcd...}, C{AB:CD:...},
    any case, surrounding blanks) into the canonical C{SHA256:ABCD...} form.

    @raise ValueError: if C{text} is not 32 bytes of hex.
    """
    digits = text.strip()
    if digits[: len(_FINGERPRINT_PREFIX)].upper() == _FINGERPRINT_PREFIX:
        digits = digits[len(_FINGERPRINT_PREFIX) :]
    digits = digits.replace(":", "").replace(" ", "").upper()
    if not _HEX64.fullmatch(digits):
        raise ValueError(
            f"{text!r} is not a certificate fingerprint; expected SHA256: followed "
            f"by 64 hex digits, as the server prints at start-up."
        )
    return _FINGERPRINT_PREFIX + digits


def issued_by(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether C{issuer} signed C{leaf} (names and signature; not the time)."""
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True
