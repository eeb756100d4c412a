# -*- test-case-name: tests.test_proxy,tests.test_claims -*-
"""
Who may hold a public address: the ``Claims`` the core hands a proxy type's
``expose`` for one tunnel.

``PortReservations`` applies the server's rules (``gotaxy.ports``:
``allowPorts``, the server's own ports; ``gotaxy.server.domains``: which host
names a client may ask for) and then claims the address in the
store's claims table (``gotaxy.store.claims``): one INSERT per key of the
address (``PublicAddress.claim_keys``), which fails if another tunnel, of
this server process or another one on the same database, holds it.  The
refusal names the holder.  A tunnel keeps its claim across reconnects and
restarts; what it claimed afresh and could not serve is given back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Set, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gotaxy.proxy.address import PublicAddress
from gotaxy.proxy.base import Claims, SpecError, TunnelRefused
from gotaxy.store.claims import Claimed

if TYPE_CHECKING:
    from gotaxy.server.core import ServerCore


class PortReservations(Claims):
    log = Logger()

    def __init__(self, core: "ServerCore", key: Tuple[str, str], reserved: Optional[PublicAddress]) -> None:
        self.core = core
        self.key = key
        self.reserved = reserved
        #: Addresses claimed by this object (not held before): given back by ``release``.
        self._fresh: Set[PublicAddress] = set()

    def check_rules(self, address: PublicAddress) -> None:
        """Raise TunnelRefused unless this server's rules let a tunnel have ``address``."""
        if address.by_port:
            refusal = self.core.ports.refusal(address.port)
            if refusal is not None:
                raise TunnelRefused(refusal)

    async def check_names(self, address: PublicAddress) -> None:
        """Raise SpecError about ``customDomains`` unless the client may ask for ``address``'s names."""
        if address.hosts:
            refusal = await self.core.domains.refusal(self.key[0], address.hosts)
            if refusal is not None:
                raise SpecError(refusal, "customDomains")

    async def claim(self, address: PublicAddress) -> None:
        self.check_rules(address)
        try:
            await self.check_names(address)
        except SpecError as e:
            raise TunnelRefused(str(e)) from None
        store = self.core.store
        client, name = self.key
        try:
            fresh = await store.call(store.store.claim_address, client, name, address)
        except Claimed as e:
            raise TunnelRefused(str(e)) from None
        if fresh:
            self._fresh.add(address)

    def release(self, address: PublicAddress) -> "Deferred[Any]":
        """Give back ``address`` if ``claim`` took it afresh; one the tunnel held before stays its own."""
        if address not in self._fresh:
            return succeed(None)
        self._fresh.discard(address)
        store = self.core.store
        client, name = self.key
        released: "Deferred[Any]" = store.call(store.store.release_address, client, name, address)
        released.addErrback(
            lambda failure: self.log.failure("cannot give back the claim on {address}", failure,
                                             address=address.description)
        )
        return released

    async def held_ports(self, scheme: str) -> Set[int]:
        store = self.core.store
        return set(await store.call(store.store.held_ports, scheme))

    def port_candidates(self, held: Set[int]) -> Any:
        return self.core.ports.candidates(held)

    @property
    def any_port(self) -> bool:
        return bool(self.core.ports.unrestricted)
