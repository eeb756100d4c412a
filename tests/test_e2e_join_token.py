"""
End to end: join tokens (``gtx1.PIN.SECRET``) let a client given only a
token check the server before it sends anything; old-style tokens still
trust on first use.
"""

from __future__ import annotations

import re

from cryptography import x509

from gotaxy.jointoken import parse_join_token
from gotaxy.store import LOGIN_FAILED, Store, default_url
from gotaxy.tls import fingerprint_of_certificate
from tests.e2e import echo_once, gotaxy_cli, tunnel_port


def ca_fingerprint(server) -> str:
    return fingerprint_of_certificate(x509.load_pem_x509_certificate((server.data_dir / "tls" / "ca.pem").read_bytes()))


def test_a_client_given_only_the_join_token_checks_the_server_and_tunnels(procs, echo):
    server = procs.server()
    token = parse_join_token(server.token)
    assert token is not None and token.pin == ca_fingerprint(server)
    # The command the banner prints needs nothing but the token.
    command = re.search(r"twistd -n gotaxy-client .*?--tunnel", server.output(), re.S).group(0)
    assert "--fingerprint" not in command and f"--token {server.token}" in command

    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", pin=False)
    assert echo_once(tunnel_port(client, "echo"), b"pinned by the token") == b"pinned by the token"
    assert "first use" not in client.output()
    assert not (procs.workdir / "client-data" / "known_servers").exists()

    # gotaxy token create prints join tokens too.
    out = gotaxy_cli("--data-dir", str(server.data_dir), "token", "create", "laptop")
    laptop = re.search(r"token for client 'laptop' \(shown only now\): (\S+)", out).group(1)
    assert parse_join_token(laptop).pin == token.pin
    second = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", token=laptop, pin=False, name="laptop")
    assert echo_once(tunnel_port(second, "echo"), b"laptop") == b"laptop"
    server.wait_for(r"client laptop connected")


def test_a_join_token_for_another_server_is_refused_before_anything_is_sent(procs, echo):
    ours = procs.server(name="ours", data_dir="ours-data")
    other = procs.server(name="other", data_dir="other-data")
    # Pointed at the other server (a mistake, or someone answering in its place).
    client = procs.client(other, f"echo=tcp:127.0.0.1:{echo.port}", token=ours.token, pin=False)
    assert client.wait_exit(30) == 2
    out = client.output()
    assert (
        f"presented certificate {other.fingerprint} issued by {ca_fingerprint(other)}, but the join token "
        f"pins {ca_fingerprint(ours)}" in out
    ), out
    secret = parse_join_token(ours.token).secret
    assert secret not in out

    # The other server saw a TLS handshake and no log-in at all.
    other.wait_for(r"connection from 127\.0\.0\.1:\d+ closed before login")
    assert "login failed" not in other.output()
    store = Store(default_url(str(other.data_dir)))
    try:
        assert list(store.db["events"].find(type=LOGIN_FAILED)) == []
    finally:
        store.close()


def test_an_old_style_token_still_trusts_on_first_use(procs, echo):
    server = procs.server()
    old_style = parse_join_token(server.token).secret
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", token=old_style, pin=False)
    assert echo_once(tunnel_port(client, "echo"), b"tofu") == b"tofu"
    client.wait_for(rf"Trusted server 127\.0\.0\.1:{server.port} on first use; its certificate fingerprint is "
                    rf"{server.fingerprint}")
    assert server.fingerprint in (procs.workdir / "client-data" / "known_servers").read_text()


def test_a_malformed_join_token_stops_the_client_with_one_sentence(procs):
    server = procs.server()
    client = procs.client(server, "echo=tcp:127.0.0.1:9", token=server.token[:30], pin=False)
    assert client.wait_exit(30) != 0
    assert ("'auth.token' (--token): the join token is cut short: it must read gtx1.<server pin>.<secret>; "
            "copy the whole token the server printed") in client.output()
