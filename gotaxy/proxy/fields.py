# -*- test-case-name: tests.test_proxy_fields -*-
"""
The settings a proxy type's spec has, described for the faces.

Each ``ProxyType`` lists its spec's settings as ``SpecField`` values in
``fields``: frp's key (``localPort``, ``customDomains``,
``transport.proxyProtocolVersion``), a ``kind`` that says what a value looks
like, the panel's label key (``field.<key>`` in ``www/i18n/*.json``), and
whether it is required, its default and its bounds.  From that one list

* the panel builds its create and edit forms (``GET /api/v0.1/proxy-types``
  hands it ``describe_types()``; ``www/fields.js`` turns inputs into values),
* the console's ``tunnel add --type TYPE --KEY VALUE`` reads each value with
  ``SpecField.from_text`` and lists the keys in its help,
* the OpenAPI document gives one schema per type (``SpecField.schema``),
* ``parse_keys`` refuses a key the type does not have, or a missing
  required one, with one sentence naming it.

A field describes; the spec's attrs validators still decide what is valid
(``ProxyType.parse`` is the one gate), so a face that gets a field wrong
gets the spec's error, which names the key (``SpecError.key``).

Kinds (what the panel draws, how the console reads text):

``host``      a host name or an IP address (text input)
``port``      an integer port, from ``minimum`` (0 where 0 lets the server pick) to 65535
``integer``   a whole number from ``minimum`` to ``maximum``
``size``      a byte size: an integer, or text such as ``"1MB"`` where the type accepts it
``text``      one line of text
``secret``    text that is never shown back (a password input)
``bool``      true or false (a checkbox)
``choice``    one of ``choices`` (a select)
``list``      a list of texts (one input, comma-separated)
``map``       text keys to text values (``NAME=VALUE, NAME=VALUE``)
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Type

import attrs

from gotaxy.bandwidth import BANDWIDTH_ATTRIBUTES, bandwidth_keys, check_limit, check_mode
from gotaxy.proxy.base import ProxySpec, SpecError

KINDS = ("host", "port", "integer", "size", "text", "secret", "bool", "choice", "list", "map")

#: Longest ``localIP`` (a host name or an IP address).
MAX_LOCAL_HOST = 128
#: Longest text one field's value may be given as (console, panel).
MAX_TEXT = 4096
#: Most items in a ``list`` or ``map`` value.
MAX_ITEMS = 64

_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _check_kind(instance: Any, attribute: Any, value: Any) -> None:
    if value not in KINDS:
        raise ValueError(f"a spec field's kind must be one of {', '.join(KINDS)}, not {value!r}")


@attrs.frozen
class SpecField:
    """One setting of a proxy type's spec (see the module docstring)."""

    key: str  #: frp's key, as in the TOML file and the REST API's ``spec``
    kind: str = attrs.field(validator=_check_kind)
    #: one sentence for people who read English (console help, OpenAPI); the panel translates ``label``
    help: str = ""
    required: bool = False
    #: the value used when the key is absent (shown as the input's placeholder); None: none
    default: Any = None
    minimum: Optional[int] = None
    maximum: Optional[int] = None
    choices: Tuple[str, ...] = ()
    #: may an operator change it on a tunnel defined on the server (the type never changes)
    editable: bool = True
    #: the label's key in the panel's strings; ``field.<key>`` unless given
    label: str = attrs.field(default=attrs.Factory(lambda self: f"field.{self.key}", takes_self=True))
    #: the placeholder's key in the panel's strings, or "" for the default value
    hint: str = ""

    def from_text(self, text: str) -> Any:
        """The value that ``text`` (as typed in the console) means; SpecError naming the key if none."""
        if len(text) > MAX_TEXT:
            raise SpecError(f"'{self.key}' is longer than {MAX_TEXT} characters", self.key)
        if self.kind in ("port", "integer"):
            try:
                return int(text)
            except ValueError:
                raise SpecError(f"'{self.key}' must be a whole number, not {text[:32]!r}", self.key) from None
        if self.kind == "size":
            return int(text) if text.isdigit() else text
        if self.kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise SpecError(f"'{self.key}' must be true or false, not {text[:32]!r}", self.key)
        if self.kind == "list":
            items = [item.strip() for item in text.split(",") if item.strip()]
            if len(items) > MAX_ITEMS:
                raise SpecError(f"'{self.key}' has more than {MAX_ITEMS} items", self.key)
            return items
        if self.kind == "map":
            pairs: Dict[str, str] = {}
            for item in (i.strip() for i in text.split(",") if i.strip()):
                name, equals, value = item.partition("=")
                if not equals or not name.strip():
                    raise SpecError(f"'{self.key}' must be NAME=VALUE pairs separated by commas, "
                                    f"not {item[:32]!r}", self.key)
                pairs[name.strip()] = value.strip()
            if len(pairs) > MAX_ITEMS:
                raise SpecError(f"'{self.key}' has more than {MAX_ITEMS} items", self.key)
            return pairs
        return text

    def schema(self) -> Dict[str, Any]:
        """Its JSON Schema, for the OpenAPI document."""
        schema: Dict[str, Any]
        if self.kind in ("port", "integer"):
            schema = {"type": "integer"}
            low = self.minimum if self.minimum is not None else (1 if self.kind == "port" else None)
            high = self.maximum if self.maximum is not None else (65535 if self.kind == "port" else None)
            if low is not None:
                schema["minimum"] = low
            if high is not None:
                schema["maximum"] = high
        elif self.kind == "size":
            schema = {"type": ["integer", "string"]}
        elif self.kind == "bool":
            schema = {"type": "boolean"}
        elif self.kind == "choice":
            schema = {"enum": list(self.choices)}
        elif self.kind == "list":
            schema = {"type": "array", "items": {"type": "string"}, "maxItems": MAX_ITEMS}
        elif self.kind == "map":
            schema = {"type": "object", "additionalProperties": {"type": "string"}}
        else:
            schema = {"type": "string"}
        if self.help:
            schema["description"] = self.help
        if self.default is not None:
            schema["default"] = self.default
        return schema

    def describe(self) -> Dict[str, Any]:
        """What the panel needs to draw it (the REST API's ``ProxyField``)."""
        return {
            "key": self.key, "kind": self.kind, "label": self.label, "hint": self.hint, "help": self.help,
            "required": self.required, "default": self.default, "minimum": self.minimum, "maximum": self.maximum,
            "choices": list(self.choices), "editable": self.editable,
        }


