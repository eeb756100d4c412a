"""
Address rules and automatic bans (``gotaxy.server.access``, ``gotaxy.store.bans``),
in memory: the rules' arithmetic, the bans' growth on a fake clock, and a
server on a ``MemoryNetwork`` refusing denied and banned visitors on its
control port and its tunnels.
"""

from __future__ import annotations

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory

from gotaxy.config import AccessSettings, ConfigError, TunnelSpec
from gotaxy.config.files import parse_server_config
from gotaxy.events import BAN_ADDED, BAN_EXPIRED, BAN_LIFTED, Event
from gotaxy.server.access import (
    CONTROL, FLOOD, LOGIN, PROTOCOL, TOKEN, TUNNELS, WEB, AccessControl, AddressRules, BanRefused, GatedFactory,
    canonical,
)
from gotaxy.store import bans as stored_bans
from gotaxy.testing import Collector, EchoFactory, GotaxyClient, GotaxyServer, MemoryNetwork, server_config

ATTACKER = "198.51.100.7"
FRIEND = "203.0.113.5"


def access_config(**settings):
    return server_config(access=AccessSettings(**settings))


# -- rules --------------------------------------------------------------------


def test_deny_wins_and_an_allow_list_lets_in_only_what_it_holds():
    rules = AddressRules.of(allow=["10.0.0.0/8", "2001:db8::/32"], deny=["10.1.0.0/16"])
    assert rules.permits(canonical("10.2.3.4"))
    assert not rules.permits(canonical("10.1.2.3"))  # denied inside the allowed range
    assert not rules.permits(canonical("192.0.2.1"))  # not in the allow list
    assert rules.permits(canonical("2001:db8::1"))
    assert not rules.permits(canonical("2001:db9::1"))


def test_an_ipv4_mapped_peer_is_checked_as_its_ipv4_address():
    rules = AddressRules.of(allow=[], deny=["198.51.100.0/24"])
    assert not rules.permits(canonical("::ffff:198.51.100.7"))
    assert rules.permits(canonical("::ffff:203.0.113.5"))
    # and a mapped network in the file means the IPv4 one
    loaded = parse_server_config({"access": {"tunnels": {"deny": ["::ffff:198.51.100.0/120"]}}}).config
    assert loaded.access.tunnels_deny == ("198.51.100.0/24",)


def test_a_wrong_network_names_the_key():
    with pytest.raises(ConfigError, match=r"'access.control.allow' must be a list of IP addresses and CIDR"):
        parse_server_config({"access": {"control": {"allow": ["10.0.0.0/33"]}}})
    with pytest.raises(ConfigError, match=r"'access.perTunnel' must be"):
        parse_server_config({"access": {"perTunnel": {"no-slash": {"allow": ["10.0.0.0/8"]}}}})
    with pytest.raises(ConfigError, match=r"'access.ban.maxTime'"):
        AccessSettings(ban_time=600.0, ban_max_time=60.0)


def test_a_ban_lasts_longer_with_each_repeat_up_to_the_longest():
    assert [stored_bans.duration(n, 600.0, 3600.0) for n in (1, 2, 3, 4, 10)] == [600, 1200, 2400, 3600, 3600]


# -- a server in memory --------------------------------------------------------


def connect(network, port, source):
    """A raw connection from ``source``; returns the collector (``lost`` once the server closed it)."""
    collector = Collector()
    network.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(lambda: collector), bindAddress=(source, 0))
    network.flush()
    return collector


def test_a_denied_address_cannot_reach_the_control_port_before_tls():
    network = MemoryNetwork()
    server = GotaxyServer(network, access_config(control_allow=("10.0.0.0/8",)))
    refused = connect(network, server.port, ATTACKER)
    assert refused.lost is not None and refused.received == []
    assert server.admission.pending == 0  # it never took a slot of the pending log-ins
    assert server.core.access.refused[(CONTROL, "denied")] == 1
    network.source = "10.0.0.9"
    client = GotaxyClient(network, server.create_token("alice")).start()
    assert client.protocol is not None  # an allowed address logs in
    client.stop()
    server.shutdown()


def tunnel_up(network, server, **tunnel):
    network.listenTCP(8080, EchoFactory())
    client = GotaxyClient(network, server.create_token("alice"),
                          tunnels=[TunnelSpec(name="web", local_port=8080, **tunnel)]).start()
    return client, client.up["web"]


