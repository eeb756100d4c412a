"""The web panel and its REST API (see ``app`` for the design)."""

from gotaxy.web.app import Panel
from gotaxy.web.auth import PanelAuth
from gotaxy.web.service import make_site, make_web_service

__all__ = ["Panel", "PanelAuth", "make_site", "make_web_service"]
