"""
The console's SSH server (``gotaxy.console.service``): host key, the
password and key checkers, and the listening service inside a live server.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from typing import Any

from twisted.conch.ssh import keys
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.userauth import MSG_USERAUTH_BANNER
from twisted.cred.portal import Portal

from gotaxy.console.service import (
    AUTHORIZED_KEYS_FILE,
    HOST_KEY_FILE,
    AuthorizedKeysChecker,
    AuthorizedKeysFile,
    ConsoleRealm,
    ConsoleUserAuth,
    OperatorPasswordChecker,
    PasswordFromAddress,
    load_or_create_host_key,
)
from gotaxy.process import StartError
from gotaxy.store import lockouts
from tests.inprocess import ADMIN_PASSWORD, LiveSystem, free_port, wait_until


def _tempdir(test: unittest.TestCase) -> str:
    path = tempfile.mkdtemp(prefix="gotaxy-console-")
    test.addCleanup(lambda: __import__("shutil").rmtree(path, True))
    return path


class HostKeyTests(unittest.TestCase):
    def test_made_once_private_and_kept(self):
        path = os.path.join(_tempdir(self), HOST_KEY_FILE)
        first = load_or_create_host_key(path)
        self.assertEqual(first.sshType(), b"ssh-ed25519")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        again = load_or_create_host_key(path)
        self.assertEqual(again.fingerprint(), first.fingerprint())


class AuthorizedKeysTests(unittest.TestCase):
    def test_keys_are_read_from_the_file_for_admin_only(self):
        path = os.path.join(_tempdir(self), AUTHORIZED_KEYS_FILE)
        db = AuthorizedKeysFile(path)
        self.assertEqual(list(db.getAuthorizedKeys(b"admin")), [])  # no file yet
        key = keys.Key.fromString(load_or_create_host_key(path + ".k").public().toString("openssh"))
        with open(path, "wb") as f:
            f.write(b"# a comment\n\n" + key.toString("openssh") + b" me@laptop\nnot a key\n")
        self.assertEqual(list(db.getAuthorizedKeys(b"admin")), [key])
        self.assertEqual(list(db.getAuthorizedKeys(b"root")), [])
        # Re-read each time: removing the line revokes the key without a restart.
        with open(path, "wb") as f:
            f.write(b"")
        self.assertEqual(list(db.getAuthorizedKeys(b"admin")), [])


    async def test_the_file_is_read_off_the_reactor_thread(self):
        """A slow disk (or a huge file) must not stall every tunnel while a key is checked."""
        import threading

        from twisted.cred.credentials import SSHPrivateKey

        directory = _tempdir(self)
        path = os.path.join(directory, AUTHORIZED_KEYS_FILE)
        private = load_or_create_host_key(os.path.join(directory, "k"))
        with open(path, "wb") as f:
            f.write(private.public().toString("openssh") + b"\n")
        readers = []

        class Recording(AuthorizedKeysFile):
            def getAuthorizedKeys(self, username: bytes) -> Any:
                readers.append(threading.current_thread())
                return super().getAuthorizedKeys(username)

        checker = AuthorizedKeysChecker(Recording(path), reactor)
        data = b"session and request data"
        blob = private.public().blob()
        avatar = await checker.requestAvatarId(
            SSHPrivateKey(b"admin", b"ssh-ed25519", blob, data, private.sign(data)))
        self.assertEqual(avatar, b"admin")
        self.assertEqual(len(readers), 1)
        self.assertIsNot(readers[0], threading.main_thread())
        # A key not listed is still refused.
        other = load_or_create_host_key(os.path.join(directory, "other"))
        with self.assertRaises(UnauthorizedLogin):
            await checker.requestAvatarId(
                SSHPrivateKey(b"admin", b"ssh-ed25519", other.public().blob(), data, other.sign(data)))


async def _lock_out(live: Any, address: str, until: float) -> None:
    """Lock ``address`` out in the store, as ten failures would (without waiting out the slow-down)."""
    store = live.operators.core.store
    await store.call(lockouts.lock, store.store.db, lockouts.OPERATOR, lockouts.address_key(address), until)


class PasswordCheckerTests(unittest.TestCase):
    timeout = 60

    async def test_same_password_events_and_lockout_as_the_panel(self):
        live = await LiveSystem.start(self, server_args=["--console-port", "0"])
        checker = OperatorPasswordChecker(live.server.console_access)
        avatar = await checker.requestAvatarId(PasswordFromAddress(b"admin", ADMIN_PASSWORD.encode(), "10.0.0.9"))
        self.assertEqual(avatar, b"admin")

        with self.assertRaises(UnauthorizedLogin):
            await checker.requestAvatarId(PasswordFromAddress(b"admin", b"wrong", "10.0.0.9"))
        (event,) = await live.management.events(type_="operator.login_failed")
        self.assertEqual((event.address, event.detail), ("10.0.0.9", "via console, user 'admin'"))
        # One OperatorAuth for both faces: the console's failure counts for the panel too.
        self.assertEqual(await live.operators.failures(address="10.0.0.9"), 1)

        # Lock the address out (the clock is real: step past the slow-down by hand).
        await _lock_out(live, "10.0.0.9", reactor.seconds() + 900)
        with self.assertRaises(UnauthorizedLogin) as locked:
            await checker.requestAvatarId(PasswordFromAddress(b"admin", ADMIN_PASSWORD.encode(), "10.0.0.9"))
        self.assertTrue(str(locked.exception).startswith("too many failed log-ins; try again in"))

    async def test_overlong_password_is_a_failure(self):
        live = await LiveSystem.start(self, server_args=["--console-port", "0"])
        checker = OperatorPasswordChecker(live.server.console_access)
        with self.assertRaises(UnauthorizedLogin):
            await checker.requestAvatarId(
                PasswordFromAddress(b"admin", ADMIN_PASSWORD.encode() + b"x" * 5000, "10.0.0.8"))
        self.assertEqual(await live.operators.failures(address="10.0.0.8"), 1)


class _Banner(Protocol):
    def __init__(self) -> None:
        self.received = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.received.called:
            self.received.callback(data)
        self.transport.loseConnection()


class ServiceTests(unittest.TestCase):
    timeout = 60

    async def test_port_0_means_no_console(self):
        live = await LiveSystem.start(self, server_args=["--console-port", "0"])
        self.assertIsNone(live.server.console)
        self.assertFalse(os.path.exists(os.path.join(live.data_dir, HOST_KEY_FILE)))

    async def test_listens_and_speaks_ssh(self):
        port = free_port()
        live = await LiveSystem.start(self, server_args=["--console-port", str(port)])
        await wait_until(lambda: live.server.console.port is not None)
        self.assertEqual(live.server.console.port.getHost().host, "127.0.0.1")
        # The SSH server (and its host key) is made at the first connection (gotaxy.console.listener).
        self.assertFalse(live.server.console.factory.wrapped.made)
        self.assertFalse(os.path.exists(os.path.join(live.data_dir, HOST_KEY_FILE)))
        banner = _Banner()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), banner)
        self.assertTrue((await banner.received).startswith(b"SSH-2.0-"))
        path = os.path.join(live.data_dir, HOST_KEY_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    async def test_a_busy_port_stops_the_start_and_names_the_setting(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with self.assertRaises(StartError) as caught:
            await LiveSystem.start(self, server_args=["--console-port", str(port)])
        self.assertIn(f"cannot listen on 127.0.0.1:{port} for the SSH console (console.port)", str(caught.exception))
        self.assertIn("choose another port with console.port or --console-port, or 0 to turn it off", str(caught.exception))


class _FakePeer:
    host = "10.0.0.7"


class _FakeSSHTransport:
    def __init__(self) -> None:
        self.packets: list = []
        self.transport = self

    def getPeer(self) -> "_FakePeer":
        return _FakePeer()

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.packets.append((kind, payload))


class UserAuthTests(unittest.TestCase):
    timeout = 60

    async def _auth(self) -> "tuple[ConsoleUserAuth, _FakeSSHTransport, LiveSystem]":
        live = await LiveSystem.start(self, server_args=["--console-port", "0"])
        auth = ConsoleUserAuth()
        auth.transport = _FakeSSHTransport()
        auth.portal = Portal(ConsoleRealm(live.server.console_access, reactor, False), [OperatorPasswordChecker(live.server.console_access)])
        auth.passwordDelay = 0
        auth.user = b"admin"
        return auth, auth.transport, live

    async def test_password_comes_with_the_clients_address(self):
        auth, transport, live = await self._auth()
        with self.assertRaises(UnauthorizedLogin):
            await auth.auth_password(b"\x00" + NS(b"wrong"))
        self.assertEqual(await live.operators.failures(address="10.0.0.7"), 1)
        self.assertEqual(transport.packets, [])  # a plain failure: no banner
        interface, avatar, logout = await auth.auth_password(b"\x00" + NS(ADMIN_PASSWORD.encode()))
        self.assertEqual(avatar.username, "admin")

    async def test_a_locked_out_client_is_told_so_in_a_banner(self):
        auth, transport, live = await self._auth()
        # Lock the address out as ten failures would (without waiting out the slow-down).
        await _lock_out(live, "10.0.0.7", reactor.seconds() + 600)
        with self.assertRaises(UnauthorizedLogin):
            await auth.auth_password(b"\x00" + NS(ADMIN_PASSWORD.encode()))
        ((kind, payload),) = transport.packets
        self.assertEqual(kind, MSG_USERAUTH_BANNER)
        message, _ = getNS(payload)
        self.assertRegex(message.decode(), r"^gotaxy: too many failed log-ins; try again in 60\d s\r\n$")


class ConnectionLimitTests(unittest.TestCase):
    def test_the_ssh_server_made_at_the_first_connection_keeps_the_hooks_set_before(self):
        """ConsoleSSHFactory (what the listener holds): nothing to cut before it is made; then the made one does it all."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from gotaxy.console.listener import ConsoleSSHFactory
        from gotaxy.console.service import MAX_UNAUTHENTICATED_PER_ADDRESS, ConsoleFactory

        directory, clock = _tempdir(self), Clock()
        made = []

        def build() -> ConsoleFactory:
            key = load_or_create_host_key(os.path.join(directory, HOST_KEY_FILE))
            made.append(ConsoleFactory(Portal(ConsoleRealm(None, clock, False)), key, clock))
            return made[-1]

        lazy = ConsoleSSHFactory(build)
        floods: list = []
        lazy.on_refused = floods.append  # as the server sets it, before any connection
        lazy.doStart()
        self.assertEqual(lazy.cut("127.0.0.0/8", lambda address: True), 0)
        self.assertEqual(made, [])
        here = IPv4Address("TCP", "127.0.0.1", 50000)
        first = lazy.buildProtocol(here)
        first.makeConnection(StringTransport())
        self.assertTrue(first.transport.value().startswith(b"SSH-2.0-"))
        self.assertEqual(len(made), 1)
        for _ in range(MAX_UNAUTHENTICATED_PER_ADDRESS - 1):
            self.assertIsNotNone(lazy.buildProtocol(here))
        self.assertIsNone(lazy.buildProtocol(here))  # one too many logging in from there: a flood
        self.assertEqual(floods, ["127.0.0.1"])
        self.assertEqual(len(made), 1)  # made once
        self.assertEqual(lazy.cut("127.0.0.1", lambda address: address == "127.0.0.1"), 1)  # the connected one
        self.assertTrue(first.transport.disconnecting)
        lazy.doStop()

    def test_at_most_max_connections_at_once(self):
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure
        from twisted.internet.error import ConnectionDone

        from gotaxy.console.service import ConsoleFactory

        key = load_or_create_host_key(os.path.join(_tempdir(self), HOST_KEY_FILE))
        factory = ConsoleFactory(Portal(ConsoleRealm(None, reactor, False)), key, max_connections=2)
        factory.startFactory()
        addr = IPv4Address("TCP", "127.0.0.1", 50000)
        first, second = factory.buildProtocol(addr), factory.buildProtocol(addr)
        self.assertIsNotNone(second)
        self.assertIsNone(factory.buildProtocol(addr))  # the third is turned away
        first.makeConnection(StringTransport())
        self.assertTrue(first.transport.value().startswith(b"SSH-2.0-"))
        first.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(factory.buildProtocol(addr))  # room again

    def test_connections_not_logged_in_are_capped_per_address(self):
        from twisted.internet.address import IPv4Address
        from twisted.internet.error import ConnectionDone
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure

        from gotaxy.console.service import LOGIN_TIMEOUT, MAX_UNAUTHENTICATED_PER_ADDRESS, ConsoleFactory

        clock = Clock()
        key = load_or_create_host_key(os.path.join(_tempdir(self), HOST_KEY_FILE))
        factory = ConsoleFactory(Portal(ConsoleRealm(None, clock, False)), key, clock)
        factory.startFactory()
        here, there = IPv4Address("TCP", "127.0.0.1", 50000), IPv4Address("TCP", "127.0.0.2", 50000)
        stalled = [factory.buildProtocol(here) for _ in range(MAX_UNAUTHENTICATED_PER_ADDRESS)]
        self.assertNotIn(None, stalled)
        floods = []
        factory.on_refused = floods.append  # the server counts these towards a ban (gotaxy.server.access)
        self.assertIsNone(factory.buildProtocol(here))
        self.assertEqual(floods, ["127.0.0.1"])
        operator = factory.buildProtocol(there)
        self.assertIsNotNone(operator)
        # Logged in: no longer counted against its address's log-in slots.
        operator.makeConnection(StringTransport())
        factory.logged_in(operator)
        self.assertEqual(factory.waiting, {"127.0.0.1": MAX_UNAUTHENTICATED_PER_ADDRESS})
        # A connection that never logs in is closed after LOGIN_TIMEOUT, even if it never spoke.
        for protocol in stalled:
            protocol.makeConnection(StringTransport())
        clock.advance(LOGIN_TIMEOUT)
        self.assertTrue(all(p.transport.disconnecting for p in stalled))
        self.assertFalse(operator.transport.disconnecting)
        for protocol in stalled:
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(factory.waiting, {})
        self.assertIsNotNone(factory.buildProtocol(here))

    def test_ipv6_addresses_of_one_network_share_their_slots(self):
        from twisted.internet.address import IPv6Address
        from twisted.internet.task import Clock

        from gotaxy.console.service import MAX_UNAUTHENTICATED_PER_ADDRESS, ConsoleFactory

        clock = Clock()
        key = load_or_create_host_key(os.path.join(_tempdir(self), HOST_KEY_FILE))
        factory = ConsoleFactory(Portal(ConsoleRealm(None, clock, False)), key, clock)
        for n in range(MAX_UNAUTHENTICATED_PER_ADDRESS):
            self.assertIsNotNone(factory.buildProtocol(IPv6Address("TCP", f"2001:db8::{n + 1}", 50000)))
        self.assertIsNone(factory.buildProtocol(IPv6Address("TCP", "2001:db8::ffff", 50000)))
        self.assertIsNotNone(factory.buildProtocol(IPv6Address("TCP", "2001:db8:0:1::1", 50000)))
