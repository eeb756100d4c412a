# -*- test-case-name: tests.test_web_api -*-
"""
The panel's HTTP face: the JSON API under ``/api/v0.1/`` and the static
front end from ``www/``.

``Panel`` is a Klein app bound to an instance, so the live objects it serves
(``Management``, ``PanelAuth``, the event bus) are injected, not global.
Every API route goes through ``_api``, which

* answers in JSON, always: errors are ``{"error": {"kind", "message",
  "field"}}`` with 400 (invalid), 401 (no or bad credentials), 403 (CSRF or
  a session-only action), 404, 405, 409 (conflict), 413, 415 or 429;
* finds the caller from an ``Authorization: Bearer`` API token or the session
  cookie (routes marked ``public`` skip this);
* for a state-changing request made with the cookie, requires the session's
  CSRF token in ``X-CSRF-Token`` and, when the browser sends ``Origin``,
  that it is this server; request bodies must be ``application/json`` (which
  a cross-site HTML form cannot send) and at most ``MAX_BODY`` bytes.

Live updates are server-sent events on ``GET /api/v0.1/live``: every event
the server publishes (``gotaxy.events``) is forwarded as one ``change``
message, and the browser re-reads what it shows.  A keep-alive comment every
``KEEPALIVE`` seconds also checks that the session still exists, and ends
the stream when it does not.

The routes and their JSON shapes are documented in ``gotaxy.web.openapi``;
``tests/test_web_api.py`` checks that the two agree.
"""

from __future__ import annotations

import base64
import functools
import hmac
import io
import json
import math
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence
from urllib.parse import unquote, urlsplit

import attrs
import qrcode
import qrcode.image.svg
from klein import Klein
from klein.interfaces import IKleinRequest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import IResource
from twisted.web.static import File
from werkzeug.exceptions import HTTPException

from gotaxy import __version__
from gotaxy.events import TYPES, Event, EventBus
from gotaxy.server.history import History
from gotaxy.server.manage import Management, ManagementError, bandwidth_value
from gotaxy.server.operators import AuthFailed, LockedOut, OperatorAuth
from gotaxy.store import StoreUnreachable
from gotaxy.web.auth import Caller, PanelAuth, PanelAuthError, SecondFactorRequired
from gotaxy.web.openapi import API_PREFIX, openapi_document

log = Logger(namespace="gotaxy.web")

SESSION_COOKIE = b"gotaxy_session"
MAX_BODY = 64 * 1024
MAX_STREAMS = 32
KEEPALIVE = 15.0
NAME_LIMIT = 64
URL_LIMIT = 2048
ADDRESS_LIMIT = 320  # RFC 5321: 64 for the local part, '@', 255 for the domain
#: ``GET /throughput``: the window it covers by default and at most (seconds).
THROUGHPUT_WINDOW = 3600.0
THROUGHPUT_WINDOW_MAX = 86400.0
#: ``GET /clients/{name}/stability``: the sessions of this many seconds back.
SESSIONS_WINDOW = 7 * 86400.0
#: ... and at most this many heartbeat round trips (the highest of each run when there are more).
MAX_RTT_POINTS = 720
UNSAFE_METHODS = {b"POST", b"PUT", b"PATCH", b"DELETE"}
SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"content-security-policy": (
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}
STATUS = {"invalid": 400, "unauthorized": 401, "forbidden": 403, "not_found": 404, "method": 405,
          "conflict": 409, "too_large": 413, "media_type": 415, "locked": 429, "internal": 500, "unavailable": 503}


