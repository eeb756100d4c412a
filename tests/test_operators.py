"""Operator log-in: right and wrong passwords, slow-down, lock-out, events."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from gotaxy.config import ServerConfig
from gotaxy.server.core import ServerCore
from gotaxy.server.operators import LOCK_AFTER, LOCK_SECONDS, AuthFailed, LockedOut, OperatorAuth
from gotaxy.store import Store, ThreadedStore, default_url


class OperatorAuthTests(unittest.TestCase):
    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        store = Store(default_url(directory), clock=self.clock.seconds)
        store.ensure_admin("admin", "the right password")
        self.store = ThreadedStore(store, reactor)
        self.store.start()
        self.addCleanup(self.store.stop)
        self.core = ServerCore(ServerConfig(data_dir=directory), self.store, self.clock)
        self.auth = OperatorAuth(self.core)
        self.published = []
        self.core.events.subscribe(self.published.append)

    async def _fail(self, user: str = "admin", address: str = "10.0.0.1") -> None:
        with self.assertRaises(AuthFailed):
            await self.auth.authenticate(user, "wrong", address, "panel")

    async def test_right_password(self):
        await self.auth.authenticate("admin", "the right password", "10.0.0.1", "panel")
        self.assertEqual(self.published, [])

    async def test_failures_are_events_without_the_password(self):
        await self._fail()
        await self._fail(user="nobody")
        self.assertEqual([e.type for e in self.published], ["operator.login_failed"] * 2)
        self.assertEqual(self.published[0].address, "10.0.0.1")
        events = self.store.store.events(type_="operator.login_failed")
        self.assertEqual(len(events), 2)
        self.assertTrue(all("wrong" not in (e.detail or "") for e in events))

    async def test_slow_down_then_lock_out(self):
        for _ in range(3):
            await self._fail()
        # The fourth attempt right away is refused without checking.
        with self.assertRaises(LockedOut) as e:
            await self.auth.authenticate("admin", "the right password", "10.0.0.1", "console")
        self.assertAlmostEqual(e.exception.retry_after, 1.0)
        # Waiting long enough allows another try; failures keep doubling the wait.
        waits = []
        for _ in range(LOCK_AFTER - 3):
            waits.append(self.auth.retry_after("admin", "10.0.0.1"))
            self.clock.advance(waits[-1])
            await self._fail()
        self.assertEqual(waits[:4], [1.0, 2.0, 4.0, 8.0])
        # Locked: even the right password is refused for LOCK_SECONDS.
        self.assertIn("operator.locked_out", [e.type for e in self.published])
        self.clock.advance(LOCK_SECONDS - 1)
        with self.assertRaises(LockedOut):
            await self.auth.authenticate("admin", "the right password", "10.0.0.1", "panel")

    async def test_lock_is_per_user_and_per_address(self):
        for _ in range(3):
            await self._fail(address="10.0.0.1")
        # Same user from elsewhere: the user is throttled too.
        with self.assertRaises(LockedOut):
            await self.auth.authenticate("admin", "the right password", "10.0.0.2", "panel")
        # Another user from a third address is not affected.
        with self.assertRaises(AuthFailed):
            await self.auth.authenticate("bob", "x", "10.0.0.3", "panel")

    async def test_success_clears_the_count(self):
        await self._fail()
        await self._fail()
        await self.auth.authenticate("admin", "the right password", "10.0.0.1", "panel")
        self.assertEqual(self.auth.failures(username="admin", address="10.0.0.1"), 0)

    async def test_change_password(self):
        with self.assertRaises(ValueError):
            await self.auth.change_password("admin", "the right password", "short", "10.0.0.1", "panel")
        await self.auth.change_password("admin", "the right password", "a much better one", "10.0.0.1", "panel")
        await self.auth.authenticate("admin", "a much better one", "10.0.0.1", "panel")
        with self.assertRaises(AuthFailed):
            await self.auth.authenticate("admin", "the right password", "10.0.0.1", "panel")
        self.assertIn("operator.password_changed", [e.type for e in self.published])
