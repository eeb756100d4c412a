"""
``gotaxy.server.tap`` pieces a user sees at start: the first-start banner and
the data directory lock (end to end in ``test_e2e_startup``).
"""

from __future__ import annotations

import os

import pytest

from gotaxy.config import ServerConfig
from gotaxy.process import StartError
from gotaxy.server import tap
from gotaxy.server.datalock import LOCK_FILENAME, DataDirLock


class _Credentials:
    fingerprint = "SHA256:" + "AB" * 32
    join_pin = "SHA256:" + "CD" * 32


FIRST = tap.FirstStart(token="gtx_token", admin_password="pw")


def test_banner_says_replace_host_only_next_to_a_placeholder(monkeypatch):
    monkeypatch.setattr(tap.socket, "getfqdn", lambda: "localhost")
    text = tap.first_start_banner(ServerConfig(bind_addr="0.0.0.0"), FIRST, _Credentials())
    assert "--server HOST:7000" in text
    assert "replace HOST with this server's public name or address" in text
    assert "localhost" not in text


def test_banner_with_a_real_name_uses_it_and_says_when_to_change_it(monkeypatch):
    monkeypatch.setattr(tap.socket, "getfqdn", lambda: "tunnel.example.org")
    text = tap.first_start_banner(ServerConfig(bind_addr="0.0.0.0"), FIRST, _Credentials())
    assert "--server tunnel.example.org:7000" in text
    assert "HOST" not in text
    assert "put that for tunnel.example.org" in text


def test_data_dir_lock_is_exclusive_names_the_holder_and_is_released(tmp_path):
    first = DataDirLock.acquire(str(tmp_path))
    assert (tmp_path / LOCK_FILENAME).read_text().strip() == str(os.getpid())
    with pytest.raises(StartError) as caught:
        DataDirLock.acquire(str(tmp_path))
    assert f"is in use by another Gotaxy server (pid {os.getpid()})" in str(caught.value)
    first.release()
    DataDirLock.acquire(str(tmp_path)).release()


class _Store:
    def __init__(self, said: list) -> None:
        self.said = said

    def stop(self) -> None:
        self.said.append("store stopped")


class _Core:
    def __init__(self, said: list) -> None:
        self.said = said

    def flush_pending_reports(self) -> None:
        self.said.append("failure counts told")

    async def shutdown(self) -> None:
        self.said.append("clients told goodbye")


def test_clients_are_told_goodbye_only_once_the_control_port_is_closed():
    # A client told goodbye comes back at once; the old process's port must be
    # closed by then (refused: tried again soon), not still accepting.
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    said: list = []
    control = tap.Listener.__new__(tap.Listener)
    control.closed = Deferred()
    service = tap.CoreService(_Core(said), _Store(said), None, None, control)
    service.running = True
    service._announce = Clock().callLater(1, lambda: None)
    done = service.stopService()
    assert said == ["failure counts told"]  # the port is still open: no goodbye yet
    control.closed.callback(None)
    assert said == ["failure counts told", "clients told goodbye", "store stopped"]
    assert done.called
