"""
End to end, real processes: what the operator sees of a tunnel that is not
working.  A tunnel the server refuses (its port is busy) is asked for again
by the client with a backoff, and the console shows why and when; a tunnel
whose local service stops answering the client's health check is shown down
with the reason, and up again when the service answers.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from typing import Any, Callable, Dict

import pytest

from tests.e2e import _EchoHandler, _Server, echo_once, tunnel_port
from tests.test_console_e2e import Console, start

pytestmark = pytest.mark.skipif(
    shutil.which("ssh") is None, reason="needs the OpenSSH client (Debian package openssh-client)"
)


def wait_state(console: Console, name: str, wanted: Callable[[Dict[str, Any]], bool],
               timeout: float = 40.0) -> Dict[str, Any]:
    """Poll the console's ``tunnels --json`` until tunnel ``name`` is as ``wanted``."""
    deadline = time.monotonic() + timeout
    while True:
        views = [t for t in json.loads(console.ok("tunnels", "--json")) if t["name"] == name]
        if views and wanted(views[0]):
            return views[0]
        assert time.monotonic() < deadline, views
        time.sleep(0.2)


def test_tunnel_refused_for_a_busy_port_is_retried_and_comes_up_when_it_is_free(procs, echo):
    server, console = start(procs)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        client = procs.client(server, f"web=tcp:127.0.0.1:{echo.port}:{port}")
        client.wait_for(rf"tunnel web refused by the server: port {port} is busy on the server; "
                        rf"retrying in [0-9.]+ s")
        # Refused again and again, with the wait growing: the client does not give up.
        client.wait_for(rf"tunnel web refused .*; retrying in ([2-9]|[1-9][0-9])(\.[0-9])? s", timeout=30)

        view = wait_state(console, "web", lambda v: v["status"] == "refused" and v["retry_in"] is not None)
        assert view["reason"] == f"port {port} is busy on the server"
        assert 0 <= view["retry_in"] <= 60
        detail = console.ok("tunnel", "default/web")
        assert re.search(rf"^status +refused: port {port} is busy on the server; retrying (in \d+ s|now)$",
                         detail, re.M), detail
        table = console.ok("tunnels")
        assert f"refused: port {port}" in table, table  # cut to the terminal width
    finally:
        busy.close()

    mark = client.mark()
    # Up by itself within the backoff (at most 60 s), on the port it asked for.
    assert tunnel_port(client, "web", timeout=90, start=mark) == port
    assert echo_once(port, b"after the retry") == b"after the retry"
    view = wait_state(console, "web", lambda v: v["status"] == "up")
    assert (view["reason"], view["retry_in"]) == (None, None)


def test_health_check_shows_a_local_service_that_stops_answering(procs, tmp_path):
    server, console = start(procs)
    service = _Server(("127.0.0.1", 0), _EchoHandler)
    local = service.server_address[1]
    import threading

    threading.Thread(target=service.serve_forever, daemon=True).start()
    config = tmp_path / "frpc.toml"
    config.write_text(
        f'[[proxies]]\nname = "web"\nlocalPort = {local}\n'
        'healthCheck.type = "tcp"\nhealthCheck.timeoutSeconds = 1\n'
        'healthCheck.maxFailed = 2\nhealthCheck.intervalSeconds = 1\n'
    )
    client = procs.client(server, args=["--config", str(config)])
    port = tunnel_port(client, "web")
    wait_state(console, "web", lambda v: v["status"] == "up")

    mark = client.mark()
    service.shutdown()
    service.server_close()
    # Down after maxFailed (2) checks in a row, as the client says.
    client.wait_for(rf"tunnel web down: local service 127\.0\.0\.1:{local} not answering "
                    rf"\(2 failed check\(s\) in a row", start=mark)
    view = wait_state(console, "web", lambda v: v["status"] == "down")
    assert view["reason"] == f"local service 127.0.0.1:{local} not answering"
    assert view["address"]["port"] == port  # the port is kept
    assert f"down: local service 127.0.0.1:{local} not answering" in console.ok("tunnel", "default/web")

    service = _Server(("127.0.0.1", local), _EchoHandler)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    try:
        client.wait_for(rf"tunnel web: local service 127\.0\.0\.1:{local} answers again", start=mark)
        view = wait_state(console, "web", lambda v: v["status"] == "up")
        assert view["reason"] is None
        assert echo_once(port, b"answering again") == b"answering again"
    finally:
        service.shutdown()
        service.server_close()


def test_without_a_health_check_a_failed_connection_is_shown(procs):
    server, console = start(procs)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    local = dead.getsockname()[1]
    dead.close()  # nothing listens there
    client = procs.client(server, f"dead=tcp:127.0.0.1:{local}")
    port = tunnel_port(client, "dead")
    wait_state(console, "dead", lambda v: v["status"] == "up")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        assert s.recv(100) == b""
    view = wait_state(console, "dead", lambda v: v["status"] == "down")
    assert view["reason"].startswith(f"cannot reach local service 127.0.0.1:{local}")
