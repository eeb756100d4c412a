# -*- test-case-name: tests.test_frp_ini -*-
"""
frp's legacy INI format (``frps.ini`` / ``frpc.ini``, frp before 0.52),
converted to frp's TOML format, which Gotaxy reads.

An INI file has a ``[common]`` section with snake_case keys
(``bind_port = 7000``); a client file has one more section per proxy
(``[ssh]``), per visitor (``role = visitor``) or per range of proxies
(``[range:tcp_port]``, one proxy per port, named ``tcp_port_0``,
``tcp_port_1`` ...); a server file has ``[plugin.NAME]`` sections for its
HTTP plugins.  The mapping below follows frp's own ``pkg/config/legacy``
(``Convert_ClientCommonConf_To_v1`` and friends) key by key:

* ``KEY = value`` becomes ``path = value`` with the value typed as frp
  types it (integers, booleans, comma-separated lists);
* ``meta_X``, ``oidc_additional_X`` and an http proxy's ``header_X`` become
  entries of ``metadatas``, ``auth.oidc.additionalEndpointParams`` and
  ``requestHeaders.set``; ``plugin_X`` become the keys of ``[proxies.plugin]``
  that frp's plugin of that type reads;
* ``authenticate_heartbeats`` / ``authenticate_new_work_conns`` become
  ``auth.additionalScopes``; ``allow_ports = 2000-3000,3001`` becomes a list
  of ranges; ``dashboard_tls_*`` becomes ``webServer.tls`` when
  ``dashboard_tls_mode`` is on.

As in frp, a key without a value counts as not set.  What frp would not
convert either (an unknown key, a key of another proxy type, ``log_way``)
is not converted and reported in ``Converted.notes``.  The result is frp's
TOML, for frp as much as for Gotaxy, which then warns about the frp settings
it ignores.
"""

from __future__ import annotations

import configparser
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import attrs
import tomli_w

from gotaxy.config import ConfigError

__all__ = ["Converted", "convert_ini", "looks_like_frp_ini"]

_Typed = Callable[[str], Any]


def _text(value: str) -> str:
    return value


