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
* public key: a key listed in ``DATA_DIR/console_authorized_keys``
  (OpenSSH ``authorized_keys`` format), re-read at every attempt, so keys
  can be added or removed without a restart.  Clients offer every key they
  have, so a key that is not listed is not a failed log-in.

The host key is an Ed25519 key made on first start and kept in
``DATA_DIR/console_host_key`` (mode 0600), so clients see the same host key
across restarts.

The console is a convenience beside the tunnels: if its port cannot be
opened, the error is logged and the server carries on without it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.service import Service
from twisted.conch import avatar as conch_avatar
from twisted.conch import interfaces as iconch
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.ssh import connection, factory, keys, session, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.cred import credentials as cred_credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from gotaxy import __version__
from gotaxy.console.commands import Commands
from gotaxy.console.session import ConsoleSession
from gotaxy.logs import gotaxy_observer
from gotaxy.oslimits import tcp_server_endpoint
from gotaxy.server.operators import AuthFailed, LockedOut

log = Logger(observer=gotaxy_observer, namespace="gotaxy.console")

HOST_KEY_FILE = "console_host_key"
AUTHORIZED_KEYS_FILE = "console_authorized_keys"
ADMIN_USER = "admin"
MAX_CONNECTIONS = 16  #: console connections at once, logged in or not
LOGIN_TIMEOUT = 60  #: seconds a connection has to log in
MAX_PASSWORD = 1024  #: longer passwords are refused without checking


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


@implementer(cred_credentials.IUsernamePassword)
class PasswordFromAddress:
    """A user name and password, and the address they came from."""

    def __init__(self, username: bytes, password: bytes, address: str) -> None:
        self.username = username
        self.password = password
        self.address = address

    def checkPassword(self, password: bytes) -> bool:  # pragma: no cover - IUsernamePassword's API
        raise NotImplementedError("checked by OperatorPasswordChecker")


class TryLater(UnauthorizedLogin):
    """Refused without checking the password (locked out, or a log-in storm); told to the client."""


@implementer(ICredentialsChecker)
class OperatorPasswordChecker:
    credentialInterfaces = (cred_credentials.IUsernamePassword,)

    def __init__(self, server: Any) -> None:
        self.server = server  #: has ``operators`` once the server is assembled

    def requestAvatarId(self, credentials: Any) -> Deferred:
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials: Any) -> bytes:
        address = getattr(credentials, "address", "unknown")
        username = credentials.username.decode("utf-8", "replace")
        password = credentials.password
        if len(password) > MAX_PASSWORD:
            password = b""  # still counts as a failure below
        try:
            await self.server.operators.authenticate(username, password.decode("utf-8", "replace"), address, via="console")
        except LockedOut as e:  # Busy too: "too many log-ins in progress, try again in a few seconds"
            raise TryLater(str(e)) from None
        except AuthFailed:
            raise UnauthorizedLogin("wrong user name or password") from None
        return credentials.username


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


class ConsoleUserAuth(userauth.SSHUserAuthServer):
    """Conch's user-auth service, with the client's address in password credentials."""

    loginTimeout = LOGIN_TIMEOUT

    def auth_password(self, packet: bytes) -> Deferred:
        password = getNS(packet[1:])[0]
        assert self.transport is not None and self.transport.transport is not None
        peer = self.transport.transport.getPeer()
        address = getattr(peer, "host", "unknown")
        credentials = PasswordFromAddress(self.user, password, address)
        d = self.portal.login(credentials, None, iconch.IConchUser)
        d.addErrback(self._tell_if_locked_out)
        d.addErrback(self._ebPassword)
        return d

    def _tell_if_locked_out(self, failure: Any) -> Any:
        message = str(failure.value)
        if failure.check(TryLater) and self.transport:
            self.transport.sendPacket(userauth.MSG_USERAUTH_BANNER, NS(f"gotaxy: {message}\r\n".encode()) + NS(b""))
        return failure


# -- avatar and realm --------------------------------------------------------


class ConsoleAvatar(conch_avatar.ConchUser):
    """A logged-in operator: session channels only (no forwarding, no subsystems)."""

    def __init__(self, username: str, realm: "ConsoleRealm") -> None:
        super().__init__()
        self.username = username
        self.realm = realm
        self.channelLookup[b"session"] = session.SSHSession

    def __conform__(self, interface: Any) -> Any:
        # SSHSession asks ISession(avatar) once per channel: a fresh session each time.
        if interface is iconch.ISession:
            return self.realm.new_session(self)
        return None