def test_tunnel_rules_refuse_denied_visitors_on_the_public_port():
    network = MemoryNetwork()
    config = access_config(tunnels_deny=("192.0.2.0/24",), per_tunnel=(("alice/web", (), (ATTACKER + "/32",)),))
    server = GotaxyServer(network, config)
    client, port = tunnel_up(network, server)
    assert network.exchange(port, b"hi", source=FRIEND) == b"hi"
    assert network.exchange(port, b"hi", source=ATTACKER) == b""  # the tunnel's own rule
    assert network.exchange(port, b"hi", source="192.0.2.9") == b""  # every tunnel's rule
    assert server.core.access.refused[(TUNNELS, "denied")] == 2
    assert server.core.meters.tunnel("alice", "web").opened == 1  # no stream was opened for them
    client.stop()
    server.shutdown()


def test_rules_change_on_reload_for_the_next_connection():
    network = MemoryNetwork()
    server = GotaxyServer(network)
    client, port = tunnel_up(network, server)
    assert network.exchange(port, b"hi", source=ATTACKER) == b"hi"
    new = access_config(tunnels_deny=(ATTACKER + "/32",))
    changes = server.core.access.apply(new)
    assert [c.key for c in changes] == ["access.tunnels.deny"] and changes[0].applied
    assert network.exchange(port, b"hi", source=ATTACKER) == b""
    assert server.core.access.describe()["listeners"]["tunnels"]["deny"] == [ATTACKER + "/32"]
    client.stop()
    server.shutdown()


def wrong_tokens(network, server, count, source=ATTACKER):
    network.source = source
    for _ in range(count):
        client = GotaxyClient(network, "not-a-token")
        client.start()
        client.stop()


def test_wrong_tokens_ban_the_source_on_every_listener_until_lifted():
    network = MemoryNetwork()
    server = GotaxyServer(network, access_config(ban_token_failures=3, ban_exempt=()))
    client, port = tunnel_up(network, server)
    seen = []
    server.core.events.subscribe(seen.append)
    wrong_tokens(network, server, 3)
    bans = server.core.access.in_force()
    assert [b.address for b in bans] == [ATTACKER]
    assert bans[0].until == pytest.approx(network.seconds() + 600.0)
    assert [e.address for e in seen if e.type == BAN_ADDED] == [ATTACKER]
    # refused on the control port and on the tunnel; others are not
    assert connect(network, server.port, ATTACKER).lost is not None
    assert network.exchange(port, b"hi", source=ATTACKER) == b""
    assert network.exchange(port, b"hi", source=FRIEND) == b"hi"
    # stored: a server starting on the same store refuses it too
    other = AccessControl(server.config, network, server.store)
    other.refresh()
    assert not other.admits(WEB, ATTACKER)
    # lifted: back in, and the lift is an event
    assert server.core.access.lift(ATTACKER, "operator admin").result is True
    assert [e.address for e in seen if e.type == BAN_LIFTED] == [ATTACKER]
    assert network.exchange(port, b"hi", source=ATTACKER) == b"hi"
    client.stop()
    server.shutdown()


def test_repeated_bans_grow_and_expire_on_the_clock():
    network = MemoryNetwork()
    server = GotaxyServer(network, access_config(ban_token_failures=2, ban_exempt=(), ban_time=60.0,
                                                 ban_max_time=100.0))
    access = server.core.access
    wrong_tokens(network, server, 2)
    assert access.in_force()[0].until - network.seconds() == pytest.approx(60.0)
    network.pass_time(61)
    assert access.admits(CONTROL, ATTACKER)  # expired
    wrong_tokens(network, server, 2)
    second = access.in_force()[0]
    assert (second.strikes, second.until - network.seconds()) == (2, pytest.approx(100.0))  # doubled, capped
    server.shutdown()


