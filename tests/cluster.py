"""
A cluster for end-to-end tests: one real PostgreSQL database and N real
``twistd gotaxy-server`` nodes on loopback sharing it.

Use the ``cluster`` fixture (tests/conftest.py)::

    def test_something(cluster, echo):
        nodes = cluster(3)                       # nodes a, b, c; a started first
        a, b = nodes["a"], nodes["b"]
        client = nodes.client(a, f"echo=tcp:127.0.0.1:{echo.port}")
        port = tunnel_port(client, "echo")
        b.console.ok("kick", "client")           # real OpenSSH ``ssh`` to b's console
        b.api.post("/clients/client/kick")       # b's REST API, logged in as admin
        a.kill(); a.restart()                    # SIGKILL, then the same data dir again

Each node has a data directory of its own (its TLS key, console host key and
``node-id``, written beforehand so that the node ids are the node names:
``a``, ``b``, ...), its own control, panel and console ports, and shares
with the others what the nodes of one cluster must share
(docs/configuration.md, "Several servers on one database"): the database
(``--database-url``), the notification key (the first node's
``notify.key``, copied into the others' data directories before they
start) and the operator account (``GOTAXY_ADMIN_PASSWORD``).

Each node's TLS certificate is its own, so a client pins the node it is
started on (``Cluster.client``).  The client token is the one the first node
prints (the database's ``default`` token, valid on every node).

Every test gets a fresh database (a copy of the migrated template); the
processes are the ``procs`` registry's, killed at the end of the test.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from tests.e2e import GotaxyServer, Process, Processes, free_port

PASSWORD = "cluster e2e password 42"
NAMES = "abcdefgh"


class Console:
    """One node's SSH console through the real OpenSSH ``ssh`` (password from ``SSH_ASKPASS``)."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        askpass = workdir / "cluster-askpass.sh"
        if not askpass.exists():
            askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$GOTAXY_TEST_PASSWORD"\n')
            askpass.chmod(0o700)
        self.env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
                        GOTAXY_TEST_PASSWORD=PASSWORD)
        self.env.pop("SSH_AUTH_SOCK", None)

    def argv(self, *command: str) -> List[str]:
        return ["ssh", "-p", str(self.port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "NumberOfPasswordPrompts=1",
                "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password", "-o", "BatchMode=no",
                "admin@127.0.0.1", *command]

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run one console command (``ssh admin@node COMMAND...``); its exit status and output."""
        return subprocess.run(self.argv(*command), env=self.env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, start_new_session=True)

    def ok(self, *command: str) -> str:
        """Run a command that must succeed; its standard output."""
        result = self.run(*command)
        assert result.returncode == 0, (command, result.returncode, result.stdout, result.stderr)
        return result.stdout


class RestApi:
    """One node's REST API (``/api/v0.1/``), logged in as ``admin`` with a session cookie and its CSRF token."""

    PREFIX = "/api/v0.1"

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie: Optional[str] = None
        self.csrf: Optional[str] = None

    def _request(self, method: str, path: str, body: Any = None,
                 headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any, http.client.HTTPResponse]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            sent = dict(headers or {})
            data = None
            if body is not None:
                data = json.dumps(body)
                sent["Content-Type"] = "application/json"
            connection.request(method, self.PREFIX + path, data, sent)
            response = connection.getresponse()
            raw = response.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode(errors="replace")
            return response.status, parsed, response
        finally:
            connection.close()

    def login(self) -> None:
        status, body, response = self._request("POST", "/login", {"username": "admin", "password": PASSWORD})
        assert status == 200, (status, body)
        self.cookie = (response.getheader("Set-Cookie") or "").split(";")[0]
        self.csrf = body["csrf_token"]

    def call(self, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
        """``METHOD /api/v0.1PATH`` as the logged-in operator (logging in first if needed): status and JSON."""
        if self.cookie is None:
            self.login()
        headers = {"Cookie": self.cookie or "", "X-CSRF-Token": self.csrf or ""}
        status, parsed, _ = self._request(method, path, body, headers)
        return status, parsed

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: Any = None) -> Tuple[int, Any]:
        return self.call("POST", path, body if body is not None else {})


class Node:
    """One ``twistd gotaxy-server`` of the cluster: its ports, data directory, console and REST API."""

    def __init__(self, cluster: "Cluster", name: str) -> None:
        self.cluster = cluster
        self.name = name  # also its node id
        self.port = free_port()
        self.web_port = free_port()
        self.console_port = free_port()
        self.data_dir = cluster.procs.workdir / f"{name}-data"
        self.server: Optional[GotaxyServer] = None
        self.console = Console(self.console_port, cluster.procs.workdir)
        self.api = RestApi(self.web_port)
        self.starts = 0

    # -- the process ---------------------------------------------------------

    def start(self, *extra: str) -> "Node":
        """Start (or start again) this node; returns when clients, panel and console all listen."""
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        node_id = self.data_dir / "node-id"
        if not node_id.exists():
            node_id.write_text(self.name + "\n")
        self.cluster._share_with(self)
        self.starts += 1
        process_name = self.name if self.starts == 1 else f"{self.name}-{self.starts}"
        self.server = self.cluster.procs.server(
            "--database-url", self.cluster.url, "--web-port", str(self.web_port),
            "--console-port", str(self.console_port), *self.cluster.args, *extra,
            name=process_name, data_dir=self.data_dir.name, port=self.port,
            env={"GOTAXY_ADMIN_PASSWORD": PASSWORD, **self.cluster.env},
        )
        self.server.wait_for(r"SSH operator console listening on 127\.0\.0\.1:%d" % self.console_port)
        self.server.wait_for(r"Site (?:\(TLS\) )?starting on %d" % self.web_port)
        _wait_for_port(self.web_port)
        self.api = RestApi(self.web_port)  # a new process: log in again
        return self

    @property
    def process(self) -> Process:
        assert self.server is not None, f"node {self.name} was never started"
        return self.server.process

    @property
    def fingerprint(self) -> str:
        assert self.server is not None and self.server.fingerprint, f"node {self.name}: no fingerprint printed"
        return self.server.fingerprint

    def running(self) -> bool:
        return self.server is not None and self.process.running()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, a clean stop (its lease is released); the exit status."""
        return self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: gone without a word (its lease runs out in 30 s)."""
        self.process.kill()

    def restart(self, *extra: str) -> "Node":
        """A clean stop, then the same data directory and ports again."""
        if self.running():
            self.stop()
        return self.start(*extra)

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> Any:
        return self.process.wait_for(pattern, timeout, start)

    def output(self) -> str:
        return self.process.output()

    def mark(self) -> int:
        return self.process.mark()

    def __repr__(self) -> str:
        return f"<Node {self.name} control={self.port} web={self.web_port} console={self.console_port}>"


class Cluster:
    """N nodes on one database.  ``cluster[name]`` or ``cluster[index]``; iterate for all of them."""

    def __init__(self, procs: Processes, url: str, size: int, args: Iterable[str] = (),
                 env: Optional[Dict[str, str]] = None, start: bool = True) -> None:
        assert 1 <= size <= len(NAMES)
        self.procs = procs
        self.url = url
        self.args = list(args)
        self.env = dict(env or {})
        self.nodes: List[Node] = [Node(self, NAMES[i]) for i in range(size)]
        self.token: Optional[str] = None
        self._clients = 0
        if start:
            for node in self.nodes:
                node.start()

    def _share_with(self, node: Node) -> None:
        """Before ``node`` starts: what the first node made that every node must share."""
        first = self.nodes[0]
        if node is first:
            return
        key = first.data_dir / "notify.key"
        assert key.exists(), "start the first node before the others: it makes the notification key"
        target = node.data_dir / "notify.key"
        if not target.exists():
            shutil.copy(key, target)
            target.chmod(0o600)

    def _note_token(self, node: Node) -> None:
        if self.token is None and node.server is not None and node.server.token:
            self.token = node.server.token

    def sql(self, query: str, *params: Any) -> List[Tuple[Any, ...]]:
        """Rows of ``query`` run on the cluster's database (psycopg, ``%s`` placeholders): what the nodes wrote."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            return list(connection.execute(query, params).fetchall())

    def __getitem__(self, key: Any) -> Node:
        if isinstance(key, int):
            return self.nodes[key]
        for node in self.nodes:
            if node.name == key:
                return node
        raise KeyError(key)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def client(self, node: Node, *tunnels: str, name: Optional[str] = None, token: Optional[str] = None,
               args: Iterable[str] = ()) -> Process:
        """A ``twistd gotaxy-client`` logged in to ``node`` (pinned to its certificate) with ``tunnels``."""
        for each in self.nodes:
            self._note_token(each)
        token = token or self.token
        assert token, "no client token: the first node did not print one"
        self._clients += 1
        name = name or ("client" if self._clients == 1 else f"client{self._clients}")
        assert node.server is not None
        return self.procs.client(node.server, *tunnels, token=token, args=args, name=name)


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_until(predicate: Any, timeout: float = 20.0, what: str = "the condition", interval: float = 0.02) -> float:
    """Poll ``predicate`` until it is true; the seconds it took (fails after ``timeout``, saying ``what``)."""
    begun = time.monotonic()
    deadline = begun + timeout
    while True:
        last = predicate()
        if last:
            return time.monotonic() - begun
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")
        time.sleep(interval)
