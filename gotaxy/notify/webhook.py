# -*- test-case-name: tests.test_notify_webhook -*-
"""
Webhook delivery: one HTTP POST per event, with treq.

Each target has its own bounded queue and delivers one event at a time, in
order, so a slow or dead target holds up only itself, never the tunnels
(delivery runs entirely on Deferreds; nothing waits on the reactor thread)
and never another target.

One delivery::

    POST ──> 2xx ─────────────────────────────> delivered
      │──> 4xx (not 408/429) ─────────────────> failed at once (retrying cannot help)
      └──> 5xx, 408, 429, no answer within `timeout`, connection error
             └─> wait 1, 2, 4 ... 60 s and POST again, until `retryFor`
                 seconds have passed since the first attempt ─> failed

When more than ``maxPending`` events wait, the oldest is dropped and
recorded as a failure, so a dead target costs bounded memory.  Failures go
to ``FailureLog``; log lines and failure records name the target by its
``name`` or host, never by its URL (chat webhook URLs carry access tokens).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Optional, Tuple
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gotaxy.config import WebhookSpec
from gotaxy.events import Event
from gotaxy.logs import gotaxy_observer
from gotaxy.notify.filters import EventFilter
from gotaxy.notify.failures import FailureLog
from gotaxy.notify.payload import render

FIRST_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 60.0


def default_http_client(reactor: Any) -> Any:
    """A treq client that keeps no idle connections (nothing to clean up at stop)."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


def _permanent(code: int) -> bool:
    return 400 <= code < 500 and code not in (408, 425, 429)


class WebhookTarget:
    log = Logger(observer=gotaxy_observer)

    def __init__(
        self,
        spec: WebhookSpec,
        server_name: str,
        reactor: Any,
        failures: FailureLog,
        http: Any = None,
        number: int = 1,
        first_retry_delay: float = FIRST_RETRY_DELAY,
    ) -> None:
        self.spec = spec
        self.server_name = server_name
        self._reactor = reactor
        self._failures = failures
        self._http = http if http is not None else default_http_client(reactor)
        self.first_retry_delay = first_retry_delay
        self.label = spec.name or f"webhook #{number} ({urlsplit(spec.url).hostname})"
        self.filter = EventFilter(spec.events)
        self._queue: Deque[Tuple[Event, Deferred]] = deque()
        self._busy = False
        self._stopped = False
        self._waiting: Optional[Deferred] = None  # the request or back-off in progress
        self.delivered = 0
        self.failed = 0
        self.attempts = 0

    def __repr__(self) -> str:
        return f"<WebhookTarget {self.label}>"

    @property
    def pending(self) -> int:
        return len(self._queue) + (1 if self._busy else 0)

    def wants(self, event: Event) -> bool:
        return self.filter.matches(event.type)

    def deliver(self, event: Event) -> Deferred:
        """
        Queue ``event``; returns at once.  The Deferred fires when this
        target is done with it: delivered, or failed and recorded as such;
        never if the target stops first (the event is not done: another
        server may send it, ``gotaxy.notify.once``).
        """
        done: Deferred = Deferred()
        if self._stopped:
            return done
        if len(self._queue) >= self.spec.max_pending:
            dropped, dropped_done = self._queue.popleft()
            self._fail(dropped, f"dropped: more than {self.spec.max_pending} deliveries were waiting (maxPending)")
            dropped_done.callback(None)
        self._queue.append((event, done))
        if not self._busy:
            self._next()
        return done

    def _next(self) -> None:
        if self._stopped or not self._queue:
            self._busy = False
            return
        self._busy = True
        event, done = self._queue.popleft()
        d = Deferred.fromCoroutine(self._send(event))

        def finished(sent: bool) -> None:
            if sent:
                done.callback(None)

        d.addCallback(finished)
        d.addErrback(lambda f: self.log.failure("bug delivering to {target}", f, target=self.label))
        d.addBoth(lambda _: self._next())

    def _fail(self, event: Event, reason: str) -> None:
        self.failed += 1
        self._failures.record(self.label, event.type, reason)

    async def _send(self, event: Event) -> bool:
        """Deliver ``event`` (retrying); True when done with it, False if the target stopped first."""
        started = self._reactor.seconds()
        deadline = started + self.spec.retry_for
        delay = self.first_retry_delay
        attempt = 0
        while True:
            attempt += 1
            error = await self._attempt(event)
            if error is None:
                self.delivered += 1
                return True
            if self._stopped:
                return False
            if error.startswith("HTTP 4") and _permanent(int(error.split()[1])):
                self._fail(event, f"{error}; not retried (fix the URL or the receiver)")
                return True
            now = self._reactor.seconds()
            if now + delay > deadline:
                self._fail(
                    event,
                    f"gave up after {attempt} attempt{'s' if attempt > 1 else ''} over "
                    f"{now - started:.0f} s (retryFor {self.spec.retry_for:g} s): {error}",
                )
                return True
            self.log.info(
                "webhook {target}: {error}; retrying {event} in {delay:g} s",
                target=self.label, error=error, event=event.type, delay=delay,
            )
            self._waiting = deferLater(self._reactor, delay, lambda: None)
            try:
                await self._waiting
            except CancelledError:
                return False
            finally:
                self._waiting = None
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _attempt(self, event: Event) -> Optional[str]:
        """POST ``event`` once; ``None`` on success, else what went wrong."""
        self.attempts += 1
        url, body, headers = render(
            event, self.server_name, self.spec.url, self.spec.format, self.spec.secret, self._reactor.seconds()
        )
        timeout = self.spec.timeout

        async def post() -> int:
            response = await self._http.post(
                url, data=body, headers={k: [v] for k, v in headers.items()}, allow_redirects=False
            )
            await response.content()  # read it all, so the connection is released
            return int(response.code)

        waiting = self._waiting = Deferred.fromCoroutine(post())
        timed_out = []

        def give_up() -> None:
            timed_out.append(True)
            waiting.cancel()

        timer = self._reactor.callLater(timeout, give_up)
        try:
            code = await waiting
        except Exception as e:  # timeout, connection refused, DNS, TLS ...
            if self._stopped:
                return "stopped"
            if timed_out:
                return f"no answer within {timeout:g} s (timeout)"
            # Never let the URL (chat services put tokens in it) reach a log line.
            text = f"{type(e).__name__}: {e}".replace(url, self.label).replace(self.spec.url, self.label)
            return text[:300]
        finally:
            self._waiting = None
            if timer.active():
                timer.cancel()
        if 200 <= code < 300:
            return None
        return f"HTTP {code}"

    def stop(self) -> None:
        """Stop delivering; what is queued is given up (logged, not retried)."""
        self._stopped = True
        if self._queue:
            self.log.warn(
                "webhook {target}: {n} notifications not delivered: the server is stopping",
                target=self.label, n=len(self._queue),
            )
            self._queue.clear()
        if self._waiting is not None:
            self._waiting.cancel()
