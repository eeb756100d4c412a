# -*- test-case-name: tests.test_control_memory -*-
"""
Test fakes for Gotaxy, shipped with it so that callers (and Gotaxy's own
tests) can drive a server and its clients without sockets, threads or
waiting: a log-in, a refused tunnel or a heartbeat timeout takes
milliseconds, and time passes only when the test says so.

One ``MemoryNetwork`` (a ``MemoryReactorClock`` whose ``listenTCP`` and
``connectTCP`` really connect, through ``twisted.test.iosim``'s
``FakeTransport``) carries everything: the control connection (real TLS,
in memory), the public ports a tunnel listens on, and the client's
connections to its local services::

    network = MemoryNetwork()
    server = GotaxyServer(network)
    echo = network.listenTCP(8080, EchoFactory())         # the local service
    client = GotaxyClient(network, server.create_token("alice"),
                          tunnels=[TunnelSpec(name="web", local_port=8080)])
    client.start()                                          # runs to quiet
    port = client.up["web"]
    assert network.exchange(port, b"hi") == b"hi"           # through the tunnel

The server is the real ``ServerCore`` with the real control protocol
behind the real TLS factory, on a store that runs each call at once
(``SynchronousStore``, an in-memory SQLite); the client is the real
``ClientControlFactory`` under the real ``TunnelClientService``, so
reconnects and their backoff happen as they do in ``gotaxy-client``.  What
is left out is the process around them (twistd, files, the panel and the
console).

``network.flush()`` moves every byte and runs every call due now, until
nothing moves; ``network.pass_time(seconds)`` advances the clock one
scheduled call at a time, flushing in between, so heartbeats are answered
as they would be.  ``network.partition(...)`` makes a connection silent
both ways, like a cable pulled out: each end notices only by its own
timeouts.  ``LogCapture`` collects the log lines a user would read.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport
from zope.interface import implementer

from gotaxy.client.control import ClientControlFactory, ClientControlProtocol, Reconnection, ReportingEndpoint
from gotaxy.client.tap import TunnelClientService, load_identity, make_verifier
from gotaxy.config import ClientConfig, ServerConfig, TunnelSpec
from gotaxy.server.control import Admission, AdmittingTLSFactory, ServerControlFactory
from gotaxy.tls.clients import ClientCertificateVerifier, control_port_options
from gotaxy.server.core import ServerCore
from gotaxy.store import Store, ThreadedStore
from gotaxy.tls import ServerCredentials, load_or_create_server_credentials
from gotaxy.tls.bulk import BulkTLSFactory

__all__ = [
    "Collector",
    "EchoFactory",
    "GotaxyClient",
    "GotaxyServer",
    "LogCapture",
    "MemoryNetwork",
    "SynchronousStore",
    "server_config",
    "server_credentials",
]

#: Where the network hands out ports for ``listenTCP(0, ...)`` and for the
#: local end of outgoing connections.
EPHEMERAL_PORTS = range(40000, 60000)

#: ``flush`` gives up after this many rounds: two peers that answer each
#: other forever are a bug in the code under test (or in the test).
MAX_FLUSH_ROUNDS = 100_000


# ---------------------------------------------------------------------------
# The store


class SynchronousStore(ThreadedStore):
    """
    ``ThreadedStore``'s face without its thread: every call runs at once and
    returns a fired Deferred, so a log-in is done when ``flush`` returns.
    Only for tests: in a server, store calls must not run on the reactor.
    """

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.store.close()

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        # As the thread's calls do: the events it recorded reach the bus before its result.
        return maybeDeferred(lambda: self._deliver(self._run(function, args, kwargs)))


def memory_store(clock: Callable[[], float]) -> Store:
    """A fresh store in an in-memory SQLite database, its time from ``clock``."""
    return Store("sqlite://", clock=clock)


_credentials: Optional[ServerCredentials] = None


def server_credentials() -> ServerCredentials:
    """Gotaxy's generated CA and server certificate, made once per process."""
    global _credentials
    if _credentials is None:
        tls_dir = tempfile.mkdtemp(prefix="gotaxy-testing-tls-")
        try:
            _credentials = load_or_create_server_credentials(os.path.join(tls_dir, "tls"))
        finally:
            shutil.rmtree(tls_dir, ignore_errors=True)
    return _credentials


