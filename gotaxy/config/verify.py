# -*- test-case-name: tests.test_config_files -*-
"""
``gotaxy verify FILE`` (frp's ``frps verify`` / ``frpc verify``): check a
server or client file without starting anything, and say everything that
is wrong with it, not only the first thing.

The file's kind comes from its keys (``[[proxies]]``, ``serverAddr`` or
``includes`` make a client file; ``bindPort``, ``allowPorts``,
``[[webhooks]]`` ... a server file), or from the caller.  Then each key is
checked on its own (unknown keys, with a suggestion; values of the wrong
form), each ``[[proxies]]`` and ``[[webhooks]]`` entry on its own, and the
included files; only a file with no such error is read whole, which checks
what spans keys (``smtp.host`` without ``smtp.from``, a heartbeat interval
longer than the timeout) and collects the warnings a start would log.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from gotaxy.config.files import (
    _CLIENT,
    _read_includes,
    _read_proxies,
    _read_webhooks,
    parse_client_config,
    parse_server_config,
    read_toml,
    server_schema,
)
from gotaxy.config.values import ConfigError

KINDS = ("server", "client")

#: Keys only a client file has, and keys only a server file has.
_CLIENT_ONLY = frozenset({"serverAddr", "serverPort", "proxies", "visitors", "includes", "start", "loginFailExit"})
_SERVER_ONLY = frozenset({
    "bindAddr", "bindPort", "bindEndpoint", "allowPorts", "maxPortsPerClient", "webhooks", "proxyBindAddr",
    "vhostHTTPPort", "vhostHTTPSPort", "subDomainHost", "console", "smtp", "database", "history", "metrics",
    "enablePrometheus",
})


@attrs.frozen
class Verdict:
    """What ``verify`` found in one file."""

    path: str
    kind: str
    errors: tuple[str, ...] = attrs.field(converter=tuple)
    warnings: tuple[str, ...] = attrs.field(converter=tuple)

    @property
    def ok(self) -> bool:
        return not self.errors


def guess_kind(data: Mapping[str, Any]) -> str:
    """"client" or "server", from the file's keys (a file with neither kind's keys: "server")."""
    keys = set(data)
    client, server = len(keys & _CLIENT_ONLY), len(keys & _SERVER_ONLY)
    return "client" if client > server else "server"


def verify_file(path: str, kind: str | None = None, env: Mapping[str, str] | None = None) -> Verdict:
    """Every error and warning of the server or client file at ``path``."""
    try:
        data, warnings = read_toml(path, env)
    except ConfigError as e:
        return Verdict(path, kind or "?", [str(e)], [])
    kind = kind or guess_kind(data)
    errors = _each_key(data, path, kind, env)
    if not errors:
        try:
            if kind == "client":
                loaded = parse_client_config(data, source=path, env=env)
            else:
                loaded = parse_server_config(data, source=path)
        except ConfigError as e:
            errors.append(str(e))
        else:
            warnings += list(loaded.warnings)
    return Verdict(path, kind, errors, warnings)


def _each_key(data: Mapping[str, Any], path: str, kind: str, env: Mapping[str, str] | None) -> list[str]:
    schema, lists = (_CLIENT, ("proxies", "includes")) if kind == "client" else (server_schema(), ("webhooks",))
    errors = schema.problems({k: v for k, v in data.items() if k not in lists}, path)
    scratch: list[str] = []
    if kind == "client":
        entries = data.get("proxies", [])
        if isinstance(entries, list):
            names: set[str] = set()
            for number, entry in enumerate(entries, 1):
                try:
                    tunnels = _read_proxies([entry], path, scratch, number)
                except ConfigError as e:
                    errors.append(str(e))
                    continue
                for tunnel in tunnels:
                    if tunnel.name in names:
                        errors.append(
                            f"{path}: two proxies are named '{tunnel.name}'; give each [[proxies]] entry its own name"
                        )
                    names.add(tunnel.name)
        else:
            errors += _first(lambda: _read_proxies(entries, path, scratch))
        if "includes" in data and not errors:
            errors += _first(lambda: _read_includes(data["includes"], path, (), scratch, env))
    elif "webhooks" in data:
        entries = data["webhooks"]
        if isinstance(entries, list):
            for number, entry in enumerate(entries, 1):
                errors += _first(lambda: _read_webhooks([entry], path, number))
        else:
            errors += _first(lambda: _read_webhooks(entries, path))
    return errors


def _first(check: Any) -> list[str]:
    try:
        check()
    except ConfigError as e:
        return [str(e)]
    return []
