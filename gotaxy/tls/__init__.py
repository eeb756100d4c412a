# -*- test-case-name: tests.test_tls -*-
"""
TLS identity for the control connection.

  - L{gotaxy.tls.credentials}: what the server presents (its generated CA and
    certificate, or the operator's own files) and the server-side TLS options
    shared with the HTTPS panel;
  - L{gotaxy.tls.verify}: how the client decides whether the server it reached
    is the right one (pin, join token, CA file, trust on first use);
  - L{gotaxy.tls.cluster}: a cluster's one identity (the first node's CA signs
    every node's certificates) and the node-to-node mTLS options;
  - L{gotaxy.tls.fingerprint}, L{gotaxy.tls.names}, L{gotaxy.tls.files}: the
    pieces both sides share.

The names below are the public face; import them from here.
"""

from typing import TYPE_CHECKING, Any

from gotaxy.tls.fingerprint import fingerprint_of_certificate, normalise_fingerprint
from gotaxy.tls.verify import (
    KNOWN_SERVERS_FILENAME,
    ServerIdentityError,
    ServerVerifier,
    peer_chain,
)

if TYPE_CHECKING:
    from gotaxy.tls.credentials import (
        MODERN_CIPHERS,
        ServerCredentials,
        load_or_create_server_credentials,
        load_server_tls_options,
        server_tls_options,
    )

__all__ = [
    "KNOWN_SERVERS_FILENAME",
    "MODERN_CIPHERS",
    "ServerCredentials",
    "ServerIdentityError",
    "ServerVerifier",
    "fingerprint_of_certificate",
    "load_or_create_server_credentials",
    "load_server_tls_options",
    "normalise_fingerprint",
    "peer_chain",
    "server_tls_options",
]


#: What the server presents (``gotaxy.tls.credentials``) is imported when
#: first asked for: a client never asks (issue 15, goal 3).
_SERVER_NAMES = frozenset({
    "MODERN_CIPHERS", "ServerCredentials", "load_or_create_server_credentials", "load_server_tls_options",
    "server_tls_options",
})


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        import gotaxy.tls.credentials

        return getattr(gotaxy.tls.credentials, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
