# -*- test-case-name: tests.test_client_failover -*-
"""
The servers a client may log in to, and how it picks one: fail-over
between the nodes of a cluster (docs/configuration.md, "Several servers").

``serverAddr`` may list several servers (``ClientConfig.servers``), and any
of them may be a DNS name with several addresses.  Every connection attempt
is one ``HostnameEndpoint`` over *all* of their addresses: Twisted's "happy
eyeballs" tries the first, starts the next 0.3 s later if the first has not
answered, and so on, and keeps the first that connects, cancelling the
others.  So a node that was killed (connection refused) or is unreachable
(no answer at all) costs 0.3 s, not the dial timeout.  The addresses come from ``ServerList``, the endpoint's name
resolver: each entry resolved in list order (an IP address as it is, a
name through the reactor's resolver), each address with its entry's port.

The order is the order of preference, rotated by ``passed_over``: a server
that accepted the connection but failed the TLS check or the log-in, or
closed the connection before it, goes to the back, so the next attempt
starts with the next one instead of the same server again.  A server that
refuses connections needs no rotation: the next address is tried at once.

Each server is checked under its own name and port (its pin, CA name or
``known_servers`` line): ``entry_for`` maps the address a connection reached
back to the entry that named it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from zope.interface import implementer

from gotaxy.tls.names import parse_ip

#: One server of the list: the host as written (name or IP) and its control port.
Entry = Tuple[str, int]


def entry_text(entry: Entry) -> str:
    host, port = entry
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass  # the entries' own resolutions finish on their own; their results are ignored


@implementer(IResolutionReceiver)
class _Collector:
    """Receives one entry's addresses for ``ServerList.resolveHostName``."""

    def __init__(self, done: Any) -> None:
        self.addresses: List[Any] = []
        self._done = done

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self._done(self.addresses)


@implementer(IHostnameResolver)
class ServerList:
    """
    The servers of ``serverAddr`` in their order of preference, as the name
    resolver of the one ``HostnameEndpoint`` that connects to them (module
    docstring).
    """

    def __init__(self, entries: Sequence[Entry], reactor: Any) -> None:
        assert entries, "at least one server"
        self.entries: Tuple[Entry, ...] = tuple(entries)
        self.reactor = reactor
        #: Index of the entry tried first.
        self.first = 0
        #: (ip, port) of every address resolved so far -> the entry it came from.
        self._by_address: Dict[Tuple[str, int], Entry] = {}

    @property
    def several(self) -> bool:
        return len(self.entries) > 1

    def describe(self) -> str:
        """The servers for a log line: ``a:7000`` or ``a:7000, b:7000``."""
        return ", ".join(entry_text(entry) for entry in self.entries)

    def ordered(self) -> Tuple[Entry, ...]:
        return self.entries[self.first:] + self.entries[:self.first]

    def passed_over(self, peer: Any) -> None:
        """The server at ``peer`` failed after connecting: start the next attempt with the one after it."""
        entry = self.entry_for(peer)
        if entry is None or not self.several:
            return
        index = self.entries.index(entry)
        if index == self.first:
            self.first = (index + 1) % len(self.entries)

    def entry_for(self, peer: Any) -> Optional[Entry]:
        """The entry whose address a connection reached (``transport.getPeer()``), or None."""
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        if host is None:
            return None
        entry = self._by_address.get((host, port))
        if entry is None and len(self.entries) == 1:
            return self.entries[0]
        return entry

    def endpoint(self, timeout: float) -> HostnameEndpoint:
        """The endpoint of every attempt: all the servers' addresses, tried in order, 0.3 s apart."""
        return HostnameEndpoint(_Resolving(self.reactor, self), self.entries[0][0], self.entries[0][1],
                                timeout=timeout)

    # -- IHostnameResolver ------------------------------------------------------

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        order = self.ordered()
        results: List[Optional[List[Any]]] = [None] * len(order)

        def finished(index: int, addresses: List[Any]) -> None:
            results[index] = addresses
            if any(r is None for r in results):
                return
            for entry, found in zip(order, results):
                for address in found or ():
                    self._by_address[(address.host, address.port)] = entry
                    resolutionReceiver.addressResolved(address)
            resolutionReceiver.resolutionComplete()

        for index, (host, port) in enumerate(order):
            ip = parse_ip(host)
            if ip is not None:
                kind = IPv6Address if ip.version == 6 else IPv4Address
                finished(index, [kind("TCP", str(ip), port)])
                continue
            self.reactor.nameResolver.resolveHostName(
                _Collector(lambda found, index=index: finished(index, found)), host, portNumber=port,
                addressTypes=addressTypes, transportSemantics=transportSemantics,
            )
        return resolution


@implementer(IReactorPluggableNameResolver)
class _Resolving:
    """The reactor, but with ``ServerList`` as its name resolver: what ``HostnameEndpoint`` asks for names."""

    def __init__(self, reactor: Any, resolver: ServerList) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        raise NotImplementedError("the server list is this endpoint's resolver")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
