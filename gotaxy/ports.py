# -*- test-case-name: tests.test_ports -*-
"""
Which public port a tunnel gets.

The rules, in the order the server applies them (``ServerCore.open_tunnel``):

1. A tunnel that already has a port in the store keeps it, so a user's port
   never changes across reconnects or server restarts.
2. A requested port must lie in ``allowPorts`` (empty: any port) and must not
   be reserved by another tunnel.
3. ``remotePort = 0`` takes a random allowed port that no tunnel reserves;
   ``PortAllocator.candidates`` proposes them and the server tries to listen
   on each until one binds (another program may hold a port we know nothing
   of).  With no ``allowPorts`` the operating system picks.
"""

from __future__ import annotations

import random
from typing import Container, List, Optional, Sequence

from gotaxy.config import PortRange

#: How many candidate ports the server tries before giving up.
MAX_ATTEMPTS = 32


class PortAllocator:
    def __init__(self, allow_ports: Sequence[PortRange], rng: Optional[random.Random] = None) -> None:
        self.ranges = tuple(allow_ports)
        self._rng = rng or random.SystemRandom()
        self._size = sum(r.end - r.start + 1 for r in self.ranges)

    @property
    def unrestricted(self) -> bool:
        return not self.ranges

    def allowed(self, port: int) -> bool:
        if not 1 <= port <= 65535:
            return False
        return self.unrestricted or any(r.start <= port <= r.end for r in self.ranges)

    def _port_at(self, index: int) -> int:
        for r in self.ranges:
            width = r.end - r.start + 1
            if index < width:
                return r.start + index
            index -= width
        raise IndexError(index)

    def candidates(self, exclude: Container[int], limit: int = MAX_ATTEMPTS) -> List[int]:
        """Up to ``limit`` distinct allowed ports not in ``exclude``, in random order."""
        if self.unrestricted:
            return []
        if self._size <= 4 * limit:
            ports = [self._port_at(i) for i in range(self._size)]
            self._rng.shuffle(ports)
            return [p for p in ports if p not in exclude][:limit]
        chosen: List[int] = []
        seen = set()
        for _ in range(limit * 8):
            port = self._port_at(self._rng.randrange(self._size))
            if port in seen:
                continue
            seen.add(port)
            if port not in exclude:
                chosen.append(port)
                if len(chosen) == limit:
                    return chosen
        # A nearly full range: random picks mostly hit taken ports, so walk
        # the whole range (at most 65535 steps) from a random place instead of
        # reporting "no free port" while one is left.
        start = self._rng.randrange(self._size)
        for i in range(self._size):
            port = self._port_at((start + i) % self._size)
            if port not in seen and port not in exclude:
                chosen.append(port)
                if len(chosen) == limit:
                    break
        return chosen
