"""
Client certificates (``gotaxy.tls.clients``, ``gotaxy.server.certificates``,
``gotaxy.store.client_certs``): what a client with or without the right
certificate sees, and what the server does about it, on an in-memory
network with real TLS.  Certificates come from Gotaxy's own CA
(``issue_client_certificate``) and from the ``openssl`` command line
(``tests/openssl_ca.py``); expiry and not-yet-valid are also shown on the
server's clock.
"""

from __future__ import annotations

import datetime
import json
import re
import os
import stat
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from gotaxy.config import AccessSettings, ConfigError, ServerConfig, TransportSettings, TunnelSpec
from gotaxy.config.files import parse_client_config, parse_server_config
from gotaxy.events import CLIENT_CERT_REVOKED, LOGIN_FAILED
from gotaxy.store import client_certs
from gotaxy.testing import EchoFactory, GotaxyClient, GotaxyServer, LogCapture, MemoryNetwork, server_config
from gotaxy.tls.clients import (
    ClientCertificateRefused,
    ClientCertificateVerifier,
    issue_client_certificate,
    normalise_serial,
    serial_text,
)
from tests.openssl_ca import OpenSSLCA

ATTACKER = "198.51.100.7"


def write_issued(directory: Path, issued) -> tuple:
    cert, key = directory / f"{issued.name}.pem", directory / f"{issued.name}.key"
    cert.write_bytes(issued.certificate_pem)
    key.write_bytes(issued.key_pem)
    return str(cert), str(key)


@pytest.fixture
def gotaxy_ca(tmp_path):
    """Gotaxy's CA in a data directory's tls/ (as the server makes it); returns (tls dir, ca.pem)."""
    tls = tmp_path / "data" / "tls"
    issue_client_certificate(str(tls), "warm-up")  # creates ca.pem / ca.key
    return tls, str(tls / "ca.pem")


def cert_server(network, ca_file, method="token", **settings):
    config = server_config(auth_method=method, transport=TransportSettings(tls_trusted_ca_file=ca_file), **settings)
    return GotaxyServer(network, config)


def test_certificate_alone_logs_in_under_the_certificates_name(gotaxy_ca, tmp_path):
    tls, ca = gotaxy_ca
    network = MemoryNetwork()
    server = cert_server(network, ca, method="certificate")
    cert, key = write_issued(tmp_path, issue_client_certificate(str(tls), "laptop"))
    network.listenTCP(8080, EchoFactory())
    client = GotaxyClient(network, None, tunnels=[TunnelSpec(name="web", local_port=8080)], tls_cert_file=cert,
                          tls_key_file=key, auth_method="certificate").start()
    assert client.fatal == []
    assert server.session("laptop") is not None
    assert network.exchange(client.up["web"], b"through") == b"through"
    client.stop()
    server.shutdown()


def test_certificate_and_token_need_both_and_the_same_name(gotaxy_ca, tmp_path):
    tls, ca = gotaxy_ca
    network = MemoryNetwork()
    server = cert_server(network, ca, token="shared-secret")
    cert, key = write_issued(tmp_path, issue_client_certificate(str(tls), "alice"))
    # The right token and certificate.
    client = GotaxyClient(network, server.create_token("alice"), tls_cert_file=cert, tls_key_file=key).start()
    assert client.fatal == [] and server.session("alice") is not None
    client.stop()
    # A certificate without a token: the token is still asked for.
    client = GotaxyClient(network, "not-a-token", tls_cert_file=cert, tls_key_file=key).start()
    assert "invalid, expired or revoked token" in client.fatal[0]
    # Another client's token.
    client = GotaxyClient(network, server.create_token("bob"), tls_cert_file=cert, tls_key_file=key).start()
    assert "the token is client 'bob''s but the client certificate names 'alice'" in client.fatal[0]
    # The shared token: the certificate names the client (no shared: prefix).
    client = GotaxyClient(network, "shared-secret", user="whatever", tls_cert_file=cert, tls_key_file=key,
                          instance_id="other").start()
    assert client.fatal == [] and server.session("alice") is not None
    client.stop()
    # A token without a certificate.
    client = GotaxyClient(network, server.create_token("carol")).start()
    assert "this server requires a client certificate and none was sent" in client.fatal[0]
    assert "gotaxy cert issue NAME" in client.fatal[0] and "transport.tls.certFile" in client.fatal[0]
    server.shutdown()


