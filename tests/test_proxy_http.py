"""
``type = "http"``'s spec (``gotaxy.proxy.http``) and the host-name claims it
makes (``PublicAddress.claim_keys``): what a user writes, what is refused
with which sentence, and which names two tunnels may or may not share.
"""

from __future__ import annotations

from typing import Any, Dict

import pytest

from gotaxy.proxy import PublicAddress, SpecError, parse_spec
from gotaxy.proxy.http import HTTP, HttpSpec


def spec(**keys: Any) -> HttpSpec:
    keys = {"type": "http", "localPort": 8080, **keys}
    parsed = parse_spec(keys)
    assert isinstance(parsed, HttpSpec)
    return parsed


def test_frps_keys_round_trip() -> None:
    keys: Dict[str, Any] = {
        "type": "http", "localIP": "127.0.0.1", "localPort": 80, "customDomains": ["web01.example.com"],
        "subdomain": "web01", "locations": ["/", "/pic"], "hostHeaderRewrite": "example.com",
        "httpUser": "admin", "httpPassword": "admin", "routeByHTTPUser": "abc",
        "requestHeaders": {"set": {"x-from-where": "frp"}}, "responseHeaders": {"set": {"foo": "bar"}},
    }
    assert parse_spec(keys).to_keys() == keys
    assert "admin" not in repr(parse_spec(keys)).split("http_user='admin'")[1]  # the password stays out of logs


@pytest.mark.parametrize("keys, message", [
    ({}, "an http tunnel needs 'customDomains'"),
    ({"customDomains": ["http://a.example.com"]}, "without a scheme or port"),
    ({"customDomains": ["a.example.com:80"]}, "without a scheme or port"),
    ({"subdomain": "a.b"}, "'subdomain' must be one name part"),
    ({"subdomain": "a", "locations": ["api"]}, "must be a URL path starting with '/'"),
    ({"subdomain": "a", "httpUser": "u"}, "'httpUser' and 'httpPassword' go together"),
    ({"subdomain": "a", "requestHeaders": {"set": {"Content-Length": "1"}}}, "may not set 'Content-Length'"),
    ({"subdomain": "a", "requestHeaders": {"set": {"X-A": "a\r\nX-B: b"}}}, "printable characters"),
    ({"subdomain": "a", "remotePort": 80}, "an http tunnel has no setting 'remotePort'"),
])
def test_a_bad_spec_is_one_sentence_naming_the_key(keys: Dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as raised:
        spec(**keys)
    assert message in str(raised.value)


def test_names_under_the_servers_sub_domain_host() -> None:
    assert spec(subdomain="Wiki").address("example.com") == PublicAddress("http", 0, ("wiki.example.com",))
    both = spec(subdomain="wiki", customDomains=["WIKI.company.com"]).address("example.com")
    assert both.hosts == ("wiki.company.com", "wiki.example.com")
    with pytest.raises(SpecError, match="this server has no subDomainHost"):
        spec(subdomain="wiki").address(None)
    with pytest.raises(SpecError, match="is under the server's subDomainHost 'example.com', .*use subdomain = 'wiki'") as under:
        spec(customDomains=["wiki.example.com"]).address("example.com")
    assert under.value.key == "customDomains"
    with pytest.raises(SpecError, match="'[*].example.com' is under the server's subDomainHost") as wildcard:
        spec(customDomains=["*.example.com"]).address("example.com")
    assert wildcard.value.key == "customDomains"
    # As frp: subDomainHost itself may be a custom domain, and a name that only ends like it is another name.
    assert spec(customDomains=["example.com", "myexample.com"]).address("example.com").hosts == (
        "example.com", "myexample.com")


def test_a_tunnel_without_a_name_is_refused_on_the_custom_domains_field() -> None:
    from gotaxy.proxy.https import HTTPS

    for kind in (HTTP, HTTPS):
        with pytest.raises(SpecError, match=f"an {kind.name} tunnel needs 'customDomains'") as refused:
            kind.parse({"type": kind.name, "localPort": 8080})
        assert refused.value.key == "customDomains"


def test_claim_keys_let_locations_and_users_share_a_name_but_not_a_path() -> None:
    whole = spec(customDomains=["web.example.com"]).address(None)
    root = spec(customDomains=["web.example.com"], locations=["/"]).address(None)
    news = spec(customDomains=["web.example.com"], locations=["/news"]).address(None)
    alice = spec(customDomains=["web.example.com"], routeByHTTPUser="alice").address(None)
    wildcard = spec(customDomains=["*.example.com"]).address(None)
    assert whole.claim_keys == root.claim_keys == (("domain", "web.example.com"),)
    assert news.claim_keys == (("domain", "web.example.com/news"),)
    assert alice.claim_keys == (("domain", "alice@web.example.com"),)
    assert wildcard.claim_keys == (("domain", "*.example.com"),)


@pytest.mark.parametrize("address", [
    PublicAddress("http", 0, ("a.example.com", "*.b.example.com")),
    PublicAddress("http", 0, ("a.example.com",), ("/", "/news")),
    PublicAddress("http", 0, ("a.example.com",), (), "alice"),
    PublicAddress("http", 0, ("a.example.com",), ("/x",), "alice"),
])
def test_an_address_with_locations_and_a_user_survives_the_store_and_the_wire(address: PublicAddress) -> None:
    assert PublicAddress.parse(address.text) == address
    assert PublicAddress.from_wire(address.to_wire()) == address


def test_the_description_is_the_urls() -> None:
    address = PublicAddress("http", 0, ("a.example.com",), ("/", "/news"))
    assert address.description == "http://a.example.com/, http://a.example.com/news"
