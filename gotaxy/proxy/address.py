# -*- test-case-name: tests.test_proxy -*-
"""
``PublicAddress``: where the public reaches a tunnel.

A tunnel's public identity is not a port number: a TCP tunnel has a TCP
port, a UDP tunnel a UDP port (a separate claim from the TCP port of the
same number), an HTTP or HTTPS tunnel one or more host names on the shared
virtual-host port.  Every face (log lines, events, the console, the panel,
the REST API) shows ``description``; the store keeps ``text``; the wire
carries ``to_wire``.  ``claim_keys`` are what the claims table holds, one
(kind, key) per unit that only one tunnel may hold.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

import attrs

#: Schemes whose address is a port of their own.
PORT_SCHEMES = ("tcp", "udp")
#: Schemes whose address is host names on a shared port.
HOST_SCHEMES = ("http", "https")

#: Longest host name (RFC 1035), and most names one address may hold.
MAX_HOST = 253
MAX_HOSTS = 16
#: Most URL path prefixes (frp's ``locations``) one address may hold, and the longest.
MAX_PATHS = 16
MAX_PATH = 256
#: Longest user name an address may be routed by (frp's ``routeByHTTPUser``).
MAX_ROUTE_USER = 64

_SCHEME = re.compile(r"[a-z][a-z0-9]{0,15}")
_HOST = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
# A path prefix: what a URL path may hold, less the separators of ``text``.
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+=:@%/-]*")
_ROUTE_USER = re.compile(r"[A-Za-z0-9._~-]+")


class AddressError(ValueError):
    """Not a public address; the message says what is wrong."""


def _check_port(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not int or not 0 <= value <= 65535:
        raise AddressError(f"the public port must be an integer from 0 to 65535, got {str(value)[:16]}")


def _check_hosts(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, tuple) or len(value) > MAX_HOSTS:
        raise AddressError(f"a public address has at most {MAX_HOSTS} host names")
    for host in value:
        if not isinstance(host, str) or len(host) > MAX_HOST or not _HOST.fullmatch(host):
            raise AddressError(f"{host!r} is not a host name (letters, digits, '-' and '.', lower case)")


def _check_paths(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, tuple) or len(value) > MAX_PATHS:
        raise AddressError(f"a public address has at most {MAX_PATHS} locations")
    for path in value:
        if not isinstance(path, str) or len(path) > MAX_PATH or not _PATH.fullmatch(path):
            raise AddressError(f"{str(path)[:64]!r} is not a location (a URL path that starts with '/')")


def _check_user(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or len(value) > MAX_ROUTE_USER or (value and not _ROUTE_USER.fullmatch(value)):
        raise AddressError(f"{str(value)[:64]!r} is not a user name to route by (letters, digits, '.', '_', '-', '~')")


def _check_scheme(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not _SCHEME.fullmatch(value):
        raise AddressError(f"{value!r} is not an address scheme")


@attrs.frozen
class PublicAddress:
    """
    ``scheme`` names the namespace (``tcp``, ``udp``, ``http``, ``https``);
    ``port`` is the public port (for host schemes, the shared port, or 0 for
    the default one; it is not part of the identity); ``hosts`` the names.
    """

    scheme: str = attrs.field(validator=_check_scheme)
    port: int = attrs.field(default=0, validator=_check_port)
    hosts: Tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_check_hosts)
    #: URL path prefixes on those hosts (frp's ``locations``); none: every path.
    paths: Tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_check_paths)
    #: Only requests of this basic-auth user (frp's ``routeByHTTPUser``); empty: anyone's.
    user: str = attrs.field(default="", validator=_check_user)
    #: How every face shows it: ``port 16000``, ``udp port 5353``, ``http://wiki.example.com``
    #: (a field, so that the REST API's and the console's JSON carry it).
    description: str = attrs.field(init=False, eq=False, repr=False,
                                   default=attrs.Factory(lambda self: self._describe(), takes_self=True))

    @classmethod
    def tcp(cls, port: int) -> "PublicAddress":
        return cls("tcp", port)

    @property
    def by_port(self) -> bool:
        """The address is a port of its own (not host names on a shared port)."""
        return not self.hosts

    def _describe(self) -> str:
        if self.hosts:
            suffix = f":{self.port}" if self.port else ""
            who = f"{self.user}@" if self.user else ""
            paths = self.paths or ("",)
            return ", ".join(f"{self.scheme}://{who}{host}{suffix}{path}" for host in self.hosts for path in paths)
        if self.scheme == "tcp":
            return f"port {self.port}"
        return f"{self.scheme} port {self.port}"

    def at(self, server_host: str) -> str:
        """Where a user connects, given the server's host: ``host:16000``, ``udp host:5353``, ``http://name``."""
        if self.hosts:
            return self.description
        # As the client has always logged it ("up at ::1:6000"): scripts read it.
        prefix = "" if self.scheme == "tcp" else f"{self.scheme} "
        return f"{prefix}{server_host}:{self.port}"

    @property
    def text(self) -> str:
        """
        The store's form: ``tcp:16000``, ``udp:5353``, ``http:a.example.com,b.example.com``,
        with locations and a user ``http:a.example.com;/news,/pic;user=alice``.
        """
        if self.hosts:
            text = f"{self.scheme}:{','.join(self.hosts)}"
            if self.paths or self.user:
                text += f";{','.join(self.paths)}"
            if self.user:
                text += f";user={self.user}"
            return text
        return f"{self.scheme}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> "PublicAddress":
        """The inverse of ``text``."""
        scheme, colon, rest = text.partition(":")
        if not colon or not rest:
            raise AddressError(f"{text!r} is not a public address")
        if rest.isdigit():
            return cls(scheme, int(rest))
        hosts, _, more = rest.partition(";")
        paths, _, user = more.partition(";")
        if user and not user.startswith("user="):
            raise AddressError(f"{text!r} is not a public address")
        return cls(scheme, 0, tuple(hosts.split(",")), tuple(paths.split(",")) if paths else (), user[len("user="):])

    @property
    def claim_keys(self) -> Tuple[Tuple[str, str], ...]:
        """
        (kind, key) pairs only one tunnel may hold: ``("tcp-port", "16000")``,
        ``("domain", "a.example.com")``.  A host name is one key for every
        path (``wiki.example.com``, ``*.example.com``); a location narrows it
        (``wiki.example.com/news``: another tunnel may hold ``/`` of the same
        name, as in frp) and so does a user to route by (``alice@wiki.example.com``).
        An exact name and a wildcard that covers it are different keys: the
        exact one wins when routing, as in frp.
        """
        if self.hosts:
            who = f"{self.user}@" if self.user else ""
            paths = list(dict.fromkeys("" if p == "/" else p for p in self.paths)) or [""]
            return tuple(("domain", f"{who}{host}{path}") for host in self.hosts for path in paths)
        return ((f"{self.scheme}-port", str(self.port)),)

    def to_wire(self) -> Dict[str, Any]:
        message: Dict[str, Any] = {"scheme": self.scheme, "port": self.port}
        if self.hosts:
            message["hosts"] = list(self.hosts)
        if self.paths:
            message["paths"] = list(self.paths)
        if self.user:
            message["user"] = self.user
        return message

    @classmethod
    def from_wire(cls, message: Any) -> "PublicAddress":
        """Build from a peer's message; AddressError if anything is off."""
        if not isinstance(message, dict):
            raise AddressError("an address must be an object")
        hosts = message.get("hosts", [])
        paths = message.get("paths", [])
        if not isinstance(hosts, list) or not isinstance(paths, list):
            raise AddressError("an address's 'hosts' and 'paths' must be lists")
        return cls(message.get("scheme"), message.get("port", 0), tuple(hosts), tuple(paths), message.get("user", ""))

    def __str__(self) -> str:
        return self.description


def address_or_none(text: Optional[str]) -> Optional[PublicAddress]:
    """The stored address ``text``, or None for no address or one this version cannot read."""
    if not text:
        return None
    try:
        return PublicAddress.parse(text)
    except AddressError:
        return None
