"""
Tests for gotaxy.config: frp-style TOML files and command-line values.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import attrs
import pytest

from gotaxy.config import (
    ClientConfig,
    ConfigError,
    HttpsSettings,
    LimitsSettings,
    LogSettings,
    MetricsSettings,
    PortRange,
    ServerConfig,
    TransportSettings,
    TunnelSpec,
    VhostSettings,
    WebSettings,
    WebhookSpec,
    format_allow_ports,
    load_toml,
    parse_allow_ports,
    parse_client_config,
    parse_host_port,
    parse_local_rule_flag,
    parse_server_config,
    parse_tunnel_flag,
    replace,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

FINGERPRINT = "SHA256:" + "AB" * 32


def server(text: str):
    return parse_server_config(tomllib.loads(text))


def client(text: str):
    return parse_client_config(tomllib.loads(text))


def error_of(parse, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return str(caught.value)


# ---------------------------------------------------------------------------
# Reduced copies of frp's conf/frps_full_example.toml and frpc_full_example.toml

FRPS_FULL_EXAMPLE = """
bindAddr = "0.0.0.0"
bindPort = 7000
kcpBindPort = 7000
transport.maxPoolCount = 5
transport.tls.force = false
vhostHTTPPort = 80
vhostHTTPSPort = 443
webServer.addr = "127.0.0.1"
webServer.port = 7500
webServer.user = "admin"
webServer.password = "admin"
webServer.pprofEnable = false
enablePrometheus = true
log.to = "./frps.log"
log.level = "info"
log.maxDays = 3
log.disablePrintColor = false
detailedErrorsToClient = true
auth.method = "token"
auth.token = "12345678"
auth.oidc.issuer = ""
auth.oidc.audience = ""
auth.oidc.skipExpiryCheck = false
auth.oidc.skipIssuerCheck = false
allowPorts = [
  { start = 2000, end = 3000 },
  { single = 3001 },
  { single = 3003 },
  { start = 4000, end = 50000 }
]
maxPortsPerClient = 0
subDomainHost = "frps.com"
udpPacketSize = 1500
natholeAnalysisDataReserveHours = 168

[[httpPlugins]]
name = "user-manager"
addr = "127.0.0.1:9000"
path = "/handler"
ops = ["Login"]

[[httpPlugins]]
name = "port-manager"
addr = "127.0.0.1:9001"
path = "/handler"
ops = ["NewProxy"]
"""

FRPC_FULL_EXAMPLE = """
user = "your_name"
serverAddr = "0.0.0.0"
serverPort = 7000
loginFailExit = true
log.to = "./frpc.log"
log.level = "info"
log.maxDays = 3
log.disablePrintColor = false
auth.method = "token"
auth.token = "12345678"
webServer.addr = "127.0.0.1"
webServer.port = 7400
webServer.user = "admin"
webServer.password = "admin"
webServer.pprofEnable = false
transport.poolCount = 5
transport.protocol = "tcp"
transport.connectServerLocalIP = "0.0.0.0"
transport.tls.enable = true
udpPacketSize = 1500
metadatas.var1 = "abc"
metadatas.var2 = "123"

[[proxies]]
name = "ssh"
type = "tcp"
localIP = "127.0.0.1"
localPort = 22
transport.bandwidthLimit = "1MB"
transport.bandwidthLimitMode = "client"
transport.useEncryption = false
transport.useCompression = false
remotePort = 6001
loadBalancer.group = "test_group"
loadBalancer.groupKey = "123456"
healthCheck.type = "tcp"
healthCheck.timeoutSeconds = 3
healthCheck.maxFailed = 3
healthCheck.intervalSeconds = 10
metadatas.var1 = "abc"
metadatas.var2 = "123"
[proxies.annotations]
key1 = "value1"
"prefix/key2" = "value2"

[[proxies]]
name = "ssh_random"
type = "tcp"
localIP = "192.168.31.100"
localPort = 22
remotePort = 0

[[proxies]]
name = "dns"
type = "udp"
localIP = "114.114.114.114"
localPort = 53
remotePort = 6002

[[proxies]]
name = "web01"
type = "http"
localIP = "127.0.0.1"
localPort = 80
httpUser = "admin"
httpPassword = "admin"
subdomain = "web01"
customDomains = ["web01.yourdomain.com"]
locations = ["/", "/pic"]
hostHeaderRewrite = "example.com"
requestHeaders.set.x-from-where = "frp"
responseHeaders.set.foo = "bar"
healthCheck.type = "http"
healthCheck.path = "/status"
healthCheck.httpHeaders=[
    { name = "x-from-where", value = "frp" }
]

[[proxies]]
name = "plugin_unix_domain_socket"
type = "tcp"
remotePort = 6003
[proxies.plugin]
type = "unix_domain_socket"
unixPath = "/var/run/docker.sock"

[[proxies]]
name = "secret_tcp"
type = "stcp"
secretKey = "abcdefg"
localIP = "127.0.0.1"
localPort = 22
allowUsers = ["*"]

[[visitors]]
name = "secret_tcp_visitor"
type = "stcp"
serverName = "secret_tcp"
secretKey = "abcdefg"
bindAddr = "127.0.0.1"
bindPort = 9000

