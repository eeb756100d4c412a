"""
End-to-end tests of the SSH operator console: the real OpenSSH client
(``ssh``, ``ssh-keygen``, ``ssh-keyscan`` from ``openssh-client``) against a
real ``twistd -n gotaxy-server`` on loopback.

The password reaches ``ssh`` through ``SSH_ASKPASS`` with
``SSH_ASKPASS_REQUIRE=force`` (OpenSSH 8.4 and later), so no terminal or
``sshpass`` is needed; the interactive test drives ``ssh -tt`` through a
pseudo-terminal from the standard ``pty`` module.  Every ``ssh`` runs in its
own process group and is killed at the end of its test.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import List, Optional

import pytest

from tests.e2e import connection_refused, echo_once, free_port, tunnel_port

PASSWORD = "console e2e password 42"

pytestmark = pytest.mark.skipif(
    shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
    reason="needs the OpenSSH client (Debian package openssh-client; .ci/run installs it)",
)


class Console:
    """How tests reach one server's console with the real ``ssh``."""

    def __init__(self, server, port: int, workdir: Path) -> None:
        self.server = server
        self.port = port
        askpass = workdir / "askpass.sh"
        askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$GOTAXY_TEST_PASSWORD"\n')
        askpass.chmod(0o700)
        self.env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
                        GOTAXY_TEST_PASSWORD=PASSWORD)
        self.env.pop("SSH_AUTH_SOCK", None)  # no agent keys from the machine running the tests

    def argv(self, *command: str, key: Optional[Path] = None, tty: bool = False) -> List[str]:
        args = ["ssh", "-p", str(self.port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "NumberOfPasswordPrompts=1"]
        if key is None:
            args += ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
                     "-o", "BatchMode=no"]
        else:
            args += ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "PreferredAuthentications=publickey",
                     "-o", "PasswordAuthentication=no", "-o", "BatchMode=yes"]
        if tty:
            args.append("-tt")
        return args + ["admin@127.0.0.1", *command]

    def run(self, *command: str, key: Optional[Path] = None, password: str = PASSWORD,
            stdin: Optional[bytes] = None) -> subprocess.CompletedProcess:
        env = dict(self.env, GOTAXY_TEST_PASSWORD=password)
        return subprocess.run(
            self.argv(*command, key=key), env=env, capture_output=True, text=True, timeout=60,
            input=stdin.decode() if stdin is not None else None,
            stdin=None if stdin is not None else subprocess.DEVNULL, start_new_session=True,
        )

    def ok(self, *command: str, key: Optional[Path] = None) -> str:
        result = self.run(*command, key=key)
        assert result.returncode == 0, (command, result.returncode, result.stdout, result.stderr)
        return result.stdout


def start(procs, *args: str, name: str = "server", data_dir: str = "server-data", port: Optional[int] = None,
          console_port: Optional[int] = None):
    console_port = console_port or free_port()
    server = procs.server("--console-port", str(console_port), *args, name=name, data_dir=data_dir, port=port,
                          env={"GOTAXY_ADMIN_PASSWORD": PASSWORD})
    server.wait_for(r"SSH operator console listening on 127\.0\.0\.1:%d" % console_port)
    return server, Console(server, console_port, procs.workdir)


