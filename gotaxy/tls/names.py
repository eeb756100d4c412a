# -*- test-case-name: tests.test_tls -*-
"""
Host names as TLS sees them: a DNS name (in its IDNA form) or an IP address.

Server certificates list both kinds in their subject alternative names, the
client sends SNI only for DNS names, and C{known_servers} keys on a canonical
form of either.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["ascii_host", "is_dns_name", "parse_ip", "strip_brackets"]

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def parse_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_dns_name(name: str, *, allow_wildcard: bool = False) -> bool:
    """
    Whether C{name} is a syntactically valid (ASCII) DNS host name.
    """
    if parse_ip(name) is not None:
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


def ascii_host(name: str) -> str | None:
    """
    The IDNA (ASCII) form of a DNS name, lower-case, or L{None} if it has none.
    """
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    ascii_name = ascii_name.lower().rstrip(".")
    return ascii_name if is_dns_name(ascii_name) else None


def strip_brackets(name: str) -> str:
    name = name.strip()
    if name.startswith("[") and name.endswith("]"):
        return name[1:-1]
    return name
