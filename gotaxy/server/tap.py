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

What ``makeService`` builds is a ``Server``: one attrs object holding the
parts (store, core, management, operator auth, notifications, metrics,
history, and the listeners: control port, web panel, console).  twistd gets
its ``service`` (the ``ServerService`` tree that starts and stops them, in
order); tests and the console's python prompt reach the parts through
``service.server``.  Each face gets only what it needs: the console a
``ConsoleAccess`` (Management, the operator auth), not the tree.

Every listener listens at a Twisted endpoint string (see
``gotaxy.listeners``): ``bindEndpoint``/``--bind-endpoint`` and the panel's
and console's ``endpoint`` settings as written, else one made from the
address and port settings.  ``systemd:domain=INET6:index=0`` adopts a socket
systemd opened (socket activation), so privileged ports need no root.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from gotaxy import __version__
from gotaxy.config import (
    ConfigError,
    ServerConfig,
    load_server_file,
    parse_allow_ports,
    replace,
)
from gotaxy.credentials import new_password
from gotaxy.console import ConsoleAccess, ConsoleService, make_console_service
from gotaxy.listeners import CONTROL, Listener, listen_at
from gotaxy.logs import ErrorLogService, gotaxy_observer, set_level
from gotaxy.notify import build_notifier
from gotaxy.notify.dispatch import Notifier
from gotaxy.oslimits import backlog_warning, log_fd_limit
from gotaxy.notify.managed import KeyMismatch, ManagedMailRecipients, ManagedWebhooks
from gotaxy.process import EXIT_START_FAILED, EXIT_USAGE, SignalReload, StartError, TwistdOptions, exit_with_message
from gotaxy.server import access
from gotaxy.server.control import Admission, AdmittingTLSFactory, ServerControlFactory
from gotaxy.server.core import ServerCore
from gotaxy.server.datalock import DataDirLock
from gotaxy.server.manage import Management
from gotaxy.server.history import History
from gotaxy.server.metrics import Metrics, MetricsResource
from gotaxy.server.operators import OperatorAuth
from gotaxy.jointoken import make_join_token
from gotaxy.server.commands import CommandChannel
from gotaxy.server.forward import Forwarder, PeerListener, load_identity
from gotaxy.server.lease import NodeLease, node_id
from gotaxy.server.outbox import EventTail
from gotaxy.store import JOIN_PIN_SETTING, SERVER_STARTED, Store, StoreError, ThreadedStore, default_url, failure_logger
from gotaxy.server.reload import ConfigReloader, ReloadRefused
from gotaxy.server.retention import EventRetention
from gotaxy.tls import ServerCredentials, load_or_create_server_credentials
from gotaxy.tls.acme import AcmeManager, ChallengeStore, settings_from
from gotaxy.tls.clients import ClientCertificateVerifier, control_port_options
from gotaxy.tls.sites import CertificatesForTunnels, SiteCertificates, Termination
from gotaxy.sealing import Sealer, key_path
# Not gotaxy.web, which imports the panel's app (Klein): made after the start (gotaxy.web.service).
from gotaxy.web.auth import PanelAuth
from gotaxy.web.service import WebService, make_web_service

log = Logger(observer=gotaxy_observer, namespace="gotaxy.server")

PROGRAM = "gotaxy-server"
ADMIN_USER = "admin"
INITIAL_TOKEN_NAME = "default"


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


