# -*- test-case-name: tests.test_config -*-
"""
Configuration: frp-style TOML files and command-line values.

Gotaxy's ``server.toml`` and ``client.toml`` use frp's key names (the TOML
format of frp >= 0.52), so an existing ``frps.toml`` or ``frpc.toml`` can be
used as it is.  TOML dotted keys (``auth.token = "x"``) and tables
(``[auth]``) both parse to nested dicts; the reader flattens them back into
dotted paths and sorts every path into one of three groups:

ours
    A key Gotaxy supports.  Each one is declared once, on the attrs field it
    fills, as ``_setting(default, form, key, flag)``; the reader's
    ``key -> field`` table is built from those declarations, so the config
    classes below *are* the mapping.  A ``_Form`` says what the value must
    look like and puts it in canonical form (fingerprints to upper-case hex,
    ``log.level = "trace"`` to ``"debug"``).  The same form guards the field
    as an attrs converter, so a value from a command-line flag applied with
    ``attrs.evolve`` is checked too.
frp's, not yet ours
    A key frp knows but Gotaxy ignores costs one warning, not an error, so a
    real frp file still starts.  frp's map-valued settings and arrays of
    tables (``auth.oidc``, ``metadatas``, ``[[httpPlugins]]``,
    ``[[visitors]]``, a proxy's ``plugin`` ...) are warned about once as a
    whole, not key by key.
unknown
    Anything else is a typo or another program's setting: ``ConfigError``
    naming the file and the key, with the closest known key as a suggestion.

Key mapping, server (``ServerConfig``; a dotted field is in a section,
``config.web.port``)::

    dataDir                          data_dir              (ours)
    bindAddr / bindPort              bind_addr / bind_port
    bindEndpoint                     bind_endpoint         (ours; a Twisted endpoint string instead)
    proxyBindAddr                    proxy_bind_addr
    allowPorts                       allow_ports           [{start=.., end=..}, {single=..}]
    auth.token                       token                 (auth.method must be "token")
    transport.heartbeatInterval      heartbeat_interval    (ours on the server; a third of the
    transport.heartbeatTimeout       heartbeat_timeout      timeout, at most 10 s, when not set)
    transport.authTimeout            transport.auth_timeout (ours)
    transport.maxPendingConnections  transport.max_pending (ours)
    transport.maxPendingPerIP        transport.max_pending_per_ip (ours)
    maxPortsPerClient                limits.max_ports_per_client
    maxConnectionsPerClient          limits.max_connections_per_client (ours)
    tunnelIdleTimeout                limits.tunnel_idle_timeout (ours)
    tunnelMaxConnections / ...PerIP  limits.tunnel_max_connections / _per_ip / tunnel_connection_rate_per_ip
    / tunnelConnectionRatePerIP       (ours; defaults of a tunnel's transport.maxConnections ...)
    vhostHTTPPort / vhostHTTPTimeout vhost.http_port / vhost.http_timeout (0: no HTTP front; 60 s)
    subDomainHost / custom404Page    vhost.sub_domain_host / vhost.custom_404_page
    vhostForwardedHeaders            vhost.forwarded_headers (ours; "append" or "replace")
    vhostHTTPHeaderTimeout           vhost.header_timeout  (ours; slowloris)
    vhostHTTPMaxHeaderBytes / ...    vhost.max_header_bytes / max_headers / max_requests_per_tunnel (ours)
    transport.tls.certFile / keyFile transport.tls_cert_file / tls_key_file
    log.level / log.maxDays          log.level / log.max_days
    log.maxSize                      log.max_size          (ours; bytes, or "10MiB")
    events.retentionDays             events.retention_days (ours)
    database.url                     database_url          (ours; any SQLAlchemy URL)
    store                            store                 (ours; the older name of database.url)
    serverName                       server_name           (ours; names this server in notifications)
    cluster.bindAddr / bindPort      cluster.bind_addr / bind_port (ours; node-to-node listener, 0: off)
    cluster.advertiseAddr / ...Port  cluster.advertise_addr / advertise_port (ours; where other nodes reach it)
    cluster.tls.certFile / keyFile / trustedCaFile  cluster.tls_* (ours; default DATA_DIR/tls/node.pem ...)
    cluster.connectTimeout           cluster.connect_timeout (ours)
    webServer.addr / port / tls.*    web.addr / web.port / web.tls_cert_file / web.tls_key_file
    console.addr / port / ...        console.*             (ours; the SSH console)
    [[webhooks]]                     webhooks              (WebhookSpec: name, url, secret, events,
                                                            format, timeout, retryFor, maxPending)
    smtp.host / port / tls / ...     smtp.*                (ours; e-mail notifications; smtp.from is smtp.sender)
    notify.flapGrace                 notify.flap_grace     (ours)
    notify.keyFile                   notify.key_file       (ours; default DATA_DIR/notify.key)
    metrics.exposure / token         metrics.exposure / metrics.token (ours)
    enablePrometheus                 metrics.enable_prometheus (true: metrics.exposure "open")
    history.sampleInterval           history.sample_interval (ours)
    history.rawHours / retentionDays history.raw_hours / history.retention_days (ours)
    webServer.endpoint               web.endpoint          (ours; instead of webServer.addr / port)
    console.endpoint                 console.endpoint      (ours; instead of console.addr / port)

Client (``ClientConfig``)::

    serverAddr / serverPort          server_addr / server_port
    auth.token / user                token / user          (a join token gtx1.PIN.SECRET pins the server)
    [[proxies]]                      tunnels               (TunnelSpec: name, type,
                                                            localIP, localPort, remotePort,
                                                            enabled, healthCheck.type /
                                                            timeoutSeconds / maxFailed /
                                                            intervalSeconds)
    transport.tls.fingerprint        fingerprint           (ours)
    transport.tls.trustedCaFile      trusted_ca_file
    transport.tls.serverName         server_name
    transport.tls.insecureSkipVerify insecure              (ours)
    transport.tls.enable             -                     (must be true)
    dataDir                          data_dir              (ours)
    transport.heartbeatInterval      heartbeat_interval    (frp's defaults: 30 s and 90 s; one
    transport.heartbeatTimeout       heartbeat_timeout      set alone, the other follows)
    transport.dialServerTimeout      dial_timeout
    loginFailExit                    login_fail_exit
    includes                         tunnels, included     (frp's: files of [[proxies]], relative to the file)
    allowOperatorTunnels             allow_operator_tunnels (ours; ["127.0.0.1:8000-8100", ...])
    log.level / log.maxDays          log_level / log_max_days

The proxy types are the registry's (``gotaxy.proxy.registry``: tcp, udp,
http ...); a ``[[proxies]]`` entry's keys for its type (an http proxy's
``customDomains``, ``locations``, ``requestHeaders.set`` ...) are kept on
``TunnelSpec`` and checked by that type.  A proxy of another frp type, or one that
hands its connections to an frp ``plugin``, is skipped with one warning; an
frp key inside a kept proxy is warned about once per key, naming the proxies
that use it.

The package: ``values`` (what a value may look like, ``_setting``, flags),
``server`` (``ServerConfig`` in sections), ``client`` (``ClientConfig``,
``TunnelSpec``), ``frp`` (frp's own keys), ``files`` (reading TOML, and a
client file's ``includes``), ``templates`` (frp's ``{{ .Envs.NAME }}``) and
``verify`` (``gotaxy verify``: every error of a file, not only the first).

Paths are kept as written; the caller resolves them.  Errors raised by the
config classes themselves (a bad flag value, a timeout below the interval)
name the key and the flag; ``parse_*_config`` prefix them with the file name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gotaxy.config.client import ClientConfig, TunnelSpec, parse_tunnel_flag
from gotaxy.config.files import (
    Loaded,
    legacy_ini_message,
    load_client_file,
    load_server_file,
    load_toml,
    parse_client_config,
    parse_server_config,
)
from gotaxy.config.values import (
    FRP_PROXY_TYPES,
    ConfigError,
    LocalAddressRule,
    PortRange,
    format_allow_ports,
    has_port,
    parse_allow_ports,
    parse_host_port,
    parse_local_rule_flag,
    replace,
    settings_of,
)

if TYPE_CHECKING:
    from gotaxy.config.server import (
        AccessSettings,
        AcmeSettings,
        ClusterSettings,
        ConsoleSettings,
        EventsSettings,
        HistorySettings,
        HttpsSettings,
        LimitsSettings,
        VhostSettings,
        LogSettings,
        MetricsSettings,
        NotifySettings,
        ServerConfig,
        SmtpSettings,
        TransportSettings,
        WebhookSpec,
        WebSettings,
    )

__all__ = [
    "AccessSettings",
    "AcmeSettings",
    "ClientConfig",
    "ClusterSettings",
    "ConfigError",
    "ConsoleSettings",
    "EventsSettings",
    "FRP_PROXY_TYPES",
    "HistorySettings",
    "HttpsSettings",
    "LimitsSettings",
    "VhostSettings",
    "LocalAddressRule",
    "Loaded",
    "LogSettings",
    "MetricsSettings",
    "NotifySettings",
    "PortRange",
    "ServerConfig",
    "SmtpSettings",
    "TransportSettings",
    "TunnelSpec",
    "WebSettings",
    "WebhookSpec",
    "format_allow_ports",
    "has_port",
    "legacy_ini_message",
    "load_client_file",
    "load_server_file",
    "load_toml",
    "parse_allow_ports",
    "parse_client_config",
    "parse_host_port",
    "parse_local_rule_flag",
    "parse_server_config",
    "parse_tunnel_flag",
    "replace",
    "settings_of",
]


#: The server's settings (``gotaxy.config.server``) are imported when first
#: asked for: a client never asks, so it does not hold them (issue 15, goal 3;
#: tests/test_imports.py).
_SERVER_NAMES = frozenset({
    "AccessSettings", "AcmeSettings", "ClusterSettings", "ConsoleSettings", "EventsSettings",
    "HistorySettings", "HttpsSettings", "LimitsSettings", "LogSettings", "MetricsSettings",
    "NotifySettings", "ServerConfig", "SmtpSettings", "TransportSettings", "VhostSettings",
    "WebSettings", "WebhookSpec",
})


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        import gotaxy.config.server

        return getattr(gotaxy.config.server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
