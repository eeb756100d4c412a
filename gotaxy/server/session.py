# -*- test-case-name: tests.test_lifecycle -*-
"""
What the server core needs from a client's control connection, and the lock
that puts every change to one client's tunnels in a row.

``ClientSession`` is the typed face of a logged-in client that
``ServerCore`` works with (``ServerControlProtocol`` implements it): who the
client is, which of its tunnels are up, and the few things the core tells
it.  The wire format of those messages belongs to the control protocol; the
core never builds one.

``ClientLocks`` is the one lock owner for a client's tunnels.  Everything
that opens, closes, pushes or removes a client's tunnel -- the client's own
``tunnel_open`` and ``tunnel_close``, and every operator action from the
panel, the console or the command line -- runs under its client's lock, one
at a time in the order asked, so none sees another half-way (a restart
cannot reopen a tunnel that a disable racing it has just closed).  The lock
is by client name, not by connection, so it also spans a reconnect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable, Dict, Optional, Protocol, Set, TypeVar, runtime_checkable

from twisted.internet.defer import DeferredLock

if TYPE_CHECKING:
    from gotaxy.proxy import ProxySpec
    from gotaxy.heartbeat import HeartbeatMonitor
    from gotaxy.server.tunnel import LiveTunnel

T = TypeVar("T")


@runtime_checkable
class ClientSession(Protocol):
    """A client's control connection, as the server core sees it."""

    #: The client's name once logged in (None before).
    client_name: Optional[str]
    #: "host:port" the connection comes from.
    peer_address: str
    client_version: str
    #: Logged in with a per-client token from the store (not the shared auth.token).
    token_checked: bool
    #: The installation id the client sent at log-in ("" if none).
    instance: str
    #: The connection is gone.
    lost: bool
    #: The core has forgotten this session (kicked, replaced, shut down, lost).
    dropped: bool
    #: Its tunnels that are up, by name.
    tunnels: Dict[str, "LiveTunnel"]
    #: Operator-defined tunnels removed while this session lasts: a
    #: tunnel_open for one, sent before the client heard of the removal,
    #: must not bring it back.
    removed_tunnels: Set[str]
    #: Operator-defined tunnels sent to the client (name -> local description) that
    #: it has not declined: only those may be declined.
    offered: Dict[str, str]
    #: Refused tunnel -> when (reactor time) the client asks for it again.
    retry_at: Dict[str, float]
    heartbeat: Optional["HeartbeatMonitor"]

    def offer_tunnel(self, name: str, spec: "ProxySpec") -> None:
        """Send the client an operator-defined tunnel; it opens or declines it."""

    def withdraw_tunnel(self, name: str) -> None:
        """Tell the client an operator-defined tunnel is gone: it forgets it."""

    def tunnel_up(self, tunnel: "LiveTunnel") -> None:
        """Tell the client its tunnel is open."""

    def tunnel_down(self, name: str, reason: str) -> None:
        """Tell the client its tunnel was closed by the server (it does not ask again)."""

    def close_with_error(self, reason: str) -> None:
        """Tell the client why, and close the connection."""

    def goodbye(self, reason: str, within: float) -> None:
        """The server is stopping: ask the client to reconnect within ``within`` seconds, and close."""


class ClientLocks:
    """
    One ``DeferredLock`` per client name, made when first needed and
    forgotten when nobody holds or waits for it (so the table holds only
    clients with work in progress).
    """

    def __init__(self) -> None:
        self._locks: Dict[str, DeferredLock] = {}

    def busy(self, client: str) -> bool:
        """Something holds ``client``'s lock now."""
        return client in self._locks

    async def run(self, client: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work()`` when every earlier change to ``client``'s tunnels is done."""
        lock = self._locks.get(client)
        if lock is None:
            lock = self._locks[client] = DeferredLock()
        await lock.acquire()
        try:
            return await work()
        finally:
            lock.release()  # hands it straight to the next waiter, if any
            if not lock.locked and self._locks.get(client) is lock:
                del self._locks[client]


__all__ = ["ClientSession", "ClientLocks"]
