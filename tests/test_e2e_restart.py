"""
End to end: a server restarted cleanly (SIGTERM) says goodbye, and its
client, told to reconnect, has its tunnel back on the same port with bytes
going through; real ``twistd`` processes on loopback.  The speed is the
benchmark's business (benchmarks/run.py, "reconnect after a restart"):
this test asserts what happens, in the order the logs show it.
"""

from __future__ import annotations

import signal

from tests.e2e import echo_once, tunnel_port


def test_a_clean_restart_tells_the_client_to_reconnect_and_its_tunnel_comes_back(procs, echo):
    server = procs.server()
    control = server.port
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    assert echo_once(port, b"before") == b"before"

    mark = client.mark()
    assert server.stop() in (0, -signal.SIGTERM)  # twistd re-raises SIGTERM after a clean shutdown
    assert "shutting down: asking 1 client(s) to reconnect within 0.1 s" in server.output()
    client.wait_for(r"the server said goodbye \(server shutting down\) and asked us to reconnect; "
                    rf"reconnecting to 127\.0\.0\.1:{control} in 0\.\d+ s", start=mark)
    server = procs.server(port=control, name="server2")
    assert tunnel_port(client, "echo", timeout=60, start=mark) == port
    assert echo_once(port, b"after the restart") == b"after the restart"
    output = client.output()[mark:]
    assert "server closed the connection" not in output  # what a client without goodbye says
    # Told goodbye only once the old server's port was closed: never let in and shut out by it.
    assert "the server closed the connection before the log-in" not in output
    assert "protocol error" not in output and "Traceback" not in output
