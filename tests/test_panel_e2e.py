"""
The web panel of a real ``twistd -n gotaxy-server`` on loopback, attacked
the way issue 8 found it weak: malformed paths, weak TLS suites, log-in
storms and concurrent wrong passwords.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e import free_port

PASSWORD = "panel e2e password 42"


def start_panel(procs, *args: str, env: dict = {}):
    web_port = free_port()
    server = procs.server("--web-port", str(web_port), *args, env={"GOTAXY_ADMIN_PASSWORD": PASSWORD, **env})
    server.wait_for(r"Site (?:\(TLS\) )?starting on %d" % web_port)
    wait_for_port(web_port)
    return server, web_port


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def raw_get(port: int, path: bytes) -> bytes:
    """Send ``GET path`` exactly as given (no client-side normalisation); the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def log_text(server) -> str:
    logs = Path(server.data_dir) / "logs"
    return server.output() + "".join(p.read_text(errors="replace") for p in logs.iterdir() if p.is_file())


def test_malformed_paths_are_400_and_leave_no_traceback(procs):
    server, port = start_panel(procs)
    for path in (b"/%00", b"/a%00b/c", b"/%zz", b"/%ff", b"/%c0%ae", b"/" + b"a" * 9000,
                 b"/api/v0.1/%00", b"/api/v0.1/clients/%ff", b"/%0d%0aX-Injected:%20yes"):
        answer = raw_get(port, path)
        assert status_of(answer) in (400, 404), (path[:40], answer[:200])
        assert b"Traceback" not in answer
        assert b"X-Injected" not in answer.split(b"\r\n\r\n")[0]
    assert status_of(raw_get(port, b"/")) == 200
    text = log_text(server)
    assert "Traceback" not in text, text[-3000:]
    assert "embedded null byte" not in text


# -- item 17: TLS suites of the HTTPS panel ------------------------------------------


def _rsa_certificate(directory: Path) -> "tuple[Path, Path]":
    # An RSA key, as many operators' certificates have: with it, static-RSA suites are possible at all.
    cert, key = directory / "panel.pem", directory / "panel.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-days", "2", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _handshake(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            first = tls.recv(64)
            assert first.startswith(b"HTTP/1.1 200"), first
            return tls.cipher()[0]


def test_https_panel_refuses_weak_tls_suites(procs, tmp_path):
    cert, key = _rsa_certificate(tmp_path)
    config = tmp_path / "server.toml"
    config.write_text(f'[webServer]\ntls.certFile = "{cert}"\ntls.keyFile = "{key}"\n')
    server, port = start_panel(procs, "--config", str(config))

    for weak in ("AES128-SHA", "AES256-SHA", "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"):
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        old.set_ciphers(weak)
        with pytest.raises(ssl.SSLError):
            _handshake(port, old)
    # The same with the openssl command line tool.
    result = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-cipher", "AES128-SHA"],
                            input=b"", capture_output=True, timeout=30)
    assert result.returncode != 0, result.stdout[-2000:]

    modern = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    modern.check_hostname, modern.verify_mode = False, ssl.CERT_NONE
    assert _handshake(port, modern).startswith("TLS_")  # TLS 1.3
    modern.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _handshake(port, modern).startswith("ECDHE-RSA-")
    assert "without TLS" not in log_text(server)
