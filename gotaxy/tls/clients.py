# -*- test-case-name: tests.test_client_certificates -*-
"""
Client certificates: issued from the server's own CA, presented by a client,
judged by the server.

Modes (server side)
-------------------
``transport.tls.trustedCaFile`` set: every client must present a certificate
that CA issued, and the certificate's subject common name (CN) is the
client's name.  With ``auth.method = "token"`` (frp's default) the client
needs a valid token too ("certificate and token"); ``auth.method =
"certificate"`` (Gotaxy's own value) asks for the certificate alone.  Not
set: tokens only, as before.

How a certificate is judged
---------------------------
The control port's TLS context asks every client for a certificate but lets
the handshake finish whatever it sends (OpenSSL still checks that the
client holds the certificate's private key: that is the handshake's
CertificateVerify signature).  The chain is judged afterwards, by
L{ClientCertificateVerifier.judge}, when the log-in message arrives.  Doing
it after the handshake, as the client does with the server's certificate
(L{gotaxy.tls.verify}), lets the server *tell* the client what is wrong over
the control connection (``login_failed``) instead of a TLS alert that says
"bad certificate" and nothing else, and count the refusal by reason.

The path is validated by OpenSSL itself (pyOpenSSL's C{X509StoreContext},
the same check as C{openssl verify}), not by cryptography's stricter Web PKI
profile, so certificates made with the C{openssl} command line as frp's
documentation shows are taken; its error codes are what tells a wrong CA
from an expired or a not-yet-valid certificate.  A certificate whose
extended key usage leaves out client authentication is refused here.
Revocation is not in the certificate: the server looks the serial up in the
store's revoked list (L{gotaxy.store.client_certs}).

Serial numbers are written as OpenSSL prints them (C{openssl x509 -serial}):
upper-case hex, two digits a byte, no colons; L{normalise_serial} accepts
other spellings.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, List, Optional, Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IReactorTime

from gotaxy.names import NAME_RULE, is_valid_name, shown
from gotaxy.tls.fingerprint import as_cryptography, fingerprint_of_certificate

__all__ = [
    "CERTIFICATE_REFUSALS",
    "ClientCertificate",
    "ClientCertificateRefused",
    "ClientCertificateVerifier",
    "ClientIdentity",
    "client_chain",
    "control_port_options",
    "IssuedCertificate",
    "issue_client_certificate",
    "load_client_identity",
    "normalise_serial",
    "request_client_certificates",
    "serial_text",
]

#: Why a certificate was refused (``ClientCertificateRefused.reason``, the ``/metrics`` label).
MISSING = "missing"
UNTRUSTED = "untrusted"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
REVOKED = "revoked"
BAD_NAME = "bad_name"
WRONG_USAGE = "wrong_usage"
CERTIFICATE_REFUSALS = (MISSING, UNTRUSTED, EXPIRED, NOT_YET_VALID, REVOKED, BAD_NAME, WRONG_USAGE)

#: How long ``gotaxy cert issue`` makes a certificate valid, by default.
DEFAULT_DAYS = 365
MAX_DAYS = 20 * 365
BACKDATE = datetime.timedelta(hours=1)
#: A certificate that starts at most this far in the server's future is taken (clocks differ a little).
CLOCK_SKEW = datetime.timedelta(minutes=5)

# OpenSSL's X509_V_ERR_* codes the refusal tells apart.
_NOT_YET_VALID_CODES = {9}  # CERT_NOT_YET_VALID
_EXPIRED_CODES = {10}  # CERT_HAS_EXPIRED

_SERIAL = re.compile(r"[0-9A-F]{1,64}")

#: What the client is told to do about its certificate, at the end of each refusal.
_GET_ONE = "ask the server's operator for a certificate ('gotaxy cert issue NAME' on the server) and point " \
           "transport.tls.certFile and transport.tls.keyFile in the client's config at it"


def serial_text(serial: int) -> str:
    """``serial`` as ``openssl x509 -serial`` prints it: upper-case hex, two digits a byte."""
    digits = format(serial, "X")
    return digits if len(digits) % 2 == 0 else "0" + digits


def normalise_serial(text: str) -> Optional[str]:
    """A serial as typed (any case, colons, ``0x``) in ``serial_text``'s form, or None if it is not hex."""
    digits = text.strip().upper().replace(":", "")
    if digits.startswith("0X"):
        digits = digits[2:]
    if not _SERIAL.fullmatch(digits):
        return None
    return serial_text(int(digits, 16))


