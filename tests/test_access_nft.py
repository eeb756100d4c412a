"""
Bans given to the kernel's firewall (``gotaxy.server.nft``), for real: the
test makes two network namespaces of its own joined by a veth pair (a
"server" at 10.231.0.1 and, on the other side, an attacker at 10.231.0.2
and a friend at 10.231.0.3), loads an nftables ruleset into the server's
namespace that drops what is in the set, and bans the attacker through
``AccessControl`` with ``access.ban.nftCommand`` running nft inside that
namespace.  The attacker's connections then time out (the SYN is dropped,
not refused), the friend's are accepted; lifting the ban lets the attacker
in again.  Skipped, saying why, where nft, ip netns or root are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import List

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from gotaxy.config import AccessSettings
from gotaxy.server.access import AccessControl
from gotaxy.testing import SynchronousStore, memory_store, server_config

SERVER, ATTACKER, FRIEND = "10.231.0.1", "10.231.0.2", "10.231.0.3"
PORT = 7000
RULESET = """
table inet gotaxy {
    set banned { type ipv4_addr; }
    chain input {
        type filter hook input priority -10; policy accept;
        ip saddr @banned drop
    }
}
"""
LISTENER = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('{SERVER}', {PORT})); s.listen(16); print('listening', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'hello'); c.close()\n"
)


LISTENER6 = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('::', {PORT + 1})); s.listen(16); print('listening', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'hello'); c.close()\n"
)


def _why_not() -> str:
    if sys.platform != "linux":
        return "nftables and network namespaces are Linux's"
    if os.geteuid() != 0:
        return "needs root to make network namespaces (CI runs as root)"
    for program in ("nft", "ip"):
        if shutil.which(program) is None:
            return f"{program} is not installed (Debian packages nftables and iproute2, see .ci/apt-packages)"
    name = f"gotaxy-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip()}"
    try:
        probe = subprocess.run(["ip", "netns", "exec", name, "nft", "list", "ruleset"], capture_output=True, text=True)
        if probe.returncode != 0:
            return f"nft does not work in a network namespace here: {probe.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    return ""


def _sh(*argv: str, input: str = None) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, text=True, input=input, timeout=30)


def _connect(source: str, timeout: float = 1.5, server: str = SERVER) -> str:
    """From the attacker's namespace, as ``source``: 'accepted', 'refused' or 'dropped' (timed out)."""
    family, port = ("socket.AF_INET6", PORT + 1) if ":" in server else ("socket.AF_INET", PORT)
    code = (
        "import socket, sys\n"
        f"s = socket.socket({family}); s.settimeout(float(sys.argv[2])); s.bind((sys.argv[1], 0))\n"
        f"try:\n    s.connect(('{server}', {port})); print('accepted', s.recv(5))\n"
        "except socket.timeout:\n    print('dropped')\n"
        "except ConnectionRefusedError:\n    print('refused')\n"
    )
    out = subprocess.run(["ip", "netns", "exec", NetnsFirewallTests.outside, sys.executable, "-c", code, source,
                          str(timeout)], capture_output=True, text=True, timeout=30)
    return out.stdout.split()[0] if out.stdout else f"error: {out.stderr.strip()}"


