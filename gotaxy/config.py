# -*- test-case-name: tests.test_config -*-
"""
Configuration: frp-style TOML files and command-line values.

Gotaxy's ``server.toml`` and ``client.toml`` use frp's key names (the TOML
format of frp >= 0.52), so an existing ``frps.toml`` or ``frpc.toml`` can be
used as it is.  TOML dotted keys (``auth.token = "x"``) and tables
(``[auth]``) both parse to nested dicts; the reader flattens them back into
dotted paths and sorts every path into one of three groups:

ours
    A key Gotaxy supports.  Each one is declared once, on the attrs field it
    fills, as ``_setting(default, form, key, flag)``; the reader's
    ``key -> field`` table is built from those declarations, so the config
    classes below *are* the mapping.  A ``_Form`` says what the value must
    look like and puts it in canonical form (fingerprints to upper-case hex,
    ``log.level = "trace"`` to ``"debug"``).  The same form guards the field
    as an attrs converter, so a value from a command-line flag applied with
    ``attrs.evolve`` is checked too.
frp's, not yet ours
    A key frp knows but Gotaxy ignores costs one warning, not an error, so a
    real frp file still starts.  frp's map-valued settings and arrays of
    tables (``auth.oidc``, ``metadatas``, ``[[httpPlugins]]``,
    ``[[visitors]]``, a proxy's ``plugin`` ...) are warned about once as a
    whole, not key by key.
unknown
    Anything else is a typo or another program's setting: ``ConfigError``
    naming the file and the key, with the closest known key as a suggestion.

Key mapping, server (``ServerConfig``)::

    dataDir                          data_dir              (ours)
    bindAddr / bindPort              bind_addr / bind_port
    bindEndpoint                     bind_endpoint         (ours; a Twisted endpoint string instead)
    proxyBindAddr                    proxy_bind_addr
    allowPorts                       allow_ports           [{start=.., end=..}, {single=..}]
    auth.token                       token                 (auth.method must be "token")
    transport.heartbeatInterval      heartbeat_interval    (ours on the server; a third of the
    transport.heartbeatTimeout       heartbeat_timeout      timeout, at most 10 s, when not set)
    transport.authTimeout            auth_timeout          (ours)
    transport.maxPendingConnections  max_pending           (ours)
    transport.maxPendingPerIP        max_pending_per_ip    (ours)
    maxPortsPerClient                max_ports_per_client
    maxConnectionsPerClient          max_connections_per_client (ours)
    tunnelIdleTimeout                tunnel_idle_timeout   (ours)
    transport.tls.certFile / keyFile tls_cert_file / tls_key_file
    log.level / log.maxDays          log_level / log_max_days
    log.maxSize                      log_max_size          (ours; bytes, or "10MiB")
    events.retentionDays             event_retention_days  (ours)
    database.url                     database_url          (ours; any SQLAlchemy URL)
    store                            store                 (ours; the older name of database.url)
    serverName                       server_name           (ours; names this server in notifications)
    [[webhooks]]                     webhooks              (WebhookSpec: name, url, secret, events,
                                                            format, timeout, retryFor, maxPending)
    smtp.host / port / tls / ...     smtp_*                (ours; e-mail notifications)
    notify.flapGrace                 notify_flap_grace     (ours)
    notify.keyFile                   notify_key_file       (ours; default DATA_DIR/notify.key)
    metrics.exposure / token         metrics_exposure / metrics_token (ours)
    enablePrometheus                 enable_prometheus     (true: metrics.exposure "open")
    history.sampleInterval           history_sample_interval (ours)
    history.rawHours / retentionDays history_raw_hours / history_retention_days (ours)
    webServer.endpoint               web_endpoint          (ours; instead of webServer.addr / port)
    console.endpoint                 console_endpoint      (ours; instead of console.addr / port)

Client (``ClientConfig``)::

    serverAddr / serverPort          server_addr / server_port
    auth.token / user                token / user          (a join token gtx1.PIN.SECRET pins the server)
    [[proxies]]                      tunnels               (TunnelSpec: name, type,
                                                            localIP, localPort, remotePort,
                                                            enabled, healthCheck.type /
                                                            timeoutSeconds / maxFailed /
                                                            intervalSeconds)
    transport.tls.fingerprint        fingerprint           (ours)
    transport.tls.trustedCaFile      trusted_ca_file
    transport.tls.serverName         server_name
    transport.tls.insecureSkipVerify insecure              (ours)
    transport.tls.enable             -                     (must be true)
    dataDir                          data_dir              (ours)
    transport.heartbeatInterval      heartbeat_interval    (frp's defaults: 30 s and 90 s; one
    transport.heartbeatTimeout       heartbeat_timeout      set alone, the other follows)
    transport.dialServerTimeout      dial_timeout
    loginFailExit                    login_fail_exit
    allowOperatorTunnels             allow_operator_tunnels (ours; ["127.0.0.1:8000-8100", ...])
    log.level / log.maxDays          log_level / log_max_days

Only ``tcp`` proxies are supported.  A proxy of another frp type, or one that
hands its connections to an frp ``plugin``, is skipped with one warning; an
frp key inside a kept proxy is warned about once per key, naming the proxies
that use it.

Paths are kept as written; the caller resolves them.  Errors raised by the
config classes themselves (a bad flag value, a timeout below the interval)
name the key and the flag; ``parse_*_config`` prefix them with the file name.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import shlex
import sys
from typing import Any, Callable, Iterable, Mapping

import attrs

from gotaxy.events import filter_pattern_error
from gotaxy.jointoken import JoinToken, JoinTokenError, parse_join_token
from gotaxy.mux import MAX_STREAMS
from gotaxy.names import NAME_RULE, is_valid_name
from gotaxy.tls import normalise_fingerprint
from gotaxy.units import parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

__all__ = [
    "ClientConfig",
    "ConfigError",
    "FRP_PROXY_TYPES",
    "LocalAddressRule",
    "Loaded",
    "PortRange",
    "ServerConfig",
    "TunnelSpec",
    "WebhookSpec",
    "format_allow_ports",
    "legacy_ini_message",
    "load_toml",
    "parse_allow_ports",
    "parse_client_config",
    "parse_host_port",
    "parse_local_rule_flag",
    "parse_server_config",
    "parse_tunnel_flag",
]


class ConfigError(Exception):
    """
    A user error in configuration; str() is one clear sentence naming the
    key/flag and the fix.  ``key`` is the TOML key at fault, when it is one
    (faces that take the same settings as arguments mark that input).
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


#: Proxy types frp knows.  Gotaxy runs ``tcp`` ones and skips the others.
FRP_PROXY_TYPES = ("tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp")
SUPPORTED_TUNNEL_TYPES = ("tcp",)


# ---------------------------------------------------------------------------
# What values look like


class _Mismatch(ValueError):
    """Raised by a form's converter; ``value`` is the part the user got wrong."""

    def __init__(self, value: object) -> None:
        super().__init__(value)
        self.value = value


@attrs.frozen
class _Form:
    """
    What a setting's value must look like.

    ``convert`` returns the value as the config classes hold it or raises
    ``_Mismatch``.  It returns its own output unchanged, so it serves both
    for raw TOML values and as the attrs converter of the field.
    ``expected`` completes the sentence "'key' must be ...".
    """

    expected: str
    convert: Callable[[Any], Any]


