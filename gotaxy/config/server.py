# -*- test-case-name: tests.test_config -*-
"""
``gotaxy server``'s settings: ``ServerConfig``, nested in one attrs section
per part of the server (``web``, ``console``, ``smtp``, ...), and the
``[[webhooks]]`` it delivers to (``WebhookSpec``).  The TOML keys are frp's and
flat as ever: each field still declares its full key (``webServer.port``);
only the Python side is grouped.
"""

from __future__ import annotations

import attrs

from gotaxy.config.values import (
    AUTH_METHOD,
    BOOLEAN,
    CONNECTIONS,
    DATABASE_URL,
    DOMAIN,
    DOMAIN_PATTERNS,
    DOMAINS,
    FORWARDED_HEADERS,
    HEADER_BYTES,
    ENDPOINT,
    COUNT,
    ConfigError,
    EVENT_PATTERNS,
    GRACE,
    HEARTBEAT,
    HOST,
    IDLE_TIMEOUT,
    IPV6_PREFIX,
    BANDWIDTH,
    LIMIT,
    LOG_LEVEL,
    LOG_SIZE,
    MAIL_ADDRESS,
    MAIL_ADDRESSES,
    METRICS_EXPOSURE,
    NETWORKS,
    PER_TUNNEL_RULES,
    NAME,
    PORT,
    PORT_RANGES,
    REMOTE_PORT,
    PortRange,
    RETENTION_DAYS,
    SECONDS,
    LEASE_SECONDS,
    PORT_SCOPE,
    SERVICE_PORT,
    SMTP_TLS,
    TEXT,
    URL,
    WEBHOOK_FORMAT,
    WORKERS,
    _Heartbeats,
    _check_heartbeats,
    _default_server_name,
    _section,
    _setting,
)
from gotaxy.mux import MAX_STREAMS
from gotaxy.server.lease import LEASE


@attrs.frozen
class WebhookSpec:
    """One ``[[webhooks]]`` entry: where and how to deliver events by HTTP POST."""

    url: str = _setting(attrs.NOTHING, URL, "url", secret=True)  # may hold a chat token
    name: str | None = _setting(None, NAME, "name")
    secret: str | None = _setting(None, TEXT, "secret", secret=True)
    events: tuple[str, ...] = _setting(("*",), EVENT_PATTERNS, "events")
    format: str = _setting("json", WEBHOOK_FORMAT, "format")
    timeout: float = _setting(10.0, SECONDS, "timeout")
    retry_for: float = _setting(300.0, SECONDS, "retryFor")
    max_pending: int = _setting(100, COUNT, "maxPending")


@attrs.frozen
class TransportSettings:
    """``transport.*``: the control connections' log-in and TLS."""

    auth_timeout: float = _setting(10.0, SECONDS, "transport.authTimeout")
    max_pending: int = _setting(256, COUNT, "transport.maxPendingConnections")
    max_pending_per_ip: int = _setting(16, COUNT, "transport.maxPendingPerIP")
    tls_cert_file: str | None = _setting(None, TEXT, "transport.tls.certFile")
    tls_key_file: str | None = _setting(None, TEXT, "transport.tls.keyFile")
    #: frp's: clients must present a certificate this CA issued (``gotaxy.tls.clients``).
    tls_trusted_ca_file: str | None = _setting(None, TEXT, "transport.tls.trustedCaFile")

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError(
                "'transport.tls.certFile' and 'transport.tls.keyFile' go together: "
                "give both, or remove both to use the certificate Gotaxy generates"
            )


