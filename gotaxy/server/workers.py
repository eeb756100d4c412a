# -*- test-case-name: tests.test_workers,tests.test_e2e_workers -*-
"""
Several server processes on one machine: ``workers = N`` (``--workers``).

One command starts them: the process twistd runs (the *parent*) is worker
1 and starts workers 2..N as child processes (``twistd -n gotaxy-server
... --worker K``).  Each worker is a node of the store like any cluster
node (``gotaxy.server.lease``): its own node id and lock in
``DATA_DIR/workers/K``, the parent's TLS identity, store and notify key,
so commands to the client's owner, claims, events and the faces' views of
other nodes' clients work unchanged.

The mechanism: the parent alone listens on the control port and hands
each accepted connection, before a byte of TLS, to the worker with the
fewest clients (itself included): the socket goes over a UNIX socket pair
(``SCM_RIGHTS``, ``socket.send_fds``) and the worker adopts it
(``reactor.adoptStreamConnection``) under its own TLS and log-in.  Not
``SO_REUSEPORT``, which spreads connections by a hash of their addresses:
two clients may land on one worker while another idles, and nothing evens
it out later.  A client's public ports are claimed and listened on by the
worker that holds it, so its traffic never crosses a process.  The panel,
console, metrics and the shared HTTP(S) fronts run in the parent only.

The pair also carries each worker's load back: a line ``LOAD RECEIVED``
(clients logged in or logging in; connections taken so far) when it
changes, so that the parent counts a connection handed but not yet seen
as the worker's.

Life cycle: a worker that dies is started again (after 1 s, doubling up to
30 s while it keeps dying within a minute); its clients reconnect and the
parent hands them to the others meanwhile.  ``SIGTERM`` to the parent stops
every worker first (``SIGTERM``, then ``SIGKILL`` after 10 s); a worker
whose parent is gone (its end of the pair closes) stops itself.  Each
worker runs in a session of its own, for the scheduler (see ``command``).
Workers
log to the parent's standard output, each line naming the worker
(``worker_log_observer``).

Nothing here is imported with ``workers = 1``.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import FileLogObserver, Logger, formatEventAsClassicLogText
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from gotaxy.logs import gotaxy_observer

log = Logger(observer=gotaxy_observer, namespace="gotaxy.server.workers")

#: The worker's end of its socket pair, as the parent maps it into the child.
WORKER_FD = 3
#: Environment variable naming the worker in its log lines.
WORKER_ENV = "GOTAXY_WORKER"
#: First restart delay of a worker that died, and the most it grows to.
RESTART_DELAY = 1.0
RESTART_MAX = 30.0
#: A worker that ran this long before dying is restarted after RESTART_DELAY again.
STABLE_AFTER = 60.0
#: Seconds a stopping worker has after SIGTERM before SIGKILL.
STOP_TIMEOUT = 10.0
#: Seconds between a worker's load checks (a line is sent only on a change).
REPORT_INTERVAL = 0.2
#: Longest line of a load report; anything longer ends the link.
MAX_REPORT = 64

_FAMILY_BYTES = {socket.AF_INET: b"4", socket.AF_INET6: b"6", socket.AF_UNIX: b"u"}
_BYTE_FAMILIES = {v: k for k, v in _FAMILY_BYTES.items()}


def worker_dir(data_dir: str, index: int) -> str:
    """Worker ``index``'s own directory (node id, lock, logs) under the server's data directory."""
    return os.path.join(data_dir, "workers", str(index))


def worker_config(config: Any, data_dir: str) -> Any:
    """
    A worker's configuration: the server's, minus what only the parent
    runs (panel, console, shared fronts, ACME, the node-to-node listener),
    and with the parent's store and notify key, which lie in the parent's
    ``data_dir``, named outright (the worker's own directory is another).
    """
    from gotaxy.config import replace
    from gotaxy.sealing import key_path
    from gotaxy.store import default_url

    return replace(config, {
        "workers": 1,
        "web.port": 0, "web.endpoint": None, "console.port": 0, "console.endpoint": None,
        "vhost.http_port": 0, "https.port": 0, "acme.enable": False, "cluster.bind_port": 0,
        "database_url": config.effective_database_url() or default_url(data_dir), "store": None,
        "notify.key_file": key_path(data_dir, config.notify.key_file),
    })


def worker_log_observer() -> Any:
    """
    twistd's ``--logger`` for a worker: classic log lines on stdout (the
    parent's), with ``worker K`` in front of each line's system.
    """
    name = f"worker {os.environ.get(WORKER_ENV, '?')}"

    def format(event: Dict[str, Any]) -> Optional[str]:
        level = event.get("log_level")
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
        return formatEventAsClassicLogText(dict(event, log_system=f"{name} {system}"))

    return FileLogObserver(sys.stdout, format)


def plugin_arguments(options: Any) -> List[str]:
    """The ``gotaxy-server`` options the parent was given, to give each worker the same configuration."""
    args = []
    for long, *_ in options.optParameters:
        if long in ("worker", "workers"):
            continue
        value = options.get(long)
        if value is not None:
            args.append(f"--{long}={value}")
    return args


# -- the parent ------------------------------------------------------------------


class _LoadReports(LineOnlyReceiver):
    """The parent's end of a worker's pair: reads its load lines."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REPORT

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker

    def lineReceived(self, line: bytes) -> None:
        try:
            load, received = (int(part) for part in line.split())
        except ValueError:
            log.warn("worker {index} sent a load report that is not two numbers; ignored", index=self.worker.index)
            return
        self.worker.reported(load, received)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.worker.link_lost(self)


class _Child(ProcessProtocol):
    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        self.ended: Deferred = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.worker.ended(self, reason)
        self.ended.callback(None)


class Worker:
    """One child worker as the parent sees it: its process, its pair's end, its load."""

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.process: Optional[Any] = None
        self.child: Optional[_Child] = None
        self.link: Optional[Any] = None  #: the parent's end of the pair (a Twisted UNIX transport)
        self.reports: Optional[_LoadReports] = None  #: its protocol
        self.pid: Optional[int] = None
        self.started_at = 0.0
        self.delay = RESTART_DELAY
        self.load = 0  #: what the worker last said it holds
        self.handed = 0  #: connections handed to this run of it
        self.acked = 0  #: ... of which it had taken that many when it last said so
        self._restart: Any = None

    @property
    def alive(self) -> bool:
        return self.link is not None and self.process is not None

    @property
    def weight(self) -> int:
        """Its clients, counting those handed to it that it had not taken yet when it last reported."""
        return self.load + self.handed - self.acked

    def start(self) -> None:
        reactor = self.pool.reactor
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ours.setblocking(False)
            self.load = self.handed = self.acked = 0
            self.child = _Child(self)
            env = dict(os.environ)
            env[WORKER_ENV] = str(self.index)
            self.process = reactor.spawnProcess(
                self.child, sys.executable, self.pool.command(self.index), env=env,
                childFDs={0: "w", 1: 1, 2: 2, WORKER_FD: theirs.fileno()},
            )
            self.link = reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _LinkFactory(self))
        finally:
            theirs.close()
            ours.close()  # adopted: Twisted holds a copy of its own
        self.pid = self.process.pid
        self.started_at = reactor.seconds()
        log.info("worker {index} started (pid {pid})", index=self.index, pid=self.pid)

    def reported(self, load: int, received: int) -> None:
        self.load, self.acked = load, min(received, self.handed)

    def hand(self, skt: socket.socket) -> bool:
        """Send the accepted socket ``skt`` to this worker; False if it cannot take it now."""
        transport = self.link
        if transport is None:
            return False
        try:
            # Sent here, not through the transport's write buffer: once
            # send_fds returns, the worker's copy exists and ours may close.
            socket.send_fds(transport.getHandle(), [_FAMILY_BYTES.get(skt.family, b"4")], [skt.fileno()])
        except OSError as e:  # its pair is full (a worker stuck) or gone
            log.warn("worker {index} cannot take a connection now ({error}); kept by the parent",
                     index=self.index, error=e)
            return False
        self.handed += 1
        return True

    def link_lost(self, protocol: Any) -> None:
        if self.reports is protocol:  # not a link of an earlier run of the worker
            self.link = self.reports = None

    def ended(self, child: _Child, reason: Any) -> None:
        if child is not self.child:
            return
        self.process = None
        if self.link is not None:
            self.link.loseConnection()
            self.link = self.reports = None
        status = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        if self.pool.stopping:
            log.info("worker {index} (pid {pid}) stopped", index=self.index, pid=self.pid)
            return
        reactor = self.pool.reactor
        if reactor.seconds() - self.started_at >= STABLE_AFTER:
            self.delay = RESTART_DELAY
        log.warn(
            "worker {index} (pid {pid}) ended ({how}); its clients reconnect to the other workers; "
            "starting it again in {delay:g} s",
            index=self.index, pid=self.pid, how=f"signal {signal}" if signal else f"exit status {status}",
            delay=self.delay,
        )
        self._restart = reactor.callLater(self.delay, self._start_again)
        self.delay = min(self.delay * 2, RESTART_MAX)

    def _start_again(self) -> None:
        self._restart = None
        if not self.pool.stopping:
            try:
                self.start()
            except OSError as e:
                log.error("worker {index} could not be started: {error}", index=self.index, error=e)

    def stop(self) -> Deferred:
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        if self.process is None or self.child is None:
            return succeed(None)
        ended = self.child.ended
        self.process.signalProcess("TERM")
        timer = self.pool.reactor.callLater(STOP_TIMEOUT, self._kill)
        return ended.addBoth(lambda _: timer.cancel() if timer.active() else None)

    def _kill(self) -> None:
        if self.process is not None:
            log.warn("worker {index} (pid {pid}) did not stop within {timeout:g} s; killed",
                     index=self.index, pid=self.pid, timeout=STOP_TIMEOUT)
            self.process.signalProcess("KILL")


