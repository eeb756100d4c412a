# -*- test-case-name: tests.test_server_reload -*-
"""
Live reload of ``server.toml``: ``SIGHUP``, the console's ``reload``, the
panel and ``POST /api/v0.1/reload`` all call ``ConfigReloader.reload``.

A reload is two steps, and the first can change nothing:

1. **Read and check everything.**  The file is read again as at start (the
   command line's flags still win); a file that does not parse, or any
   value in it that is wrong, ends the reload with the error, which names
   the key, and nothing has changed.  A ``config.reload_failed`` event says
   who tried and why.
2. **Apply.**  Each part of the server that owns settings has an
   ``apply(new_config)`` next to its code (``ServerCore``, ``Admission``,
   ``Notifier``, ``History``, ``MetricsResource``, the listeners, ...)
   that compares the new settings with the ones it runs with, changes what
   it can while it runs, and returns a ``Change`` per setting it looked at:
   applied (with what it did) or needing a restart (with why).  A setting
   that changed but that no part applied needs a restart, for the reason
   ``RESTART_REASONS`` gives.  A new feature adds its reload rule to its own
   ``apply``; nothing here names its settings.

The report (``ReloadReport``) says, per changed setting, what was applied
and what needs a restart; it is the ``config.reloaded`` event's detail too,
with who asked (``SIGHUP``, the console's operator, the panel's, an API
token), so webhooks hear of every reload.  One reload runs at a time.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Union

import attrs
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from gotaxy.config import ConfigError, ServerConfig, settings_of
from gotaxy.events import CONFIG_RELOAD_FAILED, CONFIG_RELOADED
from gotaxy.logs import gotaxy_observer


@attrs.frozen
class Change:
    """What a reload did with one setting (or a few that go together)."""

    key: str  #: the TOML key(s), as the file spells them: "allowPorts", "webServer.addr / webServer.port"
    applied: bool
    detail: str  #: what was done, or why it needs a restart


def applied(key: str, detail: str) -> Change:
    return Change(key, True, detail)


def needs_restart(key: str, why: str) -> Change:
    return Change(key, False, why)


class Reloadable(Protocol):
    """A part of the server that applies its own settings from a re-read config."""

    def apply(self, config: ServerConfig) -> Union[List[Change], Awaitable[List[Change]]]:
        ...


#: Why a setting that no part applies live needs a restart.
RESTART_REASONS: Dict[str, str] = {
    "dataDir": "the store, TLS files, logs and the directory's lock are opened there once, at start",
    "database.url": "the store's database is connected once, at start",
    "store": "the store's database is connected once, at start",
    "transport.tls.certFile": "the control port's certificate is loaded at start (clients pin it)",
    "transport.tls.keyFile": "the control port's certificate is loaded at start (clients pin it)",
    "transport.tls.trustedCaFile": "the control port's TLS settings and the client certificates' CA are loaded at "
                                   "start",
    "auth.method": "whether client certificates are asked for is set on the control port at start",
    "webServer.tls.certFile": "the panel's TLS certificate is loaded at start",
    "webServer.tls.keyFile": "the panel's TLS certificate is loaded at start",
    "notify.keyFile": "the webhooks kept in the store are decrypted with this key at start",
    "serverName": "it is in the notification targets and metrics made at start",
    "console.python": "the console's sessions are set up at start",
    "workers": "the worker processes are started at start",
    "console.idleTimeout": "the console's sessions are set up at start",
}
for _key in ("acme.enable", "acme.email", "acme.directory", "acme.caFile", "acme.renewBefore", "acme.domains"):
    RESTART_REASONS[_key] = "the ACME account and its renewals are set up at start"
DEFAULT_REASON = "it is read only at start"


#: TOML key -> (section or None, attrs field), for every server setting.
_SETTINGS = {key: (section, field) for key, section, field in settings_of(ServerConfig)}


def value_of(config: ServerConfig, key: str) -> Any:
    """The value ``config`` holds for the TOML ``key`` (``"webhooks"`` included)."""
    if key == "webhooks":
        return config.webhooks
    section, field = _SETTINGS[key]
    holder = getattr(config, section) if section else config
    return getattr(holder, field.name)


def changed_keys(old: ServerConfig, new: ServerConfig, keys: Optional[Iterable[str]] = None) -> List[str]:
    """The TOML keys (of ``keys``, default all) whose values differ between ``old`` and ``new``."""
    wanted = list(keys) if keys is not None else [*_SETTINGS, "webhooks"]
    return [key for key in wanted if value_of(old, key) != value_of(new, key)]


@attrs.frozen
class ReloadReport:
    """What one reload did."""

    applied: Tuple[Change, ...] = attrs.field(converter=tuple)
    restart: Tuple[Change, ...] = attrs.field(converter=tuple)
    warnings: Tuple[str, ...] = attrs.field(converter=tuple)

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.restart)

    def summary(self) -> str:
        """One paragraph for the event's detail and the log."""
        if not self.changed:
            return "no setting changed"
        parts = []
        if self.applied:
            parts.append("applied: " + "; ".join(f"{c.key} ({c.detail})" for c in self.applied))
        if self.restart:
            parts.append("needs a restart: " + "; ".join(f"{c.key} ({c.detail})" for c in self.restart))
        return ". ".join(parts)

    def lines(self) -> List[str]:
        """The report for a terminal: one line per setting."""
        if not self.changed:
            out = ["config reloaded: no setting changed"]
        else:
            out = ["config reloaded"]
            out += [f"  applied  {c.key}: {c.detail}" for c in self.applied]
            out += [f"  restart  {c.key}: needs a restart, {c.detail}" for c in self.restart]
        out += [f"warning: {w}" for w in self.warnings]
        return out

    def to_json(self) -> Dict[str, Any]:
        return {
            "applied": [{"key": c.key, "detail": c.detail} for c in self.applied],
            "restart": [{"key": c.key, "reason": c.detail} for c in self.restart],
            "warnings": list(self.warnings),
        }