@attrs.frozen
class LimitsSettings:
    """What one client and its public connections may take."""

    max_ports_per_client: int = _setting(0, LIMIT, "maxPortsPerClient", "--max-ports-per-client")
    max_connections_per_client: int = _setting(MAX_STREAMS, CONNECTIONS, "maxConnectionsPerClient")
    tunnel_idle_timeout: float = _setting(600.0, IDLE_TIMEOUT, "tunnelIdleTimeout")
    #: frp's: the largest datagram a udp tunnel carries, either way; larger ones are dropped and counted.
    udp_packet_size: int = _setting(1500, PORT, "udpPacketSize")
    #: Bytes a second each way for all tunnels together, and for each client's (``gotaxy.bandwidth``); 0: none.
    max_bandwidth: int = _setting(0, BANDWIDTH, "maxBandwidth")
    max_bandwidth_per_client: int = _setting(0, BANDWIDTH, "maxBandwidthPerClient")
    #: Server-wide defaults of a tunnel's connection limits (``gotaxy.server.limits``), for a tunnel that sets
    #: none of its own (0): its ``transport.maxConnections``, ``maxConnectionsPerIP``, ``connectionRatePerIP``.
    tunnel_max_connections: int = _setting(0, LIMIT, "tunnelMaxConnections")
    tunnel_max_connections_per_ip: int = _setting(0, LIMIT, "tunnelMaxConnectionsPerIP")
    tunnel_connection_rate_per_ip: int = _setting(0, LIMIT, "tunnelConnectionRatePerIP")


@attrs.frozen
class VhostSettings:
    """
    The shared HTTP front for ``type = "http"`` tunnels (``gotaxy.proxy.vhost``):
    frp's ``vhostHTTPPort`` (0: off), ``subDomainHost``, ``custom404Page`` and
    ``vhostHTTPTimeout`` (seconds to wait for a response's headers), and our
    limits on what a visitor may send.
    """

    http_port: int = _setting(0, SERVICE_PORT, "vhostHTTPPort")
    http_timeout: float = _setting(60.0, SECONDS, "vhostHTTPTimeout")
    sub_domain_host: str | None = _setting(None, DOMAIN, "subDomainHost")
    custom_404_page: str | None = _setting(None, TEXT, "custom404Page")
    #: "append": add the visitor's address to X-Forwarded-For as frp does;
    #: "replace": this server is the edge, so what a visitor sent is dropped.
    forwarded_headers: str = _setting("append", FORWARDED_HEADERS, "vhostForwardedHeaders")
    #: Seconds a visitor has to send a request line and its headers (slowloris).
    header_timeout: float = _setting(10.0, SECONDS, "vhostHTTPHeaderTimeout")
    max_header_bytes: int = _setting(32768, HEADER_BYTES, "vhostHTTPMaxHeaderBytes")
    max_headers: int = _setting(100, COUNT, "vhostHTTPMaxHeaders")
    #: Requests one tunnel serves at once (0: only the client's stream limit).
    max_requests_per_tunnel: int = _setting(256, LIMIT, "vhostHTTPMaxRequestsPerTunnel")
    #: The custom domains any client may claim (``gotaxy.server.domains``); empty: any name.
    allow_domains: tuple[str, ...] = _setting((), DOMAIN_PATTERNS, "allowDomains")


@attrs.frozen
class LogSettings:
    """``log.*``: the error log files."""

    level: str = _setting("info", LOG_LEVEL, "log.level")
    max_days: int = _setting(3, COUNT, "log.maxDays")
    max_size: int = _setting(10 * 2**20, LOG_SIZE, "log.maxSize")


@attrs.frozen
class EventsSettings:
    """``events.*``: the events table."""

    retention_days: int = _setting(90, RETENTION_DAYS, "events.retentionDays")


@attrs.frozen
class WebSettings:
    """``webServer.*``: the panel, its REST API and ``/metrics``."""

    addr: str = _setting("127.0.0.1", HOST, "webServer.addr", "--web-addr")
    port: int = _setting(7500, SERVICE_PORT, "webServer.port", "--web-port")
    endpoint: str | None = _setting(None, ENDPOINT, "webServer.endpoint", "--web-endpoint")
    tls_cert_file: str | None = _setting(None, TEXT, "webServer.tls.certFile")
    tls_key_file: str | None = _setting(None, TEXT, "webServer.tls.keyFile")

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError(
                "'webServer.tls.certFile' and 'webServer.tls.keyFile' go together: give both for HTTPS, or neither"
            )


