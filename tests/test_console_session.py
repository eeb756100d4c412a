"""
The console's SSH session channel (``gotaxy.console.session``) driven
through in-memory terminals: keystrokes in, a rendered 80x24 screen out,
against a live server and client in this process.
"""

from __future__ import annotations

from typing import Any

from twisted.conch.insults import helper, insults
from twisted.internet import reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from gotaxy.console.commands import MAX_LINE, Commands
from gotaxy.console.session import ConsoleSession
from tests.inprocess import LiveSystem, listen_echo, wait_until

UP = b"\x1b[A"


class FakeChannel:
    """Stands in for Conch's SSHSessionProcessProtocol: records what the session sends."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Any = None
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended = reason.value

    def type(self, keys: bytes) -> None:
        self.transport.write(keys)

    def screen(self) -> str:
        """The 80x24 screen a VT102 terminal would show for the output so far."""
        buffer = helper.TerminalBuffer()
        client = insults.ClientProtocol(lambda: buffer)
        client.makeConnection(StringTransport())
        client.dataReceived(self.out)
        return bytes(buffer).decode()


class SessionTests(unittest.TestCase):
    timeout = 60

    async def _start_live(self) -> None:
        echo = listen_echo(self)
        self.live = await LiveSystem.start(self, [f"echo=tcp:127.0.0.1:{echo}"], server_args=["--console-port", "0"])
        await self.live.wait_up("echo")

    async def _session(self, pty: bool = True, python: bool = False) -> "tuple[ConsoleSession, FakeChannel]":
        await self._start_live()
        namespace = self.live.server.namespace() if python else None
        session = ConsoleSession(lambda: Commands(self.live.management, python_allowed=python), reactor,
                                 namespace=namespace, banner="Welcome to the test console.")
        if pty:
            session.getPty(b"xterm", (24, 80, 0, 0), [])
        channel = FakeChannel()
        self.addCleanup(session.closed)
        return session, channel

    async def settle(self, channel: FakeChannel, text: str, timeout: float = 10.0) -> str:
        await wait_until(lambda: text in channel.screen(), timeout)
        return channel.screen()

    async def prompt_count(self, channel: FakeChannel, count: int) -> str:
        await wait_until(lambda: channel.screen().count("gotaxy> ") >= count)
        return channel.screen()

    # -- one-shot --------------------------------------------------------------

    async def test_exec_prints_the_output_and_exits_0(self):
        session, channel = await self._session(pty=False)
        session.execCommand(channel, b"tunnels")
        await wait_until(lambda: channel.ended is not None)
        self.assertIsInstance(channel.ended, ProcessDone)
        self.assertTrue(channel.out.startswith(b"TUNNEL "))
        self.assertIn(b"alice/echo", channel.out)
        self.assertNotIn(b"\r\n", channel.out)
        self.assertEqual(channel.err, b"")

    async def test_exec_error_goes_to_stderr_with_the_exit_status(self):
        session, channel = await self._session(pty=False)
        session.execCommand(channel, b"tunnel nothing")
        await wait_until(lambda: channel.ended is not None)
        self.assertIsInstance(channel.ended, ProcessTerminated)
        self.assertEqual(channel.ended.exitCode, 1)
        self.assertEqual(channel.err, b"error: no tunnel named 'nothing'; 'tunnels' lists them\n")
        self.assertEqual(channel.out, b"")

    async def test_exec_refuses_commands_that_need_a_terminal(self):
        session, channel = await self._session(pty=False)
        session.execCommand(channel, b"watch")
        await wait_until(lambda: channel.ended is not None)
        self.assertEqual(channel.ended.exitCode, 2)
        self.assertIn(b"watch needs an interactive console", channel.err)

    async def test_exec_with_a_pty_ends_lines_with_crlf(self):
        session, channel = await self._session(pty=True)
        session.execCommand(channel, b"status")
        await wait_until(lambda: channel.ended is not None)
        self.assertIn(b"version      0.1.0\r\n", channel.out)

    async def test_shell_without_pty_runs_piped_lines(self):
        session, channel = await self._session(pty=False)
        session.openShell(channel)
        channel.type(b"status\nfrobnicate\r\ntokens --json\n")
        session.eofReceived()
        await wait_until(lambda: channel.ended is not None)
        self.assertEqual(channel.ended.exitCode, 2)  # the failed line's status
        self.assertIn(b"version      0.1.0\n", channel.out)
        self.assertIn(b'"name": "alice"', channel.out)
        self.assertEqual(channel.err, b"unknown command 'frobnicate'; type 'help' for the list of commands\n")

    # -- interactive -----------------------------------------------------------

    async def test_prompt_command_table_and_exit(self):
        session, channel = await self._session()
        session.openShell(channel)
        screen = await self.prompt_count(channel, 1)
        self.assertIn("Welcome to the test console.", screen)
        channel.type(b"tunnels\r")
        screen = await self.prompt_count(channel, 2)
        self.assertRegex(screen, r"gotaxy> tunnels\nTUNNEL +ADDRESS +LOCAL")
        self.assertIn("alice/echo", screen)
        channel.type(b"exit\r")
        await wait_until(lambda: channel.ended is not None)
        self.assertIsInstance(channel.ended, ProcessDone)

    async def test_history_and_line_editing(self):
        session, channel = await self._session()
        session.openShell(channel)
        await self.prompt_count(channel, 1)
        channel.type(b"clients\r")
        await self.prompt_count(channel, 2)
        channel.type(b"status\r")
        await self.prompt_count(channel, 3)
        channel.type(UP + UP)  # back to "clients"
        await self.settle(channel, "gotaxy> clients")
        channel.type(b"\x7f\x7f\x7f\x7f\x7f\x7f\x7fstatus\r")  # backspace it away, type another
        screen = await self.prompt_count(channel, 4)
        self.assertEqual(screen.count("uptime"), 2)
        channel.type(b"tokens\x03")  # Ctrl-C drops the line
        screen = await self.prompt_count(channel, 5)
        self.assertIn("gotaxy> tokens^C", screen)
        channel.type(b"\x04")  # Ctrl-D on an empty line leaves
        await wait_until(lambda: channel.ended is not None)
        self.assertIsInstance(channel.ended, ProcessDone)

    async def test_tab_completion(self):
        session, channel = await self._session()
        session.openShell(channel)
        await self.prompt_count(channel, 1)
        await wait_until(lambda: "alice/echo" in session.terminal.terminalProtocol.commands.tunnel_refs)
        channel.type(b"tunnel dis\ta")  # completes "disable ", then "alice/echo"
        await self.settle(channel, "gotaxy> tunnel disable a")
        channel.type(b"\t")
        await self.settle(channel, "gotaxy> tunnel disable alice/echo ")
        channel.type(b"\x15tok\t")  # Ctrl-U clears; "tok" extends to the common prefix "token"
        await self.settle(channel, "gotaxy> token")
        channel.type(b"\t")  # two candidates: listed under the line, then the line again
        screen = await self.settle(channel, "tokens")
        self.assertRegex(screen, r"token +tokens\ngotaxy> token")
        channel.type(b"s\r")
        screen = await self.prompt_count(channel, 3)
        self.assertIn("LAST USED", screen)

    async def test_bad_command_keeps_the_session(self):
        session, channel = await self._session()
        session.openShell(channel)
        await self.prompt_count(channel, 1)
        channel.type(b"kick\r")
        screen = await self.prompt_count(channel, 2)
        self.assertIn("kick: missing NAME; type 'help kick' for usage", screen)
        channel.type(b"status\r")
        await self.settle(channel, "uptime")
        self.assertIsNone(channel.ended)

    async def test_long_lines_are_cut_at_the_limit(self):
        session, channel = await self._session()
        session.openShell(channel)
        await self.prompt_count(channel, 1)
        channel.type(b"x" * (MAX_LINE + 50))
        protocol = session.terminal.terminalProtocol
        self.assertEqual(len(protocol.lineBuffer), MAX_LINE)
        self.assertEqual(channel.out.count(b"\a"), 50)

    async def test_watch_draws_until_a_key_is_pressed(self):
        session, channel = await self._session()
        session.openShell(channel)
        await self.prompt_count(channel, 1)
        channel.type(b"watch\r")
        screen = await self.settle(channel, "press any key to stop")
        self.assertRegex(screen, r"TUNNEL +ADDRESS")
        self.assertIn("alice/echo", screen)
        # A live event shows up in the next frame.
        await self.live.management.create_token("bob")
        await self.live.management.add_tunnel("bob", "later", "127.0.0.1:1", 0)
        await self.settle(channel, "tunnel.added  bob/later", timeout=5)
        protocol = session.terminal.terminalProtocol
        loop = protocol.watching
        self.assertTrue(loop.running)
        channel.type(b"q")
        self.assertIsNone(protocol.watching)
        # The redraw loop is stopped, so no frame can follow the key (a
        # stopped LoopingCall never fires again; waiting would prove less).
        self.assertFalse(loop.running)
        await self.settle(channel, "gotaxy> ")

    async def test_python_is_refused_when_off(self):
        session, channel = await self._session()
        session.openShell(channel)
        await self.prompt_count(channel, 1)
        channel.type(b"python\r")
        screen = await self.prompt_count(channel, 2)
        self.assertIn("the Python console is off", screen)

    async def test_python_sees_the_live_server_and_returns(self):
        session, channel = await self._session(python=True)
        session.openShell(channel)
        await self.prompt_count(channel, 1)
        channel.type(b"python\r")
        await self.settle(channel, ">>> ")
        channel.type(b"sorted(core.sessions), config.bind_port == core.config.bind_port\r")
        await self.settle(channel, "(['alice'], True)")
        channel.type(b"exit()\r")
        await self.settle(channel, "back in the console")
        channel.type(b"clients\r")
        await self.settle(channel, "LAST SEEN")
        self.assertIsNone(channel.ended)

    async def test_closing_the_channel_stops_watch(self):
        session, channel = await self._session()
        session.openShell(channel)
        await self.prompt_count(channel, 1)
        channel.type(b"watch\r")
        await self.settle(channel, "press any key")
        protocol = session.terminal.terminalProtocol
        session.closed()
        self.assertIsNone(protocol.watching)
        self.assertEqual(self.live.core.events._subscribers.count(protocol._recent.append), 0)

    async def test_keys_typed_while_a_command_runs_are_kept(self):
        session, channel = await self._session()
        session.openShell(channel)
        await self.prompt_count(channel, 1)
        channel.type(b"clients\rstatus\r")  # pasted: the second line arrives while the first runs
        screen = await self.prompt_count(channel, 3)
        self.assertIn("LAST SEEN", screen)
        self.assertIn("uptime", screen)

    async def test_other_keys_only_ring_the_bell(self):
        session, channel = await self._session()
        session.openShell(channel)
        await self.prompt_count(channel, 1)
        channel.type("é".encode() + b"\x1b[24~")  # a UTF-8 letter and F12
        protocol = session.terminal.terminalProtocol
        self.assertEqual(protocol.lineBuffer, [])
        self.assertEqual(channel.out.count(b"\a"), 3)
        channel.type(b"status\r")
        await self.settle(channel, "uptime")
