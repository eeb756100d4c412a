"""
End to end: frp's own example files (``tests/frp_conf/``, unchanged copies
of frp's ``conf/``) given to the real ``twistd`` server and client.

Each test copies the files into its temporary directory and changes only
addresses and ports, with ``rewrite``: exact ``key = value`` lines replaced
by others, each of which must occur exactly once.  The rewrites are

* the server's ``bindAddr`` to 127.0.0.1 and ``bindPort`` to a free port;
  ``webServer.port`` (the panel, which Gotaxy honours) and ``vhostHTTPPort``
  (websites) to free ports;
* the client's ``serverAddr`` / ``serverPort`` to that server;
* a ``remotePort`` that is fixed in the file to a free port (the file's
  own port may be taken on a shared machine).

The legacy INI files get the same rewrites under frp's old names
(``bind_addr``, ``bind_port``, ``dashboard_addr``, ``dashboard_port``,
``server_addr``, ``server_port``, the ``remote_port`` of ``[ssh]`` and of
``[range:tcp_port]``) before ``gotaxy convert`` turns them into TOML.

What a file does not say is given as flags: ``--console-port 0`` (frp has
no console; its default port is fixed) and the client's ``--data-dir`` (so
that trust-on-first-use does not write into the real home directory).  The
ports frp's files give to settings Gotaxy ignores (``kcpBindPort`` ...)
stay as they are: nothing listens on them, which the warnings say.  The
client's ``webServer.port`` (frpc's admin API, honoured) gets a free port.
"""

from __future__ import annotations

import re
import signal
import json
import urllib.request
from pathlib import Path
from typing import Dict, List

from tests.e2e import (
    GotaxyServer,
    Process,
    Processes,
    echo_once,
    free_port,
    free_port_range,
    gotaxy_cli,
    tunnel_port,
    twistd,
)

FRP_CONF = Path(__file__).parent / "frp_conf"

_WARNING = re.compile(r"\[gotaxy\.(?:server|client)#warn\] (.*)")


def rewrite(source: str, target: Path, lines: Dict[str, str]) -> Path:
    """Copy frp's ``source`` file to ``target``, replacing each whole line in ``lines``."""
    text = (FRP_CONF / source).read_text(encoding="utf-8")
    for old, new in lines.items():
        pattern = re.compile(rf"^{re.escape(old)}$", re.MULTILINE)
        assert len(pattern.findall(text)) == 1, f"{source}: {old!r} is not exactly one line"
        text = pattern.sub(lambda _: new, text)
    target.write_text(text, encoding="utf-8")
    return target


def start_server(procs: Processes, config: Path, port: int, *flags: str, name: str = "server") -> GotaxyServer:
    """The server on ``config`` alone (no --web-port 0 in front: the file's webServer.port counts)."""
    process = Process(
        [twistd(), "-n", "--pidfile=", "gotaxy-server", "--config", str(config), "--console-port", "0", *flags],
        procs.workdir, name,
    )
    procs.started.append(process)
    return GotaxyServer(process, port, procs.workdir / "gotaxy-data")


def start_client(procs: Processes, config: Path, *flags: str, name: str = "client") -> Process:
    argv = ["--config", str(config), "--data-dir", str(procs.workdir / f"{name}-data"), *flags]
    return procs.twistd("gotaxy-client", argv, name)


def warnings(process: Process, until: str) -> List[str]:
    """The warnings ``process`` logged before the line matching ``until``."""
    end = process.wait_for(until).start()
    return _WARNING.findall(process.output()[:end])


def warned_keys(lines: List[str]) -> List[str]:
    """The key or proxy each warning is about, in order: 'log.to', 'proxy dns', ..."""
    keys = []
    for line in lines:
        proxy = re.search(r": proxy '([^']+)' (?:has type|uses the frp plugin)", line)
        keys.append(f"proxy {proxy.group(1)}" if proxy else line.split("'")[1])
    return keys


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status


