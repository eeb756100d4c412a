# -*- test-case-name: tests.test_store_nodes -*-
"""
This server process as a node of the store (see ``gotaxy.store.store``,
"Nodes"): its id, kept in ``DATA_DIR/node-id``, and ``NodeLease``, the
service that renews its lease in the store every ``RENEW`` seconds and
releases the rows of nodes whose lease ran out.

Every store call goes through the ``ThreadedStore``; the timer runs on the
reactor it is given.

When the database is unreachable
    A renewal that fails is logged and tried again at the next tick; the
    node goes on serving its connected clients and tunnels (nothing here
    closes anything).  No other node can write either, so no node marks
    anything offline during the outage, and claims (ports, domains, names)
    belong to clients and tunnels, not to leases: no node can take them.
    When the database is back:

    * an outage shorter than ``LEASE - RENEW`` (20 s): every lease still
      runs when its node renews it; nothing visible happens;
    * a longer one: every node's lease ran out while nobody could renew.
      A node whose renewal failed therefore releases no other node for one
      ``LEASE`` after its first renewal that works again (``grace``): by
      then every live node has renewed its own (each tries every
      ``RENEW``), and only the dead ones are released.  Should a node still
      find its own lease released (it came back later than another node's
      grace, or only it lost the database), ``renew_node`` marks its
      clients and tunnels online again, and the warning below says so.
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
#: Seconds a lease lasts by default (``cluster.leaseSeconds``), and seconds between renewals (a
#: third of it: three tries before it runs out).
LEASE = 30.0
RENEW = LEASE / 3


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
        self._clock = reactor
        self._failed = False  # the last renewal failed (the database was unreachable)
        #: Until when (reactor seconds) this node releases no other node: a lease after the store came back.
        self.grace_until = 0.0

    def startService(self) -> None:
        super().startService()
        self._timer.start(self.renew_interval, now=False)

    @property
    def renew_interval(self) -> float:
        """A third of the lease: three tries before it runs out."""
        return self.lease / 3

    def renew(self) -> Deferred:
        """Renew the lease (taking back what is live here if it had run out), then release expired nodes."""
        if self._renewing is not None:
            return self._renewing  # the store is slow; the next tick tries again
        db = self.store.store
        clients = list(self.core.sessions)
        tunnels = list(self.core.tunnels)

        if self._failed:
            # Back from a failure: the others' leases may have run out only because nobody could renew.
            self.grace_until = self._clock.seconds() + self.lease
        releasing = self._clock.seconds() >= self.grace_until

        def work() -> Any:
            kept = db.renew_node(self.lease, clients, tunnels)
            return kept, db.release_expired_nodes() if releasing else []

        def done(result: Any) -> None:
            if self._failed:
                self._failed = False
                self.log.info("node {node}: our lease in the store is renewed again; other nodes' leases are "
                              "released only after {lease:g} s, when theirs are renewed too",
                              node=db.node, lease=self.lease)
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
            if self._failed:
                return  # said once per outage
            self._failed = True
            self.log.warn("node {node}: could not renew our lease in the store: {error}; our clients stay "
                          "connected, and it is tried again every {interval:g} s", node=db.node,
                          error=failure.getErrorMessage(), interval=self.renew_interval)

        def finished(_: Any) -> None:
            self._renewing = None

        d = self.store.call(work)
        self._renewing = d  # before the callbacks: a store that answers at once (tests) has fired already
        d.addCallbacks(done, failed)
        d.addBoth(finished)
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