# ---------------------------------------------------------------------------
# The network


class MemoryPort:
    """What ``MemoryNetwork.listenTCP`` returns (``IListeningPort``)."""

    def __init__(self, network: "MemoryNetwork", port: int, factory: Factory, interface: str) -> None:
        self.network = network
        self.port = port
        self.factory = factory
        self.interface = interface or "0.0.0.0"
        self.listening = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.interface, self.port)

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred:
        if self.listening:
            self.listening = False
            if self.network.listeners.get(self.port) is self:
                del self.network.listeners[self.port]
            self.factory.doStop()
        return succeed(None)

    loseConnection = stopListening


class MemoryConnector:
    """What ``MemoryNetwork.connectTCP`` returns (``IConnector``)."""

    def __init__(self, network: "MemoryNetwork", host: str, port: int, factory: Any) -> None:
        self.network = network
        self.host = host
        self.port = port
        self.factory = factory
        self.cancelled = False
        self.link: Optional["Link"] = None
        #: The address the connection comes from (``bindAddress``'s host, else the network's ``source``).
        self.source = network.source

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, self.port)

    def stopConnecting(self) -> None:
        self.cancelled = True

    def disconnect(self) -> None:
        if self.link is None:
            self.cancelled = True
        else:
            self.link.client.loseConnection()

    def connect(self) -> None:
        self.cancelled = False
        self.network._dial(self)


class MemoryTransport(FakeTransport):
    """
    ``FakeTransport``, whose ``pauseProducing`` (stop reading) does nothing;
    on a network with ``backpressure`` this one's does: what is sent to a
    transport that paused its reading waits in the sender's buffer, as in a
    socket's, until it resumes.
    """

    reading_paused = False

    def pauseProducing(self) -> None:
        self.reading_paused = True

    def resumeProducing(self) -> None:
        self.reading_paused = False


class Link:
    """One TCP connection: a ``FakeTransport`` at each end."""

    def __init__(self, client: FakeTransport, server: FakeTransport) -> None:
        self.client = client
        self.server = server
        #: While true nothing crosses, either way, and neither end hears of
        #: the other's close: a pulled cable.
        self.partitioned = False

    def pump(self) -> bool:
        """Move what is waiting, once; whether anything happened."""
        moved = False
        for here, there in ((self.client, self.server), (self.server, self.client)):
            here._checkProducer()
            if getattr(there, "reading_paused", False):
                continue
            data = here.getOutBuffer()
            if data and not self.partitioned and not there.disconnected:
                there.bufferReceived(data)
                moved = True
        if moved:
            return True
        for here, there in ((self.server, self.client), (self.client, self.server)):
            if here.disconnecting and not here.disconnected:
                here.disconnected = True
                if not self.partitioned:
                    there.disconnecting = True
                return True
            if here.disconnected and not getattr(here, "reported", False):
                here.reported = True
                here.reportDisconnect()
                return True
        return False

    @property
    def closed(self) -> bool:
        return self.client.disconnected and self.server.disconnected


@implementer(IStreamClientEndpoint)
@attrs.define
class MemoryEndpoint:
    """A client endpoint on a ``MemoryNetwork`` (what ``TCP4ClientEndpoint`` is on a reactor)."""

    network: "MemoryNetwork"
    host: str
    port: int

    def connect(self, factory: Any) -> Deferred:
        result: Deferred = Deferred()

        class Waiter:
            def buildProtocol(_, addr: Any) -> Any:
                protocol = factory.buildProtocol(addr)
                if protocol is not None:
                    self.network.callLater(0, result.callback, protocol)
                return protocol

            def clientConnectionFailed(_, connector: Any, reason: Failure) -> None:
                result.errback(reason)

            def clientConnectionLost(_, connector: Any, reason: Failure) -> None:
                pass

            def startedConnecting(_, connector: Any) -> None:
                pass

            def doStart(_) -> None:
                pass

            def doStop(_) -> None:
                pass

        connector = self.network.connectTCP(self.host, self.port, Waiter())
        result.addErrback(lambda f: f)
        result._canceller = lambda d: connector.stopConnecting()  # type: ignore[attr-defined]
        return result


