# -*- test-case-name: tests.test_proxy_https -*-
"""
``type = "https"``; the shared HTTPS front on ``vhostHTTPSPort`` is
``gotaxy.proxy.httpsfront``'s, imported by the server only (``make_front``).

An ``https`` tunnel is TLS passthrough, as in frp: the private service holds
the certificate, and the server never decrypts anything.  frp's keys:
``customDomains`` (host names; a wildcard ``*.example.com`` allowed),
``subdomain`` (``NAME.subDomainHost``), ``localIP``, ``localPort``.  Each
name is claimed through the claims table like an ``http`` tunnel's (the two
types share one namespace of names: a name is either a website whose TLS the
server terminates, or a passthrough, never both).

``HttpsFront`` (``gotaxy.proxy.httpsfront``) is the one listener on ``vhostHTTPSPort``.  For each
connection it reads the ClientHello (``gotaxy.proxy.sni``: bounded to
``MAX_BUFFERED`` bytes and ``vhostHTTPSHelloTimeout`` seconds) and routes by
its server name, exact name first, then wildcards from the closest
(``a.b.example.com``, ``*.b.example.com``, ``*.example.com``), as frp does:

* a name of an ``https`` tunnel: the stream to its client opens with the
  bytes read so far as its preface (``PublicConnection.open_stream``), and
  from then on the connection is a plain splice, as for TCP;
* otherwise, when the server terminates TLS for ``http`` tunnels
  (``terminate_with``: the certificates of ``gotaxy.tls.sites`` and the
  http front's ``protocol_factory("https")``) and holds a certificate for
  the name: the connection is handed to a TLS protocol
  (``twisted.protocols.tls``) wrapped around the http front, which routes
  each decrypted request by its Host header as on the plain port;
* otherwise it is closed: no ClientHello, no server name, or a name nothing
  here serves.  Each refusal is counted by reason (``refusals``), and so
  is a connection beyond ``httpsfront.MAX_PENDING_HELLOS`` still sending its hello.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

import attrs
from twisted.logger import Logger
from twisted.python.failure import Failure

from gotaxy.logs import gotaxy_observer
from gotaxy.mux import Stream
from gotaxy.proxy.address import MAX_HOSTS, AddressError, PublicAddress
from gotaxy.proxy.base import ExposeContext, Exposure, ProxySpec, ProxyType, SpecError, TunnelRefused
from gotaxy.proxy.fields import (
    LOCAL_IP, LOCAL_PORT, SpecField, StreamLimited, check_local_ip, check_port, host_port, parse_keys,
)
from gotaxy.proxy.proxyprotocol import PROXY_PROTOCOL, check_version
from gotaxy.proxy.sitenames import require_a_name, site_hosts
from gotaxy.proxy.tcp import TCP, TcpSpec

if TYPE_CHECKING:
    from gotaxy.proxy.httpsfront import HttpsFront
    from gotaxy.server.tunnel import LiveTunnel

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

#: Why the front closed a connection (the keys of ``HttpsFront.refusals``).
REFUSED_NOT_TLS = "not_tls"
REFUSED_SLOW = "hello_timeout"
REFUSED_NO_NAME = "no_server_name"
REFUSED_UNKNOWN = "unknown_name"
REFUSED_BUSY = "too_many_pending"
REFUSED_UNREACHABLE = "node_unreachable"  #: another node serves the name and cannot be reached


def _host_name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 253:
        raise SpecError(f"each of 'customDomains' must be a host name such as \"app.example.com\", got {str(value)[:64]!r}")
    name = value.lower().rstrip(".")
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise SpecError(
            "each of 'customDomains' must be a host name such as \"app.example.com\" (or \"*.example.com\"), "
            f"without a scheme or port, got {value[:64]!r}"
        )
    return name


def _domains(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) > MAX_HOSTS:
        raise SpecError(f"'customDomains' must be a list of at most {MAX_HOSTS} host names")
    return tuple(dict.fromkeys(_host_name(v) for v in value))


def _subdomain(value: Any) -> Optional[str]:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _LABEL.fullmatch(value.lower()):
        raise SpecError(f"'subdomain' must be one name part such as \"app\" (letters, digits and '-'), got {str(value)[:64]!r}")
    return value.lower()


@attrs.frozen
class HttpsSpec(StreamLimited, ProxySpec):
    """A ``type = "https"`` tunnel: frp's ``customDomains``, ``subdomain``, ``localIP``, ``localPort``."""

    type: ClassVar[str] = "https"

    local_port: int = attrs.field(validator=check_port("localPort", 1))
    local_ip: str = attrs.field(default="127.0.0.1", validator=check_local_ip)
    custom_domains: Tuple[str, ...] = attrs.field(default=(), converter=_domains)
    subdomain: Optional[str] = attrs.field(default=None, converter=_subdomain)
    proxy_protocol_version: Optional[str] = attrs.field(default=None, validator=check_version)

    def __attrs_post_init__(self) -> None:
        require_a_name("https", self.custom_domains, self.subdomain, "app")

    def to_keys(self) -> Dict[str, Any]:
        keys: Dict[str, Any] = {"type": "https", "localIP": self.local_ip, "localPort": self.local_port}
        if self.custom_domains:
            keys["customDomains"] = list(self.custom_domains)
        if self.subdomain is not None:
            keys["subdomain"] = self.subdomain
        if self.proxy_protocol_version is not None:
            keys["transport.proxyProtocolVersion"] = self.proxy_protocol_version
        keys.update(self.rule_keys())
        return keys

    @property
    def local_description(self) -> str:
        return host_port(self.local_ip, self.local_port)

    @property
    def requested(self) -> Optional[PublicAddress]:
        return None  # names, not a port: what ``address`` gives once the server's subDomainHost is known

    @property
    def local_endpoint(self) -> Optional[Tuple[str, int]]:
        return (self.local_ip, self.local_port)

    def address_for(self, config: Any) -> Optional[PublicAddress]:
        return self.address(config.vhost.sub_domain_host)

    def address(self, sub_domain_host: Optional[str], port: int = 0) -> PublicAddress:
        """The names this tunnel claims, given the server's ``subDomainHost``."""
        hosts = site_hosts(self.custom_domains, self.subdomain, sub_domain_host)
        try:
            return PublicAddress("https", port, hosts)
        except AddressError as e:
            raise SpecError(str(e), "customDomains") from None