class _LinkFactory(Factory):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def buildProtocol(self, addr: Any) -> _LoadReports:
        self.worker.reports = _LoadReports(self.worker)
        return self.worker.reports


class WorkerPool(Service):
    """
    The parent's workers 2..N: starts them with the parent, stops them
    before it, restarts one that dies, and says which process takes the
    next client (``choose``).  ``own_load`` is the parent's own count.
    """

    name = "workers"

    def __init__(self, count: int, reactor: Any, arguments: List[str], own_load: Callable[[], int]) -> None:
        self.reactor = reactor
        self.arguments = arguments
        self.own_load = own_load
        self.workers = [Worker(self, index) for index in range(2, count + 1)]
        self.stopping = False

    def command(self, index: int) -> List[str]:
        return [
            # A session of its own (setsid): the kernel's autogroup scheduling
            # gives each session an equal share of a busy machine, so workers
            # in the parent's session would share one share between them (on
            # this machine: 1.1 CPU s per round for two workers against 1.4 for
            # two servers).  Ctrl-C reaches the parent alone, which stops them.
            sys.executable, "-c",
            "import os, sys; os.setsid(); sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "--logger=gotaxy.server.workers.worker_log_observer",
            "gotaxy-server", *self.arguments, f"--worker={index}",
        ]

    def startService(self) -> None:
        super().startService()
        for worker in self.workers:
            worker.start()

    def stopService(self) -> Deferred:
        super().stopService()
        self.stopping = True
        from twisted.internet.defer import gatherResults

        return gatherResults([worker.stop() for worker in self.workers])

    def apply(self, config: Any) -> List[Any]:
        """A reload here is a reload in every worker: each re-reads the file (SIGHUP) and logs what it applied."""
        for worker in self.workers:
            if worker.process is not None:
                worker.process.signalProcess("HUP")
        return []

    def choose(self) -> Optional[Worker]:
        """The live worker with the fewest clients, or None when the parent has no more than it."""
        best: Optional[Worker] = None
        least = self.own_load()
        for worker in self.workers:
            if worker.alive and worker.weight < least:
                best, least = worker, worker.weight
        return best