@implementer(IStreamClientEndpoint)
@attrs.define
class TLSClientEndpoint:
    """
    The client's ``BulkClientTLSEndpoint``, whose TLS layer batches its
    writes on ``clock`` (the network), not on the global reactor that a
    test never runs.
    """

    creator: Any
    wrapped: Any
    clock: Any

    def connect(self, factory: Any) -> Deferred:
        tls = BulkTLSFactory(self.creator, True, factory, clock=self.clock)
        return self.wrapped.connect(tls).addCallback(lambda protocol: protocol.wrappedProtocol)


class MemoryNetwork(MemoryReactorClock):
    """
    A reactor whose TCP connections are real conversations between the
    protocols at either end, in memory, on one port space (ports are not
    per address).  Time is ``MemoryReactorClock``'s, starting at the wall
    clock's now: it moves only in ``pass_time`` (or ``advance``).
    """

    def __init__(self, start: Optional[float] = None) -> None:
        super().__init__()
        # The clock starts now (or at ``start``), not in 1970: certificates
        # are checked against it, and the store dates its rows by it.
        self.advance(time.time() // 1 if start is None else start)
        self.listeners: Dict[int, MemoryPort] = {}
        self.links: List[Link] = []
        #: Ports some other program holds: listening on them fails with
        #: "address already in use".
        self.taken: set = set()
        self._ephemeral = itertools.cycle(EPHEMERAL_PORTS)
        #: Where connections come from unless ``connectTCP`` has a ``bindAddress``: set it to test
        #: address rules and bans with a visitor from elsewhere.
        self.source = "127.0.0.1"
        #: Whether a protocol's ``transport.pauseProducing()`` stops its reading
        #: (``MemoryTransport``); off by default, as ``FakeTransport`` has it.
        self.backpressure = False

    # -- IReactorTCP -----------------------------------------------------------

    def listenTCP(self, port: int, factory: Factory, backlog: int = 50, interface: str = "") -> MemoryPort:
        if port == 0:
            port = self._free_port()
        elif port in self.listeners or port in self.taken:
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))
        listening = MemoryPort(self, port, factory, interface)
        self.listeners[port] = listening
        factory.doStart()
        return listening

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None
                   ) -> MemoryConnector:
        connector = MemoryConnector(self, host, port, factory)
        if bindAddress is not None:
            connector.source = bindAddress[0]
        self._dial(connector)
        return connector

    def _dial(self, connector: MemoryConnector) -> None:
        connector.factory.startedConnecting(connector)
        self.callLater(0, self._complete, connector)

    def _complete(self, connector: MemoryConnector) -> None:
        if connector.cancelled:
            return
        listening = self.listeners.get(connector.port)
        if listening is None:
            connector.factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
            return
        client_address = IPv4Address("TCP", connector.source, self._free_port())
        server_address = IPv4Address("TCP", connector.host, connector.port)
        server_protocol = listening.factory.buildProtocol(client_address)
        refused = server_protocol is None
        if refused:
            # A factory that builds no protocol has the accepted connection
            # closed at once: the client sees it open and then close.
            server_protocol = Protocol()
        client_protocol = connector.factory.buildProtocol(server_address)
        if client_protocol is None:
            return
        kind = MemoryTransport if self.backpressure else FakeTransport
        server = kind(server_protocol, True, server_address, client_address)
        client = kind(client_protocol, False, client_address, server_address)
        link = Link(client, server)
        connector.link = link
        self.links.append(link)
        server_protocol.makeConnection(server)
        client_protocol.makeConnection(client)
        lost = client_protocol.connectionLost

        def connection_lost(reason: Failure) -> None:
            lost(reason)
            if hasattr(connector.factory, "clientConnectionLost"):
                connector.factory.clientConnectionLost(connector, reason)

        client_protocol.connectionLost = connection_lost  # type: ignore[method-assign]
        if refused:
            server.loseConnection()

    def _free_port(self) -> int:
        used = set(self.listeners) | self.taken
        for _ in EPHEMERAL_PORTS:
            port = next(self._ephemeral)
            if port not in used:
                return port
        raise CannotListenError("", 0, OSError(errno.EADDRINUSE, "no free port left"))

    def endpoint(self, host: str, port: int) -> MemoryEndpoint:
        return MemoryEndpoint(self, host, port)

    # -- driving ---------------------------------------------------------------

    def flush(self) -> None:
        """Run what is due now and move every byte, until nothing moves."""
        for _ in range(MAX_FLUSH_ROUNDS):
            self.advance(0)
            moved = False
            for link in list(self.links):
                moved = link.pump() or moved
                if link.closed and getattr(link.client, "reported", False) and getattr(link.server, "reported", False):
                    self.links.remove(link)
            if not moved and not any(c.getTime() <= self.seconds() for c in self.getDelayedCalls()):
                return
        raise AssertionError(f"the network did not settle in {MAX_FLUSH_ROUNDS} rounds")

    def pass_time(self, seconds: float) -> None:
        """Let ``seconds`` pass, one scheduled call at a time, flushing in between."""
        self.flush()
        end = self.seconds() + seconds
        while True:
            due = [c.getTime() for c in self.getDelayedCalls() if c.getTime() <= end]
            step = (min(due) if due else end) - self.seconds()
            self.advance(max(step, 0))
            self.flush()
            if not due:
                return

    def partition(self, link: Link) -> None:
        """From now on nothing crosses ``link``, and neither end hears the other close."""
        link.partitioned = True

    def links_to(self, port: int) -> List[Link]:
        """The open connections to ``port``."""
        return [link for link in self.links if link.server.getHost().port == port and not link.closed]

    # -- a public user ---------------------------------------------------------

    def exchange(self, port: int, payload: bytes, source: Optional[str] = None) -> bytes:
        """
        Connect to ``port`` as someone on the Internet would (from
        ``source``, default the network's), send ``payload``, and return
        what came back once the network settled (an echo service behind a
        tunnel returns ``payload``; a refused connection, nothing).
        """
        collector = Collector()
        self.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(lambda: collector),
                        bindAddress=(source, 0) if source is not None else None)
        self.flush()
        if collector.transport is None:
            raise AssertionError(f"nothing accepted the connection to port {port}")
        collector.transport.write(payload)
        self.flush()
        return b"".join(collector.received)


