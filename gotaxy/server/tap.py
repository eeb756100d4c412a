# -*- test-case-name: tests.test_server_tap -*-
"""
``twistd gotaxy-server``: options and service assembly.

``makeService`` runs before the reactor starts, so set-up (the data
directory and its lock, TLS certificates, store schema) is done there
synchronously; everything after that runs in the services it returns.

The order of a start, and why:

1. ``makeService`` locks the data directory (``gotaxy.server.datalock``)
   before it touches anything in it, so a second server on the same
   directory stops with the holder's pid instead of writing into the first
   one's store.
2. Every listener (control port, panel, console) binds in
   ``privilegedStartService``; one that cannot ends the start with one line
   naming the setting and exit status 1 (``gotaxy.listeners``).
3. Only then are the first-start secrets (initial token, admin password)
   created and printed, so a start that fails on a busy port creates none
   and the next start still prints them.

Errors in the options or config file are one line on stderr and exit
status 2 under twistd (``exit_with_message``), not twistd's usage text.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, Dict, List, Optional

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from gotaxy import __version__
from gotaxy.config import (
    ConfigError,
    ServerConfig,
    load_toml,
    parse_allow_ports,
    parse_server_config,
)
from gotaxy.credentials import new_password
from gotaxy.console import make_console_service
from gotaxy.listeners import CONTROL, Listener, show_address
from gotaxy.logs import ErrorLogService, gotaxy_observer, set_level
from gotaxy.notify import build_notifier
from gotaxy.oslimits import backlog_warning, log_fd_limit, tcp_server_endpoint
from gotaxy.notify.managed import ManagedMailRecipients, ManagedWebhooks
from gotaxy.process import EXIT_START_FAILED, EXIT_USAGE, StartError, TwistdOptions, exit_with_message
from gotaxy.server.control import Admission, AdmittingTLSFactory, ServerControlFactory
from gotaxy.server.core import ServerCore
from gotaxy.server.datalock import DataDirLock
from gotaxy.server.manage import Management
from gotaxy.server.history import History
from gotaxy.server.metrics import Metrics
from gotaxy.server.operators import OperatorAuth
from gotaxy.jointoken import make_join_token
from gotaxy.store import JOIN_PIN_SETTING, SERVER_STARTED, Store, ThreadedStore, default_url
from gotaxy.server.retention import EventRetention
from gotaxy.tls import ServerCredentials, load_or_create_server_credentials
from gotaxy.web import make_web_service

log = Logger(observer=gotaxy_observer, namespace="gotaxy.server")

PROGRAM = "gotaxy-server"
ADMIN_USER = "admin"
INITIAL_TOKEN_NAME = "default"


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


_positive_int.coerceDoc = "An integer."  # type: ignore[attr-defined]


class Options(TwistdOptions):
    program = PROGRAM
    synopsis = "[options]"
    longdesc = (
        "Run a Gotaxy tunnel server. With no options it keeps its data in ./gotaxy-data "
        "and accepts clients on port 7000. Options override the config file "
        "(--config, or DATA_DIR/server.toml when present), which uses frp's frps.toml key names."
    )
    optParameters: List[List[Any]] = [
        ["config", "c", None, "TOML config file (frps.toml key names)."],
        ["data-dir", "d", None, "Data directory (store, TLS, logs). [default: gotaxy-data]"],
        ["bind-addr", None, None, "Address of the control port. [default: 0.0.0.0]"],
        ["bind-port", "p", None, "Control port. [default: 7000]", int],
        ["token", None, None, "Shared frp-style auth.token, accepted besides per-client tokens."],
        ["allow-ports", None, None, "Public ports clients may use, e.g. 10000-20000,6000."],
        ["store", None, None, "SQLAlchemy URL of the store. [default: sqlite in the data dir]"],
        ["max-ports-per-client", None, None, "Most ports one client may hold, 0 for no limit", _positive_int],
        ["heartbeat-interval", None, None, "Seconds between heartbeats.", float],
        ["heartbeat-timeout", None, None, "Seconds of silence before a client is dropped.", float],
        ["web-addr", None, None, "Address of the web panel. [default: 127.0.0.1]"],
        ["web-port", None, None, "Port of the web panel, 0 to turn it off. [default: 7500]", int],
        ["console-addr", None, None, "Address of the SSH console. [default: 127.0.0.1]"],
        ["console-port", None, None, "Port of the SSH console, 0 to turn it off. [default: 7022]", int],
    ]

    def postOptions(self) -> None:
        try:
            self.loaded_config, self.warnings = build_config(self)
        except ConfigError as e:
            raise usage.UsageError(str(e))


def build_config(options: Dict[str, Any]) -> "tuple[ServerConfig, List[str]]":
    base = ServerConfig()
    data_dir = options.get("data-dir") or base.data_dir
    path = options.get("config")
    if path is None and os.path.exists(os.path.join(data_dir, "server.toml")):
        path = os.path.join(data_dir, "server.toml")
    warnings: List[str] = []
    config = base
    if path is not None:
        loaded = parse_server_config(load_toml(path), source=path, base=base)
        config, warnings = loaded.config, list(loaded.warnings)  # type: ignore[assignment]
    overrides: Dict[str, Any] = {}
    for flag, field in [
        ("data-dir", "data_dir"),
        ("bind-addr", "bind_addr"),
        ("bind-port", "bind_port"),
        ("token", "token"),
        ("store", "store"),
        ("max-ports-per-client", "max_ports_per_client"),
        ("heartbeat-interval", "heartbeat_interval"),
        ("heartbeat-timeout", "heartbeat_timeout"),
        ("web-addr", "web_addr"),
        ("web-port", "web_port"),
        ("console-addr", "console_addr"),
        ("console-port", "console_port"),
    ]:
        if options.get(flag) is not None:
            overrides[field] = options[flag]
    if options.get("allow-ports") is not None:
        overrides["allow_ports"] = parse_allow_ports(options["allow-ports"])
    try:
        config = attrs.evolve(config, **overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid command-line option: {e}") from None
    if not 0 < config.heartbeat_interval < config.heartbeat_timeout:
        raise ConfigError(
            "--heartbeat-interval must be positive and shorter than --heartbeat-timeout "
            f"(got {config.heartbeat_interval:g} and {config.heartbeat_timeout:g})"
        )
    return config, warnings


@attrs.frozen
class FirstStart:
    """Secrets created on first start, shown once and never again."""

    token: Optional[str]
    admin_password: Optional[str]


def bootstrap(config: ServerConfig, store: Store, env: Dict[str, str]) -> FirstStart:
    """Create the initial token and admin account if the store has none."""
    token = None
    if not store.list_tokens():
        _, token = store.create_token(INITIAL_TOKEN_NAME)
    chosen = env.get("GOTAXY_ADMIN_PASSWORD") or None
    password = chosen or new_password()
    created = store.ensure_admin(ADMIN_USER, password)
    return FirstStart(token=token, admin_password=password if created and chosen is None else None)


def _client_host(config: ServerConfig) -> "tuple[str, bool]":
    """The host to put in the client command, and whether it is only a placeholder."""
    if config.bind_addr not in ("0.0.0.0", "::", ""):
        return config.bind_addr, False
    name = socket.getfqdn()
    if name == "localhost" or name.startswith("localhost.") or "." not in name:
        # No public name known (containers, fresh machines): say so plainly.
        return "HOST", True
    return name, False


def first_start_banner(config: ServerConfig, first: FirstStart, credentials: ServerCredentials) -> str:
    host, placeholder = _client_host(config)
    lines = ["", "=" * 72, "Gotaxy server: first start. These secrets are shown only now; keep them.", ""]
    # A join token: the client checks the server against the pin in it
    # before it sends the secret, so the command below needs no --fingerprint.
    token = make_join_token(credentials.join_pin, first.token) if first.token else None
    if token:
        lines.append(f"  client token ({INITIAL_TOKEN_NAME!r}):  {token}")
    if first.admin_password:
        lines.append(f"  admin password (user {ADMIN_USER!r}):  {first.admin_password}")
    lines.append(f"  server certificate:  {credentials.fingerprint}")
    if first.token:
        lines += [
            "",
            "On the machine whose services you want to expose, run",
            (
                "(replace HOST with this server's public name or address):"
                if placeholder
                else f"(if clients know this server by another name or address, put that for {host}):"
            ),
            "",
            f"  twistd -n gotaxy-client --server {host}:{config.bind_port} \\",
            f"      --token {token} \\",
            "      --tunnel ssh=tcp:127.0.0.1:22",
        ]
    lines += ["=" * 72, ""]
    return "\n".join(lines)


class CoreService(Service):
    """Starts and stops what the core needs around the reactor's lifetime."""

    def __init__(
        self, core: ServerCore, store: ThreadedStore, credentials: ServerCredentials, admission: Optional[Admission] = None
    ) -> None:
        self.core = core
        self.store = store
        self.credentials = credentials
        self.admission = admission

    def startService(self) -> None:
        super().startService()
        self.store.start()
        self.core.start()
        config = self.core.config
        # On the next turn, once every service (the notifier among them)
        # runs, so that server.started is published like any other event.
        self._announce = self.core.reactor.callLater(0, self._announce_start)
        log.info(
            "Gotaxy server {version} listening for clients on {addr}:{port} (TLS, certificate {fp})",
            version=__version__,
            addr=config.bind_addr,
            port=config.bind_port,
            fp=self.credentials.fingerprint,
        )

    def _announce_start(self) -> None:
        detail = f"version {__version__}"
        Deferred.fromCoroutine(
            self.core.record(
                self.store.store.record_event, SERVER_STARTED, None, None, None, detail,
                event=SERVER_STARTED, detail=detail,
            )
        ).addErrback(lambda f: log.failure("recording the server start failed", f))

    def stopService(self) -> Deferred:
        super().stopService()
        if self._announce.active():
            self._announce.cancel()
        if self.admission is not None:
            self.admission.stop()
        d = Deferred.fromCoroutine(self.core.shutdown())
        d.addBoth(lambda _: self.store.stop())
        return d


