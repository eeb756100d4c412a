# -*- test-case-name: tests.test_client_reload -*-
"""
The client's admin API, frp's (``webServer.*`` in ``frpc.toml``), and the
``gotaxy-client status|reload|stop`` commands that use it.

    GET  /healthz        200 while the client runs (no credentials needed)
    GET  /api/status     each proxy by type: name, type, status, err, local_addr, remote_addr
    POST /api/reload     read the file again and apply the difference (``gotaxy.client.reload``)
    GET  /api/config     the config file as it is on disk
    PUT  /api/config     replace the file (checked first: a wrong one is refused and the
                         file kept), then reload
    POST /api/stop       stop the client

It is off unless ``webServer.port`` is set, and listens on
``webServer.addr``, 127.0.0.1 by default; the config refuses an address
beyond loopback without ``webServer.password``.  With ``webServer.user`` /
``webServer.password`` every ``/api`` request needs HTTP basic
credentials, compared in constant time as one string.  Whatever the
credentials, a request whose ``Host`` is a name other than ``localhost``
is refused (a web page cannot reach the API by DNS rebinding), and so is a
state-changing request whose ``Origin`` is another site (nor by a form it
posts).  ``/api/config`` (the file holds the token) answers only when a
password is set.  Request bodies are limited to ``MAX_BODY`` bytes, refused
by their ``Content-Length`` before they are read.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hmac
import ipaddress
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, TextIO
from urllib.parse import urlsplit

from klein import Klein
from twisted.application.service import Service
from twisted.internet.defer import CancelledError
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.server import Site

from gotaxy.client.control import printable, proxy_spec
from gotaxy.config import ClientConfig, ConfigError, load_client_file
from gotaxy.logs import gotaxy_observer

log = Logger(observer=gotaxy_observer, namespace="gotaxy.client.admin")

#: Largest config file ``PUT /api/config`` takes.
MAX_BODY = 1 << 20


class AdminError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _literal_host(netloc: str) -> Optional[str]:
    """The host of a ``Host`` header or URL netloc, without port and brackets."""
    host = urlsplit("//" + netloc).hostname
    return host.lower() if host else None


def host_allowed(netloc: str) -> bool:
    """An IP address, or ``localhost``: what a page on another site cannot rebind to us."""
    host = _literal_host(netloc)
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _route(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(handler)
    async def wrapper(self: "ClientAdmin", request: Any, **kwargs: Any) -> Any:
        request.setHeader(b"cache-control", b"no-store")
        try:
            self._check(request)
            return await handler(self, request, **kwargs)
        except CancelledError:
            raise
        except AdminError as e:
            return self._error(request, e.code, str(e))
        except ConfigError as e:
            return self._error(request, 400, str(e))
        except Exception:
            log.failure("admin API request {method} {path} failed", method=request.method, path=request.path)
            return self._error(request, 500, "the client failed on this request; see its log")

    return wrapper


class ClientAdmin:
    """The admin API of one running client (a Klein app bound to it)."""

    app = Klein()

    def __init__(self, factory: Any, reloader: Any, config_path: Optional[str], reactor: Any,
                 stop: Callable[[], None]) -> None:
        self.factory = factory
        self.reloader = reloader
        self.config_path = config_path
        self.reactor = reactor
        self.stop = stop

    # -- guards ----------------------------------------------------------------

    def _check(self, request: Any) -> None:
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if not host_allowed(host):
            raise AdminError(403, "the admin API answers requests to an IP address or localhost only")
        origin = request.getHeader(b"origin")
        if origin is not None and request.method not in (b"GET", b"HEAD"):
            seen = urlsplit(origin.decode("latin-1"))
            if seen.netloc.lower() != host.lower():
                raise AdminError(403, "a request from another site's page is refused")
        if request.path == b"/healthz":
            return
        config: ClientConfig = self.factory.config
        if config.admin_user is None and config.admin_password is None:
            return
        expected = f"{config.admin_user or ''}:{config.admin_password or ''}".encode("utf-8")
        given = request.getHeader(b"authorization") or b""
        scheme, _, encoded = given.partition(b" ")
        try:
            sent = base64.b64decode(encoded.strip(), validate=True) if scheme.lower() == b"basic" else b""
        except ValueError:
            sent = b""
        if not hmac.compare_digest(sent, expected):
            request.setHeader(b"www-authenticate", b'Basic realm="gotaxy-client"')
            raise AdminError(401, "wrong or missing credentials: send webServer.user and webServer.password")

    def _error(self, request: Any, code: int, message: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return json.dumps({"error": message}).encode("utf-8") + b"\n"

    @staticmethod
    def _json(request: Any, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return json.dumps(value, indent=1).encode("utf-8") + b"\n"

    def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), function, *args)

    # -- routes ------------------------------------------------------------------

    @app.route("/healthz", methods=["GET"])
    @_route
    async def healthz(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"ok\n"

    @app.route("/api/status", methods=["GET"])
    @_route
    async def status(self, request: Any) -> bytes:
        return self._json(request, proxy_status(self.factory))

    @app.route("/api/reload", methods=["POST"])
    @_route
    async def reload(self, request: Any) -> bytes:
        report = await self.reloader.reload("the admin API")
        return self._json(request, report.to_json())

    @app.route("/api/config", methods=["GET"])
    @_route
    async def get_config(self, request: Any) -> bytes:
        path = self._path()
        data: bytes = await self._in_thread(_read, path)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return data

    @app.route("/api/config", methods=["PUT"])
    @_route
    async def put_config(self, request: Any) -> bytes:
        path = self._path()
        length = request.getHeader(b"content-length")
        if length is None or not length.isdigit() or int(length) > MAX_BODY:
            raise AdminError(413, f"send the new file with a Content-Length of at most {MAX_BODY} bytes")
        body = request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise AdminError(413, f"the file is longer than {MAX_BODY} bytes")
        await self._in_thread(_replace_checked, path, body)
        report = await self.reloader.reload("the admin API (PUT /api/config)")
        return self._json(request, report.to_json())

    @app.route("/api/stop", methods=["POST"])
    @_route
    async def stop_client(self, request: Any) -> bytes:
        log.info("stopping: asked through the admin API")
        self.reactor.callLater(0, self.stop)
        return self._json(request, {"stopping": True})

    def _path(self) -> str:
        config: ClientConfig = self.factory.config
        if config.admin_password is None:
            # The file holds the client's token: on a machine with other
            # users, loopback alone does not keep it to its owner.
            raise AdminError(403, "the config file holds the token, so /api/config needs webServer.user and "
                                  "webServer.password to be set")
        if self.config_path is None:
            raise AdminError(409, "this client was not started with --config, so it has no config file")
        return self.config_path


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_BODY + 1)[:MAX_BODY]


def _replace_checked(path: str, body: bytes) -> None:
    """Write ``body`` next to ``path``, check it as a client file, and only then put it in place."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, scratch = tempfile.mkstemp(prefix=".gotaxy-client-", suffix=".toml", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        try:
            os.chmod(scratch, os.stat(path).st_mode & 0o777)
        except OSError:
            os.chmod(scratch, 0o600)
        try:
            load_client_file(scratch)
        except ConfigError as e:
            raise ConfigError(f"the new file was refused and {path} kept: " + str(e).replace(scratch, path)) from None
        os.replace(scratch, path)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