class PtySession:
    """``ssh -tt`` on a pseudo-terminal of 80x24, read and typed like a person would."""

    def __init__(self, argv: List[str], env: dict) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.output = b""
        self.position = 0

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the other side closed
            return False
        self.output += data
        return bool(data)

    def expect(self, pattern: str, timeout: float = 20.0) -> "re.Match[str]":
        """Wait for ``pattern`` in the (escape-stripped) output after the last match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = _plain(self.output)
            match = regex.search(text, self.position)
            if match:
                self.position = match.end()
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s; screen so far:\n{text[-3000:]}")
            if not self._read(min(0.5, max(0.0, deadline - time.monotonic()))) and self.proc.poll() is not None:
                raise AssertionError(f"ssh exited ({self.proc.returncode}) before {pattern!r}:\n{text[-3000:]}")

    def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        os.close(self.master)


def _plain(data: bytes) -> str:
    """Terminal output without escape sequences, and with plain newlines."""
    text = data.decode("utf-8", "replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>cDEHM78]", "", text)
    return text.replace("\r\n", "\n").replace("\r", "")


# -- log-in -----------------------------------------------------------------------


def test_password_login_one_shot_commands_exit_codes_and_json(procs, echo):
    server, console = start(procs)
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")

    status = console.ok("status")
    assert re.search(r"^clients +1 online, 1 known$", status, re.M), status
    assert re.search(r"^tunnels +1 up, 1 defined$", status, re.M), status

    (tunnel,) = json.loads(console.ok("tunnels", "--json"))
    assert (tunnel["client"], tunnel["name"], tunnel["remote_port"], tunnel["status"]) == ("default", "echo", port, "up")
    table = console.ok("tunnels").splitlines()
    assert table[0].split() == ["TUNNEL", "PORT", "LOCAL", "STATUS", "CONNS", "IN/S", "OUT/S"]
    assert table[1].split()[:4] == ["default/echo", str(port), f"127.0.0.1:{echo.port}", "up"]
    assert all(len(line) <= 80 for line in table)

    failed = console.run("tunnel", "nothing")
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.strip() == "error: no tunnel named 'nothing'; 'tunnels' lists them"
    wrong = console.run("tunnels", "--colour")
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "tunnels: unknown option '--colour'; type 'help tunnels' for usage"

    # Commands piped into a shell without a terminal also work.
    piped = console.run(stdin=b"clients\ntokens\n")
    assert piped.returncode == 0, piped.stderr
    assert "CLIENT" in piped.stdout and "LAST USED" in piped.stdout


def test_wrong_password_is_refused_recorded_and_counted(procs):
    server, console = start(procs)
    refused = console.run("status", password="not the password")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    events = json.loads(console.ok("events", "--type", "operator.login_failed", "--json"))
    assert [(e["address"], e["detail"]) for e in events] == [("127.0.0.1", "via console, user 'admin'")]
    for path in (server.data_dir / "logs").iterdir():
        assert "not the password" not in path.read_text()
    assert "not the password" not in server.output()


def test_public_key_login_and_host_key_kept_across_restarts(procs, tmp_path):
    server, console = start(procs)
    key = tmp_path / "operator_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@test", "-f", str(key)],
                   check=True, timeout=30)
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=30)

    # Not listed yet: refused.
    assert console.run("status", key=key).returncode == 255
    (server.data_dir / "console_authorized_keys").write_text(
        "# operators\n" + (tmp_path / "operator_key.pub").read_text()
    )
    assert "version" in console.ok("status", key=key)  # no restart needed
    assert console.run("status", key=other).returncode == 255

    host_key = server.data_dir / "console_host_key"
    assert host_key.stat().st_mode & 0o777 == 0o600
    before = _host_key(console.port)
    assert before.startswith("ssh-ed25519 ")
    control = server.port
    server.stop()
    server, console = start(procs, port=control, name="server2", console_port=console.port)
    assert _host_key(console.port) == before
    assert "version" in console.ok("status", key=key)


def _host_key(port: int) -> str:
    result = subprocess.run(["ssh-keyscan", "-p", str(port), "-t", "ed25519", "127.0.0.1"],
                            capture_output=True, text=True, timeout=30, start_new_session=True)
    line = next(line for line in result.stdout.splitlines() if not line.startswith("#"))
    return line.split(None, 1)[1]


# -- interactive -------------------------------------------------------------------


def test_interactive_session_over_a_pty(procs, echo):
    server, console = start(procs)
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    session = PtySession(console.argv(tty=True), console.env)
    try:
        session.expect(r"operator console")
        session.expect(r"gotaxy> ")
        session.send(b"tunnels\r")
        row = session.expect(r"default/echo +(\d+) +127\.0\.0\.1:\d+ +up")
        assert int(row.group(1)) == port
        session.expect(r"gotaxy> ")
        session.send(b"tok\ts\r")  # Tab completes "tok" to "token" (or tokens), then type the "s"
        session.expect(r"NAME +STATE +CREATED")
        session.expect(r"gotaxy> ")
        session.send(b"\x1b[A\x1b[A\r")  # Up twice: "tunnels" again
        session.expect(r"default/echo +%d" % port)
        session.expect(r"gotaxy> ")
        session.send(b"no-such-command\r")
        session.expect(r"unknown command 'no-such-command'; type 'help' for the list of commands")
        session.expect(r"gotaxy> ")
        session.send(b"watch\r")
        session.expect(r"press any key to stop")
        session.send(b"x")
        session.expect(r"gotaxy> ")
        session.send(b"exit\r")
        assert session.wait() == 0
    finally:
        session.close()


def test_python_prompt_when_enabled_in_the_config(procs, tmp_path):
    config = tmp_path / "server.toml"
    config.write_text("[console]\npython = true\n")
    server, console = start(procs, "--config", str(config))
    session = PtySession(console.argv(tty=True), console.env)
    try:
        session.expect(r"gotaxy> ")
        session.send(b"python\r")
        session.expect(r">>> ")
        session.send(b"print('port', config.bind_port)\r")
        session.expect(r"port %d" % server.port)
        session.send(b"\x04")  # Ctrl-D back to the console
        session.expect(r"gotaxy> ")
        session.send(b"exit\r")
        assert session.wait() == 0
    finally:
        session.close()
    # Never available one-shot: it needs the terminal.
    assert console.run("python").returncode == 2


# -- steering the live server ------------------------------------------------------


def test_kick_is_seen_by_the_client_reconnecting(procs, echo):
    server, console = start(procs)
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    mark = client.mark()
    assert console.ok("kick", "default").strip() == "client default disconnected"
    client.wait_for(r"disconnected", start=mark)
    assert tunnel_port(client, "echo", timeout=40, start=mark) == port
    assert echo_once(port, b"after kick") == b"after kick"
    assert console.run("kick", "default-nobody").returncode == 1


def test_tunnel_disable_closes_the_public_port(procs, echo):
    server, console = start(procs)
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    port = tunnel_port(client, "echo")
    assert echo_once(port, b"before") == b"before"
    out = console.ok("tunnel", "disable", "echo")
    assert out.strip() == f"tunnel default/echo disabled; status disabled, public port {port}"
    assert connection_refused(port)
    detail = console.ok("tunnel", "default/echo")
    assert re.search(r"^status +disabled", detail, re.M), detail
    console.ok("tunnel", "enable", "echo")
    deadline = time.monotonic() + 20
    while connection_refused(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert echo_once(port, b"after") == b"after"
