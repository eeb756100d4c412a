# -*- test-case-name: tests.test_access_nft -*-
"""
Banned addresses in nftables sets (``access.ban.nftSet``, ``nftSet6``), so
that the kernel drops their packets before they reach Gotaxy.

The operator's ruleset owns the sets and the rule that drops what is in
them; Gotaxy only adds and deletes elements::

    nft add element inet gotaxy banned { 198.51.100.7 }
    nft delete element inet gotaxy banned { 198.51.100.7 }
    nft add element inet gotaxy banned6 { 2001:db8:1:2::/64 }

An IPv6 ban is a network (``access.ban.ipv6Prefix``, a /64 by default), so
the IPv6 set needs ``flags interval``.

At start the sets are flushed, and the bans in force are added again as
the store's copy is loaded (``gotaxy.server.access``), so bans that ended
while the server was down do not linger.  Each command runs as a child
process (``reactor.spawnProcess``: the reactor never waits for it), one
at a time in the order asked (an add and the delete that follows it cannot
cross), and is killed after ``TIMEOUT`` seconds.  A failure is logged and
changes nothing else: the ban still holds in Gotaxy's own check.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
from typing import Any, List, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer

#: Seconds one nft command may take before it is killed.
TIMEOUT = 10.0
#: Most output kept from one command (for the log).
MAX_OUTPUT = 2048


class NftError(Exception):
    """An nft command failed; the message has its error output."""


class _Run(ProcessProtocol):
    def __init__(self, reactor: Any, argv: List[str], timeout: float) -> None:
        self.argv = argv
        self.done: Deferred = Deferred()
        self.output = b""
        self._timer = reactor.callLater(timeout, self._too_slow)
        self._timed_out = False

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[:MAX_OUTPUT]

    errReceived = outReceived

    def _too_slow(self) -> None:
        self._timed_out = True
        try:
            self.transport.signalProcess("KILL")
        except Exception:
            pass

    def processEnded(self, reason: Any) -> None:
        if self._timer.active():
            self._timer.cancel()
        code = getattr(reason.value, "exitCode", None)
        text = self.output.decode("utf-8", "replace").strip()
        if self._timed_out:
            self.done.errback(NftError(f"{' '.join(self.argv)} took more than {TIMEOUT:g} s and was killed"))
        elif code != 0:
            self.done.errback(NftError(f"{' '.join(self.argv)} failed (exit status {code}): {text}"))
        else:
            self.done.callback(text)


class NftSets:
    """The IPv4 set ``set4`` and IPv6 set ``set6`` ("FAMILY TABLE NAME"; either may be None)."""

    log = Logger(observer=gotaxy_observer)

    def __init__(self, reactor: Any, command: str, set4: Optional[str], set6: Optional[str],
                 timeout: float = TIMEOUT) -> None:
        self.reactor = reactor
        self.command = shlex.split(command)
        self.sets = {4: set4.split() if set4 else None, 6: set6.split() if set6 else None}
        self.timeout = timeout
        self._last: Deferred = succeed(None)
        self.failures = 0
        self._program = shutil.which(self.command[0]) if self.command else None

    def start(self) -> Deferred:
        """Empty the sets (the bans in force are added again as they are loaded)."""
        if self._program is None:
            self.log.error(
                "access.ban.nftSet is set but {program!r} is not found: banned addresses are not given to the "
                "firewall; install nftables, or set access.ban.nftCommand to the nft program",
                program=self.command[0] if self.command else "")
            return succeed(None)
        for spec in self.sets.values():
            if spec is not None:
                self._queue(["flush", "set", *spec])
        return self.idle()

    def add(self, address: str) -> Deferred:
        return self._element("add", address)

    def remove(self, address: str) -> Deferred:
        return self._element("delete", address)

    def idle(self) -> Deferred:
        """Fires once every command asked so far has ended."""
        d: Deferred = Deferred()
        self._last.addBoth(lambda result: (d.callback(None), result)[1])
        return d

    def _element(self, verb: str, address: str) -> Deferred:
        try:
            # An address, or an IPv6 network (a ban per access.ban.ipv6Prefix: the set needs "flags interval").
            version = ipaddress.ip_network(address, strict=False).version
        except ValueError:
            return succeed(None)
        spec = self.sets[version]
        if spec is None or self._program is None:
            return succeed(None)
        return self._queue([verb, "element", *spec, "{", address, "}"])

    def _queue(self, args: List[str]) -> Deferred:
        argv = [*self.command, *args]
        result: Deferred = Deferred()

        def run(_: Any) -> Deferred:
            protocol = _Run(self.reactor, argv, self.timeout)
            assert self._program is not None
            self.reactor.spawnProcess(protocol, self._program, argv, env=dict(os.environ))
            protocol.done.addCallbacks(result.callback, self._failed, errbackArgs=(result,))
            return protocol.done.addErrback(lambda _: None)

        self._last = self._last.addBoth(run)
        return result

    def _failed(self, failure: Any, result: Deferred) -> None:
        self.failures += 1
        self.log.error("firewall: {error}", error=failure.getErrorMessage())
        result.callback(None)
