"""
The fast tier stays fast: a test that tests/conftest.py did not mark
``e2e`` cannot start a process, and one marked neither ``e2e`` nor
``live`` cannot open a socket, whatever its module's source looks like
(these spell the calls so that their source shows nothing, as a helper
in another module would).
"""

from __future__ import annotations

import importlib
import os

import pytest

from tests.conftest import FAST_TIER


def test_this_module_is_in_the_fast_tier(request) -> None:
    assert request.node.get_closest_marker("e2e") is None
    assert request.node.get_closest_marker("live") is None


def test_a_fast_test_that_starts_a_process_fails_naming_the_mark_it_needs() -> None:
    with pytest.raises(AssertionError, match=r"starts a process but is not marked e2e: mark it @pytest\.mark\.e2e"):
        os.system("true")
    runner = importlib.import_module("sub" + "process")
    with pytest.raises(AssertionError, match="starts a process"):
        runner.run(["true"])


def test_a_fast_test_that_opens_a_socket_fails_naming_the_mark_it_needs() -> None:
    sockets = importlib.import_module("socket")
    s = getattr(sockets, "socket")()
    try:
        with pytest.raises(AssertionError, match=r"opens a socket but is not marked live"):
            s.bind(("127.0.0.1", 0))
        with pytest.raises(AssertionError, match="opens a socket") as caught:
            s.connect(("127.0.0.1", 9))
        assert FAST_TIER in str(caught.value)  # and says how the fast tier is run
    finally:
        s.close()


@pytest.mark.live
def test_a_test_marked_live_may_open_sockets_but_not_start_processes() -> None:
    sockets = importlib.import_module("socket")
    with getattr(sockets, "socket")() as s:
        s.bind(("127.0.0.1", 0))
    with pytest.raises(AssertionError, match="not marked e2e"):
        os.system("true")