_KEYS = {"localIP": "local_ip", "localPort": "local_port", "customDomains": "custom_domains",
         "subdomain": "subdomain", "transport.proxyProtocolVersion": "proxy_protocol_version", **HttpsSpec.RULE_ATTRIBUTES}

CUSTOM_DOMAINS = SpecField("customDomains", "list", "the host names visitors ask for (TLS SNI), such as "
                           "app.example.com or *.example.com", hint="field.customDomains.hint")
SUBDOMAIN = SpecField("subdomain", "text", "a name under the server's subDomainHost (app for app.example.com)")


class HttpsProxy(ProxyType):
    name = "https"
    label = "HTTPS"
    fields = (LOCAL_IP, LOCAL_PORT, CUSTOM_DOMAINS, SUBDOMAIN, PROXY_PROTOCOL) + HttpsSpec.RULE_FIELDS
    #: A spec that parses, for the faces' tests (the names are not a required field: one of two is).
    example_keys: ClassVar[Dict[str, Any]] = {"customDomains": ["app.example.com"]}
    log = Logger(observer=gotaxy_observer)

    def parse(self, keys: Mapping[str, Any]) -> HttpsSpec:
        return parse_keys("https", self.fields, keys, HttpsSpec, _KEYS)  # type: ignore[no-any-return]

    def make_front(self, config: Any, reactor: Any) -> Optional[HttpsFront]:
        # Imported here: the front is the server's (a client only parses and connects https tunnels).
        from gotaxy.proxy.httpsfront import HttpsFront

        return HttpsFront(config, reactor)

    async def expose(self, tunnel: LiveTunnel, context: ExposeContext) -> Exposure:
        spec = tunnel.spec
        assert isinstance(spec, HttpsSpec)
        front = context.front
        if front is None or not front.serving:
            raise TunnelRefused(
                "this server has no HTTPS port; ask the operator to set vhostHTTPSPort "
                "(for example vhostHTTPSPort = 443) in the server's config"
            )
        try:
            # The port is not part of the identity (the claims hold names): it makes the URLs shown right.
            address = spec.address(context.config.vhost.sub_domain_host, 0 if front.port == 443 else front.port)
        except SpecError as e:
            raise TunnelRefused(str(e)) from None
        await context.claims.claim(address)
        front.add(tunnel, address)
        return Exposure(address=address, close=lambda: front.remove(tunnel))

    def connect(self, reactor: Any, spec: ProxySpec, stream: Stream, failed: Callable[[Failure], None]) -> None:
        assert isinstance(spec, HttpsSpec)
        TCP.connect(reactor, TcpSpec(local_port=spec.local_port, local_ip=spec.local_ip), stream, failed)


HTTPS = HttpsProxy()
