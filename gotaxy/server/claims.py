# -*- test-case-name: tests.test_proxy -*-
"""
Who may hold a public address: the ``Claims`` the core hands a proxy type's
``expose`` for one tunnel.

``PortReservations`` applies today's rules: the port rules of
``gotaxy.ports`` (``allowPorts``, the server's own ports), the addresses the
store keeps for tunnels (a tunnel keeps its port across reconnects and
restarts) and the tunnels up in this process.  The claims table replaces
its reads with one INSERT per claim; the proxy types do not change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Set, Tuple

from gotaxy.proxy.address import PublicAddress
from gotaxy.proxy.base import Claims, TunnelRefused

if TYPE_CHECKING:
    from gotaxy.server.core import ServerCore


class PortReservations(Claims):
    def __init__(self, core: "ServerCore", key: Tuple[str, str], reserved: Optional[PublicAddress]) -> None:
        self.core = core
        self.key = key
        self.reserved = reserved

    def _live(self) -> Set[PublicAddress]:
        return {t.address for k, t in self.core.tunnels.items() if k != self.key and t.address is not None}

    async def claim(self, address: PublicAddress) -> None:
        if address.by_port:
            refusal = self.core.ports.refusal(address.port)
            if refusal is not None:
                raise TunnelRefused(refusal)
        core = self.core
        owner = await core.store.call(core.store.store.address_owner, address)
        if owner is not None and tuple(owner) != self.key:
            raise TunnelRefused(f"{address.description} is reserved by tunnel {owner[1]!r} of client {owner[0]!r}")
        if address in self._live():
            raise TunnelRefused(f"{address.description} is used by another tunnel")

    def release(self, address: PublicAddress) -> None:
        """Nothing to give back: ``claim`` only checked."""

    async def held_ports(self, scheme: str) -> Set[int]:
        core = self.core
        stored = await core.store.call(core.store.store.held_ports, scheme)
        return set(stored) | {a.port for a in self._live() if a.scheme == scheme and a.by_port}

    def port_candidates(self, held: Set[int]) -> Any:
        return self.core.ports.candidates(held)

    @property
    def any_port(self) -> bool:
        return bool(self.core.ports.unrestricted)
