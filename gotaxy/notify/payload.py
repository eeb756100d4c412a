# -*- test-case-name: tests.test_notify -*-
"""
What a notification says, and the HTTP request that carries it.

``document`` is the generic JSON body every ``format = "json"`` webhook
receives::

    {"event": "client.disconnected", "time": "2026-11-25T23:00:00Z",
     "timestamp": 1795647600.0, "server": "tunnel.example.org",
     "client": "alice", "tunnel": null, "address": "198.51.100.7:50312",
     "detail": "heartbeat timeout: nothing heard for 30 s", "count": 1,
     "text": "[tunnel.example.org] client alice offline: heartbeat timeout: ..."}

``render`` turns an event into the URL, body and headers of one delivery
attempt.  With a ``secret``, the generic and Slack formats carry
``X-Gotaxy-Signature: sha256=HEX``, the HMAC-SHA256 of the exact body bytes
under the secret; DingTalk and Feishu/Lark get their own services' signing
schemes instead (a ``timestamp``/``sign`` pair), which those services check
themselves.  Signatures are made per attempt, so a retry an hour later is
still fresh for services that reject old timestamps.  A recorded event's
deliveries carry ``X-Gotaxy-Event-Id``, its row id, so that a receiver can
tell a delivery it has seen (a retry, or a resend after a server died
between sending and noting it sent: ``gotaxy.notify.once``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Dict, Optional, Tuple
from urllib.parse import quote

from gotaxy import __version__
from gotaxy.events import TYPES, Event

SIGNATURE_HEADER = "X-Gotaxy-Signature"
EVENT_HEADER = "X-Gotaxy-Event"
#: The event's row id: the same in every attempt, from every server (``gotaxy.notify.once``).
EVENT_ID_HEADER = "X-Gotaxy-Event-Id"


def iso_time(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def describe(event: Event, server: str) -> str:
    """One line a person reads: ``[server] client alice offline: heartbeat timeout``."""
    fields = {
        "client": event.client or "?",
        "tunnel": event.tunnel or "?",
        "address": event.address or "an unknown address",
        "detail": event.detail or "no details",
    }
    kind = TYPES.get(event.type)
    if kind is None:  # written by a newer server sharing the database, say
        parts = [event.type] + [f"{k}={getattr(event, k)}" for k in ("client", "tunnel", "address", "detail") if getattr(event, k)]
        text = " ".join(parts)
    else:
        text = kind.phrase.format(**fields)
    return f"[{server}] {text}"


def document(event: Event, server: str) -> Dict[str, object]:
    """The generic JSON document for ``event``."""
    return {
        "event": event.type,
        "time": iso_time(event.at),
        "timestamp": event.at,
        "server": server,
        "client": event.client,
        "tunnel": event.tunnel,
        "address": event.address,
        "detail": event.detail,
        "count": event.count,
        "text": describe(event, server),
    }


def sign(secret: str, body: bytes) -> str:
    """The ``X-Gotaxy-Signature`` value for ``body``: ``sha256=`` and the hex HMAC."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _chat_sign(secret: str, timestamp: str, message_key: bool) -> str:
    """DingTalk signs "ts\\nsecret" under the secret; Feishu signs "" under "ts\\nsecret"."""
    string = f"{timestamp}\n{secret}".encode("utf-8")
    if message_key:
        digest = hmac.new(string, b"", hashlib.sha256).digest()
    else:
        digest = hmac.new(secret.encode("utf-8"), string, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def render(
    event: Event, server: str, url: str, format: str, secret: Optional[str], now: float
) -> Tuple[str, bytes, Dict[str, str]]:
    """The URL, body and headers of one delivery attempt of ``event``."""
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"Gotaxy/{__version__}",
        EVENT_HEADER: event.type,
    }
    if event.id is not None:
        headers[EVENT_ID_HEADER] = str(event.id)
    text = describe(event, server)
    body_object: Dict[str, object]
    if format == "slack":
        body_object = {"text": text}
    elif format == "dingtalk":
        body_object = {"msgtype": "text", "text": {"content": text}}
        if secret:
            ms = str(int(now * 1000))
            url += ("&" if "?" in url else "?") + f"timestamp={ms}&sign={quote(_chat_sign(secret, ms, False), safe='')}"
    elif format == "feishu":
        body_object = {"msg_type": "text", "content": {"text": text}}
        if secret:
            seconds = str(int(now))
            body_object = {"timestamp": seconds, "sign": _chat_sign(secret, seconds, True), **body_object}
    else:
        body_object = document(event, server)
    body = json.dumps(body_object, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if secret and format in ("json", "slack"):
        headers[SIGNATURE_HEADER] = sign(secret, body)
    return url, body, headers