[[visitors]]
name = "vnet-visitor"
type = "stcp"
serverName = "vnet-server"
secretKey = "your-secret-key"
bindPort = -1
[visitors.plugin]
type = "virtual_net"
destinationIP = "100.86.0.1"
"""


class TestFrpExampleFiles:
    def test_frps_full_example_loads_with_warnings(self) -> None:
        loaded = server(FRPS_FULL_EXAMPLE)
        config = loaded.config
        assert config == ServerConfig(
            bind_addr="0.0.0.0",
            bind_port=7000,
            token="12345678",
            allow_ports=(
                PortRange(2000, 3000),
                PortRange(3001, 3001),
                PortRange(3003, 3003),
                PortRange(4000, 50000),
            ),
            log=LogSettings(level="info", max_days=3),
            web=WebSettings(addr="127.0.0.1", port=7500),
            metrics=MetricsSettings(enable_prometheus=True),
            https=HttpsSettings(port=443),
            vhost=VhostSettings(http_port=80, sub_domain_host="frps.com"),
        )
        assert config.metrics.effective_exposure() == "open"
        warned = [w.split("'")[1] for w in loaded.warnings]
        assert warned == [
            "kcpBindPort",
            "transport.maxPoolCount",
            "transport.tls.force",
            "webServer.user",
            "webServer.password",
            "webServer.pprofEnable",
            "log.to",
            "log.disablePrintColor",
            "detailedErrorsToClient",
            "auth.oidc",
            "natholeAnalysisDataReserveHours",
            "httpPlugins",
        ]
        assert all(w.startswith("server.toml: ") for w in loaded.warnings)

    def test_frpc_full_example_loads_with_warnings(self) -> None:
        loaded = client(FRPC_FULL_EXAMPLE)
        config = loaded.config
        assert isinstance(config, ClientConfig)
        assert (config.server_addr, config.server_port) == ("0.0.0.0", 7000)
        assert config.token == "12345678"
        assert config.user == "your_name"
        assert config.login_fail_exit is True
        assert config.tunnels == (
            # frp's healthCheck of type tcp is honoured.
            # frp's bandwidth limit is honoured.
            TunnelSpec(name="ssh", local_port=22, local_ip="127.0.0.1", remote_port=6001,
                       bandwidth_limit="1MB", bandwidth_limit_mode="client", health_check_type="tcp", health_check_timeout=3.0, health_check_max_failed=3,
                       health_check_interval=10.0),
            TunnelSpec(name="ssh_random", local_port=22, local_ip="192.168.31.100"),
            TunnelSpec(name="dns", type="udp", local_port=53, local_ip="114.114.114.114", remote_port=6002),
            # An http proxy keeps every frp key of its type.
            TunnelSpec(name="web01", type="http", local_port=80, local_ip="127.0.0.1", http_user="admin",
                       http_password="admin", subdomain="web01", custom_domains=("web01.yourdomain.com",),
                       locations=("/", "/pic"), host_header_rewrite="example.com",
                       request_headers=(("x-from-where", "frp"),), response_headers=(("foo", "bar"),),
                       health_check_type="http"),
        )
        warnings = "\n".join(loaded.warnings)
        # Only web01's HTTP health check is not (yet) what frp does.
        assert [w for w in loaded.warnings if "healthCheck" in w] == [
            'client.toml: proxy \'web01\' has healthCheck.type = "http", which Gotaxy does not support yet; '
            "its local service is checked with a TCP connect instead",
            "client.toml: 'healthCheck.path' (in proxy 'web01') is an frp setting that Gotaxy does not support yet; "
            "ignored",
            "client.toml: 'healthCheck.httpHeaders' (in proxy 'web01') is an frp setting that Gotaxy does not "
            "support yet; ignored",
        ]
        assert "proxy 'dns'" not in warnings  # udp tunnels are read
        assert "proxy 'web01' has type" not in warnings
        assert "proxy 'secret_tcp' has type \"stcp\"" in warnings
        assert 'proxy \'plugin_unix_domain_socket\' uses the frp plugin "unix_domain_socket"' in (
            warnings
        )
        # Keys of skipped proxies are not warned about one by one.
        assert "subdomain" not in warnings
        assert warnings.count("'visitors'") == 1
        assert warnings.count("'metadatas'") == 2  # client-level and in proxy 'ssh'
        assert (
            "client.toml: 'transport.useEncryption' (in proxy 'ssh') is an frp setting that "
            "Gotaxy does not support yet; ignored"
        ) in loaded.warnings

    def test_frp_map_settings_warn_once(self) -> None:
        loaded = client(
            """
            auth.oidc.clientID = "a"
            auth.oidc.clientSecret = "b"
            auth.oidc.additionalEndpointParams.audience = "c"
            auth.tokenSource.type = "file"
            auth.tokenSource.file.path = "/etc/frp/token"
            transport.quic.keepalivePeriod = 10
            transport.quic.maxIdleTimeout = 30
            featureGates = { VirtualNet = true }
            """
        )
        assert [w.split("'")[1] for w in loaded.warnings] == [
            "auth.oidc",
            "auth.tokenSource",
            "transport.quic",
            "featureGates",
        ]


FRP_CONF = Path(__file__).parent / "frp_conf"


def uncommented(name: str) -> str:
    """
    frp's example file ``name`` with every commented-out ``key = value`` line
    switched on (once per table), so that it holds every key frp documents.
    """
    out: list[str] = []
    seen: set[str] = set()
    for line in (FRP_CONF / name).read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            seen = set()
        match = re.fullmatch(r"#\s*([A-Za-z][A-Za-z0-9_.]*\s*=.*)", line)
        if match:
            try:
                key = next(iter(tomllib.loads(match.group(1))))
            except tomllib.TOMLDecodeError:
                key = None  # prose, or frp's own typo such as "routeByHTTPUser = abc"
            if key is not None and match.group(1).split("=")[0].strip() not in seen:
                line = match.group(1)
        if "=" in line and not line.startswith("#"):
            seen.add(line.split("=")[0].strip())
        out.append(line)
    return "\n".join(out)


class TestFrpOwnFiles:
    """frp's own conf/ files, unchanged (tests/frp_conf/)."""

    def test_frps_full_example(self) -> None:
        loaded = parse_server_config(load_toml(str(FRP_CONF / "frps_full_example.toml")))
        assert loaded.config.token == "12345678" and loaded.config.web.port == 7500
        assert len(loaded.warnings) == 12  # vhostHTTPPort, vhostHTTPSPort, subDomainHost and udpPacketSize are read

    def test_frpc_full_example(self) -> None:
        loaded = parse_client_config(load_toml(str(FRP_CONF / "frpc_full_example.toml")))
        config = loaded.config
        assert [(t.name, t.remote_port, t.enabled) for t in config.tunnels] == [
            ("ssh", 6001, True),
            ("ssh_random", 0, True),
            ("dns", 6002, True),
            ("web01", 0, True),
            ("web02", 0, True),
        ]
        warnings = "\n".join(loaded.warnings)
        for key in ("clientID", "visitors", "metadatas", "annotations"):
            assert f"'{key}'" in warnings
        # 10 client keys and tables (webServer.addr, port, user and password are read), 13 skipped
        # proxies, 6 keys of proxy 'ssh' (its healthCheck and bandwidth limit are honoured), web01's
        # HTTP health check and its two keys.
        assert len(loaded.warnings) == 10 + 13 + 6 + 3
        assert warnings.count("skipped") == 13
        web02 = config.tunnels[-1]
        assert (web02.type, web02.proxy_protocol_version) == ("https", "v2")

    def test_every_key_frp_documents_is_known(self) -> None:
        loaded = server(uncommented("frps_full_example.toml"))
        warned = {w.split("'")[1] for w in loaded.warnings}
        assert {"quicBindPort", "transport.quic.keepalivePeriod",
                "tcpmuxHTTPConnectPort", "sshTunnelGateway",
                "auth.tokenSource", "auth.additionalScopes"} <= warned
        assert loaded.config.vhost.http_timeout == 60 and loaded.config.vhost.custom_404_page == "/path/to/404.html"
        assert loaded.config.proxy_bind_addr == "127.0.0.1"
        assert loaded.config.heartbeat_timeout == 90

        loaded = client(uncommented("frpc_full_example.toml"))
        warned = {w.split("'")[1] for w in loaded.warnings}
        assert {"transport.wireProtocol", "transport.proxyURL", "transport.quic",
                "transport.tls.disableCustomTLSFirstByte",
                "dnsServer", "featureGates", "virtualNet.address", "includes",
                "auth.oidc", "auth.tokenSource", "natHoleStunServer"} <= warned
        config = loaded.config
        assert (config.heartbeat_interval, config.heartbeat_timeout) == (30, 90)
        assert config.trusted_ca_file == "ca.crt" and config.server_name == "example.com"
        # frp's client certificate keys are Gotaxy's too (gotaxy.tls.clients).
        assert (config.tls_cert_file, config.tls_key_file) == ("client.crt", "client.key")
        # start = ["ssh", "dns"]: of the tcp, udp, http and https proxies only ssh and dns are opened.
        assert [(t.name, t.enabled) for t in config.tunnels] == [
            ("ssh", True), ("ssh_random", False), ("dns", True), ("web01", False), ("web02", False),
        ]

    @pytest.mark.parametrize(
        "text, key",
        [
            ('transport.wireProtocol = "v2"', "transport.wireProtocol"),
            ('store.path = "./frpc_store.json"', "store.path"),
            ('clientID = "laptop-1"', "clientID"),
            ('webServer.tls.serverName = "x"', "webServer.tls.serverName"),
            ('[[visitors]]\nname = "v"\ntype = "xtcp"\n[visitors.natTraversal]\n'
             'disableAssistedAddrs = false', "visitors"),
        ],
    )
    def test_newer_frp_client_keys_warn(self, text: str, key: str) -> None:
        (warning,) = client(text).warnings
        assert warning == (
            f"client.toml: '{key}' is an frp setting that Gotaxy does not support yet; ignored"
        )

    def test_nat_traversal_in_a_proxy(self) -> None:
        loaded = client(
            '[[proxies]]\nname = "p"\ntype = "xtcp"\nsecretKey = "k"\nlocalPort = 22\n'
            '[proxies.natTraversal]\ndisableAssistedAddrs = false\n'
            '[[proxies]]\nname = "t"\nlocalPort = 22\nnatTraversal.disableAssistedAddrs = true'
        )
        assert [t.name for t in loaded.config.tunnels] == ["t"]
        assert loaded.warnings[-1] == (
            "client.toml: 'natTraversal' (in proxy 't') is an frp setting that Gotaxy does "
            "not support yet; ignored"
        )


