"""
Webhooks an operator adds at run time (``Management.add_webhook``): delivery
to a real receiver on loopback, signatures, persistence across restarts,
encryption at rest, removal and errors.
"""

from __future__ import annotations

import json
import os

from twisted.trial import unittest
from twisted.web.server import Site

from gotaxy.notify.managed import KEY_FILE, KeyMismatch, ManagedMailRecipients, ManagedWebhooks
from gotaxy.server.manage import ManagementError
from tests.inprocess import LiveSystem, wait_until
from tests.test_notify_webhook import Receiver, listen, verify

SECRET = "a signing secret 7f3a"


class ManagedWebhookTests(unittest.TestCase):
    timeout = 60

    async def _live(self):
        self.receiver = Receiver()
        self.port = listen(self, Site(self.receiver))
        self.url = f"http://127.0.0.1:{self.port}/hooks/private-path-token"
        return await LiveSystem.start(self)

    async def test_added_webhook_gets_signed_events_and_survives_a_restart(self):
        live = await self._live()
        m = live.management
        view = await m.add_webhook("ops", self.url, events=["token.*"], secret=SECRET)
        self.assertEqual((view.source, view.signed, view.format), ("operator", True, "json"))
        self.assertEqual(view.url, f"http://127.0.0.1:{self.port}/…")  # the path is not shown

        await m.create_token("bob")
        await wait_until(lambda: len(self.receiver.requests) == 1)
        _, headers, body = self.receiver.requests[0]
        self.assertEqual(json.loads(body)["event"], "token.created")
        self.assertTrue(verify(SECRET.encode(), body, headers["X-Gotaxy-Signature"]))

        # Filtered: a kick is not a token event; a test ignores the filter.
        await m.test_webhook("ops")
        await wait_until(lambda: len(self.receiver.requests) == 2)
        self.assertEqual(json.loads(self.receiver.requests[1][2])["event"], "notify.test")

        # Encrypted at rest: neither the URL's path nor the secret is in the database.
        with open(os.path.join(live.data_dir, "gotaxy.db"), "rb") as f:
            raw = f.read()
        self.assertNotIn(b"private-path-token", raw)
        self.assertNotIn(SECRET.encode(), raw)
        self.assertEqual(os.stat(os.path.join(live.data_dir, KEY_FILE)).st_mode & 0o777, 0o600)

        # A new server on the same data directory loads it again.
        again = ManagedWebhooks(live.server.notifier, live.core.store, live.data_dir, "x", live.core.reactor)
        before = len(live.server.notifier.targets)
        again.load()
        self.assertEqual(len(live.server.notifier.targets), before + 1)
        self.assertEqual(again.find("ops").spec.url, self.url)
        live.server.notifier.remove(again.find("ops"))

    async def test_a_second_server_on_the_store_needs_the_same_key(self):
        # Two servers sharing one database (database.url): the second has a
        # data directory, and so a notify.key, of its own.
        live = await self._live()
        await live.management.add_webhook("ops", self.url, secret=SECRET)
        other_dir = self.mktemp()
        os.makedirs(other_dir)
        other = ManagedWebhooks(live.server.notifier, live.core.store, other_dir, "b", live.core.reactor)
        with self.assertRaises(KeyMismatch) as refused:
            other.load()
        message = str(refused.exception)
        self.assertIn(os.path.join(other_dir, KEY_FILE), message)
        self.assertIn("copy notify.key from that server's data directory", message)
        self.assertIn("notify.keyFile", message)
        # notify.keyFile names a copy of the first server's key: the webhook loads, URL and secret intact.
        shared = os.path.join(other_dir, "shared.key")
        with open(os.path.join(live.data_dir, KEY_FILE), "rb") as f, open(shared, "wb") as g:
            g.write(f.read())
        again = ManagedWebhooks(live.server.notifier, live.core.store, other_dir, "b", live.core.reactor,
                                key_file=shared)
        before = list(live.server.notifier.targets)
        again.load()
        (loaded,) = [t for t in live.server.notifier.targets if t not in before]
        self.assertEqual((loaded.spec.name, loaded.spec.url, loaded.spec.secret), ("ops", self.url, SECRET))
        live.server.notifier.remove(loaded)

    async def test_remove_stops_deliveries(self):
        live = await self._live()
        m = live.management
        await m.add_webhook("ops", self.url)
        await m.remove_webhook("ops")
        self.assertEqual(await m.webhooks(), [])
        await m.create_token("carol")
        await m.create_token("dave")
        self.assertEqual(self.receiver.requests, [])

    async def test_errors(self):
        live = await self._live()
        m = live.management
        await m.add_webhook("ops", self.url)
        cases = [
            (m.add_webhook("bad name!", self.url), "invalid"),
            (m.add_webhook("x", "ftp://example.invalid/"), "invalid"),
            (m.add_webhook("x", self.url, format="morse"), "invalid"),
            (m.add_webhook("x", self.url, events=[""]), "invalid"),
            (m.add_webhook("ops", self.url), "conflict"),
            (m.remove_webhook("nope"), "not_found"),
            (m.test_webhook("nope"), "not_found"),
        ]
        for coroutine, kind in cases:
            with self.assertRaises(ManagementError) as e:
                await coroutine
            self.assertEqual(e.exception.kind, kind, str(e.exception))


