"""
Two server processes racing for one claim on one store (an SQLite file, a
PostgreSQL database): exactly one wins, every time.
"""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from gotaxy.store import Store, StoreError, default_url
from gotaxy.store.claims import Claimed

ROUNDS = 30  #: races per kind of claim; every one must have exactly one winner
RACE_TIMEOUT = 120.0  #: seconds a racer waits for the other at the barrier


@pytest.fixture
def store_dir(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    blank = tmp_path_factory.getbasetemp() / "blank-claims-store"
    if not blank.exists():
        blank.mkdir()
        Store(default_url(str(blank))).close()
    for path in blank.iterdir():
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def _race(url: str, me: int, kind: str, rounds: int, barrier: Any, results: Any) -> None:
    """One racer: at each round, meet the other at the barrier, then claim the round's thing."""
    store = Store(url)
    try:
        for i in range(rounds):
            barrier.wait(RACE_TIMEOUT)
            try:
                if kind == "port":
                    won = store.claim_port(f"client{me}", "ssh", 20000 + i)
                elif kind == "token":
                    store.create_token(f"token{i}")
                    won = True
                elif kind == "tunnel":
                    store.add_server_tunnel("alice", f"web{i}", "tcp", "127.0.0.1:80", {"type": "tcp"}, None)
                    won = True
                else:
                    won = store.ensure_admin(f"operator{i}", "a long enough password")
                results.put((i, me, "won" if won else "lost", ""))
            except (Claimed, StoreError) as e:
                results.put((i, me, "lost", str(e)))
            except Exception as e:  # anything else fails the test, with what it was
                results.put((i, me, "error", repr(e)))
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, store_dir: Path) -> str:
    """One store both racers open: an SQLite file, or a database on the test run's PostgreSQL."""
    if request.param == "sqlite":
        return default_url(str(store_dir))
    try:
        postgres = request.getfixturevalue("postgres")  # tests/conftest.py: skipped where it cannot run
    except pytest.FixtureLookupError:
        pytest.skip("this checkout's tests/conftest.py has no PostgreSQL fixture")
    url = postgres.url(postgres.database())
    Store(url).close()
    return url


@pytest.mark.parametrize("kind", ["port", "token", "tunnel", "admin"])
def test_two_processes_racing_for_one_claim_exactly_one_wins(shared_url: str, kind: str) -> None:
    url = shared_url
    rounds = ROUNDS if kind != "admin" else ROUNDS // 3  # each account costs an argon2 hash
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    racers = [context.Process(target=_race, args=(url, me, kind, rounds, barrier, results)) for me in (0, 1)]
    for racer in racers:
        racer.start()
    try:
        outcomes: Dict[int, List[Tuple[int, str, str]]] = {}
        for _ in range(2 * rounds):
            i, me, outcome, message = results.get(timeout=RACE_TIMEOUT)
            outcomes.setdefault(i, []).append((me, outcome, message))
    finally:
        for racer in racers:
            racer.join(RACE_TIMEOUT)
            if racer.is_alive():
                racer.kill()
                racer.join()
    for i, round_ in sorted(outcomes.items()):
        assert not [o for o in round_ if o[1] == "error"], round_
        winners = [me for me, outcome, _ in round_ if outcome == "won"]
        assert len(winners) == 1, f"round {i}: {round_}"
        if kind == "port":
            (message,) = [m for _, outcome, m in round_ if outcome == "lost"]
            assert f"port {20000 + i} is reserved by tunnel 'ssh' of client 'client{winners[0]}'" in message
    assert all(racer.exitcode == 0 for racer in racers)