@attrs.frozen
class ConsoleSettings:
    """``console.*``: the SSH operator console."""

    addr: str = _setting("127.0.0.1", HOST, "console.addr", "--console-addr")
    port: int = _setting(7022, SERVICE_PORT, "console.port", "--console-port")
    endpoint: str | None = _setting(None, ENDPOINT, "console.endpoint", "--console-endpoint")
    python: bool = _setting(False, BOOLEAN, "console.python")
    idle_timeout: float = _setting(900.0, GRACE, "console.idleTimeout")


@attrs.frozen
class SmtpSettings:
    """``smtp.*``: e-mail notifications (off while ``host`` is not set)."""

    host: str | None = _setting(None, HOST, "smtp.host")
    port: int | None = _setting(None, PORT, "smtp.port")
    tls: str = _setting("starttls", SMTP_TLS, "smtp.tls")
    username: str | None = _setting(None, TEXT, "smtp.username")
    password: str | None = _setting(None, TEXT, "smtp.password", secret=True)
    sender: str | None = _setting(None, MAIL_ADDRESS, "smtp.from")
    to: tuple[str, ...] | None = _setting(None, MAIL_ADDRESSES, "smtp.to")
    events: tuple[str, ...] = _setting(("*",), EVENT_PATTERNS, "smtp.events")
    batch_seconds: float = _setting(30.0, SECONDS, "smtp.batchSeconds")
    timeout: float = _setting(30.0, SECONDS, "smtp.timeout")

    def __attrs_post_init__(self) -> None:
        if self.host is not None and not (self.sender and self.to):
            raise ConfigError(
                "'smtp.host' is set but 'smtp.from' or 'smtp.to' is missing; give the sender "
                "and at least one recipient, or remove [smtp] to turn e-mail off"
            )
        if (self.username is None) != (self.password is None):
            raise ConfigError(
                "'smtp.username' and 'smtp.password' go together: give both to log in, or neither"
            )

    def effective_port(self) -> int:
        """``smtp.port``, or the usual port for ``smtp.tls``."""
        if self.port is not None:
            return self.port
        return {"starttls": 587, "tls": 465, "none": 25}[self.tls]


@attrs.frozen
class NotifySettings:
    """``notify.*``: what every notification target shares."""

    flap_grace: float = _setting(10.0, GRACE, "notify.flapGrace")
    key_file: str | None = _setting(None, TEXT, "notify.keyFile")


@attrs.frozen
class MetricsSettings:
    """``metrics.*`` and frp's ``enablePrometheus``: who may read ``/metrics``."""

    exposure: str | None = _setting(None, METRICS_EXPOSURE, "metrics.exposure")
    token: str | None = _setting(None, TEXT, "metrics.token", secret=True)
    enable_prometheus: bool = _setting(False, BOOLEAN, "enablePrometheus")

    def __attrs_post_init__(self) -> None:
        if self.effective_exposure() == "token" and self.token is None:
            raise ConfigError(
                "'metrics.exposure' is \"token\" but 'metrics.token' is missing; set the bearer "
                "token Prometheus must send, or use \"open\" or \"off\""
            )

    def effective_exposure(self) -> str:
        """``metrics.exposure`` if set; otherwise "open" for frp's ``enablePrometheus = true``."""
        if self.exposure is not None:
            return self.exposure
        return "open" if self.enable_prometheus else "off"


@attrs.frozen
class HistorySettings:
    """``history.*``: the stability history's samples and rollups."""

    sample_interval: float = _setting(60.0, SECONDS, "history.sampleInterval")
    raw_hours: int = _setting(48, COUNT, "history.rawHours")
    retention_days: int = _setting(90, COUNT, "history.retentionDays")


@attrs.frozen
class HttpsSettings:
    """
    The shared HTTPS front (``gotaxy.proxy.sni``): frp's ``vhostHTTPSPort``
    (0: off), the time and size a ClientHello may take, and the directory of
    certificates the operator supplies for ``http`` tunnels served over HTTPS.
    """

    port: int = _setting(0, SERVICE_PORT, "vhostHTTPSPort")
    hello_timeout: float = _setting(10.0, SECONDS, "vhostHTTPSHelloTimeout")
    cert_dir: str | None = _setting(None, TEXT, "vhostHTTPSCertDir")


