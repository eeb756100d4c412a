"""
End to end: the server's listeners come from endpoint strings, so a socket
systemd opened (socket activation) is the control port without any code of
its own.  The socket is passed as systemd passes it: descriptor 3,
``LISTEN_FDS=1``, its name in ``LISTEN_FDNAMES`` (systemd's
``FileDescriptorName=``) and ``LISTEN_PID`` set to the server's own pid.
"""

from __future__ import annotations

import re
import socket

from tests.e2e import GotaxyServer, Process, echo_once, tunnel_port, twistd

#: Runs its arguments with the descriptor in $SOCKET_FD as descriptor 3 and
#: the systemd variables set for the process that ``exec`` turns into.
AS_SYSTEMD = 'exec 3<&"$SOCKET_FD"; exec {fd}<&-; export LISTEN_FDS=1 LISTEN_FDNAMES=control LISTEN_PID=$$; exec "$@"'


def test_a_socket_from_systemd_is_the_control_port(procs, echo):
    passed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    passed.bind(("127.0.0.1", 0))
    passed.listen(16)
    port = passed.getsockname()[1]
    fd = passed.fileno()
    data_dir = procs.workdir / "server-data"
    server_args = [
        twistd(), "-n", "--pidfile=", "gotaxy-server", "--data-dir", str(data_dir),
        "--bind-endpoint", "systemd:domain=INET:name=control", "--web-port", "0", "--console-port", "0",
    ]
    process = Process(["bash", "-c", AS_SYSTEMD.replace("{fd}", str(fd)), "bash", *server_args], procs.workdir,
                      "server", env={"SOCKET_FD": str(fd)}, pass_fds=[fd])
    procs.started.append(process)
    passed.close()  # only the server holds it now
    server = GotaxyServer(process, port, data_dir)
    # It says where it really listens (the socket's address, not bindPort's default 7000) ...
    assert re.search(rf"listening for clients on 127\.0\.0\.1:{port} ", process.output())
    # ... and the client command it prints names that port.
    assert f"--server 127.0.0.1:{port}" in process.output()

    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    public = tunnel_port(client, "echo")
    assert echo_once(public, b"through systemd's socket") == b"through systemd's socket"


def test_without_the_socket_the_start_fails_with_one_line(procs):
    process = procs.twistd(
        "gotaxy-server", ["--data-dir", "server-data", "--bind-endpoint", "systemd:domain=INET:index=0"], "server",
        env={"LISTEN_FDS": "", "LISTEN_PID": ""},
    )
    assert process.wait_exit(30) == 1
    assert re.search(r"--bind-endpoint 'systemd:domain=INET:index=0': systemd passed no such socket", process.output())
