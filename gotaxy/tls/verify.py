# -*- test-case-name: tests.test_tls -*-
"""
The client's check of the server it connected to.

The client's TLS context does not verify anything (VERIFY_NONE, TLS 1.2 or
later, SNI when the server name is a DNS name).  Instead, after the handshake
and before any secret is sent, the control protocol hands the certificate
chain the server presented (see L{peer_chain}) to L{ServerVerifier.verify},
which applies exactly one policy:

 1. pinned fingerprint (C{--fingerprint}, a join token's pin): the pin must
    be the leaf's fingerprint, or that of a certificate in the chain the
    server sent that directly issued the leaf (the CA Gotaxy generated, the
    same for every node of a cluster: L{gotaxy.tls.cluster}), both valid now;
 2. CA file: the chain must lead to a CA in the file and the leaf must be
    valid now and for the server name (DNS name or IP address);
 3. neither (the default): trust on first use, as SSH does.  A
    C{known_servers} file holds lines C{host:port SHA256:HEX [ca=SHA256:HEX]}
    (IPv6 hosts in brackets).  An unknown server is recorded and accepted
    with a warning, with its CA when it sent one of the kind Gotaxy generates
    (L{gotaxy_ca_of}); a known one must present a recorded certificate, or
    one a recorded CA issued (another node of the cluster).  A server known
    by its certificate alone that turns out to send such a CA gets a second
    line with it (appended, never rewritten), so clients move to the
    cluster's pin by themselves the next time they reach the node they know;
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
import hmac
import ipaddress
import os
from typing import Any, Sequence

import attrs
from cryptography import x509
from cryptography.x509 import verification
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from gotaxy.tls.files import make_private_dir
from gotaxy.tls.fingerprint import (
    as_cryptography,
    fingerprint_of_certificate,
    issued_by,
    normalise_fingerprint,
)
from gotaxy.tls.names import ascii_host, parse_ip, strip_brackets

__all__ = [
    "KNOWN_SERVERS_FILENAME",
    "gotaxy_ca_of",
    "ServerIdentityError",
    "ServerVerifier",
    "peer_chain",
]

log = Logger()

KNOWN_SERVERS_FILENAME = "known_servers"


class ServerIdentityError(Exception):
    """
    The server's certificate could not be trusted; the message says why and
    what to do about it.
    """


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


def _presented(chain: list[x509.Certificate]) -> str:
    """What a server presented, for a refusal: its certificate and the certificate sent after it."""
    presented = fingerprint_of_certificate(chain[0])
    if len(chain) > 1:
        return f"certificate {presented} issued by {fingerprint_of_certificate(chain[1])}"
    return f"certificate {presented}"


def gotaxy_ca_of(chain: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """
    The CA trust on first use records beside the server's certificate: a
    CA of the kind Gotaxy generates (self-signed, C{CA:TRUE, pathlen:0},
    common name "Gotaxy CA ...", the one a server's and a cluster's join
    tokens pin), sent right after the leaf it issued; else L{None}.  A
    public CA never issues a leaf from a root, and an operator's own CA is
    not recorded (its leaf alone is), so trust on first use never widens to
    certificates the operator's CA issues for other machines.
    """
    if len(chain) < 2:
        return None
    leaf, ca = chain[0], chain[1]
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    names = ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not (constraints.ca and constraints.path_length == 0 and names
            and str(names[0].value).startswith("Gotaxy CA ")):
        return None
    if ca.subject != ca.issuer or not issued_by(ca, ca) or not issued_by(leaf, ca):
        return None
    return ca


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientCreator:
    """
    Client connections that accept any certificate during the handshake;
    L{ServerVerifier.verify} judges it afterwards.
    """

    def __init__(self, server_name: str, identity: Any = None) -> None:
        # ``identity``: a ``gotaxy.tls.clients.ClientIdentity`` to present when the server asks for one.
        mine: dict = {}
        if identity is not None:
            mine = dict(privateKey=identity.key, certificate=identity.certificates[0],
                        extraCertChain=list(identity.certificates[1:]))
        self._options = ssl.CertificateOptions(
            verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2, **mine
        )
        ascii_name = ascii_host(server_name)
        self._sni = ascii_name.encode("ascii") if ascii_name is not None else None

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


def _known_servers_key(host: str, port: int) -> str:
    address = parse_ip(host)
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address.compressed}]:{port}"
    if address is not None:
        return f"{address}:{port}"
    return f"{(ascii_host(host) or host).lower()}:{port}"


def _to_server_name(value: str) -> str:
    return strip_brackets(value)


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
            if parse_ip(self.server_name) is None and ascii_host(
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
    def reads_known_servers(self) -> bool:
        """L{verify} reads (and may append to) C{known_servers}: call it off the reactor thread."""
        return self._mode == "tofu"

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

    def connection_creator(self, identity: Any = None) -> IOpenSSLClientConnectionCreator:
        """
        The TLS client options: TLS 1.2 or later, SNI for DNS names, and no
        verification during the handshake; call L{verify} right after it.
        With C{identity} (L{gotaxy.tls.clients.ClientIdentity}), the client
        certificate to present.
        """
        return _UnverifiedClientCreator(self.server_name, identity)

    def verify(self, peer_chain: Sequence[x509.Certificate | crypto.X509]) -> str:
        """
        Check the chain the server presented (leaf first).

        @return: the leaf's fingerprint.
        @raise ServerIdentityError: if the server is not to be trusted.
        """
        chain = [as_cryptography(c) for c in peer_chain]
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
            self._check_known_servers(chain, presented)
            return presented
        if self.fingerprint is not None and not self._pin_holds(chain, presented, self.fingerprint, "--fingerprint"):
            raise ServerIdentityError(
                f"Server {self._label} presented {_presented(chain)}, not the "
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
        if self._pin_holds(chain, presented, pin, "join token"):
            return
        raise ServerIdentityError(
            f"Server {self._label} presented {_presented(chain)}, but the join token pins {pin}; the token was "
            f"made for another server or cluster, or someone is intercepting the connection, so nothing was "
            f"sent: check --server, or get a new token from this server's 'gotaxy token create'."
        )

    def _pin_holds(self, chain: list[x509.Certificate], presented: str, pin: str, what: str) -> bool:
        """
        Whether C{pin} is the leaf's fingerprint, or that of a certificate in
        the chain that directly issued the leaf (the CA of a server or of a
        cluster), both valid now.

        @raise ServerIdentityError: if the chain holds the pinned CA but the
            leaf was not issued by it, or either is not valid now.
        """
        if hmac.compare_digest(presented, pin):
            return True
        for issuer in chain[1:]:
            if not hmac.compare_digest(fingerprint_of_certificate(issuer), pin):
                continue
            if not issued_by(chain[0], issuer):
                raise ServerIdentityError(
                    f"Server {self._label} sent the CA {pin} that the {what} pins, but its "
                    f"certificate {presented} was not issued by it; someone may be intercepting "
                    f"the connection."
                )
            self._check_valid_now(chain[0], issuer)
            return True
        return False

    def _check_valid_now(self, leaf: x509.Certificate, issuer: x509.Certificate) -> None:
        now = self._now()
        for cert, what in ((leaf, "certificate"), (issuer, "CA")):
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise ServerIdentityError(
                    f"Server {self._label}'s {what} {fingerprint_of_certificate(cert)} is not "
                    f"valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                    f"{cert.not_valid_after_utc:%Y-%m-%d}); check this machine's clock."
                )

    def _now(self) -> datetime.datetime:
        if self.clock is None:
            return datetime.datetime.now(datetime.timezone.utc)
        return datetime.datetime.fromtimestamp(
            self.clock.seconds(), datetime.timezone.utc
        )

    def _check_ca(self, chain: list[x509.Certificate]) -> None:
        address = parse_ip(self.server_name)
        subject: verification.Subject
        if address is not None:
            subject = x509.IPAddress(address)
        else:
            subject = x509.DNSName(ascii_host(self.server_name) or self.server_name)
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

    def _check_known_servers(self, chain: list[x509.Certificate], presented: str) -> None:
        path = self.known_servers_path
        assert path is not None  # enforced in __attrs_post_init__
        key = self._label
        known = self._lookup_known(path, key)
        ca = gotaxy_ca_of(chain)
        ca_pin = fingerprint_of_certificate(ca) if ca is not None else None
        if not known:
            self._record_known(path, key, presented, ca_pin)
            log.warn(
                "Trusted server {server} on first use; its certificate fingerprint "
                "is {fingerprint}{issuer} (recorded in {path}).",
                server=key,
                fingerprint=presented,
                issuer=f", issued by the CA {ca_pin} (every server that CA issued is accepted at this address: "
                       f"the nodes of a cluster)" if ca_pin else "",
                path=path,
            )
            return
        if any(hmac.compare_digest(leaf, presented) for leaf, _ in known):
            if ca_pin is not None and not any(c is not None and hmac.compare_digest(c, ca_pin) for _, c in known):
                # The server we know, over a connection its recorded certificate
                # authenticated: from now on its CA is trusted here too, so that
                # the other nodes of its cluster are accepted at this address.
                self._record_known(path, key, presented, ca_pin)
                log.info(
                    "Server {server}'s certificate is issued by the CA {ca}; recorded it in {path}, so every "
                    "server that CA issued is accepted at this address (the nodes of a cluster).",
                    server=key, ca=ca_pin, path=path,
                )
            return
        for _, known_ca in known:
            if known_ca is not None and self._pin_holds(chain, presented, known_ca, "known_servers line"):
                return
        recorded = ", ".join(leaf + (f" (CA {c})" if c else "") for leaf, c in known)
        raise ServerIdentityError(
            f"Server {key} presented {_presented(chain)}, but {path} "
            f"records {recorded}; if the server's certificate really changed, "
            f"remove the line for {key} from {path} or pass "
            f"--fingerprint {presented}, otherwise someone may be "
            f"intercepting the connection."
        )

    @staticmethod
    def _lookup_known(path: str, key: str) -> list[tuple[str, str | None]]:
        """Every line of C{path} for C{key}: its certificate's fingerprint and, if recorded, its CA's."""
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise ServerIdentityError(
                f"Cannot read {path} ({e}); fix its permissions or remove it."
            ) from None
        found = []
        for line in lines:
            fields = line.split()
            if len(fields) < 2 or fields[0].startswith("#") or fields[0] != key:
                continue
            try:
                leaf = normalise_fingerprint(fields[1])
                cas = [normalise_fingerprint(f[3:]) for f in fields[2:] if f.startswith("ca=")]
            except ValueError:
                raise ServerIdentityError(
                    f"The line for {key} in {path} holds no valid fingerprint; "
                    f"remove or fix that line."
                ) from None
            found.append((leaf, cas[0] if cas else None))
        return found

    @staticmethod
    def _record_known(path: str, key: str, fingerprint: str, ca: str | None = None) -> None:
        make_private_dir(os.path.dirname(path) or ".")
        try:
            # Append rather than rewrite so that concurrent clients sharing
            # the file cannot drop each other's lines.
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a+b") as f:
                line = f"{key} {fingerprint}{f' ca={ca}' if ca else ''}\n".encode("ascii")
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
