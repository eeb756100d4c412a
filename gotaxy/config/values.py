# -*- test-case-name: tests.test_config -*-
"""
What configuration values look like, shared by the server's and the client's
settings: ``ConfigError``, the forms a value must take (``_Form``), the
``_setting`` declaration that ties an attrs field to its TOML key and flag,
the heartbeat pair, port ranges and local-address rules, and the parsers of
command-line values.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from typing import Any, Callable, Iterable, Iterator, Mapping

import attrs

from gotaxy.mux import MAX_STREAMS
from gotaxy.names import NAME_RULE, is_valid_name
from gotaxy.proxy import registry as proxy_registry
from gotaxy.tls import normalise_fingerprint
from gotaxy.units import parse_size



class ConfigError(Exception):
    """
    A user error in configuration; str() is one clear sentence naming the
    key/flag and the fix.  ``key`` is the TOML key at fault, when it is one
    (faces that take the same settings as arguments mark that input).
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


#: Proxy types frp knows.  Gotaxy runs the ones in its registry
#: (``gotaxy.proxy.registry``: ``tcp`` so far) and skips the others.
FRP_PROXY_TYPES = ("tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp")
SUPPORTED_TUNNEL_TYPES = ("tcp",)  #: the built-in ones; ``supported_type`` also knows registered ones


def supported_type(kind: object) -> bool:
    """A proxy type this installation has (``gotaxy.proxy.registry``)."""
    return isinstance(kind, str) and proxy_registry.get(kind) is not None


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


def _seconds_between(low: float, high: float) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        seconds = _seconds(value)
        if not low <= seconds <= high:
            raise _Mismatch(value)
        return seconds

    return convert


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


_DOMAIN_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _domain(value: Any) -> str:
    """A DNS name such as ``example.com`` (lower-cased; no port, no wildcard, no trailing dot)."""
    if not isinstance(value, str) or not value or len(value) > 253:
        raise _Mismatch(value)
    name = value.lower()
    if not all(_DOMAIN_LABEL.fullmatch(label) for label in name.split(".")):
        raise _Mismatch(value)
    return name


def domain_pattern(value: Any) -> str:
    """``example.com`` or ``*.example.com`` (lower-cased): an entry of an allowed-domains list."""
    if isinstance(value, str) and value.startswith("*."):
        return "*." + _domain(value[2:])
    return _domain(value)


def _list_of(value: Any) -> list:
    if not isinstance(value, (list, tuple)) or len(value) > 256:
        raise _Mismatch(value)
    return list(value)


def _strings(value: Any) -> tuple[str, ...]:
    """A list of strings (a single string counts as a list of one); the proxy type checks each."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) > 64 or not all(isinstance(v, str) for v in value):
        raise _Mismatch(value)
    return tuple(value)


def _string(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 1024:
        raise _Mismatch(value)
    return value


def _header_table(value: Any) -> tuple[tuple[str, str], ...]:
    """frp's ``requestHeaders.set``: a table of header names and string values."""
    if isinstance(value, tuple):
        value = dict(value)
    if not isinstance(value, dict) or len(value) > 64 or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _Mismatch(value)
    return tuple(value.items())


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


def _network(item: Any) -> str:
    """One IP address or CIDR network, as ``ipaddress`` writes it ("10.0.0.0/8", "2001:db8::/32")."""
    if not isinstance(item, str) or not item.strip() or len(item) > 64:
        raise _Mismatch(item)
    try:
        network = ipaddress.ip_network(item.strip().strip("[]"), strict=False)
    except ValueError:
        raise _Mismatch(item) from None
    if network.version == 6 and network.prefixlen >= 96 and network.network_address.ipv4_mapped is not None:
        # ::ffff:10.0.0.0/104 is 10.0.0.0/8: IPv4-mapped peers are checked as IPv4.
        network = ipaddress.ip_network(
            f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}", strict=False)
    return str(network)


#: Most entries in one address list (each is checked per connection).
MAX_NETWORKS = 1024


