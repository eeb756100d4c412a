# -*- test-case-name: tests.test_web_api -*-
"""
The panel's listening service: ``make_web_service`` builds the
``twisted.web`` site (the ``Panel`` app plus any extra top-level resources,
such as ``/metrics``) and the listener that serves it over HTTP, or HTTPS
when ``webServer.tls.certFile`` and ``keyFile`` are set, on
``webServer.addr:port`` or the endpoint string ``webServer.endpoint``.

The listener binds at start like every other (a busy port still ends the
start), but the panel behind it is made later (``PanelSite``): importing
Klein, werkzeug and the panel's routes was about a third of a server's
start-up before its control port listened (py-spy, docs/operations.md,
"Restarts and upgrades"), and clients reconnecting after a restart need
none of it.  It is made at the panel's first connection (or when the server
needs it: a ban ends the panel sessions from that address), not before:
it was made 2 s after the start, but an idle server that nobody opens the
panel of then held 5 MiB for it (issue 15 goal 3); the first request waits
for it once (docs/benchmarks.md, "Issue 15, goals 3 and 4").
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional
from urllib.parse import unquote_to_bytes

from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from gotaxy.listeners import WEB, ListenAt, Listener, listen_at
from gotaxy.logs import gotaxy_observer
from gotaxy.tls import load_server_tls_options
from gotaxy.sealing import Sealer, key_path
from gotaxy.web.auth import PanelAuth

if TYPE_CHECKING:
    from gotaxy.web.app import Panel


class BoundedRequest(Request):
    """
    A request that keeps at most ``MAX_BODY`` bytes of its body: the rest is
    dropped as it arrives and ``body_too_large`` is set, so the panel answers
    413 and a huge upload cannot fill memory or disk.
    """

    body_too_large = False
    _received = 0

    def handleContentChunk(self, data: bytes) -> None:
        from gotaxy.web.app import MAX_BODY

        self._received += len(data)
        if self._received > MAX_BODY + 1:
            self.body_too_large = True
            return
        super().handleContentChunk(data)

log = Logger(observer=gotaxy_observer, namespace="gotaxy.web")

PATH_LIMIT = 2048  #: longer paths are refused (no route or file of the panel comes near)
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def path_problem(path: bytes) -> Optional[str]:
    """
    Why the panel cannot serve ``path`` (a request's raw path, without the
    query), or None if it is well-formed: not too long, valid percent-escapes
    that decode to UTF-8, no control characters (NUL included).  Such paths
    reach neither Klein (which logs a traceback for invalid UTF-8) nor the
    file system (which raises on NUL).
    """
    if len(path) > PATH_LIMIT:
        return f"the address is longer than {PATH_LIMIT} characters"
    if _BAD_PERCENT.search(path):
        return "the address has a '%' that is not followed by two hexadecimal digits"
    try:
        text = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return "the address is not valid UTF-8 once its %-escapes are decoded"
    if _CONTROL.search(text):
        return "the address holds a control character (such as %00)"
    return None


class MalformedPath(Resource):
    """A 400 in the panel's JSON error shape, for a path ``path_problem`` refuses."""

    isLeaf = True

    def __init__(self, problem: str) -> None:
        super().__init__()
        self.problem = problem

    def render(self, request: Any) -> bytes:
        from gotaxy.web.app import SECURITY_HEADERS

        request.setResponseCode(400)
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        message = f"{self.problem}; check the link or type the panel's address again"
        return json.dumps({"error": {"kind": "invalid", "message": message, "field": None}}).encode()


class PanelRoot(Resource):
    """
    ``/<name>`` for each extra resource (their own authentication, e.g.
    ``/metrics`` with its bearer token); everything else goes to the panel.
    """

    def __init__(self, panel_resource: IResource, extra_resources: Mapping[bytes, IResource]) -> None:
        super().__init__()
        self._panel: Any = panel_resource
        for name, resource in extra_resources.items():
            self.putChild(name, resource)

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        # Checked once, at the root, before anything looks at the path.
        problem = path_problem(request.path)
        if problem is not None:
            return MalformedPath(problem)
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request: Any) -> IResource:
        # Hand the whole path back to Klein, which routes from the root.
        request.postpath.insert(0, request.prepath.pop())
        return self._panel

    def render(self, request: Any) -> Any:
        problem = path_problem(request.path)
        if problem is not None:
            return MalformedPath(problem).render(request)
        return self._panel.render(request)


def make_site(panel: "Panel", extra_resources: Mapping[bytes, IResource] = {}) -> Site:
    site = Site(PanelRoot(panel.resource(), extra_resources))
    site.requestFactory = BoundedRequest
    site.displayTracebacks = False
    return site