def _day(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def common_name(cert: x509.Certificate) -> Optional[str]:
    """The subject's CN, or None if it has none (or not one CN)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        return None
    return names[0].value


@attrs.frozen
class ClientCertificate:
    """A client certificate the server accepted: who it names and how to find it again."""

    name: str  #: the subject's CN, the client's name
    serial: str  #: ``serial_text``
    fingerprint: str
    not_after: float  #: POSIX time it expires
    issuer: str  #: the issuer's name, RFC 4514

    def to_json(self) -> dict:
        return {"name": self.name, "serial": self.serial, "fingerprint": self.fingerprint,
                "notAfter": self.not_after, "issuer": self.issuer}


class ClientCertificateRefused(Exception):
    """
    A client's certificate (or the lack of one) is refused.  ``str()`` is what
    the client is told (the problem and what to do); ``log`` is the server's
    line; ``reason`` one of ``CERTIFICATE_REFUSALS``.
    """

    def __init__(self, reason: str, told: str, log: str, certificate: Optional[ClientCertificate] = None) -> None:
        super().__init__(told)
        self.reason = reason
        self.log = log
        self.certificate = certificate


def revoked_refusal(certificate: ClientCertificate) -> ClientCertificateRefused:
    """The refusal of a certificate found in the store's revoked list."""
    return ClientCertificateRefused(
        REVOKED,
        f"the client certificate {shown(certificate.name)} (serial {certificate.serial}) was revoked on the server; "
        f"{_GET_ONE}",
        f"certificate {shown(certificate.name)} (serial {certificate.serial}) is revoked",
        certificate,
    )


@attrs.define
class ClientCertificateVerifier:
    """
    The server's judge of client certificates: OpenSSL's path validation
    against the CAs in ``ca_file`` (``transport.tls.trustedCaFile``), at the
    time ``clock`` says, and a CN that is a valid client name.

    @raise ValueError: on construction, if ``ca_file`` cannot be read or
        holds no certificate.
    """

    ca_file: str
    clock: Optional[IReactorTime] = attrs.field(default=None, eq=False, repr=False)
    cas: List[x509.Certificate] = attrs.field(init=False, factory=list, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.cas = load_cas(self.ca_file, "transport.tls.trustedCaFile")

    def _now(self) -> datetime.datetime:
        if self.clock is None:
            return datetime.datetime.now(datetime.timezone.utc)
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)

    def _verify(self, certs: List[x509.Certificate], now: datetime.datetime) -> None:
        """OpenSSL's path validation at ``now``, forgiving a client clock up to ``CLOCK_SKEW`` ahead."""
        try:
            self._verify_at(certs, now)
        except crypto.X509StoreContextError as e:
            start = certs[0].not_valid_before_utc
            if e.errors[:2] == [9, 0] and start <= now + CLOCK_SKEW:
                # A certificate made a moment ago on a machine whose clock is a little ahead.
                self._verify_at(certs, start)
            else:
                raise

    def _verify_at(self, certs: List[x509.Certificate], moment: datetime.datetime) -> None:
        store = crypto.X509Store()
        for ca in self.cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
        store.set_time(moment.replace(tzinfo=None))
        crypto.X509StoreContext(
            store, crypto.X509.from_cryptography(certs[0]), [crypto.X509.from_cryptography(c) for c in certs[1:]]
        ).verify_certificate()

    def judge(self, chain: Sequence[Any]) -> ClientCertificate:
        """
        The certificate a client presented (leaf first, as ``peer_chain``
        gives it), if it is to be accepted.

        @raise ClientCertificateRefused: if it is not, saying why.
        """
        if not chain:
            raise ClientCertificateRefused(
                MISSING, f"this server requires a client certificate and none was sent; {_GET_ONE}",
                "no client certificate sent",
            )
        certs = [as_cryptography(c) for c in chain]
        leaf = certs[0]
        name = common_name(leaf)
        accepted = ClientCertificate(
            name=name or "", serial=serial_text(leaf.serial_number), fingerprint=fingerprint_of_certificate(leaf),
            not_after=leaf.not_valid_after_utc.timestamp(), issuer=leaf.issuer.rfc4514_string()[:200],
        )
        cn = shown(name) if name else "without a CN"
        what = f"the client certificate {cn} (serial {accepted.serial})"
        now = self._now()
        try:
            self._verify(certs, now)
            if leaf.not_valid_after_utc <= now:  # when verified at a skewed moment below
                raise crypto.X509StoreContextError("certificate has expired", [10, 0, "certificate has expired"], None)
        except crypto.X509StoreContextError as e:
            code, depth, text = (list(e.errors) + [0, 0, str(e)])[:3]
            at_fault = "" if depth == 0 else " (its issuing CA's certificate)"
            if code in _EXPIRED_CODES:
                expiry = leaf.not_valid_after_utc if depth == 0 else None
                when = f" on {_day(expiry)}" if expiry is not None else ""
                raise ClientCertificateRefused(
                    EXPIRED, f"{what}{at_fault} expired{when}; {_GET_ONE}",
                    f"certificate {cn} (serial {accepted.serial}) expired{at_fault}{when}", accepted,
                ) from None
            if code in _NOT_YET_VALID_CODES:
                start = leaf.not_valid_before_utc
                raise ClientCertificateRefused(
                    NOT_YET_VALID,
                    f"{what}{at_fault} is not valid yet (from {_day(start)}, and the server's clock says "
                    f"{_day(now)}); check the clocks of this machine and of the server",
                    f"certificate {cn} (serial {accepted.serial}) not valid until {_day(start)}", accepted,
                ) from None
            raise ClientCertificateRefused(
                UNTRUSTED,
                f"the server does not trust {what}, issued by {shown(accepted.issuer)} ({text}): it was not issued by "
                f"the CA in the server's transport.tls.trustedCaFile; {_GET_ONE}",
                f"certificate {cn} (serial {accepted.serial}, issuer {shown(accepted.issuer)}) not issued by a CA in "
                f"{self.ca_file}: {text}", accepted,
            ) from None
        try:
            usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and not ({ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
                                      & set(usage)):
            raise ClientCertificateRefused(
                WRONG_USAGE,
                f"{what} is not for client authentication (its extended key usage lacks clientAuth); {_GET_ONE}",
                f"certificate {cn} (serial {accepted.serial}) lacks the clientAuth extended key usage", accepted,
            )
        from gotaxy.tls.cluster import node_name_of  # the server's check only: a client never imports the cluster's identity

        if node_name_of(leaf) is not None:
            # The same CA signs the cluster's node certificates (gotaxy.tls.cluster): those are for
            # node-to-node connections, never a client's log-in.
            raise ClientCertificateRefused(
                WRONG_USAGE,
                f"{what} is a cluster node's certificate, not a client's; {_GET_ONE}",
                f"certificate {cn} (serial {accepted.serial}) is a node certificate, not a client certificate",
                accepted,
            )
        if name is None or not is_valid_name(name):
            raise ClientCertificateRefused(
                BAD_NAME,
                f"{what} has no subject CN that is a client name ({NAME_RULE}), and the CN is the client's name; "
                f"{_GET_ONE}",
                f"certificate {cn} (serial {accepted.serial}) has no valid client name as its CN", accepted,
            )
        return accepted


def load_cas(path: str, key: str) -> List[x509.Certificate]:
    """The PEM certificates in ``path``; ValueError naming ``key`` and the file otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read(4 * 2**20)
    except OSError as e:
        raise ValueError(f"'{key}': cannot read {path} ({e.strerror}); check the path and its permissions") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(
            f"'{key}': {path} holds no PEM certificate; give the CA's certificate (for Gotaxy's own CA, "
            f"DATA_DIR/tls/ca.pem)"
        ) from None


def request_client_certificates(options: ssl.CertificateOptions, ca_file: str) -> None:
    """
    Make the control port's TLS options ask each client for a certificate
    (naming the CAs in ``ca_file`` as the ones it should come from) and let the handshake
    finish whatever the client sends: ``ClientCertificateVerifier.judge``
    decides at log-in, where the refusal can be told.
    """
    context: SSL.Context = options.getContext()  # built once and kept by the options: every connection uses it

    def accept_for_now(connection: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        return True

    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE, accept_for_now)
    context.load_client_ca(ca_file.encode())


def client_chain(tls_transport: Any) -> List[x509.Certificate]:
    """
    The certificates a client presented, leaf first, on the server's end of
    a TLS transport (empty if none).  Unlike the client's end
    (``gotaxy.tls.verify.peer_chain``), OpenSSL's peer chain on a server
    leaves out the peer's own certificate, so it is put in front here.
    """
    getHandle = getattr(tls_transport, "getHandle", None)
    if getHandle is None:
        return []
    connection: SSL.Connection = getHandle()
    leaf = connection.get_peer_certificate(as_cryptography=True)
    if leaf is None:
        return []
    rest = list(connection.get_peer_cert_chain(as_cryptography=True) or [])
    if rest and rest[0] == leaf:
        rest = rest[1:]
    return [leaf, *rest]


def control_port_options(options: ssl.CertificateOptions,
                         verifier: Optional["ClientCertificateVerifier"]) -> ssl.CertificateOptions:
    """The control port's TLS ``options``, asking for client certificates when ``verifier`` is given."""
    if verifier is not None:
        request_client_certificates(options, verifier.ca_file)
    return options


# ---------------------------------------------------------------------------
# The client's side


@attrs.frozen
class ClientIdentity:
    """The certificate (and chain) and key a client presents, from ``transport.tls.certFile`` / ``keyFile``."""

    certificates: tuple
    key: Any = attrs.field(repr=False)

    @property
    def name(self) -> Optional[str]:
        return common_name(self.certificates[0])

    @property
    def serial(self) -> str:
        return serial_text(self.certificates[0].serial_number)


def load_client_identity(cert_file: str, key_file: str) -> ClientIdentity:
    """
    Read the client's certificate and key.

    @raise ValueError: a sentence naming the file at fault and the fix.
    """
    from gotaxy.tls.credentials import _read_pair

    certs, key = _read_pair(cert_file, key_file)
    return ClientIdentity(certificates=tuple(certs), key=key)


# ---------------------------------------------------------------------------
# Issuing from the server's CA


@attrs.frozen
class IssuedCertificate:
    """A certificate ``issue_client_certificate`` made, with the only copy of its key."""

    name: str
    serial: str
    fingerprint: str
    not_before: float
    not_after: float
    certificate_pem: bytes
    key_pem: bytes = attrs.field(repr=False)


def issue_client_certificate(tls_dir: str, name: str, days: int = DEFAULT_DAYS,
                             now: Optional[datetime.datetime] = None) -> IssuedCertificate:
    """
    A new key and a certificate for client ``name`` (its CN), signed by the
    CA in ``tls_dir`` (created there if it is not, as the server does at its
    first start), valid for ``days``.  Blocking file I/O: call it off the
    reactor thread.

    @raise ValueError: if ``name`` is not a client name, ``days`` is out of
        range, or the CA's files cannot be used.
    """
    from gotaxy.tls.credentials import _load_or_create_ca, _private_key_pem
    from gotaxy.tls.files import make_private_dir

    if not is_valid_name(name):
        raise ValueError(
            f"a client name must be {NAME_RULE} (got {shown(name)})")
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"--days must be from 1 to {MAX_DAYS} (got {days})")
    make_private_dir(tls_dir)
    ca_cert, ca_key = _load_or_create_ca(tls_dir)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    not_before, not_after = now - BACKDATE, now + datetime.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return IssuedCertificate(
        name=name,
        serial=serial_text(cert.serial_number),
        fingerprint=fingerprint_of_certificate(cert),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=_private_key_pem(key),
    )
