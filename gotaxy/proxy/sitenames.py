# -*- test-case-name: tests.test_proxy_http,tests.test_proxy_https -*-
"""
The host names of a website tunnel (``http`` and ``https``), from frp's
``customDomains`` and ``subdomain``: the checks both types make, each
refusal naming its key so that the faces mark that field.

* ``require_a_name``: at least one of the two keys (frp's "subdomain and
  custom domains should not be both empty").
* ``site_hosts``: the names on a server with a given ``subDomainHost``.  As
  frp (``validateDomainConfigForServer``), a custom domain *under*
  ``subDomainHost`` is refused: those names are handed out through
  ``subdomain``; ``subDomainHost`` itself may be a custom domain.  A
  ``subdomain`` needs the server's ``subDomainHost``.

What else a client may claim (over-broad wildcards, allowed domains) is the
server's to say: ``gotaxy.server.domains``.

Which target serves a request is ``RouteTable.lookup``: the one lookup of
the HTTP front's ``Router`` (targets: this node's tunnels) and of
``gotaxy.server.forward.RemoteSites`` (targets: other nodes), so that a
name routes the same way whichever node the visitor reached.
"""

from __future__ import annotations

from typing import Dict, Generic, List, Optional, Sequence, Tuple, TypeVar

import attrs

from gotaxy.proxy.base import SpecError


def require_a_name(kind: str, custom_domains: Sequence[str], subdomain: Optional[str], example: str) -> None:
    """SpecError about ``customDomains`` unless the tunnel has a custom domain or a subdomain."""
    if not custom_domains and subdomain is None:
        raise SpecError(
            f"an {kind} tunnel needs 'customDomains' (such as [\"{example}.example.com\"]) or 'subdomain' "
            f"(such as \"{example}\", for {example}.<the server's subDomainHost>)", "customDomains"
        )


def site_hosts(custom_domains: Sequence[str], subdomain: Optional[str], sub_domain_host: Optional[str]) -> Tuple[str, ...]:
    """The names the tunnel serves under a server whose ``subDomainHost`` is given (SpecError naming the key)."""
    hosts = list(custom_domains)
    if sub_domain_host:
        own = sub_domain_host.lower()
        for host in hosts:
            if host.endswith("." + own):
                label = host[: -len(own) - 1].split(".")[-1]
                fix = (f"use subdomain = {label!r} instead" if label != "*" else
                       "a wildcard under it is the operator's to give")
                raise SpecError(
                    f"custom domain {host!r} is under the server's subDomainHost {sub_domain_host!r}, "
                    f"whose names are given through 'subdomain'; {fix}", "customDomains"
                )
    if subdomain is not None:
        if not sub_domain_host:
            raise SpecError(
                "this server has no subDomainHost, so 'subdomain' cannot be used; use 'customDomains', "
                "or ask the operator to set subDomainHost", "subdomain"
            )
        hosts.append(f"{subdomain}.{sub_domain_host}")
    return tuple(dict.fromkeys(hosts))


T = TypeVar("T")


def candidates(host: str) -> List[str]:
    """``a.b.example.com`` -> itself, ``*.b.example.com``, ``*.example.com`` (frp's order)."""
    names = [host]
    labels = host.split(".")
    while len(labels) >= 3:
        labels = labels[1:]
        names.append("*." + ".".join(labels))
    return names


@attrs.define(eq=False)
class Route(Generic[T]):
    path: str
    user: str
    target: T


class RouteTable(Generic[T]):
    """
    Host names (exact, or frp's ``*.example.com``) and paths to targets, as
    frp routes: the exact name first, then wildcards from the closest; on a
    name, the longest location that is a prefix of the path; a route for
    the request's basic-auth user (``routeByHTTPUser``) before one for anyone.
    """

    def __init__(self) -> None:
        self.hosts: Dict[str, List[Route[T]]] = {}

    def add(self, host: str, path: str, user: str, target: T) -> None:
        routes = self.hosts.setdefault(host, [])
        routes.append(Route(path, user, target))
        routes.sort(key=lambda route: len(route.path), reverse=True)

    def discard(self, host: str, target: T) -> bool:
        """Forget ``target``'s routes on ``host``; True if no route is left on it."""
        routes = [route for route in self.hosts.get(host, ()) if route.target is not target]
        if routes:
            self.hosts[host] = routes
            return False
        self.hosts.pop(host, None)
        return True

    def lookup(self, host: str, path: str = "/", user: str = "") -> Optional[T]:
        hosts = self.hosts
        routes = hosts.get(host)
        if routes is not None and len(routes) == 1 and not user:  # (the common case, without a list of names)
            route = routes[0]
            if not route.user and path.startswith(route.path):
                return route.target
        for name in candidates(host):
            routes = hosts.get(name)
            if not routes:
                continue
            for wanted in ((user, "") if user else ("",)):
                for route in routes:
                    if route.user == wanted and path.startswith(route.path):
                        return route.target
        return None
