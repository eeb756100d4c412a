"""
Which custom domains a client may claim (``gotaxy.server.domains``): an
over-broad wildcard is refused, and so is a name outside the server's
``allowDomains`` or the token's own list; each refusal names the
``customDomains`` field for the operator, and a client's own tunnel does
not come up.  In memory: a real core, store and front, a real client.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.defer import Deferred

from gotaxy.config import TunnelSpec, VhostSettings
from gotaxy.server.manage import Management, ManagementError
from gotaxy.testing import GotaxyClient, GotaxyServer, MemoryNetwork, server_config


def make_server(network: MemoryNetwork, **vhost: Any) -> GotaxyServer:
    vhost.setdefault("http_port", 8000)
    return GotaxyServer(network, server_config(vhost=VhostSettings(**vhost)))


def result(network: MemoryNetwork, coroutine: Any) -> Any:
    done = Deferred.fromCoroutine(coroutine)
    network.flush()
    outcome: List[Any] = []
    done.addBoth(outcome.append)
    assert outcome, "the operator's request did not finish"
    return outcome[0]


def refused(network: MemoryNetwork, coroutine: Any) -> ManagementError:
    failure = result(network, coroutine)
    assert hasattr(failure, "check") and failure.check(ManagementError), failure
    return failure.value  # type: ignore[no-any-return]


def site(management: Management, name: str, *domains: str) -> Any:
    return management.define_tunnel("office", name, {"type": "http", "localPort": 9001, "customDomains": list(domains)})


@pytest.mark.parametrize("wildcard", ["*.com", "*.co.uk", "*.github.io"])
def test_a_wildcard_over_a_public_suffix_is_refused_on_the_field(network_and_management: Any, wildcard: str) -> None:
    network, management = network_and_management
    error = refused(network, site(management, "all", wildcard))
    assert (error.kind, error.field) == ("invalid", "spec.customDomains")
    assert f"custom domain {wildcard!r} is too broad" in str(error)


def test_a_wildcard_under_a_domain_of_ones_own_is_taken(network_and_management: Any) -> None:
    network, management = network_and_management
    for name, wildcard in (("a", "*.example.com"), ("b", "*.example.co.uk"), ("c", "*.shop.example.com")):
        view = result(network, site(management, name, wildcard))
        assert not hasattr(view, "check"), view


def test_the_servers_allow_domains_and_a_tokens_own_list_both_apply(network: MemoryNetwork) -> None:
    server = make_server(network, allow_domains=("*.example.com", "example.org"), sub_domain_host="gotaxy.example.net")
    server.create_token("office")
    management = Management(server.core)
    outside = refused(network, site(management, "x", "wiki.example.net"))
    assert outside.field == "spec.customDomains" and "not among this server's allowDomains" in str(outside)
    assert not hasattr(result(network, site(management, "ok", "wiki.example.com", "example.org")), "check")
    record = result(network, management.set_token_domains("office", ["shop.example.com", "*.shop.example.com"]))
    assert record.allow_domains == ("shop.example.com", "*.shop.example.com")
    mine = refused(network, site(management, "y", "wiki.example.com"))
    assert mine.field == "spec.customDomains" and "client 'office''s token may claim" in str(mine)
    assert not hasattr(result(network, site(management, "shop", "shop.example.com", "*.shop.example.com")), "check")
    # The server's own names (subdomain) are the operator's to give: no list stops them.
    sub = management.define_tunnel("office", "sub", {"type": "http", "localPort": 9001, "subdomain": "wiki"})
    assert not hasattr(result(network, sub), "check")
    bad = refused(network, management.set_token_domains("office", ["shop.example.com", "http://x"]))
    assert (bad.kind, bad.field) == ("invalid", "allow_domains")
    gone = refused(network, management.set_token_domains("nobody", []))
    assert (gone.kind, gone.field) == ("not_found", "name")


def test_a_clients_own_tunnel_outside_its_list_does_not_come_up(network: MemoryNetwork) -> None:
    server = make_server(network)
    token = result(network, Management(server.core).create_token("office", allow_domains=["*.office.example.com"]))[1]
    client = GotaxyClient(network, token, tunnels=[
        TunnelSpec(name="wiki", type="http", local_port=9001, custom_domains=("wiki.office.example.com",)),
        TunnelSpec(name="shop", type="http", local_port=9002, custom_domains=("shop.example.com",)),
        TunnelSpec(name="all", type="http", local_port=9003, custom_domains=("*.com",)),
    ])
    client.start()
    network.flush()
    assert set(server.core.tunnels) == {("office", "wiki")}
    records = {record.name: record for record in server.store.store.list_tunnels("office")}
    assert "not among the domains client 'office''s token may claim" in (records["shop"].reason or "")
    assert "too broad" in (records["all"].reason or "")


@pytest.fixture
def network() -> MemoryNetwork:
    return MemoryNetwork()


@pytest.fixture
def network_and_management(network: MemoryNetwork) -> Any:
    server = make_server(network)
    server.create_token("office")
    return network, Management(server.core)
