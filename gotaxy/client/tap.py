# -*- test-case-name: tests.test_client_options -*-
"""``twistd gotaxy-client``: options and service assembly."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Optional

import attrs
from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from gotaxy import __version__
from gotaxy.client.control import ClientControlFactory, Reconnection, ReportingEndpoint, server_address
from gotaxy.client.reload import ClientReloader
from gotaxy.client.servers import ServerList
from gotaxy.client.identity import load_or_create_instance_id
from gotaxy.config.client import MAX_SERVERS
from gotaxy.config import (
    ClientConfig,
    ConfigError,
    has_port,
    load_client_file,
    parse_host_port,
    parse_local_rule_flag,
    parse_tunnel_flag,
)
from gotaxy.logs import gotaxy_observer, set_level
from gotaxy.mux import MAX_STREAMS
from gotaxy.oslimits import log_fd_limit
from gotaxy.process import EXIT_USAGE, SignalReload, TwistdOptions, exit_with, exit_with_message
from gotaxy.tls import KNOWN_SERVERS_FILENAME, ServerVerifier, normalise_fingerprint
from gotaxy.tls.bulk import BulkClientTLSEndpoint
from gotaxy.tls.clients import ClientIdentity, load_client_identity

log = Logger(observer=gotaxy_observer, namespace="gotaxy.client")

#: Exit status when retrying cannot help (bad token, untrusted server).
EXIT_FATAL = 2
PROGRAM = "gotaxy-client"
DEFAULT_SERVER_PORT = 7000


class Options(TwistdOptions):
    program = PROGRAM
    synopsis = "--server HOST:PORT --token TOKEN --tunnel NAME=tcp:LOCALIP:LOCALPORT[:REMOTEPORT] ..."
    longdesc = (
        "Run a Gotaxy tunnel client: connect to a Gotaxy server and expose local TCP services "
        "on its public ports. Options override the config file (--config, frpc.toml key names)."
    )
    optFlags = [["insecure", None, "Do not verify the server's certificate (dangerous)."]]
    optParameters: List[List[Any]] = [
        ["config", "c", None, "TOML config file (frpc.toml key names)."],
        ["server", "s", None, "Server address, HOST:PORT (port defaults to 7000)."],
        ["token", "t", None, "Client token (auth.token); a join token (gtx1.PIN.SECRET) also pins the server."],
        ["token-file", None, None, "Read the client token from this file, e.g. a systemd credential or a Docker "
                                   "secret (keeps it out of the command line and the config)."],
        ["user", "u", None, "Client name, needed with a shared server token (user)."],
        ["fingerprint", None, None, "Pin the server certificate: SHA256:HEX."],
        ["ca", None, None, "Trust server certificates issued by the CA in this PEM file."],
        ["cert", None, None, "Present this client certificate (PEM; transport.tls.certFile), from 'gotaxy cert issue'."],
        ["key", None, None, "The client certificate's private key (PEM; transport.tls.keyFile)."],
        ["server-name", None, None, "Name to verify in the server certificate with --ca."],
        ["data-dir", None, None, "Where known_servers is kept. [default: ~/.gotaxy]"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["tunnel"] = []
        self["allow-operator-tunnel"] = []

    def opt_tunnel(self, value: str) -> None:
        """A tunnel: NAME=tcp:LOCALIP:LOCALPORT[:REMOTEPORT] (repeatable)."""
        self["tunnel"].append(value)

    def opt_allow_operator_tunnel(self, value: str) -> None:
        """Let the server's operator add tunnels to HOST:PORT, HOST:LOW-HIGH or HOST:* (HOST: IP, network or name; repeatable). Without it, operator-defined tunnels are refused."""
        self["allow-operator-tunnel"].append(value)

    def postOptions(self) -> None:
        try:
            self.loaded_config, self.warnings = build_config(self)
        except ConfigError as e:
            raise usage.UsageError(str(e))


