"""
The systemd units in contrib/systemd/: ``systemd-analyze verify`` accepts
them (with this environment's ``twistd`` in place of /opt/gotaxy/bin/twistd),
``systemd-analyze security --offline=yes`` rates both well below its "OK"
bound, and the client's ExecStart line, run as systemd would run it (its
specifiers filled in, the credentials in a directory of their own), logs in
to a real server with the token from the credential.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e import ROOT, Process, free_port, twistd

UNITS = ROOT / "contrib" / "systemd"
VENV_TWISTD = "/opt/gotaxy/bin/twistd"
#: Exposure systemd-analyze may give either unit (0 best, 10 worst; "OK" is below 2.1).
#: docs/operations.md gives the scores reached.
MAX_EXPOSURE = 1.5


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: install Debian's systemd package (it is in .ci/apt-packages)"
    return found


def installed_units(tmp_path: Path) -> "list[Path]":
    """The units as installed: our twistd for the venv's, the client as instance 'home'."""
    paths = []
    for source, name in [("gotaxy-server.service", "gotaxy-server.service"),
                         ("gotaxy-client@.service", "gotaxy-client@home.service")]:
        text = (UNITS / source).read_text()
        assert VENV_TWISTD in text, f"{source} should run the virtual environment's twistd"
        path = tmp_path / name
        path.write_text(text.replace(VENV_TWISTD, twistd()))
        paths.append(path)
    return paths


def unit_settings(name: str) -> "dict[str, list[str]]":
    settings: "dict[str, list[str]]" = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_analyze_verify_accepts_both_units(tmp_path):
    units = installed_units(tmp_path)
    result = subprocess.run([systemd_analyze(), "verify", *map(str, units)], capture_output=True, text=True,
                            timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "gotaxy" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_systemd_analyze_verify_accepts_the_socket_unit(tmp_path):
    # Socket activation (docs/operations.md): verified beside the service it starts.
    server, _ = installed_units(tmp_path)
    socket_unit = tmp_path / "gotaxy-server.socket"
    socket_unit.write_text((UNITS / "gotaxy-server.socket").read_text())
    assert "FileDescriptorName=control" in socket_unit.read_text()
    result = subprocess.run([systemd_analyze(), "verify", str(socket_unit), str(server)], capture_output=True,
                            text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "gotaxy" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_both_units_are_hardened(tmp_path):
    for unit in installed_units(tmp_path):
        result = subprocess.run(
            [systemd_analyze(), "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit)],
            capture_output=True, text=True, timeout=60,
        )
        score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
        assert score, result.stdout + result.stderr
        assert float(score.group(1)) <= MAX_EXPOSURE, result.stdout
        assert result.returncode == 0, result.stdout + result.stderr
    for name in ("gotaxy-server.service", "gotaxy-client@.service"):
        settings = unit_settings(name)
        assert settings["CapabilityBoundingSet"] == [""], name  # no capability at all
        assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"], name
        assert settings["LimitNOFILE"] == ["65536"], name


def test_client_unit_reads_its_token_from_a_credential(tmp_path, procs, echo):
    server = procs.server()
    settings = unit_settings("gotaxy-client@.service")
    assert settings["DynamicUser"] == ["yes"]
    assert settings["LoadCredential"] == ["config:/etc/gotaxy/%i.toml", "token:/etc/gotaxy/%i.token"]
    assert "auth.token" not in (UNITS / "gotaxy-client@.service").read_text()

    # What systemd does: copy /etc/gotaxy/home.{toml,token} into the
    # credentials directory, readable by the service's user only.
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "config").write_text(
        f'serverAddr = "127.0.0.1"\nserverPort = {server.port}\n'
        f'transport.tls.fingerprint = "{server.fingerprint}"\n\n'
        f'[[proxies]]\nname = "echo"\nlocalIP = "127.0.0.1"\nlocalPort = {echo.port}\n'
    )
    (credentials / "token").write_text(server.token + "\n")
    for path in credentials.iterdir():
        path.chmod(0o400)
    state = tmp_path / "state"
    state.mkdir()

    (exec_start,) = settings["ExecStart"]
    command = (exec_start.replace(VENV_TWISTD, twistd()).replace("%d", str(credentials))
               .replace("%i", "home").replace("${STATE_DIRECTORY}", str(state)))
    assert "%" not in command and "$" not in command, command
    client = Process(shlex.split(command), tmp_path, "unit-client")
    procs.started.append(client)
    client.wait_for(r"tunnel echo up at 127\.0\.0\.1:\d+")
    server.wait_for(r"client default connected from 127\.0\.0\.1")
    assert server.token not in client.output()


def test_server_unit_starts_as_written(tmp_path, procs):
    """The server's ExecStart, with its data directory moved and loopback ports added."""
    (exec_start,) = unit_settings("gotaxy-server.service")["ExecStart"]
    data = tmp_path / "var-lib-gotaxy"
    port = free_port()
    command = shlex.split(exec_start.replace(VENV_TWISTD, twistd()).replace("/var/lib/gotaxy", str(data)))
    command += ["--bind-addr", "127.0.0.1", "--bind-port", str(port), "--web-port", "0", "--console-port", "0"]
    server = Process(command, tmp_path, "unit-server")
    procs.started.append(server)
    server.wait_for(rf"listening for clients on 127\.0\.0\.1:{port}")
    assert (data / "gotaxy.db").exists()
