"""
A certificate authority run with the ``openssl`` command line, in a
directory of the test's own, for tests of client certificates made the way
frp's documentation makes them (not by Gotaxy): ``openssl req`` for the CA
and each key, ``openssl ca`` to sign, so that a certificate may be given
any validity, also one in the past.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Optional, Tuple

import pytest

_CONFIG = """\
[ca]
default_ca = ca_default

[ca_default]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/issued
certificate = {dir}/ca.pem
private_key = {dir}/ca.key
rand_serial = yes
default_md = sha256
default_days = 30
policy = policy_any
unique_subject = no
x509_extensions = client_ext
copy_extensions = none

[policy_any]
commonName = supplied

[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def need_openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl command is not installed; these tests make certificates with it")
    return path


class OpenSSLCA:
    """A CA in ``directory``: ``ca.pem``, ``ca.key``; ``client`` signs a new key's certificate."""

    def __init__(self, directory: Path, subject: str = "/CN=Test client CA") -> None:
        self.openssl = need_openssl()
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "issued").mkdir(exist_ok=True)
        (directory / "index.txt").write_text("")
        self.ca_file = directory / "ca.pem"
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", str(directory / "ca.key"), "-out", str(self.ca_file), "-subj", subject, "-days", "30")

    def _run(self, *args: str) -> str:
        done = subprocess.run([self.openssl, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"openssl {' '.join(args)} failed: {done.stderr}"
        return done.stdout

    def client(self, name: str, start: Optional[str] = None, end: Optional[str] = None,
               usage: str = "clientAuth") -> Tuple[Path, Path]:
        """
        A key and a certificate with CN ``name`` (``start`` / ``end`` as
        ``YYYYMMDDHHMMSSZ``, default 30 days from now), extended key usage
        ``usage``; returns (certificate file, key file).
        """
        config = self.dir / f"{name}-{usage}.cnf"
        config.write_text(_CONFIG.format(dir=self.dir, usage=usage))
        key, csr, cert = (self.dir / f"{name}{suffix}" for suffix in (".key", ".csr", ".pem"))
        self._run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        dates = []
        if start is not None:
            dates += ["-startdate", start]
        if end is not None:
            dates += ["-enddate", end]
        self._run("ca", "-batch", "-notext", "-config", str(config), "-in", str(csr), "-out", str(cert), *dates)
        return cert, key

    def serial(self, cert: Path) -> str:
        """The serial as ``openssl x509 -serial`` prints it."""
        return self._run("x509", "-serial", "-noout", "-in", str(cert)).strip().split("=", 1)[1]
