# -*- test-case-name: tests.test_node_commands -*-
"""
Operator commands addressed to a node (``node_commands``): how an action
issued on one server process reaches the process that holds the client
(``gotaxy.server.commands`` is the reactor side; the design is there).

One row per command: ``node`` (who is to carry it out), ``kind`` and
``args`` (JSON), ``who`` asked, ``created``; then ``taken`` (set once, by
the one UPDATE ... WHERE taken IS NULL that the owner wins) and ``done``
with ``result`` (JSON: ``{"ok": true}`` or ``{"error": {"kind", "message",
"field"}}``, as ``ManagementError`` carries).  A command the issuer gave up
on before it was taken is marked done with a ``timeout`` result by the same
kind of UPDATE, so it is never carried out after the operator was told it
failed.  Old rows go with the retention job (``expire``).

Sizes are bounded here, whatever the caller: the arguments at
``MAX_ARGS`` bytes of JSON, the result at ``MAX_RESULT``.  The functions
are synchronous and run on the store's thread; times come from the
caller's clock.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import attrs
from sqlalchemy import delete, insert, select, update

from gotaxy.store.schema import NODE_COMMANDS, NODES

#: Longest arguments (JSON, bytes): a tunnel's settings fit many times over.
MAX_ARGS = 64 * 1024
#: Longest result kept (JSON, bytes): a longer error message is cut, a longer view left out.
MAX_RESULT = 64 * 1024
#: Most commands one node takes in one read.
TAKE_BATCH = 20


class NodeUnavailable(Exception):
    """The node a command is for has no lease running (``lease_until``: when it ran out, or None: no row)."""

    def __init__(self, node: str, lease_until: Optional[float]) -> None:
        super().__init__(node)
        self.node = node
        self.lease_until = lease_until


@attrs.frozen
class CommandRecord:
    id: int
    node: str
    kind: str
    args: Dict[str, Any]
    who: str
    created: float


def lease_of(store: Any, node: str) -> Optional[float]:
    """When ``node``'s lease runs out, or None if it has no row (it stopped, or was released)."""
    nodes = store.db[NODES].table
    with store.db as tx:
        row = tx.executable.execute(select(nodes.c.lease_until).where(nodes.c.node_id == node)).first()
    return None if row is None else float(row[0])


def holder(store: Any, client: str) -> Optional[str]:
    """The node that holds ``client`` online, or None (offline, or held by no node)."""
    clients = store.db["clients"].table
    with store.db as tx:
        row = tx.executable.execute(
            select(clients.c.node).where(clients.c.name == client, clients.c.online == True)  # noqa: E712
        ).first()
    return None if row is None else row[0]


def send(store: Any, node: str, kind: str, args: Dict[str, Any], who: str, now: float) -> int:
    """
    Address a command to ``node``; its id.  ``NodeUnavailable`` at once if
    the node's lease has run out (no one would take it), ``ValueError`` if
    the arguments are over ``MAX_ARGS``.
    """
    lease = lease_of(store, node)
    if lease is None or lease < now:
        raise NodeUnavailable(node, lease)
    text = json.dumps(args, separators=(",", ":"), sort_keys=True)
    if len(text.encode("utf-8")) > MAX_ARGS:
        raise ValueError(f"the command's arguments are over {MAX_ARGS // 1024} KiB")
    table = store.db[NODE_COMMANDS].table
    with store.db as tx:
        result = tx.executable.execute(insert(table).values(
            node=node, kind=kind[:32], args=text, who=who[:128], created=now))
        return int(result.inserted_primary_key[0])


def take(store: Any, node: str, now: float, limit: int = TAKE_BATCH) -> List[CommandRecord]:
    """
    The commands for ``node`` nobody took yet, oldest first, each claimed by
    one conditional UPDATE: of two readers, one takes it.
    """
    table = store.db[NODE_COMMANDS].table
    with store.db as tx:
        rows = list(tx.executable.execute(
            select(table.c.id, table.c.kind, table.c.args, table.c.who, table.c.created)
            .where(table.c.node == node, table.c.taken.is_(None)).order_by(table.c.id).limit(limit)
        ))
    taken = []
    for row in rows:
        with store.db as tx:
            won = tx.executable.execute(
                update(table).where(table.c.id == row[0], table.c.taken.is_(None)).values(taken=now)
            ).rowcount
        if not won:
            continue
        try:
            args = json.loads(row[2] or "{}")
        except ValueError:
            args = None
        taken.append(CommandRecord(id=int(row[0]), node=node, kind=row[1] or "",
                                   args=args if isinstance(args, dict) else {}, who=row[3] or "",
                                   created=float(row[4] or 0.0)))
    return taken


def _result_text(result: Dict[str, Any]) -> str:
    text = json.dumps(result, separators=(",", ":"))
    if len(text.encode("utf-8")) <= MAX_RESULT:
        return text
    if "error" not in result:
        return json.dumps({"ok": True}, separators=(",", ":"))  # the issuer reads the view from the store
    error = dict(result.get("error") or {})
    error["message"] = str(error.get("message", ""))[:1024] + " ..."
    error["field"] = str(error.get("field") or "")[:128] or None
    return json.dumps({"error": {k: error.get(k) for k in ("kind", "message", "field")}}, separators=(",", ":"))


def finish(store: Any, command_id: int, result: Dict[str, Any], now: float) -> bool:
    """Write a taken command's result; False if it was marked done already."""
    table = store.db[NODE_COMMANDS].table
    with store.db as tx:
        return bool(tx.executable.execute(
            update(table).where(table.c.id == command_id, table.c.done.is_(None))
            .values(done=now, result=_result_text(result))
        ).rowcount)


def result_of(store: Any, command_id: int) -> Optional[Dict[str, Any]]:
    """A command's result once it is done, else None."""
    table = store.db[NODE_COMMANDS].table
    with store.db as tx:
        row = tx.executable.execute(
            select(table.c.done, table.c.result).where(table.c.id == command_id)).first()
    if row is None or row[0] is None:
        return None
    try:
        value = json.loads(row[1] or "{}")
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"error": {"kind": "internal", "message": "unreadable result"}}


def give_up(store: Any, command_id: int, now: float) -> bool:
    """
    The issuer stops waiting: a command not taken yet is marked done (it will
    never be carried out); True if so, False if its node had taken it.
    """
    table = store.db[NODE_COMMANDS].table
    with store.db as tx:
        return bool(tx.executable.execute(
            update(table).where(table.c.id == command_id, table.c.taken.is_(None))
            .values(taken=now, done=now, result=_result_text({"error": {"kind": "timeout", "message": "not taken"}}))
        ).rowcount)


def expire(store: Any, before: float, limit: int = 1000) -> int:
    """Delete up to ``limit`` commands created before ``before``; how many went."""
    table = store.db[NODE_COMMANDS].table
    with store.db as tx:
        ids = [row[0] for row in tx.executable.execute(
            select(table.c.id).where(table.c.created < before).order_by(table.c.id).limit(limit))]
        if not ids:
            return 0
        return int(tx.executable.execute(delete(table).where(table.c.id.in_(ids))).rowcount)
