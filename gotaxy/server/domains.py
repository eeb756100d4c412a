# -*- test-case-name: tests.test_domains -*-
"""
Which host names a client may claim for its websites (``http`` and
``https`` tunnels), checked before the claim (``gotaxy.server.claims``).

Who *holds* a name is the claims table's business (one INSERT that can
fail); this module says who *may ask* for one, in this order:

1. ``customDomains`` under ``subDomainHost`` are refused, as frp refuses
   them (``subdomain`` is the way to a name there; ``subDomainHost`` itself
   may be claimed).  That rule lives with the spec
   (``gotaxy.proxy.http.check_custom_domains``), which knows which names
   came from ``subdomain``.
2. A wildcard must leave at least two labels under its public suffix:
   ``*.example.com`` and ``*.example.co.uk`` may be claimed, ``*.com``,
   ``*.co.uk`` or ``*.github.io`` may not (they would catch every site of a
   registry or a hosting service).  The public suffixes are the Public
   Suffix List's, from the ``publicsuffixlist`` package (its own copy of the
   list, nothing fetched at run time); its ~0.2 s parse is done once, on
   the store's thread, the first time a wildcard is claimed.  A simple "at least three
   labels" rule would let ``*.co.uk`` through, hence the list.
3. Allowed domains: the server's ``allowDomains`` and the client's token's
   own list (``gotaxy token domains``, the panel, the console, REST).  When
   a list is set, each custom domain must match one of its entries: an
   entry ``example.com`` is that name, ``*.example.com`` any name under
   example.com (wildcards among them).  A name must pass both lists when
   both are set.  Names under ``subDomainHost`` are the operator's own
   (handed out through ``subdomain``) and pass.

A refusal is one sentence about ``customDomains`` (``NameRefused``); the
operator's faces mark that field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from gotaxy.server.core import ServerCore

#: The most entries one allowed-domains list holds.
MAX_ALLOWED_DOMAINS = 256


def matches(host: str, pattern: str) -> bool:
    """``host`` (a name or ``*.name``) is ``pattern``, or under it if the pattern is ``*.example.com``."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def allowed_by(host: str, patterns: Sequence[str]) -> bool:
    return any(matches(host, pattern) for pattern in patterns)


class DomainRules:
    """The rules above for one server (its config is read at each check, so a reload applies)."""

    def __init__(self, core: "ServerCore") -> None:
        self.core = core
        self._suffixes: Any = None

    async def _public_suffixes(self) -> Any:
        if self._suffixes is None:
            # Off the reactor thread: the store's one thread (ThreadedStore.call) runs it once.
            store = self.core.store
            self._suffixes = await store.call(_load_public_suffixes)
        return self._suffixes

    async def refusal(self, client: str, hosts: Iterable[str]) -> Optional[str]:
        """Why ``client`` may not claim ``hosts`` (one sentence), or None."""
        vhost = self.core.config.vhost
        own = vhost.sub_domain_host
        custom = [host for host in hosts if not (own and host.endswith("." + own))]
        for host in custom:
            if host.startswith("*."):
                suffixes = await self._public_suffixes()
                base = host[2:]
                if suffixes.is_public(base):
                    return (f"custom domain {host!r} is too broad: {base!r} is a public suffix, so it would "
                            f"catch other people's sites; claim a name under a domain of your own, "
                            f"such as '*.example.{base}'")
        server_list: Tuple[str, ...] = tuple(vhost.allow_domains)
        if server_list:
            for host in custom:
                if not allowed_by(host, server_list):
                    return (f"custom domain {host!r} is not among this server's allowDomains "
                            f"({_shown(server_list)}); ask the operator to add it")
        if custom:
            store = self.core.store
            token_list = await store.call(store.store.token_domains, client)
            if token_list:
                for host in custom:
                    if not allowed_by(host, token_list):
                        return (f"custom domain {host!r} is not among the domains client {client!r}'s token "
                                f"may claim ({_shown(token_list)}); ask the operator to add it")
        return None


def _load_public_suffixes() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def _shown(patterns: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(patterns[:most])
    return shown + (f" and {len(patterns) - most} more" if len(patterns) > most else "")
