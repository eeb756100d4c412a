# -*- test-case-name: tests.test_console_service -*-
"""
The SSH server of the operator console: host key, log-in, listening port.

Log-in (both lead to the same avatar; there is one operator, ``admin``):

* password: checked by the server's ``OperatorAuth`` -- the same argon2
  hash, the same failure events and the same lock-out as the web panel.
  The checker needs the client's address, which Conch's user-auth service
  does not pass to checkers, so ``ConsoleUserAuth`` puts it into the
  credentials (``PasswordFromAddress``).  While an address or user is
  locked out, the client is told so in an SSH banner;
* second factor: with TOTP on (enrolled in the panel), a right password is
  only a partial success (RFC 4252 "partial success"), and the client must
  go on with keyboard-interactive (RFC 4256, which Conch's server lacks, so
  ``ConsoleUserAuth`` speaks it), which asks for the code.  A client that
  starts with keyboard-interactive is asked for the password and the code;
* public key (a full log-in on its own): a key listed in ``DATA_DIR/console_authorized_keys``
  (OpenSSH ``authorized_keys`` format), re-read at every attempt (on a
  thread, not the reactor's), so keys can be added or removed without a restart.  Clients offer every key they
  have, so a key that is not listed is not a failed log-in.

Connections not logged in are capped in all and per address (an IPv6
address's /64), and closed ``LOGIN_TIMEOUT`` seconds after connecting;
logged-in sessions are closed after ``console.idleTimeout`` seconds without
input.

The host key is an Ed25519 key made at the console's first connection and kept in
``DATA_DIR/console_host_key`` (mode 0600), so clients see the same host key
across restarts.

The console is a convenience beside the tunnels: if its port cannot be
opened, the error is logged and the server carries on without it.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import avatar as conch_avatar
from twisted.conch import interfaces as iconch
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.error import NotEnoughAuthentication
from twisted.conch.ssh import connection, factory, keys, session, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.cred import credentials as cred_credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from gotaxy import __version__
from gotaxy.console.commands import Commands
from gotaxy.console.session import ConsoleSession
from gotaxy.events import CONSOLE_PYTHON_USED
from gotaxy.console.listener import ConsoleAccess, ConsoleService, make_console_service
from gotaxy.logs import gotaxy_observer
from gotaxy.server.operators import AuthFailed, LockedOut, OperatorAuth

if TYPE_CHECKING:
    from gotaxy.server.manage import Management
    from gotaxy.web.auth import PanelAuth

log = Logger(observer=gotaxy_observer, namespace="gotaxy.console")

HOST_KEY_FILE = "console_host_key"
AUTHORIZED_KEYS_FILE = "console_authorized_keys"
ADMIN_USER = "admin"
MAX_CONNECTIONS = 32  #: console connections at once, logged in or not
MAX_UNAUTHENTICATED = 16  #: connections not logged in (yet), from all addresses
MAX_UNAUTHENTICATED_PER_ADDRESS = 4  #: connections not logged in (yet), from one address
LOGIN_TIMEOUT = 60  #: seconds a connection has to log in, from its first byte on
MAX_PASSWORD = 1024  #: longer passwords are refused without checking
IDLE_HANG_UP = 5.0  #: seconds an idle session's client has to leave after being told
MAX_CODE = 16  #: longer second-factor answers are refused without checking
MSG_USERAUTH_INFO_REQUEST = 60  #: RFC 4256 (Conch's server has no keyboard-interactive)


def load_or_create_host_key(path: str) -> keys.Key:
    """The console's Ed25519 host key, made (mode 0600) if ``path`` does not exist."""
    if os.path.exists(path):
        return keys.Key.fromFile(path)
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.toString("openssh"))
    return key


# -- log-in ----------------------------------------------------------------


class LoginState:
    """What one connection's log-in has proved so far (the password, when a code must follow)."""

    def __init__(self) -> None:
        self.password_ok_for: Optional[bytes] = None


