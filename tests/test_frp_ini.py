"""
Tests for gotaxy.frp_ini: frp's legacy INI files converted to frp's TOML.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gotaxy.config import ConfigError, PortRange, parse_client_config, parse_server_config
from gotaxy.frp_ini import convert_ini, looks_like_frp_ini

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

FRP_CONF = Path(__file__).parent / "frp_conf"


def converted(name: str):
    return convert_ini((FRP_CONF / name).read_text(encoding="utf-8"), name)


def reloaded(result):
    """The converted file as TOML text, parsed again (what a user's next start reads)."""
    return tomllib.loads(result.toml("x.ini"))


class TestFrpLegacyFiles:
    def test_frps_legacy_full(self) -> None:
        result = converted("frps_legacy_full.ini")
        assert result.kind == "server" and result.notes == ()
        data = reloaded(result)
        assert data["bindPort"] == 7000 and data["kcpBindPort"] == 7000
        assert data["webServer"] == {
            "addr": "0.0.0.0", "port": 7500, "user": "admin", "password": "admin", "pprofEnable": False,
        }
        assert data["auth"] == {
            "method": "token", "token": "12345678",
            # oidc_issuer = (empty) is not set, as in frp.
            "oidc": {"skipExpiryCheck": False, "skipIssuerCheck": False},
        }
        assert data["transport"] == {"maxPoolCount": 5, "tls": {"force": False}}
        assert data["httpPlugins"] == [
            {"name": "user-manager", "addr": "127.0.0.1:9000", "path": "/handler", "ops": ["Login"]},
            {"name": "port-manager", "addr": "127.0.0.1:9001", "path": "/handler", "ops": ["NewProxy"]},
        ]
        config = parse_server_config(data).config
        assert config.allow_ports == (
            PortRange(2000, 3000), PortRange(3001, 3001), PortRange(3003, 3003), PortRange(4000, 50000),
        )
        assert config.token == "12345678" and config.metrics.enable_prometheus and config.web.port == 7500

    def test_frpc_legacy_full(self) -> None:
        result = converted("frpc_legacy_full.ini")
        assert result.kind == "client" and result.notes == ()
        data = reloaded(result)
        assert data["metadatas"] == {"var1": "123", "var2": "234"}
        assert data["transport"]["tls"] == {"enable": True, "disableCustomTLSFirstByte": True}
        proxies = {p["name"]: p for p in data["proxies"]}
        assert proxies["ssh"] == {
            "name": "ssh", "type": "tcp", "localIP": "127.0.0.1", "localPort": 22, "remotePort": 6001,
            "transport": {
                "bandwidthLimit": "1MB", "bandwidthLimitMode": "client",
                "useEncryption": False, "useCompression": False,
            },
            "loadBalancer": {"group": "test_group", "groupKey": "123456"},
            "healthCheck": {"type": "tcp", "timeoutSeconds": 3, "maxFailed": 3, "intervalSeconds": 10},
            "metadatas": {"var1": "123", "var2": "234"},
        }
        # [range:tcp_port]: one proxy per port, numbered as frp numbers them.
        ranged = [p for p in data["proxies"] if p["name"].startswith("tcp_port_")]
        assert [(p["localPort"], p["remotePort"]) for p in ranged] == [
            (port, port) for port in [*range(6010, 6021), 6022, *range(6024, 6029)]
        ]
        assert ranged[0]["name"] == "tcp_port_0" and ranged[-1]["name"] == "tcp_port_16"
        assert proxies["web01"]["requestHeaders"] == {"set": {"X-From-Where": "frp"}}
        assert proxies["web01"]["locations"] == ["/", "/pic"]
        assert proxies["plugin_socks5"]["plugin"] == {"type": "socks5", "username": "abc", "password": "abc"}
        assert proxies["plugin_https2http"]["plugin"]["requestHeaders"] == {"set": {"X-From-Where": "frp"}}
        assert proxies["p2p_tcp"]["allowUsers"] == ["user1", "user2"]
        assert [v["name"] for v in data["visitors"]] == ["secret_tcp_visitor", "p2p_tcp_visitor"]
        assert data["visitors"][1]["serverUser"] == "user1"

        loaded = parse_client_config(data)
        tunnels = [t.name for t in loaded.config.tunnels]
        assert tunnels == ["ssh", "ssh_random", *(f"tcp_port_{i}" for i in range(17)), "dns",
                           *(f"udp_port_{i}" for i in range(11)), "web01", "web02"]  # udp proxies are read as well


class TestValues:
    def test_bare_key_empty_value_and_types(self) -> None:
        result = convert_ini(
            "[common]\nserver_port = 7001\ntls_enable\noidc_client_id =\nstart = ssh, web\n"
            "authenticate_heartbeats = yes\n[ssh]\nlocal_port = 22\n",
            "frpc.ini",
        )
        assert result.data == {
            "serverPort": 7001,
            "transport": {"tls": {"enable": True}},
            "start": ["ssh", "web"],
            "auth": {"additionalScopes": ["HeartBeats"]},
            "proxies": [{"name": "ssh", "localPort": 22, "type": "tcp"}],
        }

    def test_bad_integer_names_section_and_key(self) -> None:
        with pytest.raises(ConfigError) as caught:
            convert_ini("[common]\nserver_port = 7000\n[ssh]\nlocal_port = twenty-two\n", "frpc.ini")
        assert str(caught.value) == (
            "frpc.ini: [ssh] local_port must be an integer, got 'twenty-two'; fix it in the INI "
            "file and convert again"
        )

    def test_what_frp_would_not_read_is_reported(self) -> None:
        result = convert_ini(
            "[common]\nbind_port = 7000\nlog_way = file\nbindport = 1\n"
            "dashboard_tls_cert_file = a.pem\n",
            "frps.ini",
        )
        assert result.notes == (
            "[common] log_way (frp's TOML has only log.to, taken from log_file)",
            "[common] bindport (frp does not read it there)",
            "[common] dashboard_tls_cert_file (frp uses it only with dashboard_tls_mode = true)",
        )
        text = result.toml("frps.ini")
        assert "# Not converted: [common] bindport (frp does not read it there)" in text
        assert tomllib.loads(text) == {"bindPort": 7000}

    def test_dashboard_tls(self) -> None:
        result = convert_ini(
            "[common]\nbind_port = 7000\ndashboard_tls_mode = true\ndashboard_tls_cert_file = a.pem\n"
            "dashboard_tls_key_file = a.key\n",
            "frps.ini",
        )
        assert result.data["webServer"] == {"tls": {"certFile": "a.pem", "keyFile": "a.key"}}

    def test_keys_of_another_proxy_type_are_reported(self) -> None:
        result = convert_ini("[common]\n[ssh]\nlocal_port = 22\nsubdomain = x\n", "frpc.ini")
        assert result.notes == ("[ssh] subdomain (frp does not read it there)",)

    def test_range_needs_as_many_remote_ports(self) -> None:
        with pytest.raises(ConfigError, match=r"\[range:p\] has 3 local ports but 2 remote ports"):
            convert_ini("[common]\n[range:p]\nlocal_port = 1-3\nremote_port = 5,6\n", "frpc.ini")

    def test_unknown_type_and_role(self) -> None:
        with pytest.raises(ConfigError, match=r"\[x\] has type 'tpc', which frp does not know"):
            convert_ini("[common]\n[x]\ntype = tpc\n", "frpc.ini")
        with pytest.raises(ConfigError, match=r"\[x\] has role 'client'"):
            convert_ini("[common]\n[x]\nrole = client\n", "frpc.ini")

    def test_kind(self) -> None:
        assert convert_ini("[common]\nserver_addr = x\n", "a.ini").kind == "client"
        assert convert_ini("[common]\nbind_port = 1\n", "a.ini").kind == "server"
        assert convert_ini("[common]\ntoken = x\n", "a.ini", kind="server").kind == "server"
        with pytest.raises(ConfigError, match="pass --server or --client"):
            convert_ini("[common]\ntoken = x\n", "a.ini")

    def test_not_frp_ini(self) -> None:
        with pytest.raises(ConfigError, match=r"has no \[common\] section"):
            convert_ini("[server]\nport = 1\n", "a.ini")
        with pytest.raises(ConfigError, match="not a valid frp INI file"):
            convert_ini("bind_port = 7000\n", "a.ini")
        assert looks_like_frp_ini((FRP_CONF / "frpc_legacy_full.ini").read_text())
        assert not looks_like_frp_ini((FRP_CONF / "frpc_full_example.toml").read_text())