def build_config(options: Dict[str, Any], require_tunnels: bool = True) -> "tuple[ClientConfig, List[str]]":
    config = ClientConfig()
    warnings: List[str] = []
    if options.get("config"):
        loaded = load_client_file(options["config"], base=config)
        config, warnings = loaded.config, list(loaded.warnings)  # type: ignore[assignment]
    overrides: Dict[str, Any] = {}
    if options.get("server"):
        text = options["server"]
        # Several servers of one cluster: --server a.example.org:7000,b.example.org:7000
        entries = [entry.strip() for entry in text.split(",")] if "," in text else [text]
        if len(entries) > MAX_SERVERS:
            raise ConfigError(f"--server lists {len(entries)} servers; at most {MAX_SERVERS}")
        parsed = [parse_host_port(entry, default_port=DEFAULT_SERVER_PORT) for entry in entries]
        if len(parsed) == 1:
            overrides["server_addr"], overrides["server_port"] = parsed[0]
        else:
            overrides["server_addr"] = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parsed]
        for entry in entries:
            if not has_port(entry):
                warnings.append(
                    f"--server {entry} has no port; using {DEFAULT_SERVER_PORT}, the default "
                    f"(write --server {entry}:PORT if the server's bindPort is another)"
                )
    for flag, field in [
        ("token", "token"),
        ("user", "user"),
        ("ca", "trusted_ca_file"),
        ("cert", "tls_cert_file"),
        ("key", "tls_key_file"),
        ("server-name", "server_name"),
        ("data-dir", "data_dir"),
    ]:
        if options.get(flag):
            overrides[field] = options[flag]
    if options.get("token-file"):
        if options.get("token"):
            raise ConfigError("--token and --token-file both give the token; keep one of them")
        overrides["token"] = read_token_file(options["token-file"])
    if options.get("fingerprint"):
        try:
            overrides["fingerprint"] = normalise_fingerprint(options["fingerprint"])
        except ValueError as e:
            raise ConfigError(f"--fingerprint: {e}") from None
    if options.get("insecure"):
        overrides["insecure"] = True
    flags = tuple(parse_tunnel_flag(text) for text in options.get("tunnel") or [])
    if flags:
        # --tunnel adds to the file's [[proxies]]; a repeated name is an error.
        overrides["tunnels"] = config.tunnels + flags
    allowed = tuple(parse_local_rule_flag(text) for text in options.get("allow-operator-tunnel") or [])
    if allowed:
        overrides["allow_operator_tunnels"] = config.allow_operator_tunnels + allowed
    config = attrs.evolve(config, **overrides)
    if not config.token and config.tls_cert_file is None:
        raise ConfigError("no token: pass --token TOKEN or --token-file FILE, or set auth.token in the config file "
                          "(or log in with a client certificate: transport.tls.certFile and keyFile)")
    if not config.tunnels and require_tunnels:
        raise ConfigError("no tunnels: pass --tunnel NAME=tcp:LOCALIP:LOCALPORT or add [[proxies]] to the config")
    return config, warnings


#: A token is 40-odd characters; anything this long is not a token file.
TOKEN_FILE_LIMIT = 4096


def read_token_file(path: str) -> str:
    """The token in ``path``: its first line, without surrounding white space."""
    try:
        with open(path, "rb") as f:
            data = f.read(TOKEN_FILE_LIMIT + 1)
    except OSError as e:
        raise ConfigError(f"--token-file {path}: cannot read it ({e.strerror}); check the path and that this user "
                          "may read it") from None
    if len(data) > TOKEN_FILE_LIMIT:
        raise ConfigError(f"--token-file {path}: longer than {TOKEN_FILE_LIMIT} bytes, so not a token file; "
                          "put only the token in it")
    try:
        lines = data.decode("utf-8").strip().splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"--token-file {path}: not text; put only the token in it") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError(f"--token-file {path} is empty; put the client's token in it "
                          "('gotaxy token create NAME' prints one)")
    return token


def _drop(event: Any) -> None:
    pass


