"""
End to end: which public ports a client may take (issue 8, item 16).
Without ``allowPorts`` a client must not get a privileged port, and never
one of the server's own listening ports, whatever ``allowPorts`` says.
"""

from __future__ import annotations

from tests.e2e import connection_refused, echo_once, free_port, tunnel_port


def test_privileged_and_server_ports_are_refused_with_a_clear_reason(procs, echo):
    panel = free_port()
    server = procs.server("--web-port", str(panel))
    client = procs.client(
        server,
        f"ssh=tcp:127.0.0.1:{echo.port}:999",
        f"panel=tcp:127.0.0.1:{echo.port}:{panel}",
        f"control=tcp:127.0.0.1:{echo.port}:{server.port}",
        f"fine=tcp:127.0.0.1:{echo.port}",
    )
    client.wait_for(
        r"tunnel ssh refused by the server: port 999 is a privileged port \(below 1024\), which this "
        r"server hands out only if its operator lists it in allowPorts; choose a remotePort from 1024 to 65535"
    )
    client.wait_for(
        rf"tunnel panel refused by the server: port {panel} is this server's own web panel and metrics "
        r"port \(webServer.port\) and never a tunnel's; choose another remotePort"
    )
    client.wait_for(rf"tunnel control refused by the server: port {server.port} is this server's own control port")
    fine = tunnel_port(client, "fine")
    assert fine >= 1024
    assert echo_once(fine, b"unprivileged") == b"unprivileged"
    server.wait_for(r"tunnel \S+/ssh refused: port 999 is a privileged port")
    assert connection_refused(999)


def test_an_explicit_allow_ports_below_1024_is_honoured_but_not_for_the_servers_ports(procs, echo):
    panel = free_port()
    server = procs.server("--web-port", str(panel), "--allow-ports", f"999,{panel}")
    client = procs.client(
        server,
        f"low=tcp:127.0.0.1:{echo.port}:999",
        f"panel=tcp:127.0.0.1:{echo.port}:{panel}",
    )
    client.wait_for(rf"tunnel panel refused by the server: port {panel} is this server's own web panel")
    # Port 999 needs root to bind: as root the tunnel comes up, otherwise the
    # kernel (not the port rules) refuses it.
    match = client.wait_for(r"tunnel low (up at 127\.0\.0\.1:999|refused by the server: port 999 cannot be opened)")
    if "up at" in match.group(0):
        assert echo_once(999, b"operator allowed it") == b"operator allowed it"
