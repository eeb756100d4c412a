"""
Operator commands issued on one node of a cluster and carried out by the
node that holds the client (issue 16, "Commands reach the owner"): a client
on node a; ``kick``, ``tunnel disable`` and ``token revoke`` issued on node
b's SSH console (the real OpenSSH ``ssh``) and through node b's REST API.

Each test prints what it measured: the seconds from issuing the command to
the effect the test sees on node a (the one-shot ``ssh`` includes its own
log-in), and, from the ``node_commands`` row, the seconds from b writing the
command to a taking it and to a writing the result.  The asserts wait with a
generous timeout, never on speed.
"""

from __future__ import annotations

import re
import shutil
import time
from typing import Any, Tuple

import pytest

from tests.cluster import Cluster, wait_until
from tests.e2e import connection_refused, echo_once, tunnel_port

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (openssh-client)")


def command_seconds(nodes: Cluster, kind: str) -> float:
    """
    The last ``kind`` command's seconds from b writing it to a writing its
    result (its row in node_commands; ``taken`` is when a's poll began, not
    when its UPDATE ran, so it is not a time to report).
    """
    rows = nodes.sql("SELECT created, done, node FROM node_commands WHERE kind = %s ORDER BY id DESC LIMIT 1", kind)
    assert rows, f"no {kind} command went through node_commands"
    created, done, node = rows[0]
    assert node == "a", node
    return float(done - created)


def report(what: str, effect: float, issued: float, nodes: Cluster, kind: str) -> None:
    print(f"\n{what}: effect on a {effect:.3f} s after issuing on b (the request itself {issued:.3f} s); "
          f"node_commands: written by b to done by a {command_seconds(nodes, kind):.3f} s")


def started(nodes: Cluster, echo: Any) -> Tuple[Any, int]:
    client = nodes.client(nodes["a"], f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    assert echo_once(port, b"before") == b"before"
    return client, port


def test_kick_and_tunnel_disable_on_b_console_take_effect_on_a(cluster, echo):
    nodes = cluster(2)
    b = nodes["b"]
    client, port = started(nodes, echo)

    # The baseline: the same command on a's own console (ssh's log-in is most of it).
    mark = client.mark()
    begun = time.monotonic()
    assert nodes["a"].console.ok("kick", "default").strip() == "client default disconnected"
    client.wait_for(r"disconnected", start=mark, timeout=10)
    print(f"\nconsole kick on a itself (the baseline): {time.monotonic() - begun:.3f} s")
    assert tunnel_port(client, "echo", timeout=40, start=mark) == port

    mark = client.mark()
    begun = time.monotonic()
    out = b.console.ok("kick", "default")
    issued = time.monotonic() - begun
    assert out.strip() == "client default disconnected"
    client.wait_for(r"disconnected", start=mark, timeout=10)
    report("console kick", time.monotonic() - begun, issued, nodes, "client.kick")
    assert tunnel_port(client, "echo", timeout=40, start=mark) == port  # it comes back, on a, on its port
    assert echo_once(port, b"after kick") == b"after kick"

    begun = time.monotonic()
    out = b.console.ok("tunnel", "disable", "default/echo")
    issued = time.monotonic() - begun
    assert out.strip() == f"tunnel default/echo disabled; status disabled, port {port}"
    wait_until(lambda: connection_refused(port), 10, "a closing the disabled tunnel's port")
    report("console tunnel disable", time.monotonic() - begun, issued, nodes, "tunnel.disable")
    assert re.search(r"^status +disabled", b.console.ok("tunnel", "default/echo"), re.M)

    out = b.console.ok("tunnel", "enable", "default/echo")
    assert "enabled" in out, out
    wait_until(lambda: not connection_refused(port), 20, "a opening the enabled tunnel again")
    assert echo_once(port, b"enabled again") == b"enabled again"

    # Errors come back from a as they would have been said on a.
    failed = b.console.run("tunnel", "restart", "default/nonesuch")
    assert failed.returncode == 1 and "error:" in failed.stderr, failed


def test_kick_and_disable_through_b_rest_api_take_effect_on_a(cluster, echo):
    nodes = cluster(2)
    b = nodes["b"]
    client, port = started(nodes, echo)
    b.api.login()

    mark = client.mark()
    begun = time.monotonic()
    status, body = b.api.post("/clients/default/kick")
    issued = time.monotonic() - begun
    assert status in (200, 204), (status, body)
    client.wait_for(r"disconnected", start=mark, timeout=10)
    report("REST kick", time.monotonic() - begun, issued, nodes, "client.kick")
    assert tunnel_port(client, "echo", timeout=40, start=mark) == port

    begun = time.monotonic()
    status, body = b.api.post("/tunnels/default/echo/disable")
    issued = time.monotonic() - begun
    assert status == 200, (status, body)
    assert body["status"] == "disabled" and body["enabled"] is False, body
    wait_until(lambda: connection_refused(port), 10, "a closing the disabled tunnel's port")
    report("REST tunnel disable", time.monotonic() - begun, issued, nodes, "tunnel.disable")

    status, body = b.api.post("/tunnels/default/echo/enable")
    assert status == 200, (status, body)
    wait_until(lambda: not connection_refused(port), 20, "a opening the enabled tunnel again")
    assert echo_once(port, b"enabled again") == b"enabled again"

    status, body = b.api.post("/tunnels/default/nonesuch/restart")
    assert status == 404 and body["error"]["message"], (status, body)


def test_revoking_the_token_on_b_cuts_the_client_on_a(cluster, echo):
    nodes = cluster(2)
    b = nodes["b"]
    client, port = started(nodes, echo)

    mark = client.mark()
    begun = time.monotonic()
    out = b.console.ok("token", "revoke", "default")
    issued = time.monotonic() - begun
    assert "revoked" in out, out
    client.wait_for(r"disconnected", start=mark, timeout=10)
    effect = time.monotonic() - begun
    print(f"\nconsole token revoke: client on a cut {effect:.3f} s after issuing on b "
          f"(the request itself {issued:.3f} s; through the event outbox, no node command)")
    wait_until(lambda: connection_refused(port), 10, "a closing the revoked client's port")
    # It stays out: its log-ins are refused, on a.
    client.wait_for(r"(?i)revoked|refused|rejected", start=mark, timeout=30)
    assert connection_refused(port)
    assert re.search(r"^default +offline", b.console.ok("clients"), re.M), b.console.ok("clients")


def test_a_command_for_a_node_that_is_gone_says_so(cluster, echo):
    nodes = cluster(2)
    a, b = nodes["a"], nodes["b"]
    started(nodes, echo)
    a.kill()  # its lease lasts 30 s more: b still believes it holds the client
    begun = time.monotonic()
    failed = b.console.run("kick", "default")
    print(f"\nkick for a killed node: answered after {time.monotonic() - begun:.3f} s: {failed.stderr.strip()}")
    assert failed.returncode == 1, failed
    assert re.search(r"server node a (did not answer within 5 s|which .*lease)", failed.stderr), failed.stderr