def test_a_ban_that_runs_out_is_told_once_across_processes_and_a_new_one_is_told_again():
    network = MemoryNetwork()
    server = GotaxyServer(network, access_config(ban_token_failures=2, ban_exempt=(), ban_time=60.0))
    access = server.core.access
    other = AccessControl(server.config, network, server.store)  # another process on the same store
    seen = []
    server.core.events.subscribe(seen.append)
    wrong_tokens(network, server, 2)
    network.pass_time(59)
    access.refresh()
    network.flush()
    assert [e.type for e in seen if e.type == BAN_EXPIRED] == []
    network.pass_time(2)
    other.refresh()
    access.refresh()
    network.flush()
    expired = server.store.store.events(type_=BAN_EXPIRED)
    assert [(e.address, e.detail) for e in expired] == [
        (ATTACKER, "2 wrong client tokens in 600 s")]
    assert access.admits(CONTROL, ATTACKER) and other.admits(CONTROL, ATTACKER)
    # Banned again (strike 2) and run out again: told again, once.
    wrong_tokens(network, server, 2)
    network.pass_time(121)
    access.refresh()
    other.refresh()
    network.flush()
    assert len(server.store.store.events(type_=BAN_EXPIRED)) == 2
    # A lifted ban is ban.lifted, never ban.expired.
    wrong_tokens(network, server, 2)
    assert access.lift(ATTACKER, "operator admin").result is True
    network.pass_time(1000)
    access.refresh()
    network.flush()
    assert len(server.store.store.events(type_=BAN_EXPIRED)) == 2
    server.shutdown()


def test_exempt_addresses_and_a_disabled_ban_are_never_banned():
    network = MemoryNetwork()
    server = GotaxyServer(network, access_config(ban_token_failures=2))  # loopback exempt by default
    wrong_tokens(network, server, 3, source="127.0.0.1")
    assert server.core.access.in_force() == []
    server.core.access.apply(access_config(ban_token_failures=2, ban_exempt=(), ban_enable=False))
    wrong_tokens(network, server, 3)
    assert server.core.access.in_force() == []
    server.shutdown()


def test_protocol_garbage_and_floods_count_toward_a_ban():
    network = MemoryNetwork()
    server = GotaxyServer(network, access_config(ban_protocol_errors=2, ban_flood_refusals=2, ban_exempt=()))
    access = server.core.access
    for _ in range(2):
        garbage = connect(network, server.port, ATTACKER)
        garbage.transport.write(b"GET / HTTP/1.1\r\n\r\n" * 4)
        network.flush()
    assert [b.address for b in access.in_force()] == [ATTACKER]
    access.failure(FLOOD, FRIEND)
    access.failure(FLOOD, FRIEND)
    network.flush()
    assert FRIEND in {b.address for b in access.in_force()}
    server.shutdown()


def test_an_operator_lock_out_bans_its_address():
    network = MemoryNetwork()
    server = GotaxyServer(network, access_config(ban_exempt=()))
    Deferred.fromCoroutine(server.core.record("operator.locked_out", address=ATTACKER, detail="via web, user 'admin'"))
    network.flush()
    assert [b.reason for b in server.core.access.in_force()] == [
        "1 operator log-in lock-outs (panel or console) in 600 s (operator log-in locked out)"]
    server.shutdown()


def test_a_ban_another_process_recorded_is_known_at_once():
    network = MemoryNetwork()
    server = GotaxyServer(network, access_config(ban_exempt=()))
    db = server.store.store
    record = stored_bans.ban(db, ATTACKER, "by another node", network.seconds(), 600.0, 3600.0, 86400.0)
    assert server.core.access.admits(CONTROL, ATTACKER)  # not seen yet
    server.core.events.publish(Event(BAN_ADDED, network.seconds(), address=ATTACKER, node="elsewhere"), local=False)
    network.flush()
    assert not server.core.access.admits(CONTROL, ATTACKER)
    assert record.strikes == 1
    server.shutdown()


