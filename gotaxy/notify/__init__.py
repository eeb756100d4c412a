"""
Notifications: server events delivered to webhooks and by e-mail.

The server publishes every state change on its ``EventBus``.  ``Notifier``
subscribes to it, holds back the offline/online pair of a client that only
flapped (``FlapSuppressor``), and hands each remaining event to every target
whose filter matches: ``WebhookTarget`` (an HTTP POST per event, signed,
retried) and ``MailTarget`` (one message per burst).  A target that fails
records the failure in ``FailureLog``; nothing a target does can slow the
tunnels or another target.
"""

from gotaxy.notify.dispatch import Notifier, build_notifier
from gotaxy.notify.filters import EventFilter
from gotaxy.notify.failures import FailureLog, NotificationFailure
from gotaxy.notify.flap import FlapSuppressor
from gotaxy.notify.mail import MailTarget
from gotaxy.notify.payload import describe, document, render, sign
from gotaxy.notify.webhook import WebhookTarget

__all__ = [
    "EventFilter",
    "FailureLog",
    "FlapSuppressor",
    "MailTarget",
    "NotificationFailure",
    "Notifier",
    "WebhookTarget",
    "build_notifier",
    "describe",
    "document",
    "render",
    "sign",
]
