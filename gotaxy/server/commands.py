# -*- test-case-name: tests.test_node_commands -*-
"""
Operator commands that reach the node holding the client.

Several server processes (nodes) may share one store; a client's control
connection, its listeners and its lock live in the one process it is
connected to (``clients.node``).  An action that needs the live session
(kick, disable, enable, restart, edit, remove, add a tunnel: the push to
the client) issued on another node is sent there through the store:

    issuer                                     owner (holds the client)
    Management._on_owner
      send: INSERT node_commands  ------->     CommandChannel poll (every POLL_INTERVAL)
           (refused at once if the               take: UPDATE ... SET taken WHERE taken IS NULL
            owner's lease ran out)               Management.perform: the same action, here
      wait: read the row's result  <-------      finish: UPDATE ... SET done, result
           every ANSWER_POLL, at most
           ANSWER_TIMEOUT seconds

What the issuer reports is what the owner's ``Management`` raised or
returned, so the panel, the REST API and the console show a remote result
exactly as a local one.  If no answer comes within ``ANSWER_TIMEOUT`` the
issuer takes the command back (``give_up``: it is marked done unless the
owner took it already, so it can never run after the operator was told it
failed) and says which node did not answer and until when its lease runs.

Why polling, also on PostgreSQL: the poll works on every database the store
runs on, through the store's one thread like every other call, and one
indexed SELECT every quarter second per node is cheap; with it an answer
comes within POLL_INTERVAL + ANSWER_POLL plus the action itself, well
within a second.  ``LISTEN``/``NOTIFY`` would need a connection of its own
held outside the store's thread, and a notification sent while that
connection reconnects is lost, so the poll would be needed anyway.

The owner's read loop is ``gotaxy.server.poller.StorePoller``, the one the
event outbox's tail uses too.  Everything runs on the reactor's clock,
every store call through ``ThreadedStore``.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Dict, Optional

from twisted.internet.task import deferLater

from gotaxy.server.poller import StorePoller
from gotaxy.store import commands as stored
from gotaxy.store.commands import NodeUnavailable

#: Seconds between two reads of the commands addressed to this node.
POLL_INTERVAL = 0.25
#: Seconds between two reads of a sent command's result.
ANSWER_POLL = 0.1
#: Seconds an issuer waits for the owner's answer.
ANSWER_TIMEOUT = 5.0

__all__ = ["CommandChannel", "NodeSilent", "NodeUnavailable", "when"]

#: Carries out one command here: (kind, arguments, who asked) -> result
#: (``{"ok": True, ...}`` or ``{"error": {"kind", "message", "field"}}``).
Perform = Callable[[str, Dict[str, Any], str], Awaitable[Dict[str, Any]]]


def when(at: Optional[float]) -> str:
    """A lease's end for people: ``2026-12-02 08:01:15 UTC``."""
    if at is None:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


class NodeSilent(Exception):
    """No answer in time: ``taken`` says whether the node had started on it (it may still take effect)."""

    def __init__(self, node: str, waited: float, taken: bool, lease_until: Optional[float]) -> None:
        # waited: the channel's timeout (what the operator is told), not the seconds measured
        super().__init__(node)
        self.node = node
        self.waited = waited
        self.taken = taken
        self.lease_until = lease_until


class CommandChannel(StorePoller):
    name = "node-commands"
    reading = "the commands for this node"

    def __init__(self, store: Any, reactor: Any, perform: Perform, interval: float = POLL_INTERVAL,
                 answer_poll: float = ANSWER_POLL, timeout: float = ANSWER_TIMEOUT) -> None:
        super().__init__(reactor, interval)
        self.store = store  #: a ThreadedStore
        self.perform = perform
        self.answer_poll = answer_poll
        self.timeout = timeout

    @property
    def node(self) -> str:
        return self.store.store.node  # type: ignore[no-any-return]

    # -- the owner: take what is addressed here, carry it out, answer ----------

    async def poll(self) -> bool:
        await self.serve()
        return False

    async def serve(self) -> int:
        """Carry out the commands addressed to this node, oldest first, one at a time; how many."""
        db = self.store.store
        commands = await self.store.call(stored.take, db, self.node, self.reactor.seconds())
        for command in commands:
            try:
                result = await self.perform(command.kind, command.args, command.who)
            except Exception:  # a bug: told to the issuer as such, the traceback in our log
                self.log.failure("node command {id} ({kind}) failed", id=command.id, kind=command.kind)
                result = {"error": {"kind": "internal", "message": f"node {self.node} failed to carry out "
                                    f"{command.kind!r}; its log says why", "field": None}}
            await self.store.call(stored.finish, db, command.id, result, self.reactor.seconds())
        return len(commands)

    # -- the issuer: send, wait for the answer ---------------------------------

    async def send(self, node: str, kind: str, args: Dict[str, Any], who: str) -> Dict[str, Any]:
        """
        Have ``node`` carry out ``kind``; its result.  ``NodeUnavailable`` at
        once if its lease ran out, ``NodeSilent`` after ``timeout`` seconds
        without an answer.
        """
        db = self.store.store
        started = self.reactor.seconds()
        command_id = await self.store.call(stored.send, db, node, kind, args, who, started)
        while True:
            await deferLater(self.reactor, self.answer_poll, lambda: None)
            result = await self.store.call(stored.result_of, db, command_id)
            if result is not None:
                return result  # type: ignore[no-any-return]
            now = self.reactor.seconds()
            if now - started >= self.timeout:
                withdrawn = await self.store.call(stored.give_up, db, command_id, now)
                if not withdrawn:  # it was taken meanwhile: perhaps it is done by now
                    result = await self.store.call(stored.result_of, db, command_id)
                    if result is not None:
                        return result  # type: ignore[no-any-return]
                lease = await self.store.call(stored.lease_of, db, node)
                raise NodeSilent(node, self.timeout, not withdrawn, lease)
