"""
Fixtures shared by the test modules, and the test tiers.

Each test is marked here, automatically, by what it starts:

* ``e2e``: processes (``twistd``, the ``gotaxy`` command, PostgreSQL) or
  a browser: it uses the ``procs`` fixture or the PostgreSQL server, or its
  module starts them itself;
* ``live``: a server on real loopback sockets inside this process
  (``tests.inprocess.LiveSystem``, the ``echo`` fixture, ``free_port``);
* neither: in memory only (``gotaxy.testing``, ``StringTransport``, a
  ``Clock``), which is the fast tier::

      python -m pytest -m "not e2e and not live"

So that the marks can be trusted, a test without ``e2e`` that starts a
process, or one with neither mark that opens a socket, fails at once and
says which mark it needs.
"""

import os
import socket
import subprocess
from typing import Any, Callable, Dict, Tuple

import pytest

from tests.e2e import EchoServer, Processes, release_ports

E2E = "e2e"
LIVE = "live"

#: The command that runs the fast tier (README.md and README.zh-CN.md show it).
FAST_TIER = f'python -m pytest -m "not {E2E} and not {LIVE}"'

#: A module whose source names one of these starts processes (or a browser).
PROCESS_STARTERS = ("subprocess", "playwright", "gotaxy_cli", "twistd(", "Process(")

#: A module whose source names one of these opens real sockets in this process.
SOCKET_OPENERS = ("LiveSystem", "RawControlClient", "listen_echo", "free_port(", "socket.socket(", "create_connection",
                  "reactor.listen", "reactor.connect", "EchoServer", "HTTPServer")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", f"{E2E}: starts processes or a browser")
    config.addinivalue_line("markers", f"{LIVE}: runs a server on loopback sockets in the test process")


def _signs(module: Any) -> Tuple[bool, bool]:
    """Whether ``module`` starts processes, and whether it opens sockets."""
    try:
        with open(module.__file__, encoding="utf-8") as f:
            source = f.read()
    except (AttributeError, OSError, TypeError):
        return False, False
    return any(s in source for s in PROCESS_STARTERS), any(s in source for s in SOCKET_OPENERS)


def pytest_collection_modifyitems(config: Any, items: Any) -> None:
    modules: Dict[Any, Tuple[bool, bool]] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module not in modules:
            modules[module] = _signs(module)
        processes, sockets = modules[module]
        fixtures = getattr(item, "fixturenames", ())
        params = getattr(getattr(item, "callspec", None), "params", {})
        if processes or "procs" in fixtures or "postgres" in fixtures or params.get("backend") == "postgresql":
            item.add_marker(pytest.mark.e2e)
        elif sockets or "echo" in fixtures:
            item.add_marker(pytest.mark.live)


def _refuse(what: str, mark: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(
            f"this test {what} but is not marked {mark}: mark it @pytest.mark.{mark} (or use the "
            f"procs / echo fixtures), so that the fast tier ({FAST_TIER}) stays in memory"
        )

    return refused


@pytest.fixture(autouse=True)
def _held_ports() -> Any:
    """The ports ``free_port`` holds for a test go when it ends (after its processes: set up first, torn down last)."""
    yield
    release_ports()


@pytest.fixture(autouse=True)
def _cheap_password_hashing(request: Any, monkeypatch: Any) -> None:
    """
    In-process tests hash passwords with argon2's smallest parameters: the
    defaults cost tens of milliseconds and 64 MiB each, and the log-in tests
    check hundreds.  What they test (counting, lock-outs, threads) does not
    depend on the cost; processes that e2e tests start keep the defaults.
    """
    if request.node.get_closest_marker(E2E) is not None:
        return
    from argon2 import PasswordHasher

    from gotaxy import credentials

    monkeypatch.setattr(credentials, "PASSWORD_HASHER", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture(autouse=True)
def _tiers_hold(request: Any, monkeypatch: Any) -> None:
    """A test starts processes only if marked e2e, and opens sockets only if marked e2e or live."""
    if request.node.get_closest_marker(E2E) is not None:
        return
    starts = _refuse("starts a process", E2E)
    monkeypatch.setattr(subprocess.Popen, "__init__", starts)
    for name in ("fork", "posix_spawn", "posix_spawnp", "system", "execv", "execve"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, starts)
    if request.node.get_closest_marker(LIVE) is not None:
        return
    opens = _refuse("opens a socket", LIVE)
    for name in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, opens)


@pytest.fixture
def procs(tmp_path):
    registry = Processes(tmp_path)
    try:
        yield registry
    finally:
        registry.cleanup()


@pytest.fixture
def echo():
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


# -- the store's databases: SQLite, and a real PostgreSQL ----------------------


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the whole run (see tests/postgres.py); skipped where it cannot run."""
    from tests.postgres import running_postgres

    yield from running_postgres()


@pytest.fixture(scope="session")
def postgres_template(postgres):
    """A database migrated to the newest schema, copied for each test (creating the schema is the slow part)."""
    from gotaxy.store import Store

    name = postgres.database()
    Store(postgres.url(name)).close()
    return name


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    """Which database the store's tests run on: each of them runs on both."""
    return request.param


@pytest.fixture
def store_url(backend, request, tmp_path, tmp_path_factory):
    """
    The URL of a fresh store, already at the newest schema: SQLite in
    ``tmp_path``, or a new database on the test run's PostgreSQL.
    """
    if backend == "sqlite":
        import shutil

        from gotaxy.store import Store, default_url

        blank = tmp_path_factory.getbasetemp() / "blank-sqlite-store"
        if not blank.exists():
            blank.mkdir()
            Store(default_url(str(blank))).close()
        for path in blank.iterdir():
            shutil.copy(path, tmp_path / path.name)
        yield default_url(str(tmp_path))
        return
    postgres = request.getfixturevalue("postgres")
    name = postgres.database(template=request.getfixturevalue("postgres_template"))
    try:
        yield postgres.url(name)
    finally:
        postgres.drop(name)


@pytest.fixture
def empty_store_url(backend, request, tmp_path):
    """The URL of an empty database on ``backend`` (for migration tests)."""
    if backend == "sqlite":
        from gotaxy.store import default_url

        directory = tmp_path / "empty"
        directory.mkdir()
        yield default_url(str(directory))
        return
    postgres = request.getfixturevalue("postgres")
    name = postgres.database()
    try:
        yield postgres.url(name)
    finally:
        postgres.drop(name)


@pytest.fixture
def cluster(procs, postgres, postgres_template):
    """
    Makes clusters of real server nodes on one fresh PostgreSQL database
    (tests/cluster.py): ``cluster(3)`` starts nodes a, b and c.
    """
    from tests.cluster import Cluster

    name = postgres.database(template=postgres_template)

    def make(size: int = 3, *args: str, env: Any = None, start: bool = True) -> Cluster:
        return Cluster(procs, postgres.url(name), size, args, env, start)

    try:
        yield make
    finally:
        procs.cleanup()  # the nodes hold connections to the database: stop them before it goes
        postgres.drop(name)