def test_an_ipv6_source_is_banned_as_its_64_and_an_ipv4_one_alone():
    network = MemoryNetwork()
    server = GotaxyServer(network, access_config(ban_token_failures=2, ban_exempt=("2001:db8:1:2::5/128",)))
    access = server.core.access
    # Failures from two addresses of one /64 add up: it is one site.
    wrong_tokens(network, server, 1, source="2001:db8:1:2::7")
    wrong_tokens(network, server, 1, source="2001:db8:1:2::8")
    assert [b.address for b in access.in_force()] == ["2001:db8:1:2::/64"]
    assert not access.admits(CONTROL, "2001:db8:1:2::ffff")
    assert not access.admits(WEB, "[2001:db8:1:2::1]")
    assert access.admits(CONTROL, "2001:db8:1:3::7")  # the next /64
    assert access.admits(CONTROL, "2001:db8:1:2::5")  # exempt, even inside a banned /64
    # IPv4: the address alone.
    wrong_tokens(network, server, 2, source="198.51.100.7")
    assert access.admits(CONTROL, "198.51.100.8") and not access.admits(CONTROL, "198.51.100.7")
    # An operator lifts it by any address inside it, or names the network.
    assert access.lift("2001:db8:1:2::abcd", "operator admin").result is True
    assert access.admits(CONTROL, "2001:db8:1:2::7")
    network.flush()
    assert access.ban("2001:db8:9:9::/64", "manual", by="operator admin").result.address == "2001:db8:9:9::/64"
    assert not access.admits(CONTROL, "2001:db8:9:9::1")
    wrong = access.ban("2001:db8:9::/48", "manual", by="operator admin")
    assert isinstance(wrong.result.value, BanRefused) and "ipv6Prefix" in str(wrong.result.value)
    wrong.addErrback(lambda f: None)
    assert access.describe()["ban"]["ipv6Prefix"] == 64
    server.shutdown()


def test_the_ipv6_prefix_is_configurable_up_to_each_address_alone():
    network = MemoryNetwork()
    access = AccessControl(access_config(ban_ipv6_prefix=128), network)
    assert access.key(canonical("2001:db8::7")) == "2001:db8::7"
    access = AccessControl(access_config(ban_ipv6_prefix=56), network)
    assert access.key(canonical("2001:db8:1:2ff::7")) == "2001:db8:1:200::/56"
    assert access.key(canonical("::ffff:198.51.100.7")) == "198.51.100.7"
    with pytest.raises(ConfigError, match="ipv6Prefix"):
        parse_server_config({"access": {"ban": {"ipv6Prefix": 0}}})


def test_an_operator_ban_needs_an_ip_address():
    network = MemoryNetwork()
    server = GotaxyServer(network)
    failure = server.core.access.ban("example.com", "manual", by="operator admin")
    network.flush()
    assert isinstance(failure.result.value, BanRefused)
    failure.addErrback(lambda f: None)
    server.shutdown()


def test_a_gated_factory_builds_nothing_for_a_refused_source():
    network = MemoryNetwork()
    access = AccessControl(access_config(web_deny=(ATTACKER + "/32",)), network)
    factory = GatedFactory(lambda: access, WEB, EchoFactory())
    listening = network.listenTCP(0, factory)
    assert network.exchange(listening.getHost().port, b"x", source=FRIEND) == b"x"
    assert network.exchange(listening.getHost().port, b"x", source=ATTACKER) == b""


def test_kinds_and_their_settings_are_complete():
    from gotaxy.server.access import KINDS

    for setting, _ in KINDS.values():
        assert hasattr(AccessSettings(), setting)
    assert {TOKEN, PROTOCOL, LOGIN, FLOOD} <= set(KINDS)
    assert attrs.fields_dict(AccessSettings)["ban_exempt"].default == ("127.0.0.0/8", "::1/128")


def test_the_console_lists_bans_and_lifts_them():
    from gotaxy.console.commands import Commands
    from gotaxy.server.manage import Management

    network = MemoryNetwork()
    server = GotaxyServer(network, access_config(ban_token_failures=2, ban_exempt=("127.0.0.0/8",),
                                                 control_deny=("192.0.2.0/24",)))
    commands = Commands(Management(server.core), operator="console operator admin", width=200)
    wrong_tokens(network, server, 2)

    def run(line):
        d = Deferred.fromCoroutine(commands.run(line))
        network.flush()
        return d.result

    listed = run("bans").text
    assert ATTACKER in listed and "2 wrong client tokens in 600 s" in listed
    as_json = run("bans --json").text
    assert '"address": "198.51.100.7"' in as_json and '"by": "automatic"' in as_json
    rules = run("access").text
    assert "control:     deny 192.0.2.0/24" in rules and "token 2" in rules
    assert run("unban 198.51.100.7").text == "ban of 198.51.100.7 lifted"
    assert run("bans").text == "no address is banned"
    missing = run("unban 198.51.100.7")
    assert missing.status == 1 and "is not banned" in missing.text
    exempt = run("ban 127.0.0.1")  # loopback is exempt by default: an operator cannot lock themselves out
    assert exempt.status != 0 and "access.ban.exempt" in exempt.text
    manual = run("ban 203.0.113.9 --for 60 --reason testing")
    assert manual.text == "203.0.113.9 banned on every listener for 60 s"
    assert not server.core.access.admits(CONTROL, "203.0.113.9")
    server.shutdown()


