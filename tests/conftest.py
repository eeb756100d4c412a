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
