# -*- test-case-name: tests.test_operators -*-
"""
Operator log-in, shared by the web panel and the SSH console.

One ``OperatorAuth`` per server holds the failure counts, so failures in
either place count toward the same slow-down and lock-out:

* per client address and per user name, failures within ``WINDOW`` seconds
  are counted;
* after ``FREE_FAILURES`` failures, each further attempt must wait
  ``2 ** (failures - FREE_FAILURES)`` seconds (capped at ``MAX_DELAY``) after
  the previous failure, and an attempt that comes sooner is refused
  without the password even being checked;
* after ``LOCK_AFTER`` failures the address or user is locked out for
  ``LOCK_SECONDS``;
* a successful log-in clears the counts for that address and user.

Every failure is an ``operator.login_failed`` event with the address (never
the password).  Password checks run argon2 on the store's thread.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import attrs

from gotaxy.store import OPERATOR_LOCKED_OUT, OPERATOR_LOGIN_FAILED, OPERATOR_PASSWORD_CHANGED

FREE_FAILURES = 3
MAX_DELAY = 60.0
LOCK_AFTER = 10
LOCK_SECONDS = 15 * 60.0
WINDOW = 15 * 60.0
MIN_PASSWORD_LENGTH = 10


class AuthFailed(Exception):
    """Wrong user name or password (deliberately not saying which)."""


class LockedOut(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed log-ins; try again in {max(1, round(retry_after))} s")
        self.retry_after = retry_after


@attrs.define
class _Failures:
    times: List[float] = attrs.Factory(list)
    locked_until: float = 0.0


class OperatorAuth:
    def __init__(self, core: Any) -> None:
        self.core = core
        self._db = core.store.store
        self._failures: Dict[str, _Failures] = {}

    def _now(self) -> float:
        return self.core.reactor.seconds()

    def _keys(self, username: str, address: str) -> Tuple[str, str]:
        return (f"address:{address}", f"user:{username[:64]}")

    def retry_after(self, username: str, address: str) -> float:
        """Seconds before this user may try from this address (0: now)."""
        now = self._now()
        wait = 0.0
        for key in self._keys(username, address):
            record = self._failures.get(key)
            if record is None:
                continue
            record.times = [t for t in record.times if now - t < WINDOW]
            if record.locked_until > now:
                wait = max(wait, record.locked_until - now)
            elif len(record.times) >= FREE_FAILURES:
                delay = min(MAX_DELAY, 2.0 ** (len(record.times) - FREE_FAILURES))
                wait = max(wait, record.times[-1] + delay - now)
        return max(0.0, wait)

    async def authenticate(self, username: str, password: str, address: str, via: str) -> None:
        """Return if the password is right; raise AuthFailed or LockedOut."""
        wait = self.retry_after(username, address)
        if wait > 0:
            raise LockedOut(wait)
        if await self.core.store.call(self._db.verify_admin, username, password):
            for key in self._keys(username, address):
                self._failures.pop(key, None)
            return
        now = self._now()
        locked = False
        for key in self._keys(username, address):
            record = self._failures.setdefault(key, _Failures())
            record.times.append(now)
            if len(record.times) >= LOCK_AFTER and record.locked_until <= now:
                record.locked_until = now + LOCK_SECONDS
                locked = True
        detail = f"via {via}, user {username[:64]!r}"
        await self.core.record(
            self._db.record_event, OPERATOR_LOGIN_FAILED, None, None, address, detail,
            event=OPERATOR_LOGIN_FAILED, address=address, detail=detail,
        )
        if locked:
            await self.core.record(
                self._db.record_event, OPERATOR_LOCKED_OUT, None, None, address, detail,
                event=OPERATOR_LOCKED_OUT, address=address, detail=detail,
            )
        raise AuthFailed("wrong user name or password")

    async def change_password(self, username: str, old: str, new: str, address: str, via: str) -> None:
        await self.authenticate(username, old, address, via)
        if len(new) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"the new password must have at least {MIN_PASSWORD_LENGTH} characters")
        await self.core.store.call(self._db.set_admin_password, username, new)
        await self.core.record(
            self._db.record_event, OPERATOR_PASSWORD_CHANGED, None, None, address, f"via {via}",
            event=OPERATOR_PASSWORD_CHANGED, address=address, detail=f"via {via}",
        )

    def failures(self, username: Optional[str] = None, address: Optional[str] = None) -> int:
        keys = []
        if address is not None:
            keys.append(f"address:{address}")
        if username is not None:
            keys.append(f"user:{username}")
        return max((len(self._failures[k].times) for k in keys if k in self._failures), default=0)
