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
    assert (tunnel["client"], tunnel["name"], tunnel["address"]["port"], tunnel["status"]) == ("default", "echo", port, "up")
    table = console.ok("tunnels").splitlines()
    assert table[0].split() == ["TUNNEL", "ADDRESS", "LOCAL", "STATUS", "CONNS", "IN/S", "OUT/S"]
    assert table[1].split()[:5] == ["default/echo", "port", str(port), f"127.0.0.1:{echo.port}", "up"]
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
        row = session.expect(r"default/echo +port (\d+) +127\.0\.0\.1:\d+ +up")
        assert int(row.group(1)) == port
        session.expect(r"gotaxy> ")
        session.send(b"tok\ts\r")  # Tab completes "tok" to "token" (or tokens), then type the "s"
        session.expect(r"NAME +STATE +CREATED")
        session.expect(r"gotaxy> ")
        session.send(b"\x1b[A\x1b[A\r")  # Up twice: "tunnels" again
        session.expect(r"default/echo +port %d" % port)
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
    assert out.strip() == f"tunnel default/echo disabled; status disabled, port {port}"
    assert connection_refused(port)
    detail = console.ok("tunnel", "default/echo")
    assert re.search(r"^status +disabled", detail, re.M), detail
    console.ok("tunnel", "enable", "echo")
    deadline = time.monotonic() + 20
    while connection_refused(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert echo_once(port, b"after") == b"after"


# -- under attack (issue 8) ---------------------------------------------------------


def test_stalled_connections_from_one_address_do_not_lock_out_another(procs):
    """Issue 8, item 14: 20 stalled connections took all the console's log-in slots."""
    import socket

    server, console = start(procs)
    stalled = []
    try:
        for _ in range(20):
            s = socket.socket()
            s.settimeout(10)
            s.bind(("127.0.0.1", 0))
            try:
                s.connect(("127.0.0.1", console.port))
            except OSError:
                s.close()  # refused: fine, that is the per-address cap at work
                continue
            stalled.append(s)  # connected, and never says a word
        # The operator, at another loopback address, still gets in.
        argv = console.argv("status")
        argv.insert(1, "-b")
        argv.insert(2, "127.0.0.2")
        result = subprocess.run(argv, env=console.env, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert "version" in result.stdout
    finally:
        for s in stalled:
            s.close()
    server.wait_for(r"console: refused a connection from 127\.0\.0\.1: 4 connections from there")


def test_an_idle_session_is_closed(procs, tmp_path):
    """Issue 8, item 14: a logged-in session stayed open for ever."""
    config = tmp_path / "server.toml"
    config.write_text("[console]\nidleTimeout = 2\n")
    server, console = start(procs, "--config", str(config))
    session = PtySession(console.argv(tty=True), console.env)
    try:
        session.expect(r"gotaxy> ")
        session.send(b"status\r")  # input restarts the timer
        session.expect(r"version")
        session.expect(r"gotaxy> ")
        session.expect(r"closing the console after 2 s without input \(console\.idleTimeout\)")
        session.wait()  # ssh leaves on its own once its channel is closed
        assert session.proc.poll() is not None
    finally:
        session.close()
    server.wait_for(r"console: closed a session from 127\.0\.0\.1 after 2 s without input")


def test_using_the_python_prompt_is_an_event(procs, tmp_path):
    """Issue 8, item 14: each use of the python prompt is an event."""
    config = tmp_path / "server.toml"
    config.write_text("[console]\npython = true\n")
    server, console = start(procs, "--config", str(config))
    for _ in range(2):
        session = PtySession(console.argv(tty=True), console.env)
        try:
            session.expect(r"gotaxy> ")
            session.send(b"python\r")
            session.expect(r">>> ")
            session.send(b"\x04")
            session.expect(r"gotaxy> ")
            session.send(b"exit\r")
            assert session.wait() == 0
        finally:
            session.close()
    events = json.loads(console.ok("events", "--type", "console.python", "--json"))
    assert [(e["address"], e["detail"]) for e in events] == [
        ("127.0.0.1", "user 'admin' opened the python prompt")] * 2


def test_totp_is_required_after_the_password_but_not_with_a_key(procs, tmp_path):
    """Issue 8, item 5: with TOTP on, a console password log-in asked for nothing more."""
    import urllib.request

    import pyotp

    web_port = free_port()
    server, console = start(procs, "--web-port", str(web_port))
    server.wait_for(r"Site starting on %d" % web_port)

    def api(path: str, body: dict, cookie: str = "", csrf: str = "") -> "tuple[dict, str]":
        request = urllib.request.Request(
            f"http://127.0.0.1:{web_port}/api/v0.1/{path}", json.dumps(body).encode(),
            {"Content-Type": "application/json", "Cookie": cookie, "X-CSRF-Token": csrf}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}"), response.headers.get("Set-Cookie", "")

    account, set_cookie = api("login", {"username": "admin", "password": PASSWORD})
    cookie, csrf = set_cookie.split(";")[0], account["csrf_token"]
    enrolment, _ = api("account/totp", {}, cookie, csrf)
    totp = pyotp.TOTP(enrolment["secret"])
    step = int(time.time() // 30)
    # Enrol with the previous step's code (one step of drift is allowed), so that the
    # current and the next code are still unused for the two log-ins below.
    api("account/totp/confirm", {"code": totp.at((step - 1) * 30)}, cookie, csrf)

    # A script as SSH_ASKPASS that answers by the prompt: the password, or the code.
    askpass = tmp_path / "askpass-totp.sh"
    askpass.write_text('#!/bin/sh\ncase "$1" in\n  *code*) printf "%s\\n" "$GOTAXY_TEST_CODE" ;;\n'
                       '  *) printf "%s\\n" "$GOTAXY_TEST_PASSWORD" ;;\nesac\n')
    askpass.chmod(0o700)

    def ssh(methods: str, code: str, *command: str) -> subprocess.CompletedProcess:
        argv = console.argv(*command)
        argv[argv.index("PreferredAuthentications=password")] = f"PreferredAuthentications={methods}"
        env = dict(console.env, SSH_ASKPASS=str(askpass), GOTAXY_TEST_CODE=code)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, start_new_session=True)

    # The password alone is no longer enough.
    alone = ssh("password", "", "status")
    assert alone.returncode == 255, (alone.stdout, alone.stderr)
    # A wrong code is refused, and recorded.
    wrong = ssh("password,keyboard-interactive", "000000" if totp.at(step * 30) != "000000" else "111111", "status")
    assert wrong.returncode == 255, (wrong.stdout, wrong.stderr)
    # Password, then the code (keyboard-interactive): in.
    right = ssh("password,keyboard-interactive", totp.at(step * 30), "status")
    assert right.returncode == 0, (right.stdout, right.stderr)
    assert "version" in right.stdout
    # keyboard-interactive alone asks for both.
    both = ssh("keyboard-interactive", totp.at((step + 1) * 30), "status")
    assert both.returncode == 0, (both.stdout, both.stderr)
    # A code works once.
    again = ssh("keyboard-interactive", totp.at((step + 1) * 30), "status")
    assert again.returncode == 255

    # A listed key is a full log-in on its own.
    key = tmp_path / "operator_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    (server.data_dir / "console_authorized_keys").write_text((tmp_path / "operator_key.pub").read_text())
    assert "version" in console.ok("status", key=key)

    events = json.loads(console.ok("events", "--type", "operator.login_failed", "--json", key=key))
    details = [e["detail"] for e in events]
    assert details.count("via console, user 'admin', wrong second-factor code") == 2, details  # wrong, replayed