def _integer(value: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise ValueError("an integer")
    return int(value)


_TRUE = {"1", "t", "T", "TRUE", "true", "True", "YES", "yes", "Yes", "y", "ON", "on", "On"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False", "NO", "no", "No", "n", "OFF", "off", "Off"}


def _boolean(value: str) -> bool:
    """A boolean the way frp's INI library reads one."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("true or false")


def _texts(value: str) -> List[str]:
    """A comma-separated list, as frp's INI library splits it."""
    return [item.strip() for item in value.split(",") if item.strip()]


S, I, B, L = _text, _integer, _boolean, _texts

_CLIENT_AUTH = {
    "authentication_method": ("auth.method", S),
    "token": ("auth.token", S),
    "oidc_client_id": ("auth.oidc.clientID", S),
    "oidc_client_secret": ("auth.oidc.clientSecret", S),
    "oidc_audience": ("auth.oidc.audience", S),
    "oidc_scope": ("auth.oidc.scope", S),
    "oidc_token_endpoint_url": ("auth.oidc.tokenEndpointURL", S),
}
_SERVER_AUTH = {
    "authentication_method": ("auth.method", S),
    "token": ("auth.token", S),
    "oidc_issuer": ("auth.oidc.issuer", S),
    "oidc_audience": ("auth.oidc.audience", S),
    "oidc_skip_expiry_check": ("auth.oidc.skipExpiryCheck", B),
    "oidc_skip_issuer_check": ("auth.oidc.skipIssuerCheck", B),
}
_QUIC = {
    "quic_keepalive_period": ("transport.quic.keepalivePeriod", I),
    "quic_max_idle_timeout": ("transport.quic.maxIdleTimeout", I),
    "quic_max_incoming_streams": ("transport.quic.maxIncomingStreams", I),
}
_LOG = {
    "log_file": ("log.to", S),
    "log_level": ("log.level", S),
    "log_max_days": ("log.maxDays", I),
    "disable_log_color": ("log.disablePrintColor", B),
}

CLIENT_COMMON: Mapping[str, Tuple[str, _Typed]] = {
    **_CLIENT_AUTH,
    "server_addr": ("serverAddr", S),
    "server_port": ("serverPort", I),
    "nat_hole_stun_server": ("natHoleStunServer", S),
    "dial_server_timeout": ("transport.dialServerTimeout", I),
    "dial_server_keepalive": ("transport.dialServerKeepalive", I),
    "connect_server_local_ip": ("transport.connectServerLocalIP", S),
    "http_proxy": ("transport.proxyURL", S),
    "pool_count": ("transport.poolCount", I),
    "tcp_mux": ("transport.tcpMux", B),
    "tcp_mux_keepalive_interval": ("transport.tcpMuxKeepaliveInterval", I),
    "protocol": ("transport.protocol", S),
    **_QUIC,
    "heartbeat_interval": ("transport.heartbeatInterval", I),
    "heartbeat_timeout": ("transport.heartbeatTimeout", I),
    "tls_enable": ("transport.tls.enable", B),
    "disable_custom_tls_first_byte": ("transport.tls.disableCustomTLSFirstByte", B),
    "tls_cert_file": ("transport.tls.certFile", S),
    "tls_key_file": ("transport.tls.keyFile", S),
    "tls_trusted_ca_file": ("transport.tls.trustedCaFile", S),
    "tls_server_name": ("transport.tls.serverName", S),
    **_LOG,
    "admin_addr": ("webServer.addr", S),
    "admin_port": ("webServer.port", I),
    "admin_user": ("webServer.user", S),
    "admin_pwd": ("webServer.password", S),
    "assets_dir": ("webServer.assetsDir", S),
    "pprof_enable": ("webServer.pprofEnable", B),
    "user": ("user", S),
    "dns_server": ("dnsServer", S),
    "login_fail_exit": ("loginFailExit", B),
    "start": ("start", L),
    "udp_packet_size": ("udpPacketSize", I),
    "includes": ("includes", L),
}

SERVER_COMMON: Mapping[str, Tuple[str, _Typed]] = {
    **_SERVER_AUTH,
    "bind_addr": ("bindAddr", S),
    "bind_port": ("bindPort", I),
    "kcp_bind_port": ("kcpBindPort", I),
    "quic_bind_port": ("quicBindPort", I),
    **_QUIC,
    "proxy_bind_addr": ("proxyBindAddr", S),
    "vhost_http_port": ("vhostHTTPPort", I),
    "vhost_https_port": ("vhostHTTPSPort", I),
    "tcpmux_httpconnect_port": ("tcpmuxHTTPConnectPort", I),
    "tcpmux_passthrough": ("tcpmuxPassthrough", B),
    "vhost_http_timeout": ("vhostHTTPTimeout", I),
    "dashboard_addr": ("webServer.addr", S),
    "dashboard_port": ("webServer.port", I),
    "dashboard_user": ("webServer.user", S),
    "dashboard_pwd": ("webServer.password", S),
    "assets_dir": ("webServer.assetsDir", S),
    "pprof_enable": ("webServer.pprofEnable", B),
    "enable_prometheus": ("enablePrometheus", B),
    **_LOG,
    "detailed_errors_to_client": ("detailedErrorsToClient", B),
    "subdomain_host": ("subDomainHost", S),
    "custom_404_page": ("custom404Page", S),
    "user_conn_timeout": ("userConnTimeout", I),
    "udp_packet_size": ("udpPacketSize", I),
    "nat_hole_analysis_data_reserve_hours": ("natholeAnalysisDataReserveHours", I),
    "tcp_mux": ("transport.tcpMux", B),
    "tcp_mux_keepalive_interval": ("transport.tcpMuxKeepaliveInterval", I),
    "tcp_keepalive": ("transport.tcpKeepalive", I),
    "max_pool_count": ("transport.maxPoolCount", I),
    "heartbeat_timeout": ("transport.heartbeatTimeout", I),
    "tls_only": ("transport.tls.force", B),
    "tls_cert_file": ("transport.tls.certFile", S),
    "tls_key_file": ("transport.tls.keyFile", S),
    "tls_trusted_ca_file": ("transport.tls.trustedCaFile", S),
    "max_ports_per_client": ("maxPortsPerClient", I),
}
#: Read below, not by the tables above.
_SERVER_SPECIAL = {
    "allow_ports", "dashboard_tls_mode", "dashboard_tls_cert_file", "dashboard_tls_key_file",
}
_SCOPES = {"authenticate_heartbeats": "HeartBeats", "authenticate_new_work_conns": "NewWorkConns"}
#: frp reads these but its TOML has nothing for them.
_DROPPED = {"log_way": "frp's TOML has only log.to, taken from log_file"}

_PROXY_BASE: Mapping[str, Tuple[str, _Typed]] = {
    "type": ("type", S),
    "local_ip": ("localIP", S),
    "local_port": ("localPort", I),
    "use_encryption": ("transport.useEncryption", B),
    "use_compression": ("transport.useCompression", B),
    "bandwidth_limit": ("transport.bandwidthLimit", S),
    "bandwidth_limit_mode": ("transport.bandwidthLimitMode", S),
    "proxy_protocol_version": ("transport.proxyProtocolVersion", S),
    "group": ("loadBalancer.group", S),
    "group_key": ("loadBalancer.groupKey", S),
    "health_check_type": ("healthCheck.type", S),
    "health_check_timeout_s": ("healthCheck.timeoutSeconds", I),
    "health_check_max_failed": ("healthCheck.maxFailed", I),
    "health_check_interval_s": ("healthCheck.intervalSeconds", I),
    "health_check_url": ("healthCheck.path", S),
    "plugin": ("plugin.type", S),
}
_DOMAINS = {"custom_domains": ("customDomains", L), "subdomain": ("subdomain", S)}
_SECRET = {"sk": ("secretKey", S), "allow_users": ("allowUsers", L)}
_PROXY_TYPES: Mapping[str, Mapping[str, Tuple[str, _Typed]]] = {
    "tcp": {"remote_port": ("remotePort", I)},
    "udp": {"remote_port": ("remotePort", I)},
    "http": {
        **_DOMAINS,
        "locations": ("locations", L),
        "http_user": ("httpUser", S),
        "http_pwd": ("httpPassword", S),
        "host_header_rewrite": ("hostHeaderRewrite", S),
        "route_by_http_user": ("routeByHTTPUser", S),
    },
    "https": dict(_DOMAINS),
    "tcpmux": {
        **_DOMAINS,
        "http_user": ("httpUser", S),
        "http_pwd": ("httpPassword", S),
        "route_by_http_user": ("routeByHTTPUser", S),
        "multiplexer": ("multiplexer", S),
    },
    "stcp": dict(_SECRET),
    "xtcp": dict(_SECRET),
    "sudp": dict(_SECRET),
}
_PLUGIN_ADDR = {
    "plugin_local_addr": "localAddr",
    "plugin_host_header_rewrite": "hostHeaderRewrite",
}
_PLUGIN_TLS = {"plugin_crt_path": "crtPath", "plugin_key_path": "keyPath"}
#: plugin type -> {INI key: key of [proxies.plugin]}; True: plugin_header_X too.
_PLUGINS: Mapping[str, Tuple[Mapping[str, str], bool]] = {
    "http2https": (_PLUGIN_ADDR, True),
    "http_proxy": ({"plugin_http_user": "httpUser", "plugin_http_passwd": "httpPassword"}, False),
    "https2http": ({**_PLUGIN_ADDR, **_PLUGIN_TLS}, True),
    "https2https": ({**_PLUGIN_ADDR, **_PLUGIN_TLS}, True),
    "socks5": ({"plugin_user": "username", "plugin_passwd": "password"}, False),
    "static_file": (
        {
            "plugin_local_path": "localPath",
            "plugin_strip_prefix": "stripPrefix",
            "plugin_http_user": "httpUser",
            "plugin_http_passwd": "httpPassword",
        },
        False,
    ),
    "unix_domain_socket": ({"plugin_unix_path": "unixPath"}, False),
}

_VISITOR_BASE: Mapping[str, Tuple[str, _Typed]] = {
    "type": ("type", S),
    "use_encryption": ("transport.useEncryption", B),
    "use_compression": ("transport.useCompression", B),
    "sk": ("secretKey", S),
    "server_user": ("serverUser", S),
    "server_name": ("serverName", S),
    "bind_addr": ("bindAddr", S),
    "bind_port": ("bindPort", I),
}
_VISITOR_TYPES: Mapping[str, Mapping[str, Tuple[str, _Typed]]] = {
    "stcp": {},
    "sudp": {},
    "xtcp": {
        "protocol": ("protocol", S),
        "keep_tunnel_open": ("keepTunnelOpen", B),
        "max_retries_an_hour": ("maxRetriesAnHour", I),
        "min_retry_interval": ("minRetryInterval", I),
        "fallback_to": ("fallbackTo", S),
        "fallback_timeout_ms": ("fallbackTimeoutMs", I),
    },
}

#: Most sections and keys a file may have; a legacy file is small.
MAX_SECTIONS = 10000
MAX_RANGE = 65535


@attrs.frozen
class Converted:
    """A legacy INI file in frp's TOML format."""

    kind: str  #: "server" or "client"
    data: Dict[str, Any]
    notes: Tuple[str, ...]  #: what was not converted, one sentence each

    def toml(self, source: str) -> str:
        """The TOML text, with a header that says where it came from."""
        header = [
            f"# Converted by 'gotaxy convert' from {source} (frp's legacy INI format).",
            "# frp (0.52 and later) and Gotaxy both read this file.",
        ]
        header += [f"# Not converted: {note}" for note in self.notes]
        return "\n".join(header) + "\n\n" + tomli_w.dumps(self.data)


def _parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None,
        allow_no_value=True,  # frp's AllowBooleanKeys: a bare "key" is true
        strict=False,  # a repeated key or section: the last one wins, as in frp
        default_section="\0no default section",  # "[DEFAULT]" is an ordinary section in frp
        delimiters=("=", ":"),
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=None,  # frp's IgnoreInlineComment
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    return parser


def _read(text: str, source: str) -> configparser.ConfigParser:
    parser = _parser()
    try:
        parser.read_string(text, source)
    except configparser.Error as e:
        raise ConfigError(f"{source}: not a valid frp INI file: {e}") from None
    if not parser.has_section("common"):
        raise ConfigError(
            f"{source}: not an frp INI file: it has no [common] section (frp's legacy "
            f"frps.ini and frpc.ini start with one)"
        )
    if len(parser.sections()) > MAX_SECTIONS:
        raise ConfigError(f"{source}: more than {MAX_SECTIONS} sections; this is not an frp INI file")
    return parser


def looks_like_frp_ini(text: str) -> bool:
    """True for text that parses as INI and has frp's ``[common]`` section."""
    try:
        _read(text, "-")
    except ConfigError:
        return False
    return True


class _Converter:
    def __init__(self, source: str) -> None:
        self.source = source
        self.notes: List[str] = []

    def value(self, section: str, key: str, raw: Optional[str], typed: _Typed) -> Any:
        if raw is None:
            raw = "true"  # a bare key
        try:
            return typed(raw.strip())
        except ValueError as e:
            raise ConfigError(
                f"{self.source}: [{section}] {key} must be {e}, got {raw.strip()!r}; fix it in the "
                f"INI file and convert again"
            ) from None

    def apply(
        self,
        out: Dict[str, Any],
        section: str,
        items: Mapping[str, Optional[str]],
        table: Mapping[str, Tuple[str, _Typed]],
        ignore: Callable[[str], bool] = lambda key: False,
    ) -> None:
        for key, raw in items.items():
            if raw is not None and not raw.strip() and key in table:
                continue  # "oidc_issuer =": not set
            if key in table:
                path, typed = table[key]
                _put(out, path, self.value(section, key, raw, typed))
            elif key in _DROPPED:
                self.note(section, key, _DROPPED[key])
            elif not ignore(key):
                self.note(section, key, "frp does not read it there")

    def note(self, section: str, key: str, why: str) -> None:
        self.notes.append(f"[{section}] {key} ({why})")

    # -- the [common] section ------------------------------------------------

    def common(self, items: Mapping[str, Optional[str]], kind: str) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        table = CLIENT_COMMON if kind == "client" else SERVER_COMMON
        special = set(_SCOPES) | (_SERVER_SPECIAL if kind == "server" else set())
        prefixes = ("meta_", "oidc_additional_") if kind == "client" else ()
        self.apply(out, "common", items, table, lambda key: key in special or key.startswith(prefixes))
        scopes = [
            scope for key, scope in _SCOPES.items()
            if items.get(key, "") != "" and self.value("common", key, items[key], B)
        ]
        if scopes:
            _put(out, "auth.additionalScopes", scopes)
        if kind == "client":
            self.prefixed(out, items, "meta_", "metadatas")
            self.prefixed(out, items, "oidc_additional_", "auth.oidc.additionalEndpointParams")
        else:
            self.server_special(out, items)
        return out

    def prefixed(self, out: Dict[str, Any], items: Mapping[str, Optional[str]], prefix: str, path: str) -> None:
        found = {key[len(prefix):]: raw or "" for key, raw in items.items() if key.startswith(prefix)}
        found = {key: value for key, value in found.items() if key}
        if found:
            _put(out, path, found)

    def server_special(self, out: Dict[str, Any], items: Mapping[str, Optional[str]]) -> None:
        allow = (items.get("allow_ports") or "").strip()
        if allow:
            ranges = []
            for start, end in self.ranges("common", "allow_ports", allow):
                ranges.append({"single": start} if start == end else {"start": start, "end": end})
            out["allowPorts"] = ranges
        tls_mode = items.get("dashboard_tls_mode", "") != "" and self.value(
            "common", "dashboard_tls_mode", items["dashboard_tls_mode"], B
        )
        for key, path in (
            ("dashboard_tls_cert_file", "webServer.tls.certFile"),
            ("dashboard_tls_key_file", "webServer.tls.keyFile"),
        ):
            if (items.get(key) or "").strip():
                if tls_mode:
                    _put(out, path, items[key].strip())  # type: ignore[union-attr]
                else:
                    self.note("common", key, "frp uses it only with dashboard_tls_mode = true")

    def ranges(self, section: str, key: str, text: str) -> List[Tuple[int, int]]:
        """frp's ``2000-3000,3001`` as (start, end) pairs."""
        pairs = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            low, dash, high = part.partition("-")
            try:
                start = int(low.strip())
                end = int(high.strip()) if dash else start
            except ValueError:
                raise ConfigError(
                    f"{self.source}: [{section}] {key} must be ports and ranges such as "
                    f"2000-3000,3001, got {text!r}"
                ) from None
            if not (0 <= start <= end <= 65535):
                raise ConfigError(
                    f"{self.source}: [{section}] {key}: {part!r} is not a range of ports from 0 to 65535"
                )
            pairs.append((start, end))
        return pairs

    # -- proxies and visitors ------------------------------------------------

    def proxy(self, name: str, items: Mapping[str, Optional[str]]) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": name}
        kind = (items.get("type") or "").strip() or "tcp"
        if kind not in _PROXY_TYPES:
            raise ConfigError(
                f"{self.source}: [{name}] has type {kind!r}, which frp does not know either; use one of "
                f"{', '.join(sorted(_PROXY_TYPES))}"
            )
        table = {**_PROXY_BASE, **_PROXY_TYPES[kind]}
        plugin = (items.get("plugin") or "").strip()
        params, headers = _PLUGINS.get(plugin, ({}, False))

        def handled(key: str) -> bool:
            return (
                key in ("name", "role")  # the section names the proxy
                or key.startswith("meta_")
                or (kind == "http" and key.startswith("header_"))
                or key in params
                or (headers and key.startswith("plugin_header_"))
            )

        self.apply(out, name, items, table, handled)
        if "type" not in out:
            out["type"] = kind
        self.prefixed(out, items, "meta_", "metadatas")
        if kind == "http":
            self.prefixed(out, items, "header_", "requestHeaders.set")
        for key, field in params.items():
            if (items.get(key) or "").strip():
                _put(out, f"plugin.{field}", items[key].strip())  # type: ignore[union-attr]
        if headers:
            self.prefixed(out, items, "plugin_header_", "plugin.requestHeaders.set")
        return out

    def visitor(self, name: str, items: Mapping[str, Optional[str]]) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": name}
        kind = (items.get("type") or "").strip()
        if kind not in _VISITOR_TYPES:
            raise ConfigError(
                f"{self.source}: [{name}] is a visitor of type {kind or 'none'!r}; frp's visitors "
                f"are of type stcp, sudp or xtcp"
            )
        table = {**_VISITOR_BASE, **_VISITOR_TYPES[kind]}
        self.apply(out, name, items, table, lambda key: key in ("name", "role"))
        return out

    def expand_range(self, name: str, items: Mapping[str, Optional[str]]) -> List[Tuple[str, Dict[str, Optional[str]]]]:
        """frp's ``[range:NAME]``: proxies NAME_0, NAME_1 ..., one per local port."""
        prefix = name[len("range:"):].strip()

        def ports(key: str) -> List[int]:
            text = (items.get(key) or "").strip()
            if not text:
                raise ConfigError(f"{self.source}: [{name}] needs {key}, e.g. {key} = 6010-6020,6022")
            numbers: List[int] = []
            for start, end in self.ranges(name, key, text):
                if len(numbers) + end - start + 1 > MAX_RANGE:
                    raise ConfigError(f"{self.source}: [{name}] {key} names more than {MAX_RANGE} ports")
                numbers.extend(range(start, end + 1))
            return numbers

        local, remote = ports("local_port"), ports("remote_port")
        if len(local) != len(remote):
            raise ConfigError(
                f"{self.source}: [{name}] has {len(local)} local ports but {len(remote)} remote "
                f"ports; give both the same number"
            )
        return [
            (f"{prefix}_{i}", {**items, "local_port": str(lp), "remote_port": str(rp)})
            for i, (lp, rp) in enumerate(zip(local, remote))
        ]


def _put(out: Dict[str, Any], path: str, value: Any) -> None:
    *tables, last = path.split(".")
    for name in tables:
        out = out.setdefault(name, {})
    out[last] = value


def _kind_of(parser: configparser.ConfigParser, source: str) -> str:
    common = set(parser["common"])
    others = [s for s in parser.sections() if s != "common"]
    server = bool(common & (set(SERVER_COMMON) | _SERVER_SPECIAL) - set(CLIENT_COMMON)) or any(
        s.startswith("plugin.") for s in others
    )
    client = bool(common & (set(CLIENT_COMMON) - set(SERVER_COMMON))) or any(
        not s.startswith("plugin.") for s in others
    )
    if server != client:
        return "server" if server else "client"
    raise ConfigError(
        f"{source}: cannot tell whether this is a server (frps.ini) or a client (frpc.ini) "
        f"file; pass --server or --client"
    )


def convert_ini(text: str, source: str, kind: Optional[str] = None) -> Converted:
    """
    The frp TOML equivalent of the legacy INI ``text`` (named ``source`` in
    messages); ``kind`` ("server" or "client") is guessed when not given.

    @raise ConfigError: for a file that is not frp's INI, or a bad value.
    """
    parser = _read(text, source)
    kind = kind or _kind_of(parser, source)
    converter = _Converter(source)
    data = converter.common(dict(parser["common"]), kind)
    sections = [(name, dict(parser[name])) for name in parser.sections() if name != "common"]
    if kind == "server":
        plugins = []
        for name, items in sections:
            if not name.startswith("plugin."):
                converter.notes.append(f"[{name}] (a server file has only [common] and [plugin.NAME])")
                continue
            plugin: Dict[str, Any] = {"name": name[len("plugin."):].strip()}
            converter.apply(plugin, name, items, {
                "addr": ("addr", S), "path": ("path", S), "ops": ("ops", L), "tlsVerify": ("tlsVerify", B),
            })
            plugins.append(plugin)
        if plugins:
            data["httpPlugins"] = plugins
        return Converted(kind, data, tuple(converter.notes))

    proxies, visitors = [], []
    for name, items in sections:
        expanded = converter.expand_range(name, items) if name.startswith("range:") else [(name, items)]
        for proxy_name, proxy_items in expanded:
            role = (proxy_items.get("role") or "").strip() or "server"
            if role == "visitor":
                visitors.append(converter.visitor(proxy_name, proxy_items))
            elif role == "server":
                proxies.append(converter.proxy(proxy_name, proxy_items))
            else:
                raise ConfigError(
                    f"{source}: [{proxy_name}] has role {role!r}; frp's roles are server and visitor"
                )
    if proxies:
        data["proxies"] = proxies
    if visitors:
        data["visitors"] = visitors
    return Converted(kind, data, tuple(converter.notes))
