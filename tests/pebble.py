"""
Let's Encrypt's test CA (Debian's ``pebble``) for the ACME tests, started
by the test suite itself on loopback.

``AcmeTestCA`` starts two programs in a temporary directory:

* ``dnsmasq`` on a free UDP port of 127.0.0.1, answering 127.0.0.1 for
  every name under ``gotaxy.test`` (and nothing else: no upstream, no
  /etc/hosts), so Pebble's validation reaches the test's HTTP-01 server on
  loopback and never leaves the machine;
* ``pebble`` with ``-dnsserver`` pointing at that dnsmasq, its directory
  and management API on 127.0.0.1 (HTTPS, with a certificate from a CA the
  test makes: ``ca_file`` trusts it), validating HTTP-01 on ``http_port``.

Pebble makes a new root on every start: ``issuing_root()`` fetches it, for
clients (curl, Chromium) that must trust what Pebble issued.  Pebble's
certificates are valid for years (this version has no setting to shorten
them): the renewal test sets ``acme.renewBefore`` beyond that instead.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e import free_port

HOW_TO_GET_IT = "the ACME tests need Debian's pebble and dnsmasq packages (apt-get install pebble dnsmasq)"

#: The test names' domain; dnsmasq answers 127.0.0.1 for it and everything under it.
TEST_DOMAIN = "gotaxy.test"


def available() -> bool:
    return bool(shutil.which("pebble") and (shutil.which("dnsmasq") or os.path.exists("/usr/sbin/dnsmasq")))


def _dnsmasq() -> str:
    return shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def _write_listener_certificate(directory: str) -> str:
    """A CA and a certificate for 127.0.0.1/localhost signed by it; returns the CA's file."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gotaxy test pebble listener CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    with open(os.path.join(directory, "listener.key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(os.path.join(directory, "listener.pem"), "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    ca_file = os.path.join(directory, "listener-ca.pem")
    with open(ca_file, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    return ca_file


def _wait_tcp(port: int, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a process that is starting; there is no event to wait on
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:g} s")


class AcmeTestCA:
    """See the module docstring.  ``close()`` stops both programs and removes the directory."""

    def __init__(self, http_port: int, tls_port: Optional[int] = None) -> None:
        self.http_port = http_port
        #: where Pebble validates TLS-ALPN-01
        self.tls_port = tls_port if tls_port is not None else free_port()
        self.directory = tempfile.mkdtemp(prefix="gotaxy-pebble-")
        self.ca_file = _write_listener_certificate(self.directory)
        self.port = free_port()
        self.management_port = free_port()
        self.dns_port = free_port()
        self._processes: list = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _start(self) -> None:
        log = open(os.path.join(self.directory, "dnsmasq.log"), "wb")
        dnsmasq = subprocess.Popen(
            [_dnsmasq(), "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
             "--no-poll", "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.dns_port}",
             f"--address=/{TEST_DOMAIN}/127.0.0.1", "--user=root" if os.geteuid() == 0 else "--user=",
             f"--pid-file={os.path.join(self.directory, 'dnsmasq.pid')}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        self._processes.append(dnsmasq)
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": os.path.join(self.directory, "listener.pem"),
            "privateKey": os.path.join(self.directory, "listener.key"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        config_file = os.path.join(self.directory, "pebble.json")
        with open(config_file, "w") as f:
            json.dump(config, f)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        env.pop("PEBBLE_VA_ALWAYS_VALID", None)
        self.log_file = os.path.join(self.directory, "pebble.log")
        pebble = subprocess.Popen(
            ["pebble", "-config", config_file, "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            stdout=open(self.log_file, "wb"), stderr=subprocess.STDOUT, env=env, cwd=self.directory,
        )
        self._processes.append(pebble)
        _wait_tcp(self.port, pebble, 20.0, "pebble")
        _wait_tcp(self.management_port, pebble, 20.0, "pebble's management API")
        if dnsmasq.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {open(os.path.join(self.directory, 'dnsmasq.log')).read()}")

    def issuing_root(self) -> bytes:
        """The root Pebble signs with (PEM), made afresh at its start."""
        context = ssl.create_default_context(cafile=self.ca_file)
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return response.read()

    def log(self) -> str:
        try:
            with open(self.log_file, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        self._processes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


def start(http_port: int) -> Optional[AcmeTestCA]:
    """A running test CA validating HTTP-01 on ``http_port``, or None when pebble or dnsmasq is missing."""
    if not available():
        return None
    return AcmeTestCA(http_port)
