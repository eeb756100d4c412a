"""
The panel is made at its first connection (``gotaxy.web.service``,
``PanelSite``): importing the server imports no Klein, an idle server never
makes it, and once made it serves as before (tests/test_e2e_startup.py
asks a real server's panel its first request).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, List

from twisted.internet.task import Clock

from gotaxy.web.service import PanelSite, WebService
from gotaxy.listeners import ListenAt
from tests.e2e import ROOT


def test_the_server_imports_no_klein_until_the_panel_is_made():
    code = ("import sys, gotaxy.server.tap; "
            "print(sorted(m for m in ('klein', 'werkzeug', 'gotaxy.web.app') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class FakeSite:
    def __init__(self) -> None:
        self.events: List[str] = []

    def doStart(self) -> None:
        self.events.append("start")

    def doStop(self) -> None:
        self.events.append("stop")

    def buildProtocol(self, addr: Any) -> str:
        self.events.append(f"protocol for {addr}")
        return "protocol"


def _lazy() -> "tuple[PanelSite, List[FakeSite]]":
    made: List[FakeSite] = []

    def build() -> Any:
        made.append(FakeSite())
        return "panel", made[-1]

    return PanelSite(build), made


def test_the_panel_is_made_at_its_first_connection_and_started_with_its_port():
    site, made = _lazy()
    site.doStart()  # the port listens
    assert made == [] and not site.made
    assert site.buildProtocol("203.0.113.7") == "protocol"
    assert made[0].events == ["start", "protocol for 203.0.113.7"]
    site.buildProtocol("203.0.113.8")
    site.doStop()
    assert len(made) == 1 and made[0].events[-1] == "stop"


def test_an_idle_panel_is_never_made_and_leaves_nothing_scheduled():
    clock = Clock()
    site, made = _lazy()
    service = WebService(clock, ListenAt("tcp:0:interface=127.0.0.1", False, "127.0.0.1:0"), site, site, False)
    service.port = object()  # listening already (privilegedStartService), so startService binds nothing
    service.startService()
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert made == []
    assert service.panel == "panel" and len(made) == 1  # the server asking for it (a ban's hook) makes it
    service.port = None
    service.stopService()
    assert clock.getDelayedCalls() == []
