"""
End to end: a new user's first hour (issue 9, items 4, 5, 7, 8, 9, 12).
Every failure at start or connect is one line that says why and what to do,
with real ``twistd`` processes on loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from typing import Any, Dict, Optional, Tuple

import pyotp
import pytest

from gotaxy import __version__
from gotaxy.store import Store, default_url
from tests.e2e import ROOT, EchoServer, free_port, gotaxy_cli, tunnel_port, twistd

PASSWORD = "e2e-first-password-1"
RETRY = r"retrying in (\d+(?:\.\d+)?) s"


def _listening_socket() -> Tuple[socket.socket, int]:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    return busy, busy.getsockname()[1]


def _client(procs: Any, server: str, *args: str, name: str = "client", tmp_path: Any = None) -> Any:
    return procs.twistd(
        "gotaxy-client",
        ["--server", server, "--token", "gtx_" + "A" * 43, "--tunnel", "echo=tcp:127.0.0.1:9",
         "--data-dir", str(procs.workdir / f"{name}-data"), *args],
        name,
    )


# -- item 4: a client that cannot connect ---------------------------------------


def test_a_client_that_cannot_connect_says_where_why_and_when_it_retries(procs):
    port = free_port()  # nothing listens there
    client = _client(procs, f"127.0.0.1:{port}")
    client.wait_for(rf"cannot reach 127\.0\.0\.1:{port}: connection refused; {RETRY}")
    client.wait_for(rf"cannot reach 127\.0\.0\.1:{port}: connection refused; {RETRY}.*\n.*"
                    rf"cannot reach 127\.0\.0\.1:{port}: connection refused; {RETRY}", timeout=30)
    assert "Scheduling retry" not in client.output()
    assert "_WrapperEndpoint" not in client.output()

    unresolved = _client(procs, "no-such-host.invalid:7000", name="unresolved")
    unresolved.wait_for(rf"cannot reach no-such-host\.invalid:7000: name not resolved; {RETRY}", timeout=30)


def test_a_server_that_does_not_speak_tls_is_a_tls_failure(procs):
    echo = EchoServer()  # answers a TLS ClientHello with the same bytes
    try:
        client = _client(procs, f"127.0.0.1:{echo.port}")
        client.wait_for(
            rf"cannot reach 127\.0\.0\.1:{echo.port}: TLS failure \([^)]+\); "
            rf"is this the server's control port \(bindPort\)\?; {RETRY}"
        )
    finally:
        echo.close()


def test_server_without_port_names_the_port_it_assumed(procs):
    client = _client(procs, "127.0.0.1")
    client.wait_for(r"--server 127\.0\.0\.1 has no port; using 7000, the default")


def test_server_given_as_a_url_gets_a_hint_about_the_form(procs):
    client = _client(procs, "https://127.0.0.1:7000")
    assert client.wait_exit(30) == 2
    out = client.output()
    assert 'gotaxy-client: --server "https://127.0.0.1:7000": write HOST:PORT without https://, ' \
           "e.g. --server 127.0.0.1:7000" in out
    assert "Usage:" not in out and "--help" in out  # one line, not twistd's usage text
    assert len(out.strip().splitlines()) == 1, out


# -- item 5: a refused token with loginFailExit = false ---------------------------


def test_a_refused_token_without_login_fail_exit_backs_off(procs, tmp_path):
    server = procs.server()
    config = tmp_path / "frpc.toml"
    config.write_text("loginFailExit = false\n")
    client = _client(procs, f"127.0.0.1:{server.port}", "--config", str(config),
                     "--fingerprint", server.fingerprint)
    first = (r"the server refused our login: invalid, expired or revoked token; " + RETRY
             + r"; check the token \(auth\.token / --token\)")
    again = r"log-in refused again, for the same reason; " + RETRY
    client.wait_for(rf"(?s){first}.*{again}.*{again}", timeout=40)
    out = client.output()
    assert out.count("invalid, expired or revoked token") == 1  # said once, not at every retry
    delays = [float(d) for d in re.findall(first, out) + re.findall(again, out)]
    # 1-2 s, then 2-4 s, then 4-8 s (jitter 50-100 %): growing, not ~1 s forever.
    assert delays[0] <= 2 and delays[1] >= 2 and delays[2] >= 4, delays
    assert client.running()
    assert "Scheduling retry" not in client.output()


# -- item 7: a busy port at start ---------------------------------------------------


@pytest.mark.parametrize(
    "flag, key, what, off",
    [
        ("--bind-port", "bindPort", "the control port", ""),
        ("--web-port", "webServer.port", "the web panel", ", or 0 to turn it off"),
        ("--console-port", "console.port", "the SSH console", ", or 0 to turn it off"),
    ],
)
def test_a_busy_port_is_one_line_naming_the_setting_and_exit_1(procs, flag, key, what, off):
    busy, port = _listening_socket()
    try:
        control = ["--bind-port", str(free_port())] if flag != "--bind-port" else []
        server = procs.twistd(
            "gotaxy-server", ["--data-dir", "d", "--bind-addr", "127.0.0.1", *control, flag, str(port)], "server"
        )
        assert server.wait_exit(30) == 1
    finally:
        busy.close()
    out = server.output()
    assert (
        f"cannot listen on 127.0.0.1:{port} for {what} ({key}): another program (maybe another Gotaxy server) "
        f"already uses that port; stop it, or choose another port with {key} or {flag}{off}"
    ) in out
    assert "Traceback" not in out
    assert "listening for clients" not in out


# -- item 8: the first start's secrets, and recovering the operator account ---------


def _login(port: int, password: str, code: Optional[str] = None) -> Tuple[int, Dict[str, Any], str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = {"username": "admin", "password": password, **({"code": code} if code else {})}
        connection.request("POST", "/api/v0.1/login", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Set-Cookie") or ""
    finally:
        connection.close()


def _session_post(port: int, cookie: str, csrf: str, path: str, body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), {
            "Content-Type": "application/json", "Cookie": cookie.split(";")[0], "X-CSRF-Token": csrf,
        })
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_failed_first_start_keeps_its_secrets_for_the_next_start(procs, echo):
    busy, web = _listening_socket()
    control = free_port()
    try:
        failed = procs.twistd(
            "gotaxy-server",
            ["--data-dir", "d", "--bind-addr", "127.0.0.1", "--bind-port", str(control), "--web-port", str(web)],
            "failed",
        )
        assert failed.wait_exit(30) == 1
    finally:
        busy.close()
    assert "client token" not in failed.output() and "admin password" not in failed.output()

    server = procs.server("--web-port", str(free_port()), data_dir="d", port=control)
    assert server.token, server.output()
    assert re.search(r"admin password \(user 'admin'\):\s+\S+", server.output())
    # The banner comes once everything listens, just before the line that says so.
    assert server.output().index("client token") < server.output().index("listening for clients")
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    tunnel_port(client, "echo")


def test_admin_reset_password_and_disable_totp_work_while_the_server_runs(procs):
    web = free_port()
    server = procs.server("--web-port", str(web), env={"GOTAXY_ADMIN_PASSWORD": PASSWORD})
    _wait_for_panel(web)
    status, account, cookie = _login(web, PASSWORD)
    assert status == 200, account

    # Turn TOTP on, as an operator would in the panel.
    csrf = account["csrf_token"]
    status, enrol = _session_post(web, cookie, csrf, "/api/v0.1/account/totp", {})
    assert status == 200, enrol
    totp = pyotp.TOTP(enrol["secret"])
    status, body = _session_post(web, cookie, csrf, "/api/v0.1/account/totp/confirm", {"code": totp.now()})
    assert status == 200, body

    # The operator loses the password and the phone.
    out = gotaxy_cli("--data-dir", str(server.data_dir), "admin", "reset-password")
    new = re.search(r"new password for operator 'admin' \(shown only now\): (\S+)", out).group(1)
    assert "ended 1 panel session(s) of 'admin'" in out
    assert _login(web, PASSWORD)[0] == 401  # the old password no longer works
    status, body, _ = _login(web, new)
    assert status == 401 and body["error"]["totp_required"], body  # the new one does, with the code

    out = gotaxy_cli("--data-dir", str(server.data_dir), "admin", "disable-totp")
    assert "second factor (TOTP) turned off for 'admin'" in out
    status, body, _ = _login(web, new)
    assert status == 200, body
    # Stopped, the same works on the store alone.
    server.stop()
    chosen = "a-chosen-password-42"
    result = subprocess.run(
        [sys.executable, "-m", "gotaxy.cli", "--data-dir", str(server.data_dir), "admin", "reset-password",
         "--password-stdin"],
        input=chosen + "\n", capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60,
    )
    assert result.returncode == 0 and "new password set for operator 'admin'" in result.stdout, result.stderr
    assert chosen not in result.stdout
    store = Store(default_url(str(server.data_dir)))
    try:
        assert store.verify_admin("admin", chosen)
        assert any(e.type == "operator.password_changed" and "gotaxy admin" in (e.detail or "") for e in store.events())
    finally:
        store.close()
    assert new not in server.output()  # printed by the command, never logged


def _wait_for_panel(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/api/v0.1/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"the panel did not answer on port {port} within {timeout} s")
        time.sleep(0.1)


# -- item 9: one server per data directory --------------------------------------------


def test_a_second_server_on_the_same_data_directory_names_the_first_and_exits_1(procs, echo):
    first = procs.server()
    client = procs.client(first, f"echo=tcp:127.0.0.1:{echo.port}")
    tunnel_port(client, "echo")
    second = procs.twistd(
        "gotaxy-server",
        ["--data-dir", "server-data", "--bind-addr", "127.0.0.1", "--bind-port", str(free_port())],
        "second",
    )
    assert second.wait_exit(30) == 1
    out = second.output()
    assert (
        f"gotaxy-server: the data directory {first.data_dir} is in use by another Gotaxy server "
        f"(pid {first.pid}); stop that server first, or give this one a data directory of its own (--data-dir)"
    ) in out, out
    assert "Traceback" not in out
    # The first one's store is untouched: its client is still online.
    store = Store(default_url(str(first.data_dir)))
    try:
        (record,) = [c for c in store.list_clients() if c.name == "default"]
        assert record.online
        assert not any(e.detail == "server restarted" for e in store.events())
    finally:
        store.close()
    # Once the first has stopped, the directory is free again.
    first.stop()
    procs.server(data_dir="server-data", name="third")


# -- item 12: version, one-line errors, texts -----------------------------------------


def test_version_is_in_the_command_and_in_both_first_log_lines(procs, echo):
    assert gotaxy_cli("--version").strip() == f"gotaxy {__version__}"
    server = procs.server()
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    tunnel_port(client, "echo")
    for process, line in [(server, f"Gotaxy server {__version__} starting"), (client, f"Gotaxy client {__version__} starting")]:
        first_gotaxy_line = next(l for l in process.output().splitlines() if "[gotaxy." in l)
        assert line in first_gotaxy_line, process.output()


def test_config_and_flag_errors_are_one_line_and_exit_2(procs, tmp_path):
    bad = tmp_path / "frps.toml"
    bad.write_text('bindPort = "seven"\n')
    server = procs.twistd("gotaxy-server", ["--config", str(bad), "--data-dir", "d"], "server")
    assert server.wait_exit(30) == 2
    assert server.output().strip().splitlines() == [
        f"gotaxy-server: {bad}: 'bindPort' must be an integer from 1 to 65535, got \"seven\" "
        "(twistd gotaxy-server --help lists the options)"
    ]
    flag = procs.twistd("gotaxy-server", ["--bind-port", "abc", "--data-dir", "d"], "flag")
    assert flag.wait_exit(30) == 2
    (line,) = flag.output().strip().splitlines()
    assert line.startswith("gotaxy-server: ") and "abc" in line
    ca = procs.twistd(
        "gotaxy-client",
        ["--server", "127.0.0.1:7000", "--token", "t", "--tunnel", "a=tcp:127.0.0.1:22", "--ca", str(tmp_path / "none.pem"),
         "--data-dir", str(tmp_path / "c")],
        "ca",
    )
    assert ca.wait_exit(30) == 2
    assert "Traceback" not in ca.output()
    assert f"gotaxy-client: Cannot read the CA file {tmp_path / 'none.pem'}" in ca.output()


def test_server_help_has_no_double_full_stop():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([twistd(), "gotaxy-server", "--help"], capture_output=True, text=True, env=env,
                         timeout=60).stdout
    assert "--max-ports-per-client" in out
    assert ".." not in out
