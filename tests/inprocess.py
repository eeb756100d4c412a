"""
A real Gotaxy server and client running as services inside the test
process, on loopback, under trial's reactor.

Faster than separate ``twistd`` processes and gives tests the live objects
(``ServerCore``, ``Management``), which is what the panel and console tests
need.  Use from a ``twisted.trial.unittest.TestCase``::

    async def test_something(self):
        live = await LiveSystem.start(self, tunnels=["echo=tcp:127.0.0.1:%d" % port])
        await live.wait_up("echo")
        ...

Clean-up is registered with the test case, so nothing is left running.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from gotaxy.client import tap as client_tap
from gotaxy.server import tap as server_tap
from gotaxy.store import SERVER_STARTED, Store, default_url
from tests.e2e import free_port  # noqa: F401 (tests import it from here too)

ADMIN_PASSWORD = "correct horse battery staple"




async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        await deferLater(reactor, interval, lambda: None)
        waited += interval


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


def listen_echo(test: Any) -> int:
    """An echo service on loopback for the duration of ``test``; returns its port."""
    port = reactor.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return port.getHost().port


class LiveSystem:
    def __init__(self, test: Any, data_dir: str) -> None:
        self.test = test
        self.data_dir = data_dir
        self.service: Any = None  #: the server's service tree (what twistd runs)
        self.server: Any = None  #: the assembled ``gotaxy.server.tap.Server``
        self.client: Any = None
        #: Exit statuses the client asked for (a real one's process would have ended).
        self.client_exits: List[int] = []
        self.token: Optional[str] = None

    @classmethod
    async def start(
        cls, test: Any, tunnels: List[str] = (), server_args: List[str] = (), client_name: str = "alice",
        allow_operator_tunnels: List[str] = (), services: List[Any] = (), database_url: Optional[str] = None,
        create_token: bool = True,
    ) -> "LiveSystem":
        """
        ``database_url``: the store another LiveSystem may share (a node of
        several); ``create_token=False`` for a second node, whose client's
        token the first one created.
        """
        data_dir = tempfile.mkdtemp(prefix="gotaxy-test-")
        test.addCleanup(shutil.rmtree, data_dir, True)
        live = cls(test, data_dir)
        if create_token:  # the client's token up front, so the first start prints nothing
            store = Store(database_url or default_url(data_dir))
            _, live.token = store.create_token(client_name)
            store.close()
        if database_url is not None:
            server_args = ["--database-url", database_url, *server_args]
        options = server_tap.Options()
        options.parseOptions(
            ["--data-dir", data_dir, "--bind-addr", "127.0.0.1", "--bind-port", str(free_port()), "--web-port", "0", "--console-port", "0",
             *server_args]
        )
        live.service = server_tap.makeService(options, reactor, env={"GOTAXY_ADMIN_PASSWORD": ADMIN_PASSWORD})
        live.server = live.service.server
        for service in services:  # started with the server's own services
            service.setServiceParent(live.service)
        # A server is started once it has announced server.started: a test
        # that adds a webhook before then would race the announcement.
        # (The test goes on in a later turn, after every subscriber heard it.)
        started: Deferred = Deferred()

        def heard(event: Any) -> None:
            if event.type == SERVER_STARTED and not started.called:
                reactor.callLater(0, started.callback, None)

        unsubscribe = live.core.events.subscribe(heard)
        live.service.startService()
        test.addCleanup(live._stop_server)
        try:
            await started
        finally:
            unsubscribe()
        if tunnels:
            await live.start_client(tunnels, allow_operator_tunnels=allow_operator_tunnels)
        return live

    @property
    def core(self) -> Any:
        return self.server.core

    @property
    def management(self) -> Any:
        return self.server.management

    @property
    def operators(self) -> Any:
        return self.server.operators

    @property
    def control_port(self) -> int:
        return self.core.config.bind_port

    async def start_client(
        self, tunnels: List[str], token: Optional[str] = None, allow_operator_tunnels: List[str] = ()
    ) -> Any:
        """
        Start the client with ``tunnels``; it accepts operator-defined tunnels
        only to the addresses in ``allow_operator_tunnels`` (--allow-operator-tunnel).
        """
        options = client_tap.Options()
        argv = [
            "--server", f"127.0.0.1:{self.control_port}",
            "--token", token or self.token,
            "--insecure",
            "--data-dir", os.path.join(self.data_dir, "client"),
        ]
        for tunnel in tunnels:
            argv += ["--tunnel", tunnel]
        for allowed in allow_operator_tunnels:
            argv += ["--allow-operator-tunnel", allowed]
        options.parseOptions(argv)
        # A fatal error (the token revoked while the client retries) ends a
        # real client's process; here it must not stop the test's reactor.
        self.client = client_tap.makeService(options, reactor, exit=lambda _, status: self.client_exits.append(status))
        self.client.startService()
        self.test.addCleanup(self._stop_client, self.client)
        await wait_until(lambda: self.client.factory.current is not None)
        return self.client

    async def wait_up(self, name: str, timeout: float = 10.0) -> int:
        """Wait until the client reports tunnel ``name`` up; return its port."""
        await wait_until(
            lambda: self.client.factory.current is not None and name in self.client.factory.current.up, timeout
        )
        return self.client.factory.current.up[name].port

    def _stop_client(self, client: Any) -> Deferred:
        return client.stopService()

    def _stop_server(self) -> Deferred:
        return self.service.stopService()


def ca_fingerprint(data_dir: str) -> str:
    """The fingerprint of the CA a server generated in ``data_dir`` (what its join tokens pin)."""
    from cryptography import x509

    from gotaxy.tls import fingerprint_of_certificate

    with open(os.path.join(data_dir, "tls", "ca.pem"), "rb") as f:
        return fingerprint_of_certificate(x509.load_pem_x509_certificate(f.read()))


async def port_refused(port: int) -> bool:
    """True if nothing accepts connections on ``port`` (loopback)."""
    from twisted.internet.error import ConnectionRefusedError

    try:
        await echo_through(port, b"x", timeout=2)
    except ConnectionRefusedError:
        return True
    return False


async def echo_through(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Connect to ``port`` on loopback, send ``payload``, return what comes back."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    received: List[bytes] = []
    done: Deferred = Deferred()

    class Collect(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(payload)

        def dataReceived(self, data: bytes) -> None:
            received.append(data)
            if sum(map(len, received)) >= len(payload):
                self.transport.loseConnection()

        def connectionLost(self, reason: Any = None) -> None:
            done.callback(b"".join(received))

    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout), Collect())
    return await done


class RawControlClient:
    """
    A control connection that sends exactly the messages a test gives it,
    over TLS and the real frame layer: for log-ins no real client would
    send (a name with a newline, a wrong token thousands of times).

        raw = await RawControlClient.connect(port)
        raw.login(token="...", user="w\\n")
        reply = await raw.reply()     # {"type": "login_failed", ...}
    """

    def __init__(self) -> None:
        self.replies: List[dict] = []  #: every control message from the server, in order
        self._read = 0
        self._waiting: List[Deferred] = []
        self.closed: Deferred = Deferred()
        self.protocol: Any = None

    @classmethod
    async def connect(cls, port: int, timeout: float = 10.0) -> "RawControlClient":
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS

        from gotaxy.mux import MuxProtocol
        from gotaxy.tls import ServerVerifier

        raw = cls()

        class Control(MuxProtocol):
            def connectionMade(self) -> None:
                super().connectionMade()
                self.send_preamble()

            def control_received(self, message: dict) -> None:
                if message.get("type") == "login_ok":
                    self.authenticated = True  # from now on any frame may come
                raw.replies.append(message)
                if raw._waiting:
                    raw._read += 1
                    raw._waiting.pop(0).callback(message)

            def stream_opened(self, stream: Any) -> None:
                stream.abort("not accepting streams")

            def connectionLost(self, reason: Any = None) -> None:
                super().connectionLost(reason)
                waiting, raw._waiting = raw._waiting, []
                for d in waiting:
                    d.errback(AssertionError(f"connection closed; replies so far: {raw.replies}"))
                raw.closed.callback(None)

        creator = ServerVerifier("127.0.0.1", port, insecure=True).connection_creator()
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout))
        raw.protocol = await connectProtocol(endpoint, Control())
        return raw

    def send(self, message: dict) -> None:
        self.protocol.send_control(message)

    def login(self, token: str, user: str = "", hostname: str = "raw-test", version: str = "test") -> None:
        self.send({"type": "login", "token": token, "user": user, "hostname": hostname, "version": version})

    async def reply(self, timeout: float = 10.0) -> dict:
        """The next control message from the server not read yet."""
        if self._read < len(self.replies):
            self._read += 1
            return self.replies[self._read - 1]
        d: Deferred = Deferred()
        self._waiting.append(d)
        d.addTimeout(timeout, reactor)
        return await d

    async def close(self) -> None:
        if not self.closed.called:
            self.protocol.close()
        await self.closed