@pytest.mark.e2e  # runs the openssl command
def test_openssl_certificates_each_refusal_says_why_on_both_sides(tmp_path):
    ours = OpenSSLCA(tmp_path / "ours")
    theirs = OpenSSLCA(tmp_path / "theirs", subject="/CN=Someone else")
    network = MemoryNetwork()
    server = cert_server(network, str(ours.ca_file), method="certificate",
                         access=AccessSettings(ban_token_failures=100, ban_exempt=()))
    good = ours.client("alice")
    cases = {
        "untrusted": (theirs.client("mallory"), "it was not issued by the CA in the server's "
                                                "transport.tls.trustedCaFile"),
        "expired": (ours.client("old", start="20200101000000Z", end="20200102000000Z"), "expired on 2020-01-02"),
        "not_yet_valid": (ours.client("early", start="20990101000000Z", end="20990102000000Z"),
                          "is not valid yet (from 2099-01-01"),
        "wrong_usage": (ours.client("web", usage="serverAuth"), "is not for client authentication"),
    }
    seen = []
    server.core.events.subscribe(seen.append)
    with LogCapture() as logs:
        client = GotaxyClient(network, None, tls_cert_file=str(good[0]), tls_key_file=str(good[1]),
                              auth_method="certificate").start()
        assert client.fatal == [] and server.session("alice") is not None
        client.stop()
        for reason, ((cert, key), told) in cases.items():
            network.source = ATTACKER
            client = GotaxyClient(network, None, tls_cert_file=str(cert), tls_key_file=str(key),
                                  auth_method="certificate").start()
            assert len(client.fatal) == 1 and told in client.fatal[0], (reason, client.fatal)
            assert "check the token" not in client.fatal[0]
            assert server.core.certificates.refusals[reason] == 1
        # A client without one.
        client = GotaxyClient(network, "some-token").start()
        assert "requires a client certificate" in client.fatal[0]
    assert server.core.certificates.refusals["missing"] == 1
    # The server's log and events name the reason; each counts towards a ban like a wrong token.
    assert logs.matching("client certificate refused: certificate 'mallory'")
    assert any("not issued by a CA in" in line for line in logs.matching("mallory"))
    assert logs.matching("client certificate refused: certificate 'old'")
    refused = [e.detail for e in seen if e.type == LOGIN_FAILED]
    assert len(refused) == 5 and all("client certificate refused" in d for d in refused)
    assert server.core.access.failures.add("token", ATTACKER) == 6  # the five above, and this one
    # /metrics counts them by reason.
    from gotaxy.server.metrics import EventCounts, GotaxyCollector

    # (By its suffix: conftest would take the metric's full name for the gotaxy command, a process.)
    (family,) = [m for m in GotaxyCollector(server.core, EventCounts()).collect()
                 if m.name.endswith("_client_certificate_refusals")]
    counts = {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert counts == {"missing": 1, "untrusted": 1, "expired": 1, "not_yet_valid": 1, "revoked": 0, "bad_name": 0,
                      "wrong_usage": 1}
    server.shutdown()


def test_refused_certificates_ban_the_source_like_wrong_tokens(gotaxy_ca):
    _, ca = gotaxy_ca
    network = MemoryNetwork()
    server = cert_server(network, ca, method="certificate", access=AccessSettings(ban_token_failures=3,
                                                                                  ban_exempt=()))
    network.source = ATTACKER
    for _ in range(3):
        GotaxyClient(network, "x").start().stop()
    assert [b.address for b in server.core.access.in_force()] == [ATTACKER]
    assert "client certificate: missing" in server.core.access.in_force()[0].reason
    server.shutdown()


def test_expiry_and_validity_follow_the_servers_clock(gotaxy_ca, tmp_path):
    tls, ca = gotaxy_ca
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    issued = issue_client_certificate(str(tls), "alice", days=10, now=now)
    cert, key = write_issued(tmp_path, issued)
    for moment, told in ((now - datetime.timedelta(days=1), "is not valid yet"),
                         (now + datetime.timedelta(days=11), "expired on 2030-01-11"),
                         (now + datetime.timedelta(days=1), None)):
        network = MemoryNetwork(start=moment.timestamp())
        server = cert_server(network, ca, method="certificate")
        with LogCapture() as logs:
            client = GotaxyClient(network, None, tls_cert_file=cert, tls_key_file=key,
                                  auth_method="certificate").start()
            if told is None:
                assert client.fatal == [] and server.session("alice") is not None
                # A live session whose certificate expires is cut off at the next check.
                network.rightNow += 10 * 86400  # the clock only: no timer is run by it
                Deferred.fromCoroutine(server.core.certificates.kick())
                network.flush()
                assert server.session("alice") is None
                assert logs.matching("client certificate expired")
            else:
                assert told in client.fatal[0]
        client.stop()
        server.shutdown()


def test_a_revoked_certificate_is_cut_off_at_once_and_refused_after(gotaxy_ca, tmp_path):
    tls, ca = gotaxy_ca
    network = MemoryNetwork()
    server = cert_server(network, ca, method="certificate")
    issued = issue_client_certificate(str(tls), "alice")
    client_certs.record_issued(server.store.store, issued, "test", network.seconds())
    cert, key = write_issued(tmp_path, issued)
    with LogCapture() as logs:
        client = GotaxyClient(network, None, tls_cert_file=cert, tls_key_file=key, auth_method="certificate").start()
        assert server.session("alice") is not None
        # Revoked as another process (gotaxy cert revoke) would: a row and its event on the bus.
        revoked = client_certs.revoke(server.store.store, "alice", "operator test", network.seconds())
        assert [r.serial for r in revoked] == [issued.serial]
        for event in server.store.store.take_recorded():
            server.core.events.publish(event)
        network.flush()
        assert server.session("alice") is None
        # The client was told why, then, reconnecting, refused for good.
        network.pass_time(5)
        network.flush()
    assert logs.matching(f"was revoked on the server")
    assert any("was revoked on the server" in line for line in client.fatal)
    assert server.core.certificates.refusals["revoked"] == 1
    client.stop()
    server.shutdown()


@pytest.mark.e2e  # runs the openssl command
def test_revoking_by_serial_also_takes_certificates_made_elsewhere(tmp_path):
    ca = OpenSSLCA(tmp_path / "ca")
    network = MemoryNetwork()
    server = cert_server(network, str(ca.ca_file), method="certificate")
    cert, key = ca.client("printer")
    serial = ca.serial(cert)
    revoked = client_certs.revoke(server.store.store, serial.lower(), "operator test", network.seconds())
    assert [r.serial for r in revoked] == [serial]
    client = GotaxyClient(network, None, tls_cert_file=str(cert), tls_key_file=str(key),
                          auth_method="certificate").start()
    assert "was revoked on the server" in client.fatal[0]
    with pytest.raises(client_certs.CertificateNotFound):
        client_certs.revoke(server.store.store, "nobody", "operator test", network.seconds())
    server.shutdown()


def test_issued_certificates_are_client_certificates_of_the_ca(gotaxy_ca):
    tls, ca = gotaxy_ca
    issued = issue_client_certificate(str(tls), "alice", days=30)
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert ClientCertificateVerifier(ca).judge([leaf]).name == "alice"
    assert issued.serial == serial_text(leaf.serial_number) and b"PRIVATE KEY" in issued.key_pem
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(ValueError, match="a client name must be"):
        issue_client_certificate(str(tls), "bad name\n")
    assert normalise_serial("0a:bc") == "0ABC" and normalise_serial("zz") is None


def test_config_keys_and_their_errors(tmp_path):
    config = parse_server_config({"auth": {"method": "certificate"},
                                  "transport": {"tls": {"trustedCaFile": "ca.pem"}}}, "server.toml").config
    assert config.auth_method == "certificate" and config.transport.tls_trusted_ca_file == "ca.pem"
    with pytest.raises(ConfigError, match="'transport.tls.trustedCaFile' is not set"):
        parse_server_config({"auth": {"method": "certificate"}}, "server.toml")
    client = parse_client_config({"transport": {"tls": {"certFile": "c.pem", "keyFile": "c.key"}}}, "client.toml").config
    assert (client.tls_cert_file, client.tls_key_file) == ("c.pem", "c.key")
    with pytest.raises(ConfigError, match="go together"):
        parse_client_config({"transport": {"tls": {"certFile": "c.pem"}}}, "client.toml")
    with pytest.raises(ConfigError, match="'transport.tls.certFile' and 'transport.tls.keyFile' are not set"):
        parse_client_config({"auth": {"method": "certificate"}}, "client.toml")
    with pytest.raises(ValueError, match="transport.tls.trustedCaFile"):
        ClientCertificateVerifier(str(tmp_path / "missing.pem"))


# -- gotaxy cert issue | list | revoke ------------------------------------------


def gotaxy(capsys, *argv):
    import io

    from gotaxy.cli import main

    out = io.StringIO()
    code = main(list(argv), out=out)
    captured = capsys.readouterr()
    return code, out.getvalue() + captured.out, captured.err


@pytest.fixture
def data_dir(tmp_path):
    from gotaxy.store import Store, default_url

    directory = tmp_path / "data"
    directory.mkdir()
    Store(default_url(str(directory))).close()  # as the server leaves it
    (directory / "server.toml").write_text(
        f'auth.method = "certificate"\ntransport.tls.trustedCaFile = "{directory / "tls" / "ca.pem"}"\n')
    return directory


def test_cert_issue_writes_private_files_that_log_in_and_prints_the_client_config(capsys, data_dir, tmp_path):
    import tomllib

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = gotaxy(capsys, "--data-dir", str(data_dir), "cert", "issue", "laptop", "--out", str(out_dir),
                            "--server", "tunnel.example.com:7001", "--days", "30")
    assert code == 0, err
    cert, key = out_dir / "laptop.pem", out_dir / "laptop.key"
    for path in (cert, key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    serial = re.search(r"serial ([0-9A-F]+), valid until", out).group(1)
    # The printed lines are a client config that parses, and logs in.
    lines = "\n".join(line.strip() for line in out.splitlines() if " = " in line)
    config = parse_client_config(tomllib.loads(lines), "client.toml").config
    assert (config.server_addr, config.server_port, config.auth_method) == ("tunnel.example.com", 7001, "certificate")
    assert config.tls_cert_file == "laptop.pem" and "twistd -n gotaxy-client --server tunnel.example.com:7001" in out
    network = MemoryNetwork()
    server = cert_server(network, str(data_dir / "tls" / "ca.pem"), method="certificate")
    client = GotaxyClient(network, None, tls_cert_file=str(cert), tls_key_file=str(key),
                          auth_method="certificate").start()
    assert client.fatal == [] and server.session("laptop") is not None
    client.stop()
    server.shutdown()
    # Not over an existing file without --force.
    code, _, err = gotaxy(capsys, "--data-dir", str(data_dir), "cert", "issue", "laptop", "--out", str(out_dir))
    assert code == 1 and "exists; choose another directory with --out, or pass --force" in err
    # Listed (never a key), then revoked by serial.
    code, out, _ = gotaxy(capsys, "--data-dir", str(data_dir), "cert", "list", "--json")
    listed = json.loads(out)
    assert [(c["serial"], c["name"], c["status"]) for c in listed] == [(serial, "laptop", "valid")]
    assert "KEY" not in out
    code, out, _ = gotaxy(capsys, "--data-dir", str(data_dir), "cert", "revoke", serial)
    assert code == 0 and f"revoked client certificate {serial} of 'laptop'" in out
    code, out, _ = gotaxy(capsys, "--data-dir", str(data_dir), "cert", "list")
    assert re.search(rf"{serial}\s+laptop .* revoked .* by gotaxy cert revoke", out)
    code, _, err = gotaxy(capsys, "--data-dir", str(data_dir), "cert", "revoke", "laptop")
    assert code == 1 and "revoked already" in err
    code, _, err = gotaxy(capsys, "--data-dir", str(data_dir), "cert", "revoke", "nobody")
    assert code == 1 and "no client certificate is named 'nobody'" in err
    code, _, err = gotaxy(capsys, "--data-dir", str(data_dir), "cert", "issue", "bad/name")
    assert code == 1 and "must be" in err


def test_cert_issue_says_when_the_server_does_not_ask_for_certificates(capsys, data_dir, tmp_path):
    (data_dir / "server.toml").write_text("")
    code, _, err = gotaxy(capsys, "--data-dir", str(data_dir), "cert", "issue", "laptop", "--out", str(tmp_path))
    assert code == 0 and "the server does not ask for client certificates yet: set transport.tls.trustedCaFile" in err


def test_a_certificate_only_client_at_a_server_that_takes_none_is_told_so(gotaxy_ca, tmp_path):
    tls, _ = gotaxy_ca
    cert, key = write_issued(tmp_path, issue_client_certificate(str(tls), "laptop"))
    network = MemoryNetwork()
    server = GotaxyServer(network)  # no transport.tls.trustedCaFile
    client = GotaxyClient(network, None, auth_method="certificate", tls_cert_file=cert, tls_key_file=key).start()
    assert "this server does not take client certificates" in client.fatal[0]
    assert "check the token" not in client.fatal[0]
    server.shutdown()


def test_a_reload_that_changes_the_mode_needs_a_restart_and_changes_nothing(gotaxy_ca, tmp_path):
    import attrs

    tls, ca = gotaxy_ca
    cert, key = write_issued(tmp_path, issue_client_certificate(str(tls), "laptop"))
    network = MemoryNetwork()
    server = cert_server(network, ca, method="certificate")
    changed = attrs.evolve(server.config, auth_method="token")
    Deferred.fromCoroutine(server.core.apply(changed))
    from gotaxy.server.reload import RESTART_REASONS

    assert "auth.method" in RESTART_REASONS and "transport.tls.trustedCaFile" in RESTART_REASONS
    # Still the certificate alone, as started.
    client = GotaxyClient(network, None, auth_method="certificate", tls_cert_file=cert, tls_key_file=key).start()
    assert client.fatal == [] and server.session("laptop") is not None
    client.stop()
    server.shutdown()
