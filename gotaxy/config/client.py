# -*- test-case-name: tests.test_config -*-
"""
``gotaxy client``'s settings (``ClientConfig``) and the tunnels it asks for
(``TunnelSpec``, from ``[[proxies]]`` or ``--tunnel``).
"""

from __future__ import annotations

import ipaddress

import attrs

from gotaxy.jointoken import JoinToken, JoinTokenError, parse_join_token
from gotaxy.names import is_valid_name
from gotaxy.config.values import (
    AUTH_METHOD,
    BOOLEAN,
    COUNT,
    LIMIT,
    ConfigError,
    FINGERPRINT,
    FRP_PROXY_TYPES,
    HEADER_TABLE,
    STRING,
    STRINGS,
    HEALTH_CHECK_TYPE,
    HEARTBEAT,
    HOST,
    LOCAL_RULES,
    LOG_LEVEL,
    LocalAddressRule,
    _Form,
    NAME,
    PORT,
    REMOTE_PORT,
    SECONDS,
    SERVICE_PORT,
    supported_type,
    supported_types_text,
    TEXT,
    TUNNEL_TYPE,
    _FLAG_PORT,
    _Heartbeats,
    _Mismatch,
    _check_heartbeats,
    _field_label,
    _flag_port,
    _host,
    _is_ipv6,
    _setting,
    _show,
    has_port,
    parse_host_port,
)

#: Most servers ``serverAddr`` may list.
MAX_SERVERS = 16


def _server_entry(value: object) -> str:
    """One ``serverAddr`` entry, normalised: ``host``, ``host:port``, ``[v6]:port`` (a bare IPv6 host stays bare)."""
    if not isinstance(value, str):
        raise _Mismatch(value)
    text = value.strip()
    try:
        if has_port(text):
            host, port = parse_host_port(text)
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return _host(text)
    except (ConfigError, _Mismatch):
        raise _Mismatch(value) from None


def _server_addrs(value: object) -> str:
    """
    ``serverAddr``: frp's one host, or (Gotaxy's) several servers of one
    cluster, as a list or a comma-separated string; each entry a host, or
    ``host:port`` when its port is not ``serverPort``.  Held as one string:
    a single host as it was, several entries joined by ``", "``.
    """
    if isinstance(value, str) and "," not in value:
        return _host(value.strip())  # frp's: one host, its port in serverPort
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise _Mismatch(value)
    if not parts or len(parts) > MAX_SERVERS:
        raise _Mismatch(value)
    entries = [_server_entry(part) for part in parts]
    if len(entries) == 1 and not has_port(entries[0]):
        return entries[0]
    return ", ".join(dict.fromkeys(entries))


SERVER_ADDRS = _Form(
    f'a host name or IP address without a port, or up to {MAX_SERVERS} servers of one cluster as a list or a '
    'comma-separated string, each a host or HOST:PORT, such as ["a.example.org", "b.example.org:7001"]',
    _server_addrs,
)


def split_servers(server_addr: str, default_port: int) -> "tuple[tuple[str, int], ...]":
    """The (host, port) of each entry of a normalised ``serverAddr``."""
    if "," not in server_addr and not has_port(server_addr):
        return ((server_addr, default_port),)
    return tuple(parse_host_port(entry.strip(), default_port) for entry in server_addr.split(","))