class _HandOff(Protocol):
    """Built for a connection another worker takes: hands its socket over at once, then forgets it."""

    def __init__(self, worker: Worker, fallback: Callable[[], Any]) -> None:
        self.worker = worker
        self.fallback = fallback

    def makeConnection(self, transport: Any) -> None:
        if self.worker.hand(transport.getHandle()):
            # The worker holds the connection now: close only our descriptor.
            # A shutdown() (what an orderly close does) would end it for the
            # worker too; Twisted skips it for sockets it did not open itself.
            transport._shouldShutdown = False
            transport.loseConnection()
            return
        protocol = self.fallback()
        if protocol is None:
            transport.loseConnection()
            return
        transport.protocol = protocol
        protocol.makeConnection(transport)


class HandingFactory(Factory):
    """The parent's control-port factory: each connection to the least-loaded worker, or to ``wrapped`` here."""

    noisy = False

    def __init__(self, pool: WorkerPool, wrapped: Any, admits: Callable[[str], bool]) -> None:
        self.pool = pool
        self.wrapped = wrapped
        self.admits = admits

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", "?")
        if not self.admits(host):  # a banned or refused source is refused here, not handed on
            return None
        worker = self.pool.choose()
        if worker is None:
            return self.wrapped.buildProtocol(addr)
        return _HandOff(worker, lambda: self.wrapped.buildProtocol(addr))


