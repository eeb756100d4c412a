# -*- test-case-name: tests.test_live_limits -*-
"""
Server-wide settings an operator changed live (panel, console, REST API),
kept in the store so that every server process sharing it holds the same
value and a restart keeps it.  ``ServerCore`` holds the in-memory copy and
applies it (``ServerCore.apply_overrides``).

One row of ``settings`` per setting: key ``live.<frp key>``
(``live.maxBandwidth``), value JSON ``{"value": 104857600, "by": "console
operator admin from 127.0.0.1:5555", "at": 1764680000.0}``.  One row per
key, so that two processes changing two settings never overwrite each
other; for one setting the last write wins.  A cleared setting's row is
deleted: server.toml's value applies again.

Which wins: the live value, while there is one.  A reload of server.toml
keeps it (the reload's report says that the file's value waits behind it);
``limits clear KEY`` (or ``null`` over REST) gives the file's back.

Each set and clear records ``limits.changed`` (address: who; detail: the
setting, its new value and what it replaced) in the same transaction.
Every server process hears it, from its own bus or the events table
(``gotaxy.server.outbox``), and re-reads the rows (``read``): so the
processes agree within one poll of the outbox even if two changes cross.
The functions are synchronous and run on the store's thread
(``ThreadedStore.call``).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

import attrs
from sqlalchemy.exc import IntegrityError

from gotaxy.events import LIMITS_CHANGED
from gotaxy.units import format_rate

#: The settings that can be changed live: frp-style key -> what a value is.
KEYS: Dict[str, str] = {
    "maxBandwidth": "bytes a second each way for all clients together",
    "maxBandwidthPerClient": "bytes a second each way for each client without a limit of its own",
}
#: The settings rows' key prefix.
PREFIX = "live."
#: Longest "who" kept with a value.
MAX_BY = 200


@attrs.frozen
class Override:
    """One setting's live value, who set it and when."""

    key: str
    value: int
    by: str
    at: float

    def to_json(self) -> Dict[str, Any]:
        return {"value": self.value, "by": self.by, "at": self.at}


def shown(value: int) -> str:
    """A rate as the event and the console say it ("no limit" for 0)."""
    return format_rate(value) if value else "no limit"


def read(store: Any) -> Dict[str, Override]:
    """The live values in the store, by key (a row this version cannot read is skipped)."""
    found: Dict[str, Override] = {}
    for row in store.db["settings"].find():
        key = str(row["key"])
        if not key.startswith(PREFIX) or key[len(PREFIX):] not in KEYS:
            continue
        try:
            data = json.loads(row["value"])
            value = data["value"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                continue
            found[key[len(PREFIX):]] = Override(key[len(PREFIX):], value, str(data.get("by") or "")[:MAX_BY],
                                                float(data.get("at") or 0.0))
        except (ValueError, TypeError, KeyError):
            continue
    return found


def put(store: Any, key: str, value: int, by: str, now: float, file_value: int) -> Dict[str, Override]:
    """
    Make ``value`` the live value of ``key`` (a key of ``KEYS``); records
    ``limits.changed``, saying what it replaced (the live value before, or
    ``file_value``, server.toml's).  Returns every live value now (``read``).
    """
    assert key in KEYS, key
    override = Override(key, value, by[:MAX_BY], now)
    row = dict(key=PREFIX + key, value=json.dumps(override.to_json()))
    for attempt in range(2):
        try:
            with store.db as tx:
                old = _one(tx, key)
                tx["settings"].upsert(row, ["key"])
                was = f"live {shown(old.value)}" if old is not None else f"server.toml's {shown(file_value)}"
                store.record_event(LIMITS_CHANGED, address=override.by, detail=f"{key} {shown(value)} (was {was})")
            break
        except IntegrityError:  # another process inserted the row between our update and insert: update it
            if attempt:
                raise
    return read(store)


def clear(store: Any, key: str, by: str, file_value: int) -> Optional[Dict[str, Override]]:
    """
    Remove ``key``'s live value, so that server.toml's (``file_value``)
    applies; every live value left (``read``), or None if ``key`` had none
    (then nothing is recorded).  Records ``limits.changed``.
    """
    assert key in KEYS, key
    with store.db as tx:
        old = _one(tx, key)
        if old is None:
            return None
        tx["settings"].delete(key=PREFIX + key)
        store.record_event(LIMITS_CHANGED, address=by[:MAX_BY],
                           detail=f"{key} back to server.toml's {shown(file_value)} (was live {shown(old.value)})")
    return read(store)


def _one(db: Any, key: str) -> Optional[Override]:
    row = db["settings"].find_one(key=PREFIX + key)
    if row is None:
        return None
    try:
        data = json.loads(row["value"])
        return Override(key, int(data["value"]), str(data.get("by") or ""), float(data.get("at") or 0.0))
    except (ValueError, TypeError, KeyError):
        return Override(key, 0, "", 0.0)  # unreadable: replaced all the same