@attrs.frozen
class TunnelSpec:
    """One tunnel a client asks for: a ``[[proxies]]`` entry or a ``--tunnel`` flag."""

    name: str = _setting(attrs.NOTHING, NAME, "name")
    local_port: int = _setting(attrs.NOTHING, PORT, "localPort")
    local_ip: str = _setting("127.0.0.1", HOST, "localIP")
    type: str = _setting("tcp", TUNNEL_TYPE, "type")
    remote_port: int = _setting(0, REMOTE_PORT, "remotePort")
    #: ``enabled = false`` (or a ``start`` list without it): defined, not opened.
    enabled: bool = _setting(True, BOOLEAN, "enabled")
    #: frp's ``healthCheck``: a TCP connect to the local service every
    #: ``health_check_interval`` s; after ``health_check_max_failed`` failures
    #: in a row the tunnel is shown down (its port is kept).  ``"http"`` is
    #: checked the same way (with a warning).  frp's defaults: 3 s, 1, 10 s.
    health_check_type: str | None = _setting(None, HEALTH_CHECK_TYPE, "healthCheck.type")
    health_check_timeout: float = _setting(3.0, SECONDS, "healthCheck.timeoutSeconds")
    health_check_max_failed: int = _setting(1, COUNT, "healthCheck.maxFailed")
    health_check_interval: float = _setting(10.0, SECONDS, "healthCheck.intervalSeconds")
    #: ``type = "http"``'s keys (``gotaxy.proxy.http`` checks them).
    custom_domains: tuple[str, ...] = _setting((), STRINGS, "customDomains")
    subdomain: str | None = _setting(None, STRING, "subdomain")
    locations: tuple[str, ...] = _setting((), STRINGS, "locations")
    host_header_rewrite: str | None = _setting(None, STRING, "hostHeaderRewrite")
    http_user: str | None = _setting(None, STRING, "httpUser")
    http_password: str | None = _setting(None, STRING, "httpPassword", secret=True)
    route_by_http_user: str | None = _setting(None, STRING, "routeByHTTPUser")
    request_headers: tuple[tuple[str, str], ...] = _setting((), HEADER_TABLE, "requestHeaders.set")
    response_headers: tuple[tuple[str, str], ...] = _setting((), HEADER_TABLE, "responseHeaders.set")
    #: ``type = "udp"``: seconds an idle visitor's association lasts, and most visitors at once
    #: (``gotaxy.proxy.udp``; not set: its defaults, 60 s and 1024).
    idle_timeout: int | None = _setting(None, COUNT, "idleTimeout")
    max_associations: int | None = _setting(None, COUNT, "maxAssociations")
    #: ``tcp`` and ``https``: HAProxy's PROXY header to the local service, "v1" or "v2" (``gotaxy.proxy.proxyprotocol``).
    proxy_protocol_version: str | None = _setting(None, STRING, "transport.proxyProtocolVersion")
    #: ``tcp``: frp's bandwidth limit, "1MB" a second each way, and which end enforces it (``gotaxy.bandwidth``).
    bandwidth_limit: str | None = _setting(None, STRING, "transport.bandwidthLimit")
    bandwidth_limit_mode: str | None = _setting(None, STRING, "transport.bandwidthLimitMode")
    #: Every type: connections at once, at once per source address, new per minute per source (``gotaxy.server.limits``).
    max_connections: int | None = _setting(None, LIMIT, "transport.maxConnections")
    max_connections_per_ip: int | None = _setting(None, LIMIT, "transport.maxConnectionsPerIP")
    connection_rate_per_ip: int | None = _setting(None, LIMIT, "transport.connectionRatePerIP")
    #: ``http``: plain-HTTP requests are redirected to HTTPS.
    redirect_to_https: bool = _setting(False, BOOLEAN, "redirectToHTTPS")

    def proxy_keys(self) -> dict:
        """frp's keys of this tunnel for its proxy type (``gotaxy.proxy.parse_spec`` reads them)."""
        keys: dict = {"type": self.type, "localIP": self.local_ip, "localPort": self.local_port}
        if self.type in ("tcp", "udp") or self.remote_port:
            keys["remotePort"] = self.remote_port
        for key, value in (
            ("customDomains", list(self.custom_domains)), ("subdomain", self.subdomain),
            ("locations", list(self.locations)), ("hostHeaderRewrite", self.host_header_rewrite),
            ("httpUser", self.http_user), ("httpPassword", self.http_password),
            ("routeByHTTPUser", self.route_by_http_user),
            ("idleTimeout", self.idle_timeout), ("maxAssociations", self.max_associations),
            ("transport.proxyProtocolVersion", self.proxy_protocol_version),
            ("transport.bandwidthLimit", self.bandwidth_limit),
            ("transport.bandwidthLimitMode", self.bandwidth_limit_mode),
            ("transport.maxConnections", self.max_connections),
            ("transport.maxConnectionsPerIP", self.max_connections_per_ip),
            ("transport.connectionRatePerIP", self.connection_rate_per_ip),
        ):
            if value:
                keys[key] = value
        if self.request_headers:
            keys["requestHeaders"] = {"set": dict(self.request_headers)}
        if self.response_headers:
            keys["responseHeaders"] = {"set": dict(self.response_headers)}
        if self.redirect_to_https:
            keys["redirectToHTTPS"] = True
        return keys