class ServerService(MultiService):
    """
    The server's top service.  Its listeners bind first; once all of them
    listen, ``ready`` runs (first-start secrets and their banner).  Under
    twistd a listener that cannot bind ends the process here with one log
    line and exit status 1; a direct caller of ``startService`` (tests) gets
    the ``StartError``.  ``stopService`` releases the data directory lock
    once everything has stopped.
    """

    def __init__(self, lock: Optional[DataDirLock], ready: Callable[[], None]) -> None:
        super().__init__()
        self.lock = lock
        self._ready = ready
        self._bound = False
        #: After a failed start: the Deferreds of the listeners it closed again.
        self.unbound: List[Deferred] = []

    def _bind(self) -> None:
        if self._bound:
            return
        try:
            super().privilegedStartService()  # each Listener binds here
        except BaseException:
            # Not started: free what was bound, for a caller that goes on (tests).
            self.unbound = [child.stopService() for child in self if isinstance(child, Listener) and child.port]
            if self.lock is not None:
                self.lock.release()
            raise
        self._bound = True
        self._ready()

    def privilegedStartService(self) -> None:
        try:
            self._bind()
        except StartError as e:
            log.critical("{message}", message=str(e))
            raise SystemExit(EXIT_START_FAILED)

    def startService(self) -> None:
        self._bind()
        if self.lock is not None:
            self.lock.record_pid()  # twistd may have forked into the background since makeService
        super().startService()

    def stopService(self) -> Deferred:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        try:
            await super().stopService()
        finally:
            if self.lock is not None:
                self.lock.release()


