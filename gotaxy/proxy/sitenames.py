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
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

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
