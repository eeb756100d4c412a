"""
The panel is made after the server starts listening (``gotaxy.web.service``,
``PanelSite``): importing the server imports no Klein, and the panel is made
``PANEL_WARM_UP`` seconds after the start, or at its first connection if
that comes sooner; either way it serves as before.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, List

from twisted.internet.task import Clock

from gotaxy.web.service import PANEL_WARM_UP, PanelSite, WebService
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


def test_the_panel_is_made_a_moment_after_the_start_if_no_one_asked_before():
    clock = Clock()
    site, made = _lazy()
    service = WebService(clock, ListenAt("tcp:0:interface=127.0.0.1", False, "127.0.0.1:0"), site, site, False)
    service.port = object()  # listening already (privilegedStartService), so startService binds nothing
    service.startService()
    clock.advance(PANEL_WARM_UP - 0.1)
    assert made == []
    clock.advance(0.1)
    assert len(made) == 1 and service.panel == "panel"
    service.port = None
    service.stopService()
    assert clock.getDelayedCalls() == []


def test_a_server_stopped_before_the_warm_up_leaves_nothing_scheduled():
    clock = Clock()
    site, made = _lazy()
    service = WebService(clock, ListenAt("tcp:0:interface=127.0.0.1", False, "127.0.0.1:0"), site, site, False)
    service.port = object()
    service.startService()
    service.port = None
    service.stopService()
    assert clock.getDelayedCalls() == [] and made == []