@attrs.frozen
class AcmeSettings:
    """``acme.*``: certificates obtained and renewed through ACME (``gotaxy.tls.acme``)."""

    enable: bool = _setting(False, BOOLEAN, "acme.enable")
    email: str | None = _setting(None, MAIL_ADDRESS, "acme.email")
    directory: str = _setting("https://acme-v02.api.letsencrypt.org/directory", URL, "acme.directory")
    ca_file: str | None = _setting(None, TEXT, "acme.caFile")
    renew_before_days: int = _setting(30, COUNT, "acme.renewBefore")
    #: Only names under these get certificates (empty: any name a tunnel claims).
    domains: tuple[str, ...] = _setting((), DOMAINS, "acme.domains")


@attrs.frozen
class AccessSettings:
    """
    ``access.*``: who may connect at all (allow and deny lists per listener
    and per tunnel), and automatic bans of sources that keep failing
    (``gotaxy.server.access``).  Gotaxy's own keys: frp has none for this.
    """

    control_allow: tuple[str, ...] = _setting((), NETWORKS, "access.control.allow")
    control_deny: tuple[str, ...] = _setting((), NETWORKS, "access.control.deny")
    web_allow: tuple[str, ...] = _setting((), NETWORKS, "access.webServer.allow")
    web_deny: tuple[str, ...] = _setting((), NETWORKS, "access.webServer.deny")
    console_allow: tuple[str, ...] = _setting((), NETWORKS, "access.console.allow")
    console_deny: tuple[str, ...] = _setting((), NETWORKS, "access.console.deny")
    tunnels_allow: tuple[str, ...] = _setting((), NETWORKS, "access.tunnels.allow")
    tunnels_deny: tuple[str, ...] = _setting((), NETWORKS, "access.tunnels.deny")
    per_tunnel: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = _setting(
        (), PER_TUNNEL_RULES, "access.perTunnel")
    ban_enable: bool = _setting(True, BOOLEAN, "access.ban.enable")
    ban_window: float = _setting(600.0, SECONDS, "access.ban.window")
    ban_token_failures: int = _setting(10, LIMIT, "access.ban.tokenFailures")
    ban_protocol_errors: int = _setting(10, LIMIT, "access.ban.protocolErrors")
    ban_login_lockouts: int = _setting(1, LIMIT, "access.ban.loginLockouts")
    ban_basic_auth_failures: int = _setting(20, LIMIT, "access.ban.basicAuthFailures")
    ban_flood_refusals: int = _setting(200, LIMIT, "access.ban.floodRefusals")
    ban_time: float = _setting(600.0, SECONDS, "access.ban.time")
    ban_max_time: float = _setting(86400.0, SECONDS, "access.ban.maxTime")
    ban_forget_after: float = _setting(7 * 86400.0, SECONDS, "access.ban.forgetAfter")
    ban_exempt: tuple[str, ...] = _setting(("127.0.0.0/8", "::1/128"), NETWORKS, "access.ban.exempt")
    #: An IPv6 source is counted and banned as its network of this prefix length (one site has a /64); IPv4 alone.
    ban_ipv6_prefix: int = _setting(64, IPV6_PREFIX, "access.ban.ipv6Prefix")
    nft_set: str | None = _setting(None, TEXT, "access.ban.nftSet")
    nft_set6: str | None = _setting(None, TEXT, "access.ban.nftSet6")
    nft_command: str = _setting("nft", TEXT, "access.ban.nftCommand")

    def __attrs_post_init__(self) -> None:
        if self.ban_max_time < self.ban_time:
            raise ConfigError(
                f"'access.ban.maxTime' ({self.ban_max_time:g} s) is shorter than 'access.ban.time' "
                f"({self.ban_time:g} s); make maxTime at least as long as the first ban"
            )
        for key, value in (("access.ban.nftSet", self.nft_set), ("access.ban.nftSet6", self.nft_set6)):
            if value is not None and len(value.split()) != 3:
                raise ConfigError(
                    f"'{key}' must be the set's family, table and name, such as \"inet gotaxy banned\", "
                    f"got {value!r}", key)