# frp's example files give these warnings, one per unsupported key, proxy or table.
FRPS_FULL_WARNINGS = [
    "kcpBindPort", "transport.maxPoolCount", "transport.tls.force",
    "webServer.user", "webServer.password", "webServer.pprofEnable", "log.to",
    "log.disablePrintColor", "detailedErrorsToClient", "auth.oidc",
    "natholeAnalysisDataReserveHours", "httpPlugins",
]
FRPC_FULL_WARNINGS = [
    "clientID", "log.to", "log.disablePrintColor", "webServer.pprofEnable", "transport.poolCount",
    "transport.protocol", "transport.connectServerLocalIP", "udpPacketSize", "metadatas",
    "visitors",
    # Proxies of types and plugins Gotaxy does not support yet: skipped, one line each.
    "web01",  # its healthCheck.type = "http" is a TCP connect for now
    "proxy tcpmuxhttpconnect",
    "proxy plugin_unix_domain_socket", "proxy plugin_http_proxy", "proxy plugin_socks5",
    "proxy plugin_static_file", "proxy plugin_https2http", "proxy plugin_https2https",
    "proxy plugin_http2https", "proxy plugin_http2http", "proxy plugin_tls2raw",
    "proxy secret_tcp", "proxy p2p_tcp", "proxy vnet-server",
    # frp settings of the tcp proxy 'ssh' that Gotaxy opens.
    "transport.useEncryption", "transport.useCompression", "loadBalancer.group", "loadBalancer.groupKey",
    "metadatas", "annotations",
    # ... and of the http proxy 'web01'.
    "healthCheck.path", "healthCheck.httpHeaders",
]


def test_frp_full_examples_start(procs, tmp_path):
    port, web, vhost, admin, vhost_https = free_port(), free_port(), free_port(), free_port(), free_port()
    ssh_port, _ = free_port_range(1)  # inside the file's allowPorts (4000-50000)
    frps = rewrite("frps_full_example.toml", tmp_path / "frps.toml", {
        'bindAddr = "0.0.0.0"': 'bindAddr = "127.0.0.1"',
        "bindPort = 7000": f"bindPort = {port}",
        "webServer.port = 7500": f"webServer.port = {web}",
        "vhostHTTPPort = 80": f"vhostHTTPPort = {vhost}",
        "vhostHTTPSPort = 443": f"vhostHTTPSPort = {vhost_https}",
    })
    server = start_server(procs, frps, port)
    assert warned_keys(warnings(server.process, r"listening for clients on 127\.0\.0\.1:")) == FRPS_FULL_WARNINGS
    # Honoured: the panel on webServer.port, /metrics open (enablePrometheus = true).
    server.wait_for(rf"Site starting on {web}")
    assert get(f"http://127.0.0.1:{web}/metrics") == 200

    frpc = rewrite("frpc_full_example.toml", tmp_path / "frpc.toml", {
        'serverAddr = "0.0.0.0"': 'serverAddr = "127.0.0.1"',
        "serverPort = 7000": f"serverPort = {port}",
        "remotePort = 6001": f"remotePort = {ssh_port}",
        "webServer.port = 7400": f"webServer.port = {admin}",
    })
    client = start_client(procs, frpc)
    # The shared auth.token = "12345678" of both files: the client is named shared:<user>.
    lines = warnings(client, rf"logged in to 127\.0\.0\.1:{port} as shared:your_name")
    assert warned_keys(lines) == FRPC_FULL_WARNINGS
    assert len(lines) == len(FRPC_FULL_WARNINGS)
    assert tunnel_port(client, "ssh") == ssh_port
    # remotePort = 0: the server picks a port from allowPorts.
    picked = tunnel_port(client, "ssh_random")
    assert 2000 <= picked <= 3000 or picked in (3001, 3003) or 4000 <= picked <= 50000
    # The http proxy web01: its custom domain and its subdomain under the file's subDomainHost.
    client.wait_for(rf"tunnel web01 up at http://web01\.yourdomain\.com:{vhost}/, http://web01\.yourdomain\.com:{vhost}/pic, "
                    rf"http://web01\.frps\.com:{vhost}/, http://web01\.frps\.com:{vhost}/pic")
    # The https proxy web02 (TLS passthrough, PROXY protocol v2) on vhostHTTPSPort.
    client.wait_for(rf"tunnel web02 up at https://web02\.yourdomain\.com:{vhost_https}, "
                    rf"https://web02\.frps\.com:{vhost_https}")
    server.wait_for(r"client shared:your_name connected")
    # Honoured: frpc's admin API on webServer.port, with the file's admin / admin.
    client.wait_for(rf"admin API on http://127\.0\.0\.1:{admin}/api/status")
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/api/status",
                                     headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    with urllib.request.urlopen(request, timeout=10) as response:
        statuses = {p["name"]: p["status"] for p in json.loads(response.read())["tcp"]}
    assert statuses["ssh"] in ("running", "start error")  # its local service may not run here
    assert "Traceback" not in server.output() + client.output()


