"""
The server's side of ``tunnel_retry`` and ``tunnel_health``, in this
process: what a client may and may not make the panel show.
"""

from __future__ import annotations

import socket

from twisted.trial import unittest

from tests.inprocess import LiveSystem, listen_echo, wait_until


class TunnelStateTests(unittest.TestCase):
    timeout = 60

    async def _refused(self) -> LiveSystem:
        echo = listen_echo(self)
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.busy_port = busy.getsockname()[1]
        live = await LiveSystem.start(self, [f"web=tcp:127.0.0.1:{echo}:{self.busy_port}"])
        await wait_until(lambda: "web" in live.core.sessions["alice"].retry_at)
        return live

    async def test_refused_tunnel_is_listed_with_its_reason_and_retry(self):
        live = await self._refused()
        (view,) = await live.management.tunnels()
        self.assertEqual((view.name, view.status, view.reason, view.address),
                         ("web", "refused", f"port {self.busy_port} is busy on the server", None))
        self.assertTrue(0 <= view.retry_in <= 60, view.retry_in)
        # The refusal reserved no port.
        self.assertNotIn(self.busy_port, live.core.store.store.held_ports("tcp"))

    async def test_a_client_cannot_announce_retries_for_tunnels_that_were_not_refused(self):
        live = await self._refused()
        client = live.client.factory.current
        for name in list(client.retries):  # no new refusal during the test
            client._cancel_retry(name)
        session = live.core.sessions["alice"]
        for name in ("other", "web"):  # "web" already said when, once per refusal
            session.control_received({"type": "tunnel_retry", "name": name, "retryIn": 5000})
        self.assertNotIn("other", session.retry_at)
        (view,) = await live.management.tunnels()
        self.assertLessEqual(view.retry_in, 60)

    async def test_a_bad_retry_time_is_a_protocol_error(self):
        live = await self._refused()
        session = live.core.sessions["alice"]
        session.refused_tunnels.add("web")
        session.control_received({"type": "tunnel_retry", "name": "web", "retryIn": float("inf")})
        self.assertTrue(session.disconnecting)

    async def test_health_reports_show_the_tunnel_down_in_the_servers_words(self):
        echo = listen_echo(self)
        live = await LiveSystem.start(self, [f"web=tcp:127.0.0.1:{echo}"])
        await live.wait_up("web")
        session = live.core.sessions["alice"]
        session.control_received({"type": "tunnel_health", "name": "web", "healthy": False,
                                  "reason": "\x1b[31m forged text"})
        (view,) = await live.management.tunnels()
        self.assertEqual((view.status, view.reason), ("down", f"local service 127.0.0.1:{echo} not answering"))
        session.control_received({"type": "tunnel_health", "name": "nothing", "healthy": False})
        session.control_received({"type": "tunnel_health", "name": "web", "healthy": True})
        (view,) = await live.management.tunnels()
        self.assertEqual((view.status, view.reason), ("up", None))
