import pytest

from tests.e2e import EchoServer, Processes


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
    from tests.postgres import HOW_TO_GET_IT, PostgresServer, driver_available, find_binaries

    bin_dir = find_binaries()
    if bin_dir is None or not driver_available():
        pytest.skip(HOW_TO_GET_IT)
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


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
