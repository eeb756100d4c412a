"""
What a process imports is what it holds in memory (issue 15, goal 3): the
client builds its service without the server's store, web, console or
notification code, and a server imports what it uses only when it uses it.
Each case runs in a fresh interpreter (a subprocess), since this one has
imported everything already.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Sequence

from tests.e2e import echo_once, tunnel_port

ROOT = Path(__file__).resolve().parent.parent

#: What a client without ``webServer.port`` never needs: the server's store
#: (SQLAlchemy, dataset, alembic, argon2), the panel (klein, werkzeug,
#: twisted.web), the console (Conch), notifications (treq), Gotaxy's own
#: modules for them, and the rest of the server's side: ``gotaxy.server``
#: (its core, tunnels, meters, access rules), its settings, the event
#: catalogue, its TLS credentials, the cluster's identity and the shared
#: HTTP and HTTPS fronts (h11).
NOT_IN_A_CLIENT = ["klein", "werkzeug", "twisted.web", "sqlalchemy", "dataset", "alembic", "argon2", "twisted.conch",
                   "treq", "h11", "gotaxy.store", "gotaxy.web", "gotaxy.console", "gotaxy.notify", "gotaxy.server",
                   "gotaxy.config.server", "gotaxy.events", "gotaxy.tls.credentials", "gotaxy.tls.cluster",
                   "gotaxy.proxy.httpsfront", "gotaxy.proxy.vhost"]

#: What a server with the defaults (panel and console on, no ACME, no webhooks) imports only when used: the
#: console's SSH server (Conch) at its first connection (gotaxy.console.listener).
NOT_IN_A_DEFAULT_SERVER = ["acme", "josepy", "treq", "gotaxy.cli", "twisted.conch", "gotaxy.console.service"]


def imported(code: str, tmp_path: Path, names: Sequence[str], env: Dict[str, str] = {}) -> List[str]:
    """Run ``code`` in a new interpreter; which of ``names`` it then has in ``sys.modules``."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps([name for name in {list(names)!r} if name in sys.modules]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


#: A tunnel of every type, so that each type's module is imported.
PROXIES = """
serverAddr = "127.0.0.1"
serverPort = 7000
auth.token = "gtx_x"

[[proxies]]
name = "ssh"
type = "tcp"
localPort = 22
remotePort = 6000

[[proxies]]
name = "dns"
type = "udp"
localPort = 53
remotePort = 6053

[[proxies]]
name = "wiki"
type = "http"
localPort = 80
subdomain = "wiki"

[[proxies]]
name = "shop"
type = "https"
localPort = 443
customDomains = ["shop.example.com"]
"""

CLIENT = """
    from gotaxy.client import tap
    options = tap.Options()
    options.parseOptions(["--config", "client.toml", "--data-dir", "client"])
    service = tap.makeService(options)
"""


def test_a_client_imports_no_store_web_console_or_notification_code(tmp_path: Path) -> None:
    (tmp_path / "client.toml").write_text(PROXIES)
    assert imported(CLIENT, tmp_path, NOT_IN_A_CLIENT) == []


def test_a_running_client_imports_none_of_it(procs: Any, echo: Any) -> None:
    """
    The real ``twistd gotaxy-client``, from Twisted's plugin scan through
    log-in to bytes echoed through its tunnel: Python's ``-X importtime``
    (``PYTHONPROFILEIMPORTTIME``) writes a line to stderr for every module
    the process imports, when it imports it, so modules imported late (at
    log-in, for a stream) are seen too.
    """
    server = procs.server()
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert echo_once(tunnel_port(client, "echo"), b"what does a client import?") == b"what does a client import?"
    client.stop()
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", client.output(), re.MULTILINE))
    assert {"gotaxy.client.control", "gotaxy.mux", "twisted.plugins.gotaxy_client"} <= modules  # so the check can see
    assert sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_IN_A_CLIENT)) == []


def test_a_client_with_the_admin_api_imports_its_web_code(tmp_path: Path) -> None:
    """The check above can fail: the admin API (webServer.port) is a Klein app, imported when configured."""
    (tmp_path / "client.toml").write_text("webServer.port = 7400\n" + PROXIES)
    names = imported(CLIENT, tmp_path, NOT_IN_A_CLIENT)
    assert "klein" in names and "twisted.web" in names
    assert "sqlalchemy" not in names and "gotaxy.store" not in names


SERVER = """
    import argon2
    from gotaxy.server import tap
    if HASHING_FAILS:
        def refuse(*args, **kwargs):
            raise AssertionError("an argon2 hash at start")
        argon2.PasswordHasher.hash = refuse
    options = tap.Options()
    options.parseOptions(["--data-dir", "server", "--bind-addr", "127.0.0.1", "--bind-port", "17000",
                          "--web-port", "17500", "--console-port", "17022"])
    service = tap.makeService(options)
"""


def test_a_default_server_imports_acme_and_webhooks_only_when_configured(tmp_path: Path) -> None:
    names = imported("HASHING_FAILS = False\n" + textwrap.dedent(SERVER), tmp_path,
                     NOT_IN_A_DEFAULT_SERVER + ["gotaxy.store"])
    assert names == ["gotaxy.store"]  # which it does use (so the check can see a module)


def test_only_a_first_start_hashes_a_password(tmp_path: Path) -> None:
    """The store no longer hashes a dummy password at import (64 MiB then); a first start hashes the admin's."""
    first = "HASHING_FAILS = False\n" + textwrap.dedent(SERVER)
    imported(first, tmp_path, [])
    again = "HASHING_FAILS = True\n" + textwrap.dedent(SERVER)
    assert imported(again, tmp_path, ["gotaxy.store"]) == ["gotaxy.store"]


#: What dataset imports for a method Gotaxy never calls (``Database.op``): alembic, and mako and pygments through
#: it; and for a type Gotaxy never uses, SQLAlchemy's PostgreSQL dialect, which a server on SQLite does not need.
ALEMBIC = ["alembic", "alembic.migration", "alembic.operations", "mako", "pygments", "sqlalchemy.dialects.postgresql"]


def test_a_server_imports_alembic_only_to_add_a_column(tmp_path: Path) -> None:
    """
    A first start (every table created) and a restart build a server on SQLite without alembic or the PostgreSQL
    dialect (gotaxy.store.dataset_import; the store's tests on PostgreSQL show the dialect is there when needed).
    """
    first = "HASHING_FAILS = False\n" + textwrap.dedent(SERVER)
    assert imported(first, tmp_path, ALEMBIC + ["dataset"]) == ["dataset"]
    assert imported(first, tmp_path, ALEMBIC + ["dataset"]) == ["dataset"]


def test_dataset_still_reaches_alembic_when_used(tmp_path: Path) -> None:
    """The stand-ins are gone once dataset is imported: alembic is itself, and dataset's ``op`` imports it when used."""
    code = """
        import sys
        import gotaxy.store
        import dataset
        assert "alembic" not in sys.modules
        db = dataset.connect("sqlite:///x.db")
        db["things"].insert({"name": "a"})
        db["things"].create_column("size", db.types.integer)  # Database.op: alembic
        assert "size" in db["things"].columns
        import alembic.migration, alembic.operations
        assert alembic.migration.__file__ and alembic.operations.Operations.__module__.startswith("alembic")
    """
    assert imported(code, tmp_path, ["alembic"]) == ["alembic"]
