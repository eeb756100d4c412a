# -*- test-case-name: tests.test_access -*-
"""
Banned addresses, kept in the store so that a ban holds in every server
process sharing it and survives a restart (``gotaxy.server.access`` keeps
the in-memory copy that connections are checked against).

One row per address in ``bans`` (UNIQUE address): ``reason``, ``strikes``
(how many times it was banned without ``forget_after`` seconds of good
behaviour in between), ``at`` (the last ban), ``until`` and ``by`` (what
banned it: "automatic", or the operator).  A ban in force has ``until`` in
the future; an expired row stays until ``forget_after`` seconds past its
``until``, so that the next ban of a repeat offender is longer; a lifted
ban's row is deleted (the operator forgave it).

Each ban and lift records its event (``ban.added``, ``ban.lifted``) in the
same store call, so webhooks hear of it and other processes read it from
the events table.  A ban that runs out is ``ban.expired``, recorded by
``expire``: the first process to mark the row's ``expired`` (one UPDATE
that only one of them can win) records it, so it is told once however many
processes share the store.  The functions are synchronous and run on the store's
thread (``ThreadedStore.call``); times come from the caller's clock.
"""

from __future__ import annotations

from typing import Any, List, Optional

import attrs
from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError

from gotaxy.events import BAN_ADDED, BAN_EXPIRED, BAN_LIFTED
from gotaxy.store.schema import BANS

#: Longest reason kept (the column's length).
MAX_REASON = 200


@attrs.frozen
class BanRecord:
    """One ban, as the store holds it."""

    address: str
    reason: str
    strikes: int
    at: float
    until: float
    by: str

    def to_json(self, now: float) -> dict:
        return {"address": self.address, "reason": self.reason, "strikes": self.strikes, "at": self.at,
                "until": self.until, "by": self.by, "remaining": max(0.0, self.until - now)}


def _record(row: Any) -> BanRecord:
    return BanRecord(address=row["address"], reason=row["reason"] or "", strikes=int(row["strikes"] or 1),
                     at=float(row["at"]), until=float(row["until"]), by=row["by"] or "")


def duration(strikes: int, first: float, longest: float) -> float:
    """How long the ``strikes``-th ban lasts: ``first``, doubled with each repeat, at most ``longest``."""
    return float(min(longest, first * 2.0 ** min(max(strikes, 1) - 1, 64)))


def ban(store: Any, address: str, reason: str, now: float, first: float, longest: float, forget_after: float,
        by: str = "automatic", seconds: Optional[float] = None) -> BanRecord:
    """
    Ban ``address`` from ``now``: for ``seconds`` if given (an operator's
    ban), else for ``duration`` of its strikes.  A ban in force is made
    longer, never shorter.  Records ``ban.added``.
    """
    db = store.db
    table = db[BANS]
    reason = reason[:MAX_REASON]
    table.delete(until={"<": now - forget_after})
    for _ in range(3):
        row = table.find_one(address=address)
        if row is None:
            strikes = 1
            length = seconds if seconds is not None else duration(strikes, first, longest)
            values = dict(address=address, reason=reason, strikes=strikes, at=now, until=now + length, by=by[:128],
                          expired=False)
            try:
                table.insert(values)
            except IntegrityError:
                continue  # another process banned it a moment ago: count this as a repeat
            break
        strikes = int(row["strikes"] or 0) + 1
        length = seconds if seconds is not None else duration(strikes, first, longest)
        until = max(now + length, float(row["until"]) if seconds is None else 0.0)
        values = dict(address=address, reason=reason, strikes=strikes, at=now, until=until, by=by[:128],
                      expired=False)
        table.update(values, ["address"])
        break
    record = _record(table.find_one(address=address))
    store.record_event(BAN_ADDED, address=address, count=record.strikes,
                       detail=f"{record.reason}; for {record.until - now:.0f} s (ban {record.strikes}, by {by})")
    return record


def lift(store: Any, address: str, by: str, now: float) -> bool:
    """Lift the ban of ``address`` (and forget its strikes); False if it was not banned.  Records ``ban.lifted``."""
    db = store.db
    row = db[BANS].find_one(address=address, until={">": now})
    db[BANS].delete(address=address)
    if row is None:
        return False
    store.record_event(BAN_LIFTED, address=address, detail=f"lifted by {by}")
    return True


def expire(store: Any, now: float) -> List[BanRecord]:
    """
    The bans that ran out by ``now`` and were not told yet: each is marked
    and its ``ban.expired`` recorded, by this call only if no other process's
    call marked it first.  The row stays (its strikes count for the next ban).
    """
    db = store.db
    told = []
    for row in list(db[BANS].find(until={"<=": now})):
        if row["expired"]:
            continue
        with db as tx:
            bans = tx[BANS].table
            won = tx.executable.execute(
                update(bans).where(bans.c.address == row["address"], bans.c.until == row["until"],
                                   or_(bans.c.expired.is_(None), bans.c.expired == False))  # noqa: E712
                .values(expired=True)
            ).rowcount
        if won:
            record = _record(row)
            store.record_event(BAN_EXPIRED, address=record.address, detail=record.reason)
            told.append(record)
    return told


def expire_and_list(store: Any, now: float) -> List[BanRecord]:
    """``expire``, then the bans in force (``active``): one store call for the periodic refresh."""
    expire(store, now)
    return active(store.db, now)


def active(db: Any, now: float) -> List[BanRecord]:
    """The bans in force at ``now``, the longest-lasting first."""
    rows = db[BANS].find(until={">": now}, order_by=["-until"])
    return [_record(row) for row in rows]