def proxy_status(factory: Any) -> Dict[str, List[Dict[str, Any]]]:
    """frp's ``/api/status``: the proxies by type, each with its status and last error."""
    config: ClientConfig = factory.config
    protocol = factory.current
    by_type: Dict[str, List[Dict[str, Any]]] = {}
    specs = list(config.tunnels)
    if protocol is not None:  # operator-defined tunnels too
        names = {t.name for t in specs}
        specs += [t for name, t in protocol.tunnels.items() if name not in names]
    for spec in specs:
        proxy = protocol.proxies.get(spec.name) if protocol is not None else None
        proxy = proxy or proxy_spec(spec)
        up = protocol.up.get(spec.name) if protocol is not None else None
        error = factory.tunnel_errors.get(spec.name, "")
        if not spec.enabled:
            status = "disabled"
        elif protocol is None:
            status = "offline"
        elif up is not None:
            check = protocol.checks.get(spec.name)
            status = "check failed" if check is not None and getattr(check, "healthy", True) is False else "running"
        elif error:
            status = "start error"
        else:
            status = "wait start"
        row = {
            "name": spec.name,
            "type": proxy.type,
            "status": status,
            "err": printable(error) if status != "running" else "",
            "local_addr": proxy.local_description,
            "plugin": "",
            "remote_addr": up.at(config.server_addr) if up is not None else "",
        }
        if proxy.type == "udp":  # Gotaxy's: datagrams dropped on this client since it started, by reason
            row["dropped"] = factory.udp_drops(spec.name).as_dict()
        by_type.setdefault(proxy.type, []).append(row)
    return by_type