def test_frp_minimal_files_start(procs, tmp_path):
    port = free_port()
    remote, _ = free_port_range(1)
    frps = rewrite("frps.toml", tmp_path / "frps.toml", {"bindPort = 7000": f"bindPort = {port}"})
    # frps.toml names no address and no panel port: loopback and no panel, by flag.
    server = start_server(procs, frps, port, "--bind-addr", "127.0.0.1", "--web-port", "0")
    assert warnings(server.process, r"listening for clients on") == []

    frpc = rewrite("frpc.toml", tmp_path / "frpc.toml", {
        "serverPort = 7000": f"serverPort = {port}",
        "remotePort = 6000": f"remotePort = {remote}",
    })
    # frpc.toml has no token: the one the server printed at its first start.
    client = start_client(procs, frpc, "--token", server.token)
    assert warnings(client, r"logged in to 127\.0\.0\.1") == []
    assert tunnel_port(client, "test-tcp") == remote


def test_disabled_proxy_is_defined_but_not_opened(procs, echo, tmp_path):
    server = procs.server()
    frpc = tmp_path / "frpc.toml"
    frpc.write_text(
        f"""
serverAddr = "127.0.0.1"
serverPort = {server.port}

[[proxies]]
name = "off"
type = "tcp"
enabled = false
localIP = "127.0.0.1"
localPort = {echo.port}

[[proxies]]
name = "on"
type = "tcp"
enabled = true
localIP = "127.0.0.1"
localPort = {echo.port}
""",
        encoding="utf-8",
    )
    client = start_client(procs, frpc, "--token", server.token, "--fingerprint", server.fingerprint)
    client.wait_for(r"tunnel off is disabled in the config; defined but not opened")
    assert echo_once(tunnel_port(client, "on"), b"on") == b"on"
    server.wait_for(r"tunnel default/on up on port")
    # 'off' was listed first, so its tunnel_open would have been answered by now.
    assert not re.search(r"tunnel off (up|refused)", client.output())
    assert "default/off" not in server.output()


def test_frps_heartbeat_timeout_alone_is_enough(procs, echo, tmp_path):
    # frp's server knows only transport.heartbeatTimeout; Gotaxy derives its
    # ping interval from it (a third, here 1 s) instead of refusing the file
    # because its own default interval is 10 s.
    port = free_port()
    frps = rewrite("frps.toml", tmp_path / "frps.toml", {
        "bindPort = 7000": f"bindPort = {port}\ntransport.heartbeatTimeout = 3",
    })
    server = start_server(procs, frps, port, "--bind-addr", "127.0.0.1", "--web-port", "0")
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    assert echo_once(tunnel_port(client, "echo"), b"alive") == b"alive"
    # The timeout is the file's: a frozen client is dropped after 3 s of silence.
    client.signal(signal.SIGSTOP)
    server.wait_for(r"client default offline: heartbeat timeout: nothing heard for [34] s", timeout=15)


# -- frp's legacy INI files ------------------------------------------------------


def test_legacy_ini_files_get_a_clear_message(procs):
    for plugin, name in (("gotaxy-server", "frps_legacy_full.ini"), ("gotaxy-client", "frpc_legacy_full.ini")):
        path = str(FRP_CONF / name)
        process = Process([twistd(), "-n", "--pidfile=", plugin, "--config", path], procs.workdir, plugin)
        procs.started.append(process)
        assert process.wait_exit(60) != 0
        output = process.output()
        assert (
            f"{path}: this is frp's legacy INI format (frps.ini / frpc.ini with a [common] section, "
            f"before frp 0.52), which Gotaxy does not read; convert it to TOML with: "
            f"gotaxy convert {path}"
        ) in output
        assert "not valid TOML" not in output and "Traceback" not in output


