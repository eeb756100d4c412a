# -*- test-case-name: tests.test_notify_mail -*-
"""
E-mail notifications through an SMTP server, with ``twisted.mail.smtp``.

Events are batched: the first event that matches ``smtp.events`` starts a
timer of ``smtp.batchSeconds`` (default 30 s); everything that arrives
until it fires goes into the same message, so a burst (a server restart
taking every client offline, a flapping network) is one e-mail, not a
flood.  A message lists at most ``MAX_LISTED`` events and says how many
more there were.

``smtp.tls`` chooses the transport: ``"starttls"`` (the default, port 587:
plain connection upgraded with STARTTLS, which is required), ``"tls"``
(implicit TLS from the first byte, port 465) or ``"none"`` (port 25, for a
relay on localhost).  With ``smtp.username`` the sender logs in (CRAM-MD5,
LOGIN or PLAIN, whichever the server offers).  A send that fails is tried
again after 10 and 60 seconds, each attempt bounded by ``smtp.timeout``;
then it is recorded in ``FailureLog``.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from io import BytesIO
from typing import Any, List, Optional, Sequence

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gotaxy.config import ServerConfig
from gotaxy.events import Event
from gotaxy.logs import gotaxy_observer
from gotaxy.notify.failures import FailureLog
from gotaxy.notify.filters import EventFilter
from gotaxy.notify.payload import describe, iso_time

#: Events listed in one message; the rest are counted.
MAX_LISTED = 200
#: Events kept waiting for the next message; beyond this only counted.
MAX_WAITING = 1000
#: Seconds to wait before the second and third attempt.
RETRY_DELAYS = (10.0, 60.0)


class MailTarget:
    log = Logger(observer=gotaxy_observer)

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: str,
        sender: str,
        recipients: Sequence[str],
        events: Sequence[str],
        batch_seconds: float,
        timeout: float,
        server_name: str,
        reactor: Any,
        failures: FailureLog,
        username: Optional[str] = None,
        password: Optional[str] = None,
        tls_options: Any = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.sender = sender
        self.recipients = list(recipients)
        self.filter = EventFilter(events)
        self.batch_seconds = batch_seconds
        self.timeout = timeout
        self.server_name = server_name
        self._reactor = reactor
        self._failures = failures
        self._username = username
        self._password = password
        # Tests pass options trusting their own CA; by default the system's.
        self._tls_options = tls_options if tls_options is not None else optionsForClientTLS(host)
        self._retry_delays = tuple(retry_delays)
        self.label = f"smtp {host}:{port}"
        self._waiting: List[Event] = []
        self._overflow = 0
        self._batch_done: List[Deferred] = []  #: fire when the waiting events' message is sent or failed
        self._timer: Any = None
        self._sending: List[Deferred] = []
        self._stopped = False
        self._retry_wait: Optional[Deferred] = None
        self.sent = 0  #: messages accepted by the SMTP server
        self.failed = 0

    @classmethod
    def from_config(cls, config: ServerConfig, reactor: Any, failures: FailureLog) -> "MailTarget":
        assert config.smtp.host is not None and config.smtp.sender and config.smtp.to
        return cls(
            host=config.smtp.host,
            port=config.smtp.effective_port(),
            tls=config.smtp.tls,
            sender=config.smtp.sender,
            recipients=config.smtp.to,
            events=config.smtp.events,
            batch_seconds=config.smtp.batch_seconds,
            timeout=config.smtp.timeout,
            server_name=config.server_name,
            reactor=reactor,
            failures=failures,
            username=config.smtp.username,
            password=config.smtp.password,
        )

    def __repr__(self) -> str:
        return f"<MailTarget {self.label}>"

    def wants(self, event: Event) -> bool:
        return self.filter.matches(event.type)

    @property
    def pending(self) -> int:
        return len(self._waiting) + self._overflow

    def deliver(self, event: Event) -> Deferred:
        """
        Add ``event`` to the next message.  The Deferred fires when that
        message is sent, or failed and recorded as such (an event beyond
        ``MAX_WAITING`` is only counted in it).
        """
        done: Deferred = Deferred()
        if self._stopped:
            return done
        self._batch_done.append(done)
        if len(self._waiting) < MAX_WAITING:
            self._waiting.append(event)
        else:
            self._overflow += 1
        if self._timer is None:
            self._timer = self._reactor.callLater(self.batch_seconds, self._send_batch)
        return done

    def _send_batch(self) -> Deferred:
        self._timer = None
        events, overflow, waiting = self._waiting, self._overflow, self._batch_done
        self._waiting, self._overflow, self._batch_done = [], 0, []
        if not events:
            done: Deferred = Deferred()
            done.callback(None)
            return done
        d = Deferred.fromCoroutine(self._send(events, overflow))
        d.addErrback(lambda f: self.log.failure("bug sending e-mail via {target}", f, target=self.label))
        self._sending.append(d)

        def finished(_: Any) -> None:
            self._sending.remove(d)
            for each in waiting:
                each.callback(None)

        d.addBoth(finished)
        return d

    def message(self, events: Sequence[Event], overflow: int = 0) -> bytes:
        """The e-mail for a batch of events."""
        total = len(events) + overflow
        if total == 1:
            subject = describe(events[0], self.server_name)
        else:
            subject = f"[{self.server_name}] {total} events: " + describe(events[0], self.server_name).split("] ", 1)[1]
            subject += ", ..."
        lines = [f"{iso_time(e.at)}  {describe(e, self.server_name).split('] ', 1)[1]}" for e in events[:MAX_LISTED]]
        unlisted = total - min(len(events), MAX_LISTED)
        if unlisted:
            lines.append(f"... and {unlisted} more events (see the event log)")
        msg = EmailMessage()
        msg["Subject"] = subject if len(subject) <= 150 else subject[:147] + "..."
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = formatdate(self._reactor.seconds(), usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.sender.split("@")[-1])
        msg.set_content(f"Gotaxy server {self.server_name}:\n\n" + "\n".join(lines) + "\n")
        return msg.as_bytes()

    async def _send(self, events: Sequence[Event], overflow: int) -> None:
        data = self.message(events, overflow)
        delays = list(self._retry_delays)
        attempt = 0
        while True:
            attempt += 1
            error = await self._attempt(data)
            if error is None:
                self.sent += 1
                return
            if self._stopped or not delays:
                self.failed += 1
                self._failures.record(
                    self.label,
                    events[0].type if len(events) == 1 else f"{len(events) + overflow} events",
                    f"gave up after {attempt} attempt{'s' if attempt > 1 else ''}: {error}",
                )
                return
            delay = delays.pop(0)
            self.log.info("e-mail via {target} failed: {error}; retrying in {delay:g} s", target=self.label, error=error, delay=delay)
            self._retry_wait = deferLater(self._reactor, delay, lambda: None)
            try:
                await self._retry_wait
            except CancelledError:
                self._failures.record(self.label, f"{len(events) + overflow} events", f"not sent: the server stopped while retrying ({error})")
                return
            finally:
                self._retry_wait = None

    def _endpoint(self) -> Any:
        endpoint = HostnameEndpoint(self._reactor, self.host, self.port, timeout=self.timeout)
        if self.tls == "tls":
            return wrapClientTLS(self._tls_options, endpoint)
        return endpoint

    async def _attempt(self, data: bytes) -> Optional[str]:
        from twisted.mail.smtp import ESMTPSenderFactory

        result: Deferred = Deferred()
        factory = ESMTPSenderFactory(
            self._username.encode("utf-8") if self._username is not None else None,
            self._password.encode("utf-8") if self._password is not None else None,
            self.sender,
            self.recipients,
            BytesIO(data),
            result,
            retries=0,
            timeout=self.timeout,
            contextFactory=self._tls_options if self.tls == "starttls" else None,
            requireAuthentication=self._username is not None,
            requireTransportSecurity=self.tls == "starttls",
        )
        factory.domain = self.server_name.encode("idna") if self.server_name.isascii() else b"gotaxy"
        connecting = self._endpoint().connect(factory)
        connecting.addErrback(lambda f: result.errback(f) if not result.called else None)
        result.addTimeout(self.timeout, self._reactor)
        try:
            await result
        except (TimeoutError, CancelledError):
            protocol = getattr(factory, "currentProtocol", None)
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abortConnection()
            connecting.cancel()
            return f"no answer within {self.timeout:g} s (timeout)"
        except Exception as e:
            # Only the first line: Twisted appends the SMTP transcript, which
            # holds the base64 AUTH exchange, i.e. the password.
            first = str(e).splitlines()[0] if str(e) else ""
            return f"{type(e).__name__}: {first}"[:300]
        return None

    def flush(self) -> Deferred:
        """Send what is waiting now instead of at the end of the batch window."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        return self._send_batch()

    def stop(self) -> Deferred:
        """
        Send the last batch (bounded by the timeout, no retries) and stop.
        Its events count as done at once, handed to that last attempt: the
        store stops with the server, before an answer could be noted.
        """
        self._stopped = True
        if self._retry_wait is not None:
            self._retry_wait.cancel()
        handed, self._batch_done = self._batch_done, []
        sending = self.flush()
        for done in handed:
            done.callback(None)
        return sending