class ReloadRefused(Exception):
    """The file could not be read or is wrong: nothing changed.  str() names the key."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.key = error.key


class ConfigReloader:
    """
    Reads the config again (``read``, the same function the start used) and
    hands it to every part's ``apply``; ``record(type, address=, detail=)``
    writes the event.
    """

    log = Logger(observer=gotaxy_observer, namespace="gotaxy.server.reload")

    def __init__(
        self,
        read: Callable[[], Tuple[ServerConfig, Sequence[str]]],
        config: ServerConfig,
        parts: Sequence[Reloadable],
        record: Callable[..., Awaitable[Any]],
    ) -> None:
        self.read = read
        self.config = config
        self.parts = list(parts)
        self.record = record
        self._lock = DeferredLock()

    def add(self, part: Reloadable) -> None:
        self.parts.append(part)

    async def reload(self, who: str) -> ReloadReport:
        await self._lock.acquire()
        try:
            return await self._reload(who)
        finally:
            self._lock.release()

    async def _reload(self, who: str) -> ReloadReport:
        try:
            new, warnings = self.read()
        except ConfigError as e:
            self.log.error("reload asked by {who} refused, nothing changed: {error}", who=who, error=e)
            await self.record(CONFIG_RELOAD_FAILED, address=who, detail=f"nothing changed: {e}")
            raise ReloadRefused(e) from None
        old = self.config
        changed = changed_keys(old, new)
        done: List[Change] = []
        for part in self.parts:
            result = part.apply(new)
            if not isinstance(result, list):
                result = await result
            done.extend(result)
        self.config = new
        covered = {key.strip() for change in done for key in change.key.split("/")}
        for key in changed:
            if key not in covered:
                done.append(needs_restart(key, RESTART_REASONS.get(key, DEFAULT_REASON)))
        report = ReloadReport(
            [c for c in done if c.applied], [c for c in done if not c.applied], warnings
        )
        self.log.info("config reloaded (asked by {who}): {summary}", who=who, summary=report.summary())
        for warning in warnings:
            self.log.warn("{warning}", warning=warning)
        await self.record(CONFIG_RELOADED, address=who, detail=report.summary())
        return report
