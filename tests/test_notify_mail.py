"""
E-mail notifications against a real SMTP server on loopback (Twisted's
own ESMTP server): STARTTLS with login, implicit TLS, plain; bursts
batched into one message; a server that is down recorded as a failure.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import tempfile
import time
from typing import Any, List

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor, ssl
from twisted.internet.task import Clock
from twisted.mail import smtp
from twisted.mail.imap4 import LOGINCredentials, PLAINCredentials
from twisted.trial import unittest
from zope.interface import implementer

from gotaxy.config import ServerConfig, SmtpSettings
from gotaxy.events import Event
from gotaxy.notify import FailureLog, MailTarget
from gotaxy.tls import load_or_create_server_credentials
from tests.inprocess import free_port, wait_until


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, inbox: List[bytes]) -> None:
        self.inbox = inbox
        self.lines: List[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> Any:
        self.inbox.append(b"\n".join(self.lines))
        return defer.succeed(None)

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, inbox: List[bytes], envelopes: List[Any]) -> None:
        self.inbox = inbox
        self.envelopes = envelopes

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        return None

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: Any) -> Any:
        self.envelopes.append(str(user.dest))
        return lambda: _Message(self.inbox)


@implementer(IRealm)
class _Realm:
    def __init__(self, delivery: _Delivery) -> None:
        self.delivery = delivery

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        return smtp.IMessageDelivery, self.delivery, lambda: None


class _TrackedESMTP(smtp.ESMTP):
    """An ESMTP server connection that leaves the set of open ones when it ends."""

    def __init__(self, open_connections: set, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._open = open_connections
        self._open.add(self)

    def connectionLost(self, reason: Any) -> None:
        self._open.discard(self)
        super().connectionLost(reason)


class _SMTPFactory(smtp.SMTPFactory):
    def __init__(self, portal: Portal, context: Any, delivery: _Delivery) -> None:
        super().__init__(portal)
        self.context = context
        self.delivery = delivery
        self.open: set = set()

    def buildProtocol(self, addr: Any) -> Any:
        p = _TrackedESMTP(self.open, contextFactory=self.context)
        p.challengers = {b"LOGIN": LOGINCredentials, b"PLAIN": PLAINCredentials}
        p.portal = self.portal
        p.factory = self
        p.host = b"localhost"
        p.delivery = self.delivery  # None: only logged-in senders may send
        return p


class MailServer:
    """A local SMTP server with one account, alice / wonderland."""

    def __init__(self, test: unittest.TestCase, implicit_tls: bool = False, open_relay: bool = False) -> None:
        directory = tempfile.mkdtemp(prefix="gotaxy-test-")
        test.addCleanup(shutil.rmtree, directory, True)
        credentials = load_or_create_server_credentials(directory, extra_names=["localhost"])
        ca = x509.load_pem_x509_certificates(credentials.certificate_pem)[-1]
        self.client_tls = ssl.optionsForClientTLS(
            "localhost", trustRoot=ssl.Certificate.loadPEM(ca.public_bytes(serialization.Encoding.PEM))
        )
        self.inbox: List[bytes] = []
        self.envelopes: List[str] = []
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"wonderland")
        context = credentials.server_context()
        delivery = _Delivery(self.inbox, self.envelopes)
        portal = Portal(_Realm(delivery), [checker])
        factory = _SMTPFactory(portal, None if implicit_tls else context, delivery if open_relay else None)
        if implicit_tls:
            self.port = reactor.listenSSL(0, factory, context, interface="127.0.0.1")
        else:
            self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        test.addCleanup(self.port.stopListening)
        # Runs after the test's own cleanups (MailTarget.stop): the sender
        # hears "250" before its QUIT and TLS close are through, so wait for
        # every connection to end rather than leave it (and the server's
        # timeout call) to the next test.
        test.addCleanup(lambda: defer.ensureDeferred(wait_until(lambda: not factory.open)))

    @property
    def number(self) -> int:
        return self.port.getHost().port

    def messages(self) -> List[email.message.Message]:
        """The messages received, once each (the server stores a copy per recipient)."""
        unique = {}
        for raw in self.inbox:
            message = email.message_from_bytes(raw, policy=email.policy.default)
            unique.setdefault(message["Message-ID"], message)
        return list(unique.values())


def event(kind: str, client: str = "alice", detail: str = None, tunnel: str = None) -> Event:
    return Event(type=kind, at=time.time(), client=client, tunnel=tunnel, address="127.0.0.1:1", detail=detail)


class MailTest(unittest.TestCase):
    def target(self, port: int, tls: str, tls_options: Any = None, clock: Any = None, **kw: Any) -> MailTarget:
        self.failures = FailureLog(reactor)
        options = dict(
            host="127.0.0.1", port=port, tls=tls, sender="gotaxy@example.org", recipients=["ops@example.org", "oncall@example.org"],
            events=["*"], batch_seconds=0.2, timeout=5.0, server_name="edge-1", reactor=clock or reactor,
            failures=self.failures, tls_options=tls_options, retry_delays=(),
        )
        options.update(kw)
        target = MailTarget(**options)
        self.addCleanup(target.stop)
        return target

    async def test_starttls_with_login_and_a_burst_in_one_message(self) -> None:
        server = MailServer(self)
        target = self.target(server.number, "starttls", server.client_tls, username="alice", password="wonderland")
        target.deliver(event("client.disconnected", detail="heartbeat timeout: nothing heard for 30 s"))
        for n in range(5):
            target.deliver(event("tunnel.refused", tunnel=f"t{n}", detail="port 22 is not allowed"))
        await wait_until(lambda: target.sent == 1)
        (message,) = server.messages()
        assert sorted(server.envelopes) == ["oncall@example.org", "ops@example.org"]
        assert message["Subject"].strip().startswith("[edge-1] 6 events: client alice offline")
        assert message["From"] == "gotaxy@example.org"
        body = message.get_content()
        assert "client alice offline: heartbeat timeout" in body
        assert body.count("refused: port 22 is not allowed") == 5
        assert self.failures.total == 0

    async def test_starttls_is_required(self) -> None:
        # A server that offers no STARTTLS: mail must not go out in the clear.
        server = MailServer(self, implicit_tls=False)
        server.port.factory.context = None
        target = self.target(server.number, "starttls", server.client_tls, username="alice", password="wonderland")
        target.deliver(event("client.kicked"))
        await wait_until(lambda: self.failures.total == 1)
        assert server.inbox == []
        assert "TLS" in self.failures.recent[0].reason

    async def test_implicit_tls(self) -> None:
        server = MailServer(self, implicit_tls=True)
        target = self.target(server.number, "tls", server.client_tls, username="alice", password="wonderland")
        target.deliver(event("token.revoked"))
        await wait_until(lambda: target.sent == 1)
        (message,) = server.messages()
        assert message["Subject"].strip() == "[edge-1] token alice revoked"

    async def test_plain_without_login(self) -> None:
        server = MailServer(self, open_relay=True)
        server.port.factory.context = None
        target = self.target(server.number, "none")
        target.deliver(event("config.reloaded", client=None, detail="applied: log.level"))
        await wait_until(lambda: target.sent == 1)
        assert server.messages()[0]["Subject"].strip() == "[edge-1] configuration reloaded by 127.0.0.1:1: applied: log.level"

    async def test_wrong_password_is_recorded(self) -> None:
        server = MailServer(self)
        target = self.target(server.number, "starttls", server.client_tls, username="alice", password="nope")
        target.deliver(event("client.kicked"))
        await wait_until(lambda: self.failures.total == 1)
        assert server.inbox == []
        assert self.failures.recent[0].target == f"smtp 127.0.0.1:{server.number}"
        reason = self.failures.recent[0].reason
        assert "nope" not in reason and "bm9wZ" not in reason and ">>>" not in reason
        assert "535" in reason or "authentication" in reason.lower()

    async def test_server_down_is_recorded_after_retries(self) -> None:
        target = self.target(free_port(), "none", retry_delays=(0.05, 0.05))
        target.deliver(event("client.kicked"))
        await wait_until(lambda: self.failures.total == 1)
        assert self.failures.recent[0].reason.startswith("gave up after 3 attempts")


class TestBatching:
    def test_events_within_the_window_share_one_message(self) -> None:
        clock = Clock()
        sent: List[Any] = []
        target = MailTarget(
            host="127.0.0.1", port=25, tls="none", sender="g@example.org", recipients=["o@example.org"],
            events=["client.*"], batch_seconds=30, timeout=5, server_name="edge-1", reactor=clock,
            failures=FailureLog(clock), tls_options=object(),
        )
        async def send(events: Any, overflow: int) -> None:
            sent.append([e.type for e in events])

        target._send = send  # type: ignore[assignment]
        assert not target.wants(event("tunnel.closed"))
        target.deliver(event("client.disconnected"))
        clock.advance(20)
        target.deliver(event("client.connected"))
        assert sent == []
        clock.advance(10)
        assert sent == [["client.disconnected", "client.connected"]]
        target.deliver(event("client.kicked"))
        clock.advance(30)
        assert sent == [["client.disconnected", "client.connected"], ["client.kicked"]]

    def test_message_lists_at_most_max_listed(self) -> None:
        clock = Clock()
        target = MailTarget(
            host="h", port=25, tls="none", sender="g@example.org", recipients=["o@example.org"], events=["*"],
            batch_seconds=30, timeout=5, server_name="edge-1", reactor=clock, failures=FailureLog(clock), tls_options=object(),
        )
        raw = target.message([event("login.failed", client=None, detail="invalid token")] * 250, overflow=10)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert message["Subject"].strip().startswith("[edge-1] 260 events: login failed")
        assert message.get_content().count("login failed from") == 200
        assert "... and 60 more events" in message.get_content()

    def test_from_config(self) -> None:
        config = ServerConfig(
            server_name="edge-1",
            smtp=SmtpSettings(host="mail.example.org", tls="tls", sender="g@example.org", to=["o@example.org"],
                              username="u", password="p", batch_seconds=5),
        )
        target = MailTarget.from_config(config, Clock(), FailureLog(Clock()))
        assert (target.host, target.port, target.tls, target.batch_seconds) == ("mail.example.org", 465, "tls", 5)