class TestEnabledAndStart:
    def test_enabled_false_defines_the_tunnel_closed(self) -> None:
        loaded = client(
            '[[proxies]]\nname = "a"\nlocalPort = 1\nenabled = false\n'
            '[[proxies]]\nname = "b"\nlocalPort = 2\nenabled = true\n'
            '[[proxies]]\nname = "c"\nlocalPort = 3'
        )
        assert loaded.warnings == ()
        assert [(t.name, t.enabled) for t in loaded.config.tunnels] == [
            ("a", False), ("b", True), ("c", True),
        ]

    def test_enabled_must_be_a_boolean(self) -> None:
        assert error_of(client, '[[proxies]]\nname = "a"\nlocalPort = 1\nenabled = "no"') == (
            "client.toml: 'enabled' in proxy 'a' must be true or false, got \"no\""
        )

    def test_enabled_in_a_skipped_proxy_is_no_error(self) -> None:
        loaded = client('[[proxies]]\nname = "w"\ntype = "stcp"\nenabled = false\nlocalPort = 1')
        assert loaded.config.tunnels == () and len(loaded.warnings) == 1

    def test_start_opens_only_the_listed_proxies(self) -> None:
        loaded = client(
            'start = ["b", "dns"]\n'
            '[[proxies]]\nname = "a"\nlocalPort = 1\n'
            '[[proxies]]\nname = "b"\nlocalPort = 2\n'
            '[[proxies]]\nname = "c"\nlocalPort = 3\nenabled = false\n'
            '[[proxies]]\nname = "dns"\ntype = "udp"\nlocalPort = 53'
        )
        assert [(t.name, t.enabled) for t in loaded.config.tunnels] == [
            ("a", False), ("b", True), ("c", False), ("dns", True),
        ]
        assert loaded.warnings[-1] == (
            "client.toml: 'start' does not list 'a'; defined but not opened "
            "(add them to 'start' or remove 'start' to open every proxy)"
        )

    def test_empty_start_opens_everything(self) -> None:
        loaded = client('start = []\n[[proxies]]\nname = "a"\nlocalPort = 1')
        assert loaded.config.tunnels[0].enabled and loaded.warnings == ()

    def test_bad_start(self) -> None:
        assert error_of(client, 'start = "ssh"') == (
            "client.toml: 'start' must be a list of proxy names such as [\"ssh\", \"web\"], "
            "got \"ssh\""
        )


class TestDocumentedExamples:
    """The full examples in docs/configuration.md load without errors or warnings."""

    def examples(self) -> list[str]:
        doc = Path(__file__).parent.parent / "docs" / "configuration.md"
        blocks = doc.read_text(encoding="utf-8").split("```toml\n")[1:]
        return [block.split("```")[0] for block in blocks]

    def test_server_example(self) -> None:
        (example,) = [e for e in self.examples() if "server.toml" in e.splitlines()[0]]
        loaded = server(example)
        assert loaded.warnings == ()
        assert loaded.config.allow_ports == parse_allow_ports("10000-20000,6000")

    def test_client_example(self) -> None:
        (example,) = [e for e in self.examples() if "client.toml" in e.splitlines()[0]]
        loaded = client(example)
        assert loaded.warnings == ()
        assert [t.name for t in loaded.config.tunnels] == ["ssh", "web", "db"]

    def test_udp_example(self) -> None:
        (example,) = [e for e in self.examples() if 'type = "udp"' in e]
        loaded = client(example)
        assert loaded.warnings == ()
        (dns,) = loaded.config.tunnels
        assert (dns.type, dns.local_port, dns.remote_port) == ("udp", 53, 5353)

    def test_connection_limits_example(self) -> None:
        (example,) = [e for e in self.examples() if "transport.maxConnections" in e]
        loaded = client(example)
        assert loaded.warnings == ()
        (ssh,) = loaded.config.tunnels
        keys = ssh.proxy_keys()
        assert (keys["transport.maxConnections"], keys["transport.maxConnectionsPerIP"],
                keys["transport.connectionRatePerIP"]) == (20, 3, 10)

    def test_tunnel_limit_defaults_example(self) -> None:
        (example,) = [e for e in self.examples() if "tunnelMaxConnectionsPerIP" in e]
        loaded = server(example)
        assert loaded.warnings == ()
        limits = loaded.config.limits
        assert (limits.tunnel_max_connections, limits.tunnel_max_connections_per_ip,
                limits.tunnel_connection_rate_per_ip) == (0, 5, 60)

    def test_fragments(self) -> None:
        fragments = [e for e in self.examples() if not e.startswith("#")]
        assert len(fragments) == 2
        assert server(fragments[0]).config == server(fragments[1]).config


class TestServerFile:
    def test_defaults(self) -> None:
        loaded = server("")
        assert loaded.config == ServerConfig()
        assert loaded.warnings == ()

    def test_every_supported_key(self) -> None:
        loaded = server(
            """
            dataDir = "/var/lib/gotaxy"
            bindAddr = "::"
            bindPort = 7443
            proxyBindAddr = "192.0.2.1"
            allowPorts = [{ start = 10000, end = 20000 }, { single = 6000 }]
            maxPortsPerClient = 5
            store = "postgresql://gotaxy@localhost/gotaxy"

            [auth]
            method = "token"
            token = "s3cret"

            [transport]
            heartbeatInterval = 5
            heartbeatTimeout = 15.5
            authTimeout = 4
            maxPendingConnections = 100
            maxPendingPerIP = 4
            tls.certFile = "server.pem"
            tls.keyFile = "server.key"

            [log]
            level = "debug"
            maxDays = 7
            """
        )
        assert loaded.warnings == ()
        assert loaded.config == ServerConfig(
            data_dir="/var/lib/gotaxy",
            bind_addr="::",
            bind_port=7443,
            proxy_bind_addr="192.0.2.1",
            allow_ports=(PortRange(10000, 20000), PortRange(6000, 6000)),
            token="s3cret",
            heartbeat_interval=5.0,
            heartbeat_timeout=15.5,
            transport=TransportSettings(
                auth_timeout=4.0, max_pending=100, max_pending_per_ip=4,
                tls_cert_file="server.pem", tls_key_file="server.key",
            ),
            limits=LimitsSettings(max_ports_per_client=5),
            log=LogSettings(level="debug", max_days=7),
            store="postgresql://gotaxy@localhost/gotaxy",
        )

    def test_file_values_apply_on_top_of_base(self) -> None:
        base = ServerConfig(data_dir="/srv/gotaxy", bind_port=8000)
        config = parse_server_config({"bindAddr": "127.0.0.1"}, base=base).config
        assert (config.data_dir, config.bind_addr, config.bind_port) == (
            "/srv/gotaxy",
            "127.0.0.1",
            8000,
        )

    def test_proxy_bind_addr_defaults_to_bind_addr(self) -> None:
        assert server('bindAddr = "10.0.0.1"').config.effective_proxy_bind_addr() == "10.0.0.1"
        config = server('bindAddr = "10.0.0.1"\nproxyBindAddr = "0.0.0.0"').config
        assert config.effective_proxy_bind_addr() == "0.0.0.0"

    def test_each_unsupported_frp_key_warns_once(self) -> None:
        loaded = server(
            """
            tcpmuxHTTPConnectPort = 1337
            sshTunnelGateway.bindPort = 2200
            sshTunnelGateway.privateKeyFile = "/home/frp-user/.ssh/id_rsa"
            """
        )
        assert loaded.warnings == (
            "server.toml: 'tcpmuxHTTPConnectPort' is an frp setting that Gotaxy does not support yet; "
            "ignored",
            "server.toml: 'sshTunnelGateway' is an frp setting that Gotaxy does not support "
            "yet; ignored",
        )

    def test_tls_force_warns_that_tls_is_always_on(self) -> None:
        (warning,) = server("transport.tls.force = true").warnings
        assert warning == (
            "server.toml: 'transport.tls.force' is not needed: Gotaxy always requires TLS; ignored"
        )

    def test_trace_log_level_is_debug(self) -> None:
        assert server('log.level = "TRACE"').config.log.level == "debug"
        assert server('log.level = "Warn"').config.log.level == "warn"

    def test_secrets_stay_out_of_repr(self) -> None:
        assert "s3cret" not in repr(server('auth.token = "s3cret"').config)