class Collector(Protocol):
    """Keeps what it receives (``received``) and whether it was closed (``lost``)."""

    def __init__(self) -> None:
        self.received: List[bytes] = []
        self.lost: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class EchoFactory(Factory):
    """A local service that sends back what it gets."""

    protocol = Echo
    noisy = False


# ---------------------------------------------------------------------------
# The log


@implementer(ILogObserver)
class LogCapture:
    """
    The log lines written while it is open, as a user reads them::

        with LogCapture() as log:
            ...
        assert log.has("no login within 10 s")
    """

    def __init__(self) -> None:
        self.events: List[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def __enter__(self) -> "LogCapture":
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        globalLogPublisher.removeObserver(self)

    @property
    def lines(self) -> List[str]:
        return [formatEvent(e) for e in self.events]

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def matching(self, text: str) -> List[str]:
        return [line for line in self.lines if text in line]

    def at_least(self, level: LogLevel) -> List[str]:
        """The lines of ``level`` or worse (``LogLevel.warn``: warnings and errors)."""
        order = list(LogLevel.iterconstants())
        return [formatEvent(e) for e in self.events
                if "log_level" in e and order.index(e["log_level"]) >= order.index(level)]


# ---------------------------------------------------------------------------
# Server and client


def server_config(**settings: Any) -> ServerConfig:
    """A server's settings for tests: on loopback, with ``settings`` changed (a section as a whole: ``limits=LimitsSettings(...)``)."""
    settings.setdefault("bind_addr", "127.0.0.1")
    settings.setdefault("data_dir", "/nonexistent/gotaxy-testing")  # nothing may write there
    return ServerConfig(**settings)


class GotaxyServer:
    """
    A Gotaxy server's control port and core on a ``MemoryNetwork``:
    ``core`` (sessions, tunnels), ``store`` (``SynchronousStore``; its
    ``store`` is the ``Store``), ``admission``, listening on
    ``config.bind_port`` behind TLS with ``credentials``.
    """

    def __init__(self, network: MemoryNetwork, config: Optional[ServerConfig] = None,
                 credentials: Optional[ServerCredentials] = None) -> None:
        self.network = network
        self.config = config if config is not None else server_config()
        self.credentials = credentials or server_credentials()
        self.store = SynchronousStore(memory_store(network.seconds), network)
        ca_file = self.config.transport.tls_trusted_ca_file
        verifier = ClientCertificateVerifier(ca_file, clock=network) if ca_file is not None else None
        self.core = ServerCore(self.config, self.store, network, verifier)
        self.admission = Admission(self.config.transport.max_pending, self.config.transport.max_pending_per_ip, network)
        factory = AdmittingTLSFactory(control_port_options(self.credentials.server_context(), verifier),
                                      ServerControlFactory(self.core, self.admission, network))
        self.listening = network.listenTCP(self.config.bind_port, factory, interface=self.config.bind_addr)
        self.core.start()

    @property
    def port(self) -> int:
        return self.listening.getHost().port

    @property
    def fingerprint(self) -> str:
        """The fingerprint a client pins (``--fingerprint``)."""
        return self.credentials.fingerprint

    def create_token(self, name: str) -> str:
        """A new client token named ``name``; returns its secret."""
        _, secret = self.store.store.create_token(name)
        return secret

    def session(self, client: str) -> Any:
        """The server's end of ``client``'s control connection, if it is logged in."""
        return self.core.sessions.get(client)

    def shutdown(self) -> None:
        """Stop as ``gotaxy-server`` does: close the control port, tell every client, close every tunnel."""
        self.listening.stopListening()
        done = Deferred.fromCoroutine(self.core.shutdown())
        self.network.flush()
        self.admission.stop()
        assert done.called, "the server's shutdown did not finish"
        self.store.stop()


class GotaxyClient:
    """
    A ``gotaxy-client`` on a ``MemoryNetwork``: the real control protocol
    under the real ``TunnelClientService`` (so it reconnects as the real
    one does).  ``fatal`` holds the messages it would have exited with
    (it stops instead of ending the test process).
    """

    def __init__(
        self,
        network: MemoryNetwork,
        token: str,
        tunnels: Sequence[TunnelSpec] = (),
        server_port: int = 7000,
        instance_id: str = "test-installation",
        **settings: Any,
    ) -> None:
        self.network = network
        if "fingerprint" not in settings and "trusted_ca_file" not in settings:
            settings.setdefault("insecure", True)
        self.config = ClientConfig(server_addr="127.0.0.1", server_port=server_port, token=token,
                                   tunnels=tuple(tunnels), **settings)
        self.fatal: List[str] = []
        self.verifier = make_verifier(self.config, network)
        self.reconnection = Reconnection(f"127.0.0.1:{server_port}", network)
        self.factory = ClientControlFactory(self.config, self.verifier, network, self._fatal, instance_id,
                                            self.reconnection)
        identity = load_identity(self.config, network)
        endpoint = ReportingEndpoint(
            TLSClientEndpoint(self.verifier.connection_creator(identity), network.endpoint("127.0.0.1", server_port),
                              network),
            self.reconnection,
        )
        self.service = TunnelClientService(self.factory, endpoint, self.factory, retryPolicy=self.reconnection,
                                           clock=network)

    def _fatal(self, message: str) -> None:
        # What gotaxy.client.tap does, but the test process goes on.
        from gotaxy.client.tap import log

        log.critical("{message}", message=message)
        self.fatal.append(message)
        if self.service.running:
            self.service.stopService()

    def start(self) -> "GotaxyClient":
        """Start, and run the network until it settles (logged in, tunnels asked for)."""
        self.service.startService()
        self.network.flush()
        return self

    def stop(self) -> None:
        if self.service.running:
            self.service.stopService()
        self.network.flush()

    @property
    def protocol(self) -> Optional[ClientControlProtocol]:
        """The control connection while logged in."""
        return self.factory.current

    @property
    def connection(self) -> Optional[ClientControlProtocol]:
        """The latest control connection, logged in or not."""
        return self.factory.latest

    @property
    def up(self) -> Dict[str, int]:
        """Tunnels the server said are up: name -> public port."""
        current = self.factory.current
        if current is None:
            return {}
        return {name: getattr(address, "port", address) for name, address in current.up.items()}

    @property
    def link(self) -> Link:
        """The network connection under the latest control connection."""
        transport = self.factory.latest.transport if self.factory.latest is not None else None
        for link in self.network.links:
            if link.client.protocol is transport or link.client.protocol is self.factory.latest:
                return link
        raise AssertionError("the client has no control connection")