FRPS_LEGACY_WARNINGS = [
    "kcpBindPort", "detailedErrorsToClient",
    "natholeAnalysisDataReserveHours", "webServer.user", "webServer.password",
    "webServer.pprofEnable", "log.to", "log.disablePrintColor", "auth.oidc",
    "transport.maxPoolCount", "transport.tls.force", "httpPlugins",
]
FRPC_LEGACY_WARNINGS = [
    "udpPacketSize", "log.to", "log.disablePrintColor", "webServer.pprofEnable", "transport.poolCount",
    "transport.protocol", "transport.connectServerLocalIP",
    "transport.tls.disableCustomTLSFirstByte", "metadatas", "visitors",
    "web01",  # its healthCheck.type = "http" is a TCP connect for now
    "proxy plugin_unix_domain_socket", "proxy plugin_http_proxy", "proxy plugin_socks5",
    "proxy plugin_static_file", "proxy plugin_https2http", "proxy plugin_https2https",
    "proxy plugin_http2https", "proxy secret_tcp", "proxy p2p_tcp", "proxy tcpmuxhttpconnect",
    "transport.useEncryption", "transport.useCompression", "loadBalancer.group", "loadBalancer.groupKey",
    "metadatas",
    "healthCheck.path",  # of the http proxy web01
]


def test_converted_legacy_files_start(procs, tmp_path):
    port, web, vhost, vhost_https = free_port(), free_port(), free_port(), free_port()
    ssh_port, _ = free_port_range(1)
    ranged, _ = free_port_range(17)  # [range:tcp_port] maps 17 ports
    frps = rewrite("frps_legacy_full.ini", tmp_path / "frps.ini", {
        "bind_addr = 0.0.0.0": "bind_addr = 127.0.0.1",
        "bind_port = 7000": f"bind_port = {port}",
        "dashboard_addr = 0.0.0.0": "dashboard_addr = 127.0.0.1",
        "dashboard_port = 7500": f"dashboard_port = {web}",
        "vhost_http_port = 80": f"vhost_http_port = {vhost}",
        "vhost_https_port = 443": f"vhost_https_port = {vhost_https}",
    })
    assert "wrote " + str(tmp_path / "frps.toml") in gotaxy_cli("convert", str(frps))
    server = start_server(procs, tmp_path / "frps.toml", port)
    assert warned_keys(warnings(server.process, r"listening for clients on 127\.0\.0\.1:")) == FRPS_LEGACY_WARNINGS
    assert get(f"http://127.0.0.1:{web}/metrics") == 200  # enable_prometheus = true

    frpc = rewrite("frpc_legacy_full.ini", tmp_path / "frpc.ini", {
        "server_addr = 0.0.0.0": "server_addr = 127.0.0.1",
        "server_port = 7000": f"server_port = {port}",
        "remote_port = 6001": f"remote_port = {ssh_port}",
        "remote_port = 6010-6020,6022,6024-6028": f"remote_port = {ranged}-{ranged + 16}",
        "admin_port = 7400": f"admin_port = {free_port()}",  # frpc's admin API, honoured
    })
    report = gotaxy_cli("convert", str(frpc))
    assert f"Gotaxy ignores {len(FRPC_LEGACY_WARNINGS)} of its frp settings" in report
    client = start_client(procs, tmp_path / "frpc.toml")
    lines = warnings(client, rf"logged in to 127\.0\.0\.1:{port} as shared:your_name")
    assert warned_keys(lines) == FRPC_LEGACY_WARNINGS
    assert tunnel_port(client, "ssh") == ssh_port
    for i in range(17):
        assert tunnel_port(client, f"tcp_port_{i}") == ranged + i
    tunnel_port(client, "ssh_random")
    assert "Traceback" not in server.output() + client.output()