setattr(_positive_int, "coerceDoc", "An integer.")  # what twistd's --help says of the value


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
        ["bind-endpoint", None, None, "Twisted endpoint string for the control port, instead of --bind-addr and "
         "--bind-port (e.g. systemd:domain=INET6:index=0)."],
        ["token", None, None, "Shared frp-style auth.token, accepted besides per-client tokens."],
        ["allow-ports", None, None, "Public ports clients may use, e.g. 10000-20000,6000."],
        ["database-url", None, None, "SQLAlchemy URL of the store. [default: SQLite in the data dir]"],
        ["store", None, None, "Older name of --database-url."],
        ["max-ports-per-client", None, None, "Most ports one client may hold, 0 for no limit", _positive_int],
        ["heartbeat-interval", None, None, "Seconds between heartbeats.", float],
        ["heartbeat-timeout", None, None, "Seconds of silence before a client is dropped.", float],
        ["web-addr", None, None, "Address of the web panel. [default: 127.0.0.1]"],
        ["web-port", None, None, "Port of the web panel, 0 to turn it off. [default: 7500]", int],
        ["web-endpoint", None, None, "Twisted endpoint string for the web panel, instead of --web-addr and --web-port."],
        ["console-addr", None, None, "Address of the SSH console. [default: 127.0.0.1]"],
        ["console-port", None, None, "Port of the SSH console, 0 to turn it off. [default: 7022]", int],
        ["console-endpoint", None, None, "Twisted endpoint string for the SSH console, instead of --console-addr "
         "and --console-port."],
        ["workers", None, None, "Processes that hold clients, one per core at most. [default: 1]", int],
        ["worker", None, None, "Internal: run as worker N of a server with workers > 1, which starts it.", int],
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
        loaded = load_server_file(path, base=base)
        assert isinstance(loaded.config, ServerConfig)
        config, warnings = loaded.config, list(loaded.warnings)
    overrides: Dict[str, Any] = {}
    for flag, field in [
        ("data-dir", "data_dir"),
        ("bind-addr", "bind_addr"),
        ("bind-port", "bind_port"),
        ("bind-endpoint", "bind_endpoint"),
        ("token", "token"),
        ("database-url", "database_url"),
        ("store", "store"),
        ("max-ports-per-client", "limits.max_ports_per_client"),
        ("heartbeat-interval", "heartbeat_interval"),
        ("heartbeat-timeout", "heartbeat_timeout"),
        ("web-addr", "web.addr"),
        ("web-port", "web.port"),
        ("web-endpoint", "web.endpoint"),
        ("console-addr", "console.addr"),
        ("console-port", "console.port"),
        ("console-endpoint", "console.endpoint"),
        ("workers", "workers"),
    ]:
        if options.get(flag) is not None:
            overrides[field] = options[flag]
    if options.get("allow-ports") is not None:
        overrides["allow_ports"] = parse_allow_ports(options["allow-ports"])
    try:
        config = replace(config, overrides)
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
        try:
            _, token = store.create_token(INITIAL_TOKEN_NAME)
        except StoreError:
            pass  # another server process on this store made it a moment ago
    chosen = env.get("GOTAXY_ADMIN_PASSWORD") or None
    password = chosen or new_password()
    created = store.ensure_admin(ADMIN_USER, password)
    return FirstStart(token=token, admin_password=password if created and chosen is None else None)


def _client_host(bind_addr: str) -> "tuple[str, bool]":
    """The host to put in the client command, and whether it is only a placeholder."""
    if bind_addr not in ("0.0.0.0", "::", ""):
        return bind_addr, False
    name = socket.getfqdn()
    if name == "localhost" or name.startswith("localhost.") or "." not in name:
        # No public name known (containers, fresh machines): say so plainly.
        return "HOST", True
    return name, False


def first_start_banner(
    config: ServerConfig, first: FirstStart, credentials: ServerCredentials, bound: Optional[Tuple[str, int]] = None
) -> str:
    """The secrets of a first start; ``bound`` is where the control port listens (default: the config's)."""
    bind_addr, bind_port = bound or (config.bind_addr, config.bind_port)
    host, placeholder = _client_host(bind_addr)
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
            f"  twistd -n gotaxy-client --server {host}:{bind_port} \\",
            f"      --token {token} \\",
            "      --tunnel ssh=tcp:127.0.0.1:22",
        ]
    lines += ["=" * 72, ""]
    return "\n".join(lines)


class FrontListeners(Service):
    """
    Binds the shared fronts' ports (``vhostHTTPPort``, ``vhostHTTPSPort``)
    when the other listeners bind, so that a busy or forbidden one ends the
    start with one line and exit status 1 like them, not a traceback.
    """

    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for front in self.core.fronts.values():
            try:
                front.start()
            except CannotListenError as e:
                for started in self.core.fronts.values():
                    started.stop()  # the ones bound before this one
                reason = e.socketError if isinstance(e.socketError, str) else f"{e.socketError}"
                raise StartError(f"cannot listen on {e.interface or '*'}:{e.port}: {reason}") from None