@implementer(cred_credentials.IUsernamePassword)
class PasswordFromAddress:
    """A user name and password, and the address they came from."""

    def __init__(self, username: bytes, password: bytes, address: str, state: Optional[LoginState] = None) -> None:
        self.username = username
        self.password = password
        self.address = address
        self.state = state or LoginState()

    def checkPassword(self, password: bytes) -> bool:  # pragma: no cover - IUsernamePassword's API
        raise NotImplementedError("checked by OperatorPasswordChecker")


class IOperatorConversation(Interface):
    """
    SSH keyboard-interactive (RFC 4256): the server asks questions, the
    client's user answers them.
    """

    username = Attribute("bytes")
    address = Attribute("the client's address")
    state = Attribute("the connection's LoginState")

    def ask(prompts: List[Tuple[str, bool]]) -> Deferred:
        """Ask (prompt, echo) questions at once; fires with the answers (bytes)."""


@implementer(IOperatorConversation)
class Conversation:
    def __init__(self, username: bytes, address: str, state: LoginState, ask: Any) -> None:
        self.username = username
        self.address = address
        self.state = state
        self.ask = ask


class TryLater(UnauthorizedLogin):
    """Refused without checking the password (locked out, or a log-in storm); told to the client."""


async def _password(access: ConsoleAccess, username: bytes, password: bytes, address: str) -> None:
    if len(password) > MAX_PASSWORD:
        password = b""  # still counts as a failure below
    try:
        await access.operators.authenticate(
            username.decode("utf-8", "replace"), password.decode("utf-8", "replace"), address, via="console"
        )
    except LockedOut as e:  # Busy too: "too many log-ins in progress, try again in a few seconds"
        raise TryLater(str(e)) from None
    except AuthFailed:
        raise UnauthorizedLogin("wrong user name or password") from None


@implementer(ICredentialsChecker)
class OperatorPasswordChecker:
    """
    The SSH ``password`` method.  With TOTP on, a right password is only a
    partial success: the client must go on with keyboard-interactive, which
    then asks for the code alone.
    """

    credentialInterfaces = (cred_credentials.IUsernamePassword,)

    def __init__(self, access: ConsoleAccess, reactor: Any = None) -> None:
        self.access = access
        self.reactor = reactor

    def requestAvatarId(self, credentials: Any) -> Deferred:
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials: Any) -> bytes:
        address = getattr(credentials, "address", "unknown")
        await _password(self.access, credentials.username, credentials.password, address)
        username = credentials.username.decode("utf-8", "replace")
        if await self.access.second_factor.totp_enabled(username):
            state = getattr(credentials, "state", None)
            if state is not None:
                state.password_ok_for = credentials.username
            raise NotEnoughAuthentication("the password was right; the second-factor code must follow")
        return credentials.username


@implementer(ICredentialsChecker)
class OperatorConversationChecker:
    """
    The SSH ``keyboard-interactive`` method: asks for the password (unless
    the ``password`` method proved it on this connection) and, with TOTP
    on, for the code from the authenticator app.
    """

    credentialInterfaces = (IOperatorConversation,)

    def __init__(self, access: ConsoleAccess, reactor: Any) -> None:
        self.access = access
        self.reactor = reactor

    def requestAvatarId(self, credentials: Any) -> Deferred:
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials: Any) -> bytes:
        username = credentials.username
        if credentials.state.password_ok_for != username:
            (password,) = await credentials.ask([("Password: ", False)])
            await _password(self.access, username, password, credentials.address)
        name = username.decode("utf-8", "replace")
        checker = self.access.second_factor
        if await checker.totp_enabled(name):
            (code,) = await credentials.ask([("Verification code (TOTP): ", True)])
            try:
                if len(code) > MAX_CODE:
                    raise AuthFailed("wrong second-factor code")
                await checker.check_second_factor(name, code.decode("utf-8", "replace"), credentials.address,
                                                  "console")
            except LockedOut as e:
                raise TryLater(str(e)) from None
            except AuthFailed:
                raise UnauthorizedLogin("wrong second-factor code") from None
        return username


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """Keys for ``admin`` from an ``authorized_keys`` file, read at each attempt."""

    def __init__(self, path: str) -> None:
        self.path = path

    def getAuthorizedKeys(self, username: bytes) -> Iterable[keys.Key]:
        if username != ADMIN_USER.encode():
            return []
        try:
            with open(self.path, "rb") as f:
                return list(readAuthorizedKeyFile(f))
        except FileNotFoundError:
            return []
        except OSError as e:
            log.error("cannot read {path}: {error}", path=self.path, error=e)
            return []


