# -*- test-case-name: tests.test_tls_cluster -*-
"""
The cluster's TLS identity: one CA, and every node's certificates signed by it.

The cluster CA is the CA the first node generated at its first start
(C{DATA_DIR/tls/ca.pem} and C{ca.key}, L{gotaxy.tls.credentials}): the one
its join tokens already pin.  So a single server that grows into a cluster
keeps every pin its clients hold, and a client that pins that CA (a join
token, C{--fingerprint} with the CA's fingerprint, or a C{known_servers}
line with C{ca=}) accepts every node and refuses any other server
(L{gotaxy.tls.verify}).

C{gotaxy cluster add-node NAME [--address A ...] --out DIR}, run where the CA
key is, writes what a new node needs into C{DIR}, which the operator copies
to the new node as its C{DATA_DIR/tls}::

    ca.pem                   the cluster CA's certificate (never its key)
    server.pem, server.key   what the node presents to clients on the
                             control port: NAME and the addresses, serverAuth
    node.pem, node.key       what the node presents to other nodes
                             (node-to-node mTLS): the same names plus the
                             URI urn:gotaxy:node:NAME, serverAuth and clientAuth

Two certificates, two roles.  The server certificate is the one clients see
and may have pinned (the first node keeps its own, unchanged).  The node
certificate is the only kind a node accepts from another node: issued by the
cluster CA I{and} carrying the C{urn:gotaxy:node:} name, which neither a
server certificate nor a client certificate (C{gotaxy cert issue}, from the
same CA) has; and a node certificate is refused as a client certificate
(L{gotaxy.tls.clients}).  A node that holds the CA key (the first one) makes
its own node certificate at start when it has none (L{load_node_identity}).

Node-to-node connections use L{NodeIdentity.server_options} and
L{NodeIdentity.client_options}: TLS 1.2 or later, each side presents its node
certificate, and OpenSSL's own path validation against the cluster CA runs in
the handshake, with a verify callback that also requires the node name and
key usage; L{peer_node} names the node at the other end afterwards.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from typing import Any, Optional, Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.logger import Logger

from gotaxy.tls.credentials import (
    CA_CERT_FILENAME,
    CA_KEY_FILENAME,
    MODERN_CIPHERS,
    SERVER_CERT_FILENAME,
    SERVER_KEY_FILENAME,
    _load_or_create_ca,
    _private_key_pem,
    _read_pair,
    _validate_names,
    issue_certificate,
)
from gotaxy.tls.files import make_private_dir, write_atomically
from gotaxy.tls.fingerprint import as_cryptography, fingerprint_of_certificate, issued_by
from gotaxy.tls.names import ascii_host, parse_ip

__all__ = [
    "NODE_CERT_FILENAME",
    "NODE_KEY_FILENAME",
    "NODE_URI_PREFIX",
    "NodeBundle",
    "NodeIdentity",
    "issue_node_bundle",
    "load_node_identity",
    "node_name_of",
    "peer_node",
]

log = Logger()

NODE_CERT_FILENAME = "node.pem"
NODE_KEY_FILENAME = "node.key"
#: The subject alternative name (a URI) that makes a certificate a node's.
NODE_URI_PREFIX = "urn:gotaxy:node:"

#: What a node certificate made at start may be named after: a node id (DATA_DIR/node-id) or a DNS name.
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")

_BUNDLE_FILES = (CA_CERT_FILENAME, SERVER_CERT_FILENAME, SERVER_KEY_FILENAME, NODE_CERT_FILENAME, NODE_KEY_FILENAME)


def node_name_of(cert: Any) -> Optional[str]:
    """The node name a certificate carries (C{urn:gotaxy:node:NAME}), or L{None} if it is no node's."""
    leaf = as_cryptography(cert)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(NODE_URI_PREFIX) and len(uri) > len(NODE_URI_PREFIX):
            return uri[len(NODE_URI_PREFIX):]
    return None


def _usages(cert: x509.Certificate) -> set:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def _node_sans(name: str, addresses: Sequence[str]) -> list[x509.GeneralName]:
    """The node's URI, then its name (if it is a DNS name or address: a node id may not be) and the addresses."""
    general: list[x509.GeneralName] = [x509.UniformResourceIdentifier(NODE_URI_PREFIX + name)]
    for address in dict.fromkeys([name, *addresses]):
        ip = parse_ip(address)
        if ip is not None:
            general.append(x509.IPAddress(ip))
        elif ascii_host(address) == address:
            general.append(x509.DNSName(address))
    return general


def _names(name: str, addresses: Sequence[str]) -> tuple[str, list[str]]:
    checked = _validate_names([name, *addresses])
    if checked[0].startswith("*."):
        raise ValueError(f"a node's name is one host, not a wildcard (got {name!r}); give its DNS name or address")
    return checked[0], checked[1:]


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@attrs.frozen
class NodeBundle:
    """
    What C{gotaxy cluster add-node} wrote.

    @ivar directory: where the five files are.
    @ivar name: the node's name.
    @ivar server_fingerprint: the fingerprint of its control-port certificate.
    @ivar ca_fingerprint: the cluster CA's: what clients pin to accept every node.
    """

    directory: str
    name: str
    server_fingerprint: str
    ca_fingerprint: str