class TestErrors:
    def test_unknown_key_names_file_key_and_suggestion(self) -> None:
        assert error_of(client, 'serverAdr = "example.org"') == (
            "client.toml: unknown key 'serverAdr'; did you mean 'serverAddr'?"
        )

    @pytest.mark.parametrize(
        "text, key, suggestion",
        [
            ("bindport = 7000", "bindport", "bindPort"),
            ("bind_port = 7000", "bind_port", "bindPort"),
            ("heartbeatTimeout = 40", "heartbeatTimeout", "transport.heartbeatTimeout"),
            ('transport.tls.certFle = "a"', "transport.tls.certFle", "transport.tls.certFile"),
            ("[webServr]\nport = 7500", "webServr.port", "webServer.port"),
        ],
    )
    def test_suggestions(self, text: str, key: str, suggestion: str) -> None:
        assert error_of(server, text) == (
            f"server.toml: unknown key '{key}'; did you mean '{suggestion}'?"
        )

    def test_client_suggestions(self) -> None:
        assert error_of(client, '[[proxy]]\nname = "ssh"\nlocalPort = 22') == (
            "client.toml: unknown key 'proxy'; did you mean 'proxies'?"
        )
        assert error_of(client, "transport.tls.insecure = true") == (
            "client.toml: unknown key 'transport.tls.insecure'; "
            "did you mean 'transport.tls.insecureSkipVerify'?"
        )

    def test_unknown_key_without_a_close_match(self) -> None:
        assert error_of(server, "zzz = 1") == "server.toml: unknown key 'zzz'"
        # A shared "transport." prefix alone does not make a suggestion.
        assert error_of(server, "transport.foo = 1") == (
            "server.toml: unknown key 'transport.foo'"
        )

    def test_empty_unknown_table_is_an_error(self) -> None:
        assert "unknown key 'transprot'" in error_of(server, "[transprot]")
        assert server("[transport]\n[log]").config == ServerConfig()

    def test_old_ini_format_is_recognised(self) -> None:
        message = error_of(server, "[common]\nbind_port = 7000")
        assert message.startswith("server.toml: unknown key 'common.bind_port'; ")
        assert "frp's old INI format" in message
        assert message.endswith("convert it to frp's TOML format with: gotaxy convert server.toml")

    def test_client_key_in_server_file_is_unknown(self) -> None:
        assert "unknown key 'serverAddr'" in error_of(server, 'serverAddr = "x"')

    @pytest.mark.parametrize(
        "text, message",
        [
            (
                'bindPort = "abc"',
                "server.toml: 'bindPort' must be an integer from 1 to 65535, got \"abc\"",
            ),
            ("bindPort = 0", "server.toml: 'bindPort' must be an integer from 1 to 65535, got 0"),
            (
                "bindPort = 70000",
                "server.toml: 'bindPort' must be an integer from 1 to 65535, got 70000",
            ),
            (
                "bindPort = true",
                "server.toml: 'bindPort' must be an integer from 1 to 65535, got true",
            ),
            (
                'log.level = "verbose"',
                "server.toml: 'log.level' must be one of \"trace\", \"debug\", \"info\", "
                "\"warn\" or \"error\", got \"verbose\"",
            ),
            (
                "log.maxDays = 0",
                "server.toml: 'log.maxDays' must be an integer of at least 1, got 0",
            ),
            (
                'auth.method = "oidc"',
                "server.toml: 'auth.method' must be \"token\" (frp's; with transport.tls.trustedCaFile a client "
                "certificate too) or \"certificate\" (Gotaxy's: a client certificate alone), got \"oidc\"",
            ),
            (
                'auth.token = ""',
                "server.toml: 'auth.token' must be a non-empty string, got \"\"",
            ),
            (
                "maxPortsPerClient = -1",
                "server.toml: 'maxPortsPerClient' must be an integer of at least 0 "
                "(0 means no limit), got -1",
            ),
            (
                'bindAddr = "0.0.0.0:7000"',
                "server.toml: 'bindAddr' must be a host name or IP address without a port, "
                "got \"0.0.0.0:7000\"",
            ),
        ],
    )
    def test_bad_server_values(self, text: str, message: str) -> None:
        assert error_of(server, text) == message

    @pytest.mark.parametrize("value", ["-1", "0"])
    def test_heartbeats_cannot_be_disabled(self, value: str) -> None:
        message = error_of(server, f"transport.heartbeatTimeout = {value}")
        assert message.startswith("server.toml: 'transport.heartbeatTimeout' must be a number")
        assert "Gotaxy requires heartbeats" in message

    def test_heartbeat_timeout_must_exceed_interval(self) -> None:
        message = error_of(
            server, "transport.heartbeatInterval = 30\ntransport.heartbeatTimeout = 20"
        )
        assert message == (
            "server.toml: 'transport.heartbeatTimeout' (--heartbeat-timeout) (20s) must be "
            "greater than 'transport.heartbeatInterval' (--heartbeat-interval) (30s); "
            "raise the timeout or lower the interval"
        )
        assert "'transport.heartbeatTimeout' (5s) must be greater" in error_of(
            client, "transport.heartbeatInterval = 10\ntransport.heartbeatTimeout = 5"
        )

    def test_frps_heartbeat_timeout_alone_sets_the_interval(self) -> None:
        # frp's server has no heartbeatInterval: a short timeout must not clash
        # with Gotaxy's default interval of 10 s.
        config = server("transport.heartbeatTimeout = 3").config
        assert (config.heartbeat_interval, config.heartbeat_timeout) == (1.0, 3.0)
        config = server("transport.heartbeatTimeout = 90").config
        assert (config.heartbeat_interval, config.heartbeat_timeout) == (10.0, 90.0)
        config = server("transport.heartbeatInterval = 20").config
        assert (config.heartbeat_interval, config.heartbeat_timeout) == (20.0, 60.0)
        assert (ServerConfig().heartbeat_interval, ServerConfig().heartbeat_timeout) == (10, 30)

    def test_client_heartbeats_default_to_frps(self) -> None:
        config = ClientConfig()
        assert (config.heartbeat_interval, config.heartbeat_timeout) == (30.0, 90.0)
        config = client("transport.heartbeatTimeout = 6").config
        assert (config.heartbeat_interval, config.heartbeat_timeout) == (2.0, 6.0)
        config = client("transport.heartbeatInterval = 40").config
        assert (config.heartbeat_interval, config.heartbeat_timeout) == (40.0, 120.0)

    def test_flags_and_file_heartbeats_combine(self) -> None:
        # A flag for one of the two re-derives the other unless the file set it.
        base = server("transport.heartbeatTimeout = 60").config
        flagged = attrs.evolve(base, heartbeat_timeout=3.0)
        assert (flagged.heartbeat_interval, flagged.heartbeat_timeout) == (1.0, 3.0)
        base = server("transport.heartbeatInterval = 20").config
        with pytest.raises(ConfigError, match="--heartbeat-timeout"):
            attrs.evolve(base, heartbeat_timeout=3.0)

    @pytest.mark.parametrize("key", ["certFile", "keyFile"])
    def test_certificate_and_key_go_together(self, key: str) -> None:
        message = error_of(server, f'transport.tls.{key} = "x.pem"')
        assert message.startswith(
            "server.toml: 'transport.tls.certFile' and 'transport.tls.keyFile' go together"
        )

    @pytest.mark.parametrize(
        "allow_ports",
        [
            "[{ start = 20000, end = 10000 }]",
            "[{ start = 0, end = 10 }]",
            "[{ single = 70000 }]",
            "[{ start = 10 }]",
            "[{ single = 10, start = 5, end = 20 }]",
            '["6000"]',
            '"10000-20000"',
        ],
    )
    def test_bad_allow_ports(self, allow_ports: str) -> None:
        message = error_of(server, f"allowPorts = {allow_ports}")
        assert message.startswith("server.toml: 'allowPorts' must be a list of port ranges")

    def test_bad_allow_ports_names_the_bad_entry(self) -> None:
        message = error_of(server, "allowPorts = [{ single = 1 }, { start = 9, end = 8 }]")
        assert message.endswith('got {"start": 9, "end": 8}')

    def test_tls_cannot_be_disabled(self) -> None:
        assert error_of(client, "transport.tls.enable = false") == (
            "client.toml: 'transport.tls.enable' must be true (Gotaxy always uses TLS; remove "
            "transport.tls.enable), got false"
        )
        assert client("transport.tls.enable = true").warnings == ()

    def test_bad_client_values(self) -> None:
        assert error_of(client, 'serverAddr = "example.org:7000"') == (
            "client.toml: 'serverAddr' must be a host name or IP address without a port, or up to 16 servers of "
            "one cluster as a list or a comma-separated string, each a host or HOST:PORT, such as "
            "[\"a.example.org\", \"b.example.org:7001\"], got \"example.org:7000\""
        )
        assert error_of(client, 'loginFailExit = "yes"') == (
            "client.toml: 'loginFailExit' must be true or false, got \"yes\""
        )
        assert "'transport.tls.fingerprint' must be \"SHA256:\" followed by 64 hex digits" in (
            error_of(client, 'transport.tls.fingerprint = "SHA256:1234"')
        )
        assert "'user' must be 1 to 64 letters" in error_of(client, 'user = "a b"')

    def test_config_classes_check_values_from_flags(self) -> None:
        with pytest.raises(ConfigError) as caught:
            attrs.evolve(ServerConfig(), bind_port=70000)
        assert str(caught.value) == (
            "'bindPort' (--bind-port) must be an integer from 1 to 65535, got 70000"
        )
        with pytest.raises(ConfigError, match="--heartbeat-timeout"):
            ServerConfig(heartbeat_interval=10, heartbeat_timeout=10)


