# -*- test-case-name: tests.test_proxy -*-
"""
The proxy types this installation knows, by name.

``register`` adds one; everything that needs a type looks it up here, so a
new type is one module plus one ``register`` call (or one line of
``_BUILT_IN``).  The built-in types are known by name from the start and
imported the first time one is looked up: a client imports the modules of
the types it has tunnels of, not the others (issue 15, goal 3); the
server's faces list them all (``types``), which imports every one.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Iterator, Mapping, Optional

from gotaxy.proxy.base import ProxySpec, ProxyType, SpecError


class UnknownType(SpecError):
    """The spec names a type this installation does not have (a newer peer's, say)."""

#: The built-in types, in the faces' order: name -> "module:attribute".
_BUILT_IN = {
    "tcp": "gotaxy.proxy.tcp:TCP",
    "http": "gotaxy.proxy.http:HTTP",
    "udp": "gotaxy.proxy.udp:UDP",
    "https": "gotaxy.proxy.https:HTTPS",
}

#: Every known type by name; None for a built-in one not imported yet.
_TYPES: Dict[str, Optional[ProxyType]] = dict.fromkeys(_BUILT_IN)


def _load(name: str) -> Optional[ProxyType]:
    proxy_type = _TYPES.get(name)
    if proxy_type is None and name in _TYPES:
        module, attribute = _BUILT_IN[name].split(":")
        proxy_type = _TYPES[name] = getattr(importlib.import_module(module), attribute)
    return proxy_type


def register(proxy_type: ProxyType) -> ProxyType:
    """Make ``proxy_type`` known under its name (replacing one of that name)."""
    _TYPES[proxy_type.name] = proxy_type
    return proxy_type


def unregister(name: str) -> None:
    """Forget a type (for tests that register one of their own)."""
    _TYPES.pop(name, None)


def get(name: str) -> Optional[ProxyType]:
    return _load(name)


def names() -> tuple:
    return tuple(_TYPES)


def types() -> Iterator[ProxyType]:
    return iter([proxy_type for proxy_type in map(_load, list(_TYPES)) if proxy_type is not None])


def describe_types() -> list:
    """Every registered type for the faces (name, label, fields), in registration order."""
    return [proxy_type.describe() for proxy_type in types()]


def parse_spec(keys: Mapping[str, Any]) -> ProxySpec:
    """A spec from frp's keys, by its ``type`` (``tcp`` when absent); SpecError if it is not valid."""
    if not isinstance(keys, Mapping):
        raise SpecError("a tunnel's settings must be an object of frp keys")
    kind = keys.get("type", "tcp")
    proxy_type = _load(kind) if isinstance(kind, str) else None
    if proxy_type is None:
        known = ", ".join(f"'{n}'" for n in _TYPES)
        raise UnknownType(f"tunnel type {str(kind)[:32]!r} is not supported by this version of Gotaxy (only {known})",
                          "type")
    return proxy_type.parse(keys)


def type_of(spec: ProxySpec) -> ProxyType:
    proxy_type = _load(spec.type)
    if proxy_type is None:
        raise SpecError(f"tunnel type {spec.type!r} is not registered")
    return proxy_type
