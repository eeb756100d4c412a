"""
``workers = N`` in memory (gotaxy.server.workers): the setting and its
refusals, which process takes the next client, what a worker is told to
run, and a worker's log lines.  The processes themselves:
tests/test_e2e_workers.py.
"""

from __future__ import annotations

import io
from typing import Any, List

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel

from gotaxy.config import ConfigError, ServerConfig, parse_server_config
from gotaxy.server import tap, workers


def test_workers_is_read_from_the_file_and_the_flag_wins():
    assert ServerConfig().workers == 1
    assert parse_server_config({"workers": 3}).config.workers == 3
    options = tap.Options()
    options.parseOptions(["--workers", "2"])
    assert options.loaded_config.workers == 2


@pytest.mark.parametrize("value", [0, 65, "two"])
def test_a_wrong_number_of_workers_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match="'workers'"):
        parse_server_config({"workers": value})


def test_workers_with_websites_are_refused_with_what_to_do():
    with pytest.raises(ConfigError, match="set workers = 1"):
        parse_server_config({"workers": 2, "vhostHTTPPort": 8080})


def test_a_worker_runs_no_face_front_or_ports_of_the_parent_and_shares_its_store_and_key(tmp_path):
    config = parse_server_config({"workers": 2, "webServer": {"port": 7501}, "console": {"port": 7023}}).config
    mine = workers.worker_config(config, str(tmp_path))
    assert (mine.workers, mine.web.port, mine.console.port, mine.cluster.bind_port) == (1, 0, 0, 0)
    assert mine.effective_database_url() == f"sqlite:///{tmp_path}/gotaxy.db"
    assert mine.notify.key_file == str(tmp_path / "notify.key")
    assert workers.worker_dir(str(tmp_path), 2) == str(tmp_path / "workers" / "2")


def test_a_worker_is_started_with_the_parents_options_and_its_number():
    options = tap.Options()
    options.parseOptions(["--workers", "2", "--bind-port", "7100", "--data-dir", "/srv/gotaxy"])
    pool = workers.WorkerPool(2, MemoryReactorClock(), workers.plugin_arguments(options), lambda: 0)
    command = pool.command(2)
    assert command[command.index("gotaxy-server") + 1:] == ["--data-dir=/srv/gotaxy", "--bind-port=7100", "--worker=2"]
    assert "--logger=gotaxy.server.workers.worker_log_observer" in command


class _Live:
    """What ``Worker.alive`` looks at, as a running worker's."""


def _pool(own: List[int], loads: List[int]) -> workers.WorkerPool:
    pool = workers.WorkerPool(len(loads) + 1, MemoryReactorClock(), [], lambda: own[0])
    for worker, load in zip(pool.workers, loads):
        worker.link, worker.process = _Live(), _Live()
        worker.load = load
    return pool


def test_the_next_client_goes_to_the_process_holding_fewest_the_parent_first_on_a_tie():
    own = [0]
    pool = _pool(own, [0, 0])
    assert pool.choose() is None  # all equal: the parent keeps it
    own[0] = 1
    second = pool.choose()
    assert second is pool.workers[0]


def test_a_connection_handed_but_not_yet_reported_counts_for_its_worker():
    own = [1]
    pool = _pool(own, [0])
    worker = pool.workers[0]
    worker.handed = 1  # handed; the worker has not said it took it
    assert pool.choose() is None
    worker.reported(1, 1)  # it took it and holds one client
    own[0] = 2
    assert pool.choose() is worker


def test_a_dead_worker_gets_no_client():
    pool = _pool([5], [0])
    pool.workers[0].link = None
    assert pool.choose() is None


class _Recorder:
    def __init__(self) -> None:
        self.built: List[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        self.built.append(addr)
        return "local protocol"


class _Address:
    host = "192.0.2.7"


def test_a_refused_source_is_refused_by_the_parent_not_handed_on():
    pool = _pool([1], [0])
    factory = workers.HandingFactory(pool, _Recorder(), admits=lambda host: host != "192.0.2.7")
    assert factory.buildProtocol(_Address()) is None


def test_the_parent_builds_its_own_protocol_when_it_holds_fewest():
    recorder = _Recorder()
    factory = workers.HandingFactory(_pool([0], [3]), recorder, admits=lambda host: True)
    assert factory.buildProtocol(_Address()) == "local protocol"


def test_a_workers_log_lines_name_it(monkeypatch):
    monkeypatch.setenv(workers.WORKER_ENV, "2")
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    observer = workers.worker_log_observer()
    observer({"log_format": "client {name} connected", "name": "alice", "log_level": LogLevel.info,
              "log_namespace": "gotaxy.server.core", "log_time": 0.0})
    assert "[worker 2 gotaxy.server.core#info] client alice connected" in out.getvalue()