class TestLoadToml:
    def test_reads_a_file(self, tmp_path: Path) -> None:
        path = tmp_path / "server.toml"
        path.write_text("bindPort = 7001\n[auth]\ntoken = 'x'\n", encoding="utf-8")
        assert load_toml(str(path)) == {"bindPort": 7001, "auth": {"token": "x"}}

    def test_missing_file(self, tmp_path: Path) -> None:
        path = str(tmp_path / "nope.toml")
        with pytest.raises(ConfigError) as caught:
            load_toml(path)
        assert str(caught.value) == f"config file '{path}' not found"

    def test_directory(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read config file"):
            load_toml(str(tmp_path))

    def test_bad_toml_gives_line_and_column(self, tmp_path: Path) -> None:
        path = tmp_path / "client.toml"
        path.write_text('serverAddr = "x"\nserverPort = \n', encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            load_toml(str(path))
        message = str(caught.value)
        assert message.startswith(f"{path}: not valid TOML: ")
        assert "line 2" in message

    @pytest.mark.parametrize("name", ["frps_legacy_full.ini", "frpc_legacy_full.ini"])
    def test_frp_legacy_ini_names_the_format_and_the_fix(self, name: str) -> None:
        path = str(FRP_CONF / name)
        with pytest.raises(ConfigError) as caught:
            load_toml(path)
        assert str(caught.value) == (
            f"{path}: this is frp's legacy INI format (frps.ini / frpc.ini with a [common] "
            f"section, before frp 0.52), which Gotaxy does not read; convert it to TOML with: "
            f"gotaxy convert {path}"
        )

    def test_legacy_ini_in_another_encoding_is_still_recognised(self, tmp_path: Path) -> None:
        path = tmp_path / "frpc.ini"
        path.write_bytes("[common]\n# 服务器地址\nserver_addr = 1.2.3.4\n".encode("gb18030"))
        with pytest.raises(ConfigError, match="gotaxy convert"):
            load_toml(str(path))

    def test_not_utf8(self, tmp_path: Path) -> None:
        path = tmp_path / "client.toml"
        path.write_bytes(b'user = "\xff"\n')
        with pytest.raises(ConfigError, match="must be UTF-8"):
            load_toml(str(path))


class TestClientFile:
    def test_every_supported_key(self) -> None:
        loaded = client(
            f"""
            serverAddr = "gotaxy.example.org"
            serverPort = 7443
            user = "laptop"
            loginFailExit = false
            dataDir = "/home/me/.gotaxy"
            auth.method = "token"
            auth.token = "s3cret"
            log.level = "warn"
            log.maxDays = 1

            [transport]
            heartbeatInterval = 20
            heartbeatTimeout = 60
            dialServerTimeout = 2.5
            tls.enable = true
            tls.fingerprint = "{FINGERPRINT.lower()}"
            tls.trustedCaFile = "ca.pem"
            tls.serverName = "gotaxy.example.org"
            tls.insecureSkipVerify = false

            [[proxies]]
            name = "ssh"
            localPort = 22
            remotePort = 6000

            [[proxies]]
            name = "db"
            type = "tcp"
            localIP = "::1"
            localPort = 5432
            """
        )
        assert loaded.warnings == ()
        assert loaded.config == ClientConfig(
            server_addr="gotaxy.example.org",
            server_port=7443,
            token="s3cret",
            user="laptop",
            tunnels=(
                TunnelSpec(name="ssh", local_port=22, remote_port=6000),
                TunnelSpec(name="db", local_port=5432, local_ip="::1"),
            ),
            fingerprint=FINGERPRINT,
            trusted_ca_file="ca.pem",
            server_name="gotaxy.example.org",
            insecure=False,
            data_dir="/home/me/.gotaxy",
            heartbeat_interval=20.0,
            heartbeat_timeout=60.0,
            dial_timeout=2.5,
            login_fail_exit=False,
            log_level="warn",
            log_max_days=1,
        )

    def test_defaults(self) -> None:
        assert client("") == parse_client_config({})
        assert client("").config == ClientConfig()

    @pytest.mark.parametrize(
        "written",
        [
            FINGERPRINT,
            FINGERPRINT.lower(),
            "AB" * 32,
            ":".join(["ab"] * 32),
            "sha256:" + ":".join(["AB"] * 32),
            f"  {FINGERPRINT}  ",
        ],
    )
    def test_fingerprint_normalisation(self, written: str) -> None:
        loaded = parse_client_config({"transport": {"tls": {"fingerprint": written}}})
        assert loaded.config.fingerprint == FINGERPRINT
        assert attrs.evolve(ClientConfig(), fingerprint=written).fingerprint == FINGERPRINT

    def test_bracketed_ipv6_server_addr(self) -> None:
        assert client('serverAddr = "[2001:db8::1]"').config.server_addr == "2001:db8::1"

    def test_file_proxies_replace_base_tunnels(self) -> None:
        base = ClientConfig(tunnels=[TunnelSpec(name="old", local_port=1)])
        assert parse_client_config({}, base=base).config.tunnels == base.tunnels
        data = {"proxies": [{"name": "new", "localPort": 2}]}
        loaded = parse_client_config(data, base=base)
        assert loaded.config.tunnels == (TunnelSpec(name="new", local_port=2),)


class TestProxies:
    def test_duplicate_names(self) -> None:
        text = """
            [[proxies]]
            name = "ssh"
            localPort = 22
            [[proxies]]
            name = "ssh"
            localPort = 2222
            """
        assert error_of(client, text) == (
            "client.toml: two proxies are named 'ssh'; give each [[proxies]] entry its own name"
        )

    def test_duplicate_names_from_flags(self) -> None:
        config = client('[[proxies]]\nname = "ssh"\nlocalPort = 22').config
        with pytest.raises(ConfigError, match="two tunnels are named 'ssh'"):
            attrs.evolve(config, tunnels=config.tunnels + (parse_tunnel_flag("ssh=tcp:2222"),))

    def test_missing_name(self) -> None:
        text = '[[proxies]]\nname = "a"\nlocalPort = 1\n[[proxies]]\nlocalPort = 22'
        assert error_of(client, text) == (
            'client.toml: proxy #2 has no name; add name = "..." to it'
        )

    def test_missing_local_port(self) -> None:
        assert error_of(client, '[[proxies]]\nname = "ssh"\nremotePort = 6000') == (
            "client.toml: proxy 'ssh' has no 'localPort'; add the port of the local service, "
            "e.g. localPort = 22"
        )

    def test_unknown_key_in_proxy(self) -> None:
        assert error_of(client, '[[proxies]]\nname = "ssh"\nlocalPrt = 22') == (
            "client.toml: unknown key 'localPrt' in proxy 'ssh'; did you mean 'localPort'?"
        )

    def test_unknown_key_in_skipped_proxy_is_still_an_error(self) -> None:
        message = error_of(client, '[[proxies]]\nname = "dns"\ntype = "udp"\nlocalPrt = 53')
        assert message.startswith("client.toml: unknown key 'localPrt' in proxy 'dns'")

    def test_bad_value_in_proxy(self) -> None:
        assert error_of(client, '[[proxies]]\nname = "ssh"\nlocalPort = 0') == (
            "client.toml: 'localPort' in proxy 'ssh' must be an integer from 1 to 65535, got 0"
        )
        assert "'name' in proxy 'my ssh' must be 1 to 64 letters" in error_of(
            client, '[[proxies]]\nname = "my ssh"\nlocalPort = 22'
        )

    def test_unknown_type(self) -> None:
        assert error_of(client, '[[proxies]]\nname = "ssh"\ntype = "tpc"\nlocalPort = 22') == (
            'client.toml: proxy \'ssh\' has unknown type "tpc"; did you mean "tcp"?'
        )
        assert "Gotaxy tunnels use type = \"tcp\"" in error_of(
            client, '[[proxies]]\nname = "ssh"\ntype = "quux"\nlocalPort = 22'
        )

    @pytest.mark.parametrize("frp_type", ["tcpmux", "stcp", "sudp", "xtcp"])
    def test_other_frp_types_are_skipped_with_one_warning(self, frp_type: str) -> None:
        loaded = client(
            f'[[proxies]]\nname = "x"\ntype = "{frp_type}"\nlocalPort = 1\nsubdomain = "x"'
        )
        assert loaded.config.tunnels == ()
        assert loaded.warnings == (
            f'client.toml: proxy \'x\' has type "{frp_type}", which Gotaxy does not support '
            f'yet (only "tcp", "http", "udp", "https"); skipped',
        )

    def test_unsupported_proxy_keys_warn_once_per_key(self) -> None:
        loaded = client(
            """
            [[proxies]]
            name = "a"
            localPort = 1
            transport.useEncryption = true
            healthCheck.type = "tcp"
            healthCheck.intervalSeconds = 10
            [[proxies]]
            name = "b"
            localPort = 2
            transport.useEncryption = true
            healthCheck.type = "http"
            healthCheck.path = "/status"
            """
        )
        assert [t.name for t in loaded.config.tunnels] == ["a", "b"]
        assert [t.health_check_type for t in loaded.config.tunnels] == ["tcp", "http"]
        assert loaded.warnings == (
            "client.toml: proxy 'b' has healthCheck.type = \"http\", which Gotaxy does not support "
            "yet; its local service is checked with a TCP connect instead",
            "client.toml: 'transport.useEncryption' (in proxies 'a', 'b') is an frp setting "
            "that Gotaxy does not support yet; ignored",
            "client.toml: 'healthCheck.path' (in proxy 'b') is an frp setting that Gotaxy does not "
            "support yet; ignored",
        )

    def test_a_udp_proxys_health_check_is_ignored_with_a_warning(self) -> None:
        loaded = client('[[proxies]]\nname = "dns"\ntype = "udp"\nlocalPort = 53\nhealthCheck.type = "tcp"')
        (dns,) = loaded.config.tunnels
        assert dns.health_check_type is None  # a TCP connect would show a healthy UDP service down
        assert loaded.warnings == (
            "client.toml: proxy 'dns' is a udp proxy, and Gotaxy's health checks are TCP connects; "
            "its healthCheck is ignored",
        )

    def test_health_check_values_are_checked(self) -> None:
        message = error_of(client, '[[proxies]]\nname = "a"\nlocalPort = 1\nhealthCheck.type = "udp"')
        assert "'healthCheck.type' in proxy 'a' must be \"tcp\" or \"http\", got \"udp\"" in message
        message = error_of(client, '[[proxies]]\nname = "a"\nlocalPort = 1\nhealthCheck.maxFailed = 0')
        assert "'healthCheck.maxFailed' in proxy 'a' must be an integer of at least 1, got 0" in message

    def test_proxies_must_be_an_array_of_tables(self) -> None:
        message = error_of(client, '[proxies]\nname = "ssh"')
        assert message.startswith("client.toml: 'proxies' must be an array of tables")


class TestTunnelFlag:
    @pytest.mark.parametrize(
        "text, expected",
        [
            (
                "ssh=tcp:127.0.0.1:22:6000",
                TunnelSpec(name="ssh", local_port=22, local_ip="127.0.0.1", remote_port=6000),
            ),
            ("web=tcp:127.0.0.1:8080", TunnelSpec(name="web", local_port=8080)),
            ("web=tcp:8080", TunnelSpec(name="web", local_port=8080, local_ip="127.0.0.1")),
            ("db=tcp:[::1]:5432:0", TunnelSpec(name="db", local_port=5432, local_ip="::1")),
            (
                "db=tcp:[fe80::1%eth0]:5432:15432",
                TunnelSpec(
                    name="db", local_port=5432, local_ip="fe80::1%eth0", remote_port=15432
                ),
            ),
            (
                "nas.home=tcp:nas.lan:445",
                TunnelSpec(name="nas.home", local_port=445, local_ip="nas.lan"),
            ),
        ],
    )
    def test_good(self, text: str, expected: TunnelSpec) -> None:
        assert parse_tunnel_flag(text) == expected

    @pytest.mark.parametrize(
        "text, problem",
        [
            ("ssh", "expected NAME=tcp:LOCALIP:LOCALPORT[:REMOTEPORT]"),
            ("ssh=tcp", "expected NAME=tcp:LOCALIP:LOCALPORT[:REMOTEPORT]"),
            ("=tcp:22", "the tunnel name must be 1 to 64 letters"),
            ("-x=tcp:22", "the tunnel name must be 1 to 64 letters"),
            ("dns=stcp:53", 'type "stcp" is not supported yet; only "tcp", "http", "udp", "https" tunnels are'),
            ("ssh=ftp:22", "expected NAME=tcp:"),
            (
                "ssh=tcp:127.0.0.1:abc",
                'the local port must be an integer from 1 to 65535, got "abc"',
            ),
            ("ssh=tcp:127.0.0.1:0", "the local port must be an integer from 1 to 65535"),
            ("ssh=tcp:127.0.0.1:70000", "the local port must be an integer from 1 to 65535"),
            ("ssh=tcp:127.0.0.1:22:99999", "the remote port must be an integer from 0 to 65535"),
            ("ssh=tcp:127.0.0.1:22:6000:1", "expected NAME=tcp:"),
            ("ssh=tcp:22:6000", "give the local IP too, e.g. ssh=tcp:127.0.0.1:22:6000"),
            ("db=tcp:::1:5432", "put an IPv6 local address in brackets"),
            ("db=tcp:[::1]5432", "expected NAME=tcp:"),
            ("db=tcp:[nothost]:5432", "the local IP must be a host name or IP address"),
            ("ssh=tcp::22", "the local IP must be a host name or IP address"),
            # A website's names cannot be given in a flag: the file can.
            ("web=http:8080", "an http tunnel needs 'customDomains'"),
            ("web=http:8080", "define this tunnel in [[proxies]] of the client's config"),
        ],
    )
    def test_bad(self, text: str, problem: str) -> None:
        with pytest.raises(ConfigError) as caught:
            parse_tunnel_flag(text)
        message = str(caught.value)
        assert message.startswith(f'--tunnel "{text}": ')
        assert problem in message


class TestAllowPorts:
    def test_parse_and_format(self) -> None:
        ranges = parse_allow_ports("10000-20000,6000")
        assert ranges == (PortRange(10000, 20000), PortRange(6000, 6000))
        assert format_allow_ports(ranges) == "10000-20000,6000"
        assert parse_allow_ports(" 1 - 2 , 3 ") == (PortRange(1, 2), PortRange(3, 3))
        assert format_allow_ports(()) == ""

    def test_flag_value_and_file_value_agree(self) -> None:
        from_file = server("allowPorts = [{start = 10000, end = 20000}, {single = 6000}]")
        assert from_file.config.allow_ports == parse_allow_ports("10000-20000,6000")

    def test_membership(self) -> None:
        (wide,) = parse_allow_ports("10000-20000")
        assert 10000 in wide and 20000 in wide and 15000 in wide
        assert 9999 not in wide and 20001 not in wide
        assert 6000 in PortRange(6000, 6000)

    @pytest.mark.parametrize(
        "text, problem",
        [
            ("", "expected ports and ranges separated by commas"),
            ("6000,", "expected ports and ranges separated by commas"),
            ("a-b", "expected ports and ranges separated by commas"),
            ("-5", "expected ports and ranges separated by commas"),
            ("0-10", 'ports must be from 1 to 65535, got "0-10"'),
            ("70000", "ports must be from 1 to 65535"),
            ("20000-10000", "the range 20000-10000 starts above its end; write 10000-20000"),
        ],
    )
    def test_bad(self, text: str, problem: str) -> None:
        with pytest.raises(ConfigError) as caught:
            parse_allow_ports(text)
        assert str(caught.value).startswith("--allow-ports ")
        assert problem in str(caught.value)

    def test_port_range_checks_itself(self) -> None:
        with pytest.raises(ConfigError, match="port range 5-4 is invalid"):
            PortRange(5, 4)
        with pytest.raises(ConfigError):
            PortRange(0, 10)


class TestHostPort:
    @pytest.mark.parametrize(
        "text, default, expected",
        [
            ("example.org:7000", None, ("example.org", 7000)),
            ("[::1]:7000", None, ("::1", 7000)),
            ("192.0.2.7:443", None, ("192.0.2.7", 443)),
            ("example.org", 7000, ("example.org", 7000)),
            ("[::1]", 7000, ("::1", 7000)),
            ("2001:db8::1", 7000, ("2001:db8::1", 7000)),
        ],
    )
    def test_good(self, text: str, default: int | None, expected: tuple[str, int]) -> None:
        assert parse_host_port(text, default) == expected

    @pytest.mark.parametrize(
        "text, problem",
        [
            ("example.org", 'add the port, e.g. example.org:7000'),
            ("::1", "add the port, e.g. [::1]:7000"),
            ("example.org:http", 'the port must be an integer from 1 to 65535, got "http"'),
            ("example.org:0", "the port must be an integer from 1 to 65535"),
            (":7000", "the host must be a host name or IP address"),
            ("[::1]7000", "expected HOST:PORT"),
            ("[::1", "expected HOST:PORT"),
            ("a:b:c:7000", "the host must be a host name or IP address"),
        ],
    )
    def test_bad(self, text: str, problem: str) -> None:
        with pytest.raises(ConfigError) as caught:
            parse_host_port(text)
        assert str(caught.value).startswith(f'--server "{text}": ')
        assert problem in str(caught.value)

    def test_flag_name_is_configurable(self) -> None:
        with pytest.raises(ConfigError, match='^--bind "x": '):
            parse_host_port("x", flag="--bind")


class TestNotificationMetricsHistorySettings:
    def test_webhooks_smtp_metrics_history(self) -> None:
        loaded = server(
            """
serverName = "edge-1"
notify.flapGrace = 0
metrics.exposure = "token"
metrics.token = "m-s3cret"
history.sampleInterval = 30
history.rawHours = 24
history.retentionDays = 30

[[webhooks]]
name = "ops"
url = "https://hooks.example.org/x?access_token=w-s3cret"
secret = "h-s3cret"
events = ["client.disconnected", "tunnel.*"]
timeout = 5
retryFor = 60
maxPending = 10

[[webhooks]]
url = "https://open.feishu.cn/open-apis/bot/v2/hook/abc"
format = "feishu"

[smtp]
host = "mail.example.org"
tls = "tls"
username = "gotaxy"
password = "p-s3cret"
from = "gotaxy@example.org"
to = ["ops@example.org", "oncall@example.org"]
events = ["client.*"]
batchSeconds = 60
"""
        )
        config = loaded.config
        assert loaded.warnings == ()
        assert config.server_name == "edge-1"
        assert config.notify.flap_grace == 0.0
        assert config.metrics.effective_exposure() == "token" and config.metrics.token == "m-s3cret"
        assert (config.history.sample_interval, config.history.raw_hours, config.history.retention_days) == (30, 24, 30)
        first, second = config.webhooks
        assert first == WebhookSpec(
            url="https://hooks.example.org/x?access_token=w-s3cret", name="ops", secret="h-s3cret",
            events=("client.disconnected", "tunnel.*"), timeout=5.0, retry_for=60.0, max_pending=10,
        )
        assert (second.format, second.events, second.timeout, second.retry_for) == ("feishu", ("*",), 10.0, 300.0)
        assert config.smtp.to == ("ops@example.org", "oncall@example.org")
        assert config.smtp.effective_port() == 465
        assert config.smtp.events == ("client.*",) and config.smtp.batch_seconds == 60.0
        text = repr(config)
        for secret in ("m-s3cret", "w-s3cret", "h-s3cret", "p-s3cret"):
            assert secret not in text

    def test_defaults(self) -> None:
        config = ServerConfig()
        assert config.webhooks == () and config.smtp.host is None
        assert config.notify.flap_grace == 10.0
        assert config.metrics.effective_exposure() == "off"
        assert config.server_name  # the host name
        assert replace(config, {"metrics.enable_prometheus": True}).metrics.effective_exposure() == "open"
        assert replace(config, {"metrics.enable_prometheus": True, "metrics.exposure": "off"}).metrics.effective_exposure() == "off"

    @pytest.mark.parametrize(
        "text, message",
        [
            ('[[webhooks]]\nname = "a"', "server.toml: webhook 'a' has no url; add url = \"https://...\" to it"),
            ('[[webhooks]]\nurl = "ftp://x"', "server.toml: 'url' in webhook #1 must be an http:// or https:// URL, got a URL that starts with ftp:// (not shown: a webhook URL may hold a secret)"),
            ('[[webhooks]]\nurl = "hooks.example.org/T0/secret"', "server.toml: 'url' in webhook #1 must be an http:// or https:// URL, got a value without http:// or https:// in front (not shown: a webhook URL may hold a secret)"),
            ('[[webhooks]]\nurl = "https://hooks.example.org/T0 secret"', "server.toml: 'url' in webhook #1 must be an http:// or https:// URL, got a URL with a space or other blank in it (not shown: a webhook URL may hold a secret)"),
            ('[[webhooks]]\nurl = "https://x"\nformat = "teams"', "server.toml: 'format' in webhook #1 must be \"json\", \"slack\", \"dingtalk\" or \"feishu\", got \"teams\""),
            ('[[webhooks]]\nurl = "https://x"\nevent = ["*"]', "server.toml: unknown key 'event' in webhook #1; did you mean 'events'?"),
            ('[[webhooks]]\nurl = "https://x"\nevents = ["Client"]', "server.toml: 'events' in webhook #1 must be a list of event types such as [\"client.disconnected\", \"tunnel.*\"] (\"*\" for all), got \"Client\""),
            ('[[webhooks]]\nname = "a"\nurl = "https://x"\n[[webhooks]]\nname = "a"\nurl = "https://y"', "server.toml: two webhooks are named 'a'; give each [[webhooks]] entry its own name"),
            ('webhooks = 1', "server.toml: 'webhooks' must be an array of tables, each one starting with a [[webhooks]] line"),
            ('[smtp]\nhost = "h"\nfrom = "a@b.c"', "server.toml: 'smtp.host' is set but 'smtp.from' or 'smtp.to' is missing; give the sender and at least one recipient, or remove [smtp] to turn e-mail off"),
            ('[smtp]\ntls = "ssl"', "server.toml: 'smtp.tls' must be \"starttls\", \"tls\" (implicit TLS, usually port 465) or \"none\", got \"ssl\""),
            ('[smtp]\nusername = "u"', "server.toml: 'smtp.username' and 'smtp.password' go together: give both to log in, or neither"),
            ('metrics.exposure = "token"', "server.toml: 'metrics.exposure' is \"token\" but 'metrics.token' is missing; set the bearer token Prometheus must send, or use \"open\" or \"off\""),
            ('metrics.exposure = "public"', "server.toml: 'metrics.exposure' must be \"off\", \"open\" or \"token\" (a bearer token in metrics.token), got \"public\""),
            ('notify.flapGrace = -1', "server.toml: 'notify.flapGrace' must be a number of seconds of at least 0 (0 turns it off), got -1"),
        ],
    )
    def test_errors(self, text: str, message: str) -> None:
        assert error_of(server, text) == message


class TestOperatorTunnelAllowList:
    """allowOperatorTunnels: which local addresses operator-defined tunnels may point at."""

    def test_off_by_default(self) -> None:
        config = ClientConfig()
        assert config.allow_operator_tunnels == ()
        refusal = config.operator_tunnel_refusal("127.0.0.1", 22)
        assert refusal == (
            "this client accepts no operator-defined tunnels; to allow 127.0.0.1:22, add it to "
            "allowOperatorTunnels in the client's config (or --allow-operator-tunnel 127.0.0.1:22)"
        )

    def test_addresses_networks_ranges_and_names(self) -> None:
        config = client(
            'allowOperatorTunnels = ["127.0.0.1:8000-8100", "192.168.1.0/24:22", "[::1]:*", "db.lan:5432"]'
        ).config
        allowed = [("127.0.0.1", 8000), ("127.0.0.1", 8100), ("192.168.1.77", 22), ("::1", 1), ("::1", 65535),
                   ("db.lan", 5432), ("DB.lan", 5432)]
        refused = [("127.0.0.1", 7999), ("127.0.0.1", 8101), ("127.0.0.2", 8000), ("192.168.2.1", 22),
                   ("192.168.1.77", 23), ("::2", 80), ("db.lan", 5433), ("other.lan", 5432),
                   # names are not resolved: a name does not match an address rule, nor the reverse
                   ("localhost", 8000), ("::ffff:127.0.0.1", 8000)]
        for host, port in allowed:
            assert config.operator_tunnel_refusal(host, port) is None, (host, port)
        for host, port in refused:
            assert config.operator_tunnel_refusal(host, port) == (
                f"{f'[{host}]' if ':' in host else host}:{port} is not in this client's allowOperatorTunnels "
                "(127.0.0.1:8000-8100, 192.168.1.0/24:22, [::1]:*, db.lan:5432); add it there to allow it"
            ), (host, port)

    @pytest.mark.parametrize(
        "entry", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:9-8", "::1:80", "[127.0.0.1]:80",
                  "[::1]80", "/24:22", "a b:1", "127.0.0.1:80,81", ":80", "10.0.0.0/33:22"]
    )
    def test_bad_entries_name_the_entry(self, entry: str) -> None:
        message = error_of(client, f"allowOperatorTunnels = [{entry!r}]".replace("'", '"'))
        assert message == (
            "client.toml: 'allowOperatorTunnels' must be a list of local addresses with a port or port "
            'range, such as ["127.0.0.1:8000-8100", "192.168.1.10:80", "192.168.1.0/24:22", "[::1]:*"], '
            f'got "{entry}"'
        )
        with pytest.raises(ConfigError) as flag:
            parse_local_rule_flag(entry)
        assert str(flag.value) == (
            f'--allow-operator-tunnel "{entry}": expected a local address with a port or port range, '
            "e.g. 127.0.0.1:8000-8100, 192.168.1.0/24:22 or [::1]:*"
        )

    def test_a_single_string_is_not_a_list(self) -> None:
        assert "must be a list of local addresses" in error_of(client, 'allowOperatorTunnels = "127.0.0.1:80"')