def issue_node_bundle(
    tls_dir: str, name: str, addresses: Sequence[str], out_dir: str, force: bool = False
) -> NodeBundle:
    """
    Sign a new node's certificates with the cluster CA in C{tls_dir} (the
    first node's C{ca.pem} and C{ca.key}; never made here) and write them, with
    the CA's certificate, to C{out_dir} (mode 0700; keys 0600).  Blocking
    file I/O and key generation: call it from the command line.

    @raise ValueError: if a name is not a DNS name or IP address, the CA's
        files are missing or cannot be used, C{out_dir} is the CA's own directory, or a
        file there exists and C{force} is not set.
    """
    name, extra = _names(name, addresses)
    if os.path.abspath(out_dir) == os.path.abspath(tls_dir):
        raise ValueError(
            f"--out {out_dir} is the directory of the CA itself; write the new node's files elsewhere and copy "
            f"them to the new node"
        )
    existing = [f for f in _BUNDLE_FILES if os.path.exists(os.path.join(out_dir, f))]
    if existing and not force:
        raise ValueError(
            f"{os.path.join(out_dir, existing[0])} exists; choose another directory with --out, or pass --force "
            f"to replace the files there"
        )
    ca_files = [os.path.join(tls_dir, f) for f in (CA_CERT_FILENAME, CA_KEY_FILENAME)]
    missing = [path for path in ca_files if not os.path.exists(path)]
    if missing:
        # Never a new CA here: one made by mistake (a wrong --data-dir) would be no cluster's.
        raise ValueError(
            f"{missing[0]} does not exist: run this on the first node (it makes the cluster CA at its first "
            f"start), with its --data-dir"
        )
    ca_cert, ca_key = _load_or_create_ca(tls_dir)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue_certificate(
        server_key, ca_cert, ca_key, name, _node_sans(name, extra)[1:], [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    node_key = ec.generate_private_key(ec.SECP256R1())
    node = _issue_node_certificate(node_key, ca_cert, ca_key, name, extra)
    make_private_dir(out_dir)
    write_atomically(os.path.join(out_dir, CA_CERT_FILENAME), _pem([ca_cert]), 0o644)
    write_atomically(os.path.join(out_dir, SERVER_KEY_FILENAME), _private_key_pem(server_key), 0o600)
    write_atomically(os.path.join(out_dir, SERVER_CERT_FILENAME), _pem([server, ca_cert]), 0o644)
    write_atomically(os.path.join(out_dir, NODE_KEY_FILENAME), _private_key_pem(node_key), 0o600)
    write_atomically(os.path.join(out_dir, NODE_CERT_FILENAME), _pem([node, ca_cert]), 0o644)
    return NodeBundle(
        directory=os.path.abspath(out_dir), name=name, server_fingerprint=fingerprint_of_certificate(server),
        ca_fingerprint=fingerprint_of_certificate(ca_cert),
    )


def _issue_node_certificate(
    key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str,
    addresses: Sequence[str],
) -> x509.Certificate:
    return issue_certificate(
        key, ca_cert, ca_key, f"Gotaxy node {name}", _node_sans(name, addresses),
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )


@attrs.frozen
class NodeIdentity:
    """
    A node's certificate for node-to-node connections, and the cluster CA.

    @ivar name: the node's name (its certificate's C{urn:gotaxy:node:NAME}).
    @ivar certificates: the node certificate, then its chain.
    @ivar key: its private key.
    @ivar ca: the cluster CA's certificate, the one trust anchor for peers.
    """

    name: str
    certificates: tuple = attrs.field(converter=tuple)
    key: Any = attrs.field(repr=False)
    ca: x509.Certificate

    @property
    def fingerprint(self) -> str:
        return fingerprint_of_certificate(self.certificates[0])

    @property
    def ca_fingerprint(self) -> str:
        return fingerprint_of_certificate(self.ca)

    def server_options(self) -> ssl.CertificateOptions:
        """
        TLS options for the listening end of a node-to-node connection: it
        asks for a certificate and completes the handshake only with a node
        certificate the cluster CA issued (for client authentication).
        """
        return self._options(ExtendedKeyUsageOID.CLIENT_AUTH, None)

    def client_options(self, expected: Optional[str] = None) -> ssl.CertificateOptions:
        """
        TLS options for the connecting end: it presents this node's
        certificate and accepts only a node certificate the cluster CA issued
        (for server authentication), of the node named C{expected} if given.
        Twisted takes them where it takes a client connection creator
        (C{wrapClientTLS}, C{TLSMemoryBIOFactory}).
        """
        return self._options(ExtendedKeyUsageOID.SERVER_AUTH, expected)

    def _options(self, usage: x509.ObjectIdentifier, expected: Optional[str]) -> ssl.CertificateOptions:
        options = ssl.CertificateOptions(
            privateKey=self.key,
            certificate=self.certificates[0],
            extraCertChain=list(self.certificates[1:]),
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(MODERN_CIPHERS),
        )
        context: SSL.Context = options.getContext()  # built once, kept by the options: every connection uses it
        context.get_cert_store().add_cert(crypto.X509.from_cryptography(self.ca))  # type: ignore[union-attr]
        mine = self.name

        def judge(connection: Any, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
            if not ok:
                # OpenSSL's path validation failed: not issued by the cluster CA, or not valid now.
                # (X509_V_ERR_* code 26 is a certificate for the other end: a server's from a client.)
                _refused(cert, f"not issued by this cluster's CA, not valid now, or not for this end of the "
                               f"connection ({cert.to_cryptography().subject.rfc4514_string()[:100]}: OpenSSL "
                               f"verify error {errno})", mine)
                return False
            if depth > 0:
                return True
            leaf = cert.to_cryptography()
            peer = node_name_of(leaf)
            if peer is None:
                _refused(cert, "a certificate of this cluster's CA but not a node's (no urn:gotaxy:node: name)", mine)
                return False
            if usage not in _usages(leaf):
                _refused(cert, f"node {peer!r}'s certificate is not for this end of the connection", mine)
                return False
            if expected is not None and peer != expected:
                _refused(cert, f"node {peer!r} answered where node {expected!r} was expected", mine)
                return False
            return True

        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, judge)
        return options


def _refused(cert: crypto.X509, why: str, mine: str) -> None:
    log.warn(
        "node {node} refused a node-to-node TLS peer presenting {fingerprint}: {why}",
        node=mine, fingerprint=fingerprint_of_certificate(cert), why=why,
    )


def peer_node(tls_transport: Any) -> Optional[str]:
    """
    The name of the node at the other end of a node-to-node TLS transport,
    once its handshake completed (the options above accept no other peer).
    """
    cert = tls_transport.getHandle().get_peer_certificate(as_cryptography=True)
    return node_name_of(cert) if cert is not None else None


def load_node_identity(tls_dir: str, name: Optional[str] = None) -> NodeIdentity:
    """
    This node's identity for node-to-node connections, from C{tls_dir}'s
    C{node.pem}, C{node.key} and C{ca.pem}.  A node that holds the CA key and
    has no node certificate yet makes one now, named C{name} (a node id or a
    DNS name; default: the host's fully qualified name, which is also among
    its DNS names).  Blocking file I/O: call it at start-up.

    @raise ValueError: with a sentence saying what is missing and what to do.
    """
    cert_path = os.path.join(tls_dir, NODE_CERT_FILENAME)
    key_path = os.path.join(tls_dir, NODE_KEY_FILENAME)
    ca_path = os.path.join(tls_dir, CA_CERT_FILENAME)
    if not os.path.exists(cert_path):
        if not (os.path.exists(ca_path) and os.path.exists(os.path.join(tls_dir, CA_KEY_FILENAME))):
            raise ValueError(
                f"This node has no node certificate ({cert_path}) and no cluster CA key to make one; on the node "
                f"that holds the cluster's CA key run 'gotaxy cluster add-node NAME --out DIR' and copy DIR here "
                f"as {tls_dir}"
            )
        own = name or ascii_host(socket.getfqdn()) or "localhost"
        if not _NODE_NAME.fullmatch(own):
            raise ValueError(
                f"{own!r} cannot name a node certificate: use at most 64 letters, digits, '.', '_', '-' (a node id "
                f"or a DNS name)"
            )
        fqdn = ascii_host(socket.getfqdn())
        extra = [fqdn] if fqdn is not None and fqdn != own else []
        ca_cert, ca_key = _load_or_create_ca(tls_dir)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue_node_certificate(key, ca_cert, ca_key, own, extra)
        write_atomically(key_path, _private_key_pem(key), 0o600)
        write_atomically(cert_path, _pem([cert, ca_cert]), 0o644)
        log.info("made this node's certificate for node-to-node connections: {path} (node {name})",
                 path=cert_path, name=own)
    certs, key = _read_pair(cert_path, key_path)
    try:
        with open(ca_path, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        raise ValueError(
            f"Cannot read the cluster CA's certificate {ca_path}; copy it from the node that holds the cluster's "
            f"CA (its DATA_DIR/tls/ca.pem)"
        ) from None
    node = node_name_of(certs[0])
    if node is None:
        raise ValueError(
            f"{cert_path} is not a node certificate (it has no {NODE_URI_PREFIX}NAME name); make one with "
            f"'gotaxy cluster add-node NAME --out DIR' where the cluster's CA key is"
        )
    if not issued_by(certs[0], ca):
        raise ValueError(
            f"{cert_path} was not issued by the cluster CA in {ca_path}; make this node's files again with "
            f"'gotaxy cluster add-node NAME --out DIR' on the node that holds the cluster's CA key"
        )
    now = datetime.datetime.now(datetime.timezone.utc)
    if not certs[0].not_valid_before_utc <= now <= certs[0].not_valid_after_utc:
        log.warn("this node's certificate {path} is not valid now (valid {start:%Y-%m-%d} to {end:%Y-%m-%d})",
                 path=cert_path, start=certs[0].not_valid_before_utc, end=certs[0].not_valid_after_utc)
    return NodeIdentity(name=node, certificates=certs, key=key, ca=ca)