class AuthorizedKeysChecker(SSHPublicKeyChecker):
    """
    Conch's public-key checker, with the keys read on a thread: the file is
    read at every attempt, and a slow disk must not stall the reactor.
    """

    def __init__(self, keydb: IAuthorizedKeysDB, reactor: Any) -> None:
        super().__init__(keydb)
        self._reactor = reactor

    def _checkKey(self, pubKey: keys.Key, credentials: Any) -> Deferred:
        reading = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(),
            lambda: list(self._keydb.getAuthorizedKeys(credentials.username)),
        )

        def check(authorized: List[keys.Key]) -> keys.Key:
            if any(key == pubKey for key in authorized):
                return pubKey
            raise UnauthorizedLogin("Key not authorized")

        return reading.addCallback(check)


class ConsoleUserAuth(userauth.SSHUserAuthServer):
    """
    Conch's user-auth service, with the client's address in the credentials,
    keyboard-interactive (RFC 4256, for the second factor), and a word to
    the factory when the connection has logged in.
    """

    loginTimeout = LOGIN_TIMEOUT
    interfaceToMethod = {
        **userauth.SSHUserAuthServer.interfaceToMethod,
        IOperatorConversation: b"keyboard-interactive",
    }

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.login_state = LoginState()
        self._question: Optional[Tuple[Deferred, int]] = None

    def serviceStopped(self) -> None:
        super().serviceStopped()
        self._abandon_question()

    def _address(self) -> str:
        assert self.transport is not None and self.transport.transport is not None
        return getattr(self.transport.transport.getPeer(), "host", "unknown")

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> Any:
        self._abandon_question()  # a new request ends an unanswered conversation
        user = getNS(packet, 1)[0]
        if getattr(self, "login_state", None) is not None and user != self.user:
            self.login_state = LoginState()  # a password proved for another user name does not count
        return super().ssh_USERAUTH_REQUEST(packet)

    def auth_password(self, packet: bytes) -> Deferred:
        password = getNS(packet[1:])[0]
        state = getattr(self, "login_state", None) or LoginState()
        credentials = PasswordFromAddress(self.user, password, self._address(), state)
        d = self.portal.login(credentials, None, iconch.IConchUser)
        d.addErrback(self._tell_if_locked_out)
        d.addErrback(self._delay_failure)
        return d

    def auth_keyboard_interactive(self, packet: bytes) -> Deferred:
        credentials = Conversation(self.user, self._address(), self.login_state, self._ask)
        d = self.portal.login(credentials, None, iconch.IConchUser)
        d.addErrback(self._tell_if_locked_out)
        d.addErrback(self._delay_failure)
        return d

    def _delay_failure(self, failure: Any) -> Any:
        if failure.check(NotEnoughAuthentication):
            return failure  # the password was right: on to the code at once
        return self._ebPassword(failure)

    def _ask(self, prompts: List[Tuple[str, bool]]) -> Deferred:
        if self._question is not None or self.transport is None:
            return fail(UnauthorizedLogin("one question at a time"))
        payload = NS(b"") + NS(b"") + NS(b"") + struct.pack(">L", len(prompts))
        for prompt, echo in prompts:
            payload += NS(prompt.encode()) + (b"\x01" if echo else b"\x00")
        d: Deferred = Deferred()
        self._question = (d, len(prompts))
        self.transport.sendPacket(MSG_USERAUTH_INFO_REQUEST, payload)
        return d

    def ssh_USERAUTH_INFO_RESPONSE(self, packet: bytes) -> None:
        if self._question is None:
            self.transport.sendUnimplemented()
            return
        d, expected = self._question
        self._question = None
        try:
            (count,) = struct.unpack(">L", packet[:4])
            answers, rest = [], packet[4:]
            for _ in range(min(count, expected)):
                answer, rest = getNS(rest)
                answers.append(answer)
        except (struct.error, ValueError, IndexError):
            d.errback(UnauthorizedLogin("a malformed answer"))
            return
        if count != expected or len(answers) != expected:
            d.errback(UnauthorizedLogin("the answers do not match the questions"))
            return
        d.callback(answers)

    def _abandon_question(self) -> None:
        question, self._question = getattr(self, "_question", None), None
        if question is not None:
            question[0].errback(UnauthorizedLogin("the question was not answered"))

    def _tell_if_locked_out(self, failure: Any) -> Any:
        message = str(failure.value)
        if failure.check(TryLater) and self.transport:
            self.transport.sendPacket(userauth.MSG_USERAUTH_BANNER, NS(f"gotaxy: {message}\r\n".encode()) + NS(b""))
        return failure

    def _cbFinishedAuth(self, result: Any) -> None:
        super()._cbFinishedAuth(result)
        counter: Any = self.transport.factory
        counter.logged_in(self.transport)


