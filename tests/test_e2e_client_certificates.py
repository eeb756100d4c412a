"""
End to end, with real ``twistd`` processes on loopback: client certificates
(``gotaxy.tls.clients``, ``gotaxy.server.certificates``).

* certificates made with the ``openssl`` command line: the right one
  tunnels, one from another CA, an expired one and none at all are each
  refused with a sentence in the client's log that says what to do, and a
  line in the server's log that says why;
* ``gotaxy cert issue`` writes a key and certificate (0600) that log in as
  the certificate's name, ``gotaxy cert revoke`` cuts the live session off
  within seconds on every server process sharing the database, and the
  client is told why.
"""

from __future__ import annotations

import re
import shutil
import stat
import time
from pathlib import Path

import pytest

from tests.e2e import echo_once, gotaxy_cli, tunnel_port
from tests.openssl_ca import OpenSSLCA

pytestmark = pytest.mark.e2e


def cert_server(procs, ca_file: Path, method: str = "certificate", name: str = "server", data_dir: str = "server-data",
                extra: str = ""):
    config = procs.workdir / f"{name}.toml"
    config.write_text(f'auth.method = "{method}"\ntransport.tls.trustedCaFile = "{ca_file}"\n{extra}')
    return procs.server("--config", str(config), name=name, data_dir=data_dir)


def cert_client(procs, server, cert: Path, key: Path, *tunnels: str, name: str = "client", token: str = ""):
    argv = ["--server", f"127.0.0.1:{server.port}", "--fingerprint", server.fingerprint,
            "--data-dir", str(procs.workdir / f"{name}-data"), "--cert", str(cert), "--key", str(key)]
    if token:
        argv += ["--token", token]
    for tunnel in tunnels:
        argv += ["--tunnel", tunnel]
    return procs.twistd("gotaxy-client", argv, name)


def test_openssl_certificates_good_wrong_ca_expired_and_none(procs, echo, tmp_path):
    ours = OpenSSLCA(tmp_path / "ours")
    theirs = OpenSSLCA(tmp_path / "theirs", subject="/CN=Another CA")
    server = cert_server(procs, ours.ca_file)

    good = cert_client(procs, server, *ours.client("laptop"), f"echo=tcp:127.0.0.1:{echo.port}")
    assert echo_once(tunnel_port(good, "echo"), b"by certificate") == b"by certificate"
    server.wait_for(r"client laptop connected")

    wrong = cert_client(procs, server, *theirs.client("mallory"), f"echo=tcp:127.0.0.1:{echo.port}", name="wrong")
    assert wrong.wait_exit(30) == 2
    assert re.search(r"the server does not trust the client certificate 'mallory' \(serial [0-9A-F]+\), issued by "
                     r"'CN=Another CA'.*it was not issued by the CA in the server's transport.tls.trustedCaFile; "
                     r"ask the server's operator for a certificate", wrong.output()), wrong.output()
    server.wait_for(r"login failed from 127\.0\.0\.1:\d+: client certificate refused: certificate 'mallory'.*"
                    r"not issued by a CA in")

    expired = cert_client(procs, server, *ours.client("old", start="20200101000000Z", end="20200102000000Z"),
                          f"echo=tcp:127.0.0.1:{echo.port}", name="expired")
    assert expired.wait_exit(30) == 2
    assert "the client certificate 'old'" in expired.output() and "expired on 2020-01-02" in expired.output()
    assert "expired on 2020-01-02" in expired.output().split("the server refused our login")[0], \
        "the client warns at start that its own certificate has expired"
    server.wait_for(r"client certificate refused: certificate 'old' \(serial [0-9A-F]+\) expired on 2020-01-02")

    none = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", token="some-token", name="none")
    assert none.wait_exit(30) == 2
    assert "this server requires a client certificate and none was sent" in none.output()
    server.wait_for(r"client certificate refused: no client certificate sent")

    # The good one kept its session throughout.
    assert echo_once(tunnel_port(good, "echo"), b"still here") == b"still here"


def test_issued_certificate_logs_in_and_revocation_cuts_it_off_on_every_server(procs, echo, tmp_path):
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    # Server a makes the CA at its first start; b, on the same database, trusts it too.
    a_dir = tmp_path / "a-data"
    a = procs.server("--database-url", url, name="a0", data_dir="a-data")
    a.stop()
    ca = a_dir / "tls" / "ca.pem"
    a = cert_server(procs, ca, name="a", data_dir="a-data", extra=f'database.url = "{url}"\n')
    (tmp_path / "b-data").mkdir(mode=0o700)
    shutil.copy(a_dir / "notify.key", tmp_path / "b-data" / "notify.key")
    b = cert_server(procs, ca, name="b", data_dir="b-data", extra=f'database.url = "{url}"\n')

    out = gotaxy_cli("--data-dir", str(a_dir), "--database-url", url, "cert", "issue", "laptop",
                     "--out", str(tmp_path), "--server", f"127.0.0.1:{b.port}")
    serial = re.search(r"serial ([0-9A-F]+), valid until", out).group(1)
    cert, key = tmp_path / "laptop.pem", tmp_path / "laptop.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(cert.stat().st_mode) == 0o600
    assert f"--server 127.0.0.1:{b.port} --cert laptop.pem --key laptop.key" in out

    client = cert_client(procs, b, cert, key, f"echo=tcp:127.0.0.1:{echo.port}", name="laptop")
    assert echo_once(tunnel_port(client, "echo"), b"issued") == b"issued"
    b.wait_for(r"client laptop connected")

    # Revoked in a shell, against the store: b (another process) cuts the session off within seconds.
    revoked_at = time.monotonic()
    gotaxy_cli("--database-url", url, "cert", "revoke", serial)
    b.wait_for(rf"client laptop: client certificate revoked \(serial {serial}\); disconnecting", timeout=15)
    assert time.monotonic() - revoked_at < 15
    # The client heard why, tried again, and stopped: retrying cannot help.
    assert client.wait_exit(30) == 2
    assert re.search(rf"server closed the connection: the client certificate 'laptop' \(serial {serial}\) was "
                     r"revoked on the server", client.output()), client.output()
    assert re.search(r"the server refused our login: the client certificate 'laptop' .* was revoked", client.output())
    b.wait_for(r"client certificate refused: certificate 'laptop' .* is revoked")
    # a, which the client never used, refuses it too.
    again = cert_client(procs, a, cert, key, f"echo=tcp:127.0.0.1:{echo.port}", name="again")
    assert again.wait_exit(30) == 2 and "was revoked on the server" in again.output()