class CoreService(Service):
    """Starts and stops what the core needs around the reactor's lifetime."""

    def __init__(
        self, core: ServerCore, store: ThreadedStore, credentials: ServerCredentials, admission: Optional[Admission] = None,
        control: Optional[Listener] = None,
    ) -> None:
        self.core = core
        self.store = store
        self.credentials = credentials
        self.admission = admission
        self.control = control  #: the control port's listener, bound before this starts

    def startService(self) -> None:
        super().startService()
        self.store.start()
        self.core.start()
        config = self.core.config
        # On the next turn, once every service (the notifier among them)
        # runs, so that server.started is published like any other event.
        self._announce = self.core.reactor.callLater(0, self._announce_start)
        addr, port = _bound(self.control, config)
        log.info(
            "Gotaxy server {version} listening for clients on {addr}:{port} (TLS, certificate {fp}{ca})",
            version=__version__,
            addr=addr,
            port=port,
            fp=self.credentials.fingerprint,
            ca=f", CA {self.credentials.ca_fingerprint}" if self.credentials.ca_fingerprint else "",
        )

    def _announce_start(self) -> None:
        detail = f"version {__version__}"
        Deferred.fromCoroutine(
            self.core.record(SERVER_STARTED, detail=detail)
        ).addErrback(lambda f: log.failure("recording the server start failed", f))

    def stopService(self) -> Deferred:
        super().stopService()
        if self._announce.active():
            self._announce.cancel()
        if self.admission is not None:
            self.admission.stop()
        # The pending log-in failure counts are told now, while the log file
        # still takes lines: _shutdown waits for the control port to close,
        # and by then the services started after this one have stopped.
        self.core.flush_pending_reports()
        d = Deferred.fromCoroutine(self._shutdown())
        d.addBoth(lambda _: self.store.stop())
        return d

    async def _shutdown(self) -> None:
        # The control port closes first (stopped before this service), and
        # the clients are told goodbye only once it has: one that came back
        # at once must find the port closed (refused: it tries again soon),
        # not still open on this process, which would close it unanswered.
        closed = self.control.closed if self.control is not None else None
        if closed is not None and not closed.called:
            await closed
        await self.core.shutdown()


def _bound(listener: Optional[Listener], config: ServerConfig) -> Tuple[str, int]:
    """Where the control port listens: its socket's address (a systemd socket's too), else the config's."""
    host = listener.port.getHost() if listener is not None and listener.port is not None else None
    if host is not None and hasattr(host, "port"):
        return host.host, host.port
    return config.bind_addr, config.bind_port


class ServerService(MultiService):
    """
    The server's top service.  Its listeners bind first; once all of them
    listen, ``ready`` runs (first-start secrets and their banner).  Under
    twistd a listener that cannot bind ends the process here with one log
    line and exit status 1; a direct caller of ``startService`` (tests) gets
    the ``StartError``.  ``stopService`` releases the data directory lock
    once everything has stopped.
    """

    #: The assembled server, for tests and the console's python prompt.
    server: "Server"

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


@attrs.define(eq=False)
class Server:
    """
    A Gotaxy server, assembled: its parts and the service tree that runs
    them.  Built once by ``makeService``; nothing here is replaced later.
    """

    config: ServerConfig
    service: ServerService
    store: ThreadedStore
    core: ServerCore
    admission: Admission
    management: Management
    #: Operators' passwords and lock-outs.
    operators: OperatorAuth
    #: Operators' second factor (TOTP), shared by the panel and the console.
    second_factor: PanelAuth
    notifier: Notifier
    webhooks: ManagedWebhooks
    mail: ManagedMailRecipients
    metrics: Metrics
    metrics_resource: MetricsResource
    history: History
    event_retention: EventRetention
    #: Reads the events other processes write (``gotaxy.server.outbox``).
    event_tail: EventTail
    #: The listeners: the control port always, the panel and console unless turned off.
    control: Listener
    web: Optional[WebService]
    console: Optional[ConsoleService]
    #: What the console gets of all this.
    console_access: ConsoleAccess
    #: HTTP-01 answers pending, which the plain-HTTP front serves (``gotaxy.tls.acme``).
    challenges: ChallengeStore = attrs.Factory(ChallengeStore)
    #: Certificates through ACME (``acme.enable``), else None.
    acme: Optional[AcmeManager] = None
    #: The certificates websites are served with on vhostHTTPSPort, when it is set.
    site_certificates: Optional[SiteCertificates] = None

    def __attrs_post_init__(self) -> None:
        self.service.server = self

    @property
    def listeners(self) -> Tuple[Listener, ...]:
        return tuple(listener for listener in (self.control, self.web, self.console) if listener is not None)

    def namespace(self) -> Dict[str, Any]:
        """What the console's ``python`` prompt starts with: the live server's objects."""
        return {
            "server": self,
            "core": self.core,
            "management": self.management,
            "operators": self.operators,
            "store": self.store,
            "config": self.core.config,
            "sessions": self.core.sessions,
            "tunnels": self.core.tunnels,
            "reactor": self.core.reactor,
        }


