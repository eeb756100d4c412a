"""
End to end: a client of the same protocol version from before the window
budget (this repository's own code from the commit before gotaxy/budget.py
came) still works with this server: its streams keep the fixed 512 KiB
windows they expect, and the server gives it the 1,024 streams those
windows were bounded by, not 10,000.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Optional

import pytest

from gotaxy.mux import LEGACY_MAX_STREAMS
from gotaxy.wire import INITIAL_WINDOW
from tests.e2e import tunnel_port
from tests.history import commit_before_added
from tests.test_e2e_streams import metrics, read_exactly, server_with_metrics


def tree_before_the_budget(destination: Path) -> Optional[str]:
    """Extract the commit before gotaxy/budget.py was added; its id, or None without the history."""
    return commit_before_added("gotaxy/budget.py", destination)


def test_a_client_from_before_the_window_budget_keeps_fixed_windows_and_the_old_limit(procs, echo, tmp_path):
    old = tmp_path / "old-gotaxy"
    if tree_before_the_budget(old) is None:
        pytest.skip("needs this repository's git history (git and .git) to run the earlier client")
    assert not (old / "gotaxy" / "budget.py").exists()
    server, web = server_with_metrics(procs, tmp_path)
    client = procs.twistd(
        "gotaxy-client",
        ["--server", f"127.0.0.1:{server.port}", "--token", server.token, "--fingerprint", server.fingerprint,
         "--data-dir", str(tmp_path / "old-client"), "--tunnel", f"echo=tcp:127.0.0.1:{echo.port}"],
        "old-client",
        env={"PYTHONPATH": str(old)},
    )
    port = tunnel_port(client, "echo")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as held:
        held.sendall(b"hold")
        assert held.recv(4) == b"hold"
        values = metrics(web)
        key = '{client="default"}'
        assert values["gotaxy_client_stream_limit" + key] == LEGACY_MAX_STREAMS
        assert values["gotaxy_client_streams" + key] == 1
        assert values["gotaxy_client_window_bytes" + key] == INITIAL_WINDOW  # the fixed window it expects
        # Several windows' worth each way, read while it is sent.
        payload = bytes(range(256)) * 8192  # 2 MiB
        sender = threading.Thread(target=held.sendall, args=(payload,))
        sender.start()
        assert read_exactly(held, len(payload)) == payload
        sender.join(60)
    output = client.output()
    assert "Traceback" not in output and "protocol error" not in output, output
