# -*- test-case-name: tests.test_config -*-
"""
Reading TOML files (and the tables in them) into config objects: sorting
each key into ours, frp's-but-ignored and unknown (with a suggestion), and
the ``parse_server_config`` / ``parse_client_config`` entry points.
"""

from __future__ import annotations

import difflib
import functools
import glob
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any, Mapping

import attrs

from gotaxy.config.client import ClientConfig, TunnelSpec
from gotaxy.config.frp import (
    FRPC_KEYS,
    FRPC_TABLES,
    FRPS_KEYS,
    FRPS_TABLES,
    FRP_PROXY_KEYS,
    FRP_PROXY_TABLES,
    NOT_YET,
    PANEL_ACCOUNTS,
)
from gotaxy.config.templates import TemplateError, render
from gotaxy.proxy import SpecError, parse_spec
from gotaxy.proxy import registry as proxy_registry
from gotaxy.config.values import (
    ConfigError,
    FRP_PROXY_TYPES,
    NAMES,
    supported_type,
    TLS_ON,
    _Form,
    _Mismatch,
    _show,
    replace,
    settings_of,
)


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

if TYPE_CHECKING:
    from gotaxy.config.server import ServerConfig, WebhookSpec


#: Longest configuration file read (an included one too).
MAX_FILE_SIZE = 4 * 2**20
#: Most files one client file's ``includes`` may name, all patterns together.
MAX_INCLUDED_FILES = 256


@attrs.frozen
class Loaded:
    """A parsed configuration and the warnings to show the user about it."""

    config: ServerConfig | ClientConfig
    warnings: tuple[str, ...] = attrs.field(converter=tuple)


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

    #: TOML key -> (the section's field name or None, the field)
    settings: Mapping[str, tuple[str | None, attrs.Attribute]]  # type: ignore[type-arg]
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
        settings = {key: (section, field) for key, section, field in settings_of(config_class)}
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
        """
        Field values for the settings in ``ours``, named as ``replace`` takes
        them (``"web.port"``); checks are checked, then dropped.
        """
        values: dict[str, Any] = {}
        for key, raw in ours.items():
            section, field = self.settings.get(key, (None, None))
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
                values[f"{section}.{field.alias}" if section else field.alias] = value
        return values

    def problems(self, table: Mapping[str, Any], source: str, where: str = "") -> list[str]:
        """
        Every error ``sort`` and ``convert`` would raise for ``table``, one
        per key, instead of the first only (``gotaxy verify``).
        """
        errors: list[str] = []
        for key, value in self.flatten(table).items():
            try:
                ours, _ = self._one(key, value, source, where)
                self.convert(ours, source, where)
            except ConfigError as e:
                errors.append(str(e))
        return errors

    def _one(self, key: str, value: Any, source: str, where: str) -> tuple[dict[str, Any], list[str]]:
        if key in self.settings or key in self.checks or key in self.sections:
            return {key: value}, []
        if key in self.frp_keys or key in self.frp_tables:
            return {}, [key]
        raise self._unknown(key, source, where)

    def warning(self, key: str, source: str, where: str = "") -> str:
        return f"{source}: '{key}'{where} {self.notes.get(key, NOT_YET)}; ignored"

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


_CLIENT = _Schema.of(
    ClientConfig,
    frp_keys=FRPC_KEYS,
    frp_tables=FRPC_TABLES,
    checks={"transport.tls.enable": TLS_ON},
    sections=frozenset({"proxies", "start", "includes"}),
)
_PROXY = _Schema.of(TunnelSpec, frp_keys=FRP_PROXY_KEYS, frp_tables=FRP_PROXY_TABLES)


# The server's schemas are made when a server file is first read, so that a
# client, which reads none, does not import the server's settings
# (gotaxy.config.server: issue 15, goal 3).
@functools.cache
def server_schema() -> _Schema:
    from gotaxy.config.server import ServerConfig

    return _Schema.of(
        ServerConfig,
        frp_keys=FRPS_KEYS,
        frp_tables=FRPS_TABLES,
        sections=frozenset({"webhooks"}),
        notes={
            "transport.tls.force": "is not needed: Gotaxy always requires TLS",
            "webServer.user": PANEL_ACCOUNTS,
            "webServer.password": PANEL_ACCOUNTS,
        },
    )


@functools.cache
def _webhook_schema() -> _Schema:
    from gotaxy.config.server import WebhookSpec

    return _Schema.of(WebhookSpec, frp_keys=frozenset(), frp_tables=frozenset())


# ---------------------------------------------------------------------------
# Files


def legacy_ini_message(path: str) -> str:
    """What to tell a user who gave Gotaxy one of frp's old INI files."""
    return (
        f"{path}: this is frp's legacy INI format (frps.ini / frpc.ini with a [common] section, "
        f"before frp 0.52), which Gotaxy does not read; convert it to TOML with: "
        f"gotaxy convert {shlex.quote(path)}"
    )


