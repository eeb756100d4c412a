"""
End to end, with real ``twistd`` processes on loopback: address rules and
automatic bans (``gotaxy.server.access``).  The visitor the server must
turn away comes from 127.0.0.2 (the tests bind their sockets there), the
operator and the honest client from 127.0.0.1:

* a denied address cannot reach the control port, the panel, the console
  or a tunnel, while an allowed one can;
* wrong client tokens from 127.0.0.2 ban it on every listener, the ban
  survives a restart of the server, and ``unban`` in the console lets it in
  again.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from typing import Any, Dict, List

import pytest

from gotaxy.wire import PREAMBLE, PREAMBLE_MAGIC, PROTOCOL_VERSION, FrameDecoder, FrameType, decode_json, encode_control
from tests.e2e import EchoServer, echo_once, free_port, tunnel_port
from tests.test_console_e2e import PASSWORD, Console

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (openssh-client)")

STRANGER = "127.0.0.2"


def turned_away(port: int, source: str = STRANGER, payload: bytes = b"") -> bool:
    """True if a connection from ``source`` is closed by the server without a byte (no TLS, no banner, no echo)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        try:
            if payload:
                s.sendall(payload)
            return s.recv(1024) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def login_from(port: int, token: str, source: str = STRANGER) -> Dict[str, Any]:
    """One log-in over TLS and the real frame format from ``source``; the server's answer."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    frames: List[Any] = []
    decoder = FrameDecoder(lambda kind, stream, payload: frames.append((kind, bytes(payload))), lambda s, c: None)
    login = {"type": "login", "token": token, "user": "", "hostname": "stranger", "version": "test"}
    with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0)) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(PREAMBLE.pack(PREAMBLE_MAGIC, PROTOCOL_VERSION) + encode_control(login))
            while not frames:
                data = tls.recv(65536)
                if not data:
                    break
                decoder.feed(data)
    for kind, payload in frames:
        if kind == FrameType.CONTROL:
            return decode_json(payload)
    raise AssertionError("the server closed without answering the log-in")


def ssh_from(console: Console, source: str, *command: str) -> subprocess.CompletedProcess:
    argv = console.argv(*command)
    argv.insert(1, "-b")
    argv.insert(2, source)
    return subprocess.run(argv, env=console.env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, start_new_session=True)


def start(procs, config: str, data_dir: str = "server-data", port: int = 0, console_port: int = 0,
          web_port: int = 0, name: str = "server"):
    path = procs.workdir / "server.toml"
    path.write_text(config)
    console_port = console_port or free_port()
    web_port = web_port or free_port()
    server = procs.server("--config", str(path), "--console-port", str(console_port), "--web-port", str(web_port),
                          data_dir=data_dir, port=port or None, name=name, env={"GOTAXY_ADMIN_PASSWORD": PASSWORD})
    server.wait_for(r"SSH operator console listening on 127\.0\.0\.1:%d" % console_port)
    return server, Console(server, console_port, procs.workdir), web_port


def test_a_denied_address_reaches_no_listener_and_an_allowed_one_every_one(procs):
    echo = EchoServer()
    try:
        server, console, web_port = start(procs, f"""