def makeService(options: Options, reactor: Any = None, env: Optional[Dict[str, str]] = None) -> ServerService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    under_twistd = getattr(options, "parent", None) is not None
    try:
        return _make_service(options, reactor, dict(os.environ) if env is None else env)
    except (usage.UsageError, StartError) as e:
        if not under_twistd:
            raise
        code = EXIT_START_FAILED if isinstance(e, StartError) else EXIT_USAGE
        exit_with_message(PROGRAM, str(e), code)


def _make_service(options: Options, reactor: Any, env: Dict[str, str]) -> ServerService:
    config: ServerConfig = options.loaded_config
    set_level(config.log.level)
    # The first line a user (or a bug report) shows: which version this is.
    log.info("Gotaxy server {version} starting (data directory {dir})",
             version=__version__, dir=os.path.abspath(config.data_dir))
    for warning in options.warnings:
        log.warn("{warning}", warning=warning)
    capped = backlog_warning()
    if capped is not None:
        log.warn("{warning}", warning=capped)
    streams = config.limits.max_connections_per_client
    log_fd_limit(log, streams, f"maxConnectionsPerClient = {streams} (public connections of one client)")

    data_dir = home = os.path.abspath(config.data_dir)
    if options.get("worker"):  # started by a server with workers > 1, in a directory of its own
        from gotaxy.server.workers import worker_config, worker_dir

        data_dir, config = worker_dir(home, options["worker"]), worker_config(config, home)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    lock = DataDirLock.acquire(data_dir)  # before anything in the directory is touched
    try:
        return _assemble(options, config, data_dir, lock, reactor, env, home).service
    except BaseException:
        lock.release()
        raise