class ManagedMailTests(unittest.TestCase):
    timeout = 60

    async def _live(self, with_smtp: bool = True):
        from tests.test_notify_mail import MailServer

        self.mail = MailServer(self, open_relay=True)
        directory = self.mktemp_dir()
        config = os.path.join(directory, "server.toml")
        with open(config, "w") as f:
            if with_smtp:
                f.write(
                    f'[smtp]\nhost = "127.0.0.1"\nport = {self.mail.number}\ntls = "none"\n'
                    f'from = "gotaxy@example.test"\nto = ["ops@example.test"]\nevents = ["client.*"]\n'
                    f"batchSeconds = 0.2\n"
                )
        return await LiveSystem.start(self, server_args=["--config", config])

    def mktemp_dir(self) -> str:
        import shutil
        import tempfile

        directory = tempfile.mkdtemp(prefix="gotaxy-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    async def test_added_recipient_gets_its_events_and_a_test_and_survives_a_restart(self):
        live = await self._live()
        m = live.management
        (config,) = await m.mail_recipients()
        self.assertEqual((config.address, config.events, config.source), ("ops@example.test", ("client.*",), "config"))
        view = await m.add_mail_recipient("dev@example.test", events=["token.*"])
        self.assertEqual((view.events, view.source), (("token.*",), "operator"))

        await m.create_token("bob")  # token.created: for dev only
        await wait_until(lambda: len(self.mail.messages()) == 1, timeout=15)
        (message,) = self.mail.messages()
        self.assertEqual(message["To"], "dev@example.test")
        self.assertIn("token bob created", message.get_body().get_content())
        self.assertNotIn("ops@example.test", self.mail.envelopes)

        await m.test_mail("dev@example.test")
        await wait_until(lambda: len(self.mail.messages()) == 2, timeout=15)

        again = ManagedMailRecipients(live.server.notifier, live.core.store, live.core.config, live.core.reactor)
        again.load()
        self.assertIn("dev@example.test", again.targets)
        live.server.notifier.remove(again.targets["dev@example.test"])

        await m.remove_mail_recipient("dev@example.test")
        self.assertEqual([v.address for v in await m.mail_recipients()], ["ops@example.test"])

    async def test_errors(self):
        live = await self._live()
        m = live.management
        await m.add_mail_recipient("dev@example.test")
        cases = [
            (m.add_mail_recipient("not an address"), "invalid"),
            (m.add_mail_recipient("x@example.test", events=[""]), "invalid"),
            (m.add_mail_recipient("dev@example.test"), "conflict"),
            (m.add_mail_recipient("ops@example.test"), "conflict"),
            (m.remove_mail_recipient("ops@example.test"), "conflict"),
            (m.remove_mail_recipient("nobody@example.test"), "not_found"),
            (m.test_mail("nobody@example.test"), "not_found"),
        ]
        for coroutine, kind in cases:
            with self.assertRaises(ManagementError) as e:
                await coroutine
            self.assertEqual(e.exception.kind, kind, str(e.exception))

    async def test_without_smtp_there_is_nothing_to_add_to(self):
        live = await self._live(with_smtp=False)
        self.assertEqual(await live.management.mail_recipients(), [])
        with self.assertRaises(ManagementError) as e:
            await live.management.add_mail_recipient("dev@example.test")
        self.assertEqual(e.exception.kind, "conflict")
        self.assertIn("[smtp]", str(e.exception))
