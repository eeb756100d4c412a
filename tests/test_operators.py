"""Operator log-in: right and wrong passwords, slow-down, lock-out, events."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.trial import unittest

from gotaxy.config import ServerConfig
from gotaxy.server.core import ServerCore
from gotaxy.server.operators import (
    FREE_FAILURES, LOCK_AFTER, LOCK_SECONDS, MAX_CHECKS, MAX_DELAY, WINDOW, AuthFailed, Busy, LockedOut, OperatorAuth,
)
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
        self.auth = OperatorAuth(self.core, thread_reactor=reactor)
        self.auth.startService()
        self.addCleanup(self.auth.stopService)
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
            waits.append(await self.auth.retry_after("admin", "10.0.0.1"))
            self.clock.advance(waits[-1])
            await self._fail()
        self.assertEqual(waits[:4], [1.0, 2.0, 4.0, 8.0])
        # Locked: even the right password is refused for LOCK_SECONDS.
        self.assertIn("operator.locked_out", [e.type for e in self.published])
        self.clock.advance(LOCK_SECONDS - 1)
        with self.assertRaises(LockedOut):
            await self.auth.authenticate("admin", "the right password", "10.0.0.1", "panel")

    async def test_lock_is_per_address_and_per_user_for_the_addresses_that_failed(self):
        for _ in range(3):
            await self._fail(address="10.0.0.1")
        with self.assertRaises(LockedOut):
            await self.auth.authenticate("admin", "the right password", "10.0.0.1", "panel")
        # The operator at another address is not slowed down by someone else's guesses ...
        await self.auth.authenticate("admin", "the right password", "10.0.0.2", "panel")
        # ... nor is another user name from a third address.
        with self.assertRaises(AuthFailed):
            await self.auth.authenticate("bob", "x", "10.0.0.3", "panel")

    async def test_ten_failures_from_elsewhere_do_not_lock_the_admin_out(self):
        """Issue 8, item 4: anyone could lock the only admin out for 15 minutes."""
        for _ in range(LOCK_AFTER):
            self.clock.advance(await self.auth.retry_after("admin", "10.0.0.1"))
            await self._fail(address="10.0.0.1")
        self.assertIn("operator.locked_out", [e.type for e in self.published])
        with self.assertRaises(LockedOut):
            await self.auth.authenticate("admin", "the right password", "10.0.0.1", "panel")
        await self.auth.authenticate("admin", "the right password", "10.0.0.2", "console")

    async def test_the_account_count_locks_every_address_that_guessed(self):
        # One guess each from many addresses: the account's count locks all of them, so
        # more addresses do not buy ten guesses each.
        for n in range(LOCK_AFTER + 2):
            await self._fail(address=f"10.1.0.{n}")
        for n in range(LOCK_AFTER + 2):
            with self.assertRaises(LockedOut):
                await self.auth.authenticate("admin", "the right password", f"10.1.0.{n}", "panel")
        await self.auth.authenticate("admin", "the right password", "10.2.0.1", "panel")

    async def _storm(self, attempts):
        results = await DeferredList(
            [Deferred.fromCoroutine(self.auth.authenticate(user, password, address, "panel"))
             for user, password, address in attempts],
            consumeErrors=True,
        )
        return [type(value.value).__name__ if not ok else "ok" for ok, value in results]

    async def test_concurrent_wrong_passwords_from_one_address_are_counted_before_checking(self):
        """Issue 8, item 4: 60 concurrent wrong passwords were all evaluated."""
        outcomes = await self._storm([("admin", f"guess {n}", "10.0.0.1") for n in range(60)])
        self.assertEqual(outcomes.count("AuthFailed"), FREE_FAILURES)
        self.assertEqual(outcomes.count("LockedOut"), 60 - FREE_FAILURES)
        events = self.store.store.events(type_="operator.login_failed")
        self.assertEqual(len(events), FREE_FAILURES)
        # Storms every minute for 40 minutes: never more than LOCK_AFTER evaluated in any window.
        evaluated = [(self.clock.seconds(), FREE_FAILURES)]
        for _ in range(40):
            self.clock.advance(60)
            outcomes = await self._storm([("admin", "guess", "10.0.0.1") for _ in range(20)])
            evaluated.append((self.clock.seconds(), outcomes.count("AuthFailed")))
        for at, _ in evaluated:
            in_window = sum(n for t, n in evaluated if at - WINDOW < t <= at)
            self.assertLessEqual(in_window, LOCK_AFTER)
        self.assertGreater(sum(n for _, n in evaluated), LOCK_AFTER)  # the window does move on

    async def test_concurrent_wrong_passwords_for_one_account_from_two_addresses(self):
        outcomes = await self._storm([("admin", "guess", f"10.0.0.{n % 2}") for n in range(60)])
        # Per address the slow-down holds; the account's count adds up both.
        self.assertLessEqual(outcomes.count("AuthFailed"), 2 * FREE_FAILURES)
        self.assertEqual(await self.auth.failures(username="admin"), outcomes.count("AuthFailed"))
        # Concurrent wrong guesses for several names from one address: the address's limit holds.
        self.clock.advance(LOCK_SECONDS + 1)
        outcomes = await self._storm([(f"user{n}", "guess", "10.0.0.9") for n in range(40)])
        self.assertEqual(outcomes.count("AuthFailed"), FREE_FAILURES)

    async def test_a_right_password_gives_its_slot_back(self):
        outcomes = await self._storm([("admin", "the right password", "10.0.0.1")] * 3)
        self.assertEqual(outcomes, ["ok"] * 3)
        self.assertEqual(await self.auth.failures(username="admin", address="10.0.0.1"), 0)

    async def test_too_many_checks_at_once_are_refused_as_busy_and_not_counted(self):
        """Issue 8, item 3: the queue of waiting password checks is bounded."""
        outcomes = await self._storm([("admin", "guess", f"10.3.0.{n}") for n in range(MAX_CHECKS + 5)])
        self.assertEqual(outcomes.count("AuthFailed"), MAX_CHECKS)
        self.assertEqual(outcomes.count("Busy"), 5)
        self.assertEqual(await self.auth.failures(address=f"10.3.0.{MAX_CHECKS}"), 0)
        with self.assertRaises(Busy) as e:
            raise Busy()
        self.assertEqual(str(e.exception), "too many log-ins in progress, try again in a few seconds")
        self.assertIsInstance(e.exception, LockedOut)  # so every caller answers "try later"
        # Once they are done, log-ins work again.
        await self.auth.authenticate("admin", "the right password", "10.3.1.1", "panel")

    async def test_password_checks_do_not_run_on_the_store_thread(self):
        """Issue 8, item 3: argon2 on the store's one thread starved client log-ins."""
        import threading

        from gotaxy.server import operators

        threads = []

        def verify(stored: str, password: str) -> "tuple[bool, str | None]":
            threads.append(threading.current_thread().name)
            return real(stored, password)

        real = operators.check_password
        self.patch(operators, "check_password", verify)
        await self.auth.authenticate("admin", "the right password", "10.0.0.1", "panel")
        await self._fail(address="10.0.0.2")
        self.assertEqual(len(threads), 2)
        self.assertTrue(all("gotaxy-password-check" in name for name in threads), threads)

    async def test_success_clears_the_count(self):
        await self._fail()
        await self._fail()
        await self.auth.authenticate("admin", "the right password", "10.0.0.1", "panel")
        self.assertEqual(await self.auth.failures(username="admin", address="10.0.0.1"), 0)

    async def test_change_password(self):
        with self.assertRaises(ValueError):
            await self.auth.change_password("admin", "the right password", "short", "10.0.0.1", "panel")
        await self.auth.change_password("admin", "the right password", "a much better one", "10.0.0.1", "panel")
        await self.auth.authenticate("admin", "a much better one", "10.0.0.1", "panel")
        with self.assertRaises(AuthFailed):
            await self.auth.authenticate("admin", "the right password", "10.0.0.1", "panel")
        self.assertIn("operator.password_changed", [e.type for e in self.published])

    async def test_an_old_hash_is_replaced_at_the_next_right_log_in(self):
        """Hashes with 0.1's parameters (64 MiB) keep working and get today's (OWASP's, 19 MiB) when used."""
        from argon2 import PasswordHasher

        from gotaxy import credentials

        db = self.store.store
        old = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4).hash("the right password")
        db.set_admin_password_hash("admin", old)
        with self.assertRaises(AuthFailed):
            await self.auth.authenticate("admin", "wrong", "10.0.0.1", "panel")
        self.assertEqual(db.admin_password_hash("admin"), (True, old))  # a wrong password changes nothing
        await self.auth.authenticate("admin", "the right password", "10.0.0.1", "panel")
        _, new = db.admin_password_hash("admin")
        self.assertNotEqual(new, old)
        self.assertFalse(credentials.PASSWORD_HASHER.check_needs_rehash(new))
        await self.auth.authenticate("admin", "the right password", "10.0.0.2", "panel")
        self.assertEqual(db.admin_password_hash("admin"), (True, new))  # once only

    def test_a_rehash_does_not_undo_a_password_changed_meanwhile(self):
        db = self.store.store
        _, before = db.admin_password_hash("admin")
        db.set_admin_password("admin", "changed by another process")
        self.assertFalse(db.rehash_admin_password("admin", before, "$argon2id$stale"))
        self.assertTrue(db.verify_admin("admin", "changed by another process"))
        _, now = db.admin_password_hash("admin")
        self.assertTrue(db.rehash_admin_password("admin", now, before))
        self.assertTrue(db.verify_admin("admin", "the right password"))

    async def test_a_new_password_is_hashed_off_the_store_thread(self):
        """argon2 on the store's one thread would hold up every client log-in and tunnel open meanwhile."""
        import threading

        from gotaxy.server import operators

        threads = []
        real = operators.hash_password

        def hash_(password: str) -> str:
            threads.append(threading.current_thread().name)
            return real(password)

        self.patch(operators, "hash_password", hash_)
        await self.auth.change_password("admin", "the right password", "a much better one", "10.0.0.1", "panel")
        self.assertEqual(len(threads), 1)
        self.assertIn("gotaxy-password-check", threads[0])