# -- the other proxy types inherit the rules ------------------------------------


def test_a_udp_tunnel_drops_datagrams_of_denied_visitors():
    from twisted.internet.task import Clock

    from gotaxy.proxy.udp import UdpSpec
    from tests.test_proxy_udp import front

    access = AccessControl(access_config(per_tunnel=(("alice/dns", (), (ATTACKER + "/32",)),)), Clock())
    udp, tunnel = front(UdpSpec(local_port=53), Clock())
    tunnel.admits = lambda host, routed=False: access.admits_tunnel("alice", "dns", host, routed)
    udp.datagramReceived(b"query", (FRIEND, 1000))
    udp.datagramReceived(b"query", (ATTACKER, 1000))
    assert [flow.peer for flow in tunnel.session.flows] == [f"{FRIEND}:1000"]
    assert udp.counts.no_slot == 0 and access.refused[(TUNNELS, "denied")] == 1


def test_http_sites_answer_403_by_their_own_rules_and_bans_close_the_shared_port():
    import base64

    from gotaxy.config import VhostSettings
    from gotaxy.server.operators import LOCK_AFTER
    from tests.test_proxy_vhost import FRONT, get, http, one, site, visit

    network = MemoryNetwork()
    config = server_config(vhost=VhostSettings(http_port=FRONT), access=AccessSettings(
        ban_exempt=(), ban_basic_auth_failures=LOCK_AFTER, per_tunnel=(("office/wiki", (), ("192.0.2.0/24",)),)))
    server = GotaxyServer(network, config)
    site(network, 9001, "wiki")
    GotaxyClient(network, server.create_token("office"), tunnels=[http(
        "wiki", 9001, custom_domains=("wiki.example.com",), http_user="alice", http_password="s3cret pass",
    )]).start()
    good = "Authorization: Basic " + base64.b64encode(b"alice:s3cret pass").decode()
    bad = "Authorization: Basic " + base64.b64encode(b"alice:guess").decode()
    network.source = "192.0.2.8"
    assert one(network, get("wiki.example.com", "/", good))[0] == 403  # the tunnel's own rule
    network.source = ATTACKER
    assert one(network, get("wiki.example.com", "/", good))[0] == 200
    for _ in range(LOCK_AFTER):
        assert one(network, get("wiki.example.com", "/", bad))[0] == 401
    network.flush()
    # the wrong passwords ban the address on every listener: the shared port no longer answers
    assert [b.address for b in server.core.access.in_force()] == [ATTACKER]
    refused = visit(network, get("wiki.example.com", "/", good))
    assert refused.received == [] and refused.lost is not None
    assert connect(network, server.port, ATTACKER).lost is not None
    server.shutdown()


def test_a_new_ban_closes_what_is_open_from_that_address():
    network = MemoryNetwork()
    server = GotaxyServer(network, access_config(ban_exempt=()))
    network.listenTCP(8080, EchoFactory())
    network.source = FRIEND  # where the client runs
    client = GotaxyClient(network, server.create_token("alice"),
                          tunnels=[TunnelSpec(name="web", local_port=8080)]).start()
    port = client.up["web"]
    theirs, other = connect(network, port, ATTACKER), connect(network, port, "203.0.113.6")
    assert theirs.lost is None and other.lost is None
    server.core.access.ban(ATTACKER, "by hand", by="operator admin", seconds=60)
    network.flush()
    assert theirs.lost is not None and other.lost is None  # only the banned visitor's connection is cut
    assert server.session("alice") is not None
    server.core.access.ban(FRIEND, "by hand", by="operator admin", seconds=60)
    network.flush()
    assert server.session("alice") is None  # a client at a banned address is disconnected
    assert other.lost is not None  # and its tunnel with it
    client.stop()
    server.shutdown()