def _networks(value: Any) -> tuple[str, ...]:
    """A list of IP addresses and CIDR networks, possibly empty; duplicates dropped."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) > MAX_NETWORKS:
        raise _Mismatch(value)
    return tuple(dict.fromkeys(_network(item) for item in value))


def _per_tunnel_rules(value: Any) -> tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]:
    """
    ``access.perTunnel``: ``{ "CLIENT/TUNNEL" = { allow = [...], deny = [...] } }``
    (TUNNEL may be ``*``), as sorted (pattern, allow, deny) triples.
    """
    if isinstance(value, tuple):
        return value
    if not isinstance(value, dict) or len(value) > MAX_NETWORKS:
        raise _Mismatch(value)
    rules = []
    for pattern, entry in value.items():
        client, slash, tunnel = str(pattern).partition("/")
        if not slash or not is_valid_name(client) or not (tunnel == "*" or is_valid_name(tunnel)):
            raise _Mismatch(pattern)
        if not isinstance(entry, dict) or not set(entry) <= {"allow", "deny"}:
            raise _Mismatch(entry)
        rules.append((f"{client}/{tunnel}", _networks(entry.get("allow", [])), _networks(entry.get("deny", []))))
    return tuple(sorted(rules))


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
    from gotaxy.events import filter_pattern_error  # a server's setting: the client does not import the catalogue

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
#: Server worker processes on one machine (gotaxy.server.workers): more than the cores helps nothing.
WORKERS = _Form("an integer from 1 to 64", _integer(1, 64))
IPV6_PREFIX = _Form("a prefix length from 1 to 128 (128: each address alone)", _integer(1, 128))


def _bandwidth(value: Any) -> int:
    """Bytes a second: a number, or a string with a unit such as "10MB" (KB = 1024, as frp reads it); 0: no limit."""
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError:
            raise _Mismatch(value) from None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _Mismatch(value)


BANDWIDTH = _Form('a rate a second such as "100MB" or "512KB" (a number of bytes; 0 means no limit)', _bandwidth)
SECONDS = _Form("a number of seconds greater than 0", _seconds)
#: A node's lease in the store (``cluster.leaseSeconds``): renewed every third of it, so at least
#: a second between renewals, and at most an hour before a dead node's clients are marked offline.
LEASE_SECONDS = _Form("a number of seconds from 3 to 3600", _seconds_between(3.0, 3600.0))
PORT_SCOPE = _Form('"cluster" (the nodes share one public address) or "node" (each node has its own)',
                   _one_of("cluster", "node"))
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
DOMAIN = _Form('a domain name such as "example.com" (no port, no "*", no "http://")', _domain)
FORWARDED_HEADERS = _Form('"append" (as frp) or "replace" (this server is the edge)', _one_of("append", "replace"))
DOMAIN_PATTERNS = _Form('a list of domain names, each allowing itself, or "*.example.com" for any name under it, '
                        'such as ["example.com", "*.example.com"]',
                        lambda value: tuple(dict.fromkeys(domain_pattern(v) for v in (
                            [value] if isinstance(value, str) else _list_of(value)))))
DOMAINS = _Form('a list of domain names such as ["example.com"]',
                lambda value: tuple(_domain(v) for v in ([value] if isinstance(value, str) else _list_of(value))))
STRINGS = _Form('a list of strings such as ["wiki.example.com"]', _strings)
STRING = _Form("a string", _string)
HEADER_TABLE = _Form('a table of header names and values such as { X-From = "gotaxy" }', _header_table)
HEADER_BYTES = _Form("a number of bytes from 1024 to 1048576", _integer(1024, 1048576))
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
def supported_types_text() -> str:
    """The registered types for a sentence: ``"tcp", "http", "udp"``."""
    return ", ".join(f'"{name}"' for name in proxy_registry.names())


def _tunnel_type(value: Any) -> Any:
    if not supported_type(value):
        raise _Mismatch(value)
    return value


TUNNEL_TYPE = _Form('a tunnel type this Gotaxy supports, such as "tcp" or "http"', _tunnel_type)
HEALTH_CHECK_TYPE = _Form('"tcp" or "http"', _one_of("tcp", "http"))
TOKEN_AUTH = _Form(
    '"token" (Gotaxy supports token authentication only)', _equals("token")
)
#: frp's "token", or Gotaxy's own "certificate": a client certificate alone (``gotaxy.tls.clients``).
AUTH_METHOD = _Form(
    '"token" (frp\'s; with transport.tls.trustedCaFile a client certificate too) or "certificate" (Gotaxy\'s: '
    'a client certificate alone)',
    _one_of("token", "certificate"),
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
NETWORKS = _Form(
    'a list of IP addresses and CIDR networks such as ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"]',
    _networks,
)
PER_TUNNEL_RULES = _Form(
    'a table of "CLIENT/TUNNEL" (TUNNEL may be "*") to { allow = [...], deny = [...] } lists of IP addresses '
    'and CIDR networks, such as { "alice/ssh" = { allow = ["203.0.113.0/24"] } }',
    _per_tunnel_rules,
)


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


def _check_heartbeats(config: Any) -> None:
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


# ---------------------------------------------------------------------------
# Sections


def _section(cls: type) -> Any:
    """A field holding one section of the settings (its defaults unless the file or a flag says otherwise)."""
    return attrs.field(factory=cls, metadata={"section": cls})


def replace(config: Any, changes: Mapping[str, Any]) -> Any:
    """
    ``config`` with ``changes``, each named by its field (``"bind_port"``) or
    its section and field (``"web.port"``); each value is checked as a
    file's would be.

    @raise ConfigError: for a bad value.
    """
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for name, value in changes.items():
        section, dot, field = name.partition(".")
        if dot:
            sections.setdefault(section, {})[field] = value
        else:
            top[name] = value
    for section, fields in sections.items():
        top[section] = attrs.evolve(getattr(config, section), **fields)
    return attrs.evolve(config, **top)


def settings_of(config_class: type) -> Iterator[tuple[str, str | None, Any]]:
    """
    ``(TOML key, section or None, attrs field)`` for every setting of
    ``config_class``, its sections' included.
    """
    for field in attrs.fields(config_class):
        if "key" in field.metadata:
            yield field.metadata["key"], None, field
        elif "section" in field.metadata:
            for inner in attrs.fields(field.metadata["section"]):
                if "key" in inner.metadata:
                    yield inner.metadata["key"], field.name, inner