def _control_endpoint(reactor: Any, config: ServerConfig) -> Any:
    return tcp_server_endpoint(reactor, config.bind_port, config.bind_addr)


def makeService(options: Options, reactor: Any = None, env: Optional[Dict[str, str]] = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    under_twistd = getattr(options, "parent", None) is not None
    try:
        return _make_service(options, reactor, dict(os.environ) if env is None else env)
    except (usage.UsageError, StartError) as e:
        if not under_twistd:
            raise
        code = EXIT_START_FAILED if isinstance(e, StartError) else EXIT_USAGE
        exit_with_message(PROGRAM, str(e), code)


def _make_service(options: Options, reactor: Any, env: Dict[str, str]) -> MultiService:
    config: ServerConfig = options.loaded_config
    set_level(config.log_level)
    # The first line a user (or a bug report) shows: which version this is.
    log.info("Gotaxy server {version} starting (data directory {dir})",
             version=__version__, dir=os.path.abspath(config.data_dir))
    for warning in options.warnings:
        log.warn("{warning}", warning=warning)
    capped = backlog_warning()
    if capped is not None:
        log.warn("{warning}", warning=capped)
    log_fd_limit(log)

    data_dir = os.path.abspath(config.data_dir)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    lock = DataDirLock.acquire(data_dir)  # before anything in the directory is touched
    try:
        return _assemble(options, config, data_dir, lock, reactor, env)
    except BaseException:
        lock.release()
        raise


def _assemble(
    options: Options, config: ServerConfig, data_dir: str, lock: DataDirLock, reactor: Any, env: Dict[str, str]
) -> MultiService:
    try:
        credentials = load_or_create_server_credentials(
            os.path.join(data_dir, "tls"), config.tls_cert_file, config.tls_key_file
        )
    except ValueError as e:
        raise usage.UsageError(str(e))
    sync_store = Store(config.store or default_url(data_dir), clock=reactor.seconds)
    # For ``gotaxy token create``, which reads the store, not the TLS files.
    sync_store.set_setting(JOIN_PIN_SETTING, credentials.join_pin)
    sync_store.mark_all_offline("server restarted")

    def ready() -> None:
        # Every listener is bound: only now create the first-start secrets
        # and print them (a failed start must leave them for the next one).
        # Synchronous store work is fine here: the reactor serves nothing yet.
        first = bootstrap(config, sync_store, env)
        if first.token or first.admin_password:
            # Printed, not logged: secrets must never reach the log files.
            print(first_start_banner(config, first, credentials), file=sys.__stdout__, flush=True)

    store = ThreadedStore(sync_store, reactor)
    core = ServerCore(config, store, reactor)
    admission = Admission(config.max_pending, config.max_pending_per_ip, reactor)

    top = ServerService(lock, ready)
    ErrorLogService(os.path.join(data_dir, "logs"), config.log_max_days, config.log_max_size).setServiceParent(top)
    CoreService(core, store, credentials, admission).setServiceParent(top)
    control = Listener(
        _control_endpoint(reactor, config),
        AdmittingTLSFactory(credentials.server_context(), ServerControlFactory(core, admission, reactor)),
        CONTROL,
        show_address(config.bind_addr, config.bind_port),
    )
    control.setServiceParent(top)
    revocations = TimerService(
        min(config.heartbeat_interval, 10.0),
        lambda: Deferred.fromCoroutine(core.kick_inactive_tokens()).addErrback(
            lambda f: log.failure("checking revoked tokens failed", f)
        ),
    )
    revocations.clock = reactor
    revocations.setServiceParent(top)
    # Events older than events.retentionDays go, at start and then hourly.
    top.event_retention = EventRetention(core)  # type: ignore[attr-defined]
    top.event_retention.setServiceParent(top)  # type: ignore[attr-defined]
    # Notifications, metrics and stability history.
    top.notifier = build_notifier(config, core.events, reactor, store)  # type: ignore[attr-defined]
    top.notifier.setServiceParent(top)  # type: ignore[attr-defined]
    webhooks = ManagedWebhooks(top.notifier, store, data_dir, config.server_name, reactor)  # type: ignore[attr-defined]
    webhooks.load()
    mail = ManagedMailRecipients(top.notifier, store, config, reactor)  # type: ignore[attr-defined]
    mail.load()
    management = Management(
        core, reload=lambda: build_config(options), webhooks=webhooks, mail=mail, join_pin=credentials.join_pin
    )
    operators = OperatorAuth(core)
    operators.setServiceParent(top)  # its password-check threads start and stop with the server
    top.metrics = Metrics(core, admission, top.notifier, reactor)  # type: ignore[attr-defined]
    top.metrics.setServiceParent(top)  # type: ignore[attr-defined]
    top.history = History(core, store, reactor, ledger=top.metrics.ledger)  # type: ignore[attr-defined]
    top.history.setServiceParent(top)  # type: ignore[attr-defined]
    top.metrics_resource = top.metrics.resource()  # type: ignore[attr-defined]
    # The operator's faces: web panel (with /metrics) and SSH console; port 0 turns either off.
    top.web = None  # type: ignore[attr-defined]
    if config.web_port:
        top.web = make_web_service(  # type: ignore[attr-defined]
            config, core, management, operators, reactor, data_dir, extra_resources={b"metrics": top.metrics_resource},
            history=top.history,  # type: ignore[attr-defined]
        )
        top.web.setServiceParent(top)  # type: ignore[attr-defined]
    top.console = make_console_service(config, data_dir, top, reactor)  # type: ignore[attr-defined]
    if top.console is not None:  # type: ignore[attr-defined]
        top.console.setServiceParent(top)  # type: ignore[attr-defined]
    top.core = core  # type: ignore[attr-defined]
    top.management = management  # type: ignore[attr-defined]
    top.operators = operators  # type: ignore[attr-defined]
    return top
