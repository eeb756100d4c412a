# -*- test-case-name: tests.test_client_reload -*-
"""
The client's reload: ``SIGHUP``, ``gotaxy-client reload`` and the admin
API's ``POST /api/reload`` (``gotaxy.client.admin``) all call
``ClientReloader.reload``.

The file is read again as at start (templates, ``includes``, and the
command-line flags still winning); a file with an error changes nothing.
Then the proxies are **diffed** by name against the running ones:

* added (or ``enabled`` turned on): opened;
* removed (or ``enabled = false``): closed; their open connections go on
  until they end, for at most ``DRAIN_GRACE`` seconds;
* changed (any key of the proxy): reopened with the new settings;
* unchanged: not touched, not even paused.

The control connection stays up throughout.  Of the other settings,
``log.level`` and ``allowOperatorTunnels`` apply at once; the ones that
define the connection itself (server address, token, TLS, heartbeats, the
admin API's own address) need a restart, and the report says so.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import attrs
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from gotaxy.client.control import proxy_spec
from gotaxy.config import ClientConfig, ConfigError, TunnelSpec, settings_of
from gotaxy.logs import gotaxy_observer, set_level

#: Client settings a reload applies at once (the proxies aside).
LIVE = ("log.level", "allowOperatorTunnels")


@attrs.frozen
class ClientReloadReport:
    added: Tuple[str, ...] = attrs.field(converter=tuple)
    removed: Tuple[str, ...] = attrs.field(converter=tuple)
    changed: Tuple[str, ...] = attrs.field(converter=tuple)
    unchanged: Tuple[str, ...] = attrs.field(converter=tuple)
    applied: Tuple[str, ...] = attrs.field(converter=tuple)  #: other settings applied at once
    restart: Tuple[str, ...] = attrs.field(converter=tuple)  #: settings that need a restart
    warnings: Tuple[str, ...] = attrs.field(converter=tuple)

    def to_json(self) -> Dict[str, Any]:
        return {
            "added": list(self.added), "removed": list(self.removed), "changed": list(self.changed),
            "unchanged": list(self.unchanged), "applied": list(self.applied), "restart": list(self.restart),
            "warnings": list(self.warnings),
        }

    def summary(self) -> str:
        parts = [f"{what}: {', '.join(names)}" for what, names in (
            ("opened", self.added), ("closed", self.removed), ("reopened", self.changed),
            ("applied", self.applied), ("needs a restart", self.restart),
        ) if names]
        return "; ".join(parts) if parts else "nothing changed"


def _opened(tunnels: Sequence[TunnelSpec]) -> Dict[str, TunnelSpec]:
    return {t.name: t for t in tunnels if t.enabled}


def _settings(config: ClientConfig) -> Dict[str, Any]:
    values = {}
    for key, _, field in settings_of(ClientConfig):
        values[key] = getattr(config, field.name)
    return values


class ClientReloader:
    """Reads the client's config again (``read``: the start's own function) and applies the difference."""

    log = Logger(observer=gotaxy_observer, namespace="gotaxy.client.reload")

    def __init__(self, read: Optional[Callable[[], Tuple[ClientConfig, Sequence[str]]]], factory: Any) -> None:
        self.read = read
        self.factory = factory
        self._lock = DeferredLock()

    async def reload(self, who: str) -> ClientReloadReport:
        await self._lock.acquire()
        try:
            return self._reload(who)
        finally:
            self._lock.release()

    def _reload(self, who: str) -> ClientReloadReport:
        if self.read is None:
            raise ConfigError("this client was not started with --config, so it has no file to read again")
        try:
            new, warnings = self.read()
        except ConfigError as e:
            self.log.error("reload asked by {who} refused, nothing changed: {error}", who=who, error=e)
            raise
        old: ClientConfig = self.factory.config
        before, after = _opened(old.tunnels), _opened(new.tunnels)
        added = [n for n in after if n not in before]
        removed = [n for n in before if n not in after]
        changed = [n for n in after if n in before and before[n] != after[n]]
        unchanged = [n for n in after if n in before and before[n] == after[n]]
        old_values, new_values = _settings(old), _settings(new)
        differing = [k for k in new_values if old_values[k] != new_values[k]]
        applied = [k for k in differing if k in LIVE]
        restart = [k for k in differing if k not in LIVE]
        if "log.level" in applied:
            set_level(new.log_level)
        # The connection's own settings stay as they were until a restart;
        # the rest (the proxies, the live settings) is the new file's.
        kept = {field.alias: getattr(old, field.name) for key, _, field in settings_of(ClientConfig)
                if key in restart}
        self.factory.config = config = attrs.evolve(new, **kept) if kept else new
        protocol = self.factory.current
        if protocol is not None and not protocol.disconnecting:
            protocol.reconfigure(old.tunnels, new.tunnels)
        latest = self.factory.latest
        if latest is not None and latest is not protocol and not latest.authenticated:
            # Connecting, not logged in yet: it asks for the new file's tunnels when it is.
            latest.config = config
            latest.tunnels = {t.name: t for t in config.tunnels}
            latest.proxies = {t.name: proxy_spec(t) for t in config.tunnels}
        report = ClientReloadReport(added, removed, changed, unchanged, applied, restart, warnings)
        if protocol is not None and not protocol.disconnecting:
            protocol.report_reload(who, report.summary())
        self.log.info("config reloaded (asked by {who}): {summary}", who=who, summary=report.summary())
        for name in restart:
            self.log.warn("{key} changed in the config; it applies after a restart", key=name)
        for warning in warnings:
            self.log.warn("{warning}", warning=warning)
        return report