def _assemble(
    options: Options, config: ServerConfig, data_dir: str, lock: DataDirLock, reactor: Any, env: Dict[str, str],
    home: Optional[str] = None,
) -> Server:
    """``home`` is the server's data directory when this is a worker (``data_dir`` its own), for the TLS identity."""
    worker = options.get("worker")
    try:
        credentials = load_or_create_server_credentials(
            os.path.join(home or data_dir, "tls"), config.transport.tls_cert_file, config.transport.tls_key_file
        )
    except ValueError as e:
        raise usage.UsageError(str(e))
    client_certificates = None
    if config.transport.tls_trusted_ca_file is not None:
        try:
            client_certificates = ClientCertificateVerifier(config.transport.tls_trusted_ca_file, clock=reactor)
        except ValueError as e:
            raise usage.UsageError(str(e))
    try:
        sync_store = Store(config.effective_database_url() or default_url(data_dir), clock=reactor.seconds)
    except StoreError as e:
        raise StartError(str(e)) from None
    for migration in sync_store.applied:
        log.info("store {url}: applied migration {version} ({description})", url=sync_store.shown_url,
                 version=migration.version, description=migration.description)
    log.info("store {url} at schema version {version}", url=sync_store.shown_url, version=sync_store.schema_version)
    # For ``gotaxy token create``, which reads the store, not the TLS files.
    stored_pin = sync_store.get_setting(JOIN_PIN_SETTING)
    if stored_pin is not None and stored_pin != credentials.join_pin:
        # Nodes of one database share one CA (gotaxy.tls.cluster); a node with its own refuses their tokens.
        log.warn(
            "The store's join tokens pin {stored}, but this server's TLS identity is {ours}: if other servers share "
            "database.url, this one is not of their cluster and their clients' join tokens are refused here; give "
            "it the cluster's files ('gotaxy cluster add-node' on the first node, copied as {tls}). If this "
            "server's CA was replaced, join tokens made before now pin the old one.",
            stored=stored_pin, ours=credentials.join_pin, tls=os.path.join(data_dir, "tls"),
        )
    sync_store.set_setting(JOIN_PIN_SETTING, credentials.join_pin)
    # This process is a node of the store: it releases what it left from its
    # last run, and what nodes whose lease ran out left, never another live
    # server's clients (several servers may share database.url).
    node = node_id(data_dir)
    lease = config.cluster.lease_seconds
    released = sync_store.join_node(node, lease, "server restarted", host=socket.gethostname(), pid=os.getpid(),
                                    advertise=config.cluster.advertised())
    log.info("store node {node}; lease {lease:g} s", node=node, lease=lease)
    if config.cluster.port_scope == "node":
        sync_store.port_scope = node  # ports claimed on this node's own public address
    for other in released:
        log.info("node {node} stopped renewing its lease: its clients are marked offline", node=other)

    def ready() -> None:
        # Every listener is bound: only now create the first-start secrets
        # and print them (a failed start must leave them for the next one).
        # Synchronous store work is fine here: the reactor serves nothing yet.
        if worker:
            return  # the parent has done it
        first = bootstrap(config, sync_store, env)
        if first.token or first.admin_password:
            # Printed, not logged: secrets must never reach the log files.
            banner = first_start_banner(config, first, credentials, _bound(control, config))
            print(banner, file=sys.__stdout__, flush=True)

    store = ThreadedStore(sync_store, reactor)
    core = ServerCore(config, store, reactor, client_certificates)
    # The bans in force, before any listener accepts (the reactor is not running yet).
    core.access.load(sync_store.db)
    # ... and the limits an operator set live, which win over the file's (gotaxy.store.overrides).
    core.load_overrides(sync_store)
    admission = Admission(config.transport.max_pending, config.transport.max_pending_per_ip, reactor)
    control_at = listen_at(CONTROL, config.bind_endpoint, config.bind_addr, config.bind_port)
    assert control_at is not None, "the control port cannot be turned off"
    control_factory = AdmittingTLSFactory(control_port_options(credentials.server_context(), client_certificates),
                                          ServerControlFactory(core, admission, reactor))
    workers: Optional[Service] = None
    if worker:  # the parent listens and hands this worker its share of the connections
        from gotaxy.server.workers import WorkerLink

        control = WorkerLink(worker, control_factory, lambda: len(core.sessions) + admission.pending, reactor)
    else:
        control = Listener(reactor, control_at, control_factory, CONTROL)
    if config.workers > 1:
        from gotaxy.server.workers import HandingFactory, WorkerPool, plugin_arguments

        workers = WorkerPool(config.workers, reactor, plugin_arguments(options),
                             lambda: len(core.sessions) + admission.pending)
        control.factory = HandingFactory(workers, control.factory, lambda host: core.access.admits(access.CONTROL, host))
    def check_revocations() -> None:
        Deferred.fromCoroutine(core.kick_inactive_tokens()).addErrback(
            failure_logger(log, "checking revoked tokens failed"))
        if core.certificates is not None:  # revoked or expired client certificates (gotaxy.server.certificates)
            Deferred.fromCoroutine(core.certificates.kick()).addErrback(
                lambda f: log.failure("checking revoked client certificates failed", f))

    revocations = TimerService(min(config.heartbeat_interval, 10.0), check_revocations)
    revocations.clock = reactor
    # Events older than events.retentionDays go, at start and then hourly.
    event_retention = EventRetention(core)
    # Events other processes write (the gotaxy command, another server) reach the bus.
    event_tail = EventTail(store, core.events, reactor, sync_store.node, start=sync_store.newest_event_id() or 0)
    # Notifications, metrics and stability history.
    notifier = build_notifier(config, core.events, reactor, store)
    webhooks = ManagedWebhooks(notifier, store, data_dir, config.server_name, reactor, key_file=config.notify.key_file)
    try:
        webhooks.load()
    except KeyMismatch as e:
        raise StartError(str(e)) from None
    mail = ManagedMailRecipients(notifier, store, config, reactor)
    mail.load()
    management = Management(core, webhooks=webhooks, mail=mail, join_pin=credentials.join_pin)
    # Operator actions for a client another node holds go there, and theirs for ours come here.
    node_commands = CommandChannel(store, reactor, management.perform)
    management.commands = node_commands
    operators = OperatorAuth(core)
    # Second factors are sealed under the same key as the webhooks (checked against the store just above).
    second_factor = PanelAuth(core, operators, reactor, Sealer.at(key_path(data_dir, config.notify.key_file)))
    sealed = second_factor.seal_plain_secrets()
    if sealed:
        log.info("sealed {count} TOTP secret(s) an older version had stored in plain text", count=sealed)
    metrics = Metrics(core, admission, notifier, reactor)
    history = History(core, store, reactor)
    metrics_resource = metrics.resource()
    # The operator's faces: web panel (with /metrics) and SSH console; either can be turned off.
    web = make_web_service(
        config, core, management, operators, reactor, data_dir, extra_resources={b"metrics": metrics_resource},
        history=history, auth=second_factor,
    )
    server: Optional[Server] = None

    def namespace() -> Dict[str, Any]:
        assert server is not None
        return server.namespace()

    console_access = ConsoleAccess(management, operators, second_factor, namespace)
    console = make_console_service(config, data_dir, console_access, reactor)
    # Bans and address rules before TLS, HTTP or SSH see a byte (gotaxy.server.access).
    for listener, name in ((web, access.WEB), (console, access.CONSOLE)):
        if listener is not None:
            listener.factory = access.GatedFactory(lambda: core.access, name, listener.factory)
    # A new ban ends the panel's sessions and closes the console's connections from there too.
    if web is not None:
        core.access.ban_hooks.append(lambda banned, under: web.panel.cut(banned, under).addErrback(
            lambda f: log.failure("ending the panel sessions of banned {banned} failed", f, banned=banned)))
    if console is not None:
        core.access.ban_hooks.append(console.factory.wrapped.cut)
    if console is not None:  # too many connections logging in from one address: a flood
        console.factory.wrapped.on_refused = lambda host: core.access.failure(
            access.FLOOD, host, "too many console connections logging in")

    challenges = ChallengeStore()
    acme = None
    if config.acme.enable:
        acme = AcmeManager(reactor, settings_from(config), data_dir, challenges, core.record)
    # Websites over HTTPS: TLS terminated on vhostHTTPSPort, then the http front.
    site_certificates = None
    https_front, http_front = core.fronts.get("https"), core.fronts.get("http")
    if https_front is not None and https_front.serving:
        site_certificates = SiteCertificates(reactor, config.https.cert_dir, acme)
        if http_front is not None:
            https_front.terminate_with(Termination(site_certificates, http_front.protocol_factory("https"), reactor))
        if acme is not None:
            core.events.subscribe(CertificatesForTunnels(core, acme, site_certificates), local_only=True)
    if http_front is not None:
        http_front.challenges = challenges  # HTTP-01 answers on vhostHTTPPort
    # Website requests for names another node's clients serve go there, and theirs for ours come here.
    forwarder = peer_listener = None
    if config.cluster.bind_port:
        try:
            identity = load_identity(config.cluster, data_dir, node)
        except ValueError as e:
            raise usage.UsageError(str(e))
        forwarder = Forwarder(store, identity, reactor, config.cluster.connect_timeout)
        peer_listener = PeerListener(config.cluster, identity, core, reactor)
        for front in (http_front, https_front):
            if front is not None:
                front.forwarder = forwarder
    if https_front is not None:
        https_front.challenges = challenges  # TLS-ALPN-01 answers on vhostHTTPSPort

    error_log = ErrorLogService(os.path.join(data_dir, "logs"), config.log.max_days, config.log.max_size,
                                config.log.level)
    # A reload (SIGHUP, console, panel, REST API) reads the file as the start
    # did and hands it to every part's apply (gotaxy.server.reload).
    def read_config() -> "tuple[ServerConfig, List[str]]":
        new, warnings = build_config(options)
        if worker:  # what a worker runs of it (gotaxy.server.workers)
            from gotaxy.server.workers import worker_config

            new = worker_config(new, home or data_dir)
        return new, warnings

    reloader = ConfigReloader(
        read_config, config,
        [part for part in (core, core.access, admission, error_log, notifier, mail, history, metrics_resource, event_retention,
                           control, web, console, workers) if part is not None],
        core.record,
    )
    management.reloader = reloader
    top = ServerService(lock, ready)
    # Started in this order, stopped in the reverse.
    for part in (
        error_log,
        FrontListeners(core),
        CoreService(core, store, credentials, admission, control),
        NodeLease(store, core, reactor, lease=config.cluster.lease_seconds),  # stopped before the core: the lease ends, then the store
        peer_listener, forwarder,
        control, workers, revocations, event_retention, notifier,
        node_commands,  # stopped before the lease ends and the store closes
        operators,  # its password-check threads start and stop with the server
        metrics, history, acme, site_certificates,
        event_tail,  # once every subscriber listens; stopped before the store closes
        web, console,
        SignalReload(reloader, reactor, expected=(ReloadRefused,)),  # logged and recorded already
    ):
        if part is not None:
            part.setServiceParent(top)
    server = Server(
        config=config, service=top, store=store, core=core, admission=admission, management=management,
        operators=operators, second_factor=second_factor, notifier=notifier, webhooks=webhooks, mail=mail,
        metrics=metrics, metrics_resource=metrics_resource, history=history, event_retention=event_retention,
        event_tail=event_tail,
        control=control, web=web, console=console, console_access=console_access,
        challenges=challenges, acme=acme, site_certificates=site_certificates,
    )
    return server
