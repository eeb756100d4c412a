# -*- test-case-name: tests.test_tls -*-
"""
TLS identity for the control connection: server credentials and client checks.

Server side
-----------
On first start, L{load_or_create_server_credentials} creates, in C{tls_dir}
(mode 0700)::

    ca.pem, ca.key          a self-signed CA, valid 20 years
    server.pem, server.key  the server certificate signed by that CA, 10 years

Keys are ECDSA P-256 (cheap handshakes), signatures SHA-256, private keys are
written with mode 0600 and every file is written to a temporary name and then
C{os.replace}d, so a crash never leaves a half-written key behind.
C{server.pem} is written last and is the marker: if it exists the files are
loaded, otherwise the server certificate is (re)generated, reusing the CA
when both C{ca.pem} and C{ca.key} exist.

The server certificate is deliberately long-lived and is never renewed
automatically: clients pin its fingerprint (explicitly or by trust on first
use), so a new certificate would break every pin.  To rotate it, delete
C{server.pem} and C{server.key}, restart, and give clients the new
fingerprint.  Join tokens (L{gotaxy.jointoken}) pin the CA instead
(L{ServerCredentials.join_pin}), so they survive such a rotation as long as
C{ca.pem} and C{ca.key} are kept.  Users with their own certificate (a PEM file, optionally
followed by its chain, and an unencrypted PEM key) pass both files instead;
then nothing is generated.

The fingerprint is the SHA-256 of the DER encoding of the leaf certificate,
written C{SHA256:} followed by 64 upper-case hex digits, no colons.

Client side
-----------
The client's TLS context does not verify anything (VERIFY_NONE, TLS 1.2 or
later, SNI when the server name is a DNS name).  Instead, after the handshake
and before any secret is sent, the control protocol hands the certificate
chain the server presented (see L{peer_chain}) to L{ServerVerifier.verify},
which applies exactly one policy:

 1. pinned fingerprint: the leaf's fingerprint must equal the pin; a join
    token's pin must be the leaf's fingerprint, or that of a certificate in
    the chain the server sent that directly issued the leaf (the CA Gotaxy
    generated), both valid now;
 2. CA file: the chain must lead to a CA in the file and the leaf must be
    valid now and for the server name (DNS name or IP address);
 3. neither (the default): trust on first use, as SSH does.  A
    C{known_servers} file holds lines C{host:port SHA256:HEX} (IPv6 hosts in
    brackets).  An unknown server is recorded and accepted with a warning; a
    known one must present the recorded fingerprint;
 4. insecure: anything is accepted (the caller warns loudly).

A pin, a join token's pin and a CA file may be combined, in which case all
must pass; with insecure, a join token's pin is not checked.  Every
refusal raises L{ServerIdentityError} with one sentence that names the server
and says what to do.  Doing the check ourselves, after the handshake, lets
all four policies share one code path and one error style, instead of
OpenSSL's verify callback, which can only say "certificate verify failed".
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import os
import re
import socket
import tempfile
from typing import Any, Sequence, Union

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

__all__ = [
    "KNOWN_SERVERS_FILENAME",
    "ServerCredentials",
    "ServerIdentityError",
    "ServerVerifier",
    "fingerprint_of_certificate",
    "load_or_create_server_credentials",
    "normalise_fingerprint",
    "peer_chain",
]

log = Logger()

KNOWN_SERVERS_FILENAME = "known_servers"

CA_CERT_FILENAME = "ca.pem"
CA_KEY_FILENAME = "ca.key"
SERVER_CERT_FILENAME = "server.pem"
SERVER_KEY_FILENAME = "server.key"

CA_VALIDITY = datetime.timedelta(days=20 * 365 + 5)
SERVER_VALIDITY = datetime.timedelta(days=10 * 365 + 3)
# Start validity a little in the past so that a client whose clock is behind
# does not see a certificate from the future.
BACKDATE = datetime.timedelta(hours=1)

_FINGERPRINT_PREFIX = "SHA256:"
_HEX64 = re.compile(r"[0-9A-F]{64}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

AnyCertificate = Union[x509.Certificate, crypto.X509, bytes]


class ServerIdentityError(Exception):
    """
    The server's certificate could not be trusted; the message says why and
    what to do about it.
    """


# ---------------------------------------------------------------------------
# Fingerprints


def _as_cryptography(cert: AnyCertificate) -> x509.Certificate:
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
        der = _as_cryptography(cert).public_bytes(serialization.Encoding.DER)
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


# ---------------------------------------------------------------------------
# Names


def _ip_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _is_dns_name(name: str, *, allow_wildcard: bool = False) -> bool:
    """
    Whether C{name} is a syntactically valid (ASCII) DNS host name.
    """
    if _ip_address(name) is not None:
        return False
    name = name[:-1] if name.endswith(".") else name
    if allow_wildcard and name.startswith("*."):
        name = name[2:]
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    # An all-numeric last label would look like a mangled IPv4 address.
    if labels[-1].isdigit():
        return False
    return all(_DNS_LABEL.fullmatch(label) for label in labels)


def _ascii_host(name: str) -> str | None:
    """
    The IDNA (ASCII) form of a DNS name, lower-case, or L{None} if it has none.
    """
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    ascii_name = ascii_name.lower().rstrip(".")
    return ascii_name if _is_dns_name(ascii_name) else None


def _strip_brackets(name: str) -> str:
    name = name.strip()
    if name.startswith("[") and name.endswith("]"):
        return name[1:-1]
    return name


# ---------------------------------------------------------------------------
# Server credentials


@attrs.frozen
class ServerCredentials:
    """
    The certificate and key the server presents.

    @ivar certificate_pem: the leaf certificate followed by its chain, PEM.
    @ivar key_pem: the unencrypted private key, PEM.
    @ivar fingerprint: the leaf's canonical fingerprint.
    @ivar generated: whether the certificate was created by this call.
    @ivar ca_fingerprint: the fingerprint of the CA Gotaxy generated, if it
        issued the leaf; L{None} for the operator's own certificate.
    """

    certificate_pem: bytes
    key_pem: bytes
    fingerprint: str
    generated: bool
    ca_fingerprint: str | None = None

    @property
    def join_pin(self) -> str:
        """
        The fingerprint join tokens carry: the generated CA's, which outlives
        the server certificate it issues, or else the leaf's.
        """
        return self.ca_fingerprint or self.fingerprint

    def server_context(self) -> ssl.CertificateOptions:
        """
        TLS options (1.2 or later) presenting the leaf and its chain.
        """
        certs = x509.load_pem_x509_certificates(self.certificate_pem)
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        return server_tls_options(certs, key)


#: The TLS 1.2 suites a Gotaxy server accepts, on the control port and on the
#: HTTPS panel: forward-secret key exchange (ECDHE) with an AEAD cipher only;
#: no static RSA key exchange, no CBC, no SHA-1 MAC.  TLS 1.3 (preferred when
#: both ends have it) has only such suites.
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


def server_tls_options(certs: Sequence[x509.Certificate], key: Any) -> ssl.CertificateOptions:
    """TLS 1.2 or later with ``MODERN_CIPHERS``, presenting ``certs[0]`` and its chain."""
    # pyOpenSSL takes cryptography objects directly (and deprecates its
    # own X509/PKey); Twisted hands them through to it unchanged.
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=certs[0],  # type: ignore[arg-type]
        extraCertChain=list(certs[1:]),  # type: ignore[arg-type]
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(MODERN_CIPHERS),
    )


def load_server_tls_options(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """
    ``server_tls_options`` for a PEM certificate (chain) and key given by the
    operator, such as the panel's ``webServer.tls`` files.

    @raise ValueError: with a sentence naming the file at fault.
    """
    certs, key = _read_pair(cert_path, key_path)
    return server_tls_options(certs, key)


def load_or_create_server_credentials(
    tls_dir: str,
    cert_file: str | None = None,
    key_file: str | None = None,
    extra_names: Sequence[str] = (),
) -> ServerCredentials:
    """
    Load the server's certificate and key, creating them on first use.

    With C{cert_file} and C{key_file} (the user's own PEM files; the
    certificate file may hold the chain after the leaf) those are used as
    they are and C{tls_dir} is not touched.  Otherwise the files in
    C{tls_dir} are loaded, or generated if absent; see the module docstring.
    C{extra_names} (DNS names or IP addresses) are added to the subject
    alternative names of a newly generated certificate; an existing one is
    never changed, because clients have pinned it.

    This does blocking file I/O and key generation; call it at start-up,
    before the reactor runs.

    @raise ValueError: if the user's files are missing, unreadable, malformed
        or do not belong together, or if an extra name is not a DNS name or
        IP address.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError(
            "A TLS certificate and its private key must be given together; "
            "pass both files, or neither to use the generated ones."
        )
    if cert_file is not None and key_file is not None:
        return _load_pair(cert_file, key_file, generated=False)

    names = _validate_names(extra_names)
    server_cert = os.path.join(tls_dir, SERVER_CERT_FILENAME)
    server_key = os.path.join(tls_dir, SERVER_KEY_FILENAME)
    if os.path.exists(server_cert):
        credentials = _load_pair(server_cert, server_key, generated=False)
        _warn_missing_names(credentials, names, tls_dir)
        return attrs.evolve(credentials, ca_fingerprint=_generated_ca_fingerprint(tls_dir, credentials))

    _make_private_dir(tls_dir)
    ca_cert, ca_key = _load_or_create_ca(tls_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue_server_certificate(key, ca_cert, ca_key, names)
    key_pem = _private_key_pem(key)
    chain_pem = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(
        serialization.Encoding.PEM
    )
    _write_atomically(server_key, key_pem, 0o600)
    _write_atomically(server_cert, chain_pem, 0o644)
    return ServerCredentials(
        certificate_pem=chain_pem,
        key_pem=key_pem,
        fingerprint=fingerprint_of_certificate(cert),
        generated=True,
        ca_fingerprint=fingerprint_of_certificate(ca_cert),
    )


def _generated_ca_fingerprint(tls_dir: str, credentials: ServerCredentials) -> str | None:
    """The fingerprint of C{tls_dir}'s C{ca.pem} if it issued the server's certificate."""
    try:
        with open(os.path.join(tls_dir, CA_CERT_FILENAME), "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return None
    leaf = x509.load_pem_x509_certificate(credentials.certificate_pem)
    return fingerprint_of_certificate(ca) if _issued_by(leaf, ca) else None


def _issued_by(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether C{issuer} signed C{leaf} (names and signature; not the time)."""
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _validate_names(extra_names: Sequence[str]) -> list[str]:
    names = []
    for raw in extra_names:
        name = _strip_brackets(raw)
        if _ip_address(name) is None:
            ascii_name = _ascii_host(name.removeprefix("*."))
            if ascii_name is None:
                raise ValueError(
                    f"{raw!r} is neither a DNS name nor an IP address; fix or "
                    f"remove it from the server's extra certificate names."
                )
            name = ("*." if name.startswith("*.") else "") + ascii_name
        names.append(name)
    return names


def _subject_alternative_names(extra_names: Sequence[str]) -> list[x509.GeneralName]:
    dns: list[str] = ["localhost"]
    fqdn = _ascii_host(socket.getfqdn())
    if fqdn is not None:
        dns.append(fqdn)
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    for name in extra_names:
        address = _ip_address(name)
        if address is not None:
            ips.append(address)
        else:
            dns.append(name)
    general: list[x509.GeneralName] = [
        x509.DNSName(d) for d in dict.fromkeys(dns)  # dedupe, keep order
    ]
    general += [x509.IPAddress(a) for a in dict.fromkeys(ips)]
    return general


def _common_name(text: str) -> x509.Name:
    # CN is limited to 64 characters; it is only for humans reading the cert.
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text[:64])])


def _load_or_create_ca(
    tls_dir: str,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert_path = os.path.join(tls_dir, CA_CERT_FILENAME)
    ca_key_path = os.path.join(tls_dir, CA_KEY_FILENAME)
    if os.path.exists(ca_cert_path) and os.path.exists(ca_key_path):
        certs, key = _read_pair(ca_cert_path, ca_key_path)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return certs[0], key
        raise ValueError(
            f"The CA key {ca_key_path} is not an ECDSA key; remove {ca_cert_path} "
            f"and {ca_key_path} to have a new CA generated."
        )

    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _common_name(f"Gotaxy CA {_ascii_host(socket.getfqdn()) or 'localhost'}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    _write_atomically(ca_key_path, _private_key_pem(key), 0o600)
    _write_atomically(ca_cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _issue_server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    extra_names: Sequence[str],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = _subject_alternative_names(extra_names)
    # Name the certificate after the host's own name (or the first extra
    # one) rather than "localhost", for people reading it in a browser.
    dns_names = [n.value for n in sans if isinstance(n, x509.DNSName)]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return (
        x509.CertificateBuilder()
        .subject_name(_common_name(dns_names[1] if len(dns_names) > 1 else dns_names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _warn_missing_names(
    credentials: ServerCredentials, names: Sequence[str], tls_dir: str
) -> None:
    if not names:
        return
    leaf = x509.load_pem_x509_certificate(credentials.certificate_pem)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        present: set[str] = set()
    else:
        present = {d.lower() for d in san.get_values_for_type(x509.DNSName)}
        present |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    missing = []
    for name in names:
        address = _ip_address(name)
        if (str(address) if address is not None else name) not in present:
            missing.append(name)
    if missing:
        log.warn(
            "The existing server certificate in {tls_dir} does not cover {missing}; "
            "it is kept because clients pin it.  To include them, delete "
            "server.pem and server.key there and restart (the fingerprint will "
            "change).",
            tls_dir=tls_dir,
            missing=", ".join(missing),
        )


def _private_key_pem(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read_pair(cert_path: str, key_path: str) -> tuple[list[x509.Certificate], Any]:
    """
    Read a PEM certificate chain and the private key of its first certificate.

    @raise ValueError: with a sentence naming the file at fault.
    """
    try:
        with open(cert_path, "rb") as f:
            cert_data = f.read()
    except OSError as e:
        raise ValueError(
            f"Cannot read the TLS certificate file {cert_path} ({e.strerror}); "
            f"check the path and its permissions."
        ) from None
    try:
        with open(key_path, "rb") as f:
            key_data = f.read()
    except OSError as e:
        raise ValueError(
            f"Cannot read the TLS key file {key_path} ({e.strerror}); "
            f"check the path and its permissions."
        ) from None
    try:
        certs = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise ValueError(
            f"{cert_path} does not contain a PEM certificate; give a file that "
            f"starts with -----BEGIN CERTIFICATE-----."
        ) from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise ValueError(
            f"The TLS key {key_path} is encrypted; give an unencrypted key "
            f"(for example from 'openssl pkey -in {key_path}')."
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(
            f"{key_path} does not contain a PEM private key; give the key that "
            f"belongs to {cert_path}."
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certs[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ValueError(
            f"The TLS key {key_path} does not belong to the certificate {cert_path}; "
            f"give the key the certificate was issued for."
        )
    return certs, key


def _load_pair(cert_path: str, key_path: str, *, generated: bool) -> ServerCredentials:
    certs, key = _read_pair(cert_path, key_path)
    return ServerCredentials(
        certificate_pem=b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in certs
        ),
        key_pem=_private_key_pem(key),
        fingerprint=fingerprint_of_certificate(certs[0]),
        generated=generated,
    )


def _make_private_dir(path: str) -> None:
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        # makedirs is subject to the umask only for looser bits; be explicit.
        os.chmod(path, 0o700)


def _write_atomically(path: str, data: bytes, mode: int) -> None:
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


# ---------------------------------------------------------------------------
# Client side


def peer_chain(tls_transport: Any) -> list[x509.Certificate]:
    """
    The certificates the peer presented on a TLS transport, leaf first.

    Call it from C{handshakeCompleted} with the protocol's C{self.transport}
    (a L{TLSMemoryBIOProtocol}, whose C{getHandle()} is the
    L{OpenSSL.SSL.Connection}).  Returns an empty list if nothing was
    presented.
    """
    connection: SSL.Connection = tls_transport.getHandle()
    chain = connection.get_peer_cert_chain(as_cryptography=True)
    if chain:
        return list(chain)
    leaf = connection.get_peer_certificate(as_cryptography=True)
    return [leaf] if leaf is not None else []


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientCreator:
    """
    Client connections that accept any certificate during the handshake;
    L{ServerVerifier.verify} judges it afterwards.
    """

    def __init__(self, server_name: str) -> None:
        self._options = ssl.CertificateOptions(
            verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2
        )
        ascii_name = _ascii_host(server_name)
        self._sni = ascii_name.encode("ascii") if ascii_name is not None else None

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


def _known_servers_key(host: str, port: int) -> str:
    address = _ip_address(host)
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address.compressed}]:{port}"
    if address is not None:
        return f"{address}:{port}"
    return f"{(_ascii_host(host) or host).lower()}:{port}"


def _to_server_name(value: str) -> str:
    return _strip_brackets(value)


def _to_fingerprint(value: str | None) -> str | None:
    return None if value is None else normalise_fingerprint(value)


@attrs.define
class ServerVerifier:
    """
    Decide whether the certificate a server presented is the right one.

    @ivar server_name: the host as the user typed it (DNS name or IP).
    @ivar server_port: the control port; with the host it keys
        C{known_servers}.
    @ivar fingerprint: a pinned fingerprint, in any form
        L{normalise_fingerprint} accepts.
    @ivar ca_file: a PEM file of CA certificates the server's chain must
        lead to.
    @ivar insecure: accept any certificate.
    @ivar known_servers_path: the trust-on-first-use file, required when
        none of the above is given.
    @ivar clock: where the current time comes from for CA checks; the wall
        clock if L{None}.
    @ivar join_pin: the fingerprint a join token carries (L{gotaxy.jointoken}):
        the server's leaf or the CA that issued it.

    @raise ValueError: on construction, if the options contradict each other,
        the fingerprint is malformed, or the CA file cannot be used.
    """

    server_name: str = attrs.field(converter=_to_server_name)
    server_port: int
    fingerprint: str | None = attrs.field(default=None, converter=_to_fingerprint)
    ca_file: str | None = None
    insecure: bool = False
    known_servers_path: str | None = None
    clock: IReactorTime | None = attrs.field(default=None, eq=False, repr=False)
    join_pin: str | None = attrs.field(default=None, converter=_to_fingerprint)
    _trusted_cas: list[x509.Certificate] = attrs.field(
        init=False, factory=list, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        if self.insecure and (self.fingerprint is not None or self.ca_file is not None):
            raise ValueError(
                "--insecure turns off the server check that --fingerprint and --ca "
                "ask for; use one or the other."
            )
        if self.ca_file is not None:
            self._trusted_cas = self._load_cas(self.ca_file)
            if _ip_address(self.server_name) is None and _ascii_host(
                self.server_name
            ) is None:
                raise ValueError(
                    f"{self.server_name!r} is neither a DNS name nor an IP address, "
                    f"so it cannot be checked against --ca; fix the server address."
                )
        if self._mode == "tofu" and self.known_servers_path is None:
            raise ValueError(
                f"No way to check the identity of {self._label}; pass --fingerprint "
                f"or --ca, or give the client a data directory for known_servers."
            )

    @property
    def _mode(self) -> str:
        if self.insecure:
            return "insecure"
        if self.fingerprint is not None or self.ca_file is not None or self.join_pin is not None:
            return "explicit"
        return "tofu"

    @property
    def _label(self) -> str:
        return _known_servers_key(self.server_name, self.server_port)

    @staticmethod
    def _load_cas(path: str) -> list[x509.Certificate]:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(
                f"Cannot read the CA file {path} ({e.strerror}); check the --ca path."
            ) from None
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ValueError(
                f"The CA file {path} holds no PEM certificate; give the server's "
                f"ca.pem or your CA's certificate."
            ) from None

    def connection_creator(self) -> IOpenSSLClientConnectionCreator:
        """
        The TLS client options: TLS 1.2 or later, SNI for DNS names, and no
        verification during the handshake; call L{verify} right after it.
        """
        return _UnverifiedClientCreator(self.server_name)

    def verify(self, peer_chain: Sequence[x509.Certificate | crypto.X509]) -> str:
        """
        Check the chain the server presented (leaf first).

        @return: the leaf's fingerprint.
        @raise ServerIdentityError: if the server is not to be trusted.
        """
        chain = [_as_cryptography(c) for c in peer_chain]
        if not chain:
            raise ServerIdentityError(
                f"Server {self._label} presented no TLS certificate; check that "
                f"the address points at a Gotaxy server."
            )
        presented = fingerprint_of_certificate(chain[0])
        mode = self._mode
        if mode == "insecure":
            return presented
        if mode == "tofu":
            self._check_known_servers(presented)
            return presented
        if self.fingerprint is not None and not hmac.compare_digest(
            presented, self.fingerprint
        ):
            raise ServerIdentityError(
                f"Server {self._label} presented certificate {presented}, not the "
                f"pinned {self.fingerprint}; check --fingerprint against the one "
                f"the server prints at start-up."
            )
        if self.join_pin is not None:
            self._check_join_pin(chain, presented)
        if self.ca_file is not None:
            self._check_ca(chain)
        return presented

    def _check_join_pin(self, chain: list[x509.Certificate], presented: str) -> None:
        pin = self.join_pin
        assert pin is not None
        if hmac.compare_digest(presented, pin):
            return
        now = self._now()
        for issuer in chain[1:]:
            if not hmac.compare_digest(fingerprint_of_certificate(issuer), pin):
                continue
            if not _issued_by(chain[0], issuer):
                raise ServerIdentityError(
                    f"Server {self._label} sent the CA {pin} that the join token pins, but its "
                    f"certificate {presented} was not issued by it; someone may be intercepting "
                    f"the connection."
                )
            for cert, what in ((chain[0], "certificate"), (issuer, "CA")):
                if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                    raise ServerIdentityError(
                        f"Server {self._label}'s {what} {fingerprint_of_certificate(cert)} is not "
                        f"valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                        f"{cert.not_valid_after_utc:%Y-%m-%d}); check this machine's clock."
                    )
            return
        sent = (
            f"certificate {presented} issued by {fingerprint_of_certificate(chain[1])}"
            if len(chain) > 1
            else f"certificate {presented}"
        )
        raise ServerIdentityError(
            f"Server {self._label} presented {sent}, but the join token pins {pin}; the token was "
            f"made for another server or someone is intercepting the connection, so nothing was "
            f"sent: check --server, or get a new token from this server's 'gotaxy token create'."
        )

    def _now(self) -> datetime.datetime:
        if self.clock is None:
            return datetime.datetime.now(datetime.timezone.utc)
        return datetime.datetime.fromtimestamp(
            self.clock.seconds(), datetime.timezone.utc
        )

    def _check_ca(self, chain: list[x509.Certificate]) -> None:
        address = _ip_address(self.server_name)
        subject: verification.Subject
        if address is not None:
            subject = x509.IPAddress(address)
        else:
            subject = x509.DNSName(_ascii_host(self.server_name) or self.server_name)
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(self._trusted_cas))
            .time(self._now())
            .build_server_verifier(subject)
        )
        try:
            verifier.verify(chain[0], chain[1:])
        except verification.VerificationError as e:
            raise ServerIdentityError(
                f"Server {self._label} presented a certificate that is not valid "
                f"for {self.server_name} under the CAs in {self.ca_file} ({e}); "
                f"check the server address and --ca."
            ) from None

    def _check_known_servers(self, presented: str) -> None:
        path = self.known_servers_path
        assert path is not None  # enforced in __attrs_post_init__
        key = self._label
        known = self._lookup_known(path, key)
        if known is None:
            self._record_known(path, key, presented)
            log.warn(
                "Trusted server {server} on first use; its certificate fingerprint "
                "is {fingerprint} (recorded in {path}).",
                server=key,
                fingerprint=presented,
                path=path,
            )
        elif not hmac.compare_digest(known, presented):
            raise ServerIdentityError(
                f"Server {key} presented certificate {presented}, but {path} "
                f"records {known}; if the server's certificate really changed, "
                f"remove the line for {key} from {path} or pass "
                f"--fingerprint {presented}, otherwise someone may be "
                f"intercepting the connection."
            )

    @staticmethod
    def _lookup_known(path: str, key: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise ServerIdentityError(
                f"Cannot read {path} ({e}); fix its permissions or remove it."
            ) from None
        for line in lines:
            fields = line.split()
            if len(fields) < 2 or fields[0].startswith("#") or fields[0] != key:
                continue
            try:
                return normalise_fingerprint(fields[1])
            except ValueError:
                raise ServerIdentityError(
                    f"The line for {key} in {path} holds no valid fingerprint; "
                    f"remove or fix that line."
                ) from None
        return None

    @staticmethod
    def _record_known(path: str, key: str, fingerprint: str) -> None:
        _make_private_dir(os.path.dirname(path) or ".")
        try:
            # Append rather than rewrite so that concurrent clients sharing
            # the file cannot drop each other's lines.
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a+b") as f:
                line = f"{key} {fingerprint}\n".encode("ascii")
                size = os.fstat(fd).st_size
                if size > 0:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        line = b"\n" + line
                f.write(line)
        except OSError as e:
            raise ServerIdentityError(
                f"Cannot record server {key} in {path} ({e.strerror}); fix the "
                f"permissions of {path} or pass --fingerprint {fingerprint}."
            ) from None
