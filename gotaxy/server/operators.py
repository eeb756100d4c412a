# -*- test-case-name: tests.test_operators -*-
"""
Operator log-in, shared by the web panel and the SSH console.

One ``OperatorAuth`` per server holds the failure counts, so failures in
either place count toward the same slow-down and lock-out.

Counting
--------
Failures are counted per client address and per user name, within
``WINDOW`` seconds:

* after ``FREE_FAILURES`` failures, each further attempt must wait
  ``2 ** (failures - FREE_FAILURES)`` seconds (capped at ``MAX_DELAY``) after
  the previous one, and an attempt that comes sooner is refused without the
  password even being checked;
* after ``LOCK_AFTER`` failures the address is locked out for
  ``LOCK_SECONDS``; never more than ``LOCK_AFTER`` attempts are evaluated
  per ``WINDOW``;
* the user name's count applies only to the addresses that failed for it:
  ten wrong passwords from anywhere do not lock the operator out of the
  address they are at (nor out of a console key, which is not a password),
  but every address that guessed wrong is slowed down and then locked by
  the account's total, so more addresses do not buy many more guesses;
* a successful log-in clears the counts for that address and user.

An attempt is counted *before* its password is checked (a reserved slot,
given back if the password was right), so concurrent attempts cannot slip
past the limits while earlier ones are still being checked.

Checking
--------
argon2 is slow on purpose (tens of milliseconds and 64 MiB per check), so it
runs neither on the reactor thread nor on the store's thread (which client
log-ins and tunnel opens need): the store only fetches the hash, and the
check runs on ``CHECK_THREADS`` threads of its own.  At most ``MAX_CHECKS``
checks run or wait at once; beyond that an attempt is refused at once with
``Busy`` (HTTP 429 on the panel), which does not count as a failure.

Every failure is an ``operator.login_failed`` event with the address (never
the password).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import attrs
from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from gotaxy.credentials import verify_password
from gotaxy.events import OPERATOR_LOCKED_OUT, OPERATOR_LOGIN_FAILED, OPERATOR_PASSWORD_CHANGED

FREE_FAILURES = 3
MAX_DELAY = 60.0
LOCK_AFTER = 10
LOCK_SECONDS = 15 * 60.0
WINDOW = 15 * 60.0
MIN_PASSWORD_LENGTH = 10
CHECK_THREADS = 2  #: password checks at the same time
MAX_CHECKS = 8  #: password checks running or waiting; more are refused with ``Busy``
BUSY_RETRY = 5.0  #: seconds a refused attempt is told to wait
PRUNE_AT = 1000  #: addresses and names tracked before stale ones are forgotten


class AuthFailed(Exception):
    """Wrong user name or password (deliberately not saying which)."""


class LockedOut(Exception):
    """Refused without checking the password; try again in ``retry_after`` seconds."""

    def __init__(self, retry_after: float, message: Optional[str] = None) -> None:
        super().__init__(message or f"too many failed log-ins; try again in {max(1, round(retry_after))} s")
        self.retry_after = retry_after


class Busy(LockedOut):
    """Too many password checks are in progress (a log-in storm); not a failure."""

    def __init__(self) -> None:
        super().__init__(BUSY_RETRY, "too many log-ins in progress, try again in a few seconds")


@attrs.define
class _Failures:
    #: when each failed (or not yet checked) attempt came, and from where
    attempts: List[Tuple[float, str]] = attrs.Factory(list)
    locked_until: float = 0.0

    def prune(self, now: float) -> None:
        self.attempts = [attempt for attempt in self.attempts if now - attempt[0] < WINDOW]

    def wait(self, now: float) -> float:
        """Seconds before the next attempt may be checked."""
        wait = max(0.0, self.locked_until - now)
        count = len(self.attempts)
        if count >= LOCK_AFTER:
            wait = max(wait, self.attempts[-LOCK_AFTER][0] + WINDOW - now)
        if count >= FREE_FAILURES:
            delay = min(MAX_DELAY, 2.0 ** (count - FREE_FAILURES))
            wait = max(wait, self.attempts[-1][0] + delay - now)
        return wait


class OperatorAuth(Service):
    """
    Checks operator passwords.  A service so that its thread pool starts and
    stops with the server.
    """

    def __init__(self, core: Any, thread_reactor: Any = None) -> None:
        """
        ``thread_reactor`` hands the checks' results back from the pool
        (``callFromThread``); the core's reactor unless a test runs the
        core on a fake clock.
        """
        self.core = core
        self._thread_reactor = thread_reactor or core.reactor
        self._db = core.store.store
        self._failures: Dict[str, _Failures] = {}
        self._pool = ThreadPool(minthreads=0, maxthreads=CHECK_THREADS, name="gotaxy-password-check")
        self._checks = 0
        self._prune_at = PRUNE_AT

    # -- service -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._start_pool()

    def _start_pool(self) -> None:
        if not self._pool.started:
            self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        if self._pool.started:
            self._pool.stop()

    # -- counting ----------------------------------------------------------------

    def _now(self) -> float:
        return self.core.reactor.seconds()

    @staticmethod
    def _address_key(address: str) -> str:
        return f"address:{address}"

    @staticmethod
    def _user_key(username: str) -> str:
        return f"user:{username[:64]}"

    def _records(self, username: str, address: str) -> List[_Failures]:
        """The counts that apply to this attempt (pruned to the window)."""
        now = self._now()
        records = []
        by_address = self._failures.get(self._address_key(address))
        if by_address is not None:
            records.append(by_address)
        by_user = self._failures.get(self._user_key(username))
        if by_user is not None:
            by_user.prune(now)
            if any(a == address for _, a in by_user.attempts):
                records.append(by_user)
        for record in records:
            record.prune(now)
        return records

    def retry_after(self, username: str, address: str) -> float:
        """Seconds before this user may try from this address (0: now)."""
        now = self._now()
        return max([0.0] + [record.wait(now) for record in self._records(username, address)])

    def _forget_stale(self) -> None:
        # Every address that ever tried has a record: drop those with nothing
        # left in the window, so a crowd of addresses cannot grow memory.
        now = self._now()
        for key, record in list(self._failures.items()):
            record.prune(now)
            if not record.attempts and record.locked_until <= now:
                del self._failures[key]
        self._prune_at = max(PRUNE_AT, 2 * len(self._failures))

    def _reserve(self, username: str, address: str) -> Tuple[float, str]:
        if len(self._failures) >= self._prune_at:
            self._forget_stale()
        attempt = (self._now(), address)
        for key in (self._address_key(address), self._user_key(username)):
            self._failures.setdefault(key, _Failures()).attempts.append(attempt)
        return attempt

    def _failed(self, username: str, address: str, attempt: Tuple[float, str]) -> bool:
        """
        The reserved ``attempt`` failed: it now counts from this moment (the
        slow-down runs from the previous failure), and what reached
        ``LOCK_AFTER`` is locked.  True if something was locked now.
        """
        now = self._now()
        locked = False
        for key in (self._address_key(address), self._user_key(username)):
            record = self._failures.setdefault(key, _Failures())
            kept = [a for a in record.attempts if a is not attempt]
            record.attempts = sorted(kept + [(now, address)], key=lambda a: a[0])
            if len(record.attempts) >= LOCK_AFTER and record.locked_until <= now:
                record.locked_until = now + LOCK_SECONDS
                locked = True
        return locked

    # -- checking ----------------------------------------------------------------

    async def authenticate(self, username: str, password: str, address: str, via: str) -> None:
        """Return if the password is right; raise AuthFailed, LockedOut or Busy."""
        wait = self.retry_after(username, address)
        if wait > 0:
            raise LockedOut(wait)
        if self._checks >= MAX_CHECKS:
            raise Busy()
        attempt = self._reserve(username, address)
        self._checks += 1
        try:
            exists, stored = await self.core.store.call(self._db.admin_password_hash, username)
            self._start_pool()
            right = await deferToThreadPool(self._thread_reactor, self._pool, verify_password, stored, password)
        finally:
            self._checks -= 1
        if right and exists:
            for key in (self._address_key(address), self._user_key(username)):
                self._failures.pop(key, None)
            return
        locked = self._failed(username, address, attempt)
        detail = f"via {via}, user {username[:64]!r}"
        await self.core.record(OPERATOR_LOGIN_FAILED, address=address, detail=detail)
        if locked:
            await self.core.record(OPERATOR_LOCKED_OUT, address=address, detail=detail)
        raise AuthFailed("wrong user name or password")

    async def change_password(self, username: str, old: str, new: str, address: str, via: str) -> None:
        await self.authenticate(username, old, address, via)
        if len(new) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"the new password must have at least {MIN_PASSWORD_LENGTH} characters")
        await self.core.store.call(self._db.set_admin_password, username, new)
        await self.core.record(OPERATOR_PASSWORD_CHANGED, address=address, detail=f"via {via}")

    def failures(self, username: Optional[str] = None, address: Optional[str] = None) -> int:
        """Failed (or still being checked) attempts counted for the address or user."""
        keys = []
        if address is not None:
            keys.append(self._address_key(address))
        if username is not None:
            keys.append(self._user_key(username))
        return max((len(self._failures[k].attempts) for k in keys if k in self._failures), default=0)