[access.control]
deny = ["{STRANGER}"]
[access.webServer]
deny = ["{STRANGER}/32"]
[access.console]
deny = ["{STRANGER}"]
[access.tunnels]
deny = ["{STRANGER}"]
""")
        client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
        port = tunnel_port(client, "echo")
        assert echo_once(port, b"hello") == b"hello"  # from 127.0.0.1
        assert turned_away(server.port, payload=b"\x16\x03\x01")  # no TLS for it
        assert turned_away(web_port, payload=b"GET /api/v0.1/health HTTP/1.0\r\n\r\n")
        assert turned_away(console.port)  # not even the SSH banner
        assert turned_away(port, payload=b"hello")
        assert ssh_from(console, STRANGER, "status").returncode != 0
        shown = json.loads(console.ok("access", "--json"))
        assert shown["listeners"]["console"]["deny"] == [f"{STRANGER}/32"]
        refused = {(r["listener"], r["reason"]): r["count"] for r in shown["refused"]}
        assert refused[("tunnels", "denied")] >= 1 and refused[("control", "denied")] >= 1
        with socket.create_connection(("127.0.0.1", web_port), timeout=10) as s:  # the operator's panel
            s.sendall(b"GET /api/v0.1/health HTTP/1.0\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.")
    finally:
        echo.close()


def test_wrong_tokens_ban_a_source_everywhere_across_a_restart_until_the_console_lifts_it(procs):
    echo = EchoServer()
    config = '[access.ban]\nexempt = []\ntokenFailures = 3\n'
    try:
        server, console, web_port = start(procs, config)
        client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
        port = tunnel_port(client, "echo")
        wrong = "gtx_" + "C" * 43
        for _ in range(3):
            assert login_from(server.port, wrong)["type"] == "login_failed"
        server.wait_for(r"banned 127\.0\.0\.2 for 600 s on every listener: 3 wrong client tokens in 600 s")
        assert turned_away(server.port, payload=b"\x16\x03\x01")
        assert turned_away(port, payload=b"hello")
        assert turned_away(web_port, payload=b"GET / HTTP/1.0\r\n\r\n")
        assert turned_away(console.port)
        assert echo_once(port, b"still here") == b"still here"  # everyone else is served
        (ban,) = json.loads(console.ok("bans", "--json"))
        assert (ban["address"], ban["by"], ban["strikes"]) == (STRANGER, "automatic", 1)

        # The ban is in the store: a restarted server refuses the address at once.
        control_port, console_port = server.port, console.port
        server.stop()
        server, console, web_port = start(procs, config, port=control_port, console_port=console_port,
                                          name="restarted")
        assert turned_away(server.port, payload=b"\x16\x03\x01")
        assert turned_away(console.port)

        assert console.ok("unban", STRANGER).strip() == f"ban of {STRANGER} lifted"
        assert login_from(server.port, wrong)["type"] == "login_failed"  # heard again
        events = console.ok("events", "--type", "ban.")
        assert "ban.lifted" in events and "ban.added" in events
    finally:
        echo.close()


def test_a_ban_on_one_server_holds_on_another_sharing_its_database(procs, tmp_path):
    import time

    from gotaxy.store import default_url

    (tmp_path / "shared").mkdir()
    url = default_url(str(tmp_path / "shared"))
    config = procs.workdir / "shared.toml"
    config.write_text('[access.ban]\nexempt = []\ntokenFailures = 2\n')
    a = procs.server("--config", str(config), "--database-url", url, name="a", data_dir="a-data")
    # Servers sharing a database share the key of its webhooks (docs/configuration.md).
    (a.data_dir.parent / "b-data").mkdir(mode=0o700)
    shutil.copy(a.data_dir / "notify.key", a.data_dir.parent / "b-data" / "notify.key")
    b = procs.server("--config", str(config), "--database-url", url, name="b", data_dir="b-data")
    wrong = "gtx_" + "D" * 43
    assert login_from(b.port, wrong)["type"] == "login_failed"  # b hears it: not banned yet
    for _ in range(2):
        assert login_from(a.port, wrong)["type"] == "login_failed"
    a.wait_for(r"banned 127\.0\.0\.2 for 600 s on every listener")
    deadline = time.monotonic() + 10  # b reads a's ban.added from the events table within about a second
    while not turned_away(b.port, payload=b"\x16\x03\x01"):
        assert time.monotonic() < deadline, b.output()[-2000:]
    assert login_from(b.port, "gtx_" + "E" * 43, source="127.0.0.1")["type"] == "login_failed"  # others still heard


def test_a_new_ban_ends_that_addresses_panel_sessions_and_console_sessions_at_once(procs):
    import http.client
    import time

    server, console, web_port = start(procs, "[access.ban]\nexempt = []\n")
    # A panel session from 127.0.0.2, with its live view open.
    connection = http.client.HTTPConnection("127.0.0.1", web_port, timeout=30, source_address=(STRANGER, 0))
    connection.request("POST", "/api/v0.1/login", json.dumps({"username": "admin", "password": PASSWORD}),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    response.read()
    cookie = response.getheader("Set-Cookie").split(";", 1)[0]
    connection.close()
    live = socket.create_connection(("127.0.0.1", web_port), timeout=30, source_address=(STRANGER, 0))
    live.sendall(f"GET /api/v0.1/live HTTP/1.1\r\nHost: 127.0.0.1:{web_port}\r\nCookie: {cookie}\r\n\r\n".encode())
    assert b"200" in live.recv(4096).split(b"\r\n", 1)[0]
    # A console session from 127.0.0.2, held open (an interactive shell waiting for a command).
    argv = console.argv(tty=True)
    argv[1:1] = ["-b", STRANGER]
    shell = subprocess.Popen(argv, env=console.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"gotaxy>" not in seen:
            assert time.monotonic() < deadline and shell.poll() is None, seen
            seen += shell.stdout.read1(4096)

        assert console.ok("ban", STRANGER, "--for", "3600").startswith(f"{STRANGER} banned")
        # Both are cut at once: the shell's connection ends, the live view closes, the session is gone.
        assert shell.wait(20) != 0
        live.settimeout(20)
        while True:
            data = live.recv(65536)
            if not data:
                break
        check = http.client.HTTPConnection("127.0.0.1", web_port, timeout=30)
        check.request("GET", "/api/v0.1/account", headers={"Cookie": cookie})
        assert check.getresponse().status == 401
        check.close()
    finally:
        live.close()
        if shell.poll() is None:
            shell.kill()
        shell.wait(10)