class SharedStoreTests(unittest.TestCase):
    """Two server processes on one store: what one counts, the other enforces."""

    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        Store(default_url(directory)).ensure_admin("admin", "the right password")
        self.cores = []
        for _ in range(2):
            # Each its own connection to the one database file, as two processes have.
            store = ThreadedStore(Store(default_url(directory), clock=self.clock.seconds), reactor)
            store.start()
            self.addCleanup(store.stop)
            core = ServerCore(ServerConfig(data_dir=directory), store, self.clock)
            auth = OperatorAuth(core, thread_reactor=reactor)
            auth.startService()
            self.addCleanup(auth.stopService)
            self.cores.append((core, auth))

    async def test_failures_on_one_server_lock_the_address_out_of_the_other(self):
        (_, first), (_, second) = self.cores
        for n in range(LOCK_AFTER):
            self.clock.advance(await first.retry_after("admin", "10.0.0.1"))
            # Alternate between the two: the slow-down counts both.
            with self.assertRaises(AuthFailed):
                await (first if n % 2 else second).authenticate("admin", "wrong", "10.0.0.1", "panel")
        self.assertEqual(await second.failures(address="10.0.0.1"), LOCK_AFTER)
        self.clock.advance(MAX_DELAY)
        for auth in (first, second):
            with self.assertRaises(LockedOut):
                await auth.authenticate("admin", "the right password", "10.0.0.1", "console")
        # The operator elsewhere is not locked out of either.
        await second.authenticate("admin", "the right password", "10.0.0.2", "panel")

    async def test_the_slow_down_holds_across_servers(self):
        (_, first), (_, second) = self.cores
        for _ in range(FREE_FAILURES):
            with self.assertRaises(AuthFailed):
                await first.authenticate("admin", "wrong", "10.0.0.1", "panel")
        with self.assertRaises(LockedOut) as refused:
            await second.authenticate("admin", "the right password", "10.0.0.1", "panel")
        self.assertAlmostEqual(refused.exception.retry_after, 1.0)

    async def test_wrong_second_factor_codes_on_one_server_lock_the_name_on_the_other(self):
        from cryptography.fernet import Fernet

        from gotaxy.sealing import Sealer
        from gotaxy.web.auth import TOTP_LOCK_AFTER, PanelAuth

        (core1, auth1), (core2, auth2) = self.cores
        sealer = Sealer(Fernet.generate_key())
        panels = [PanelAuth(core1, auth1, self.clock, sealer), PanelAuth(core2, auth2, self.clock, sealer)]
        for n in range(TOTP_LOCK_AFTER):
            with self.assertRaises(AuthFailed):
                await panels[n % 2].check_second_factor("admin", "000000", "10.0.0.1", "web")
        for panel in panels:
            with self.assertRaises(LockedOut):
                await panel.check_second_factor("admin", "000000", "10.0.0.1", "web")