# -- a worker ------------------------------------------------------------------------


@implementer(IFileDescriptorReceiver)
class _Connections(Protocol):
    """A worker's end of the pair: each message is one socket and one byte naming its family."""

    def __init__(self, link: "WorkerLink") -> None:
        self.link = link
        self._fds: List[int] = []

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self._fds.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        for byte in data:
            family = _BYTE_FAMILIES.get(bytes([byte]))
            if not self._fds:
                continue
            fd = self._fds.pop(0)
            try:
                if family is None:
                    log.warn("the parent sent a connection of an unknown kind; closed")
                else:
                    self.link.adopt(fd, family)
            finally:
                os.close(fd)

    def connectionLost(self, reason: Any = None) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self.link.parent_gone()


class WorkerLink(Service):
    """
    A worker's stand-in for the control port: adopts the connections its
    parent hands over (under ``factory``: the control port's TLS and
    log-in) and reports its load.  The worker stops when its parent is gone.
    """

    name = "worker-link"
    #: Listener's attributes the rest of the server reads: no port of its own, nothing to wait for.
    port = None
    closed = None

    def __init__(self, index: int, factory: Any, load: Callable[[], int], reactor: Any, fd: int = WORKER_FD) -> None:
        self.index = index
        self.factory = factory
        self.load = load
        self.reactor = reactor
        self.fd = fd
        self.received = 0
        self._said: Optional[tuple] = None
        self._reports = LoopingCall(self.report)
        self._reports.clock = reactor
        self._link: Any = None

    def startService(self) -> None:
        super().startService()
        self._link = self.reactor.adoptStreamConnection(self.fd, socket.AF_UNIX, _ConnectionsFactory(self))
        os.close(self.fd)
        self._reports.start(REPORT_INTERVAL)

    def stopService(self) -> Any:
        super().stopService()
        if self._reports.running:
            self._reports.stop()
        return None

    def adopt(self, fd: int, family: int) -> None:
        self.received += 1
        try:
            self.reactor.adoptStreamConnection(fd, family, self.factory)
        except OSError as e:  # the visitor went away in between
            log.info("a connection handed over was gone before it was taken: {error}", error=e)
        self.report()

    def report(self) -> None:
        if self._link is None:
            return
        said = (self.load(), self.received)
        if said != self._said:
            self._said = said
            self._link.write(b"%d %d\n" % said)

    def parent_gone(self) -> None:
        self._link = None
        if self.running:
            log.warn("worker {index}: the parent process is gone; stopping", index=self.index)
            self.reactor.stop()
            # Nobody is left to kill a stop that hangs (seen: a stop within a
            # second of the start, waiting on a store read that never ends).
            self.reactor.callLater(STOP_TIMEOUT, self._exit)

    def _exit(self) -> None:
        log.error("worker {index} did not stop within {timeout:g} s of its parent's end; exiting now",
                  index=self.index, timeout=STOP_TIMEOUT)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(1)

    def apply(self, config: Any) -> List[Any]:
        return []  # the control port is the parent's


class _ConnectionsFactory(Factory):
    def __init__(self, link: WorkerLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _Connections:
        return _Connections(self.link)
