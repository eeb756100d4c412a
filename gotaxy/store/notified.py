# -*- test-case-name: tests.test_notify_once -*-
"""
Which events have had their notifications sent, and which node sends them
(``gotaxy.notify.once`` is the reactor side; the design is there).

Two columns of the events table: ``notify_node`` and ``notified``.  An
event's notifications are sent by its *sender*: ``notify_node`` if a node
took it over, else ``node``, the node that recorded it.  ``notified`` is
when the sender was done with it (delivered, failed for good, held back as
a flap, or wanted by no target); ``None`` while it is not.

An event is *orphaned* when it is not notified and its sender is no
running node: its lease in ``nodes`` ran out or ended, or it is ``None``
(the ``gotaxy`` command wrote it while a server ran).  A node takes an orphan over with one
``UPDATE ... WHERE`` that names the sender it saw, so of the nodes that
saw it orphaned exactly one wins.

The functions are synchronous and run on the store's thread; times come
from the caller's clock.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from sqlalchemy import and_, func, or_, select, update

from gotaxy.events import Event
from gotaxy.store.schema import NODES
from gotaxy.store.store import _event

#: Most orphans one read returns.
ORPHAN_BATCH = 100


def _sender(events: Any) -> Any:
    return func.coalesce(events.c.notify_node, events.c.node)


def mark(store: Any, ids: Sequence[int], now: float) -> int:
    """The events ``ids`` are notified (those that were not yet); how many changed."""
    if not ids:
        return 0
    events = store.db["events"].table
    with store.db as tx:
        return int(tx.executable.execute(
            update(events).where(events.c.id.in_(list(ids)), events.c.notified.is_(None)).values(notified=now)
        ).rowcount)


def orphans(store: Any, me: str, started: float, now: float,
            limit: int = ORPHAN_BATCH) -> List[Tuple[Event, Optional[str]]]:
    """
    Up to ``limit`` events other senders left orphaned, oldest first, each
    with the sender it had (for ``take``): those of stopped nodes, and those
    the ``gotaxy`` command wrote since ``started`` (what it wrote while no
    server ran is in the event log, not news, as for the outbox's tail).
    """
    events = store.db["events"].table
    nodes = store.db[NODES].table
    live = select(nodes.c.node_id).where(nodes.c.lease_until >= now)
    sender = _sender(events)
    return _events(store, select(events).where(
        events.c.notified.is_(None),
        or_(and_(sender.is_(None), events.c.at >= started), and_(sender != me, sender.not_in(live))),
    ).order_by(events.c.id).limit(limit))


def left_by(store: Any, me: str, after: int = 0, limit: int = ORPHAN_BATCH) -> List[Tuple[Event, Optional[str]]]:
    """
    Up to ``limit`` events with an id above ``after`` whose sender is
    ``me`` and that are not notified: at a start, those an earlier process
    of this node left (a restart within the lease, which no other node
    takes over), besides those this process is at work on (the caller
    tells them apart).
    """
    events = store.db["events"].table
    return _events(store, select(events).where(
        events.c.notified.is_(None), _sender(events) == me, events.c.id > after,
    ).order_by(events.c.id).limit(limit))


def _events(store: Any, query: Any) -> List[Tuple[Event, Optional[str]]]:
    with store.db as tx:
        rows = tx.executable.execute(query).mappings().all()
    return [(_event(dict(row)), row["notify_node"] or row["node"]) for row in rows]


def take(store: Any, event_id: int, sender: Optional[str], me: str) -> bool:
    """Make ``me`` the sender of an orphan whose sender was ``sender``; False if another node was first."""
    events = store.db["events"].table
    current = _sender(events)
    with store.db as tx:
        return bool(tx.executable.execute(
            update(events).where(
                events.c.id == event_id, events.c.notified.is_(None),
                current.is_(None) if sender is None else current == sender,
            ).values(notify_node=me)
        ).rowcount)