class HTTPError(Exception):
    def __init__(self, kind: str, message: str, field: Optional[str] = None, **extra: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field
        self.extra = extra


def www_directory() -> Path:
    """The front end: installed beside this module, or ``www/`` in a source tree."""
    installed = Path(__file__).resolve().parent / "www"
    if (installed / "index.html").exists():
        return installed
    return Path(__file__).resolve().parent.parent.parent / "www"


class _StaticFiles(File):
    """``www/`` without directory listings."""

    def directoryListing(self) -> IResource:
        return notFound("No such page", "There is no page at this address.")


Handler = Callable[..., Awaitable[Any]]


def _api(public: bool = False, session_only: bool = False) -> Callable[[Handler], Handler]:
    """Wrap an API handler: JSON in and out, authentication, CSRF, error mapping."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(self: "Panel", request: Any, **kwargs: Any) -> Any:
            self._common_headers(request)
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            try:
                caller = None if public else await self._authorise(request)
                if session_only and caller is not None and caller.via != "session":
                    raise HTTPError("forbidden", "this action needs a panel log-in; API tokens cannot do it")
                result = await handler(self, request, caller, **kwargs)
            except CancelledError:
                raise
            except HTTPError as e:
                return self._error(request, e.kind, str(e), e.field, **e.extra)
            except (ManagementError, PanelAuthError) as e:
                return self._error(request, e.kind, str(e), e.field)
            except StoreUnreachable:
                # Not a bug: the database is down.  What runs goes on; the caller may retry.
                request.setHeader(b"retry-after", b"5")
                return self._error(request, "unavailable", "the server's database is unreachable, so this "
                                   "cannot be done now (connected clients keep working); try again in a moment")
            except Exception:
                # A bug: the traceback goes to the log, the caller gets JSON.
                log.failure("panel request {method} {path} failed", method=request.method, path=request.path)
                return self._error(request, "internal", "the server failed on this request; see its log file")
            if result is None:
                if request.code == 200:  # a handler may have said 202 already
                    request.setResponseCode(204)
                return b""
            return _dump(result)

        return wrapper

    return decorate


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _views(items: List[Any]) -> List[Dict[str, Any]]:
    return [attrs.asdict(item) for item in items]


def _at_most(samples: Sequence[Sequence[Any]], limit: int) -> List[List[Any]]:
    """[time, RTT] samples, merged into at most ``limit``: the last time and the highest RTT of each run."""
    if len(samples) <= limit:
        return [list(pair) for pair in samples]
    size = math.ceil(len(samples) / limit)
    merged = []
    for i in range(0, len(samples), size):
        group = samples[i : i + size]
        values = [rtt for _, rtt in group if rtt is not None]
        merged.append([group[-1][0], max(values) if values else None])
    return merged


def _stability_summary(record: Dict[str, Any]) -> Dict[str, Any]:
    """A client's stability without its RTT samples."""
    return {k: v for k, v in record.items() if k != "rtt_samples_24h"}


def _token(record: Any, now: float) -> Dict[str, Any]:
    return dict(attrs.asdict(record), active=record.active(now))


def _event(event: Any) -> Dict[str, Any]:
    return attrs.asdict(event)


class Panel:
    app = Klein()

    def __init__(
        self,
        management: Management,
        operators: OperatorAuth,
        auth: PanelAuth,
        bus: EventBus,
        reactor: Any,
        secure: bool = False,
        www: Optional[Path] = None,
        history: Optional[History] = None,
    ) -> None:
        self.management = management
        self.history = history
        self.operators = operators
        self.auth = auth
        self.bus = bus
        self.reactor = reactor
        self.secure = secure
        self.www = www or www_directory()
        self._streams = 0
        #: The live views open now, by request (a new ban closes those from its address: ``cut``).
        self._live: Dict[Any, Caller] = {}

    def cut(self, banned: str, under: Any) -> Deferred:
        """
        A new ban of ``banned``: the panel sessions logged in from under it
        end (in the store, so in every process), and the live views open from
        there, or of those sessions, close at once.
        """
        async def cut() -> int:
            ended = await self.auth.end_sessions_from(under)
            for request, caller in list(self._live.items()):
                peer = getattr(request.getClientAddress(), "host", "")
                if under(peer) or (caller.via == "session" and not await self.auth.session_exists(caller.session_key)):
                    request.channel.loseConnection()
            return ended

        return Deferred.fromCoroutine(cut())

    def resource(self) -> Any:
        return self.app.resource()

    # -- plumbing ----------------------------------------------------------------

    def _common_headers(self, request: Any) -> None:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)

    def _error(self, request: Any, kind: str, message: str, field: Optional[str] = None, **extra: Any) -> bytes:
        request.setResponseCode(STATUS.get(kind, 400))
        if kind == "unauthorized":
            request.setHeader(b"www-authenticate", b'Bearer realm="gotaxy"')
        if "retry_after" in extra:
            request.setHeader(b"retry-after", str(math.ceil(extra["retry_after"])).encode())
        return _dump({"error": dict(kind=kind, message=message, field=field, **extra)})

    def _address(self, request: Any) -> str:
        peer = request.getClientAddress()
        return getattr(peer, "host", None) or str(peer)

    def _check_origin(self, request: Any) -> None:
        origin = request.getHeader(b"origin")
        if origin is None:
            return
        host = request.getHeader(b"host") or b""
        if urlsplit(origin.decode("latin-1")).netloc.encode("latin-1") != host:
            raise HTTPError("forbidden", "cross-site requests are refused; use the panel from its own address")

    async def _authorise(self, request: Any) -> Caller:
        header = request.getHeader(b"authorization")
        if header is not None:
            scheme, _, token = header.decode("latin-1").partition(" ")
            caller = await self.auth.bearer(token.strip()) if scheme.lower() == "bearer" else None
            if caller is None:
                raise HTTPError("unauthorized", "the API token is not valid; create one in the panel under Tokens")
            return caller
        session_id = request.getCookie(SESSION_COOKIE)
        caller = await self.auth.session(session_id.decode("latin-1")) if session_id else None
        if caller is None:
            raise HTTPError("unauthorized", "log in first (or send an API token as 'Authorization: Bearer ...')")
        if request.method in UNSAFE_METHODS:
            self._check_origin(request)
            sent = (request.getHeader(b"x-csrf-token") or b"").decode("latin-1")
            if not hmac.compare_digest(sent.encode(), (caller.csrf_token or "").encode()):
                raise HTTPError("forbidden", "missing or wrong X-CSRF-Token header; reload the panel and try again")
        return caller

    def _body(self, request: Any) -> Dict[str, Any]:
        if getattr(request, "body_too_large", False):
            raise HTTPError("too_large", f"the request body is larger than {MAX_BODY // 1024} KiB")
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            raise HTTPError("media_type", "send the request body as JSON with 'Content-Type: application/json'")
        request.content.seek(0)
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise HTTPError("too_large", f"the request body is larger than {MAX_BODY // 1024} KiB")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise HTTPError("invalid", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPError("invalid", "the request body must be a JSON object")
        return body

    @staticmethod
    def _optional(body: Dict[str, Any], key: str, limit: int = 256) -> Optional[str]:
        value = body.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value or len(value) > limit:
            raise HTTPError("invalid", f"'{key}' must be a text of 1 to {limit} characters", key)
        return value

    @classmethod
    def _string(cls, body: Dict[str, Any], key: str, limit: int = 256) -> str:
        value = cls._optional(body, key, limit)
        if value is None:
            raise HTTPError("invalid", f"'{key}' is missing: give a text of 1 to {limit} characters", key)
        return value

    @staticmethod
    def _spec(body: Dict[str, Any]) -> Dict[str, Any]:
        spec = body["spec"]
        if not isinstance(spec, dict) or len(spec) > 64:
            raise HTTPError("invalid", "'spec' must be an object of frp's tunnel keys, such as "
                                       '{"type": "tcp", "localPort": 22}', "spec")
        return spec

    @staticmethod
    def _integer(body: Dict[str, Any], key: str) -> Optional[int]:
        value = body.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise HTTPError("invalid", f"'{key}' must be a whole number", key)
        return value

    @staticmethod
    def _query(request: Any, key: str) -> Optional[str]:
        values = request.args.get(key.encode())
        if not values or not values[0]:
            return None
        return values[0].decode("utf-8", "replace")

    def _query_number(self, request: Any, key: str) -> Optional[float]:
        text = self._query(request, key)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            raise HTTPError("invalid", f"query parameter '{key}' must be a number", key) from None
        if not math.isfinite(value):
            raise HTTPError("invalid", f"query parameter '{key}' must be a finite number", key)
        return value

    # -- public ----------------------------------------------------------------

    @app.route(f"{API_PREFIX}/health", methods=["GET"])
    @_api(public=True)
    async def health(self, request: Any, caller: None) -> Dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.route(f"{API_PREFIX}/login", methods=["POST"])
    @_api(public=True)
    async def login(self, request: Any, caller: None) -> Dict[str, Any]:
        self._check_origin(request)
        body = self._body(request)
        username = self._string(body, "username", limit=64)
        password = self._string(body, "password", limit=1024)
        code = self._optional(body, "code", limit=16)
        try:
            session_id, session = await self.auth.login(username, password, code, self._address(request))
        except LockedOut as e:
            raise HTTPError("locked", str(e), retry_after=e.retry_after) from None
        except SecondFactorRequired as e:
            raise HTTPError("unauthorized", str(e), "code", totp_required=True) from None
        except AuthFailed as e:
            field = "code" if code else "password"
            raise HTTPError("unauthorized", f"{e}; check it and try again", field) from None
        request.addCookie(
            SESSION_COOKIE, session_id.encode(), path=b"/", httpOnly=True, secure=self.secure or None,
            sameSite=b"strict",
        )
        return await self._account(session)

    # -- account ---------------------------------------------------------------

    async def _account(self, caller: Caller) -> Dict[str, Any]:
        return {
            "username": caller.username,
            "via": caller.via,
            "csrf_token": caller.csrf_token,
            "expires_at": caller.expires_at,
            "totp_enabled": await self.auth.totp_enabled(caller.username),
        }

    @app.route(f"{API_PREFIX}/logout", methods=["POST"])
    @_api(session_only=True)
    async def logout(self, request: Any, caller: Caller) -> None:
        await self.auth.logout(caller)
        request.addCookie(
            SESSION_COOKIE, b"", path=b"/", httpOnly=True, secure=self.secure or None, sameSite=b"strict",
            max_age=b"0",
        )

    @app.route(f"{API_PREFIX}/account", methods=["GET"])
    @_api()
    async def account(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return await self._account(caller)

    @app.route(f"{API_PREFIX}/account/password", methods=["POST"])
    @_api(session_only=True)
    async def change_password(self, request: Any, caller: Caller) -> None:
        body = self._body(request)
        old = self._string(body, "old_password", limit=1024)
        new = self._string(body, "new_password", limit=1024)
        try:
            await self.operators.change_password(caller.username, old, new, self._address(request), "web")
        except LockedOut as e:
            raise HTTPError("locked", str(e), "old_password", retry_after=e.retry_after) from None
        except AuthFailed:
            raise HTTPError("invalid", "the current password is wrong; type it again", "old_password") from None
        except ValueError as e:
            raise HTTPError("invalid", str(e), "new_password") from None
        await self.auth.end_other_sessions(caller)

    @app.route(f"{API_PREFIX}/account/totp", methods=["POST"])
    @_api(session_only=True)
    async def begin_totp(self, request: Any, caller: Caller) -> Dict[str, Any]:
        secret, uri = await self.auth.begin_totp(caller.username)
        image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2)
        svg = io.BytesIO()
        image.save(svg)
        return {
            "secret": secret,
            "uri": uri,
            "qr_svg": "data:image/svg+xml;base64," + base64.b64encode(svg.getvalue()).decode("ascii"),
        }

    @app.route(f"{API_PREFIX}/account/totp/confirm", methods=["POST"])
    @_api(session_only=True)
    async def confirm_totp(self, request: Any, caller: Caller) -> Dict[str, Any]:
        code = self._string(self._body(request), "code", limit=16)
        await self.auth.confirm_totp(caller.username, code)
        return await self._account(caller)

    @app.route(f"{API_PREFIX}/account/totp/disable", methods=["POST"])
    @_api(session_only=True)
    async def disable_totp(self, request: Any, caller: Caller) -> Dict[str, Any]:
        code = self._string(self._body(request), "code", limit=16)
        await self.auth.disable_totp(caller.username, code)
        return await self._account(caller)

    # -- API tokens --------------------------------------------------------------

    @app.route(f"{API_PREFIX}/api-tokens", methods=["GET"])
    @_api(session_only=True)
    async def api_tokens(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return {"api_tokens": _views(await self.auth.api_tokens())}

    @app.route(f"{API_PREFIX}/api-tokens", methods=["POST"])
    @_api(session_only=True)
    async def create_api_token(self, request: Any, caller: Caller) -> Dict[str, Any]:
        name = self._string(self._body(request), "name", limit=NAME_LIMIT)
        record, token = await self.auth.create_api_token(caller.username, name)
        request.setResponseCode(201)
        return {"api_token": attrs.asdict(record), "token": token}

    @app.route(f"{API_PREFIX}/api-tokens/<name>", methods=["DELETE"])
    @_api(session_only=True)
    async def revoke_api_token(self, request: Any, caller: Caller, name: str) -> None:
        await self.auth.revoke_api_token(name)

    # -- overview, clients -------------------------------------------------------

    @app.route(f"{API_PREFIX}/openapi.json", methods=["GET"])
    @_api()
    async def openapi(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return openapi_document()

    @app.route(f"{API_PREFIX}/status", methods=["GET"])
    @_api()
    async def status(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return attrs.asdict(await self.management.status())

    @app.route(f"{API_PREFIX}/nodes", methods=["GET"])
    @_api()
    async def nodes(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return {"nodes": _views(await self.management.nodes())}

    @app.route(f"{API_PREFIX}/clients", methods=["GET"])
    @_api()
    async def clients(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return {"clients": _views(await self.management.clients())}

    @app.route(f"{API_PREFIX}/clients/<name>", methods=["GET"])
    @_api()
    async def client(self, request: Any, caller: Caller, name: str) -> Dict[str, Any]:
        return attrs.asdict(await self.management.client(name))

    # -- history ---------------------------------------------------------------------

    def _history(self) -> History:
        if self.history is None:
            raise HTTPError("unavailable", "this server keeps no history; it runs without the history service")
        return self.history

    @app.route(f"{API_PREFIX}/throughput", methods=["GET"])
    @_api()
    async def throughput(self, request: Any, caller: Caller) -> Dict[str, Any]:
        history = self._history()
        window = self._query_number(request, "window")
        window = THROUGHPUT_WINDOW if window is None else window
        if not 60 <= window <= THROUGHPUT_WINDOW_MAX:
            raise HTTPError("invalid", f"'window' must be from 60 to {THROUGHPUT_WINDOW_MAX:.0f} seconds", "window")
        until = self.reactor.seconds()
        points = await history.throughput(until - window, until)
        return {"window": window, "until": until, "interval": history.sample_interval, "points": points}

    @app.route(f"{API_PREFIX}/stability", methods=["GET"])
    @_api()
    async def stability(self, request: Any, caller: Caller) -> Dict[str, Any]:
        known = {view.name for view in await self.management.clients()}
        records = [r for r in await self._history().all_stability(with_rtt=False) if r["client"] in known]
        return {"clients": [_stability_summary(r) for r in records]}

    @app.route(f"{API_PREFIX}/clients/<name>/stability", methods=["GET"])
    @_api()
    async def client_stability(self, request: Any, caller: Caller, name: str) -> Dict[str, Any]:
        history = self._history()
        await self.management.client(name)  # 404 for a client nobody knows
        record = await history.client_stability(name)
        since = self.reactor.seconds() - SESSIONS_WINDOW
        record = dict(_stability_summary(record), rtt_samples_24h=_at_most(record["rtt_samples_24h"], MAX_RTT_POINTS))
        record["sessions_7d"] = await history.client_sessions(name, since)
        return record

    @app.route(f"{API_PREFIX}/clients/<name>/kick", methods=["POST"])
    @_api()
    async def kick(self, request: Any, caller: Caller, name: str) -> None:
        await self.management.kick(name)

    # -- tunnels -----------------------------------------------------------------

    @app.route(f"{API_PREFIX}/proxy-types", methods=["GET"])
    @_api()
    async def proxy_types(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return {"types": self.management.proxy_types()}

    @app.route(f"{API_PREFIX}/tunnels", methods=["GET"])
    @_api()
    async def tunnels(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return {"tunnels": _views(await self.management.tunnels(self._query(request, "client")))}

    @app.route(f"{API_PREFIX}/tunnels", methods=["POST"])
    @_api()
    async def add_tunnel(self, request: Any, caller: Caller) -> Dict[str, Any]:
        body = self._body(request)
        client = self._string(body, "client", limit=NAME_LIMIT)
        name = self._string(body, "name", limit=NAME_LIMIT)
        if "spec" in body:  # any proxy type, in frp's keys
            view = await self.management.define_tunnel(client, name, self._spec(body))
        else:  # the tcp form
            view = await self.management.add_tunnel(
                client, name, self._string(body, "local_addr", limit=300), self._integer(body, "remote_port") or 0,
            )
        request.setResponseCode(201)
        return attrs.asdict(view)

    @app.route(f"{API_PREFIX}/tunnels/<client>/<name>", methods=["GET"])
    @_api()
    async def tunnel(self, request: Any, caller: Caller, client: str, name: str) -> Dict[str, Any]:
        return attrs.asdict(await self.management.tunnel(client, name))

    @app.route(f"{API_PREFIX}/tunnels/<client>/<name>", methods=["PATCH"])
    @_api()
    async def edit_tunnel(self, request: Any, caller: Caller, client: str, name: str) -> Dict[str, Any]:
        body = self._body(request)
        if "spec" in body:
            view = await self.management.change_tunnel(client, name, self._spec(body))
        else:
            view = await self.management.edit_tunnel(
                client, name, self._optional(body, "local_addr", limit=300), self._integer(body, "remote_port")
            )
        return attrs.asdict(view)

    @app.route(f"{API_PREFIX}/tunnels/<client>/<name>", methods=["DELETE"])
    @_api()
    async def remove_tunnel(self, request: Any, caller: Caller, client: str, name: str) -> None:
        await self.management.remove_tunnel(client, name)

    @app.route(f"{API_PREFIX}/tunnels/<client>/<name>/enable", methods=["POST"])
    @_api()
    async def enable_tunnel(self, request: Any, caller: Caller, client: str, name: str) -> Dict[str, Any]:
        return attrs.asdict(await self.management.set_enabled(client, name, True))

    @app.route(f"{API_PREFIX}/tunnels/<client>/<name>/disable", methods=["POST"])
    @_api()
    async def disable_tunnel(self, request: Any, caller: Caller, client: str, name: str) -> Dict[str, Any]:
        return attrs.asdict(await self.management.set_enabled(client, name, False))

    @app.route(f"{API_PREFIX}/tunnels/<client>/<name>/restart", methods=["POST"])
    @_api()
    async def restart_tunnel(self, request: Any, caller: Caller, client: str, name: str) -> Dict[str, Any]:
        return attrs.asdict(await self.management.restart_tunnel(client, name))

    # -- client tokens -------------------------------------------------------------

    @app.route(f"{API_PREFIX}/tokens", methods=["GET"])
    @_api()
    async def tokens(self, request: Any, caller: Caller) -> Dict[str, Any]:
        now = self.reactor.seconds()
        return {"tokens": [_token(t, now) for t in await self.management.tokens()]}

    @app.route(f"{API_PREFIX}/tokens", methods=["POST"])
    @_api()
    async def create_token(self, request: Any, caller: Caller) -> Dict[str, Any]:
        body = self._body(request)
        name = self._string(body, "name", limit=NAME_LIMIT)
        expires_at = body.get("expires_at")
        if expires_at is not None:
            if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)) or not math.isfinite(expires_at):
                raise HTTPError("invalid", "'expires_at' must be a UNIX time in seconds, or null for no expiry", "expires_at")
            if expires_at <= self.reactor.seconds():
                raise HTTPError("invalid", "the expiry must be in the future; pick a later date", "expires_at")
        record, token = await self.management.create_token(name, expires_at, body.get("allow_domains") or ())
        request.setResponseCode(201)
        return {"token": _token(record, self.reactor.seconds()), "secret": token}

    @app.route(f"{API_PREFIX}/tokens/<name>", methods=["PATCH"])
    @_api()
    async def change_token(self, request: Any, caller: Caller, name: str) -> Dict[str, Any]:
        body = self._body(request)
        if not body or set(body) - {"allow_domains", "max_bandwidth"}:
            raise HTTPError("invalid", "give 'allow_domains' (a list of names; empty: those the server allows) and/or "
                            "'max_bandwidth' (\"10MB\", or 0 for none of its own)",
                            "allow_domains" if "max_bandwidth" not in body else "max_bandwidth")
        if "max_bandwidth" in body:
            record = await self.management.set_token_bandwidth(name, body["max_bandwidth"])
        if "allow_domains" in body:
            record = await self.management.set_token_domains(name, body["allow_domains"] or ())
        return _token(record, self.reactor.seconds())

    @app.route(f"{API_PREFIX}/limits", methods=["GET"])
    @_api()
    async def limits(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return self.management.limits()

    @app.route(f"{API_PREFIX}/limits", methods=["PATCH"])
    @_api()
    async def change_limits(self, request: Any, caller: Caller) -> Dict[str, Any]:
        # Each key given: a rate is its live value (0: no limit), null drops the live value (server.toml's again).
        from gotaxy.store.overrides import KEYS

        body = self._body(request)
        if not body or set(body) - set(KEYS):
            unknown = sorted(set(body) - set(KEYS))
            raise HTTPError("invalid", f"give {' and/or '.join(repr(k) for k in KEYS)}: a rate such as \"100MB\" "
                            "(0: no limit), or null to go back to server.toml's" +
                            (f"; {unknown[0][:64]!r} cannot be changed live" if unknown else ""),
                            unknown[0][:64] if unknown else None)
        for key in KEYS:  # every value is checked before any is changed
            if body.get(key) is not None:
                bandwidth_value(body[key], key)
        limits = self.management.limits()
        who = self._who(caller)
        for key in KEYS:  # each change is its own limits.changed event
            if key not in body:
                continue
            if body[key] is None:
                if key in limits["live"]:
                    limits = await self.management.clear_limit(key, who)
            else:
                limits = await self.management.set_limit(key, body[key], who)
        return limits

    @app.route(f"{API_PREFIX}/tokens/<name>", methods=["DELETE"])
    @_api()
    async def revoke_token(self, request: Any, caller: Caller, name: str) -> None:
        await self.management.revoke_token(name)

    # -- client certificates (gotaxy.tls.clients) ----------------------------------

    @app.route(f"{API_PREFIX}/certificates", methods=["GET"])
    @_api()
    async def certificates(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return {"settings": self.management.certificate_settings(),
                "certificates": await self.management.certificates()}

    @app.route(f"{API_PREFIX}/certificates", methods=["POST"])
    @_api()
    async def issue_certificate(self, request: Any, caller: Caller) -> Dict[str, Any]:
        # The new key is in this answer only (no-store, like every API answer) and kept nowhere on the server.
        body = self._body(request)
        name = self._string(body, "name", limit=NAME_LIMIT)
        days = body.get("days", 365)
        if isinstance(days, bool) or not isinstance(days, int):
            raise HTTPError("invalid", "'days' must be a whole number of days", "days")
        issued = await self.management.issue_certificate(name, days, self._who(caller))
        request.setResponseCode(201)
        return {"certificate": issued}

    @app.route(f"{API_PREFIX}/certificates/<what>", methods=["DELETE"])
    @_api()
    async def revoke_certificate(self, request: Any, caller: Caller, what: str) -> Dict[str, Any]:
        return {"revoked": await self.management.revoke_certificate(unquote(what), self._who(caller))}

    # -- notification targets ------------------------------------------------------

    @app.route(f"{API_PREFIX}/webhooks", methods=["GET"])
    @_api()
    async def webhooks(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return {"webhooks": _views(await self.management.webhooks())}

    @app.route(f"{API_PREFIX}/webhooks", methods=["POST"])
    @_api()
    async def add_webhook(self, request: Any, caller: Caller) -> Dict[str, Any]:
        body = self._body(request)
        name = self._string(body, "name", limit=NAME_LIMIT)
        url = self._string(body, "url", limit=URL_LIMIT)
        events = self._events(body)
        format_ = self._optional(body, "format", limit=32) or "json"
        secret = self._optional(body, "secret", limit=1024)
        view = await self.management.add_webhook(name, url, events, format_, secret)
        request.setResponseCode(201)
        return attrs.asdict(view)

    @staticmethod
    def _events(body: Dict[str, Any]) -> Sequence[str]:
        """``events``: a list of event types or patterns; absent or null means all."""
        value = body.get("events")
        if value is None:
            return ("*",)
        if (
            not isinstance(value, list)
            or not 1 <= len(value) <= 64
            or not all(isinstance(item, str) and 0 < len(item) <= 128 for item in value)
        ):
            raise HTTPError(
                "invalid", "'events' must be a list of event types such as [\"client.disconnected\", \"tunnel.*\"]",
                "events",
            )
        return tuple(value)

    @app.route(f"{API_PREFIX}/webhooks/<name>", methods=["DELETE"])
    @_api()
    async def remove_webhook(self, request: Any, caller: Caller, name: str) -> None:
        await self.management.remove_webhook(name)

    @app.route(f"{API_PREFIX}/webhooks/<name>/test", methods=["POST"])
    @_api()
    async def test_webhook(self, request: Any, caller: Caller, name: str) -> None:
        await self.management.test_webhook(name)
        request.setResponseCode(202)  # queued; delivery (and its retries) happen later

    @app.route(f"{API_PREFIX}/mail-recipients", methods=["GET"])
    @_api()
    async def mail_recipients(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return {"recipients": _views(await self.management.mail_recipients())}

    @app.route(f"{API_PREFIX}/mail-recipients", methods=["POST"])
    @_api()
    async def add_mail_recipient(self, request: Any, caller: Caller) -> Dict[str, Any]:
        body = self._body(request)
        address = self._string(body, "address", limit=ADDRESS_LIMIT)
        events = self._events(body)
        view = await self.management.add_mail_recipient(address, events)
        request.setResponseCode(201)
        return attrs.asdict(view)

    # An address holds '@' (and may hold '+' or '%'): the panel sends it percent-encoded, and
    # Klein hands path segments over still encoded.
    @app.route(f"{API_PREFIX}/mail-recipients/<address>", methods=["DELETE"])
    @_api()
    async def remove_mail_recipient(self, request: Any, caller: Caller, address: str) -> None:
        await self.management.remove_mail_recipient(unquote(address))

    @app.route(f"{API_PREFIX}/mail-recipients/<address>/test", methods=["POST"])
    @_api()
    async def test_mail(self, request: Any, caller: Caller, address: str) -> None:
        await self.management.test_mail(unquote(address))
        request.setResponseCode(202)  # queued; the SMTP attempt (and its retries) happen later

    # -- who may connect (gotaxy.server.access) --------------------------------------

    @staticmethod
    def _who(caller: Caller) -> str:
        return f"API token {caller.token_name!r}" if caller.via == "token" else f"panel operator {caller.username}"

    @app.route(f"{API_PREFIX}/access", methods=["GET"])
    @_api()
    async def access_rules(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return self.management.access_rules()

    @app.route(f"{API_PREFIX}/bans", methods=["GET"])
    @_api()
    async def bans(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return {"bans": self.management.bans()}

    @app.route(f"{API_PREFIX}/bans", methods=["POST"])
    @_api()
    async def add_ban(self, request: Any, caller: Caller) -> Dict[str, Any]:
        body = self._body(request)
        address = self._string(body, "address", limit=64)
        seconds = body.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
            raise HTTPError("invalid", "'seconds' must be a number of seconds", "seconds")
        reason = self._optional(body, "reason", limit=200) or ""
        ban = await self.management.ban(address, seconds, reason, self._who(caller))
        request.setResponseCode(201)
        return ban

    # An IPv6 address holds ':': the panel sends it percent-encoded.
    # An IPv6 ban is a network ("2001:db8::/64"): its '/' too.
    @app.route(f"{API_PREFIX}/bans/<path:address>", methods=["DELETE"])
    @_api()
    async def lift_ban(self, request: Any, caller: Caller, address: str) -> None:
        await self.management.lift_ban(unquote(address), self._who(caller))

    # -- events, reload ------------------------------------------------------------

    @app.route(f"{API_PREFIX}/events/types", methods=["GET"])
    @_api()
    async def event_types(self, request: Any, caller: Caller) -> Dict[str, Any]:
        return {"types": [
            {"type": t.name, "family": t.family, "meaning": t.meaning, "fields": list(t.fields), "recorded": t.recorded}
            for t in TYPES.values()
        ]}

    @app.route(f"{API_PREFIX}/events", methods=["GET"])
    @_api()
    async def events(self, request: Any, caller: Caller) -> Dict[str, Any]:
        limit = self._query_number(request, "limit")
        offset = self._query_number(request, "offset")
        limit = 50.0 if limit is None else limit
        offset = 0.0 if offset is None else offset
        if limit != int(limit) or not 1 <= limit <= 500:
            raise HTTPError("invalid", "'limit' must be a whole number from 1 to 500", "limit")
        if offset != int(offset) or offset < 0:
            raise HTTPError("invalid", "'offset' must be a whole number, 0 or more", "offset")
        records = await self.management.events(
            self._query(request, "type"),
            self._query(request, "client"),
            self._query_number(request, "since"),
            self._query_number(request, "until"),
            int(limit) + 1,
            int(offset),
        )
        return {
            "events": _views(records[: int(limit)]),
            "limit": int(limit),
            "offset": int(offset),
            "has_more": len(records) > limit,
        }

    @app.route(f"{API_PREFIX}/reload", methods=["POST"])
    @_api()
    async def reload(self, request: Any, caller: Caller) -> Dict[str, Any]:
        who = (f"API token {caller.token_name!r}" if caller.via == "token"
               else f"panel operator {caller.username}")
        report = await self.management.reload(who)
        return report.to_json()

    # -- live updates ----------------------------------------------------------------

    @app.route(f"{API_PREFIX}/live", methods=["GET"])
    @_api()
    async def live(self, request: Any, caller: Caller) -> None:
        if self._streams >= MAX_STREAMS:
            raise HTTPError("unavailable", f"more than {MAX_STREAMS} live views are open; close some panel tabs")
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b"retry: 3000\n\n")

        def forward(event: Event) -> None:
            request.write(b"event: change\ndata: " + _dump(_event(event)) + b"\n\n")

        async def keep_alive() -> None:
            if caller.via == "session" and await self.auth.session_exists(caller.session_key) is False:
                request.channel.loseConnection()  # logged out or expired
            else:
                request.write(b": keep-alive\n\n")

        unsubscribe = self.bus.subscribe(forward)
        self._live[request] = caller
        ticker = LoopingCall(lambda: Deferred.fromCoroutine(keep_alive()))
        ticker.clock = self.reactor
        ticker.start(KEEPALIVE, now=False)
        self._streams += 1

        def ended(_: Any) -> None:
            self._streams -= 1
            self._live.pop(request, None)
            unsubscribe()
            if ticker.running:
                ticker.stop()

        request.notifyFinish().addBoth(ended)
        await Deferred()  # until the browser goes away (Klein cancels this then)

    # -- everything else -------------------------------------------------------------

    @app.route(f"{API_PREFIX}/", branch=True)
    @_api()
    async def unknown(self, request: Any, caller: Caller) -> None:
        mapper = IKleinRequest(request).mapper
        allowed = []
        for method in ("GET", "POST", "PATCH", "DELETE", "PUT"):
            try:
                rule, _ = mapper.match(method=method, return_rule=True)
            except HTTPException:
                continue
            if "__rest__" not in rule.rule:
                allowed.append(method)
        if allowed:
            request.setHeader(b"allow", ", ".join(allowed).encode())
            raise HTTPError("method", f"{request.method.decode()} is not allowed here; use {' or '.join(allowed)}")
        raise HTTPError("not_found", "no such API route; see /api/v0.1/openapi.json for the list")

    @app.route("/", branch=True)
    def static(self, request: Any) -> Any:
        self._common_headers(request)
        request.setHeader(b"cache-control", b"no-cache")
        return _StaticFiles(str(self.www))
