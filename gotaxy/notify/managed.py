# -*- test-case-name: tests.test_notify_managed -*-
"""
Webhooks that operators add and remove at run time, from the web panel or
the SSH console, next to the ``[[webhooks]]`` of ``server.toml``.

They are kept in the store (table ``notify_webhooks``) so they survive
restarts.  A webhook's URL and secret are encrypted there with Fernet under
a key in ``DATA_DIR/notify.key`` (mode 0600; ``notify.keyFile`` names
another file; ``gotaxy.sealing``, which seals the operators' TOTP secrets too): a chat hook's URL is itself a credential, and the store may
live elsewhere than the data directory (PostgreSQL, backups).  Nothing
shows a stored URL or secret again; views show the URL's scheme and host
only.

Servers that share one store must share the key.  The first server to
start on a store records a check value in it (``notify.key_check``: a fixed
text encrypted with its key, which proves nothing about the key to whoever
reads it); a server whose key cannot read it refuses to start with a
sentence saying which file to copy, instead of failing later on a webhook
it cannot decrypt.

Webhooks from ``server.toml`` are listed too, marked ``config``; they are
changed in the file, not here.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken

from twisted.logger import Logger

from gotaxy.config import ConfigError, WebhookSpec, replace
from gotaxy.events import filter_pattern_error
from gotaxy.logs import gotaxy_observer
from gotaxy.notify.dispatch import Notifier
from gotaxy.notify.webhook import WebhookTarget
from gotaxy.sealing import KEY_FILE, key_path, load_key
from gotaxy.store.schema import NOTIFY_MAIL, NOTIFY_WEBHOOKS

TABLE = NOTIFY_WEBHOOKS
SOURCE_CONFIG = "config"
SOURCE_OPERATOR = "operator"


class TargetError(Exception):
    """A refused change to a notification target; ``kind`` and ``field`` as ManagementError's."""

    def __init__(self, kind: str, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field


def redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


KEY_CHECK_SETTING = "notify.key_check"
_KEY_CHECK_TEXT = b"gotaxy notify key check"


class KeyMismatch(Exception):
    """This server's notify key is not the one the store's webhooks are encrypted with; for the user."""


log = Logger(observer=gotaxy_observer, namespace="gotaxy.notify")


def _stored_patterns(what: str, stored: str) -> tuple:
    """
    A stored target's event filter, without the patterns no event type
    matches (accepted before the catalogue checked them): dropped with a
    warning rather than keeping the server from starting.  A target left
    with none is not loaded (it could not match anything).
    """
    patterns = tuple(json.loads(stored))
    unknown = [p for p in patterns if filter_pattern_error(p) is not None]
    if unknown:
        log.warn("{what}: ignoring event filter(s) {unknown} that match no event type; remove it and add it "
                 "again with known types (see 'help notify' in the console)", what=what, unknown=", ".join(unknown))
    return tuple(p for p in patterns if p not in unknown)


class ManagedWebhooks:
    def __init__(self, notifier: Notifier, store: Any, data_dir: str, server_name: str, reactor: Any,
                 http: Any = None, key_file: Optional[str] = None) -> None:
        self.notifier = notifier
        self.store = store  # ThreadedStore
        self._db = store.store.db
        self._key_path = key_path(data_dir, key_file)
        self._fernet = Fernet(load_key(self._key_path))
        self.server_name = server_name
        self.reactor = reactor
        self._http = http
        self.operator_names: set = set()

    def load(self) -> None:
        """At start-up, before the reactor runs: check the key, add the stored webhooks."""
        self._check_key()
        for row in self._db[TABLE].find(order_by="id"):
            patterns = _stored_patterns(f"webhook {row['name']!r}", row["events"])
            if not patterns:
                continue
            spec = self._spec(
                row["name"],
                self._fernet.decrypt(row["url"].encode()).decode(),
                patterns,
                row["format"],
                self._fernet.decrypt(row["secret"].encode()).decode() if row["secret"] else None,
            )
            self._attach(spec)

    def _check_key(self) -> None:
        """Raise ``KeyMismatch`` unless our key reads the store's check value (recording it if there is none)."""
        sync = self.store.store
        check = sync.claim_setting(KEY_CHECK_SETTING, self._fernet.encrypt(_KEY_CHECK_TEXT).decode())
        try:
            readable = self._fernet.decrypt(check.encode()) == _KEY_CHECK_TEXT
        except InvalidToken:
            readable = False
        if not readable:
            raise KeyMismatch(
                f"{self._key_path} is not the key this store's webhooks are encrypted with (another server "
                f"sharing the database made them): copy notify.key from that server's data directory to "
                f"{self._key_path}, or set notify.keyFile to a copy of it"
            )

    @staticmethod
    def _spec(name: str, url: str, events: Sequence[str], format: str, secret: Optional[str]) -> WebhookSpec:
        try:
            return WebhookSpec(url=url, name=name, secret=secret or None, events=tuple(events), format=format)
        except ConfigError as e:
            # A [[webhooks]] key is the argument of the same name.
            raise TargetError("invalid", str(e).replace("server.toml: ", ""), e.key) from None
        except (TypeError, ValueError) as e:
            raise TargetError("invalid", str(e).replace("server.toml: ", "")) from None

    def _attach(self, spec: WebhookSpec) -> WebhookTarget:
        target = WebhookTarget(spec, self.server_name, self.reactor, self.notifier.failures, http=self._http)
        self.notifier.add(target)
        self.operator_names.add(spec.name)
        return target

    def webhooks(self) -> List[Dict[str, Any]]:
        views = []
        for target in self.notifier.targets:
            if not isinstance(target, WebhookTarget):
                continue
            spec = target.spec
            views.append(
                dict(
                    name=spec.name or target.label,
                    url=redact(spec.url),
                    events=tuple(spec.events),
                    format=spec.format,
                    signed=spec.secret is not None,
                    source=SOURCE_OPERATOR if spec.name in self.operator_names else SOURCE_CONFIG,
                )
            )
        return views

    def find(self, name: str) -> Optional[WebhookTarget]:
        for target in self.notifier.targets:
            if isinstance(target, WebhookTarget) and (target.spec.name or target.label) == name:
                return target
        return None

    async def add(self, name: str, url: str, events: Sequence[str], format: str, secret: Optional[str]) -> WebhookTarget:
        if not isinstance(name, str) or not name:
            raise TargetError("invalid", "a webhook needs a name", "name")
        spec = self._spec(name, url, events, format, secret)
        if self.find(name) is not None:
            raise TargetError("conflict", f"a webhook named {name!r} already exists; remove it first or pick another name", "name")
        row = dict(
            name=name,
            url=self._fernet.encrypt(url.encode()).decode(),
            secret=self._fernet.encrypt(secret.encode()).decode() if secret else None,
            events=json.dumps(list(spec.events)),
            format=spec.format,
            created_at=self.reactor.seconds(),
        )
        await self.store.call(lambda: self._db[TABLE].insert(row))
        return self._attach(spec)

    async def remove(self, name: str) -> None:
        target = self.find(name)
        if target is None:
            raise TargetError("not_found", f"no webhook named {name!r}", "name")
        if name not in self.operator_names:
            raise TargetError("conflict", f"webhook {name!r} comes from server.toml; remove it there")
        await self.store.call(lambda: self._db[TABLE].delete(name=name))
        self.operator_names.discard(name)
        self.notifier.remove(target)


MAIL_TABLE = NOTIFY_MAIL


class ManagedMailRecipients:
    """
    E-mail recipients operators add and remove at run time.  Each gets its
    own ``MailTarget`` (its own filter and batching) on the ``[smtp]`` server
    of ``server.toml``, which must be set up: the SMTP server and its
    credentials stay in the file.
    """

    def __init__(self, notifier: Notifier, store: Any, config: Any, reactor: Any) -> None:
        self.notifier = notifier
        self.store = store  # ThreadedStore
        self._db = store.store.db
        self.config = config
        self.reactor = reactor
        self.targets: Dict[str, Any] = {}  # address -> MailTarget, operator-added only

    @property
    def configured(self) -> bool:
        return self.config.smtp.host is not None and bool(self.config.smtp.sender)

    def load(self) -> None:
        """At start-up, before the reactor runs: add the stored recipients."""
        if not self.configured:
            return
        for row in self._db[MAIL_TABLE].find(order_by="id"):
            patterns = _stored_patterns(f"mail recipient {row['address']!r}", row["events"])
            if patterns:
                self._attach(row["address"], patterns)

    async def apply(self, config: Any) -> List[Any]:
        """
        A reload's ``[smtp]``: the operators' recipients are mailed through
        the new server settings (the ``Notifier`` reports the change), and
        are loaded once e-mail is set up.
        """
        from gotaxy.server.reload import changed_keys

        old, self.config = self.config, config
        moved = [k for k in changed_keys(old, config) if k.startswith("smtp.") and k not in ("smtp.to", "smtp.events")]
        if not moved:
            return []
        for target in self.targets.values():
            self.notifier.remove(target)
        self.targets.clear()
        if self.configured:
            rows = await self.store.call(lambda: list(self._db[MAIL_TABLE].find(order_by="id")))
            for row in rows:
                patterns = _stored_patterns(f"mail recipient {row['address']!r}", row["events"])
                if patterns:
                    self._attach(row["address"], patterns)
        return []

    def _settings(self, address: str, events: Sequence[str]) -> Any:
        try:
            settings = replace(self.config, {"smtp.to": (address,)})
        except (ConfigError, TypeError, ValueError):
            raise TargetError("invalid", f"{address!r} is not an e-mail address", "address") from None
        try:
            return replace(settings, {"smtp.events": tuple(events)})
        except (ConfigError, TypeError, ValueError):
            raise TargetError(
                "invalid",
                f"events {', '.join(map(repr, events))}: give event types or families such as "
                "client.disconnected or tunnel.* (or * for all)",
                "events",
            ) from None

    def _attach(self, address: str, events: Sequence[str]) -> Any:
        from gotaxy.notify.mail import MailTarget

        target = MailTarget.from_config(self._settings(address, events), self.reactor, self.notifier.failures)
        self.notifier.add(target)
        self.targets[address] = target
        return target

    def recipients(self) -> List[Dict[str, Any]]:
        views: List[Dict[str, Any]] = []
        if not self.configured:
            return views
        for address in self.config.smtp.to or ():
            views.append(dict(address=address, events=tuple(self.config.smtp.events), source=SOURCE_CONFIG))
        for address, target in self.targets.items():
            views.append(dict(address=address, events=tuple(target.filter.patterns), source=SOURCE_OPERATOR))
        return views

    def find(self, address: str) -> Optional[Any]:
        """The target that mails ``address`` (the file's shared one for its recipients)."""
        if address in self.targets:
            return self.targets[address]
        if self.configured and address in (self.config.smtp.to or ()):
            for target in self.notifier.targets:
                if getattr(target, "recipients", None) == list(self.config.smtp.to):
                    return target
        return None

    async def add(self, address: str, events: Sequence[str]) -> Any:
        if not self.configured:
            raise TargetError(
                "conflict", "e-mail is not set up: add an [smtp] section with host and from to server.toml first"
            )
        self._settings(address, events)  # validates before anything is stored
        if self.find(address) is not None:
            raise TargetError("conflict", f"{address} already receives notifications", "address")
        row = dict(address=address, events=json.dumps(list(events)), created_at=self.reactor.seconds())
        await self.store.call(lambda: self._db[MAIL_TABLE].insert(row))
        return self._attach(address, events)

    async def remove(self, address: str) -> None:
        if address not in self.targets:
            if self.find(address) is not None:
                raise TargetError("conflict", f"{address} is set in server.toml's [smtp] to; remove it there")
            raise TargetError("not_found", f"{address} is not a recipient", "address")
        await self.store.call(lambda: self._db[MAIL_TABLE].delete(address=address))
        self.notifier.remove(self.targets.pop(address))
