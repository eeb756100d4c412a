"""
Gotaxy: a self-hosted reverse tunnel on Twisted.

A server on a public machine accepts TLS control connections from clients
behind NAT and exposes their private TCP services on public ports.  See
``docs/`` for the user guide and ``docs/protocol.md`` for the wire format.
"""

__version__ = "0.1.0"