# -- avatar and realm --------------------------------------------------------


class ConsoleAvatar(conch_avatar.ConchUser):
    """A logged-in operator: session channels only (no forwarding, no subsystems)."""

    def __init__(self, username: str, realm: "ConsoleRealm") -> None:
        super().__init__()
        self.username = username
        self.realm = realm
        self.address = "unknown"  #: set when the connection service starts
        self.channelLookup[b"session"] = session.SSHSession

    def __conform__(self, interface: Any) -> Any:
        # SSHSession asks ISession(avatar) once per channel: a fresh session each time.
        if interface is iconch.ISession:
            return self.realm.new_session(self)
        return None


@implementer(IRealm)
class ConsoleRealm:
    def __init__(self, access: Optional[ConsoleAccess], reactor: Any, python: bool) -> None:
        self.access = access
        self.reactor = reactor
        self.python = python

    def requestAvatar(self, avatarId: bytes, mind: Any, *interfaces: Any) -> Tuple[Any, Any, Any]:
        if iconch.IConchUser not in interfaces:
            raise NotImplementedError("the console offers only SSH sessions")
        return iconch.IConchUser, ConsoleAvatar(avatarId.decode("utf-8", "replace"), self), lambda: None

    def python_allowed(self, username: str) -> bool:
        return self.python and username == ADMIN_USER

    def new_session(self, user: ConsoleAvatar) -> ConsoleSession:
        access = self.access
        assert access is not None, "a session opens only after a log-in, which needs the access"
        allowed = self.python_allowed(user.username)
        banner = (f"Gotaxy {__version__} operator console. Type 'help' for the commands, "
                  f"Tab to complete, 'exit' to leave.")
        return ConsoleSession(
            lambda: Commands(access.management, python_allowed=allowed,
                             operator=f"console operator {user.username} from {user.address}"),
            self.reactor,
            namespace=access.namespace() if allowed else None,
            banner=banner,
            on_python=lambda: self.python_used(user),
        )

    def python_used(self, user: ConsoleAvatar) -> None:
        """The ``python`` prompt was opened: an event, since it can do anything."""
        assert self.access is not None
        detail = f"user {user.username[:64]!r} opened the python prompt"
        log.warn("console: {detail} from {address}", detail=detail, address=user.address)
        d = Deferred.fromCoroutine(self.access.management.record_operator_event(
            CONSOLE_PYTHON_USED, user.address, detail
        ))
        d.addErrback(lambda f: log.failure("recording a use of the python prompt failed", f))


# -- the SSH factory and the service ----------------------------------------


