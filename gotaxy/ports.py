# -*- test-case-name: tests.test_ports -*-
"""
Which public port a tunnel gets.

The rules, in the order the server applies them (``ServerCore.open_tunnel``):

1. A tunnel that already has a port in the store keeps it, so a user's port
   never changes across reconnects or server restarts (the rules below still
   apply to it: a port the operator no longer allows is refused).
2. The server's own listening ports (the control port, the web panel with
   ``/metrics``, the SSH console) are never a tunnel's, whatever
   ``allowPorts`` says: a client that got one could take the operator's
   panel over once the server restarts.
3. A requested port must lie in ``allowPorts``.  With ``allowPorts`` unset
   that means the unprivileged ports, 1024-65535: ports below 1024 (22, 80,
   443, ...) belong to the machine's own services, and a client gets one only
   when the operator lists it in ``allowPorts``.  It must not be reserved by
   another tunnel either.
4. ``remotePort = 0`` takes a random allowed port that no tunnel reserves;
   ``PortAllocator.candidates`` proposes them and the server tries to listen
   on each until one binds (another program may hold a port we know nothing
   of).  With no ``allowPorts`` the operating system picks, from its
   ephemeral range (above 1024 on every system Gotaxy runs on).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Container, Dict, List, Mapping, Optional, Sequence

from gotaxy.config import PortRange, format_allow_ports
from gotaxy.listeners import endpoint_port

if TYPE_CHECKING:
    from gotaxy.config import ServerConfig

#: How many candidate ports the server tries before giving up.
MAX_ATTEMPTS = 32

#: Ports below this are privileged: only an explicit ``allowPorts`` hands them out.
FIRST_UNPRIVILEGED = 1024

#: What ``allowPorts`` means when it is not set.
DEFAULT_ALLOW_PORTS = (PortRange(FIRST_UNPRIVILEGED, 65535),)


def server_ports(config: "ServerConfig") -> Dict[int, str]:
    """The server's own listening ports (port -> what listens there), none of them a tunnel's."""
    own: Dict[int, str] = {}
    for port, endpoint, what in (
        (config.console.port, config.console.endpoint, "SSH console port (console.port)"),
        (config.web.port, config.web.endpoint, "web panel and metrics port (webServer.port)"),
        (config.bind_port, config.bind_endpoint, "control port (bindPort)"),
        (config.vhost.http_port, None, "HTTP virtual-host port (vhostHTTPPort)"),
        (config.https.port, None, "HTTPS port for websites (vhostHTTPSPort)"),
    ):
        if endpoint:
            # The port in the endpoint string, if it names one (systemd's
            # sockets are busy anyway: a tunnel there is refused as busy).
            port = endpoint_port(endpoint) or 0
            what = what.split(" (")[0] + f" ({endpoint})"
        if port:
            own[port] = what
    return own


class PortAllocator:
    def __init__(
        self,
        allow_ports: Sequence[PortRange],
        own_ports: Optional[Mapping[int, str]] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        #: The ranges the operator listed (empty: ``allowPorts`` is not set).
        self.configured = tuple(allow_ports)
        #: The ranges tunnels may use.
        self.ranges = self.configured or DEFAULT_ALLOW_PORTS
        self.own_ports: Dict[int, str] = dict(own_ports or {})
        self._rng = rng or random.SystemRandom()
        self._size = sum(r.end - r.start + 1 for r in self.ranges)

    @property
    def unrestricted(self) -> bool:
        """``allowPorts`` is not set: the operating system picks ports for ``remotePort = 0``."""
        return not self.configured

    def allowed(self, port: int) -> bool:
        return self.refusal(port) is None

    def refusal(self, port: int) -> Optional[str]:
        """Why a tunnel may not have ``port`` (one sentence naming the fix), or None if it may."""
        if not 1 <= port <= 65535:
            return f"port {port} is not a TCP port; use a port from 1 to 65535"
        own = self.own_ports.get(port)
        if own is not None:
            return f"port {port} is this server's own {own} and never a tunnel's; choose another remotePort"
        if any(r.start <= port <= r.end for r in self.ranges):
            return None
        if self.unrestricted:
            return (
                f"port {port} is a privileged port (below {FIRST_UNPRIVILEGED}), which this server "
                f"hands out only if its operator lists it in allowPorts; choose a remotePort from "
                f"{FIRST_UNPRIVILEGED} to 65535"
            )
        return (
            f"port {port} is not allowed on this server (allowPorts: {format_allow_ports(self.ranges)}); "
            "choose a remotePort in that list or 0 to get one"
        )

    def _port_at(self, index: int) -> int:
        for r in self.ranges:
            width = r.end - r.start + 1
            if index < width:
                return r.start + index
            index -= width
        raise IndexError(index)

    def candidates(self, exclude: Container[int], limit: int = MAX_ATTEMPTS) -> List[int]:
        """
        Up to ``limit`` distinct allowed ports not in ``exclude`` (nor the
        server's own), in random order; none when the operating system picks.
        """
        if self.unrestricted:
            return []
        if self.own_ports:
            exclude = _Both(exclude, self.own_ports)
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


class _Both:
    """Membership in either of two containers."""

    def __init__(self, first: Container[int], second: Container[int]) -> None:
        self.first, self.second = first, second

    def __contains__(self, port: object) -> bool:
        return port in self.first or port in self.second
