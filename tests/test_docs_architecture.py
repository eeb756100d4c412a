"""
docs/architecture.md is the map of the code: every module, package and
class it names must exist, so that a move that forgets the map fails here.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()

#: `gotaxy/...`, `server/core.py`, `proxy/tcp.py`: paths the page names.
PATH = re.compile(r"`((?:gotaxy/)?(?:[a-z_]+/)*[a-z_]+(?:\.py|/))`")
PACKAGES = ("server", "client", "proxy", "store", "notify", "web", "console", "tls", "config")


def named_paths() -> "list[str]":
    found = set()
    for match in PATH.finditer(ARCHITECTURE):
        path = match.group(1)
        if not path.startswith("gotaxy/"):
            if path.split("/", 1)[0] not in PACKAGES or "/" not in path:
                continue
            path = "gotaxy/" + path
        found.add(path)
    return sorted(found)


def test_the_page_names_modules():
    assert len(named_paths()) > 25


@pytest.mark.parametrize("path", named_paths())
def test_every_module_the_page_names_exists(path):
    assert (ROOT / path).exists(), f"docs/architecture.md names {path}, which does not exist: update the map"


CLASSES = {
    "ServerCore": "gotaxy.server.core",
    "LiveTunnel": "gotaxy.server.tunnel",
    "PublicConnection": "gotaxy.server.tunnel",
    "Management": "gotaxy.server.manage",
    "ManagementError": "gotaxy.server.manage",
    "ClientSession": "gotaxy.server.session",
    "ClientLocks": "gotaxy.server.session",
    "TrafficMeter": "gotaxy.server.traffic",
    "IRateLimiter": "gotaxy.server.traffic",
    "NodeLease": "gotaxy.server.lease",
    "EventTail": "gotaxy.server.outbox",
    "EventBus": "gotaxy.events",
    "Store": "gotaxy.store",
    "ThreadedStore": "gotaxy.store",
    "MuxProtocol": "gotaxy.mux",
    "Stream": "gotaxy.mux",
    "StreamRelay": "gotaxy.relay",
    "ServerControlProtocol": "gotaxy.server.control",
    "ClientControlProtocol": "gotaxy.client.control",
    "PublicAddress": "gotaxy.proxy",
    "ProxySpec": "gotaxy.proxy",
    "ProxyType": "gotaxy.proxy",
    "Exposure": "gotaxy.proxy",
    "Claims": "gotaxy.proxy",
}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_class_the_page_names_exists_where_it_says(name):
    assert f"`{name}`" in ARCHITECTURE or name in ARCHITECTURE
    module = importlib.import_module(CLASSES[name])
    assert hasattr(module, name), f"{CLASSES[name]} has no {name}: update docs/architecture.md"
