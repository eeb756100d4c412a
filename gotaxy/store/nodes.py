# -*- test-case-name: tests.test_store_nodes -*-
"""
What the store knows about the server processes (nodes) sharing it, for
the nodes view of the panel, console and REST API (``Management.nodes``).

``list_nodes``: every row of ``nodes`` (a node that stopped cleanly deleted
its own; one whose lease ran out keeps its row until another node releases
it).  ``latest_samples``: the newest stability-history sample of each
tunnel (``history_samples``, written by the node holding the tunnel every
``history.sampleInterval``), which is how a node learns another node's
traffic without a connection to it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import attrs
from sqlalchemy import func, select

from gotaxy.store.schema import HISTORY_SAMPLES, NODES


@attrs.frozen
class NodeRecord:
    node: str
    host: str
    pid: int
    started_at: Optional[float]
    lease_until: Optional[float]


@attrs.frozen
class TunnelSample:
    at: float
    connections: int
    bytes_in: int  #: during the sample's interval
    bytes_out: int
    rate_in: float  #: at the sample's time, bytes a second
    rate_out: float


def list_nodes(store: Any) -> List[NodeRecord]:
    """Every node with a row in ``nodes``, by id."""
    nodes = store.db[NODES].table
    with store.db as tx:
        rows = tx.executable.execute(
            select(nodes.c.node_id, nodes.c.host, nodes.c.pid, nodes.c.started_at, nodes.c.lease_until)
            .order_by(nodes.c.node_id)
        ).fetchall()
    return [NodeRecord(node=r[0], host=r[1] or "", pid=int(r[2] or 0), started_at=r[3], lease_until=r[4])
            for r in rows]


def latest_samples(store: Any, since: float) -> Dict[Tuple[str, str], TunnelSample]:
    """The newest sample taken after ``since`` of each (client, tunnel)."""
    samples = store.db[HISTORY_SAMPLES].table
    newest = (
        select(samples.c.client, samples.c.tunnel, func.max(samples.c.at).label("at"))
        .where(samples.c.at > since, samples.c.tunnel != "").group_by(samples.c.client, samples.c.tunnel)
        .subquery()
    )
    query = select(samples.c.client, samples.c.tunnel, samples.c.at, samples.c.connections, samples.c.bytes_in,
                   samples.c.bytes_out, samples.c.rate_in, samples.c.rate_out).join(
        newest, (samples.c.client == newest.c.client) & (samples.c.tunnel == newest.c.tunnel)
        & (samples.c.at == newest.c.at))
    with store.db as tx:
        rows = tx.executable.execute(query).fetchall()
    return {(r[0], r[1]): TunnelSample(at=float(r[2]), connections=int(r[3] or 0), bytes_in=int(r[4] or 0),
                                       bytes_out=int(r[5] or 0), rate_in=float(r[6] or 0.0),
                                       rate_out=float(r[7] or 0.0))
            for r in rows}
