"""
The container files: docker-compose.yml publishes the panel and console on
the host's loopback only and hands the client its token as a secret; no
token is in the compose file, the image or the client's command line; and the
command lines the image runs (the Dockerfile's ENTRYPOINT with its CMD or
with the compose file's commands) start a real server and client.

There is no Docker engine on the test machines, so the commands run here
with the container's paths moved to a temporary directory and its
all-addresses binds moved to another loopback address, 127.0.0.2 (which
proves the flags reach the listeners: the defaults are 127.0.0.1).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.e2e import ROOT, Process, free_port, twistd

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
TOKEN_SECRET = "/run/secrets/gotaxy_token"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile_array(instruction: str) -> "list[str]":
    (line,) = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith(instruction + " ")]
    return json.loads(line[len(instruction) + 1:])


def in_test(argv: "list[str]", tmp_path: Path, **paths: str) -> "list[str]":
    """A container command line as it runs here: our twistd, paths moved, 0.0.0.0 made 127.0.0.2."""
    moved = {"/data": str(tmp_path / "data"), **paths}
    out = []
    for word in argv:
        word = moved.get(word, word)
        out.append({"twistd": twistd(), "0.0.0.0": "127.0.0.2"}.get(word, word))
    return out


def test_compose_file_has_server_and_client_with_loopback_panel_and_secret_token():
    services = compose()["services"]
    assert set(services) == {"server", "client"}
    ports = services["server"]["ports"]
    assert "7000:7000" in ports
    for inside in (7500, 7022):
        (published,) = [p for p in ports if p.endswith(f":{inside}")]
        assert published == f"127.0.0.1:{inside}:{inside}", "the panel and the console must stay on the host's loopback"
    server_command = services["server"]["command"]
    assert server_command[server_command.index("--web-addr") + 1] == "0.0.0.0"
    assert server_command[server_command.index("--console-addr") + 1] == "0.0.0.0"
    allowed = server_command[server_command.index("--allow-ports") + 1]
    assert f"{allowed}:{allowed}" in ports, "publish the tunnel ports the server allows"

    client = services["client"]
    assert client["secrets"] == ["gotaxy_token"]
    assert set(compose()["secrets"]["gotaxy_token"]) == {"file"}
    command = client["command"]
    assert command[command.index("--token-file") + 1] == TOKEN_SECRET
    assert "--token" not in command and "environment" not in client


def test_no_token_in_the_compose_file_the_image_or_the_example():
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert "secrets/" in dockerignore, "the secrets directory must not be copied into the image"
    for path in (COMPOSE, DOCKERFILE, ROOT / "contrib" / "docker" / "client.toml"):
        text = path.read_text()
        assert not re.search(r"gtx_[A-Za-z0-9_-]{8,}", text), path
        assert not re.search(r"^\s*(auth\.)?token\s*=", text, re.M), path
        assert not re.search(r"--token[ =](?!-file)", text), path
    assert "7500" in DOCKERFILE.read_text() and dockerfile_array("ENTRYPOINT")[0] == "twistd"


@pytest.mark.parametrize("source", ["dockerfile", "compose"])
def test_the_containers_server_command_starts_with_panel_and_console_on_the_given_address(procs, tmp_path, source):
    command = dockerfile_array("CMD") if source == "dockerfile" else compose()["services"]["server"]["command"]
    web, console, control = free_port("127.0.0.2"), free_port("127.0.0.2"), free_port()
    argv = in_test(dockerfile_array("ENTRYPOINT") + command, tmp_path)
    # Loopback ports of our own choosing (later flags win); the addresses stay as the command gives them.
    argv += ["--bind-addr", "127.0.0.1", "--bind-port", str(control), "--web-port", str(web),
             "--console-port", str(console)]
    server = Process(argv, tmp_path, f"container-{source}")
    procs.started.append(server)
    server.wait_for(rf"SSH operator console listening on 127\.0\.0\.2:{console}")
    server.wait_for(rf"listening for clients on 127\.0\.0\.1:{control}")
    with urllib.request.urlopen(f"http://127.0.0.2:{web}/api/v0.1/health", timeout=10) as answer:
        assert json.load(answer)["status"] == "ok"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v0.1/health", timeout=10)
    assert (tmp_path / "data" / "gotaxy.db").exists()


def test_the_containers_client_command_logs_in_with_the_secret(procs, tmp_path, echo):
    allowed = free_port()
    server = procs.server("--allow-ports", str(allowed))
    secret = tmp_path / "gotaxy_token"
    secret.write_text(server.token + "\n")
    secret.chmod(0o444)
    config = tmp_path / "client.toml"
    config.write_text(
        f'serverAddr = "127.0.0.1"\nserverPort = {server.port}\ntransport.tls.fingerprint = "{server.fingerprint}"\n'
        f'[[proxies]]\nname = "echo"\nlocalPort = {echo.port}\nremotePort = {allowed}\n'
    )
    command = compose()["services"]["client"]["command"]
    argv = in_test(dockerfile_array("ENTRYPOINT") + command, tmp_path,
                   **{TOKEN_SECRET: str(secret), "/etc/gotaxy/client.toml": str(config)})
    client = Process(argv, tmp_path, "container-client")
    procs.started.append(client)
    client.wait_for(rf"tunnel echo up at 127\.0\.0\.1:{allowed}")
    assert server.token not in " ".join(argv) and server.token not in client.output()
