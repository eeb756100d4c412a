"""
End to end: an operator (here through the real SSH console) cannot make a
client expose a local service its owner did not allow.  Operator-defined
tunnels open only to addresses in the client's ``allowOperatorTunnels``;
any other is refused by the client, the public port never opens, and the
reason shows in the console.
"""

from __future__ import annotations

import json
import time

from tests.e2e import EchoServer, connection_refused, echo_once, free_port, tunnel_port
from tests.test_console_e2e import pytestmark, start  # noqa: F401 (pytestmark: needs OpenSSH)


def tunnel_when(console, ref: str, predicate, timeout: float = 20.0) -> dict:
    """``tunnel REF --json`` from the console, once ``predicate`` holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        view = json.loads(console.ok("tunnel", ref, "--json"))
        if predicate(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"tunnel {ref} never got there: {view}")
        time.sleep(0.1)


def test_operator_tunnel_to_an_address_the_client_does_not_allow_is_refused(procs, echo):
    hidden = EchoServer()  # a service the client's owner never listed
    try:
        server, console = start(procs)
        client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
        tunnel_port(client, "echo")
        public = free_port()
        console.ok("tunnel", "add", "default", "pivot", f"127.0.0.1:{hidden.port}", str(public))

        client.wait_for(
            rf"refusing tunnel pivot -> 127\.0\.0\.1:{hidden.port} from the server's operator: "
            r"this client accepts no operator-defined tunnels"
        )
        view = tunnel_when(console, "default/pivot", lambda t: t["status"] == "refused")
        assert view["reason"].startswith("refused by the client: this client accepts no operator-defined tunnels; "
                                         f"to allow 127.0.0.1:{hidden.port}, add it to allowOperatorTunnels")
        detail = console.ok("tunnel", "default/pivot")
        assert "refused: refused by the client: this client accepts no" in detail, detail
        assert connection_refused(public)

        # Every reconnect offers it again and it is refused again; the client
        # says so in its log once.
        mark, server_mark = client.mark(), server.mark()
        console.ok("kick", "default")
        tunnel_port(client, "echo", timeout=40, start=mark)
        server.wait_for(r"tunnel default/pivot refused by the client", start=server_mark)
        assert client.output().count("refusing tunnel pivot") == 1
        assert connection_refused(public)
    finally:
        hidden.close()


def test_allow_list_in_the_client_file_lets_exactly_those_addresses_open(procs, echo, tmp_path):
    other = EchoServer()
    try:
        server, console = start(procs)
        config = tmp_path / "client.toml"
        config.write_text(f'allowOperatorTunnels = ["127.0.0.1:{echo.port}-{echo.port}", "192.168.1.0/24:22"]\n')
        client = procs.client(server, f"own=tcp:127.0.0.1:{echo.port}", args=["--config", str(config)])
        tunnel_port(client, "own")

        allowed_port = free_port()
        console.ok("tunnel", "add", "default", "allowed", f"127.0.0.1:{echo.port}", str(allowed_port))
        assert tunnel_port(client, "allowed") == allowed_port
        assert echo_once(allowed_port, b"the operator may add this one") == b"the operator may add this one"
        tunnel_when(console, "default/allowed", lambda t: t["status"] == "up")

        refused_port = free_port()
        console.ok("tunnel", "add", "default", "other", f"127.0.0.1:{other.port}", str(refused_port))
        view = tunnel_when(console, "default/other", lambda t: t["status"] == "refused")
        assert view["reason"] == (
            f"refused by the client: 127.0.0.1:{other.port} is not in this client's allowOperatorTunnels "
            f"(127.0.0.1:{echo.port}-{echo.port}, 192.168.1.0/24:22); add it there to allow it"
        )
        assert connection_refused(refused_port)

        # Moving the allowed tunnel to a forbidden address closes it.
        console.ok("tunnel", "edit", "default/allowed", "--local", f"127.0.0.1:{other.port}")
        tunnel_when(console, "default/allowed", lambda t: t["status"] == "refused")
        assert connection_refused(allowed_port)
    finally:
        other.close()