# -- the settings most types share -------------------------------------------------


@functools.lru_cache(maxsize=1024)
def is_ip(host: str) -> bool:
    # Cached: the client asks this of a tunnel's localIP for every stream it
    # connects, and parsing it costs ipaddress 2 µs, about 2 % of the client's
    # CPU with a new connection per request (issue 15).  Bounded: localIP
    # values are few.
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_local_ip(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator for ``localIP``: a host name or an IP address without brackets."""
    if not isinstance(value, str) or not value or len(value) > MAX_LOCAL_HOST:
        raise SpecError(f"'localIP' must be a host name or an IP address of at most {MAX_LOCAL_HOST} characters")
    if not (is_ip(value) or _HOST_NAME.fullmatch(value)):
        raise SpecError(f"'localIP' must be a host name or an IP address (without brackets), got {value[:64]!r}")


def check_port(key: str, low: int, what: str = "") -> Callable[[Any, Any, Any], None]:
    """attrs validator for a port setting ``key`` from ``low`` to 65535."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if type(value) is not int or not low <= value <= 65535:  # bool is an int subclass: refused
            raise SpecError(f"'{key}' must be an integer from {low} to 65535{what}")

    return check


LOCAL_IP = SpecField("localIP", "host", "the host name or IP address of the local service", default="127.0.0.1")
LOCAL_PORT = SpecField("localPort", "port", "the port of the local service", required=True, minimum=1)
REMOTE_PORT = SpecField("remotePort", "port", "the public port; 0 lets the server pick one (and keep it)",
                        default=0, minimum=0, hint="field.remotePort.hint")


def host_port(host: str, port: int) -> str:
    """``127.0.0.1:22``, ``[::1]:22``: how an address with a port is written for people."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_keys(type_name: str, fields: Sequence[SpecField], keys: Mapping[str, Any],
               spec_class: Type[ProxySpec], attributes: Mapping[str, str]) -> Any:
    """
    ``spec_class`` from frp's ``keys`` for a type whose settings are
    ``fields``: SpecError for a key the type does not have or a required one
    that is missing; ``attributes`` maps each key to the spec's attribute.
    """
    known = {f.key for f in fields}
    unknown = sorted(str(k)[:32] for k in keys if k != "type" and k not in known)
    if unknown:
        listed = ", ".join(f.key for f in fields[:-1]) + f" and {fields[-1].key}" if len(fields) > 1 else fields[0].key
        raise SpecError(f"a {type_name} tunnel has no setting {unknown[0]!r} (it has {listed})", unknown[0])
    for f in fields:
        if f.required and f.key not in keys:
            raise SpecError(f"a {type_name} tunnel needs '{f.key}', {f.help}", f.key)
    return spec_class(**{attributes[key]: value for key, value in keys.items() if key in attributes})


# -- the rules every tunnel inherits: connection limits, bandwidth limits ------------
#
# They are properties of the tunnel, not of its type: a type's spec inherits
# them from ``ConnectionLimited`` (every type) or ``StreamLimited`` (the types
# that take a bandwidth limit: for byte streams it works through the mux
# windows, for udp's datagrams by dropping what is over it), and lists ``Spec.RULE_FIELDS`` after its own fields,
# ``Spec.RULE_ATTRIBUTES`` in its key map and ``spec.rule_keys()`` in its
# ``to_keys``.  The attributes are keyword-only, so a subclass's own required
# settings (``localPort``) may come first.  ``tests/test_proxy_fields.py``
# checks that every registered type does all three.

#: Highest value of a connection limit.
MAX_LIMIT = 1_000_000


def check_connection_limit(key: str) -> Callable[[Any, Any, Any], None]:
    """attrs validator for a connection limit ``key``: a whole number from 0 (none) to ``MAX_LIMIT``."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if type(value) is not int or not 0 <= value <= MAX_LIMIT:
            raise SpecError(f"'{key}' must be a whole number from 0 (no limit) to {MAX_LIMIT}, got {str(value)[:16]!r}")

    return check


#: frp's ``transport.bandwidthLimit`` and ``transport.bandwidthLimitMode`` (``gotaxy.bandwidth`` enforces them).
BANDWIDTH_LIMIT = SpecField("transport.bandwidthLimit", "size",
                            "most bytes a second in each direction, all connections together "
                            "(\"1MB\", \"512KB\"; empty: no limit)", hint="field.transport.bandwidthLimit.hint")
BANDWIDTH_LIMIT_MODE = SpecField("transport.bandwidthLimitMode", "choice",
                                 "which end enforces transport.bandwidthLimit: the client or the server",
                                 default="client", choices=("client", "server"))
#: Connection limits (``gotaxy.server.limits``).
MAX_CONNECTIONS = SpecField("transport.maxConnections", "integer",
                            "connections to this tunnel at once; one more is refused (0: no limit)",
                            default=0, minimum=0, maximum=MAX_LIMIT)
MAX_CONNECTIONS_PER_IP = SpecField("transport.maxConnectionsPerIP", "integer",
                                   "connections at once from one source address; one more is refused (0: no limit)",
                                   default=0, minimum=0, maximum=MAX_LIMIT)
CONNECTION_RATE_PER_IP = SpecField("transport.connectionRatePerIP", "integer",
                                   "new connections per minute from one source address, in bursts of as many; "
                                   "faster ones are refused (0: no limit)", default=0, minimum=0, maximum=MAX_LIMIT)
#: The connection limit fields, in the order to show them.
LIMIT_FIELDS = (MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP, CONNECTION_RATE_PER_IP)
#: frp-style key -> the spec's attribute.
LIMIT_ATTRIBUTES = {"transport.maxConnections": "max_connections",
                    "transport.maxConnectionsPerIP": "max_connections_per_ip",
                    "transport.connectionRatePerIP": "connection_rate_per_ip"}


def _limit(key: str) -> Any:
    return attrs.field(default=0, kw_only=True, validator=check_connection_limit(key))


@attrs.frozen
class ConnectionLimited:
    """The connection limits every type's spec has (``gotaxy.server.limits``); 0 is no limit."""

    #: The fields, for the type's ``fields`` (after its own).
    RULE_FIELDS: ClassVar[Tuple[SpecField, ...]] = LIMIT_FIELDS
    #: frp's key -> attribute, for the type's ``parse``.
    RULE_ATTRIBUTES: ClassVar[Dict[str, str]] = LIMIT_ATTRIBUTES

    max_connections: int = _limit("transport.maxConnections")
    max_connections_per_ip: int = _limit("transport.maxConnectionsPerIP")
    connection_rate_per_ip: int = _limit("transport.connectionRatePerIP")

    def rule_keys(self) -> Dict[str, Any]:
        """frp's keys of the rules this spec sets (a limit of 0 is left out), for its ``to_keys``."""
        return {key: getattr(self, attribute) for key, attribute in LIMIT_ATTRIBUTES.items() if getattr(self, attribute)}


@attrs.frozen
class StreamLimited(ConnectionLimited):
    """The connection limits and the bandwidth limit (byte streams: through the windows; udp: by dropping)."""

    RULE_FIELDS: ClassVar[Tuple[SpecField, ...]] = (BANDWIDTH_LIMIT, BANDWIDTH_LIMIT_MODE) + LIMIT_FIELDS
    RULE_ATTRIBUTES: ClassVar[Dict[str, str]] = {**BANDWIDTH_ATTRIBUTES, **LIMIT_ATTRIBUTES}

    #: frp's ``transport.bandwidthLimit`` as given ("1MB", or bytes); None: no limit
    bandwidth_limit: Any = attrs.field(default=None, kw_only=True, validator=check_limit)
    #: frp's ``transport.bandwidthLimitMode``: "client" or "server" enforces it
    bandwidth_limit_mode: str = attrs.field(default="client", kw_only=True, validator=check_mode)

    def rule_keys(self) -> Dict[str, Any]:
        return {**bandwidth_keys(self), **super().rule_keys()}
