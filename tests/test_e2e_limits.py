"""
End to end: operating-system limits of a public server (issue 8): listen
backlogs (item 12) and file descriptors (item 18), against real processes.
"""

from __future__ import annotations

import subprocess
from typing import Dict

from gotaxy.oslimits import LISTEN_BACKLOG, listen_backlog
from tests.e2e import echo_once, free_port, tunnel_port


def listen_backlogs() -> Dict[int, int]:
    """Local port -> backlog of every listening TCP socket (``ss``'s Send-Q for LISTEN)."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True, timeout=30).stdout
    backlogs: Dict[int, int] = {}
    for line in out.splitlines():
        fields = line.split()
        # State Recv-Q Send-Q Local:Port Peer:Port
        backlogs[int(fields[3].rsplit(":", 1)[1])] = int(fields[2])
    return backlogs


def test_every_listener_has_a_backlog_fit_for_a_public_server(procs, echo):
    expected = listen_backlog()
    assert expected > 50  # the kernel here allows more than Twisted's default
    panel, console = free_port(), free_port()
    server = procs.server("--web-port", str(panel), "--console-port", str(console))
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    assert echo_once(port, b"x") == b"x"
    backlogs = listen_backlogs()
    assert {
        "control": backlogs.get(server.port),
        "tunnel": backlogs.get(port),
        "panel": backlogs.get(panel),
        "console": backlogs.get(console),
    } == dict.fromkeys(["control", "tunnel", "panel", "console"], expected)
    assert expected == min(LISTEN_BACKLOG, int(open("/proc/sys/net/core/somaxconn").read()))