@implementer(IRealm)
class ConsoleRealm:
    def __init__(self, server: Any, reactor: Any, python: bool) -> None:
        self.server = server  #: has ``core``, ``management``, ``operators``
        self.reactor = reactor
        self.python = python

    def requestAvatar(self, avatarId: bytes, mind: Any, *interfaces: Any) -> Tuple[Any, Any, Any]:
        if iconch.IConchUser not in interfaces:
            raise NotImplementedError("the console offers only SSH sessions")
        return iconch.IConchUser, ConsoleAvatar(avatarId.decode("utf-8", "replace"), self), lambda: None

    def python_allowed(self, username: str) -> bool:
        return self.python and username == ADMIN_USER

    def new_session(self, user: ConsoleAvatar) -> ConsoleSession:
        allowed = self.python_allowed(user.username)
        banner = (f"Gotaxy {__version__} operator console. Type 'help' for the commands, "
                  f"Tab to complete, 'exit' to leave.")
        return ConsoleSession(
            lambda: Commands(self.server.management, python_allowed=allowed),
            self.reactor,
            namespace=console_namespace(self.server, self.reactor) if allowed else None,
            banner=banner,
        )


# -- the SSH factory and the service ----------------------------------------


class ConsoleTransport(transport.SSHServerTransport):
    """Conch's server transport, counted by the factory while connected."""

    def connectionLost(self, reason: Any = None) -> None:
        counter: Any = self.factory
        counter.connections -= 1
        super().connectionLost(reason)


class ConsoleFactory(factory.SSHFactory):
    protocol = ConsoleTransport
    services = {b"ssh-userauth": ConsoleUserAuth, b"ssh-connection": connection.SSHConnection}

    def __init__(self, portal: Portal, host_key: keys.Key, max_connections: int = MAX_CONNECTIONS) -> None:
        self.portal = portal
        self.privateKeys = {host_key.sshType(): host_key}
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.primes = None
        self.max_connections = max_connections
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        if self.connections >= self.max_connections:
            log.warn("console: refused a connection from {addr}: {n} open already", addr=addr, n=self.connections)
            return None
        protocol = super().buildProtocol(addr)
        self.connections += 1
        return protocol


class ConsoleService(Service):
    """Listens for console connections; logs, and carries on, if it cannot."""

    def __init__(self, endpoint: Any, factory_: ConsoleFactory, where: str) -> None:
        self.endpoint = endpoint
        self.factory = factory_
        self.where = where
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: Any) -> None:
        self.port = port
        log.info("SSH operator console listening on {where}", where=self.where)

    def _failed(self, failure: Any) -> None:
        log.error(
            "the SSH operator console cannot listen on {where}: {error}; the server runs without it "
            "(choose another console.port / --console-port, or 0 to turn it off)",
            where=self.where, error=failure.getErrorMessage(),
        )

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def make_console_service(config: Any, data_dir: str, server: Any, reactor: Any) -> Optional[ConsoleService]:
    """
    The console service for ``config``, or None when ``console_port`` is 0.

    ``server`` is the server's top service; its ``core``, ``management`` and
    ``operators`` are looked up when someone logs in, so this can be called
    while the server is still being assembled.
    """
    if not config.console_port:
        return None
    host_key = load_or_create_host_key(os.path.join(data_dir, HOST_KEY_FILE))
    realm = ConsoleRealm(server, reactor, bool(config.console_python))
    portal = Portal(realm, [
        OperatorPasswordChecker(server),
        SSHPublicKeyChecker(AuthorizedKeysFile(os.path.join(data_dir, AUTHORIZED_KEYS_FILE))),
    ])
    addr = config.console_addr
    where = f"[{addr}]:{config.console_port}" if ":" in addr else f"{addr}:{config.console_port}"
    endpoint = tcp_server_endpoint(reactor, config.console_port, addr)
    return ConsoleService(endpoint, ConsoleFactory(portal, host_key), where)


def console_namespace(server: Any, reactor: Any) -> Dict[str, Any]:
    """What the ``python`` prompt starts with: the live server's objects."""
    core = server.core
    return {
        "server": server,
        "core": core,
        "management": server.management,
        "operators": server.operators,
        "store": core.store,
        "config": core.config,
        "sessions": core.sessions,
        "tunnels": core.tunnels,
        "reactor": reactor,
    }


__all__: List[str] = [
    "ConsoleService", "make_console_service", "load_or_create_host_key", "console_namespace",
    "AuthorizedKeysFile", "OperatorPasswordChecker", "ConsoleRealm",
]