@attrs.frozen
class ClusterSettings:
    """
    ``cluster.*``: the node-to-node listener of a server that shares its
    database with other nodes (``gotaxy.server.forward``): a website request
    that arrives here for a name another node's client serves is forwarded
    there over mutual TLS with the cluster CA.  ``bindPort`` 0: off (this
    node neither forwards nor takes forwarded requests).
    """

    bind_addr: str = _setting("0.0.0.0", HOST, "cluster.bindAddr")
    bind_port: int = _setting(0, SERVICE_PORT, "cluster.bindPort")
    #: The host other nodes connect to (recorded in this node's lease row), and its port (0: bindPort).
    advertise_addr: str | None = _setting(None, HOST, "cluster.advertiseAddr")
    advertise_port: int = _setting(0, REMOTE_PORT, "cluster.advertisePort")
    #: This node's certificate for node-to-node TLS and the cluster CA (default: DATA_DIR/tls/node.pem,
    #: node.key, ca.pem, the files 'gotaxy cluster add-node' writes).
    tls_cert_file: str | None = _setting(None, TEXT, "cluster.tls.certFile")
    tls_key_file: str | None = _setting(None, TEXT, "cluster.tls.keyFile")
    tls_trusted_ca_file: str | None = _setting(None, TEXT, "cluster.tls.trustedCaFile")
    #: Seconds to connect to another node (TCP and TLS) before the visitor gets a 502.
    connect_timeout: float = _setting(5.0, SECONDS, "cluster.connectTimeout")
    #: Seconds this node's lease in the store lasts; renewed every third of it.  A node that stops
    #: renewing (killed, cut off) has its clients marked offline by another node once it runs out.
    lease_seconds: float = _setting(LEASE, LEASE_SECONDS, "cluster.leaseSeconds")
    #: Where a public TCP or UDP port is one claim: across the cluster ("cluster": the nodes share one public
    #: address, DNS or a load balancer in front) or on each node ("node": each node its own public address).
    port_scope: str = _setting("cluster", PORT_SCOPE, "cluster.portScope")

    def __attrs_post_init__(self) -> None:
        if self.bind_port and self.advertise_addr is None and self.bind_addr in ("0.0.0.0", "::"):
            raise ConfigError(
                "'cluster.bindPort' is set but 'cluster.advertiseAddr' is not: give the address other nodes reach "
                "this node at (such as \"10.0.0.5\"), or bind cluster.bindAddr to that address"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError(
                "'cluster.tls.certFile' and 'cluster.tls.keyFile' go together: give both, or neither to use "
                "DATA_DIR/tls/node.pem and node.key"
            )

    def advertised(self) -> str:
        """``host:port`` other nodes connect to ("" when the listener is off)."""
        if not self.bind_port:
            return ""
        host = self.advertise_addr or self.bind_addr
        port = self.advertise_port or self.bind_port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class ServerConfig(_Heartbeats):
    """
    Everything ``gotaxy server`` needs to know; see the package docstring for
    the keys.  The server's own address, token and heartbeats are fields of
    their own; the rest is grouped in one section per part of the server
    (``config.web.port``, ``config.smtp.host``).  ``replace`` changes
    settings by their dotted field names.
    """

    data_dir: str = _setting("gotaxy-data", TEXT, "dataDir", "--data-dir")
    bind_addr: str = _setting("0.0.0.0", HOST, "bindAddr", "--bind-addr")
    bind_port: int = _setting(7000, PORT, "bindPort", "--bind-port")
    #: A Twisted endpoint string for the control port; set, it replaces bindAddr and bindPort.
    bind_endpoint: str | None = _setting(None, ENDPOINT, "bindEndpoint", "--bind-endpoint")
    #: Processes that hold clients on this machine (gotaxy.server.workers); 1: this process alone.
    workers: int = _setting(1, WORKERS, "workers", "--workers")
    proxy_bind_addr: str | None = _setting(None, HOST, "proxyBindAddr")
    allow_ports: tuple[PortRange, ...] = _setting((), PORT_RANGES, "allowPorts", "--allow-ports")
    token: str | None = _setting(None, TEXT, "auth.token", "--token", secret=True)
    #: "token" (frp's), or "certificate": a client certificate alone (needs transport.tls.trustedCaFile).
    auth_method: str = _setting("token", AUTH_METHOD, "auth.method")
    # Not set: follows from the other one (see heartbeat_interval / _timeout).
    _heartbeat_interval: float | None = _setting(
        None, HEARTBEAT, "transport.heartbeatInterval", "--heartbeat-interval",
        alias="heartbeat_interval",
    )
    _heartbeat_timeout: float | None = _setting(
        None, HEARTBEAT, "transport.heartbeatTimeout", "--heartbeat-timeout",
        alias="heartbeat_timeout",
    )
    database_url: str | None = _setting(None, DATABASE_URL, "database.url", "--database-url", secret=True)
    store: str | None = _setting(None, DATABASE_URL, "store", "--store", secret=True)  #: the older name of database.url
    server_name: str = _setting(_default_server_name(), TEXT, "serverName")
    webhooks: tuple[WebhookSpec, ...] = attrs.field(
        default=(),
        converter=tuple,
        validator=attrs.validators.deep_iterable(attrs.validators.instance_of(WebhookSpec)),
    )
    transport: TransportSettings = _section(TransportSettings)
    limits: LimitsSettings = _section(LimitsSettings)
    vhost: VhostSettings = _section(VhostSettings)
    log: LogSettings = _section(LogSettings)
    events: EventsSettings = _section(EventsSettings)
    web: WebSettings = _section(WebSettings)
    console: ConsoleSettings = _section(ConsoleSettings)
    smtp: SmtpSettings = _section(SmtpSettings)
    notify: NotifySettings = _section(NotifySettings)
    metrics: MetricsSettings = _section(MetricsSettings)
    history: HistorySettings = _section(HistorySettings)
    https: HttpsSettings = _section(HttpsSettings)
    acme: AcmeSettings = _section(AcmeSettings)
    access: AccessSettings = _section(AccessSettings)
    cluster: ClusterSettings = _section(ClusterSettings)

    def __attrs_post_init__(self) -> None:
        _check_heartbeats(self)
        if self.auth_method == "certificate" and self.transport.tls_trusted_ca_file is None:
            raise ConfigError(
                "'auth.method' is \"certificate\" but 'transport.tls.trustedCaFile' is not set: name the CA whose "
                "client certificates log in (Gotaxy's own is DATA_DIR/tls/ca.pem, which 'gotaxy cert issue' uses), "
                "or set auth.method = \"token\""
            )
        if self.acme.enable and not self.https.port:
            raise ConfigError(
                "'acme.enable' is true but 'vhostHTTPSPort' is not set: ACME certificates are for the HTTPS front, "
                "so set vhostHTTPSPort (443, say; its challenges are answered on vhostHTTPPort, 80, when set, "
                "else on vhostHTTPSPort over TLS-ALPN-01), or turn ACME off"
            )
        if self.workers > 1 and (self.vhost.http_port or self.https.port):
            raise ConfigError(
                f"'workers' is {self.workers} but vhostHTTPPort or vhostHTTPSPort is set: in this version websites "
                "are served by the first worker alone, and a client with a website held by another worker would "
                "be refused; set workers = 1, or serve the websites from a server of their own"
            )
        if self.workers > 1 and self.cluster.port_scope == "node":
            raise ConfigError(
                f"'workers' is {self.workers} but 'cluster.portScope' is \"node\": the workers share this machine's "
                "addresses, so a port must be one claim across them; set cluster.portScope = \"cluster\" "
                "(or workers = 1)"
            )
        if self.database_url is not None and self.store is not None and self.database_url != self.store:
            raise ConfigError(
                "'database.url' and 'store' (its older name) name different databases; keep database.url only"
            )

    #: Seconds between pings and of silence before a client is dropped, when
    #: neither is set.  frp's server has only a timeout (90 s by default).
    HEARTBEAT_DEFAULTS = (10.0, 30.0)

    def effective_database_url(self) -> str | None:
        """``database.url``, or ``store`` (its older name); None: SQLite in the data directory."""
        return self.database_url if self.database_url is not None else self.store

    def effective_proxy_bind_addr(self) -> str:
        """The address public tunnel ports listen on."""
        return self.proxy_bind_addr if self.proxy_bind_addr is not None else self.bind_addr

