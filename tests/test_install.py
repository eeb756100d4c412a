"""
Both install commands README.md gives, in one virtual environment, in either
order: afterwards ``twistd`` run from another directory lists and starts the
``gotaxy-server`` and ``gotaxy-client`` plugins.

The environment reuses the dependencies already installed for the test run:
its site-packages gets a ``.pth`` line naming this interpreter's
site-packages as a plain path, which makes them importable without
processing that directory's own ``.pth`` files, so an editable install of
Gotaxy made there (as CI makes one of this very checkout) cannot stand in for
the one under test.  pip installs with ``--no-deps --no-build-isolation``, so
nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
EDITABLE = ["-e", f"{ROOT}[test]"]
PLAIN = [str(ROOT)]


def run(argv, cwd, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


@pytest.fixture
def venv(tmp_path):
    path = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=TIMEOUT)
    python = path / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).stdout.strip()
    Path(site, "_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def pip_install(python: Path, args, cwd: Path) -> None:
    result = run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-build-isolation", *args],
        cwd,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def assert_twistd_finds_gotaxy(python: Path, elsewhere: Path, editable: bool) -> None:
    listed = run([str(python), "-c", TWISTD, "--help"], elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert "gotaxy-server      Gotaxy reverse tunnel server" in listed.stdout, listed.stdout
    assert "gotaxy-client      Gotaxy reverse tunnel client" in listed.stdout, listed.stdout
    # The plugin loads this install's gotaxy, not some other copy.
    server_help = run([str(python), "-c", TWISTD, "gotaxy-server", "--help"], elsewhere)
    assert server_help.returncode == 0, server_help.stderr
    assert "--data-dir" in server_help.stdout
    where = run([str(python), "-c", "import gotaxy, gotaxy.web.app as a; print(gotaxy.__file__); "
                 "print((a.www_directory() / 'index.html').is_file())"], elsewhere)
    module, panel = where.stdout.split()
    if editable:
        assert Path(module) == ROOT / "gotaxy" / "__init__.py"
    else:
        assert Path(module).is_relative_to(python.parent.parent), module
    assert panel == "True", "the panel's front end is missing"
    if not editable:  # the file the systemd units' Documentation= names, under the environment's prefix
        assert (python.parent.parent / "share" / "doc" / "gotaxy" / "operations.md").is_file()


@pytest.mark.parametrize(
    "steps",
    [pytest.param([(EDITABLE, True), (PLAIN, False)], id="editable-then-plain"),
     pytest.param([(PLAIN, False), (EDITABLE, True)], id="plain-then-editable")],
)
def test_both_readme_installs_in_either_order_keep_twistd_plugins(venv, tmp_path, steps):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args, editable in steps:
        pip_install(venv, args, tmp_path)
        assert_twistd_finds_gotaxy(venv, elsewhere, editable)
