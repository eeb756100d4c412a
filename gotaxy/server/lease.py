# -*- test-case-name: tests.test_store_nodes -*-
"""
This server process as a node of the store (see ``gotaxy.store.store``,
"Nodes"): its id, kept in ``DATA_DIR/node-id``, and ``NodeLease``, the
service that renews its lease in the store every ``RENEW`` seconds and
releases the rows of nodes whose lease ran out.

Every store call goes through the ``ThreadedStore``; the timer runs on the
reactor it is given.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer

NODE_ID_FILE = "node-id"
#: Seconds a lease lasts, and seconds between renewals (three tries before it runs out).
LEASE = 30.0
RENEW = 10.0


def node_id(data_dir: str) -> str:
    """
    This data directory's node id: read from ``DATA_DIR/node-id``, made at
    the first start (the host name and 8 random hex digits).  One data
    directory serves one process at a time (``DataDirLock``), so one id is
    one process.
    """
    path = os.path.join(data_dir, NODE_ID_FILE)
    try:
        with open(path) as f:
            value = f.read().strip()
        if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
            return value
    except FileNotFoundError:
        pass
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:40].strip("-") or "node"
    value = f"{host}-{secrets.token_hex(4)}"
    with open(path, "w") as f:
        f.write(value + "\n")
    return value


class NodeLease(Service):
    log = Logger(observer=gotaxy_observer)
    name = "node-lease"

    def __init__(self, store: Any, core: Any, reactor: Any, lease: float = LEASE, renew: float = RENEW) -> None:
        self.store = store  # ThreadedStore; its Store has joined (``join_node``) before
        self.core = core
        self.lease = lease
        self._timer = LoopingCall(self.renew)
        self._timer.clock = reactor
        self._renewing: Optional[Deferred] = None

    def startService(self) -> None:
        super().startService()
        self._timer.start(self.renew_interval, now=False)

    @property
    def renew_interval(self) -> float:
        return min(RENEW, self.lease / 3)

    def renew(self) -> Deferred:
        """Renew the lease (taking back what is live here if it had run out), then release expired nodes."""
        if self._renewing is not None:
            return self._renewing  # the store is slow; the next tick tries again
        db = self.store.store
        clients = list(self.core.sessions)
        tunnels = list(self.core.tunnels)

        def work() -> Any:
            kept = db.renew_node(self.lease, clients, tunnels)
            return kept, db.release_expired_nodes()

        def done(result: Any) -> None:
            kept, released = result
            if not kept:
                self.log.warn(
                    "node {node}: our lease in the store had run out (the database was unreachable or this "
                    "process stalled for over {lease:g} s), so another server marked our clients offline; "
                    "they are marked online again", node=db.node, lease=self.lease,
                )
            for node in released:
                self.log.info("node {node} stopped renewing its lease: its clients are marked offline", node=node)

        def failed(failure: Any) -> None:
            self.log.warn("node {node}: could not renew our lease in the store: {error}", node=db.node,
                          error=failure.getErrorMessage())

        def finished(_: Any) -> None:
            self._renewing = None

        d = self.store.call(work)
        d.addCallbacks(done, failed)
        d.addBoth(finished)
        self._renewing = d
        return d

    def stopService(self) -> Deferred:
        super().stopService()
        if self._timer.running:
            self._timer.stop()
        pending = self._renewing if self._renewing is not None else succeed(None)
        # The lease ends at a clean stop: no server waits for it to run out.
        pending.addBoth(lambda _: self.store.call(self.store.store.leave_node))
        pending.addErrback(lambda f: self.log.warn("could not end our lease: {e}", e=f.getErrorMessage()))
        return pending