class NetnsFirewallTests(unittest.TestCase):
    timeout = 120
    inside = ""
    outside = ""

    def setUp(self) -> None:
        why = _why_not()
        if why:
            raise unittest.SkipTest(f"nftables test skipped: {why}")
        suffix = f"{os.getpid()}"
        cls = NetnsFirewallTests
        cls.inside, cls.outside = f"gotaxy-srv-{suffix}", f"gotaxy-atk-{suffix}"
        for name in (self.inside, self.outside):
            _sh("ip", "netns", "add", name)
            self.addCleanup(subprocess.run, ["ip", "netns", "delete", name], capture_output=True)
        veth_in, veth_out = f"gxs{suffix}"[:15], f"gxa{suffix}"[:15]
        _sh("ip", "link", "add", veth_in, "netns", self.inside, "type", "veth", "peer", "name", veth_out,
            "netns", self.outside)
        _sh("ip", "-n", self.inside, "addr", "add", f"{SERVER}/24", "dev", veth_in)
        _sh("ip", "-n", self.outside, "addr", "add", f"{ATTACKER}/24", "dev", veth_out)
        _sh("ip", "-n", self.outside, "addr", "add", f"{FRIEND}/24", "dev", veth_out)
        for ns, dev in ((self.inside, veth_in), (self.outside, veth_out)):
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "netns", "exec", self.inside, "nft", "-f", "-", input=RULESET)
        listener = subprocess.Popen(["ip", "netns", "exec", self.inside, sys.executable, "-c", LISTENER],
                                    stdout=subprocess.PIPE, text=True)
        self.addCleanup(listener.wait, 10)
        self.addCleanup(listener.kill)
        assert listener.stdout.readline().strip() == "listening"

    def elements(self) -> List[str]:
        out = subprocess.run(["ip", "netns", "exec", self.inside, "nft", "list", "set", "inet", "gotaxy", "banned"],
                             capture_output=True, text=True, check=True).stdout
        return [a for a in (ATTACKER, FRIEND) if a in out]

    async def test_a_banned_address_is_dropped_by_the_kernel_until_its_ban_is_lifted(self) -> None:
        self.assertEqual(await deferToThread(_connect, ATTACKER), "accepted")  # before: the listener answers
        config = server_config(access=AccessSettings(
            ban_exempt=(), nft_set="inet gotaxy banned", nft_command=f"ip netns exec {self.inside} nft"))
        store = SynchronousStore(memory_store(reactor.seconds), reactor)
        self.addCleanup(store.stop)
        access = AccessControl(config, reactor, store)
        access.start()
        self.addCleanup(access.stop)
        await access.firewall.idle()
        await access.ban(ATTACKER, "10 wrong client tokens in 600 s")
        await access.firewall.idle()
        self.assertEqual(self.elements(), [ATTACKER])
        self.assertEqual(await deferToThread(_connect, ATTACKER), "dropped")
        self.assertEqual(await deferToThread(_connect, FRIEND), "accepted")
        # a restart empties the set and puts the bans in force back
        again = AccessControl(config, reactor, store)
        again.start()
        self.addCleanup(again.stop)
        await again.firewall.idle()
        await _until(lambda: again.bans)
        await again.firewall.idle()
        self.assertEqual(self.elements(), [ATTACKER])
        await again.lift(ATTACKER, "console operator admin")
        await again.firewall.idle()
        self.assertEqual(self.elements(), [])
        self.assertEqual(await deferToThread(_connect, ATTACKER), "accepted")
        self.assertEqual(again.firewall.failures, 0)

    async def test_an_ipv6_ban_drops_the_sources_whole_64_in_the_kernel(self) -> None:
        # fd00:231::/64 holds the server, the attacker and its neighbour; fd00:232::/64 is another site on the link.
        suffix = f"{os.getpid()}"
        veth_in, veth_out = f"gxs{suffix}"[:15], f"gxa{suffix}"[:15]
        for ns, dev, addresses in ((self.inside, veth_in, ("fd00:231::1/64", "fd00:232::1/64")),
                                   (self.outside, veth_out, ("fd00:231::2/64", "fd00:231::3/64", "fd00:232::3/64"))):
            for address in addresses:
                _sh("ip", "-n", ns, "addr", "add", address, "dev", dev, "nodad")
        _sh("ip", "netns", "exec", self.inside, "nft", "add", "set", "inet", "gotaxy", "banned6",
            "{ type ipv6_addr; flags interval; }")
        _sh("ip", "netns", "exec", self.inside, "nft", "add", "rule", "inet", "gotaxy", "input",
            "ip6", "saddr", "@banned6", "drop")
        listener = subprocess.Popen(["ip", "netns", "exec", self.inside, sys.executable, "-c", LISTENER6],
                                    stdout=subprocess.PIPE, text=True)
        self.addCleanup(listener.wait, 10)
        self.addCleanup(listener.kill)
        assert listener.stdout.readline().strip() == "listening"
        self.assertEqual(await deferToThread(_connect, "fd00:231::2", 1.5, "fd00:231::1"), "accepted")
        config = server_config(access=AccessSettings(
            ban_exempt=(), nft_set6="inet gotaxy banned6", nft_command=f"ip netns exec {self.inside} nft"))
        store = SynchronousStore(memory_store(reactor.seconds), reactor)
        self.addCleanup(store.stop)
        access = AccessControl(config, reactor, store)
        access.start()
        self.addCleanup(access.stop)
        await access.firewall.idle()
        ban = await access.ban("fd00:231::2", "10 wrong client tokens in 600 s")
        await access.firewall.idle()
        self.assertEqual(ban.address, "fd00:231::/64")
        self.assertEqual(await deferToThread(_connect, "fd00:231::2", 1.5, "fd00:231::1"), "dropped")
        self.assertEqual(await deferToThread(_connect, "fd00:231::3", 1.5, "fd00:231::1"), "dropped")  # its /64
        self.assertEqual(await deferToThread(_connect, "fd00:232::3", 1.5, "fd00:232::1"), "accepted")
        await access.lift("fd00:231::3", "console operator admin")  # any address of the network lifts it
        await access.firewall.idle()
        self.assertEqual(await deferToThread(_connect, "fd00:231::2", 1.5, "fd00:231::1"), "accepted")
        self.assertEqual(access.firewall.failures, 0)


async def _until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        d: Deferred = Deferred()
        reactor.callLater(0.05, d.callback, None)
        await d