@attrs.frozen
class ClientConfig(_Heartbeats):
    """Everything ``gotaxy client`` needs to know; see the module docstring for the keys."""

    #: One host (frp's), or several servers of one cluster (``servers``): the client fails over between them.
    server_addr: str = _setting("127.0.0.1", SERVER_ADDRS, "serverAddr", "--server")
    server_port: int = _setting(7000, PORT, "serverPort", "--server")
    token: str | None = _setting(None, TEXT, "auth.token", "--token", secret=True)
    user: str | None = _setting(None, NAME, "user", "--user")
    tunnels: tuple[TunnelSpec, ...] = attrs.field(
        default=(),
        converter=tuple,
        validator=attrs.validators.deep_iterable(attrs.validators.instance_of(TunnelSpec)),
    )
    #: The files ``includes`` named when the config was read (their proxies are in ``tunnels``).
    included: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    fingerprint: str | None = _setting(
        None, FINGERPRINT, "transport.tls.fingerprint", "--fingerprint"
    )
    trusted_ca_file: str | None = _setting(None, TEXT, "transport.tls.trustedCaFile", "--ca")
    #: frp's: the certificate and key this client presents (``gotaxy.tls.clients``).
    tls_cert_file: str | None = _setting(None, TEXT, "transport.tls.certFile", "--cert")
    tls_key_file: str | None = _setting(None, TEXT, "transport.tls.keyFile", "--key")
    #: "token" (frp's) or "certificate" (Gotaxy's: log in with the certificate alone, no token is sent).
    auth_method: str = _setting("token", AUTH_METHOD, "auth.method")
    server_name: str | None = _setting(None, HOST, "transport.tls.serverName", "--server-name")
    insecure: bool = _setting(False, BOOLEAN, "transport.tls.insecureSkipVerify", "--insecure")
    data_dir: str = _setting("~/.gotaxy", TEXT, "dataDir", "--data-dir")
    _heartbeat_interval: float | None = _setting(
        None, HEARTBEAT, "transport.heartbeatInterval", alias="heartbeat_interval"
    )
    _heartbeat_timeout: float | None = _setting(
        None, HEARTBEAT, "transport.heartbeatTimeout", alias="heartbeat_timeout"
    )
    dial_timeout: float = _setting(10.0, SECONDS, "transport.dialServerTimeout")
    login_fail_exit: bool = _setting(True, BOOLEAN, "loginFailExit")
    log_level: str = _setting("info", LOG_LEVEL, "log.level")
    log_max_days: int = _setting(3, COUNT, "log.maxDays")
    #: frp's admin API (``webServer.*``, ``gotaxy.client.admin``): off while the port is 0.
    admin_addr: str = _setting("127.0.0.1", HOST, "webServer.addr")
    admin_port: int = _setting(0, SERVICE_PORT, "webServer.port")
    admin_user: str | None = _setting(None, TEXT, "webServer.user")
    admin_password: str | None = _setting(None, TEXT, "webServer.password", secret=True)
    #: Local addresses operator-defined tunnels may point at; empty: none.
    allow_operator_tunnels: tuple[LocalAddressRule, ...] = _setting(
        (), LOCAL_RULES, "allowOperatorTunnels", "--allow-operator-tunnel"
    )

    def operator_tunnel_refusal(self, host: str, port: int) -> str | None:
        """
        Why an operator-defined tunnel to ``host:port`` may not open, or
        ``None`` if this client's ``allowOperatorTunnels`` allows it.
        """
        if any(rule.allows(host, port) for rule in self.allow_operator_tunnels):
            return None
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not self.allow_operator_tunnels:
            return (
                f"this client accepts no operator-defined tunnels; to allow {shown}, add it to "
                f"allowOperatorTunnels in the client's config (or --allow-operator-tunnel {shown})"
            )
        allowed = ", ".join(str(rule) for rule in self.allow_operator_tunnels)
        if len(allowed) > 200:
            allowed = allowed[:197] + "..."
        return (
            f"{shown} is not in this client's allowOperatorTunnels ({allowed}); add it there "
            f"to allow it"
        )

    @property
    def servers(self) -> "tuple[tuple[str, int], ...]":
        """The (host, port) of every server ``serverAddr`` lists, in its order (``serverPort`` where none is given)."""
        return split_servers(self.server_addr, self.server_port)

    #: frp's client defaults: a ping every 30 s, the server dead after 90 s of silence.
    HEARTBEAT_DEFAULTS = (30.0, 90.0)

    @property
    def join_token(self) -> JoinToken | None:
        """``auth.token`` as a join token, or ``None`` for an old-style token."""
        return parse_join_token(self.token) if self.token else None

    @property
    def login_secret(self) -> str:
        """What the client sends to log in: a join token's secret, or the whole old-style token."""
        if self.auth_method == "certificate":
            return ""  # the certificate alone: the token, if any, is not sent
        join = self.join_token
        return join.secret if join is not None else (self.token or "")

    def __attrs_post_init__(self) -> None:
        _check_heartbeats(self)
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError(
                "'transport.tls.certFile' and 'transport.tls.keyFile' go together: give both to present a client "
                "certificate, or neither"
            )
        if self.auth_method == "certificate" and self.tls_cert_file is None:
            raise ConfigError(
                "'auth.method' is \"certificate\" but 'transport.tls.certFile' and 'transport.tls.keyFile' are not "
                "set: give the client certificate and key ('gotaxy cert issue NAME' on the server makes them), or "
                "set auth.method = \"token\""
            )
        if self.admin_port and not self.admin_password and not _is_loopback(self.admin_addr):
            raise ConfigError(
                f"'webServer.addr' is {self.admin_addr}, reachable from other machines, but "
                f"'webServer.password' is not set: set webServer.user and webServer.password, or "
                f'listen on loopback only (webServer.addr = "127.0.0.1")'
            )
        if self.token:
            try:
                parse_join_token(self.token)
            except JoinTokenError as e:
                raise ConfigError(f"{_field_label(ClientConfig, 'token')}: {e}") from None
        names = [tunnel.name for tunnel in self.tunnels]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(
                    f"two tunnels are named '{name}'; give each [[proxies]] entry "
                    f"and --tunnel its own name"
                )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


