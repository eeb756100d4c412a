# -*- test-case-name: tests.test_proxy_http -*-
"""
``type = "http"``: websites by name on the server's shared HTTP port
(``vhostHTTPPort``), each request routed by its Host header and path to a
tunnel's client, and there to ``localIP:localPort``.

frp's keys and meanings:

* ``customDomains`` (host names, a wildcard ``*.example.com`` allowed) and
  ``subdomain`` (``NAME.subDomainHost``; the server must set
  ``subDomainHost``): at least one of them.  Each name is claimed through the
  claims table (``PublicAddress.claim_keys``), so a second tunnel asking for
  it is refused with the holder's name, and it stays reserved for the tunnel
  across reconnects and restarts.
* ``locations``: URL path prefixes; the longest prefix that matches wins, so
  two tunnels may share a name with different paths.
* ``httpUser`` / ``httpPassword``: basic auth checked by the server;
  ``routeByHTTPUser``: only requests of that user reach this tunnel.
* ``hostHeaderRewrite``, ``requestHeaders.set``, ``responseHeaders.set``:
  what the server changes on the way.

The server side (routing, auth, header rules, limits, error pages) is the
front in ``gotaxy.proxy.vhost``; the client side is a TCP connection to the
local service, as for ``tcp``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

import attrs
from twisted.python.failure import Failure

from gotaxy.mux import Stream
from gotaxy.proxy.address import MAX_HOSTS, MAX_PATH, MAX_PATHS, MAX_ROUTE_USER, AddressError, PublicAddress
from gotaxy.proxy.base import ExposeContext, Exposure, ProxySpec, ProxyType, SpecError, TunnelRefused
from gotaxy.proxy.fields import (
    LOCAL_IP, LOCAL_PORT, SpecField, StreamLimited, check_local_ip, check_port, host_port,
)
from gotaxy.proxy.sitenames import require_a_name, site_hosts
from gotaxy.proxy.tcp import connect_local

if TYPE_CHECKING:
    from gotaxy.server.tunnel import LiveTunnel

#: Header rules per table, and the longest name and value.
MAX_HEADER_RULES = 32
MAX_HEADER_NAME = 64
MAX_HEADER_VALUE = 1024
MAX_CREDENTIAL = 128

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: a header name
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+=:@%/-]*")

#: Headers no rule may set: they frame the message or belong to the hop.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive"})


def _boolean(key: str) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if type(value) is not bool:
            raise SpecError(f"'{key}' must be true or false", key)

    return check


def _host_name(value: Any, what: str, key: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 253:
        raise SpecError(f"{what} must be a host name such as \"wiki.example.com\", got {str(value)[:64]!r}", key)
    name = value.lower()
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]  # frp's wildcard: "*.example.com"
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise SpecError(
            f"{what} must be a host name such as \"wiki.example.com\" (or \"*.example.com\"), "
            f"without a scheme or port, got {value[:64]!r}", key
        )
    return name


def _domains(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) > MAX_HOSTS:
        raise SpecError(f"'customDomains' must be a list of at most {MAX_HOSTS} host names")
    return tuple(dict.fromkeys(_host_name(v, "each of 'customDomains'", "customDomains") for v in value))


def _subdomain(value: Any) -> Optional[str]:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _LABEL.fullmatch(value.lower()):
        raise SpecError(
            f"'subdomain' must be one name part such as \"wiki\" (letters, digits and '-', no dots), "
            f"got {str(value)[:64]!r}"
        )
    return value.lower()


def _locations(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) > MAX_PATHS:
        raise SpecError(f"'locations' must be a list of at most {MAX_PATHS} URL paths")
    paths = []
    for path in value:
        if path == "":
            path = "/"  # frp's default location
        if not isinstance(path, str) or len(path) > MAX_PATH or not _PATH.fullmatch(path):
            raise SpecError(f"each of 'locations' must be a URL path starting with '/', such as \"/api\", got {str(path)[:64]!r}", "locations")
        paths.append(path)
    return tuple(dict.fromkeys(paths))


def _optional_text(key: str, limit: int, pattern: Optional["re.Pattern[str]"] = None) -> Callable[[Any], Optional[str]]:
    def convert(value: Any) -> Optional[str]:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or len(value) > limit or (pattern is not None and not pattern.fullmatch(value)):
            raise SpecError(f"'{key}' must be a string of at most {limit} characters without control characters")
        return value

    return convert


_PRINTABLE = re.compile(r"[\x20-\x7e\x80-\U0010ffff]+")


def _header_rules(key: str) -> Callable[[Any], Tuple[Tuple[str, str], ...]]:
    def convert(value: Any) -> Tuple[Tuple[str, str], ...]:
        if value is None:
            return ()
        items = value.items() if isinstance(value, Mapping) else value
        try:
            rules = tuple((name, text) for name, text in items)
        except (TypeError, ValueError):
            raise SpecError(f"'{key}' must be a table of header names and values, e.g. {{ X-From = \"gotaxy\" }}") from None
        if len(rules) > MAX_HEADER_RULES:
            raise SpecError(f"'{key}' may set at most {MAX_HEADER_RULES} headers")
        for name, text in rules:
            if not isinstance(name, str) or len(name) > MAX_HEADER_NAME or not _TOKEN.fullmatch(name):
                raise SpecError(f"'{key}': {str(name)[:64]!r} is not a header name (letters, digits and '-')")
            if name.lower() in _FRAMING or name.lower() == "host":
                raise SpecError(f"'{key}' may not set {name!r}: the server frames messages itself (use hostHeaderRewrite for Host)")
            if not isinstance(text, str) or len(text) > MAX_HEADER_VALUE or not _HEADER_VALUE.fullmatch(text):
                raise SpecError(f"'{key}': the value of {name!r} must be at most {MAX_HEADER_VALUE} printable characters")
        return rules

    return convert


@attrs.frozen
class HttpSpec(StreamLimited, ProxySpec):
    """A ``type = "http"`` tunnel; see the module docstring for the keys (and ``StreamLimited`` for the rules)."""

    type: ClassVar[str] = "http"

    local_port: int = attrs.field(validator=check_port("localPort", 1))
    local_ip: str = attrs.field(default="127.0.0.1", validator=check_local_ip)
    custom_domains: Tuple[str, ...] = attrs.field(default=(), converter=_domains)
    subdomain: Optional[str] = attrs.field(default=None, converter=_subdomain)
    locations: Tuple[str, ...] = attrs.field(default=(), converter=_locations)
    host_header_rewrite: Optional[str] = attrs.field(
        default=None, converter=lambda v: None if v in (None, "") else _host_name(v, "'hostHeaderRewrite'", "hostHeaderRewrite")
    )
    http_user: Optional[str] = attrs.field(default=None, converter=_optional_text("httpUser", MAX_CREDENTIAL, _PRINTABLE))
    http_password: Optional[str] = attrs.field(
        default=None, repr=False, converter=_optional_text("httpPassword", MAX_CREDENTIAL, _PRINTABLE)
    )
    route_by_http_user: Optional[str] = attrs.field(
        default=None, converter=_optional_text("routeByHTTPUser", MAX_ROUTE_USER, re.compile(r"[A-Za-z0-9._~-]+"))
    )
    request_headers: Tuple[Tuple[str, str], ...] = attrs.field(default=(), converter=_header_rules("requestHeaders.set"))
    response_headers: Tuple[Tuple[str, str], ...] = attrs.field(default=(), converter=_header_rules("responseHeaders.set"))
    #: Plain-HTTP requests get a redirect to the same URL over HTTPS (needs the server's vhostHTTPSPort).
    redirect_to_https: bool = attrs.field(default=False, validator=_boolean("redirectToHTTPS"))

    def __attrs_post_init__(self) -> None:
        require_a_name("http", self.custom_domains, self.subdomain, "wiki")
        if (self.http_user is None) != (self.http_password is None):
            raise SpecError("'httpUser' and 'httpPassword' go together: give both to ask visitors to log in, or neither")
        if self.http_user is not None and ":" in self.http_user:
            raise SpecError("'httpUser' may not contain ':' (basic auth separates the user and password with it)")

    def to_keys(self) -> Dict[str, Any]:
        keys: Dict[str, Any] = {"type": "http", "localIP": self.local_ip, "localPort": self.local_port}
        if self.custom_domains:
            keys["customDomains"] = list(self.custom_domains)
        for key, value in (
            ("subdomain", self.subdomain), ("hostHeaderRewrite", self.host_header_rewrite),
            ("httpUser", self.http_user), ("httpPassword", self.http_password),
            ("routeByHTTPUser", self.route_by_http_user),
        ):
            if value is not None:
                keys[key] = value
        if self.locations:
            keys["locations"] = list(self.locations)
        if self.request_headers:
            keys["requestHeaders"] = {"set": dict(self.request_headers)}
        if self.response_headers:
            keys["responseHeaders"] = {"set": dict(self.response_headers)}
        if self.redirect_to_https:
            keys["redirectToHTTPS"] = True
        keys.update(self.rule_keys())
        return keys

    @property
    def local_description(self) -> str:
        return host_port(self.local_ip, self.local_port)

    @property
    def requested(self) -> Optional[PublicAddress]:
        # The names depend on the server's subDomainHost: ``address`` decides them.
        return None

    @property
    def local_endpoint(self) -> Optional[Tuple[str, int]]:
        return (self.local_ip, self.local_port)

    def hosts(self, sub_domain_host: Optional[str]) -> Tuple[str, ...]:
        """The host names this tunnel serves under a server whose ``subDomainHost`` is given (``site_hosts``)."""
        return site_hosts(self.custom_domains, self.subdomain, sub_domain_host)

    def address_for(self, config: Any) -> Optional[PublicAddress]:
        return self.address(config.vhost.sub_domain_host)

    def address(self, sub_domain_host: Optional[str]) -> PublicAddress:
        """Where the public reaches this tunnel (SpecError if the names do not fit the server)."""
        try:
            return PublicAddress("http", 0, self.hosts(sub_domain_host), self.locations, self.route_by_http_user or "")
        except AddressError as e:
            raise SpecError(str(e), "customDomains") from None


#: frp's key -> HttpSpec's attribute (the header tables are read apart).
_ATTRIBUTES = {
    "localIP": "local_ip", "localPort": "local_port", "customDomains": "custom_domains",
    "subdomain": "subdomain", "locations": "locations", "hostHeaderRewrite": "host_header_rewrite",
    "httpUser": "http_user", "httpPassword": "http_password", "routeByHTTPUser": "route_by_http_user",
    "redirectToHTTPS": "redirect_to_https", **HttpSpec.RULE_ATTRIBUTES,
}
_TABLES = {"requestHeaders": "request_headers", "responseHeaders": "response_headers"}


class HttpProxy(ProxyType):
    name = "http"
    label = "HTTP"
    fields = (
        LOCAL_IP,
        LOCAL_PORT,
        SpecField("customDomains", "list", "host names the site answers to, such as wiki.example.com or "
                  "*.example.com (give this or subdomain)", hint="field.customDomains.hint"),
        SpecField("subdomain", "text", "a name under the server's subDomainHost: wiki for wiki.<subDomainHost> "
                  "(give this or customDomains)", hint="field.subdomain.hint"),
        SpecField("locations", "list", "URL path prefixes this tunnel serves, the longest match winning; "
                  "none: every path", hint="field.locations.hint"),
        SpecField("httpUser", "text", "the user name visitors log in with (HTTP basic auth, checked by the server)"),
        SpecField("httpPassword", "secret", "the password visitors log in with"),
        SpecField("routeByHTTPUser", "text", "only requests logged in as this user reach this tunnel"),
        SpecField("hostHeaderRewrite", "host", "the Host header the local web server gets"),
        SpecField("requestHeaders", "map", "request headers the server sets, NAME=VALUE"),
        SpecField("responseHeaders", "map", "response headers the server sets, NAME=VALUE"),
        SpecField("redirectToHTTPS", "bool", "answer plain-HTTP requests with a redirect to HTTPS "
                  "(the server's vhostHTTPSPort)", default=False),
    ) + HttpSpec.RULE_FIELDS
    #: Keys that make a valid spec with the required fields (one of customDomains and subdomain is needed).
    example_keys: ClassVar[Dict[str, Any]] = {"customDomains": ["www.example.com"]}

    def parse(self, keys: Mapping[str, Any]) -> HttpSpec:
        known = set(_ATTRIBUTES) | set(_TABLES) | {"type"}
        unknown = sorted(str(k)[:32] for k in keys if k not in known)
        if unknown:
            raise SpecError(
                f"an http tunnel has no setting {unknown[0]!r} (it has {', '.join(sorted(set(_ATTRIBUTES) | set(_TABLES)))})",
                unknown[0],
            )
        if "localPort" not in keys:
            raise SpecError("an http tunnel needs 'localPort', the port of the local web server", "localPort")
        values = {attribute: keys[key] for key, attribute in _ATTRIBUTES.items() if key in keys}
        for key, attribute in _TABLES.items():
            if key in keys:
                table = keys[key]
                if isinstance(table, Mapping) and isinstance(table.get("set"), Mapping) and set(table) == {"set"}:
                    values[attribute] = table["set"]  # frp's form: requestHeaders.set.X-From = "gotaxy"
                elif isinstance(table, Mapping) and all(isinstance(v, str) for v in table.values()):
                    values[attribute] = table  # the faces' form: the headers themselves
                else:
                    raise SpecError(f"'{key}' takes one table, 'set' (e.g. {key}.set.X-From = \"gotaxy\")", key)
        return HttpSpec(**values)

    def make_front(self, config: Any, reactor: Any) -> Any:
        from gotaxy.proxy.vhost import HttpFront

        return HttpFront(config, reactor)

    async def expose(self, tunnel: LiveTunnel, context: ExposeContext) -> Exposure:
        spec = tunnel.spec
        assert isinstance(spec, HttpSpec)
        front = context.front
        vhost = context.config.vhost
        if front is None or not front.serving:
            raise TunnelRefused(
                "this server has no port for websites; ask the operator to set vhostHTTPPort "
                "(for example vhostHTTPPort = 80) or vhostHTTPSPort in the server's config"
            )
        try:
            address = spec.address(vhost.sub_domain_host)
        except SpecError as e:
            raise TunnelRefused(str(e)) from None
        if vhost.http_port != 80:
            # Not part of the identity (the claims hold names): it makes the URLs the faces show right.
            address = attrs.evolve(address, port=vhost.http_port)
        await context.claims.claim(address)
        front.router.add(tunnel, address)
        return Exposure(address=address, close=lambda: front.router.remove(tunnel))

    def connect(self, reactor: Any, spec: ProxySpec, stream: Stream, failed: Callable[[Failure], None]) -> None:
        assert isinstance(spec, HttpSpec)
        connect_local(reactor, spec.local_ip, spec.local_port, stream, failed)


HTTP = HttpProxy()