class ConsoleTransport(transport.SSHServerTransport):
    """
    Conch's server transport, counted by the factory while connected, and
    closed if it has not logged in ``LOGIN_TIMEOUT`` seconds after it
    connected (even if it never sent a byte).
    """

    address = "unknown"  #: the client's address
    source = "unknown"  #: what the per-address cap counts: the address, or an IPv6 address's /64
    logged_in = False
    _login_deadline: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        counter: Any = self.factory
        self._login_deadline = counter.reactor.callLater(LOGIN_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        self._login_deadline = None
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._login_deadline is not None and self._login_deadline.active():
            self._login_deadline.cancel()
        self._login_deadline = None
        counter: Any = self.factory
        counter.connection_lost(self)
        super().connectionLost(reason)


#: Messages from the client that are the operator doing something (keep-alives and window
#: adjustments are not): they restart a logged-in session's idle timer.
_ACTIVITY = {connection.MSG_CHANNEL_OPEN, connection.MSG_CHANNEL_REQUEST, connection.MSG_CHANNEL_DATA,
             connection.MSG_CHANNEL_EXTENDED_DATA}


class ConsoleConnection(connection.SSHConnection):
    """Conch's connection service, closed after ``console.idleTimeout`` seconds without input."""

    _idle: Any = None
    _hang_up: Any = None

    def serviceStarted(self) -> None:
        super().serviceStarted()
        counter: Any = self.transport.factory
        self._reactor = counter.reactor
        self._idle_timeout = counter.idle_timeout
        avatar = getattr(self.transport, "avatar", None)
        if isinstance(avatar, ConsoleAvatar):
            avatar.address = getattr(self.transport, "address", "unknown")
        self._touch()

    def _touch(self) -> None:
        if not self._idle_timeout:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)
        else:
            self._idle = self._reactor.callLater(self._idle_timeout, self._idle_out)

    def packetReceived(self, messageNum: int, packet: bytes) -> Any:
        if messageNum in _ACTIVITY:
            self._touch()
        return super().packetReceived(messageNum, packet)

    def _idle_out(self) -> None:
        self._idle = None
        seconds = round(self._idle_timeout)
        notice = f"\r\ngotaxy: closing the console after {seconds} s without input (console.idleTimeout)\r\n"
        # Say why on each channel and close it (the client leaves when its channels are closed;
        # a disconnect right away could overtake the notice); hang up ourselves if it does not.
        for channel in list(self.channels.values()):
            try:
                channel.write(notice.encode())
                channel.loseConnection()
            except Exception:  # a channel half-closed already: nothing to tell
                pass
        log.info("console: closed a session from {address} after {seconds} s without input",
                 address=getattr(self.transport, "address", "unknown"), seconds=seconds)
        self._hang_up = self._reactor.callLater(IDLE_HANG_UP, self._hang_up_now)

    def _hang_up_now(self) -> None:
        self._hang_up = None
        if self.transport is not None:
            self.transport.loseConnection()

    def serviceStopped(self) -> None:
        for call in (self._idle, self._hang_up):
            if call is not None and call.active():
                call.cancel()
        self._idle = self._hang_up = None
        super().serviceStopped()


def source_of(host: str) -> str:
    """
    Where a connection comes from, for the per-address cap: the address, or
    for IPv6 its /64 (one machine or site usually holds a whole /64).
    """
    if ":" not in host:
        return host
    try:
        return str(ipaddress.ip_network(f"{host}/64", strict=False))
    except ValueError:
        return host