def load_toml(path: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The parsed contents of the TOML file at ``path``, its ``{{ .Envs.NAME }}`` rendered."""
    return read_toml(path, env)[0]


def read_toml(path: str, env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """
    The parsed contents of the TOML file at ``path`` and the warnings about
    it: frp's ``{{ .Envs.NAME }}`` templates are rendered first, from ``env``
    (default: this process's environment; see ``gotaxy.config.templates``).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror}") from None
    if len(raw) > MAX_FILE_SIZE:
        raise ConfigError(
            f"{path}: longer than {MAX_FILE_SIZE // 2**20} MiB, so not a config file; check the path"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    warnings: list[str] = []
    if text is not None:
        try:
            rendered = render(text, os.environ if env is None else env)
        except TemplateError as e:
            raise ConfigError(f"{path}: {e}") from None
        text = rendered.text
        for name in rendered.unset:
            warnings.append(
                f"{path}: the environment variable {name} is not set, so "
                f"{{{{ .Envs.{name} }}}} is empty; set it before starting"
            )
    try:
        if text is None:
            raise UnicodeDecodeError("utf-8", raw, 0, 1, "not UTF-8")
        return tomllib.loads(text), warnings
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        from gotaxy.frp_ini import looks_like_frp_ini  # it imports this module

        if looks_like_frp_ini(raw.decode("utf-8", errors="replace")):
            raise ConfigError(legacy_ini_message(path)) from None
        if isinstance(e, UnicodeDecodeError):
            raise ConfigError(f"{path}: not valid TOML: the file must be UTF-8 text") from None
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def load_server_file(
    path: str, base: ServerConfig | None = None, env: Mapping[str, str] | None = None
) -> Loaded:
    """``server.toml`` (or ``frps.toml``) at ``path``, templates rendered, on top of ``base``."""
    data, warnings = read_toml(path, env)
    loaded = parse_server_config(data, source=path, base=base)
    return Loaded(loaded.config, warnings + list(loaded.warnings))


def load_client_file(
    path: str, base: ClientConfig = ClientConfig(), env: Mapping[str, str] | None = None
) -> Loaded:
    """``client.toml`` (or ``frpc.toml``) at ``path``, templates rendered and ``includes`` read."""
    data, warnings = read_toml(path, env)
    loaded = parse_client_config(data, source=path, base=base, env=env)
    return Loaded(loaded.config, warnings + list(loaded.warnings))


def _evolve(base: Any, changes: Mapping[str, Any], source: str) -> Any:
    try:
        return replace(base, changes)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def parse_server_config(
    data: dict[str, Any], source: str = "server.toml", base: ServerConfig | None = None
) -> Loaded:
    """
    Apply a parsed ``server.toml`` (or ``frps.toml``) on top of ``base`` (the defaults if L{None}).

    @raise ConfigError: for an unknown key or a bad value.
    """
    from gotaxy.config.server import ServerConfig

    schema = server_schema()
    ours, ignored = schema.sort(data, source)
    changes = schema.convert(ours, source)
    if "webhooks" in ours:
        changes["webhooks"] = _read_webhooks(ours["webhooks"], source)
    config = _evolve(ServerConfig() if base is None else base, changes, source)
    return Loaded(config, [schema.warning(key, source) for key in ignored])


def _read_webhooks(entries: Any, source: str, first: int = 1) -> tuple[WebhookSpec, ...]:
    """The ``[[webhooks]]`` entries of a server file."""
    from gotaxy.config.server import WebhookSpec

    schema = _webhook_schema()
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(
            f"{source}: 'webhooks' must be an array of tables, each one starting with a "
            f"[[webhooks]] line"
        )
    hooks: list[WebhookSpec] = []
    names: set[str] = set()
    for number, entry in enumerate(entries, first):
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
        ours, _ = schema.sort(entry, source, f" in {label}")
        hooks.append(WebhookSpec(**schema.convert(ours, source, f" in {label}")))
    return tuple(hooks)


def parse_client_config(
    data: dict[str, Any],
    source: str = "client.toml",
    base: ClientConfig = ClientConfig(),
    env: Mapping[str, str] | None = None,
) -> Loaded:
    """
    Apply a parsed ``client.toml`` (or ``frpc.toml``) on top of ``base``.
    ``[[proxies]]`` in the file (and in the files its ``includes`` name,
    found relative to the directory of ``source``) replace ``base.tunnels``.

    @raise ConfigError: for an unknown key, a bad value or a bad proxy.
    """
    ours, ignored = _CLIENT.sort(data, source)
    changes = _CLIENT.convert(ours, source)
    warnings = [_CLIENT.warning(key, source) for key in ignored]
    if "proxies" in ours:
        changes["tunnels"] = _read_proxies(ours["proxies"], source, warnings)
    if "includes" in ours:
        own = changes.get("tunnels", ())
        included, files = _read_includes(ours["includes"], source, own, warnings, env)
        changes["tunnels"] = own + included
        changes["included"] = files
    if "start" in ours:
        changes["tunnels"] = _apply_start(
            changes.get("tunnels", base.tunnels), ours["start"], source, warnings
        )
    return Loaded(_evolve(base, changes, source), warnings)


def _included_files(patterns: Any, source: str) -> list[tuple[str, str]]:
    """(file, the pattern that found it) for frp's ``includes``, sorted by name within each pattern."""
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p.strip() for p in patterns):
        raise ConfigError(
            f"{source}: 'includes' must be a list of file patterns, e.g. includes = [\"./confd/*.toml\"]"
        )
    here = os.path.dirname(os.path.abspath(source))
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for pattern in patterns:
        full = os.path.normpath(os.path.join(here, os.path.expanduser(pattern)))
        for path in sorted(glob.glob(full)):
            real = os.path.realpath(path)
            if real in seen or real == os.path.realpath(source) or not os.path.isfile(path):
                continue
            seen.add(real)
            found.append((path, pattern))
    if len(found) > MAX_INCLUDED_FILES:
        raise ConfigError(
            f"{source}: 'includes' names {len(found)} files; at most {MAX_INCLUDED_FILES} may be "
            f"included, so narrow the patterns"
        )
    return found


def _read_includes(
    patterns: Any,
    source: str,
    own: tuple[TunnelSpec, ...],
    warnings: list[str],
    env: Mapping[str, str] | None,
) -> tuple[tuple[TunnelSpec, ...], tuple[str, ...]]:
    """
    The proxies of the files frp's ``includes`` names: each holds only
    ``[[proxies]]`` (``[[visitors]]`` are warned about), rendered like the
    main file; a proxy name used twice, in any two files, is an error
    naming both.
    """
    files = _included_files(patterns, source)
    matched = {pattern for _, pattern in files}
    for pattern in patterns:
        if pattern not in matched:
            warnings.append(f"{source}: 'includes' pattern {_show(pattern)} matches no file; nothing included from it")
    origin = {tunnel.name: source for tunnel in own}
    tunnels: list[TunnelSpec] = []
    for path, _ in files:
        data, notes = read_toml(path, env)
        warnings.extend(notes)
        for key in data:
            if key == "visitors":
                warnings.append(f"{path}: '[[visitors]]' {NOT_YET}; ignored")
            elif key != "proxies":
                raise ConfigError(
                    f"{path}: an included file holds only [[proxies]] entries, not '{key}'; "
                    f"move '{key}' to {source}"
                )
        for tunnel in _read_proxies(data.get("proxies", []), path, warnings):
            if tunnel.name in origin:
                raise ConfigError(
                    f"{path}: proxy '{tunnel.name}' is also defined in {origin[tunnel.name]}; "
                    f"give each proxy its own name"
                )
            origin[tunnel.name] = path
            tunnels.append(tunnel)
    return tuple(tunnels), tuple(path for path, _ in files)


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


def _read_proxies(entries: Any, source: str, warnings: list[str], first: int = 1) -> tuple[TunnelSpec, ...]:
    """The tunnels in ``[[proxies]]``; warnings on skipped proxies and keys go to ``warnings``."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(
            f"{source}: 'proxies' must be an array of tables, each one starting with a "
            f"[[proxies]] line"
        )
    tunnels: list[TunnelSpec] = []
    ignored: dict[str, list[str]] = {}  # frp key -> names of the proxies that set it
    names: set[str] = set()
    for number, entry in enumerate(entries, first):
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
        if not supported_type(kind):
            warnings.append(
                f'{source}: {label} has type "{kind}", which Gotaxy does not support yet '
                f'(only {", ".join(chr(34) + name + chr(34) for name in proxy_registry.names())}); skipped'
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
        try:
            parse_spec(tunnels[-1].proxy_keys())
        except SpecError as e:
            raise ConfigError(f"{source}: {label}: {e}") from None
        if tunnels[-1].type == "udp" and tunnels[-1].health_check_type is not None:
            # A TCP connect says nothing about a UDP service: checking it would show a healthy one down.
            warnings.append(
                f"{source}: {label} is a udp proxy, and Gotaxy's health checks are TCP connects; "
                f"its healthCheck is ignored"
            )
            tunnels[-1] = attrs.evolve(tunnels[-1], health_check_type=None)
        elif tunnels[-1].health_check_type == "http":
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
