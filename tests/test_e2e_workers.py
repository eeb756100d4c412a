"""
End to end: ``workers = 2`` (issue 15, goal 5).  One real ``twistd -n
gotaxy-server --workers 2``, which starts its second worker itself, and two
real clients:

* the two clients are held by two different processes (the store's
  ``clients.node``, each worker's ``node-id``), and both tunnels carry
  bytes intact, listening in the process that holds their client;
* ``kill -9`` of the second worker: the parent starts it again, and its
  client logs in again (on whichever worker) with its tunnel carrying bytes;
* ``SIGTERM`` to the parent stops every worker: no process is left; a
  worker whose parent was killed stops by itself.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from pathlib import Path
from typing import Dict, List

from tests.cluster import wait_until
from tests.e2e import echo_once, gotaxy_cli, stream_through, tunnel_port


def _holders(data_dir: Path) -> Dict[str, str]:
    """Client name -> node id of the process holding it, for clients online."""
    with sqlite3.connect(data_dir / "gotaxy.db", timeout=10) as db:
        return dict(db.execute("SELECT name, node FROM clients WHERE online").fetchall())


def _node(directory: Path) -> str:
    return (directory / "node-id").read_text().strip()


def _worker_pid(server) -> int:
    return int(server.wait_for(r"worker 2 started \(pid (\d+)\)").group(1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of the parent is not a running process
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_two_workers_hold_one_client_each_and_a_dead_worker_comes_back(procs, echo):
    server = procs.server("--workers", "2")
    first_pid = _worker_pid(server)
    # The worker is ready once it says it joined the store as its own node.
    server.wait_for(r"\[worker 2 .*store node ")
    tokens = [re.search(r"gtx_\S+", gotaxy_cli("--data-dir", str(server.data_dir), "token", "create", f"c{n}"))
              .group(0) for n in (1, 2)]
    clients = [
        procs.client(server, f"echo{n}=tcp:127.0.0.1:{echo.port}", token=token, name=f"client{n}")
        for n, token in zip((1, 2), tokens)
    ]
    ports = [tunnel_port(client, f"echo{n}") for n, client in zip((1, 2), clients)]

    parent_node, worker_node = _node(server.data_dir), _node(server.data_dir / "workers" / "2")
    assert parent_node != worker_node
    wait_until(lambda: len(_holders(server.data_dir)) == 2, 10, "both clients online in the store")
    holders = _holders(server.data_dir)
    assert sorted(holders.values()) == sorted([parent_node, worker_node]), holders

    for port in ports:
        sent, received = stream_through(port, 16 * 1024 * 1024)
        assert sent == received
    # The tunnel listens in the process that holds its client.
    on_worker = next(n for n, node in ((1, holders["c1"]), (2, holders["c2"])) if node == worker_node)
    assert _listens(first_pid, ports[on_worker - 1])

    # The second worker dies: the parent starts it again, its client comes back.
    mark = server.mark()
    client = clients[on_worker - 1]
    client_mark = client.mark()
    os.kill(first_pid, signal.SIGKILL)
    restarted = int(server.wait_for(r"worker 2 started \(pid (\d+)\)", 20, mark).group(1))
    assert restarted != first_pid
    port = tunnel_port(client, f"echo{on_worker}", 30, client_mark)
    assert echo_once(port, b"back after the worker died") == b"back after the worker died"
    wait_until(lambda: len(_holders(server.data_dir)) == 2, 10)

    # SIGTERM to the parent alone stops every worker.
    os.kill(server.pid, signal.SIGTERM)
    assert server.wait_exit(20) in (0, -signal.SIGTERM)  # twistd re-raises SIGTERM after a clean shutdown
    assert wait_until(lambda: not _alive(restarted), 10)
    assert "worker 2 (pid" in server.output()


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on TCP ``port`` (from /proc: its fds' inodes)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(match.group(1))
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                return True
    return False


def test_a_worker_whose_parent_was_killed_stops_by_itself(procs):
    server = procs.server("--workers", "2")
    pid = _worker_pid(server)
    server.wait_for(r"\[worker 2 .*listening for clients on")
    os.kill(server.pid, signal.SIGKILL)  # the parent alone, not its process group
    # Within 10 s even if its stop hangs (WorkerLink._exit), with some slack for a loaded machine.
    assert wait_until(lambda: not _alive(pid), 30, "worker 2 to stop")