class TunnelClientService(ClientService):
    """
    ``ClientService`` that closes its connection the way a mux must: the
    protocol is the producer of its TLS transport, which waits for that
    producer to unregister before it shuts down.

    Its own log line ("Scheduling retry 1 to connect <_WrapperEndpoint ...>")
    is silenced: ``Reconnection`` says the same with the address and reason.
    """

    _log = Logger(observer=_drop)

    def __init__(self, factory: ClientControlFactory, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tunnel_factory = factory

    def stopService(self) -> Any:
        protocol = self.tunnel_factory.latest
        if protocol is not None and protocol.transport is not None and not protocol.disconnecting:
            protocol.close()
        return super().stopService()


def make_verifiers(config: ClientConfig, reactor: Any = None) -> Dict["tuple[str, int]", ServerVerifier]:
    """The check of each server ``serverAddr`` lists, under its own name and port (``known_servers`` keys them)."""
    return {entry: make_verifier(config, reactor, entry) for entry in config.servers}


def make_verifier(config: ClientConfig, reactor: Any = None,
                  server: "Optional[tuple[str, int]]" = None) -> ServerVerifier:
    """The check of ``server`` (the first of ``serverAddr`` if not given)."""
    host, port = server or config.servers[0]
    data_dir = os.path.expanduser(config.data_dir)
    join = config.join_token
    try:
        return ServerVerifier(
            server_name=config.server_name or host,
            server_port=port,
            fingerprint=config.fingerprint,
            join_pin=join.pin if join is not None else None,
            ca_file=config.trusted_ca_file,
            insecure=config.insecure,
            known_servers_path=os.path.join(data_dir, KNOWN_SERVERS_FILENAME),
            clock=reactor,
        )
    except ValueError as e:
        raise usage.UsageError(str(e))


def load_identity(config: ClientConfig, reactor: Any = None) -> Optional[ClientIdentity]:
    """The client certificate and key to present (``transport.tls.certFile`` / ``keyFile``), if any."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    try:
        identity = load_client_identity(os.path.expanduser(config.tls_cert_file),
                                        os.path.expanduser(config.tls_key_file))
    except ValueError as e:
        raise usage.UsageError(f"transport.tls.certFile / keyFile: {e}")
    leaf = identity.certificates[0]
    now = reactor.seconds() if reactor is not None else time.time()
    if leaf.not_valid_after_utc.timestamp() <= now:
        log.warn("the client certificate {file} (serial {serial}) expired on {date:%Y-%m-%d}: a server that asks "
                 "for one will refuse it; get a new one ('gotaxy cert issue NAME' on the server)",
                 file=config.tls_cert_file, serial=identity.serial, date=leaf.not_valid_after_utc)
    else:
        log.info("presenting client certificate {file} (CN {name}, serial {serial}, valid until {date:%Y-%m-%d})",
                 file=config.tls_cert_file, name=identity.name, serial=identity.serial, date=leaf.not_valid_after_utc)
    return identity


def makeService(options: Options, reactor: Any = None,
                exit: Callable[[Any, int], None] = exit_with) -> MultiService:
    """
    The client's services.  ``exit(reactor, status)`` ends the process after
    a fatal error (a refused token: retrying cannot help); a test running the
    client inside its own reactor passes one that only records it.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    try:
        return _make_service(options, reactor, exit)
    except usage.UsageError as e:
        if getattr(options, "parent", None) is None:
            raise
        exit_with_message(PROGRAM, str(e), EXIT_USAGE)


def _make_service(options: Options, reactor: Any, exit: Callable[[Any, int], None]) -> MultiService:
    config: ClientConfig = options.loaded_config
    set_level(config.log_level)
    log.info(
        "Gotaxy client {version} starting: server {address}, {count} tunnel(s)",
        version=__version__, address=server_address(config), count=len(config.tunnels),
    )
    for warning in options.warnings:
        log.warn("{warning}", warning=warning)
    for tunnel in config.tunnels:
        if not tunnel.enabled:
            log.info("tunnel {name} is disabled in the config; defined but not opened", name=tunnel.name)
    log_fd_limit(log, MAX_STREAMS, f"a connection to the server carrying its most streams ({MAX_STREAMS} local connections)")
    verifiers = make_verifiers(config, reactor)
    verifier = verifiers[config.servers[0]]
    if config.insecure:
        log.warn(
            "INSECURE: --insecure is set, the server's certificate is NOT checked; anyone on the "
            "path can impersonate the server and steal the token"
        )

    top = MultiService()
    service: Optional[TunnelClientService] = None

    def fatal(message: str) -> None:
        log.critical("{message}", message=message)
        if service is not None and service.running:
            service.stopService()
        exit(reactor, EXIT_FATAL)

    try:
        instance_id = load_or_create_instance_id(config.data_dir)
    except OSError as e:
        instance_id = ""
        log.warn(
            "cannot keep this installation's id in {dir}: {error}; after a network change this client "
            "cannot take over its old session until the server notices that one is gone",
            dir=config.data_dir, error=e,
        )
    reconnection = Reconnection(server_address(config), reactor)
    identity = load_identity(config, reactor)
    factory = ClientControlFactory(config, verifier, reactor, fatal, instance_id, reconnection)
    # One endpoint over every server's addresses (gotaxy.client.servers): the first that answers is used.
    servers = ServerList(config.servers, reactor)
    factory.servers, factory.verifiers = servers, verifiers
    if servers.several:
        log.info("{count} servers to fail over between, tried in this order: {servers}",
                 count=len(servers.entries), servers=servers.describe())
    endpoint = ReportingEndpoint(
        BulkClientTLSEndpoint(
            verifier.connection_creator(identity),
            servers.endpoint(config.dial_timeout),
            reactor,
        ),
        reconnection,
    )
    service = TunnelClientService(factory, endpoint, factory, retryPolicy=reconnection, clock=reactor)
    service.setServiceParent(top)
    # SIGHUP, gotaxy-client reload and POST /api/reload read the file again (gotaxy.client.reload).
    path = options.get("config")
    # A reload may leave no tunnel (the last included file removed): the client stays connected.
    reloader = ClientReloader((lambda: build_config(options, require_tunnels=False)) if path else None, factory)
    SignalReload(reloader, reactor, expected=(ConfigError,)).setServiceParent(top)  # logged already
    if config.admin_port:
        # Imported only here: the admin API is a Klein app, and klein with
        # twisted.web is several MiB that a client without webServer.port
        # never uses (tests/test_client_imports.py).
        from gotaxy.client.admin import AdminService, ClientAdmin

        admin = ClientAdmin(factory, reloader, path, reactor, stop=reactor.stop)
        AdminService(admin, config.admin_addr, config.admin_port, reactor).setServiceParent(top)
    top.factory = factory  # type: ignore[attr-defined]
    top.reloader = reloader  # type: ignore[attr-defined]
    return top
