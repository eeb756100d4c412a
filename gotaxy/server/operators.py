# -*- test-case-name: tests.test_operators -*-
"""
Operator log-in, shared by the web panel and the SSH console.

The failure counts live in the store (``gotaxy.lockouts``), so failures in
either place, and in every server process sharing the store, count toward
the same slow-down and lock-out.

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

An attempt is counted *before* its password is checked (a row written to
the store, deleted again if the password was right), and whether it may go
ahead is decided from the attempts written before it, so concurrent
attempts, here or in another process, cannot slip past the limits while
earlier ones are still being checked.

Checking
--------
argon2 is slow on purpose (a tenth of a second and 19 MiB per check), so it
runs neither on the reactor thread nor on the store's thread (which client
log-ins and tunnel opens need): the store only fetches the hash, and the
check runs on ``CHECK_THREADS`` threads of its own.  At most ``MAX_CHECKS``
checks run or wait at once; beyond that an attempt is refused at once with
``Busy`` (HTTP 429 on the panel), which does not count as a failure.
A right password whose hash has older parameters than
``gotaxy.credentials.PASSWORD_HASHER``'s is hashed again in the same job
and stored (``Store.rehash_admin_password``).

Every failure is an ``operator.login_failed`` event with the address (never
the password).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from gotaxy.credentials import check_password, hash_password
from gotaxy.events import OPERATOR_LOCKED_OUT, OPERATOR_LOGIN_FAILED, OPERATOR_PASSWORD_CHANGED
from gotaxy.store import lockouts

FREE_FAILURES = 3
MAX_DELAY = 60.0
LOCK_AFTER = 10
LOCK_SECONDS = 15 * 60.0
WINDOW = 15 * 60.0
MIN_PASSWORD_LENGTH = 10
CHECK_THREADS = 2  #: password checks at the same time
MAX_CHECKS = 8  #: password checks running or waiting; more are refused with ``Busy``
BUSY_RETRY = 5.0  #: seconds a refused attempt is told to wait


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


def _wait(record: lockouts.Record, now: float) -> float:
    """Seconds before the next attempt may be checked, by one record's count."""
    wait = max(0.0, record.locked_until - now)
    count = len(record.attempts)
    if count >= LOCK_AFTER:
        wait = max(wait, record.attempts[-LOCK_AFTER][0] + WINDOW - now)
    if count >= FREE_FAILURES:
        delay = min(MAX_DELAY, 2.0 ** (count - FREE_FAILURES))
        wait = max(wait, record.attempts[-1][0] + delay - now)
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
        self._pool = ThreadPool(minthreads=0, maxthreads=CHECK_THREADS, name="gotaxy-password-check")
        self._checks = 0

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

    # -- counting (in the store: see gotaxy.lockouts) -------------------------------

    def _now(self) -> float:
        return self.core.reactor.seconds()

    def retry_after(self, username: str, address: str) -> "Deferred[float]":
        """Seconds before this user may try from this address (0: now)."""
        return self.core.store.call(
            lockouts.wait, self._db.db, lockouts.OPERATOR, username, address, WINDOW, self._now(), _wait
        )

    def failures(self, username: Optional[str] = None, address: Optional[str] = None) -> "Deferred[int]":
        """Failed (or still being checked) attempts counted for the address or user."""
        return self.core.store.call(
            lockouts.count, self._db.db, lockouts.OPERATOR, WINDOW, self._now(), username, address
        )

    # -- checking ----------------------------------------------------------------

    async def authenticate(self, username: str, password: str, address: str, via: str) -> None:
        """Return if the password is right; raise AuthFailed, LockedOut or Busy."""
        db = self._db.db
        attempt, wait = await self.core.store.call(
            lockouts.reserve, db, lockouts.OPERATOR, username, address, WINDOW, self._now(), _wait
        )
        if attempt is None:
            raise LockedOut(wait)
        if self._checks >= MAX_CHECKS:
            await self.core.store.call(lockouts.give_back, db, attempt)
            raise Busy()
        self._checks += 1
        try:
            exists, stored = await self.core.store.call(self._db.admin_password_hash, username)
            self._start_pool()
            right, new_hash = await deferToThreadPool(
                self._thread_reactor, self._pool, check_password, stored, password
            )
        finally:
            self._checks -= 1
        if right and exists:
            await self.core.store.call(lockouts.succeeded, db, lockouts.OPERATOR, username, address)
            if new_hash is not None:
                await self.core.store.call(self._db.rehash_admin_password, username, stored, new_hash)
            return
        locked = await self.core.store.call(
            lockouts.failed, db, lockouts.OPERATOR, username, address, attempt, WINDOW, self._now(), LOCK_AFTER,
            LOCK_SECONDS,
        )
        detail = f"via {via}, user {username[:64]!r}"
        await self.core.record(OPERATOR_LOGIN_FAILED, address=address, detail=detail)
        if locked:
            await self.core.record(OPERATOR_LOCKED_OUT, address=address, detail=detail)
        raise AuthFailed("wrong user name or password")

    async def change_password(self, username: str, old: str, new: str, address: str, via: str) -> None:
        await self.authenticate(username, old, address, via)
        if len(new) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"the new password must have at least {MIN_PASSWORD_LENGTH} characters")
        # argon2 here too, not on the store's thread (see the module docstring).
        self._start_pool()
        new_hash = await deferToThreadPool(self._thread_reactor, self._pool, hash_password, new)
        await self.core.store.call(self._db.set_admin_password_hash, username, new_hash)
        await self.core.record(OPERATOR_PASSWORD_CHANGED, address=address, detail=f"via {via}")