class AdminService(Service):
    """Serves ``ClientAdmin`` on ``webServer.addr:port`` while the client runs."""

    def __init__(self, admin: ClientAdmin, addr: str, port: int, reactor: Any) -> None:
        self.admin = admin
        self.addr = addr
        self.port_number = port
        self.reactor = reactor
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        site = Site(self.admin.app.resource())
        site.noisy = False
        try:
            self.port = self.reactor.listenTCP(self.port_number, site, interface=self.addr)
        except CannotListenError as e:
            log.error(
                "cannot listen on {addr}:{port} for the admin API (webServer.port): {reason}; the client runs "
                "without it; choose another webServer.port",
                addr=self.addr, port=self.port_number, reason=e.socketError,
            )
            return
        host = self.port.getHost()
        log.info("admin API on http://{host}:{port}/api/status", host=host.host, port=host.port)

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


# ---------------------------------------------------------------------------
# gotaxy-client status | reload | stop


def _request(config: ClientConfig, method: str, path: str) -> Any:
    if not config.admin_port:
        raise ConfigError("the client's admin API is off; set webServer.port in its config file (and restart it)")
    host = f"[{config.admin_addr}]" if ":" in config.admin_addr else config.admin_addr
    if config.admin_addr in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    request = urllib.request.Request(f"http://{host}:{config.admin_port}{path}", method=method, data=b"" if method == "POST" else None)
    if config.admin_user is not None or config.admin_password is not None:
        secret = f"{config.admin_user or ''}:{config.admin_password or ''}".encode("utf-8")
        request.add_header("Authorization", "Basic " + base64.b64encode(secret).decode("ascii"))
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read().decode("utf-8"))


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(
        prog="gotaxy-client",
        description="Talk to a running client through its admin API (webServer.* in its config file).",
    )
    parser.add_argument("-c", "--config", required=True, help="the running client's config file")
    parser.add_argument("command", choices=("status", "reload", "stop"))
    args = parser.parse_args(argv)
    try:
        config = load_client_file(args.config).config
        assert isinstance(config, ClientConfig)
        answer = _request(config, "GET" if args.command == "status" else "POST", f"/api/{args.command}")
    except ConfigError as e:
        print(f"gotaxy-client: {e}", file=err)
        return 1
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read().decode("utf-8")).get("error", e.reason)
        except ValueError:
            message = e.reason
        print(f"gotaxy-client: {args.command}: {message}", file=err)
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"gotaxy-client: cannot reach the client's admin API on {config.admin_addr}:{config.admin_port} "
              f"({reason}); is the client running with this config?", file=err)
        return 1
    if args.command == "status":
        rows = [p for proxies in answer.values() for p in proxies]
        print(f"{'NAME':<20} {'TYPE':<6} {'STATUS':<12} {'LOCAL':<22} {'PUBLIC':<22} ERROR", file=out)
        for p in rows:
            print(f"{p['name']:<20} {p['type']:<6} {p['status']:<12} {p['local_addr']:<22} "
                  f"{p['remote_addr'] or '-':<22} {p['err']}", file=out)
            dropped = p.get("dropped")
            if isinstance(dropped, dict) and any(dropped.values()):
                print(f"{'':<20} dropped on this client: {dropped.get('too_large', 0)} too large, "
                      f"{dropped.get('queue_full', 0)} queue full, {dropped.get('no_slot', 0)} no slot, "
                      f"{dropped.get('bandwidth', 0)} over the bandwidth limit", file=out)
    elif args.command == "reload":
        for what, key in (("opened", "added"), ("closed", "removed"), ("reopened", "changed")):
            if answer[key]:
                print(f"{what}: {', '.join(answer[key])}", file=out)
        for key in answer["applied"]:
            print(f"applied: {key}", file=out)
        for key in answer["restart"]:
            print(f"needs a restart: {key}", file=out)
        for warning in answer["warnings"]:
            print(f"warning: {warning}", file=out)
        if not any(answer[k] for k in ("added", "removed", "changed", "applied", "restart")):
            print("reloaded: nothing changed", file=out)
    else:
        print("stopping the client", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
