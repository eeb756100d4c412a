# -*- test-case-name: tests.test_web_api -*-
"""
Test support for the web panel, shipped with it so that other code can test
against it: ``WebClient`` drives a ``Panel`` through
``treq.testing.StubTreq`` (no socket) like a browser or a script would, and
checks every answer against the OpenAPI document (needs ``jsonschema``, in
the ``test`` extra).
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, Optional, Tuple

import jsonschema
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gotaxy.sealing import Sealer, key_path
from gotaxy.web.app import Panel
from gotaxy.web.auth import PanelAuth
from gotaxy.web.openapi import openapi_document
from gotaxy.web.service import make_site

DOCUMENT = openapi_document()
BASE = "http://127.0.0.1:7500"


def make_panel(live: Any, secure: bool = False) -> Panel:
    """A panel on ``live`` (a ``tests.inprocess.LiveSystem`` or anything with its attributes)."""
    auth = PanelAuth(live.core, live.operators, reactor, Sealer.at(key_path(live.data_dir)))
    return Panel(live.management, live.operators, auth, live.core.events, reactor, secure=secure,
                 history=getattr(live.server, "history", None))


def _template_for(path: str, method: str) -> Optional[str]:
    for template, item in DOCUMENT["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template
    return None


def check_schema(method: str, path: str, status: int, body: Any) -> None:
    """Fail unless ``body`` is what the document says ``method path`` answers with ``status``."""
    template = _template_for(path.split("?")[0], method)
    if template is None:
        assert status in (401, 404, 405), f"{method} {path} is not documented but answered {status}"
        jsonschema.validate(body, {"$ref": "#/components/schemas/Error", "components": DOCUMENT["components"]})
        return
    responses = DOCUMENT["paths"][template][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {template} answered {status}, which is not documented"
    content = responses[str(status)].get("content", {}).get("application/json")
    if content is None:
        if template.endswith("openapi.json"):
            return
        assert body is None, f"{method} {template} {status} should have no body, got {body!r}"
        return
    schema = dict(content["schema"], components=DOCUMENT["components"])
    jsonschema.Draft202012Validator(schema).validate(body)


class Response:
    def __init__(self, status: int, headers: Any, raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw
        self.json: Any = json.loads(raw) if raw and headers.getRawHeaders(b"content-type", [b""])[0].startswith(
            b"application/json") else None

    def header(self, name: str) -> Optional[str]:
        values = self.headers.getRawHeaders(name.encode())
        return values[0].decode() if values else None

    @property
    def error(self) -> Dict[str, Any]:
        assert self.json is not None, f"no JSON error in {self.raw!r}"
        return self.json["error"]


class WebClient:
    """A browser or script talking to the panel: keeps the cookie and CSRF token."""

    def __init__(self, resource: Any) -> None:
        self.stub: Any = StubTreq(resource)
        self.session: Optional[str] = None
        self.csrf: Optional[str] = None
        self.bearer: Optional[str] = None

    @classmethod
    def for_panel(cls, panel: Panel, extra: Dict[bytes, Any] = {}) -> "WebClient":
        return cls(make_site(panel, extra).resource)

    async def _settle(self, d: Any) -> Any:
        # treq reads the whole body before firing, which needs more flushes
        # after the request "fired" (d.called is then True but d is paused).
        done: list = []

        def arrived(result: Any) -> Any:
            done.append(True)
            return result

        d.addBoth(arrived)
        while not done:
            self.stub.flush()
            await deferLater(reactor, 0.002, lambda: None)
        return await d

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        csrf: bool = True,
        check: bool = True,
    ) -> Response:
        sent: Dict[str, str] = {}
        if self.session:
            sent["Cookie"] = f"gotaxy_session={self.session}"
        if self.bearer:
            sent["Authorization"] = f"Bearer {self.bearer}"
        if csrf and self.csrf and method != "GET":
            sent["X-CSRF-Token"] = self.csrf
        if body is not None:
            raw = json.dumps(body).encode()
        if raw is not None:
            sent.setdefault("Content-Type", "application/json")
        sent.update(headers or {})
        d = self.stub.request(method, BASE + path, headers={k: [v] for k, v in sent.items()}, data=raw)
        response = await self._settle(d)
        content = await self._settle(self.stub.content(response))
        result = Response(response.code, response.headers, content)
        if check and path.startswith("/api/"):
            check_schema(method, path, result.status, result.json)
        return result

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Response:
        return await self.request("DELETE", path, **kw)

    async def login(self, password: str, code: Optional[str] = None,
                    username: str = "admin") -> Response:
        body = {"username": username, "password": password}
        if code is not None:
            body["code"] = code
        response = await self.post("/api/v0.1/login", body)
        if response.status == 200:
            cookie = response.header("set-cookie") or ""
            self.session = cookie.split(";")[0].split("=", 1)[1]
            self.csrf = response.json["csrf_token"]
        return response


def cookie_attributes(set_cookie: str) -> Tuple[str, set]:
    parts = [p.strip() for p in set_cookie.split(";")]
    return parts[0], {p.split("=")[0].lower() + ("=" + p.split("=", 1)[1].lower() if "=" in p else "") for p in parts[1:]}
