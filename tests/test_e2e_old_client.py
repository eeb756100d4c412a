"""
End to end: a client of the previous wire protocol (Gotaxy's own code from
before the version went up, taken from this repository's history) is told
to upgrade in its own words, and stops, instead of failing on a message it
cannot parse.  And a client of this protocol version from before the
server's ``goodbye`` existed gets the ``error`` message it always got when
the server stops, and comes back after the restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from gotaxy.wire import PROTOCOL_VERSION
from tests.e2e import echo_once, tunnel_port
from tests.history import last_commit_where


def previous_version_tree(destination: Path) -> Optional[str]:
    """Extract the last commit whose wire protocol is ``PROTOCOL_VERSION - 1``; its id, or None."""
    return last_commit_where("gotaxy/wire.py", lambda text: f"\nPROTOCOL_VERSION = {PROTOCOL_VERSION - 1}\n" in text,
                             destination)


def tree_before_goodbye(destination: Path) -> Optional[str]:
    """Extract the last commit whose client does not announce ``goodbye``; its id, or None."""
    return last_commit_where("gotaxy/client/control.py", lambda text: '"goodbye"' not in text, destination)


def test_a_client_from_before_goodbye_is_told_why_at_a_restart_and_comes_back(procs, echo, tmp_path):
    old = tmp_path / "client-before-goodbye"
    if tree_before_goodbye(old) is None:
        pytest.skip("needs this repository's git history (git and .git) to run a client from before goodbye")
    server = procs.server()
    control = server.port
    client = procs.twistd(
        "gotaxy-client",
        ["--server", f"127.0.0.1:{control}", "--token", server.token, "--fingerprint", server.fingerprint,
         "--data-dir", str(tmp_path / "old-client"), "--tunnel", f"echo=tcp:127.0.0.1:{echo.port}"],
        "old-client",
        env={"PYTHONPATH": str(old)},
    )
    port = tunnel_port(client, "echo", timeout=60)
    mark = client.mark()
    server.stop()
    assert "shutting down: asking 1 client(s) to reconnect" in server.output()
    client.wait_for(r"server closed the connection: server shutting down", start=mark)
    procs.server(port=control, name="server2")
    assert tunnel_port(client, "echo", timeout=60, start=mark) == port
    assert echo_once(port, b"old client, new server") == b"old client, new server"
    output = client.output()
    assert "Traceback" not in output and "protocol error" not in output and "goodbye" not in output, output


def test_a_client_of_the_previous_protocol_shows_upgrade_the_client_and_stops(procs, tmp_path):
    old = tmp_path / "old-gotaxy"
    commit = previous_version_tree(old)
    if commit is None:
        pytest.skip("needs this repository's git history (git and .git) to run the previous version's client")
    server = procs.server()
    client = procs.twistd(
        "gotaxy-client",
        ["--server", f"127.0.0.1:{server.port}", "--token", server.token, "--fingerprint", server.fingerprint,
         "--data-dir", str(tmp_path / "old-client"), "--tunnel", "web=tcp:127.0.0.1:9"],
        "old-client",
        env={"PYTHONPATH": str(old)},
    )
    client.wait_for(
        rf"the server refused our login: this client speaks Gotaxy protocol version {PROTOCOL_VERSION - 1} and "
        rf"the server version {PROTOCOL_VERSION}: upgrade the client to Gotaxy \S+ or later",
        timeout=30,
    )
    assert client.wait_exit(30) != 0, client.output()  # loginFailExit: retrying cannot help
    output = client.output()
    assert "Traceback" not in output and "protocol error" not in output, output
    server.wait_for(r"refusing connection from 127\.0\.0\.1:\d+: this client speaks Gotaxy protocol version")
