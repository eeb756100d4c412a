"""
The client's trust on first use reads and writes ``known_servers``: a file,
so never on the reactor thread, and nothing is sent before it is checked.
"""

from __future__ import annotations

import os
import threading
from typing import Any, List

from twisted.internet import reactor
from twisted.trial import unittest

from gotaxy.client import tap as client_tap
from gotaxy.tls import KNOWN_SERVERS_FILENAME, ServerVerifier
from tests.inprocess import LiveSystem, wait_until


class KnownServersTests(unittest.TestCase):
    timeout = 60

    async def _client(self, live: LiveSystem, data_dir: str) -> Any:
        options = client_tap.Options()
        options.parseOptions(["--server", f"127.0.0.1:{live.control_port}", "--token", live.token,
                              "--data-dir", data_dir, "--tunnel", "web=tcp:127.0.0.1:9"])
        fatal: List[str] = []
        client = client_tap.makeService(options, reactor)

        def stop(message: str) -> None:  # as the real one does, without ending the test's process
            fatal.append(message)
            client.stopService()

        client.factory.fatal = stop
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        return client, fatal

    async def test_known_servers_is_read_and_written_off_the_reactor_thread(self):
        live = await LiveSystem.start(self)
        threads: List[threading.Thread] = []
        original = ServerVerifier.__dict__["_lookup_known"]  # the staticmethod itself, to put back as it was
        lookup = original.__func__

        def recording(path: str, key: str) -> Any:
            threads.append(threading.current_thread())
            return lookup(path, key)

        ServerVerifier._lookup_known = staticmethod(recording)  # type: ignore[method-assign]
        self.addCleanup(setattr, ServerVerifier, "_lookup_known", original)
        data_dir = os.path.join(live.data_dir, "client")
        client, fatal = await self._client(live, data_dir)
        await wait_until(lambda: client.factory.current is not None and client.factory.current.authenticated)
        self.assertEqual(fatal, [])
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.main_thread())
        with open(os.path.join(data_dir, KNOWN_SERVERS_FILENAME)) as f:
            self.assertIn(f"127.0.0.1:{live.control_port} SHA256:", f.read())

    async def test_a_changed_certificate_is_still_refused_and_nothing_is_sent(self):
        live = await LiveSystem.start(self)
        data_dir = os.path.join(live.data_dir, "client")
        os.makedirs(data_dir, mode=0o700)
        with open(os.path.join(data_dir, KNOWN_SERVERS_FILENAME), "w") as f:
            f.write(f"127.0.0.1:{live.control_port} SHA256:{'AB' * 32}\n")
        client, fatal = await self._client(live, data_dir)
        await wait_until(lambda: fatal)
        self.assertIn("records SHA256:", fatal[0])
        # The server never saw a log-in from it.
        self.assertEqual([s for s in live.core.sessions], [])