def parse_tunnel_flag(text: str) -> TunnelSpec:
    """
    A ``--tunnel NAME=tcp:LOCALIP:LOCALPORT[:REMOTEPORT]`` value, such as
    ``ssh=tcp:127.0.0.1:22:6000``, ``db=tcp:[::1]:5432:0`` or ``web=tcp:8080``
    (local IP 127.0.0.1, remote port picked by the server).
    """

    def problem(what: str) -> ConfigError:
        return ConfigError(f"--tunnel {_show(text)}: {what}")

    usage = "expected NAME=tcp:LOCALIP:LOCALPORT[:REMOTEPORT], e.g. ssh=tcp:127.0.0.1:22:6000"
    name, equals, rest = text.partition("=")
    kind, colon, address = rest.partition(":")
    if not (equals and colon and address):
        raise problem(usage)
    if not is_valid_name(name):
        raise problem(f"the tunnel name must be {NAME.expected}")
    if not supported_type(kind):
        if kind in FRP_PROXY_TYPES:
            raise problem(f'type "{kind}" is not supported yet; only {supported_types_text()} tunnels are')
        raise problem(usage)

    if address.startswith("["):
        ip, bracket, after = address[1:].partition("]")
        if not (bracket and after.startswith(":")):
            raise problem(usage)
        ports = after[1:].split(":")
        ip = f"[{ip}]"  # so that _host insists on IPv6
    else:
        parts = address.split(":")
        if len(parts) > 3:
            bare_ipv6 = any(_is_ipv6(":".join(parts[:-n])) for n in (1, 2))
            raise problem(
                "put an IPv6 local address in brackets, e.g. db=tcp:[::1]:5432"
                if bare_ipv6
                else usage
            )
        if len(parts) == 2 and _FLAG_PORT.fullmatch(parts[0]):
            raise problem(
                f"to choose the remote port, give the local IP too, e.g. "
                f"{name}=tcp:127.0.0.1:{parts[0]}:{parts[1]}"
            )
        ip, ports = ("127.0.0.1", parts) if len(parts) == 1 else (parts[0], parts[1:])
    if len(ports) > 2:
        raise problem(usage)
    try:
        ip = _host(ip)
    except _Mismatch:
        raise problem(f"the local IP must be {HOST.expected}, got {_show(ip)}") from None
    local_port = _flag_port(ports[0], PORT)
    if local_port is None:
        raise problem(f"the local port must be {PORT.expected}, got {_show(ports[0])}")
    remote_port = _flag_port(ports[1], REMOTE_PORT) if len(ports) == 2 else 0
    if remote_port is None:
        raise problem(f"the remote port must be {REMOTE_PORT.expected}, got {_show(ports[1])}")
    tunnel = TunnelSpec(name=name, type=kind, local_port=local_port, local_ip=ip, remote_port=remote_port)
    from gotaxy.proxy import SpecError, parse_spec

    try:
        parse_spec(tunnel.proxy_keys())
    except SpecError as e:
        raise problem(
            f"{e}; a --tunnel flag gives only the local address and the remote port, so define this tunnel "
            f"in [[proxies]] of the client's config (--config FILE)"
        ) from None
    return tunnel
