"""
A real PostgreSQL for the store's tests, started by the test suite itself.

``PostgresServer`` runs Debian's ``initdb`` and ``pg_ctl`` (package
``postgresql``; binaries under ``/usr/lib/postgresql/*/bin``) on a data
directory in a temporary directory.  The server listens on a Unix socket in
that directory only (``listen_addresses = ''``): no TCP port, nothing
reachable from outside, no port to collide with.  ``initdb`` refuses to run
as root, so under root both run as the ``postgres`` user (or ``nobody``),
who owns the temporary directory.  Durability is off (``fsync``,
``synchronous_commit``, ``full_page_writes``): the data lives for one test
run.

``database()`` makes a fresh database for one test: a copy of a template
the caller prepared once (``template()``), which is much faster than
creating the schema again.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from typing import Any, Dict, Iterator, Optional

HOW_TO_GET_IT = (
    "PostgreSQL tests need Debian's postgresql package (apt-get install postgresql; it puts initdb and "
    "pg_ctl under /usr/lib/postgresql/*/bin, or set GOTAXY_PG_BIN to the directory holding them) and the "
    "psycopg driver (pip install -e '.[test]')"
)


def find_binaries() -> Optional[str]:
    """The directory of ``initdb`` and ``pg_ctl``: ``$GOTAXY_PG_BIN``, else the newest Debian one."""
    configured = os.environ.get("GOTAXY_PG_BIN")
    candidates = [configured] if configured else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0
    )
    for directory in reversed(candidates):
        if os.path.exists(os.path.join(directory, "initdb")) and os.path.exists(os.path.join(directory, "pg_ctl")):
            return directory
    return None


def driver_available() -> bool:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return True


def _unprivileged_user() -> Optional[pwd.struct_passwd]:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and there is no postgres or nobody user to run PostgreSQL as")


class PostgresServer:
    def __init__(self, bin_dir: str) -> None:
        self.bin_dir = bin_dir
        self.user = _unprivileged_user()
        self.root = tempfile.mkdtemp(prefix="gotaxy-pg-")
        self.data = os.path.join(self.root, "data")
        self.socket_dir = self.root
        self.log = os.path.join(self.root, "server.log")
        self.role = "gotaxy"
        self._count = 0
        self.started = False
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs: Dict[str, Any] = {}
        if self.user is not None:
            kwargs["user"] = self.user.pw_uid
            kwargs["group"] = self.user.pw_gid
            kwargs["extra_groups"] = []
        env = dict(os.environ, LC_ALL="C", LANG="C")
        return subprocess.run(
            [os.path.join(self.bin_dir, args[0]), *args[1:]], check=True, capture_output=True, text=True,
            timeout=timeout, cwd=self.root, env=env, **kwargs,
        )

    def start(self) -> None:
        begun = time.monotonic()
        self._run("initdb", "-D", self.data, "-U", self.role, "--auth=trust", "--no-sync", "-E", "UTF8",
                  "--no-instructions")
        self._pg_start()
        self.start_seconds = time.monotonic() - begun

    def _pg_start(self) -> None:
        options = (
            f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        try:
            self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "120", "start", timeout=150)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"PostgreSQL did not start: {e.stderr}\n{self.log_text()}") from None
        self.started = True

    def pause(self) -> None:
        """
        Stop the server and keep its data (``resume`` starts it again): an
        outage as clients of the database see it, their connections cut
        ("terminating connection due to administrator command") and new
        ones refused.  Only on a server of one's own, not the shared one.
        """
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", timeout=60)
        self.started = False

    def resume(self) -> None:
        self._pg_start()

    def log_text(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        try:
            if self.started:
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", timeout=60)
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        """A SQLAlchemy URL of ``database`` over the Unix socket."""
        return f"postgresql://{self.role}@/{database}?host={self.socket_dir}"

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(host=self.socket_dir, user=self.role, dbname="postgres", autocommit=True) as c:
            c.execute(statement)

    def database(self, template: Optional[str] = None) -> str:
        """A new, empty database (a copy of ``template``, if given); its name."""
        self._count += 1
        name = f"test_{self._count}"
        suffix = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
        self._admin(f"CREATE DATABASE {name}{suffix}")
        return name

    def drop(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def running_postgres() -> Iterator["PostgresServer"]:
    """
    A PostgreSQL server of its own, started, for a fixture to yield and stop
    when its scope ends; the test skips (saying how to get it) where it cannot run.
    """
    import pytest

    bin_dir = find_binaries()
    if bin_dir is None or not driver_available():
        pytest.skip(HOW_TO_GET_IT)
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
