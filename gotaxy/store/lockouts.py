# -*- test-case-name: tests.test_operators -*-
"""
Failed log-ins and lock-outs, kept in the store so that they hold across
every server process sharing it: guesses against the panel of one process
and the console of another add up to one count.

Two tables:

* ``auth_failures``: one row per counted attempt (``scope`` says what was
  tried: ``operator`` passwords, ``totp`` codes), with the user name, the
  address and when.  A password attempt's row is written *before* the
  password is checked (``pending``), so concurrent attempts, in this process
  or another, each see the ones that came before them; a right password
  deletes it again.
* ``auth_locks``: ``scope``, ``key`` (``address:A`` or ``user:U``) and until
  when it is locked.

Whether an attempt may go ahead is decided from the rows written before
its own (lower ids): with SQLite writes are serialised, so ids follow the
order of commits; with PostgreSQL two inserts committing within the same
instant may miss each other, so at most one extra attempt per process
slips through then.  Rows older than the window are deleted as attempts
come, so the tables hold at most the window's attempts.

The functions here are synchronous and run on the store's thread; the
server calls them through ``ThreadedStore`` (``gotaxy.server.operators``,
``gotaxy.web.auth``).  Times come from the caller (its reactor's clock).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs

from gotaxy.store.schema import AUTH_FAILURES, AUTH_LOCKS

FAILURES = AUTH_FAILURES  #: the tables (``gotaxy.store.schema``)
LOCKS = AUTH_LOCKS

#: What was tried.
OPERATOR = "operator"
TOTP = "totp"


def address_key(address: str) -> str:
    return f"address:{address[:128]}"


def user_key(username: str) -> str:
    return f"user:{username[:64]}"


@attrs.frozen
class Record:
    """The attempts counted against one address or user name, and its lock."""

    attempts: Tuple[Tuple[float, str], ...]  #: (when, from where), oldest first
    locked_until: float = 0.0


#: A rule: the seconds to wait, from a record and the time now.
Rule = Callable[[Record, float], float]


def _record(db: Any, scope: str, key: str, column: str, value: str, window: float, now: float,
            before_id: Optional[int]) -> Record:
    filters: Dict[str, Any] = {"scope": scope, column: value, "at": {">": now - window}}
    if before_id is not None:
        filters["id"] = {"<": before_id}
    rows = db[FAILURES].find(**filters)
    attempts = tuple(sorted((row["at"], row["address"]) for row in rows))
    locks = [row["until"] for row in db[LOCKS].find(scope=scope, key=key, until={">": now})]
    return Record(attempts, max(locks, default=0.0))


def records(db: Any, scope: str, username: str, address: str, window: float, now: float,
            before_id: Optional[int] = None) -> List[Record]:
    """
    The records that apply to an attempt by ``username`` from ``address``:
    the address's, and the user name's if this address is among those
    that failed for it.
    """
    found = [_record(db, scope, address_key(address), "address", address[:128], window, now, before_id)]
    by_user = _record(db, scope, user_key(username), "username", username[:64], window, now, before_id)
    if any(a == address[:128] for _, a in by_user.attempts):
        found.append(by_user)
    return found


def wait(db: Any, scope: str, username: str, address: str, window: float, now: float, rule: Rule,
         before_id: Optional[int] = None) -> float:
    """Seconds before this user may try from this address (0: now)."""
    return max([0.0] + [rule(r, now) for r in records(db, scope, username, address, window, now, before_id)])


def reserve(db: Any, scope: str, username: str, address: str, window: float, now: float,
            rule: Rule) -> Tuple[Optional[int], float]:
    """
    Count an attempt before it is checked: (its row's id, 0), or (None,
    seconds to wait) if the attempts before it say it must wait (then it is
    not counted).
    """
    db[FAILURES].delete(at={"<=": now - window})
    db[LOCKS].delete(until={"<=": now})
    attempt = db[FAILURES].insert(dict(scope=scope, username=username[:64], address=address[:128], at=now,
                                       pending=True))
    seconds = wait(db, scope, username, address, window, now, rule, before_id=attempt)
    if seconds > 0:
        db[FAILURES].delete(id=attempt)
        return None, seconds
    return attempt, 0.0


def give_back(db: Any, attempt: int) -> None:
    """The attempt was not checked after all (the server was busy): it does not count."""
    db[FAILURES].delete(id=attempt)


def succeeded(db: Any, scope: str, username: str, address: str) -> None:
    """A right password clears the counts of its address and its user name."""
    db[FAILURES].delete(scope=scope, address=address[:128])
    db[FAILURES].delete(scope=scope, username=username[:64])
    db[LOCKS].delete(scope=scope, key={"in": [address_key(address), user_key(username)]})


def failed(db: Any, scope: str, username: str, address: str, attempt: Optional[int], window: float, now: float,
           lock_after: int, lock_seconds: float) -> bool:
    """
    The attempt failed: it counts from now (a new row if it was not
    reserved).  What reached ``lock_after`` attempts in the window is
    locked for ``lock_seconds``; True if something was locked now.
    """
    row = dict(scope=scope, username=username[:64], address=address[:128], at=now, pending=False)
    if attempt is None:
        db[FAILURES].insert(row)
    else:
        db[FAILURES].update(dict(row, id=attempt), ["id"])
    locked = False
    for key, column, value in (
        (address_key(address), "address", address[:128]),
        (user_key(username), "username", username[:64]),
    ):
        count = db[FAILURES].count(scope=scope, at={">": now - window}, **{column: value})
        if count >= lock_after and db[LOCKS].find_one(scope=scope, key=key, until={">": now}) is None:
            db[LOCKS].insert(dict(scope=scope, key=key, until=now + lock_seconds))
            locked = True
    return locked


def locked_for(db: Any, scope: str, key: str, now: float) -> float:
    """Seconds ``key`` stays locked (0: not locked)."""
    until = [row["until"] for row in db[LOCKS].find(scope=scope, key=key, until={">": now})]
    return max(0.0, max(until, default=now) - now)


def lock(db: Any, scope: str, key: str, until: float) -> None:
    """Lock ``key`` until ``until`` (as enough failures would)."""
    db[LOCKS].insert(dict(scope=scope, key=key, until=until))


def clear(db: Any, scope: str, column: str, value: str) -> None:
    db[FAILURES].delete(scope=scope, **{column: value})


def count(db: Any, scope: str, window: float, now: float, username: Optional[str] = None,
          address: Optional[str] = None) -> int:
    """Attempts counted (failed, or reserved and not checked yet) for the address or the user name."""
    counts = [0]
    if address is not None:
        counts.append(db[FAILURES].count(scope=scope, address=address[:128], at={">": now - window}))
    if username is not None:
        counts.append(db[FAILURES].count(scope=scope, username=username[:64], at={">": now - window}))
    return max(counts)


def failed_for_user(db: Any, scope: str, username: str, address: str, window: float, now: float,
                    lock_after: int, lock_seconds: float) -> bool:
    """
    One failure counted against the user name alone (a wrong second-factor
    code: the password was right, so the address is the operator's own).
    At ``lock_after`` in the window the name is locked for ``lock_seconds``
    and its count starts again; True if it was locked now.
    """
    db[FAILURES].delete(at={"<=": now - window})
    db[FAILURES].insert(dict(scope=scope, username=username[:64], address=address[:128], at=now, pending=False))
    if db[FAILURES].count(scope=scope, username=username[:64], at={">": now - window}) < lock_after:
        return False
    lock(db, scope, user_key(username), now + lock_seconds)
    clear(db, scope, "username", username[:64])
    return True


def lift_all(db: Any) -> int:
    """Forget every count and lock-out (``gotaxy admin reset-password``); return how many locks there were."""
    locks = int(db[LOCKS].count())
    db[LOCKS].delete()
    db[FAILURES].delete()
    return locks