class PanelSite(ServerFactory):
    """
    The panel's ``Site``, made by ``build`` when first needed (module
    docstring: why): at a connection's ``buildProtocol``, or when the
    server asks for the panel (``WebService.panel``, ``mount``).
    """

    noisy = False

    def __init__(self, build: Callable[[], "tuple[Panel, Site]"]) -> None:
        self._build = build
        self._made: "Optional[tuple[Panel, Site]]" = None
        self._started = False

    def _get(self) -> "tuple[Panel, Site]":
        if self._made is None:
            self._made = self._build()
            if self._started:
                self._made[1].doStart()
        return self._made

    @property
    def site(self) -> Site:
        return self._get()[1]

    @property
    def panel(self) -> "Panel":
        return self._get()[0]

    @property
    def made(self) -> bool:
        return self._made is not None

    def startFactory(self) -> None:
        self._started = True
        if self._made is not None:
            self._made[1].doStart()

    def stopFactory(self) -> None:
        self._started = False
        if self._made is not None:
            self._made[1].doStop()

    def buildProtocol(self, addr: Any) -> Any:
        return self.site.buildProtocol(addr)


def _tls_factory(config: Any, site: Any) -> Any:
    """The site over HTTPS when webServer.tls is set (on any endpoint, systemd's too), else the site."""
    if not config.web.tls_cert_file:
        return site
    try:
        options = load_server_tls_options(config.web.tls_cert_file, config.web.tls_key_file)
    except ValueError as e:
        raise usage.UsageError(
            f"cannot use webServer.tls.certFile {config.web.tls_cert_file!r} with keyFile "
            f"{config.web.tls_key_file!r}: {e}"
        ) from None
    return TLSMemoryBIOFactory(options, False, site)


def _warn_plain_http(address: str) -> None:
    log.warn(
        "the web panel listens on {addr} without TLS: the admin password and session cookies cross the "
        "network unencrypted; set webServer.tls.certFile and keyFile, or keep webServer.addr on "
        "127.0.0.1 and reach the panel through an SSH tunnel",
        addr=address,
    )


class WebService(Listener):
    """The panel's listener, with the panel it serves and a way to add top-level resources."""

    def __init__(self, reactor: Any, at: ListenAt, site: PanelSite, factory: Any, secure: bool) -> None:
        super().__init__(reactor, at, factory, WEB, on_listening=self._listening)
        self.site = site
        self._secure = secure

    @property
    def panel(self) -> "Panel":
        return self.site.panel

    def mount(self, name: bytes, resource: IResource) -> None:
        """Serve ``resource`` at ``/name`` (e.g. /metrics, made after the panel)."""
        self.site.site.resource.putChild(name, resource)

    def _listening(self, port: Any) -> None:
        # An endpoint string (systemd's socket, say) says where only once it listens.
        host = getattr(port.getHost(), "host", None)
        if self.at.explicit and not self._secure and isinstance(host, str) and not is_loopback(host):
            _warn_plain_http(host)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; False for anything reachable from elsewhere."""
    if address.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def make_web_service(
    config: Any,
    core: Any,
    management: Any,
    operators: Any,
    reactor: Any,
    data_dir: Optional[str] = None,
    extra_resources: Mapping[bytes, IResource] = {},
    history: Any = None,
    auth: Optional[PanelAuth] = None,
) -> Optional[WebService]:
    """
    The panel on ``webServer.addr:port``.  The panel keeps its state
    (sessions, API tokens, second factors) in the store's database; without
    ``auth``, second factors are sealed under the key in ``data_dir``
    (``gotaxy.sealing``).  ``history`` (a
    ``gotaxy.server.history.History``) feeds the throughput and stability
    charts; without it those endpoints answer 503.  ``auth`` checks the
    operators' second factor; the console shares it, so wrong codes count
    together.  None when webServer.port is 0 and no webServer.endpoint is set.
    """
    at = listen_at(WEB, config.web.endpoint, config.web.addr, config.web.port)
    if at is None:
        return None
    if auth is None:
        if data_dir is None:
            raise ValueError("make_web_service needs data_dir (the key that seals second factors) or auth")
        auth = PanelAuth(core, operators, reactor, Sealer.at(key_path(data_dir, config.notify.key_file)))
    secure = bool(config.web.tls_cert_file)
    extra = dict(extra_resources)

    def build() -> "tuple[Panel, Site]":
        from gotaxy.web.app import Panel

        panel = Panel(management, operators, auth, core.events, reactor, secure=secure, history=history)
        return panel, make_site(panel, extra)

    site = PanelSite(build)
    factory = _tls_factory(config, site)  # the TLS files are checked now: a bad one ends the start
    if not secure and not at.explicit and not is_loopback(config.web.addr):
        _warn_plain_http(config.web.addr)
    return WebService(reactor, at, site, factory, secure)
