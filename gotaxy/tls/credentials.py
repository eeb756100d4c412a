# -*- test-case-name: tests.test_tls -*-
"""
The server's TLS identity: the certificate and key it presents on the control
port (and, by default, nowhere else; the panel takes its own files).

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
C{ca.pem} and C{ca.key} are kept.  Users with their own certificate (a PEM
file, optionally followed by its chain, and an unencrypted PEM key) pass both
files instead; then nothing is generated.

The same CA is where client certificates will come from (issue 13), so what
issues a certificate from it belongs here too; how a peer's certificate is
judged is L{gotaxy.tls.verify}.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from typing import Any, Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl
from twisted.logger import Logger

from gotaxy.tls.files import make_private_dir, write_atomically
from gotaxy.tls.fingerprint import fingerprint_of_certificate, issued_by
from gotaxy.tls.names import ascii_host, parse_ip, strip_brackets

__all__ = [
    "MODERN_CIPHERS",
    "ServerCredentials",
    "load_or_create_server_credentials",
    "load_server_tls_options",
    "server_tls_options",
]

log = Logger()

CA_CERT_FILENAME = "ca.pem"
CA_KEY_FILENAME = "ca.key"
SERVER_CERT_FILENAME = "server.pem"
SERVER_KEY_FILENAME = "server.key"

CA_VALIDITY = datetime.timedelta(days=20 * 365 + 5)
SERVER_VALIDITY = datetime.timedelta(days=10 * 365 + 3)
# Start validity a little in the past so that a client whose clock is behind
# does not see a certificate from the future.
BACKDATE = datetime.timedelta(hours=1)


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

    make_private_dir(tls_dir)
    ca_cert, ca_key = _load_or_create_ca(tls_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue_server_certificate(key, ca_cert, ca_key, names)
    key_pem = _private_key_pem(key)
    chain_pem = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(
        serialization.Encoding.PEM
    )
    write_atomically(server_key, key_pem, 0o600)
    write_atomically(server_cert, chain_pem, 0o644)
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
    return fingerprint_of_certificate(ca) if issued_by(leaf, ca) else None


def _validate_names(extra_names: Sequence[str]) -> list[str]:
    names = []
    for raw in extra_names:
        name = strip_brackets(raw)
        if parse_ip(name) is None:
            ascii_name = ascii_host(name.removeprefix("*."))
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
    fqdn = ascii_host(socket.getfqdn())
    if fqdn is not None:
        dns.append(fqdn)
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    for name in extra_names:
        address = parse_ip(name)
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
    if os.path.exists(ca_cert_path):
        # A node of a cluster holds the cluster CA's certificate without its
        # key (gotaxy.tls.cluster): a new CA here would leave the cluster.
        raise ValueError(
            f"{ca_cert_path} is here without its key {ca_key_path}: this server's certificates come from a CA "
            f"kept elsewhere (a cluster's first node); sign there ('gotaxy cluster add-node', 'gotaxy cert issue'), "
            f"or remove {ca_cert_path} to have a new CA generated."
        )

    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _common_name(f"Gotaxy CA {ascii_host(socket.getfqdn()) or 'localhost'}")
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
    write_atomically(ca_key_path, _private_key_pem(key), 0o600)
    write_atomically(ca_cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _issue_server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    extra_names: Sequence[str],
) -> x509.Certificate:
    sans = _subject_alternative_names(extra_names)
    # Name the certificate after the host's own name (or the first extra
    # one) rather than "localhost", for people reading it in a browser.
    dns_names = [n.value for n in sans if isinstance(n, x509.DNSName)]
    return issue_certificate(
        key, ca_cert, ca_key, dns_names[1] if len(dns_names) > 1 else dns_names[0], sans,
        [ExtendedKeyUsageOID.SERVER_AUTH],
    )


def issue_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    sans: Sequence[x509.GeneralName],
    usages: Sequence[x509.ObjectIdentifier],
    validity: datetime.timedelta = SERVER_VALIDITY,
) -> x509.Certificate:
    """
    A leaf certificate for C{key}, signed by the CA: C{common_name} (for
    people), C{sans} (what TLS checks), the extended key C{usages}, valid
    from an hour ago for C{validity}, never beyond the CA's own end.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return (
        x509.CertificateBuilder()
        .subject_name(_common_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
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
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
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
        address = parse_ip(name)
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
