"""
End to end: the events table is an outbox.  ``gotaxy token revoke`` run
from a shell, a process of its own, while a real ``twistd gotaxy-server``
runs: the server reads the event from the store and fires its
``token.revoked`` webhook, and the client of that token is cut off.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, List

from tests.e2e import gotaxy_cli, tunnel_port


class Receiver:
    """A webhook receiver on loopback; ``wait_for`` waits on its condition, never sleeps."""

    def __init__(self) -> None:
        self.events: List[dict] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(204)
                self.end_headers()
                with receiver.arrived:
                    receiver.events.append(json.loads(body))
                    receiver.arrived.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, done: Callable[[List[str]], bool], timeout: float = 30.0) -> List[dict]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: done([e["event"] for e in self.events]), timeout):
                raise AssertionError(f"receiver got {[e['event'] for e in self.events]} within {timeout} s")
            return list(self.events)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_a_token_revoked_from_a_shell_fires_the_webhook_and_cuts_its_client_off(procs, echo, tmp_path):
    receiver = Receiver()
    try:
        config = tmp_path / "server.toml"
        config.write_text(
            'serverName = "e2e-outbox"\n'
            "[[webhooks]]\n"
            f'url = "{receiver.url}"\n'
            'events = ["token.*", "client.disconnected"]\n'
        )
        server = procs.server("--config", str(config))
        data_dir = str(server.data_dir)
        created = gotaxy_cli("--data-dir", data_dir, "token", "create", "laptop")
        token = created.split()[-1]
        client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}", token=token, name="laptop")
        tunnel_port(client, "echo")
        events = receiver.wait_for(lambda kinds: kinds.count("token.created") == 2)
        # The first start's token (recorded by the server itself), then the shell's.
        assert [e["client"] for e in events if e["event"] == "token.created"] == ["default", "laptop"]

        gotaxy_cli("--data-dir", data_dir, "token", "revoke", "laptop")
        events = receiver.wait_for(lambda kinds: "token.revoked" in kinds and "client.disconnected" in kinds)
        (revoked,) = [e for e in events if e["event"] == "token.revoked"]
        assert (revoked["client"], revoked["server"]) == ("laptop", "e2e-outbox")
        assert revoked["text"] == "[e2e-outbox] token laptop revoked"
        (gone,) = [e for e in events if e["event"] == "client.disconnected"]
        assert gone["client"] == "laptop" and "revoked" in gone["detail"]
        client.wait_for(r"revoked")
    finally:
        receiver.close()
