"""
maxBandwidth and maxBandwidthPerClient changed live (``gotaxy.store.overrides``)
with real servers in this process: a change on one server reaches another on
the same store, and a server started later holds it; the console's
``limits set|clear`` and the REST API's ``PATCH /limits``.  On a fake clock:
tests/test_live_limits.py.
"""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from gotaxy.console.commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Commands
from gotaxy.console.text import WIDTH
from gotaxy.web.openapi import API_PREFIX
from gotaxy.web.testing import WebClient, make_panel
from tests.inprocess import ADMIN_PASSWORD, LiveSystem, wait_until
from tests.test_live_limits import ADMIN, MiB


class LiveFaces(unittest.TestCase):
    timeout = 60

    async def test_a_change_on_one_server_reaches_the_other_and_a_server_started_later(self):
        shared = self.mktemp()
        os.makedirs(shared)
        url = "sqlite:///" + os.path.abspath(os.path.join(shared, "gotaxy.db"))
        config = os.path.join(shared, "server.toml")
        with open(config, "w") as f:
            f.write(f'maxBandwidth = "8MB"\n[notify]\nkeyFile = "{os.path.abspath(os.path.join(shared, "k"))}"\n')
        a = await LiveSystem.start(self, database_url=url, server_args=["--config", config])
        b = await LiveSystem.start(self, database_url=url, create_token=False, server_args=["--config", config])
        await b.management.set_limit("maxBandwidth", "1MB", ADMIN)
        assert b.core.bandwidth.total == MiB  # at once where it was made
        await wait_until(lambda: a.core.bandwidth.total == MiB)  # through the events table (gotaxy.server.outbox)
        assert a.management.limits()["live"]["maxBandwidth"]["by"] == ADMIN
        c = await LiveSystem.start(self, database_url=url, create_token=False, server_args=["--config", config])
        assert c.core.bandwidth.total == MiB  # read at start, before its listeners accept
        await a.management.clear_limit("maxBandwidth", "panel operator admin")
        await wait_until(lambda: b.core.bandwidth.total == 8 * MiB and c.core.bandwidth.total == 8 * MiB)
        assert b.management.limits()["live"] == {}

    async def test_the_consoles_limits_set_and_clear(self):
        live = await LiveSystem.start(self, server_args=["--console-port", "0"])
        commands = Commands(live.management, operator=ADMIN)

        async def cmd(line: str, status: int = EXIT_OK) -> str:
            result = await commands.run(line)
            self.assertEqual(result.status, status, f"{line!r} -> {result}")
            return result.text

        self.assertEqual(await cmd("limits set maxBandwidth 100MB"),
                         "maxBandwidth is 100.0 MiB/s each way now, on every server on this store and on open "
                         "connections (server.toml's waits until 'limits clear maxBandwidth')")
        self.assertEqual(live.core.bandwidth.total, 100 * MiB)
        text = await cmd("limits")
        self.assertIn("maxBandwidth               100.0 MiB/s (live; server.toml: no limit)", text)
        self.assertIn(f"maxBandwidth was set live by {ADMIN} at", text)
        for line in text.split("\n"):
            self.assertLessEqual(len(line), WIDTH, line)
        data = json.loads(await cmd("limits set maxBandwidthPerClient 512KB --json"))
        self.assertEqual((data["maxBandwidthPerClient"], data["live"]["maxBandwidthPerClient"]["by"]),
                         (512 * 1024, ADMIN))
        self.assertEqual(await cmd("limits set maxBandwidthPerClient 0"),
                         "maxBandwidthPerClient is no limit now, on every server on this store and on open "
                         "connections (server.toml's waits until 'limits clear maxBandwidthPerClient')")
        self.assertEqual(await cmd("limits clear maxBandwidth"), "maxBandwidth is server.toml's again: no limit")
        self.assertEqual(json.loads(await cmd("limits clear maxBandwidthPerClient --json"))["live"], {})
        self.assertEqual(await cmd("limits clear maxBandwidth", EXIT_FAILED),
                         "error: maxBandwidth has no live value (server.toml's is in force); 'limits set "
                         "maxBandwidth RATE' gives it one")
        self.assertTrue((await cmd("limits set maxBandwidth fast", EXIT_USAGE)).startswith(
            "error: maxBandwidth must be a rate a second"))
        self.assertTrue((await cmd("limits set tunnelMaxConnections 5", EXIT_USAGE)).startswith(
            "error: 'tunnelMaxConnections' cannot be changed live"))
        self.assertIn("missing RATE", await cmd("limits set maxBandwidth", EXIT_USAGE))
        self.assertEqual(commands.complete("limits set maxB"), ["maxBandwidth", "maxBandwidthPerClient"])
        self.assertIn("limits set KEY RATE [--json]", await cmd("help limits"))
        events = await live.management.events(type_="limits.changed")
        self.assertEqual([e.address for e in events], [ADMIN] * 5)

    async def test_patch_limits_over_rest(self):
        live = await LiveSystem.start(self)
        web = WebClient.for_panel(make_panel(live))
        self.assertEqual((await web.login(ADMIN_PASSWORD)).status, 200)
        api = f"{API_PREFIX}/limits"
        changed = await web.patch(api, {"maxBandwidth": "100MB", "maxBandwidthPerClient": 1048576})
        self.assertEqual(changed.status, 200, changed.raw)
        self.assertEqual((changed.json["maxBandwidth"], changed.json["maxBandwidthPerClient"]), (100 * MiB, MiB))
        self.assertEqual(changed.json["live"]["maxBandwidth"]["by"], "panel operator admin")
        self.assertEqual((live.core.bandwidth.total, live.core.bandwidth.per_client), (100 * MiB, MiB))
        self.assertEqual((await web.get(api)).json["live"].keys(), {"maxBandwidth", "maxBandwidthPerClient"})
        # A wrong value changes nothing, also not the right one beside it.
        wrong = await web.patch(api, {"maxBandwidth": "1MB", "maxBandwidthPerClient": "fast"})
        self.assertEqual((wrong.status, wrong.error["field"]), (400, "maxBandwidthPerClient"))
        self.assertEqual(live.core.bandwidth.total, 100 * MiB)
        unknown = await web.patch(api, {"maxPortsPerClient": 3})
        self.assertEqual((unknown.status, unknown.error["field"]), (400, "maxPortsPerClient"))
        self.assertEqual((await web.patch(api, {})).status, 400)
        # null: back to server.toml's (given twice: the second is nothing to do, not an error).
        cleared = await web.patch(api, {"maxBandwidth": None})
        self.assertEqual((cleared.status, cleared.json["maxBandwidth"], list(cleared.json["live"])),
                         (200, 0, ["maxBandwidthPerClient"]))
        self.assertEqual((await web.patch(api, {"maxBandwidth": None})).status, 200)
        self.assertEqual(live.core.bandwidth.total, 0)
        events = (await web.get(f"{API_PREFIX}/events?type=limits.changed")).json["events"]
        self.assertEqual([(e["address"], e["detail"]) for e in events], [
            ("panel operator admin", "maxBandwidth back to server.toml's no limit (was live 100.0 MiB/s)"),
            ("panel operator admin", "maxBandwidthPerClient 1.0 MiB/s (was server.toml's no limit)"),
            ("panel operator admin", "maxBandwidth 100.0 MiB/s (was server.toml's no limit)"),
        ])
