"""
Client certificates from the operator's faces against a live server in this
process: the REST API (checked against the OpenAPI document) and the
console's ``certs`` / ``cert issue`` / ``cert revoke`` with ``--json``.  An
issued key is in the answer once and nowhere in the store.
"""

from __future__ import annotations

import json

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial import unittest

from gotaxy.console.commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Commands
from gotaxy.tls.clients import ClientCertificateVerifier
from tests.inprocess import LiveSystem
from tests.test_web_api import API, WebTestCase


class RestTests(WebTestCase):
    async def test_issue_list_and_revoke(self):
        live = await self._live(with_client=False)
        web = await self.logged_in()
        listed = (await web.get(f"{API}/certificates")).json
        self.assertEqual(listed["settings"]["required"], False)
        self.assertEqual(listed["certificates"], [])

        created = await web.post(f"{API}/certificates", {"name": "laptop", "days": 30})
        self.assertEqual(created.status, 201, created.raw)
        issued = created.json["certificate"]
        self.assertEqual(created.header("cache-control"), "no-store")
        leaf = x509.load_pem_x509_certificate(issued["certificatePem"].encode())
        key = serialization.load_pem_private_key(issued["keyPem"].encode(), password=None)
        self.assertEqual(key.public_key(), leaf.public_key())
        ca = f"{live.data_dir}/tls/ca.pem"
        self.assertEqual(ClientCertificateVerifier(ca).judge([leaf]).name, "laptop")
        self.assertFalse(issued["required"])  # the server does not ask for one (yet)
        # The key is kept nowhere: not in the store, not in the listing.
        rows = await self.rows("client_certificates")
        self.assertEqual([r["serial"] for r in rows], [issued["serial"]])
        self.assertNotIn("PRIVATE", repr(rows))
        listed = (await web.get(f"{API}/certificates")).json["certificates"]
        self.assertEqual([(c["name"], c["status"], c["issuedBy"]) for c in listed],
                         [("laptop", "valid", "panel operator admin")])
        self.assertNotIn("keyPem", listed[0])

        bad = await web.post(f"{API}/certificates", {"name": "no spaces"})
        self.assertEqual((bad.status, bad.error["field"]), (400, "name"))
        bad = await web.post(f"{API}/certificates", {"name": "x", "days": 0})
        self.assertEqual((bad.status, bad.error["field"]), (400, "days"))

        revoked = await web.delete(f"{API}/certificates/{issued['serial'].lower()}")
        self.assertEqual(revoked.status, 200, revoked.raw)
        self.assertEqual([(c["serial"], c["status"]) for c in revoked.json["revoked"]], [(issued["serial"], "revoked")])
        again = await web.delete(f"{API}/certificates/laptop")
        self.assertEqual((again.status, again.error["field"]), (409, "certificate"))
        missing = await web.delete(f"{API}/certificates/nobody")
        self.assertEqual(missing.status, 404)
        types = [e["type"] for e in (await web.get(f"{API}/events?type=clientcert.")).json["events"]]
        self.assertEqual(types, ["clientcert.revoked", "clientcert.issued"])


class ConsoleTests(unittest.TestCase):
    timeout = 60

    async def cmd(self, line: str, status: int = EXIT_OK):
        result = await self.commands.run(line)
        self.assertEqual(result.status, status, f"{line!r} -> {result}")
        return result

    async def test_certs_issue_and_revoke(self):
        live = await LiveSystem.start(self, [], server_args=["--console-port", "0"])
        self.commands = Commands(live.management, operator="admin")
        self.assertIn("Client certificates are not asked for", (await self.cmd("certs")).text)
        text = (await self.cmd("cert issue laptop --days 10")).text
        self.assertIn("client certificate for laptop, serial ", text)
        self.assertIn("-----BEGIN CERTIFICATE-----", text)
        self.assertIn("PRIVATE KEY-----", text)
        self.assertIn('transport.tls.certFile = "laptop.pem"', text)
        issued = json.loads((await self.cmd("cert issue desktop --json")).text)
        self.assertEqual(issued["name"], "desktop")
        self.assertIn("PRIVATE KEY", issued["keyPem"])
        listing = json.loads((await self.cmd("certs --json")).text)
        self.assertEqual(sorted(c["name"] for c in listing["certificates"]), ["desktop", "laptop"])
        self.assertFalse(listing["required"])
        self.assertIn("laptop", (await self.cmd("certs")).text)
        revoked = json.loads((await self.cmd(f"cert revoke {issued['serial']} --json")).text)
        self.assertEqual([r["status"] for r in revoked], ["revoked"])
        self.assertIn("revoked; its client is cut off", (await self.cmd("cert revoke laptop")).text)
        self.assertIn("revoked already", (await self.cmd("cert revoke laptop", EXIT_FAILED)).text)
        self.assertIn("cert issue NAME", (await self.cmd("cert", EXIT_USAGE)).text)
