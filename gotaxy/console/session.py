# -*- test-case-name: tests.test_console_session -*-
"""
What an SSH session channel of the console runs.

An SSH client asks its session channel for one of three things, and each
gets its own protocol here, all driving the same ``Commands``:

* ``ssh -p 7022 admin@host`` (a shell with a pty): ``ConsoleProtocol``, a
  ``HistoricRecvLine`` behind an insults ``ServerProtocol`` -- line editing,
  history (Up/Down), tab completion, ``watch`` and ``python`` take over the
  terminal until a key is pressed or the Python prompt is left;
* ``ssh ... admin@host COMMAND`` (exec): the command runs once, its output
  goes to stdout (errors to stderr) and the channel closes with the
  command's exit status;
* a shell without a pty (``ssh -T``, input from a pipe): ``LineModeSession``
  runs the lines it reads one after another, without prompt or echo, and
  exits with the status of the last command that failed (0 if none).

``ConsoleSession`` is the ``ISession`` that picks one of these per channel.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from twisted.conch import manhole
from twisted.conch.insults import insults
from twisted.conch.interfaces import ISession
from twisted.conch.recvline import HistoricRecvLine
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gotaxy.console.commands import EXIT_OK, EXIT_USAGE, MAX_LINE, Commands, Result
from gotaxy.console.text import printable, render_watch
from gotaxy.events import Event
from gotaxy.logs import gotaxy_observer

log = Logger(observer=gotaxy_observer, namespace="gotaxy.console")

HISTORY = 500  #: commands kept for Up/Down
WATCH_INTERVAL = 1.0  #: seconds between frames of ``watch``
PROMPT = b"gotaxy> "

CTRL_A, CTRL_C, CTRL_D, CTRL_E, CTRL_L, CTRL_U = b"\x01", b"\x03", b"\x04", b"\x05", b"\x0c", b"\x15"


def _crlf(text: str) -> bytes:
    """Text for a terminal: CR LF line ends and no control characters of its own."""
    lines = text.replace("\r\n", "\n").split("\n")
    return "\r\n".join(printable(line) for line in lines).encode("utf-8", "replace")


class ConsoleManhole(manhole.ColoredManhole):
    """The ``python`` prompt; Ctrl-D or ``exit()`` goes back to the console."""

    def __init__(self, namespace: Dict[str, Any], leave: Callable[[], None], reactor: Any) -> None:
        self._leave = leave
        namespace = dict(namespace, exit=_Leave(leave, reactor), quit=_Leave(leave, reactor))
        super().__init__(namespace)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.terminal.write(b"Python prompt on the live server; exit() or Ctrl-D returns to the console.")
        self.terminal.nextLine()
        self.drawInputLine()

    def handle_QUIT(self) -> None:
        self._leave()


class _Leave:
    def __init__(self, leave: Callable[[], None], reactor: Any) -> None:
        self._leave = leave
        self._reactor = reactor

    def __call__(self) -> None:
        # After the manhole has finished the current line.
        self._reactor.callLater(0, self._leave)

    def __repr__(self) -> str:
        return "Use exit() or Ctrl-D to return to the console."


class ConsoleProtocol(HistoricRecvLine):
    """The interactive console: one ``Commands`` behind a line editor."""

    ps = (PROMPT, b"... ")

    def __init__(self, commands: Commands, reactor: Any, finish: Callable[[int], None],
                 namespace: Optional[Dict[str, Any]] = None, width: int = 80, height: int = 24,
                 banner: str = "", on_python: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        self.on_python = on_python  #: told each time the python prompt opens (it is logged as an event)
        self.commands = commands
        self.reactor = reactor
        self.finish = finish
        self.namespace = namespace
        self.width = width
        self.height = height
        self.banner = banner
        self.busy = False
        self.watching: Optional[LoopingCall] = None
        self._unsubscribe: Optional[Callable[[], None]] = None
        self._recent: Deque[Event] = deque(maxlen=5)
        self._drawing = False
        self._typed_ahead: List[Any] = []  #: keys pressed while a command ran

    # -- set-up ----------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.keyHandlers.update({
            CTRL_A: self.handle_HOME,
            CTRL_C: self.handle_INT,
            CTRL_D: self.handle_EOF,
            CTRL_E: self.handle_END,
            CTRL_L: self.handle_FF,
            CTRL_U: self.handle_KILL,
        })
        Deferred.fromCoroutine(self.commands.refresh_names())

    def initializeScreen(self) -> None:
        self.terminal.reset()
        if self.banner:
            self.terminal.write(_crlf(self.banner + "\n"))
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def terminalSize(self, width: int, height: int) -> None:
        # Keep what is on the screen; only tables and watch use the size.
        self.width, self.height = width, height

    def connectionLost(self, reason: Any = None) -> None:
        self.stop_watch(redraw=False)

    # -- keys ----------------------------------------------------------------

    def keystrokeReceived(self, keyID: bytes, modifier: Any) -> None:
        if self.watching is not None:
            self.stop_watch()
            return
        if self.busy:
            # A command is running: keep what is typed (or pasted) for the next prompt.
            if len(self._typed_ahead) < 4 * MAX_LINE:
                self._typed_ahead.append((keyID, modifier))
            return
        if keyID not in self.keyHandlers and keyID not in self._printableChars:
            self.terminal.write(b"\a")  # commands are ASCII; other keys only ring the bell
            return
        super().keystrokeReceived(keyID, modifier)

    def characterReceived(self, ch: bytes, moreCharactersComing: bool) -> None:
        if len(self.lineBuffer) >= MAX_LINE:
            self.terminal.write(b"\a")
            return
        super().characterReceived(ch, moreCharactersComing)

    def handle_INT(self) -> None:
        self.lineBuffer = []
        self.lineBufferIndex = 0
        self.terminal.write(b"^C")
        self.terminal.nextLine()
        self.drawInputLine()

    def handle_EOF(self) -> None:
        if self.lineBuffer:
            self.terminal.write(b"\a")
        else:
            self.terminal.nextLine()
            self.finish(EXIT_OK)

    def handle_FF(self) -> None:
        self.terminal.eraseDisplay()
        self.terminal.cursorHome()
        self._redraw_line()

    def handle_KILL(self) -> None:
        if self.lineBufferIndex:
            self.terminal.cursorBackward(self.lineBufferIndex)
        self.terminal.eraseToLineEnd()
        self.lineBuffer = []
        self.lineBufferIndex = 0

    def handle_TAB(self) -> None:
        before = b"".join(self.lineBuffer[: self.lineBufferIndex]).decode("utf-8", "replace")
        current = "" if not before or before[-1].isspace() else before.split()[-1]
        matches = self.commands.complete(before)
        if not matches:
            self.terminal.write(b"\a")
            return
        if len(matches) == 1:
            self._insert(matches[0][len(current):] + " ")
            return
        common = os.path.commonprefix(matches)
        if len(common) > len(current):
            self._insert(common[len(current):])
            return
        self.terminal.nextLine()
        self.terminal.write(_crlf(_columns(matches, self.width)))
        self.terminal.nextLine()
        self._redraw_line()

    def _insert(self, text: str) -> None:
        for ch in text.encode("utf-8"):
            self.characterReceived(bytes([ch]), False)

    def _redraw_line(self) -> None:
        self.drawInputLine()
        behind = len(self.lineBuffer) - self.lineBufferIndex
        if behind:
            self.terminal.cursorBackward(behind)

    # -- commands ------------------------------------------------------------

    def handle_RETURN(self) -> None:
        super().handle_RETURN()
        if len(self.historyLines) > HISTORY:
            del self.historyLines[:-HISTORY]
            self.historyPosition = len(self.historyLines)

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if not text.strip():
            self.drawInputLine()
            return
        self.busy = True
        d = Deferred.fromCoroutine(self.commands.run(text))
        d.addCallback(self._show)
        d.addErrback(lambda f: log.failure("console session failed", f))

    def _show(self, result: Result) -> None:
        self.busy = False
        if result.text:
            self.terminal.write(_crlf(result.text + "\n"))
        typed, self._typed_ahead = self._typed_ahead, []
        if result.action == "exit":
            self.finish(EXIT_OK)
            return
        if result.action == "watch":
            self.start_watch()
            return
        if result.action == "python":
            self.enter_python()
            return
        Deferred.fromCoroutine(self.commands.refresh_names())
        self.drawInputLine()
        for keyID, modifier in typed:
            self.keystrokeReceived(keyID, modifier)

    # -- watch ---------------------------------------------------------------

    def start_watch(self) -> None:
        self._recent.clear()
        self._unsubscribe = self.commands.core.events.subscribe(self._recent.append)
        self.watching = LoopingCall(self._frame)
        self.watching.clock = self.reactor
        self.watching.start(WATCH_INTERVAL, now=True)

    def _frame(self) -> None:
        if self._drawing:
            return
        self._drawing = True

        async def draw() -> None:
            try:
                status = await self.commands.management.status()
                views = await self.commands.management.tunnels()
            finally:
                self._drawing = False
            if self.watching is None:
                return
            frame = render_watch(status, views, list(self._recent), self.reactor.seconds(),
                                 min(self.width, 200) or 80, self.height or 24)
            self.terminal.eraseDisplay()
            self.terminal.cursorHome()
            self.terminal.write(_crlf(frame))

        Deferred.fromCoroutine(draw()).addErrback(lambda f: log.failure("watch frame failed", f))

    def stop_watch(self, redraw: bool = True) -> None:
        if self.watching is None:
            return
        if self.watching.running:
            self.watching.stop()
        self.watching = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if redraw:
            self.terminal.nextLine()
            self.drawInputLine()

    # -- python --------------------------------------------------------------

    def enter_python(self) -> None:
        if self.namespace is None:  # Commands refuses first; this is a second lock
            self.terminal.write(b"the Python console is off")
            self.terminal.nextLine()
            self.drawInputLine()
            return
        if self.on_python is not None:
            self.on_python()
        prompt = ConsoleManhole(self.namespace, self.leave_python, self.reactor)
        self.terminal.terminalProtocol = prompt
        prompt.makeConnection(self.terminal)

    def leave_python(self) -> None:
        if self.terminal.terminalProtocol is self:
            return
        self.terminal.terminalProtocol = self
        self.terminal.nextLine()
        self.terminal.write(b"back in the console")
        self.terminal.nextLine()
        self.drawInputLine()


def _columns(words: List[str], width: int) -> str:
    cell = max(len(w) for w in words) + 2
    per_line = max(1, (width or 80) // cell)
    rows = [words[i: i + per_line] for i in range(0, len(words), per_line)]
    return "\n".join("".join(w.ljust(cell) for w in row).rstrip() for row in rows)


class LineModeSession(Protocol):
    """A shell without a pty: runs the lines it reads, in order, quietly."""

    def __init__(self, commands: Commands, finish: Callable[[int], None],
                 write_err: Callable[[bytes], None]) -> None:
        self.commands = commands
        self.finish = finish
        self.write_err = write_err
        self._buffer = b""
        self._lines: Deque[str] = deque()
        self._running = False
        self._eof = False
        self._status = EXIT_OK
        self._done = False

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            self._lines.append("x" * (MAX_LINE + 1))  # reported as too long
            self._buffer = b""
        self._lines.extend(line.rstrip(b"\r").decode("utf-8", "replace") for line in lines)
        self._next()

    def eof(self) -> None:
        if self._buffer.strip():
            self._lines.append(self._buffer.decode("utf-8", "replace"))
            self._buffer = b""
        self._eof = True
        self._next()

    def _next(self) -> None:
        if self._running or self._done:
            return
        if not self._lines:
            if self._eof:
                self._end(self._status)
            return
        line = self._lines.popleft()
        self._running = True
        d = Deferred.fromCoroutine(self.commands.run(line))
        d.addCallback(self._show)
        d.addErrback(lambda f: log.failure("console line session failed", f))

    def _show(self, result: Result) -> None:
        self._running = False
        if result.action in ("watch", "python"):
            result = Result(_needs_terminal(result.action), EXIT_USAGE)
        if result.text:
            data = (result.text + "\n").encode("utf-8", "replace")
            write: Any = self.transport.write if result.status == EXIT_OK else self.write_err  # type: ignore[union-attr]
            write(data)
        if result.status != EXIT_OK:
            self._status = result.status
        if result.action == "exit":
            self._end(self._status)
            return
        self._next()

    def _end(self, status: int) -> None:
        if not self._done:
            self._done = True
            self.finish(status)


def _needs_terminal(action: Optional[str]) -> str:
    return f"{action} needs an interactive console: connect with 'ssh -t' without a command, then type {action}"


class _Glue:
    """A minimal transport: where writes go and what closing does."""

    def __init__(self, write: Callable[[bytes], None], lose: Callable[[], None]) -> None:
        self.write = write
        self.loseConnection = lose

    def writeSequence(self, data: List[bytes]) -> None:
        self.write(b"".join(data))

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None


@implementer(ISession)
class ConsoleSession:
    """One SSH session channel: a terminal console, a line session, or one command."""

    def __init__(self, make_commands: Callable[[], Commands], reactor: Any,
                 namespace: Optional[Dict[str, Any]] = None, banner: str = "",
                 on_python: Optional[Callable[[], None]] = None) -> None:
        self.make_commands = make_commands
        self.on_python = on_python
        self.reactor = reactor
        self.namespace = namespace
        self.banner = banner
        self.pty = False
        self.width, self.height = 80, 24
        self.proto: Any = None
        self.terminal: Optional[insults.ServerProtocol] = None
        self.lines: Optional[LineModeSession] = None
        self.finished = False
        self.closed_ = False

    def getPty(self, term: bytes, windowSize: Any, modes: Any) -> None:
        self.pty = True
        self.height, self.width = windowSize[0] or 24, windowSize[1] or 80

    def windowChanged(self, newWindowSize: Any) -> None:
        self.height, self.width = newWindowSize[0] or 24, newWindowSize[1] or 80
        if self.terminal is not None and self.terminal.terminalProtocol is not None:
            self.terminal.terminalProtocol.terminalSize(self.width, self.height)

    def openShell(self, proto: Any) -> None:
        self.proto = proto
        commands = self.make_commands()
        if not self.pty:
            self.lines = LineModeSession(commands, self.finish, self._write_err)
            proto.makeConnection(_Glue(self.lines.dataReceived, lambda: None))
            self.lines.makeConnection(_Glue(self._write, lambda: self.finish(EXIT_OK)))
            return
        self.terminal = insults.ServerProtocol(
            ConsoleProtocol, commands, self.reactor, self.finish, self.namespace,
            self.width, self.height, self.banner, self.on_python,
        )
        proto.makeConnection(_Glue(self.terminal.dataReceived, lambda: None))
        self.terminal.makeConnection(_Glue(self._write, lambda: self.finish(EXIT_OK)))

    def execCommand(self, proto: Any, command: bytes) -> None:
        self.proto = proto
        commands = self.make_commands()

        async def run() -> None:
            try:
                line = command.decode("utf-8")
            except UnicodeDecodeError:
                result = Result("the command is not valid UTF-8", EXIT_USAGE)
            else:
                result = await commands.run(line)
            if result.action in ("watch", "python"):
                result = Result(_needs_terminal(result.action), EXIT_USAGE)
            if result.text:
                data = _crlf(result.text + "\n") if self.pty else (result.text + "\n").encode("utf-8", "replace")
                (self._write if result.status == EXIT_OK else self._write_err)(data)
            self.finish(result.status)

        Deferred.fromCoroutine(run()).addErrback(lambda f: log.failure("console command failed", f))

    def _write(self, data: bytes) -> None:
        if not self.closed_ and self.proto is not None:
            self.proto.write(data)

    def _write_err(self, data: bytes) -> None:
        if not self.closed_ and self.proto is not None:
            self.proto.errReceived(data)

    def finish(self, status: int) -> None:
        """Send the exit status and close the channel (once)."""
        if self.finished or self.closed_:
            return
        self.finished = True
        reason = ProcessDone(None) if status == EXIT_OK else ProcessTerminated(exitCode=status)
        self.proto.processEnded(Failure(reason))

    def eofReceived(self) -> None:
        if self.lines is not None:
            self.lines.eof()

    def closed(self) -> None:
        self.closed_ = True
        if self.terminal is not None:
            self.terminal.connectionLost(Failure(ProcessDone(None)))