def _show(value: object) -> str:
    """A value the way it would be written in TOML (JSON is close enough), kept short."""
    if isinstance(value, _Described):
        return str(value)
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(low: int, high: float = math.inf) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Mismatch(value)
        return value

    return convert


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Mismatch(value)
    if not (value > 0 and math.isfinite(value)):
        raise _Mismatch(value)
    return float(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Mismatch(value)
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Mismatch(value)
    return value


#: The Twisted endpoint types a listener may use (all listen at once, at start).
ENDPOINT_TYPES = ("tcp", "tcp6", "ssl", "unix", "systemd")


def _endpoint(value: Any) -> str:
    """A Twisted server endpoint string; its arguments are checked when it listens."""
    if not isinstance(value, str) or value.split(":", 1)[0] not in ENDPOINT_TYPES or ":" not in value:
        raise _Mismatch(value)
    return value


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _host(value: Any) -> str:
    """A host name or IP address; IPv6 may come in brackets, which are dropped."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise _Mismatch(value)
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if not host or ((":" in host or host != value) and not _is_ipv6(host)):
        raise _Mismatch(value)
    return host


def _name(value: Any) -> str:
    if not is_valid_name(value):
        raise _Mismatch(value)
    return value


_LOG_LEVELS = ("trace", "debug", "info", "warn", "error")


def _log_level(value: Any) -> str:
    level = value.lower() if isinstance(value, str) else value
    if level not in _LOG_LEVELS:
        raise _Mismatch(value)
    # Twisted's logger has nothing finer than debug.
    return "debug" if level == "trace" else level


def _fingerprint(value: Any) -> str:
    if not isinstance(value, str):
        raise _Mismatch(value)
    try:
        return normalise_fingerprint(value)
    except ValueError:
        raise _Mismatch(value) from None


def _port_ranges(value: Any) -> tuple[PortRange, ...]:
    """frp's ``allowPorts``: ``[{start = 10000, end = 20000}, {single = 6000}]``."""
    if not isinstance(value, (list, tuple)):
        raise _Mismatch(value)
    return tuple(_port_range(item) for item in value)


def _port_range(item: Any) -> PortRange:
    if isinstance(item, PortRange):
        return item
    port = _integer(1, 65535)
    try:
        if isinstance(item, dict) and item.keys() == {"single"}:
            start = end = port(item["single"])
        elif isinstance(item, dict) and item.keys() == {"start", "end"}:
            start, end = port(item["start"]), port(item["end"])
        else:
            raise _Mismatch(item)
    except _Mismatch:
        raise _Mismatch(item) from None
    if start > end:
        raise _Mismatch(item)
    return PortRange(start, end)


def _local_rules(value: Any) -> tuple[LocalAddressRule, ...]:
    """``allowOperatorTunnels``: ``["127.0.0.1:8000-8100", "192.168.1.0/24:22"]``."""
    if not isinstance(value, (list, tuple)):
        raise _Mismatch(value)
    rules = []
    for item in value:
        if isinstance(item, LocalAddressRule):
            rules.append(item)
            continue
        try:
            rules.append(_local_rule(item))
        except ValueError:
            raise _Mismatch(item) from None
    return tuple(rules)


def _non_negative_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Mismatch(value)
    if not (value >= 0 and math.isfinite(value)):
        raise _Mismatch(value)
    return float(value)


def _one_of(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise _Mismatch(value)
        return value  # type: ignore[no-any-return]

    return convert


def _texts(value: Any) -> tuple[str, ...]:
    """A non-empty list of non-empty strings (a single string counts as a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise _Mismatch(value)
    return tuple(_text(item) for item in value)


def _event_patterns(value: Any) -> tuple[str, ...]:
    """Event types to notify about: "client.disconnected", a family "tunnel.*", or "*" (see gotaxy.events)."""
    patterns = _texts(value)
    for pattern in patterns:
        if filter_pattern_error(pattern) is not None:
            raise _Mismatch(pattern)
    return patterns


def _names(value: Any) -> tuple[str, ...]:
    """A list of tunnel names, possibly empty (frp's ``start``)."""
    if not isinstance(value, (list, tuple)):
        raise _Mismatch(value)
    return tuple(_name(item) for item in value)


class _Described(str):
    """Stands for a value that must not be echoed; ``_show`` prints the description as is."""


def _url(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        if not isinstance(value, str):
            raise _Mismatch(value)
        # A webhook URL often carries its secret (Slack, DingTalk, WeCom), so
        # say what is wrong with it without repeating it.
        scheme, sep, rest = value.partition("://")
        if not sep:
            problem = "a value without http:// or https:// in front"
        elif scheme not in ("http", "https"):
            problem = f"a URL that starts with {scheme[:10]}://" if scheme.lower() not in ("http", "https") else f"{scheme}:// in capitals"
        elif not rest or rest.startswith("/"):
            problem = "a URL without a host name"
        else:
            problem = "a URL with a space or other blank in it"
        raise _Mismatch(_Described(problem + " (not shown: a webhook URL may hold a secret)"))
    return value


def _mail_address(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[^\s@<>]+@[^\s@<>]+", value):
        raise _Mismatch(value)
    return value


def _mail_addresses(value: Any) -> tuple[str, ...]:
    return tuple(_mail_address(item) for item in _texts(value))


def _default_server_name() -> str:
    import socket

    return socket.gethostname() or "gotaxy"


MIN_LOG_SIZE = 64 * 1024


def _log_size(value: Any) -> int:
    """A number of bytes, or a string with a unit such as "10MiB" (``gotaxy.units``); at least 64 KiB."""
    if isinstance(value, str):
        try:
            size = parse_size(value)
        except ValueError:
            raise _Mismatch(value) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        raise _Mismatch(value)
    if size < MIN_LOG_SIZE:
        raise _Mismatch(value)
    return size


def _equals(expected: object) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value != expected or type(value) is not type(expected):
            raise _Mismatch(value)
        return value

    return convert


PORT = _Form("an integer from 1 to 65535", _integer(1, 65535))
REMOTE_PORT = _Form("an integer from 0 to 65535 (0 lets the server pick)", _integer(0, 65535))
SERVICE_PORT = _Form("an integer from 0 (turned off) to 65535", _integer(0, 65535))
COUNT = _Form("an integer of at least 1", _integer(1))
LIMIT = _Form("an integer of at least 0 (0 means no limit)", _integer(0))
SECONDS = _Form("a number of seconds greater than 0", _seconds)
HEARTBEAT = _Form(
    "a number of seconds greater than 0 (Gotaxy requires heartbeats and cannot turn them off)",
    _seconds,
)
BOOLEAN = _Form("true or false", _boolean)
LOG_SIZE = _Form('a size of at least 64 KiB: a number of bytes, or a string such as "10MiB" or "500KB"', _log_size)
RETENTION_DAYS = _Form(
    "an integer number of days of at least 7 (the panel's 7-day connect counts read the events)", _integer(7)
)
TEXT = _Form("a non-empty string", _text)
HOST = _Form("a host name or IP address without a port", _host)
ENDPOINT = _Form(
    "a Twisted endpoint string such as \"tcp:7000:interface=0.0.0.0\" or \"systemd:domain=INET6:index=0\" "
    f"(types: {', '.join(ENDPOINT_TYPES)})",
    _endpoint,
)
NAME = _Form(NAME_RULE, _name)
LOG_LEVEL = _Form('one of "trace", "debug", "info", "warn" or "error"', _log_level)
FINGERPRINT = _Form(
    '"SHA256:" followed by 64 hex digits (colons allowed), as the server prints it', _fingerprint
)
LOCAL_RULES = _Form(
    'a list of local addresses with a port or port range, such as '
    '["127.0.0.1:8000-8100", "192.168.1.10:80", "192.168.1.0/24:22", "[::1]:*"]',
    _local_rules,
)
PORT_RANGES = _Form(
    "a list of port ranges such as [{ start = 10000, end = 20000 }, { single = 6000 }] "
    "with ports from 1 to 65535 and no range starting above its end",
    _port_ranges,
)
TUNNEL_TYPE = _Form('"tcp" (the only tunnel type Gotaxy supports so far)', _equals("tcp"))
HEALTH_CHECK_TYPE = _Form('"tcp" or "http"', _one_of("tcp", "http"))
TOKEN_AUTH = _Form(
    '"token" (Gotaxy supports token authentication only)', _equals("token")
)
TLS_ON = _Form(
    "true (Gotaxy always uses TLS; remove transport.tls.enable)", _equals(True)
)
CONNECTIONS = _Form(
    f"an integer from 1 to {MAX_STREAMS} (the most one client connection can carry)",
    _integer(1, MAX_STREAMS),
)
IDLE_TIMEOUT = _Form("a number of seconds of at least 0 (0 turns it off)", _non_negative_seconds)
GRACE = _Form("a number of seconds of at least 0 (0 turns it off)", _non_negative_seconds)
EVENT_PATTERNS = _Form(
    'a list of event types such as ["client.disconnected", "tunnel.*"] ("*" for all)',
    _event_patterns,
)
URL = _Form("an http:// or https:// URL", _url)


def _database_url(value: Any) -> str:
    if not isinstance(value, str):
        raise _Mismatch(value)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(value)
    except ArgumentError:
        # It may hold the database's password: say what is wrong without it.
        raise _Mismatch(_Described("a value that is not a URL (not shown: it may hold a password)")) from None
    return value


DATABASE_URL = _Form(
    "a SQLAlchemy database URL such as \"postgresql://gotaxy:PASSWORD@db.example.com/gotaxy\" "
    "or \"sqlite:////var/lib/gotaxy/gotaxy.db\"",
    _database_url,
)
NAMES = _Form('a list of proxy names such as ["ssh", "web"]', _names)
WEBHOOK_FORMAT = _Form(
    '"json", "slack", "dingtalk" or "feishu"', _one_of("json", "slack", "dingtalk", "feishu")
)
SMTP_TLS = _Form(
    '"starttls", "tls" (implicit TLS, usually port 465) or "none"',
    _one_of("starttls", "tls", "none"),
)
MAIL_ADDRESS = _Form("an e-mail address such as gotaxy@example.org", _mail_address)
MAIL_ADDRESSES = _Form(
    'a list of e-mail addresses such as ["ops@example.org"]', _mail_addresses
)
METRICS_EXPOSURE = _Form(
    '"off", "open" or "token" (a bearer token in metrics.token)', _one_of("off", "open", "token")
)


def _label(key: str, flag: str | None) -> str:
    return f"'{key}' ({flag})" if flag else f"'{key}'"


def _setting(
    default: Any,
    form: _Form,
    key: str,
    flag: str | None = None,
    *,
    secret: bool = False,
    alias: str | None = None,
) -> Any:
    """
    An attrs field filled from the TOML ``key`` (and the command-line
    ``flag``, if there is one), with values in ``form``.  A ``None`` default
    makes the setting optional; a ``secret`` stays out of ``repr`` (and so
    out of logs).  An ``alias`` is the name the field takes in ``__init__``
    and ``attrs.evolve`` (for a private field behind a property).
    """

    def convert(value: Any) -> Any:
        if value is None and default is None:
            return None
        try:
            return form.convert(value)
        except _Mismatch as e:
            raise ConfigError(
                f"{_label(key, flag)} must be {form.expected}, got {_show(e.value)}", key
            ) from None

    return attrs.field(
        default=default,
        converter=convert,
        repr=not secret,
        metadata={"key": key, "form": form, "flag": flag},
        alias=alias,
    )


def _field_label(cls: type, name: str) -> str:
    metadata = attrs.fields_dict(cls)[name].metadata
    return _label(metadata["key"], metadata["flag"])


#: How many pings fit into a heartbeat timeout when only one of the two is set
#: (frp's client defaults, 30 s and 90 s, and Gotaxy's server, 10 s and 30 s).
HEARTBEAT_RATIO = 3


def _heartbeats(
    interval: float | None, timeout: float | None, defaults: tuple[float, float]
) -> tuple[float, float]:
    """
    The heartbeat interval and timeout in effect.  A setting left out
    follows from the other one, so that frps.toml's lone
    ``transport.heartbeatTimeout = 3`` (frp's server has no interval) means
    pings every second rather than an error about the default interval.
    """
    default_interval, default_timeout = defaults
    if interval is None and timeout is None:
        return default_interval, default_timeout
    if interval is None:
        assert timeout is not None
        return min(default_interval, timeout / HEARTBEAT_RATIO), timeout
    if timeout is None:
        return interval, max(default_timeout, interval * HEARTBEAT_RATIO)
    return interval, timeout


class _Heartbeats:
    """
    ``heartbeat_interval`` and ``heartbeat_timeout`` in effect for a config
    with ``_heartbeat_interval``/``_heartbeat_timeout`` settings (None: not
    set) and its ``HEARTBEAT_DEFAULTS``: see ``_heartbeats``.
    """

    __slots__ = ()
    HEARTBEAT_DEFAULTS: tuple[float, float]
    _heartbeat_interval: float | None
    _heartbeat_timeout: float | None

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between pings: the setting, or a third of the timeout (at most the default)."""
        return _heartbeats(self._heartbeat_interval, self._heartbeat_timeout, self.HEARTBEAT_DEFAULTS)[0]

    @property
    def heartbeat_timeout(self) -> float:
        """Seconds of silence before the peer is taken for dead."""
        return _heartbeats(self._heartbeat_interval, self._heartbeat_timeout, self.HEARTBEAT_DEFAULTS)[1]


def _check_heartbeats(config: ServerConfig | ClientConfig) -> None:
    if config.heartbeat_timeout <= config.heartbeat_interval:
        cls = type(config)
        raise ConfigError(
            f"{_field_label(cls, '_heartbeat_timeout')} ({config.heartbeat_timeout:g}s) must be "
            f"greater than {_field_label(cls, '_heartbeat_interval')} "
            f"({config.heartbeat_interval:g}s); raise the timeout or lower the interval"
        )


# ---------------------------------------------------------------------------
# Values


@attrs.frozen
class PortRange:
    """An inclusive range of TCP ports, as in frp's ``allowPorts``; one port has start == end."""

    start: int
    end: int

    def __attrs_post_init__(self) -> None:
        valid = all(isinstance(p, int) and not isinstance(p, bool) for p in (self.start, self.end))
        if not (valid and 1 <= self.start <= self.end <= 65535):
            raise ConfigError(
                f"port range {self.start!r}-{self.end!r} is invalid: ports run from 1 to 65535 "
                f"and a range cannot start above its end"
            )

    def __contains__(self, port: int) -> bool:
        return self.start <= port <= self.end

    def __str__(self) -> str:
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"


@attrs.frozen
class LocalAddressRule:
    """
    One entry of a client's ``allowOperatorTunnels``: the local addresses an
    operator may point a tunnel at.  ``network`` is an IP address or network
    (a single address is a /32 or /128), or ``name`` a host name, which only
    matches that same name: names are not resolved, so ``localhost:80``
    allows ``localhost:80`` and not ``127.0.0.1:80``.
    """

    text: str
    ports: PortRange
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    name: str | None = None

    def allows(self, host: str, port: int) -> bool:
        if port not in self.ports:
            return False
        if self.network is None:
            return host.lower().rstrip(".") == self.name
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address.version == self.network.version and address in self.network

    def __str__(self) -> str:
        return self.text


def _local_rule(text: Any) -> LocalAddressRule:
    """
    Parse ``HOST:PORTS``: HOST an IP address, a network (``10.0.0.0/8``,
    IPv6 in brackets) or a host name; PORTS a port, ``LOW-HIGH`` or ``*``.

    @raise ValueError: if ``text`` is not of that form.
    """
    if not isinstance(text, str) or not text or any(c.isspace() for c in text):
        raise ValueError(text)
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or not after.startswith(":"):
            raise ValueError(text)
        ports = after[1:]
        if ":" not in host:
            raise ValueError(text)
    else:
        host, colon, ports = text.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(text)
    if ports == "*":
        port_range = PortRange(1, 65535)
    else:
        low, dash, high = ports.partition("-")
        bounds = (low, high) if dash else (low, low)
        if not all(_FLAG_PORT.fullmatch(b) and 1 <= int(b) <= 65535 for b in bounds):
            raise ValueError(text)
        if int(bounds[0]) > int(bounds[1]):
            raise ValueError(text)
        port_range = PortRange(int(bounds[0]), int(bounds[1]))
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        if "/" in host or ":" in host or not host:
            raise ValueError(text) from None
        try:
            name = _host(host).lower().rstrip(".")
        except _Mismatch:
            raise ValueError(text) from None
        return LocalAddressRule(text=text, ports=port_range, name=name)
    if text.startswith("[") != (network.version == 6):
        raise ValueError(text)  # IPv6 only in brackets, as everywhere else
    return LocalAddressRule(text=text, ports=port_range, network=network)


@attrs.frozen
class TunnelSpec:
    """One tunnel a client asks for: a ``[[proxies]]`` entry or a ``--tunnel`` flag."""

    name: str = _setting(attrs.NOTHING, NAME, "name")
    local_port: int = _setting(attrs.NOTHING, PORT, "localPort")
    local_ip: str = _setting("127.0.0.1", HOST, "localIP")
    type: str = _setting("tcp", TUNNEL_TYPE, "type")
    remote_port: int = _setting(0, REMOTE_PORT, "remotePort")
    #: ``enabled = false`` (or a ``start`` list without it): defined, not opened.
    enabled: bool = _setting(True, BOOLEAN, "enabled")
    #: frp's ``healthCheck``: a TCP connect to the local service every
    #: ``health_check_interval`` s; after ``health_check_max_failed`` failures
    #: in a row the tunnel is shown down (its port is kept).  ``"http"`` is
    #: checked the same way (with a warning).  frp's defaults: 3 s, 1, 10 s.
    health_check_type: str | None = _setting(None, HEALTH_CHECK_TYPE, "healthCheck.type")
    health_check_timeout: float = _setting(3.0, SECONDS, "healthCheck.timeoutSeconds")
    health_check_max_failed: int = _setting(1, COUNT, "healthCheck.maxFailed")
    health_check_interval: float = _setting(10.0, SECONDS, "healthCheck.intervalSeconds")


@attrs.frozen
class WebhookSpec:
    """One ``[[webhooks]]`` entry: where and how to deliver events by HTTP POST."""

    url: str = _setting(attrs.NOTHING, URL, "url", secret=True)  # may hold a chat token
    name: str | None = _setting(None, NAME, "name")
    secret: str | None = _setting(None, TEXT, "secret", secret=True)
    events: tuple[str, ...] = _setting(("*",), EVENT_PATTERNS, "events")
    format: str = _setting("json", WEBHOOK_FORMAT, "format")
    timeout: float = _setting(10.0, SECONDS, "timeout")
    retry_for: float = _setting(300.0, SECONDS, "retryFor")
    max_pending: int = _setting(100, COUNT, "maxPending")


@attrs.frozen
class ServerConfig(_Heartbeats):
    """Everything ``gotaxy server`` needs to know; see the module docstring for the keys."""

    data_dir: str = _setting("gotaxy-data", TEXT, "dataDir", "--data-dir")
    bind_addr: str = _setting("0.0.0.0", HOST, "bindAddr", "--bind-addr")
    bind_port: int = _setting(7000, PORT, "bindPort", "--bind-port")
    #: A Twisted endpoint string for the control port; set, it replaces bindAddr and bindPort.
    bind_endpoint: str | None = _setting(None, ENDPOINT, "bindEndpoint", "--bind-endpoint")
    proxy_bind_addr: str | None = _setting(None, HOST, "proxyBindAddr")
    allow_ports: tuple[PortRange, ...] = _setting((), PORT_RANGES, "allowPorts", "--allow-ports")
    token: str | None = _setting(None, TEXT, "auth.token", "--token", secret=True)
    # Not set: follows from the other one (see heartbeat_interval / _timeout).
    _heartbeat_interval: float | None = _setting(
        None, HEARTBEAT, "transport.heartbeatInterval", "--heartbeat-interval",
        alias="heartbeat_interval",
    )
    _heartbeat_timeout: float | None = _setting(
        None, HEARTBEAT, "transport.heartbeatTimeout", "--heartbeat-timeout",
        alias="heartbeat_timeout",
    )
    auth_timeout: float = _setting(10.0, SECONDS, "transport.authTimeout")
    max_pending: int = _setting(256, COUNT, "transport.maxPendingConnections")
    max_pending_per_ip: int = _setting(16, COUNT, "transport.maxPendingPerIP")
    max_ports_per_client: int = _setting(0, LIMIT, "maxPortsPerClient", "--max-ports-per-client")
    max_connections_per_client: int = _setting(MAX_STREAMS, CONNECTIONS, "maxConnectionsPerClient")
    tunnel_idle_timeout: float = _setting(600.0, IDLE_TIMEOUT, "tunnelIdleTimeout")
    tls_cert_file: str | None = _setting(None, TEXT, "transport.tls.certFile")
    tls_key_file: str | None = _setting(None, TEXT, "transport.tls.keyFile")
    log_level: str = _setting("info", LOG_LEVEL, "log.level")
    log_max_days: int = _setting(3, COUNT, "log.maxDays")
    log_max_size: int = _setting(10 * 2**20, LOG_SIZE, "log.maxSize")
    event_retention_days: int = _setting(90, RETENTION_DAYS, "events.retentionDays")
    database_url: str | None = _setting(None, DATABASE_URL, "database.url", "--database-url", secret=True)
    store: str | None = _setting(None, DATABASE_URL, "store", "--store", secret=True)  #: the older name of database.url
    web_addr: str = _setting("127.0.0.1", HOST, "webServer.addr", "--web-addr")
    web_port: int = _setting(7500, SERVICE_PORT, "webServer.port", "--web-port")
    web_endpoint: str | None = _setting(None, ENDPOINT, "webServer.endpoint", "--web-endpoint")
    web_tls_cert_file: str | None = _setting(None, TEXT, "webServer.tls.certFile")
    web_tls_key_file: str | None = _setting(None, TEXT, "webServer.tls.keyFile")
    console_addr: str = _setting("127.0.0.1", HOST, "console.addr", "--console-addr")
    console_port: int = _setting(7022, SERVICE_PORT, "console.port", "--console-port")
    console_endpoint: str | None = _setting(None, ENDPOINT, "console.endpoint", "--console-endpoint")
    console_python: bool = _setting(False, BOOLEAN, "console.python")
    console_idle_timeout: float = _setting(900.0, GRACE, "console.idleTimeout")
    server_name: str = _setting(_default_server_name(), TEXT, "serverName")
    webhooks: tuple[WebhookSpec, ...] = attrs.field(
        default=(),
        converter=tuple,
        validator=attrs.validators.deep_iterable(attrs.validators.instance_of(WebhookSpec)),
    )
    smtp_host: str | None = _setting(None, HOST, "smtp.host")
    smtp_port: int | None = _setting(None, PORT, "smtp.port")
    smtp_tls: str = _setting("starttls", SMTP_TLS, "smtp.tls")
    smtp_username: str | None = _setting(None, TEXT, "smtp.username")
    smtp_password: str | None = _setting(None, TEXT, "smtp.password", secret=True)
    smtp_from: str | None = _setting(None, MAIL_ADDRESS, "smtp.from")
    smtp_to: tuple[str, ...] | None = _setting(None, MAIL_ADDRESSES, "smtp.to")
    smtp_events: tuple[str, ...] = _setting(("*",), EVENT_PATTERNS, "smtp.events")
    smtp_batch_seconds: float = _setting(30.0, SECONDS, "smtp.batchSeconds")
    smtp_timeout: float = _setting(30.0, SECONDS, "smtp.timeout")
    notify_flap_grace: float = _setting(10.0, GRACE, "notify.flapGrace")
    notify_key_file: str | None = _setting(None, TEXT, "notify.keyFile")
    metrics_exposure: str | None = _setting(None, METRICS_EXPOSURE, "metrics.exposure")
    metrics_token: str | None = _setting(None, TEXT, "metrics.token", secret=True)
    enable_prometheus: bool = _setting(False, BOOLEAN, "enablePrometheus")
    history_sample_interval: float = _setting(60.0, SECONDS, "history.sampleInterval")
    history_raw_hours: int = _setting(48, COUNT, "history.rawHours")
    history_retention_days: int = _setting(90, COUNT, "history.retentionDays")

    def __attrs_post_init__(self) -> None:
        _check_heartbeats(self)
        if self.database_url is not None and self.store is not None and self.database_url != self.store:
            raise ConfigError(
                "'database.url' and 'store' (its older name) name different databases; keep database.url only"
            )
        if self.smtp_host is not None and not (self.smtp_from and self.smtp_to):
            raise ConfigError(
                "'smtp.host' is set but 'smtp.from' or 'smtp.to' is missing; give the sender "
                "and at least one recipient, or remove [smtp] to turn e-mail off"
            )
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ConfigError(
                "'smtp.username' and 'smtp.password' go together: give both to log in, or neither"
            )
        if self.effective_metrics_exposure() == "token" and self.metrics_token is None:
            raise ConfigError(
                "'metrics.exposure' is \"token\" but 'metrics.token' is missing; set the bearer "
                "token Prometheus must send, or use \"open\" or \"off\""
            )
        if (self.web_tls_cert_file is None) != (self.web_tls_key_file is None):
            raise ConfigError(
                "'webServer.tls.certFile' and 'webServer.tls.keyFile' go together: give both for HTTPS, or neither"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError(
                "'transport.tls.certFile' and 'transport.tls.keyFile' go together: "
                "give both, or remove both to use the certificate Gotaxy generates"
            )

    #: Seconds between pings and of silence before a client is dropped, when
    #: neither is set.  frp's server has only a timeout (90 s by default).
    HEARTBEAT_DEFAULTS = (10.0, 30.0)

    def effective_database_url(self) -> str | None:
        """``database.url``, or ``store`` (its older name); None: SQLite in the data directory."""
        return self.database_url if self.database_url is not None else self.store

    def effective_proxy_bind_addr(self) -> str:
        """The address public tunnel ports listen on."""
        return self.proxy_bind_addr if self.proxy_bind_addr is not None else self.bind_addr

    def effective_metrics_exposure(self) -> str:
        """``metrics.exposure`` if set; otherwise "open" for frp's ``enablePrometheus = true``."""
        if self.metrics_exposure is not None:
            return self.metrics_exposure
        return "open" if self.enable_prometheus else "off"

    def effective_smtp_port(self) -> int:
        """``smtp.port``, or the usual port for ``smtp.tls``."""
        if self.smtp_port is not None:
            return self.smtp_port
        return {"starttls": 587, "tls": 465, "none": 25}[self.smtp_tls]


@attrs.frozen
class ClientConfig(_Heartbeats):
    """Everything ``gotaxy client`` needs to know; see the module docstring for the keys."""

    server_addr: str = _setting("127.0.0.1", HOST, "serverAddr", "--server")
    server_port: int = _setting(7000, PORT, "serverPort", "--server")
    token: str | None = _setting(None, TEXT, "auth.token", "--token", secret=True)
    user: str | None = _setting(None, NAME, "user", "--user")
    tunnels: tuple[TunnelSpec, ...] = attrs.field(
        default=(),
        converter=tuple,
        validator=attrs.validators.deep_iterable(attrs.validators.instance_of(TunnelSpec)),
    )
    fingerprint: str | None = _setting(
        None, FINGERPRINT, "transport.tls.fingerprint", "--fingerprint"
    )
    trusted_ca_file: str | None = _setting(None, TEXT, "transport.tls.trustedCaFile", "--ca")
    server_name: str | None = _setting(None, HOST, "transport.tls.serverName", "--server-name")
    insecure: bool = _setting(False, BOOLEAN, "transport.tls.insecureSkipVerify", "--insecure")
    data_dir: str = _setting("~/.gotaxy", TEXT, "dataDir", "--data-dir")
    _heartbeat_interval: float | None = _setting(
        None, HEARTBEAT, "transport.heartbeatInterval", alias="heartbeat_interval"
    )
    _heartbeat_timeout: float | None = _setting(
        None, HEARTBEAT, "transport.heartbeatTimeout", alias="heartbeat_timeout"
    )
    dial_timeout: float = _setting(10.0, SECONDS, "transport.dialServerTimeout")
    login_fail_exit: bool = _setting(True, BOOLEAN, "loginFailExit")
    log_level: str = _setting("info", LOG_LEVEL, "log.level")
    log_max_days: int = _setting(3, COUNT, "log.maxDays")
    #: Local addresses operator-defined tunnels may point at; empty: none.
    allow_operator_tunnels: tuple[LocalAddressRule, ...] = _setting(
        (), LOCAL_RULES, "allowOperatorTunnels", "--allow-operator-tunnel"
    )

    def operator_tunnel_refusal(self, host: str, port: int) -> str | None:
        """
        Why an operator-defined tunnel to ``host:port`` may not open, or
        ``None`` if this client's ``allowOperatorTunnels`` allows it.
        """
        if any(rule.allows(host, port) for rule in self.allow_operator_tunnels):
            return None
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not self.allow_operator_tunnels:
            return (
                f"this client accepts no operator-defined tunnels; to allow {shown}, add it to "
                f"allowOperatorTunnels in the client's config (or --allow-operator-tunnel {shown})"
            )
        allowed = ", ".join(str(rule) for rule in self.allow_operator_tunnels)
        if len(allowed) > 200:
            allowed = allowed[:197] + "..."
        return (
            f"{shown} is not in this client's allowOperatorTunnels ({allowed}); add it there "
            f"to allow it"
        )

    #: frp's client defaults: a ping every 30 s, the server dead after 90 s of silence.
    HEARTBEAT_DEFAULTS = (30.0, 90.0)

    @property
    def join_token(self) -> JoinToken | None:
        """``auth.token`` as a join token, or ``None`` for an old-style token."""
        return parse_join_token(self.token) if self.token else None

    @property
    def login_secret(self) -> str:
        """What the client sends to log in: a join token's secret, or the whole old-style token."""
        join = self.join_token
        return join.secret if join is not None else (self.token or "")

    def __attrs_post_init__(self) -> None:
        _check_heartbeats(self)
        if self.token:
            try:
                parse_join_token(self.token)
            except JoinTokenError as e:
                raise ConfigError(f"{_field_label(ClientConfig, 'token')}: {e}") from None
        names = [tunnel.name for tunnel in self.tunnels]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(
                    f"two tunnels are named '{name}'; give each [[proxies]] entry "
                    f"and --tunnel its own name"
                )


@attrs.frozen
class Loaded:
    """A parsed configuration and the warnings to show the user about it."""

    config: ServerConfig | ClientConfig
    warnings: tuple[str, ...] = attrs.field(converter=tuple)


# ---------------------------------------------------------------------------
# The keys frp knows (frps.toml / frpc.toml, frp >= 0.52)

_FRPS_KEYS = frozenset({
    "bindAddr", "bindPort", "kcpBindPort", "quicBindPort", "proxyBindAddr",
    "transport.quic.keepalivePeriod", "transport.quic.maxIdleTimeout",
    "transport.quic.maxIncomingStreams", "transport.heartbeatTimeout",
    "transport.maxPoolCount", "transport.tcpMux", "transport.tcpMuxKeepaliveInterval",
    "transport.tcpKeepalive", "transport.tls.force", "transport.tls.certFile",
    "transport.tls.keyFile", "transport.tls.trustedCaFile", "transport.tls.serverName",
    "vhostHTTPPort", "vhostHTTPSPort", "vhostHTTPTimeout", "tcpmuxHTTPConnectPort",
    "tcpmuxPassthrough",
    "webServer.addr", "webServer.port", "webServer.user", "webServer.password",
    "webServer.tls.certFile", "webServer.tls.keyFile", "webServer.tls.trustedCaFile",
    "webServer.tls.serverName", "webServer.assetsDir", "webServer.pprofEnable",
    "log.to", "log.level", "log.maxDays", "log.disablePrintColor",
    "detailedErrorsToClient", "auth.method", "auth.additionalScopes", "auth.token",
    "userConnTimeout", "allowPorts", "maxPortsPerClient", "allowedClientIPs",
    "subDomainHost", "custom404Page", "udpPacketSize", "natholeAnalysisDataReserveHours",
})
# Map-valued settings and arrays of tables: one warning for the whole thing.
_FRPS_TABLES = frozenset({"auth.tokenSource", "auth.oidc", "sshTunnelGateway", "httpPlugins"})

_FRPC_KEYS = frozenset({
    "clientID", "user", "serverAddr", "serverPort", "natHoleStunServer", "loginFailExit",
    "log.to", "log.level", "log.maxDays", "log.disablePrintColor",
    "auth.method", "auth.additionalScopes", "auth.token",
    "webServer.addr", "webServer.port", "webServer.user", "webServer.password",
    "webServer.tls.certFile", "webServer.tls.keyFile", "webServer.tls.trustedCaFile",
    "webServer.tls.serverName", "webServer.assetsDir", "webServer.pprofEnable",
    "transport.dialServerTimeout", "transport.dialServerKeepalive", "transport.poolCount",
    "transport.tcpMux", "transport.tcpMuxKeepaliveInterval", "transport.protocol",
    "transport.wireProtocol", "transport.connectServerLocalIP", "transport.connectServerInterface",
    "transport.proxyURL", "transport.tls.enable", "transport.tls.certFile",
    "transport.tls.keyFile", "transport.tls.trustedCaFile", "transport.tls.serverName",
    "transport.tls.disableCustomTLSFirstByte", "transport.heartbeatInterval",
    "transport.heartbeatTimeout", "dnsServer", "udpPacketSize",
    "virtualNet.address", "includes", "store.path",
})
_FRPC_TABLES = frozenset({
    "auth.tokenSource", "auth.oidc", "transport.quic", "featureGates", "metadatas",
    "visitors",
})

_FRP_PROXY_KEYS = frozenset({
    "name", "type", "localIP", "localPort", "remotePort",
    "transport.bandwidthLimit", "transport.bandwidthLimitMode", "transport.useEncryption",
    "transport.useCompression", "transport.proxyProtocolVersion",
    "loadBalancer.group", "loadBalancer.groupKey",
    "httpUser", "httpPassword", "subdomain", "customDomains", "locations",
    "routeByHTTPUser", "hostHeaderRewrite", "multiplexer", "secretKey", "allowUsers",
    "healthCheck.path", "healthCheck.httpHeaders",
})
_FRP_PROXY_TABLES = frozenset({
    "metadatas", "annotations", "requestHeaders", "responseHeaders", "plugin",
    "natTraversal",
})

_NOT_YET = "is an frp setting that Gotaxy does not support yet"
_PANEL_ACCOUNTS = (
    "is not used: the panel has its own accounts (user 'admin', password printed at the "
    "first start; see docs/panel.md)"
)


# ---------------------------------------------------------------------------
# Sorting a table's keys


def _squash(key: str) -> str:
    """Compare keys the way a user might mistype them: any case, with or without _ and -."""
    return key.lower().replace("_", "").replace("-", "")


def _similar(a: str, b: str, cutoff: float) -> bool:
    return difflib.SequenceMatcher(None, a, b).ratio() >= cutoff


@attrs.frozen
class _Schema:
    """
    The keys one kind of TOML table (server file, client file, proxy entry)
    may hold: ``settings`` fill fields of a config class, ``checks`` are
    accepted in one value only, ``sections`` are read by the caller, and the
    rest of frp's keys and tables are ignored with a warning (``notes`` has
    the warning text where "not supported yet" would mislead).
    """

    settings: Mapping[str, attrs.Attribute]  # type: ignore[type-arg]
    checks: Mapping[str, _Form]
    sections: frozenset[str]
    frp_keys: frozenset[str]
    frp_tables: frozenset[str]
    notes: Mapping[str, str]

    @classmethod
    def of(
        cls,
        config_class: type,
        frp_keys: frozenset[str],
        frp_tables: frozenset[str],
        checks: Mapping[str, _Form] | None = None,
        sections: frozenset[str] = frozenset(),
        notes: Mapping[str, str] | None = None,
    ) -> _Schema:
        settings = {
            field.metadata["key"]: field
            for field in attrs.fields(config_class)
            if "key" in field.metadata
        }
        return cls(settings, dict(checks or {}), sections, frp_keys, frp_tables, dict(notes or {}))

    @property
    def leaves(self) -> frozenset[str]:
        """Every key whose value is taken whole, even when it is a table."""
        return (
            frozenset(self.settings) | frozenset(self.checks) | self.sections
            | self.frp_keys | self.frp_tables
        )

    def flatten(self, table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for name, value in table.items():
            path = prefix + name
            if not isinstance(value, dict) or path in self.leaves:
                flat[path] = value
            elif value:
                flat.update(self.flatten(value, path + "."))
            elif not any(key.startswith(path + ".") for key in self.leaves):
                flat[path] = value  # an empty table nobody knows is still a typo
        return flat

    def sort(
        self, table: Mapping[str, Any], source: str, where: str = ""
    ) -> tuple[dict[str, Any], list[str]]:
        """
        Split ``table`` into the raw values of keys we read (settings, checks
        and sections) and the frp keys we ignore; raise on an unknown key.
        """
        ours: dict[str, Any] = {}
        ignored: list[str] = []
        for key, value in self.flatten(table).items():
            if key in self.settings or key in self.checks or key in self.sections:
                ours[key] = value
            elif key in self.frp_keys or key in self.frp_tables:
                ignored.append(key)
            else:
                raise self._unknown(key, source, where)
        return ours, ignored

    def convert(self, ours: Mapping[str, Any], source: str, where: str = "") -> dict[str, Any]:
        """Field values for the settings in ``ours``; checks are checked, then dropped."""
        values: dict[str, Any] = {}
        for key, raw in ours.items():
            field = self.settings.get(key)
            form = field.metadata["form"] if field is not None else self.checks.get(key)
            if form is None:
                continue  # a section: the caller reads it
            try:
                value = form.convert(raw)
            except _Mismatch as e:
                raise ConfigError(
                    f"{source}: '{key}'{where} must be {form.expected}, got {_show(e.value)}"
                ) from None
            if field is not None:
                values[field.alias] = value
        return values

    def warning(self, key: str, source: str, where: str = "") -> str:
        return f"{source}: '{key}'{where} {self.notes.get(key, _NOT_YET)}; ignored"

    def suggest(self, key: str) -> str | None:
        """The known key ``key`` most likely meant, if any is close."""
        known = {_squash(k): k for k in sorted(self.leaves)}
        wanted = _squash(key)
        if wanted in known:
            return known[wanted]
        # "heartbeatTimeout" at the top level means transport.heartbeatTimeout.
        by_last_part = [k for k in sorted(self.settings) if _squash(k.split(".")[-1]) == wanted]
        if len(by_last_part) == 1:
            return by_last_part[0]
        close = [
            candidate
            for candidate in difflib.get_close_matches(wanted, known, n=3, cutoff=0.75)
            if _similar(candidate.split(".")[-1], wanted.split(".")[-1], 0.6)
        ]
        if not close and "." not in key:
            # Short words need a looser match ("proxy" for "proxies"); dotted
            # keys share long prefixes that would make a loose match noise.
            plain = [k for k in known if "." not in known[k]]
            close = difflib.get_close_matches(wanted, plain, n=1, cutoff=0.65)
        return known[close[0]] if close else None

    def _unknown(self, key: str, source: str, where: str) -> ConfigError:
        message = f"{source}: unknown key '{key}'{where}"
        suggestion = self.suggest(key)
        if key.split(".")[0] == "common" and not where:
            message += (
                "; this looks like frp's old INI format, which Gotaxy does not read: "
                f"convert it to frp's TOML format with: gotaxy convert {shlex.quote(source)}"
            )
        elif suggestion is not None:
            message += f"; did you mean '{suggestion}'?"
        return ConfigError(message)


_SERVER = _Schema.of(
    ServerConfig,
    frp_keys=_FRPS_KEYS,
    frp_tables=_FRPS_TABLES,
    checks={"auth.method": TOKEN_AUTH},
    sections=frozenset({"webhooks"}),
    notes={
        "transport.tls.force": "is not needed: Gotaxy always requires TLS",
        "webServer.user": _PANEL_ACCOUNTS,
        "webServer.password": _PANEL_ACCOUNTS,
    },
)
_CLIENT = _Schema.of(
    ClientConfig,
    frp_keys=_FRPC_KEYS,
    frp_tables=_FRPC_TABLES,
    checks={"auth.method": TOKEN_AUTH, "transport.tls.enable": TLS_ON},
    sections=frozenset({"proxies", "start"}),
)
_PROXY = _Schema.of(TunnelSpec, frp_keys=_FRP_PROXY_KEYS, frp_tables=_FRP_PROXY_TABLES)
_WEBHOOK = _Schema.of(WebhookSpec, frp_keys=frozenset(), frp_tables=frozenset())


# ---------------------------------------------------------------------------
# Files


def legacy_ini_message(path: str) -> str:
    """What to tell a user who gave Gotaxy one of frp's old INI files."""
    return (
        f"{path}: this is frp's legacy INI format (frps.ini / frpc.ini with a [common] section, "
        f"before frp 0.52), which Gotaxy does not read; convert it to TOML with: "
        f"gotaxy convert {shlex.quote(path)}"
    )


def load_toml(path: str) -> dict[str, Any]:
    """The parsed contents of the TOML file at ``path``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        from gotaxy.frp_ini import looks_like_frp_ini  # it imports this module

        if looks_like_frp_ini(raw.decode("utf-8", errors="replace")):
            raise ConfigError(legacy_ini_message(path)) from None
        if isinstance(e, UnicodeDecodeError):
            raise ConfigError(f"{path}: not valid TOML: the file must be UTF-8 text") from None
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _evolve(base: Any, changes: Mapping[str, Any], source: str) -> Any:
    try:
        return attrs.evolve(base, **changes)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def parse_server_config(
    data: dict[str, Any], source: str = "server.toml", base: ServerConfig = ServerConfig()
) -> Loaded:
    """
    Apply a parsed ``server.toml`` (or ``frps.toml``) on top of ``base``.

    @raise ConfigError: for an unknown key or a bad value.
    """
    ours, ignored = _SERVER.sort(data, source)
    changes = _SERVER.convert(ours, source)
    if "webhooks" in ours:
        changes["webhooks"] = _read_webhooks(ours["webhooks"], source)
    config = _evolve(base, changes, source)
    return Loaded(config, [_SERVER.warning(key, source) for key in ignored])


def _read_webhooks(entries: Any, source: str) -> tuple[WebhookSpec, ...]:
    """The ``[[webhooks]]`` entries of a server file."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(
            f"{source}: 'webhooks' must be an array of tables, each one starting with a "
            f"[[webhooks]] line"
        )
    hooks: list[WebhookSpec] = []
    names: set[str] = set()
    for number, entry in enumerate(entries, 1):
        name = entry.get("name")
        label = f"webhook '{name}'" if isinstance(name, str) and name else f"webhook #{number}"
        if "url" not in entry:
            raise ConfigError(f'{source}: {label} has no url; add url = "https://..." to it')
        if isinstance(name, str):
            if name in names:
                raise ConfigError(
                    f"{source}: two webhooks are named '{name}'; give each [[webhooks]] entry "
                    f"its own name"
                )
            names.add(name)
        ours, _ = _WEBHOOK.sort(entry, source, f" in {label}")
        hooks.append(WebhookSpec(**_WEBHOOK.convert(ours, source, f" in {label}")))
    return tuple(hooks)


def parse_client_config(
    data: dict[str, Any], source: str = "client.toml", base: ClientConfig = ClientConfig()
) -> Loaded:
    """
    Apply a parsed ``client.toml`` (or ``frpc.toml``) on top of ``base``.
    ``[[proxies]]`` in the file replace ``base.tunnels``.

    @raise ConfigError: for an unknown key, a bad value or a bad proxy.
    """
    ours, ignored = _CLIENT.sort(data, source)
    changes = _CLIENT.convert(ours, source)
    warnings = [_CLIENT.warning(key, source) for key in ignored]
    if "proxies" in ours:
        changes["tunnels"] = _read_proxies(ours["proxies"], source, warnings)
    if "start" in ours:
        changes["tunnels"] = _apply_start(
            changes.get("tunnels", base.tunnels), ours["start"], source, warnings
        )
    return Loaded(_evolve(base, changes, source), warnings)


def _apply_start(
    tunnels: tuple[TunnelSpec, ...], raw: Any, source: str, warnings: list[str]
) -> tuple[TunnelSpec, ...]:
    """frp's ``start``: when not empty, only the proxies it lists are opened."""
    try:
        start = NAMES.convert(raw)
    except _Mismatch as e:
        raise ConfigError(f"{source}: 'start' must be {NAMES.expected}, got {_show(e.value)}") from None
    if not start:
        return tunnels  # frp: an empty list starts every proxy
    held_back = [t.name for t in tunnels if t.enabled and t.name not in start]
    if held_back:
        listed = ", ".join(f"'{name}'" for name in held_back)
        warnings.append(
            f"{source}: 'start' does not list {listed}; defined but not opened "
            f"(add them to 'start' or remove 'start' to open every proxy)"
        )
    return tuple(t if t.name in start else attrs.evolve(t, enabled=False) for t in tunnels)


def _read_proxies(entries: Any, source: str, warnings: list[str]) -> tuple[TunnelSpec, ...]:
    """The tunnels in ``[[proxies]]``; warnings on skipped proxies and keys go to ``warnings``."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(
            f"{source}: 'proxies' must be an array of tables, each one starting with a "
            f"[[proxies]] line"
        )
    tunnels: list[TunnelSpec] = []
    ignored: dict[str, list[str]] = {}  # frp key -> names of the proxies that set it
    names: set[str] = set()
    for number, entry in enumerate(entries, 1):
        name = entry.get("name")
        label = f"proxy '{name}'" if isinstance(name, str) and name else f"proxy #{number}"
        if "name" not in entry:
            raise ConfigError(f'{source}: {label} has no name; add name = "..." to it')
        if isinstance(name, str):
            if name in names:
                raise ConfigError(
                    f"{source}: two proxies are named '{name}'; "
                    f"give each [[proxies]] entry its own name"
                )
            names.add(name)
        ours, frp = _PROXY.sort(entry, source, f" in {label}")

        kind = entry.get("type", "tcp")
        if not isinstance(kind, str) or kind not in FRP_PROXY_TYPES:
            close = difflib.get_close_matches(str(kind).lower(), FRP_PROXY_TYPES, n=1)
            fix = f'did you mean "{close[0]}"?' if close else 'Gotaxy tunnels use type = "tcp"'
            raise ConfigError(f"{source}: {label} has unknown type {_show(kind)}; {fix}")
        if kind not in SUPPORTED_TUNNEL_TYPES:
            warnings.append(
                f'{source}: {label} has type "{kind}", which Gotaxy does not support yet '
                f'(only "tcp"); skipped'
            )
            continue
        if "plugin" in entry:
            plugin = entry["plugin"]
            plugin_type = plugin.get("type") if isinstance(plugin, dict) else None
            warnings.append(
                f"{source}: {label} uses the frp plugin {_show(plugin_type)}, which Gotaxy "
                f"does not support yet; skipped"
            )
            continue
        if "localPort" not in entry:
            raise ConfigError(
                f"{source}: {label} has no 'localPort'; add the port of the local service, "
                f"e.g. localPort = 22"
            )
        tunnels.append(TunnelSpec(**_PROXY.convert(ours, source, f" in {label}")))
        if tunnels[-1].health_check_type == "http":
            warnings.append(
                f'{source}: {label} has healthCheck.type = "http", which Gotaxy does not support '
                f"yet; its local service is checked with a TCP connect instead"
            )
        for key in frp:
            ignored.setdefault(key, []).append(name)

    for key, users in ignored.items():
        listed = ", ".join(f"'{user}'" for user in users)
        where = f" (in proxy {listed})" if len(users) == 1 else f" (in proxies {listed})"
        warnings.append(_PROXY.warning(key, source, where))
    return tuple(tunnels)


# ---------------------------------------------------------------------------
# Command-line values

_FLAG_PORT = re.compile(r"[0-9]{1,5}")


def _flag_port(text: str, form: _Form) -> int | None:
    """``text`` as a port in ``form``, or ``None``."""
    if not _FLAG_PORT.fullmatch(text):
        return None
    try:
        return form.convert(int(text))  # type: ignore[no-any-return]
    except _Mismatch:
        return None


def parse_tunnel_flag(text: str) -> TunnelSpec:
    """
    A ``--tunnel NAME=tcp:LOCALIP:LOCALPORT[:REMOTEPORT]`` value, such as
    ``ssh=tcp:127.0.0.1:22:6000``, ``db=tcp:[::1]:5432:0`` or ``web=tcp:8080``
    (local IP 127.0.0.1, remote port picked by the server).
    """

    def problem(what: str) -> ConfigError:
        return ConfigError(f"--tunnel {_show(text)}: {what}")

    usage = "expected NAME=tcp:LOCALIP:LOCALPORT[:REMOTEPORT], e.g. ssh=tcp:127.0.0.1:22:6000"
    name, equals, rest = text.partition("=")
    kind, colon, address = rest.partition(":")
    if not (equals and colon and address):
        raise problem(usage)
    if not is_valid_name(name):
        raise problem(f"the tunnel name must be {NAME.expected}")
    if kind not in SUPPORTED_TUNNEL_TYPES:
        if kind in FRP_PROXY_TYPES:
            raise problem(f'type "{kind}" is not supported yet; only tcp tunnels are')
        raise problem(usage)

    if address.startswith("["):
        ip, bracket, after = address[1:].partition("]")
        if not (bracket and after.startswith(":")):
            raise problem(usage)
        ports = after[1:].split(":")
        ip = f"[{ip}]"  # so that _host insists on IPv6
    else:
        parts = address.split(":")
        if len(parts) > 3:
            bare_ipv6 = any(_is_ipv6(":".join(parts[:-n])) for n in (1, 2))
            raise problem(
                "put an IPv6 local address in brackets, e.g. db=tcp:[::1]:5432"
                if bare_ipv6
                else usage
            )
        if len(parts) == 2 and _FLAG_PORT.fullmatch(parts[0]):
            raise problem(
                f"to choose the remote port, give the local IP too, e.g. "
                f"{name}=tcp:127.0.0.1:{parts[0]}:{parts[1]}"
            )
        ip, ports = ("127.0.0.1", parts) if len(parts) == 1 else (parts[0], parts[1:])
    if len(ports) > 2:
        raise problem(usage)
    try:
        ip = _host(ip)
    except _Mismatch:
        raise problem(f"the local IP must be {HOST.expected}, got {_show(ip)}") from None
    local_port = _flag_port(ports[0], PORT)
    if local_port is None:
        raise problem(f"the local port must be {PORT.expected}, got {_show(ports[0])}")
    remote_port = _flag_port(ports[1], REMOTE_PORT) if len(ports) == 2 else 0
    if remote_port is None:
        raise problem(f"the remote port must be {REMOTE_PORT.expected}, got {_show(ports[1])}")
    return TunnelSpec(name=name, local_port=local_port, local_ip=ip, remote_port=remote_port)


def parse_local_rule_flag(text: str) -> LocalAddressRule:
    """An ``--allow-operator-tunnel`` value such as ``127.0.0.1:8000-8100``."""
    try:
        return _local_rule(text)
    except ValueError:
        raise ConfigError(
            f"--allow-operator-tunnel {_show(text)}: expected a local address with a port or "
            f"port range, e.g. 127.0.0.1:8000-8100, 192.168.1.0/24:22 or [::1]:*"
        ) from None


def parse_allow_ports(text: str) -> tuple[PortRange, ...]:
    """An ``--allow-ports`` value such as ``10000-20000,6000``."""

    def problem(what: str) -> ConfigError:
        return ConfigError(f"--allow-ports {_show(text)}: {what}")

    ranges: list[PortRange] = []
    for item in text.split(","):
        low, dash, high = item.strip().partition("-")
        bounds = (low.strip(), high.strip()) if dash else (low, low)
        if not all(_FLAG_PORT.fullmatch(bound) for bound in bounds):
            raise problem("expected ports and ranges separated by commas, e.g. 10000-20000,6000")
        start, end = int(bounds[0]), int(bounds[1])
        if not (1 <= start <= 65535 and 1 <= end <= 65535):
            raise problem(f"ports must be from 1 to 65535, got {_show(item.strip())}")
        if start > end:
            raise problem(f"the range {start}-{end} starts above its end; write {end}-{start}")
        ranges.append(PortRange(start, end))
    return tuple(ranges)


def format_allow_ports(ranges: Iterable[PortRange]) -> str:
    """The ``--allow-ports`` form of ``ranges`` (empty for none, which means any port)."""
    return ",".join(str(r) for r in ranges)


def has_port(text: str) -> bool:
    """True if a ``HOST:PORT`` text (``[::1]:PORT`` for IPv6) gives the port."""
    after = text.rpartition("]")[2] if text.startswith("[") else text
    return after.count(":") == 1


def parse_host_port(
    text: str, default_port: int | None = None, *, flag: str = "--server"
) -> tuple[str, int]:
    """
    A ``HOST:PORT`` value such as ``example.org:7000`` or ``[::1]:7000``; with
    ``default_port``, the port may be left out (``example.org``, ``[::1]``).
    ``flag`` names the option in error messages.
    """

    def problem(what: str) -> ConfigError:
        return ConfigError(f"{flag} {_show(text)}: {what}")

    if "://" in text:
        # A URL, e.g. https://example.org:7000: the server speaks its own
        # protocol over TLS, so there is no scheme to give.
        scheme, _, rest = text.partition("://")
        rest = rest.split("/")[0] or "example.org"
        example = rest if has_port(rest) else f"{rest}:{default_port or 7000}"
        raise problem(f"write HOST:PORT without {scheme}://, e.g. {flag} {example}")
    port_text: str | None
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise problem("expected HOST:PORT, e.g. example.org:7000 or [::1]:7000")
        port_text = after[1:] if after else None
        host = f"[{host}]"  # so that _host insists on IPv6
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None  # no port, or a bare IPv6 address
    try:
        host = _host(host)
    except _Mismatch:
        raise problem(f"the host must be {HOST.expected} (IPv6 in brackets)") from None
    if port_text is None:
        if default_port is None:
            shown = f"[{host}]" if ":" in host else host
            raise problem(f"add the port, e.g. {shown}:7000")
        return host, default_port
    port = _flag_port(port_text, PORT)
    if port is None:
        raise problem(f"the port must be {PORT.expected}, got {_show(port_text)}")
    return host, port
