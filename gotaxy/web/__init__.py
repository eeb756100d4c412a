"""
The web panel and its REST API (see ``app`` for the design).

The names below are imported when first used (PEP 562): the server imports
``gotaxy.web.auth`` and ``gotaxy.web.service`` at start and the panel's app
(Klein, werkzeug) only once it is made, after the control port listens
(``gotaxy.web.service``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gotaxy.web.app import Panel
    from gotaxy.web.auth import PanelAuth
    from gotaxy.web.service import make_site, make_web_service

_WHERE = {
    "Panel": "gotaxy.web.app",
    "PanelAuth": "gotaxy.web.auth",
    "make_site": "gotaxy.web.service",
    "make_web_service": "gotaxy.web.service",
}

__all__ = ["Panel", "PanelAuth", "make_site", "make_web_service"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'gotaxy.web' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
