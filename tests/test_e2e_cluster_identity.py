"""
End to end: two ``twistd gotaxy-server`` nodes on one real PostgreSQL, the
second given its certificates by ``gotaxy cluster add-node`` on the first.
A client holding a join token printed by node A connects to node B and is
accepted, pinning nothing else; a server with another CA on the same
database is refused before anything is sent, and says why at its start.
"""

from __future__ import annotations

import re
import shutil

from cryptography import x509

from gotaxy.jointoken import parse_join_token
from gotaxy.tls import fingerprint_of_certificate
from tests.e2e import echo_once, gotaxy_cli, tunnel_port


def test_a_join_token_of_node_a_works_on_node_b_and_another_ca_is_refused(procs, echo, postgres,
                                                                          postgres_template):
    database = postgres.database(template=postgres_template)
    url = postgres.url(database)
    try:
        a = procs.server("--database-url", url, name="a", data_dir="a-data")
        token = parse_join_token(a.token)
        ca = fingerprint_of_certificate(x509.load_pem_x509_certificate((a.data_dir / "tls" / "ca.pem").read_bytes()))
        assert token is not None and token.pin == ca

        out = gotaxy_cli("--data-dir", str(a.data_dir), "cluster", "add-node", "localhost", "--address",
                         "127.0.0.1", "--out", str(procs.workdir / "b-data" / "tls"))
        assert f"signed by the cluster CA {ca}" in out
        for node in ("b-data", "stranger-data"):  # servers sharing a database share the notification key
            (procs.workdir / node).mkdir(mode=0o700, exist_ok=True)
            shutil.copy(a.data_dir / "notify.key", procs.workdir / node / "notify.key")
        b = procs.server("--database-url", url, name="b", data_dir="b-data")
        assert b.token is None  # no first start: node A made the store's token and secrets
        assert b.fingerprint != a.fingerprint
        b.wait_for(rf"listening for clients on 127\.0\.0\.1:{b.port} \(TLS, certificate {b.fingerprint}, CA {ca}\)")
        assert "The store's join tokens pin" not in b.output()

        client = procs.client(b, f"echo=tcp:127.0.0.1:{echo.port}", token=a.token, pin=False, name="on-b")
        assert echo_once(tunnel_port(client, "echo"), b"node b") == b"node b"
        b.wait_for(r"client default connected")
        assert "first use" not in client.output()

        # A join token made on node B's side of the store (the gotaxy command) pins the same CA.
        made = gotaxy_cli("--database-url", url, "token", "create", "laptop")
        laptop = re.search(r"token for client 'laptop' \(shown only now\): (\S+)", made).group(1)
        assert parse_join_token(laptop).pin == ca
        second = procs.client(a, f"echo=tcp:127.0.0.1:{echo.port}", token=laptop, pin=False, name="laptop")
        assert echo_once(tunnel_port(second, "echo"), b"node a") == b"node a"

        # A server with a CA of its own on the same database: told at its start, refused by the client.
        stranger = procs.server("--database-url", url, name="stranger", data_dir="stranger-data")
        stranger.wait_for(rf"The store's join tokens pin {ca}, but this server's TLS identity is SHA256:")
        stranger_ca, stranger_leaf = (
            fingerprint_of_certificate(x509.load_pem_x509_certificate((stranger.data_dir / "tls" / f).read_bytes()))
            for f in ("ca.pem", "server.pem"))
        refused = procs.client(stranger, f"echo=tcp:127.0.0.1:{echo.port}", token=a.token, pin=False,
                               name="refused")
        assert refused.wait_exit(30) == 2
        text = refused.output()
        assert (f"presented certificate {stranger_leaf} issued by {stranger_ca}, but the join token pins "
                f"{ca}; the token was made for another server or cluster, or someone is intercepting the "
                f"connection, so nothing was sent") in text, text
        assert token.secret not in text
        stranger.wait_for(r"connection from 127\.0\.0\.1:\d+ closed before login")
        assert "login failed" not in stranger.output()
    finally:
        procs.cleanup()
        postgres.drop(database)