class ConsoleFactory(factory.SSHFactory):
    """
    Serves the console; at most ``max_connections`` at once, and of those
    not logged in (yet), at most ``max_unauthenticated`` in all and
    ``max_per_address`` from one address, so stalled connections from one
    place cannot keep the operator out.
    """

    protocol = ConsoleTransport
    services = {b"ssh-userauth": ConsoleUserAuth, b"ssh-connection": ConsoleConnection}
    REFUSAL_LOG_INTERVAL = 60.0

    def __init__(self, portal: Portal, host_key: keys.Key, reactor: Any = None, idle_timeout: float = 900.0,
                 max_connections: int = MAX_CONNECTIONS, max_unauthenticated: int = MAX_UNAUTHENTICATED,
                 max_per_address: int = MAX_UNAUTHENTICATED_PER_ADDRESS) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.portal = portal
        self.privateKeys = {host_key.sshType(): host_key}
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.primes = None
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        self.max_per_address = max_per_address
        self.connections = 0
        self.waiting: Dict[str, int] = {}  #: connections not logged in, per address
        #: The connections open now (a new ban of their address closes them: ``cut``).
        self.open: Set[Any] = set()
        self._refused = 0
        self._refusal_logged_at: Optional[float] = None
        #: Called with the address of each connection refused as a flood (the server counts it towards a ban).
        self.on_refused: Callable[[str], None] = lambda host: None

    def buildProtocol(self, addr: Any) -> Any:
        address = getattr(addr, "host", str(addr))
        host = source_of(address)
        if self.connections >= self.max_connections:
            return self._refuse(host, f"{self.connections} connections open already")
        if sum(self.waiting.values()) >= self.max_unauthenticated:
            return self._refuse(host, f"{self.max_unauthenticated} connections are logging in already")
        if self.waiting.get(host, 0) >= self.max_per_address:
            return self._refuse(host, f"{self.max_per_address} connections from there are logging in already")
        protocol = super().buildProtocol(addr)
        protocol.address = address
        protocol.source = host
        self.open.add(protocol)
        self.connections += 1
        self.waiting[host] = self.waiting.get(host, 0) + 1
        return protocol

    def _refuse(self, host: str, why: str) -> None:
        # One warning per interval, with the count, so a flood cannot fill the log.
        self._refused += 1
        now = self.reactor.seconds()
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= self.REFUSAL_LOG_INTERVAL:
            log.warn("console: refused a connection from {host}: {why} ({n} refused since the last warning)",
                     host=host, why=why, n=self._refused)
            self._refusal_logged_at = now
            self._refused = 0
        self.on_refused(host)
        return None

    def _done_waiting(self, transport_: Any) -> None:
        host = transport_.source
        left = self.waiting.get(host, 0) - 1
        if left > 0:
            self.waiting[host] = left
        else:
            self.waiting.pop(host, None)

    def logged_in(self, transport_: Any) -> None:
        if not transport_.logged_in:
            transport_.logged_in = True
            self._done_waiting(transport_)
            if transport_._login_deadline is not None and transport_._login_deadline.active():
                transport_._login_deadline.cancel()
            transport_._login_deadline = None

    def cut(self, banned: str, under: Callable[[str], bool]) -> int:
        """Close every connection, logged in or not, whose address is ``under`` the new ban of ``banned``."""
        cut = 0
        for transport_ in list(self.open):
            if transport_.transport is not None and under(transport_.address):
                cut += 1
                transport_.sendDisconnect(transport.DISCONNECT_BY_APPLICATION,
                                          f"the address {banned} is banned on this server".encode())
        if cut:
            log.warn("console: closed {n} session(s) from {banned}, banned", n=cut, banned=banned)
        return cut

    def connection_lost(self, transport_: Any) -> None:
        self.open.discard(transport_)
        self.connections -= 1
        if not transport_.logged_in:
            self._done_waiting(transport_)


def make_console_factory(data_dir: str, access: ConsoleAccess, reactor: Any, python: bool,
                         idle_timeout: float) -> ConsoleFactory:
    """
    The console's SSH server for the data directory ``data_dir`` (its host key, made if missing, and its
    authorized keys); ``gotaxy.console.listener`` makes it at the console's first connection.
    """
    host_key = load_or_create_host_key(os.path.join(data_dir, HOST_KEY_FILE))
    realm = ConsoleRealm(access, reactor, python)
    portal = Portal(realm, [
        OperatorPasswordChecker(access, reactor),
        OperatorConversationChecker(access, reactor),
        AuthorizedKeysChecker(AuthorizedKeysFile(os.path.join(data_dir, AUTHORIZED_KEYS_FILE)), reactor),
    ])
    return ConsoleFactory(portal, host_key, reactor, idle_timeout=idle_timeout)


__all__: List[str] = [
    "ConsoleAccess", "ConsoleService", "make_console_service", "make_console_factory", "load_or_create_host_key",
    "AuthorizedKeysFile", "AuthorizedKeysChecker", "OperatorPasswordChecker", "ConsoleRealm",
]
