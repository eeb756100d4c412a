# -*- test-case-name: tests.test_acme -*-
"""
Certificates obtained and renewed automatically through ACME (Let's
Encrypt, or any ACME CA), for the host names of ``http`` tunnels whose TLS
the server terminates on ``vhostHTTPSPort``.

The protocol is certbot's ``acme`` library, used, not rewritten.  Its calls
block (``requests``), so every one runs on a small thread pool of its own
(``AcmeManager``'s); the reactor thread only schedules, caches and records
events.  What lives where:

* ``ChallengeStore`` holds the HTTP-01 answers while an order is pending:
  token -> key authorization.  The plain-HTTP front on ``vhostHTTPPort``
  consults it for ``/.well-known/acme-challenge/<token>`` before routing by
  Host (``ChallengeStore.answer``), so a name's challenge is answered even
  while its tunnel is down.  ``ChallengeResource`` serves the same store as
  a ``twisted.web`` resource.
* ``CertificateFiles`` keeps the account key and one file per name (its
  private key, then the chain the CA sent) under ``DATA_DIR/acme/``, every
  file 0600, the directory 0700, each written atomically.
* ``AcmeManager`` decides: ``want(name)`` (called when a tunnel first
  claims a name) issues a certificate unless a good one is on disk;
  ``check_renewals`` (every ``CHECK_INTERVAL``) renews the ones within
  ``acme.renewBefore`` days of expiry; a failure is retried with a delay
  that doubles from ``BACKOFF_FIRST`` up to ``BACKOFF_MAX``, so a name whose
  DNS does not point here costs the CA one attempt per backoff step, not
  one per connection.  Each outcome is one event: ``certificate.issued``,
  ``certificate.renewed``, ``certificate.failed`` (address: the host name;
  detail: the expiry, or why and when the next attempt is).
* ``certificate(name)`` answers from memory at once, for the TLS
  handshake's SNI callback.

* TLS-ALPN-01 (RFC 8737) is answered on ``vhostHTTPSPort``: the HTTPS
  front hands a connection whose ClientHello asks for ALPN ``acme-tls/1``
  and names a pending name to ``answer_tls_alpn``, which completes a
  handshake with ``alpn_certificate`` (self-signed, the name, and the
  critical acmeIdentifier extension holding the SHA-256 of the key
  authorization) and closes.  The ``acme`` library dropped its TLS-ALPN-01
  classes in 5.x; what is left to us is small: its challenge arrives as an
  ``UnrecognizedChallenge`` (its token read from the JSON), the key
  authorization is the token and the account key's thumbprint, the answer
  to the CA an empty object (``_tls_alpn_response``), and the certificate
  is built with ``cryptography``.  Which challenge is used: HTTP-01 when
  the server has ``vhostHTTPPort``, else TLS-ALPN-01 (``acme.challenge``
  in ``AcmeClientSettings.challenges``, from the ports).

Wildcards need DNS-01 (not done: supply a wildcard certificate yourself,
see docs/configuration.md).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource

from gotaxy.logs import gotaxy_observer
from gotaxy.tls.files import make_private_dir, write_atomically

#: Let's Encrypt's production directory, ``acme.directory``'s default.
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"

#: Where HTTP-01 answers live (RFC 8555 section 8.3).
CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"

#: RFC 8737: the ALPN protocol of a TLS-ALPN-01 validation, and the certificate extension that answers it.
ALPN_PROTOCOL = b"acme-tls/1"
_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
HTTP_01, TLS_ALPN_01 = "http-01", "tls-alpn-01"
#: Seconds a validation connection may stay after its handshake began.
ALPN_WAIT = 10.0

#: Most HTTP-01 answers held at once (one per name being validated).
MAX_PENDING_CHALLENGES = 256
#: Longest token accepted from the CA or asked for by a visitor.
MAX_TOKEN = 128
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,%d}" % MAX_TOKEN)

#: Seconds between renewal checks.
CHECK_INTERVAL = 12 * 3600.0
#: First delay before retrying a failed name; doubles per failure up to BACKOFF_MAX.
BACKOFF_FIRST = 600.0
BACKOFF_MAX = 24 * 3600.0
#: Seconds one order may take from its creation to its certificate.
ORDER_TIMEOUT = 120.0
#: Seconds one HTTP request to the CA may take.
NETWORK_TIMEOUT = 30
#: Threads talking to the CA.
ACME_THREADS = 2
#: Largest certificate file read back from the data directory.
MAX_FILE = 256 * 1024

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+")


class AcmeError(Exception):
    """An issuance failed; the message says why, for the event and the log."""


# ---------------------------------------------------------------------------
# HTTP-01 answers


class ChallengeStore:
    """HTTP-01 key authorizations by token, while their orders are pending (reactor thread only)."""

    def __init__(self) -> None:
        self._answers: Dict[bytes, bytes] = {}
        #: TLS-ALPN-01: host name -> what its validation handshake is served with
        self._alpn: Dict[str, Any] = {}

    def add_alpn(self, name: str, options: Any) -> None:
        """``options`` (``alpn_certificate``'s) answer a TLS-ALPN-01 validation of ``name`` until removed."""
        if name not in self._alpn and len(self._alpn) >= MAX_PENDING_CHALLENGES:
            raise AcmeError(f"more than {MAX_PENDING_CHALLENGES} challenges pending at once; try again later")
        self._alpn[name] = options

    def remove_alpn(self, name: str) -> None:
        self._alpn.pop(name, None)

    def alpn_options(self, name: str) -> Any:
        """What to answer a TLS-ALPN-01 validation of ``name`` with, or None: none is pending."""
        return self._alpn.get(name)

    def add(self, token: str, key_authorization: str) -> None:
        raw = token.encode("ascii")
        if not _TOKEN.fullmatch(raw):
            raise AcmeError("the CA sent a challenge token that is not base64url")
        if raw not in self._answers and len(self._answers) >= MAX_PENDING_CHALLENGES:
            raise AcmeError(f"more than {MAX_PENDING_CHALLENGES} challenges pending at once; try again later")
        self._answers[raw] = key_authorization.encode("ascii")

    def remove(self, token: str) -> None:
        self._answers.pop(token.encode("ascii"), None)

    def __len__(self) -> int:
        return len(self._answers)

    def answer(self, path: bytes) -> Optional[bytes]:
        """
        The body to send for a request of ``path`` (query string excluded),
        or None when ``path`` is not a pending challenge.
        """
        if not path.startswith(CHALLENGE_PREFIX):
            return None
        return self._answers.get(path[len(CHALLENGE_PREFIX):])

    def is_challenge(self, path: bytes) -> bool:
        """``path`` is under /.well-known/acme-challenge/ (answered here or 404, never routed)."""
        return path.startswith(CHALLENGE_PREFIX)


def alpn_certificate(name: str, key_authorization: str) -> Any:
    """
    RFC 8737's validation certificate for ``name``, as TLS options that
    offer only ``acme-tls/1``: self-signed, the name as its one DNS name,
    and the critical acmeIdentifier extension, the DER OCTET STRING of the
    SHA-256 of ``key_authorization``.
    """
    from cryptography.x509.oid import NameOID
    from twisted.internet import ssl

    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(_ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return ssl.CertificateOptions(privateKey=key, certificate=certificate,  # type: ignore[arg-type]
                                  raiseMinimumTo=ssl.TLSVersion.TLSv1_2, acceptableProtocols=[ALPN_PROTOCOL])


class _Validation(Protocol):
    """A TLS-ALPN-01 validation connection: the handshake is the answer; closed after it, or after ALPN_WAIT s."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._timer: Any = None

    def connectionMade(self) -> None:
        self._timer = self.reactor.callLater(ALPN_WAIT, self.transport.abortConnection)

    def handshakeCompleted(self) -> None:  # (Twisted's IHandshakeListener)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


def answer_tls_alpn(connection: Any, options: Any, buffered: bytes, reactor: Any) -> None:
    """
    Hand the HTTPS front's ``connection`` (its ClientHello read, ``buffered``)
    to TLS with ``options`` for a TLS-ALPN-01 validation, as TLS termination
    takes a connection over (``gotaxy.tls.sites.Termination``).
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory

    transport = connection.transport
    if getattr(transport, "protocol", None) is not connection:
        transport.abortConnection()
        return
    factory = TLSMemoryBIOFactory(options, False, Factory.forProtocol(lambda: _Validation(reactor)), clock=reactor)
    factory.noisy = False
    protocol = factory.buildProtocol(transport.getPeer())
    transport.protocol = protocol
    protocol.makeConnection(transport)
    protocol.dataReceived(buffered)


_TlsAlpnResponse: Any = None


def _tls_alpn_response(key_authorization: str) -> Any:
    """
    RFC 8737's answer to the CA: an empty object (the proof is the
    certificate); acme 5 has no class for it.  Built as HTTP-01's is, on
    ``KeyAuthorizationChallengeResponse``, which keeps the key authorization
    out of the JSON: a response without fields would be sent as an empty
    body, a POST-as-GET, which does not start the validation.
    """
    global _TlsAlpnResponse
    if _TlsAlpnResponse is None:
        from acme import challenges

        class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
            typ = TLS_ALPN_01

        _TlsAlpnResponse = TLSALPN01Response
    return _TlsAlpnResponse(key_authorization=key_authorization)


class ChallengeResource(Resource):
    """``ChallengeStore`` as a ``twisted.web`` resource: 200 with the answer, else 404."""

    isLeaf = True

    def __init__(self, challenges: ChallengeStore) -> None:
        super().__init__()
        self.challenges = challenges

    def render_GET(self, request: Any) -> bytes:
        body = self.challenges.answer(request.path)
        if body is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"no such ACME challenge\n"
        request.setHeader(b"content-type", b"application/octet-stream")
        return body


# ---------------------------------------------------------------------------
# Files


@attrs.frozen
class IssuedCertificate:
    """One name's certificate: its private key and chain (PEM), and when the leaf expires."""

    name: str
    key_pem: bytes = attrs.field(repr=False)
    chain_pem: bytes
    not_after: float  #: UNIX time

    @classmethod
    def from_pem(cls, name: str, key_pem: bytes, chain_pem: bytes) -> "IssuedCertificate":
        try:
            leaf = x509.load_pem_x509_certificate(chain_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as e:
            raise AcmeError(f"the certificate for {name} cannot be read: {e}") from None
        if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
                != leaf.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo):
            raise AcmeError(f"the certificate for {name} does not match its key")
        return cls(name, key_pem, chain_pem, leaf.not_valid_after_utc.timestamp())

    def expiry_text(self) -> str:
        when = datetime.datetime.fromtimestamp(self.not_after, datetime.timezone.utc)
        return "valid until " + when.strftime("%Y-%m-%d %H:%M UTC")


class CertificateFiles:
    """``DATA_DIR/acme/``: ``account.key`` and ``certs/<name>.pem`` (key, then chain), all 0600."""

    def __init__(self, data_dir: str) -> None:
        self.root = os.path.join(data_dir, "acme")
        self.certs = os.path.join(self.root, "certs")

    def _prepare(self) -> None:
        make_private_dir(self.root)
        make_private_dir(self.certs)

    def account_key(self) -> bytes:
        """The account's private key (PEM), created on first use."""
        self._prepare()
        path = os.path.join(self.root, "account.key")
        if os.path.exists(path):
            return _read_small(path)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        write_atomically(path, pem, 0o600)
        return pem

    def path_of(self, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise AcmeError(f"{name!r} is not a host name a certificate can be asked for")
        return os.path.join(self.certs, name + ".pem")

    def save(self, certificate: IssuedCertificate) -> None:
        self._prepare()
        write_atomically(self.path_of(certificate.name), certificate.key_pem + certificate.chain_pem, 0o600)

    def load_all(self) -> List[IssuedCertificate]:
        """Every certificate on disk that can be read (one that cannot is skipped: it will be issued again)."""
        if not os.path.isdir(self.certs):
            return []
        found = []
        for entry in sorted(os.listdir(self.certs)):
            if not entry.endswith(".pem"):
                continue
            name = entry[: -len(".pem")]
            try:
                data = _read_small(self.path_of(name))
                key_pem, chain_pem = _split_key(data)
                found.append(IssuedCertificate.from_pem(name, key_pem, chain_pem))
            except (AcmeError, OSError):
                continue
        return found


def _read_small(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise AcmeError(f"{path} is larger than {MAX_FILE} bytes")
    return data


def _split_key(data: bytes) -> Tuple[bytes, bytes]:
    marker = b"-----BEGIN CERTIFICATE-----"
    at = data.find(marker)
    if at <= 0:
        raise AcmeError("a certificate file must hold the key, then the chain")
    return data[:at], data[at:]


# ---------------------------------------------------------------------------
# The protocol, on a pool thread


@attrs.frozen
class AcmeClientSettings:
    """What the manager needs from ``acme.*`` (see ``gotaxy.config.server.AcmeSettings``)."""

    directory: str = LETS_ENCRYPT
    email: Optional[str] = None
    #: CA bundle trusted for the directory's HTTPS (a private CA, Pebble), or None for the system's.
    ca_file: Optional[str] = None
    renew_before: float = 30 * 86400.0  #: seconds before expiry
    #: names under these only (``acme.domains``); empty: any
    domains: Tuple[str, ...] = ()
    #: the challenge types answered, the first the CA offers taken (``settings_from``: from the ports)
    challenges: Tuple[str, ...] = (HTTP_01,)

    def allows(self, name: str) -> bool:
        return not self.domains or any(name == d or name.endswith("." + d) for d in self.domains)


class _Protocol:
    """
    The blocking ACME conversation, run on the manager's pool only.  The
    account is registered (or found again, by its key) once per process.
    """

    def __init__(self, settings: AcmeClientSettings, files: CertificateFiles, reactor: Any,
                 challenges: ChallengeStore) -> None:
        self.settings = settings
        self.files = files
        self.reactor = reactor
        self.challenges = challenges
        self._client: Any = None

    def client(self) -> Any:
        if self._client is not None:
            return self._client
        import josepy
        from acme import client as acme_client, errors, messages

        key = serialization.load_pem_private_key(self.files.account_key(), password=None)
        jwk = josepy.JWKRSA(key=key)
        verify: Any = self.settings.ca_file or True
        net = acme_client.ClientNetwork(jwk, alg=josepy.RS256, verify_ssl=verify,
                                        user_agent="gotaxy", timeout=NETWORK_TIMEOUT)
        directory = acme_client.ClientV2.get_directory(self.settings.directory, net)
        client = acme_client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(email=self.settings.email,
                                                          terms_of_service_agreed=True)
        try:
            net.account = client.new_account(registration)
        except errors.ConflictError as e:  # this key has an account already
            existing = messages.RegistrationResource(uri=e.location, body=messages.Registration())
            net.account = existing
            net.account = client.query_registration(existing)
        self._client = client
        return client

    def issue(self, name: str) -> IssuedCertificate:
        from acme import challenges, crypto_util

        client = self.client()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        order = client.new_order(crypto_util.make_csr(key_pem, [name]))
        tokens: List[str] = []
        alpn: List[str] = []
        try:
            for authorization in order.authorizations:
                if authorization.body.status.name == "valid":
                    continue
                offered = {_challenge_type(c): c for c in authorization.body.challenges}
                kind = next((k for k in self.settings.challenges if k in offered), None)
                if kind is None:
                    raise AcmeError(f"the CA offers no {' or '.join(self.settings.challenges)} challenge for {name}")
                challenge = offered[kind]
                if kind == HTTP_01:
                    response, validation = challenge.response_and_validation(client.net.key)
                    token = challenge.chall.encode("token")
                    blockingCallFromThread(self.reactor, self.challenges.add, token, validation)
                    tokens.append(token)
                else:
                    token = challenge.chall.jobj.get("token")
                    if not isinstance(token, str) or not _TOKEN.fullmatch(token.encode("ascii", "replace")):
                        raise AcmeError("the CA sent a challenge token that is not base64url")
                    import josepy

                    thumbprint = josepy.b64encode(client.net.key.thumbprint(hash_function=hashes.SHA256)).decode()
                    key_authorization = f"{token}.{thumbprint}"
                    options = alpn_certificate(name, key_authorization)
                    blockingCallFromThread(self.reactor, self.challenges.add_alpn, name, options)
                    alpn.append(name)
                    response = _tls_alpn_response(key_authorization)
                client.answer_challenge(challenge, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
            order = client.poll_and_finalize(order, deadline)
        finally:
            for token in tokens:
                blockingCallFromThread(self.reactor, self.challenges.remove, token)
            for host in alpn:
                blockingCallFromThread(self.reactor, self.challenges.remove_alpn, host)
        certificate = IssuedCertificate.from_pem(name, key_pem, order.fullchain_pem.encode("ascii"))
        self.files.save(certificate)
        return certificate


def _challenge_type(challenge: Any) -> str:
    """A challenge's type ("http-01"), whether the acme library knows it or not (TLS-ALPN-01: it does not)."""
    typ = getattr(challenge.chall, "typ", None)
    if isinstance(typ, str):
        return typ
    jobj = getattr(challenge.chall, "jobj", None)
    return str(jobj.get("type", "")) if isinstance(jobj, dict) else ""


def _reason(failure: Any) -> str:
    """One line on why an issuance failed, from the CA's problem document where there is one."""
    error = failure.value
    try:
        from acme import errors, messages
    except ImportError:  # pragma: no cover
        return str(error)[:300]
    if isinstance(error, errors.ValidationError):
        details = []
        for authorization in error.failed_authzrs:
            for challenge in authorization.body.challenges:
                if challenge.error is not None:
                    details.append(str(challenge.error.detail or challenge.error.typ))
        text = "; ".join(details) or "the CA could not validate the name"
        return f"validation failed: {text}"[:300]
    if isinstance(error, messages.Error):
        return f"the CA refused: {error.detail or error.typ}"[:300]
    if isinstance(error, errors.TimeoutError):
        return f"the CA did not finish the order within {ORDER_TIMEOUT:g} s"
    if isinstance(error, AcmeError):
        return str(error)[:300]
    return f"{type(error).__name__}: {error}"[:300]


# ---------------------------------------------------------------------------
# Decisions, on the reactor thread


Recorder = Callable[..., Awaitable[Any]]


class AcmeManager(Service):
    """
    See the module docstring.  ``record(type, address=..., detail=...)``
    writes an event (``ServerCore.record``).
    """

    log = Logger(observer=gotaxy_observer)

    def __init__(self, reactor: Any, settings: AcmeClientSettings, data_dir: str, challenges: ChallengeStore,
                 record: Recorder, thread_reactor: Any = None) -> None:
        self.reactor = reactor
        self.settings = settings
        self.files = CertificateFiles(data_dir)
        self.challenges = challenges
        self.record = record
        self._thread_reactor = thread_reactor or reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=ACME_THREADS, name="gotaxy-acme")
        self._protocol = _Protocol(settings, self.files, self._thread_reactor, challenges)
        self._certificates: Dict[str, IssuedCertificate] = {}
        self._pending: Dict[str, Deferred] = {}
        self._failures: Dict[str, int] = {}
        self._retries: Dict[str, Any] = {}
        self._check: Any = None
        self._loaded: Optional[Deferred] = None
        #: names some tunnel wants (issued, renewed and retried while wanted)
        self.wanted: set = set()
        #: called with a name each time its certificate changes (the TLS front drops its cached context)
        self.on_change: List[Callable[[str], None]] = []

    # -- service ----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._start_pool()
        self._loaded = self._in_pool(self.files.load_all)
        self._loaded.addCallback(self._adopt)
        self._loaded.addErrback(lambda f: self.log.failure("cannot read the ACME certificates", f))
        self._check = self.reactor.callLater(CHECK_INTERVAL, self._periodic)

    def stopService(self) -> None:
        super().stopService()
        if self._check is not None and self._check.active():
            self._check.cancel()
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        if self._pool.started:
            self._pool.stop()

    def _start_pool(self) -> None:
        if not self._pool.started:
            self._pool.start()

    def _in_pool(self, function: Callable[..., Any], *args: Any) -> Deferred:
        self._start_pool()
        return deferToThreadPool(self._thread_reactor, self._pool, function, *args)

    def _adopt(self, certificates: List[IssuedCertificate]) -> None:
        for certificate in certificates:
            self._certificates.setdefault(certificate.name, certificate)

    # -- what the TLS front asks ----------------------------------------------------

    def certificate(self, name: str) -> Optional[IssuedCertificate]:
        """The certificate held for ``name`` (expired ones too: the renewal is already under way)."""
        return self._certificates.get(name)

    # -- decisions ------------------------------------------------------------------

    def want(self, name: str) -> Deferred:
        """
        A tunnel claimed ``name``: make sure it has a certificate.  Fires
        with the certificate, or None if the attempt failed (the event says
        why, and a retry is scheduled).
        """
        self.wanted.add(name)
        return ensureDeferred(self._want(name))

    def unwant(self, name: str) -> None:
        """No tunnel holds ``name`` any more: stop retrying it (its certificate stays on disk)."""
        self.wanted.discard(name)
        call = self._retries.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    async def _want(self, name: str) -> Optional[IssuedCertificate]:
        if self._loaded is not None:
            await self._loaded
        held = self._certificates.get(name)
        if held is not None and not self._due(held):
            return held
        if name in self._retries:  # backing off after a failure
            return held
        return await self._obtain(name, renewal=held is not None)

    def _due(self, certificate: IssuedCertificate) -> bool:
        return certificate.not_after - self.reactor.seconds() <= self.settings.renew_before

    async def check_renewals(self) -> None:
        """Renew every wanted certificate within ``acme.renewBefore`` of its expiry."""
        for name in sorted(self.wanted):
            held = self._certificates.get(name)
            if held is not None and self._due(held) and name not in self._retries:
                await self._obtain(name, renewal=True)

    def _periodic(self) -> None:
        self._check = self.reactor.callLater(CHECK_INTERVAL, self._periodic)
        ensureDeferred(self.check_renewals()).addErrback(
            lambda f: self.log.failure("the ACME renewal check failed", f))

    def _obtain(self, name: str, renewal: bool) -> Deferred:
        """One issuance of ``name`` at a time; callers of a running one share its result."""
        running = self._pending.get(name)
        if running is None:
            running = ensureDeferred(self._issue(name, renewal))
            if not running.called:
                self._pending[name] = running

                def finished(outcome: Any) -> Any:
                    self._pending.pop(name, None)
                    return outcome

                running.addBoth(finished)
        result: Deferred = Deferred()

        def done(outcome: Any) -> Any:
            result.callback(outcome)
            return outcome

        running.addBoth(done)
        return result

    async def _issue(self, name: str, renewal: bool) -> Optional[IssuedCertificate]:
        from gotaxy.events import CERTIFICATE_FAILED, CERTIFICATE_ISSUED, CERTIFICATE_RENEWED

        try:
            certificate: IssuedCertificate = await self._in_pool(self._protocol.issue, name)
        except Exception:
            reason = _reason(Failure())
            failures = self._failures.get(name, 0) + 1
            self._failures[name] = failures
            delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
            self.log.warn("ACME: no certificate for {name}: {reason}; next attempt in {delay:.0f} s",
                          name=name, reason=reason, delay=delay)
            if name in self.wanted:
                self._retries[name] = self.reactor.callLater(delay, self._retry, name)
            await self._record(CERTIFICATE_FAILED, name, f"{reason}; next attempt in {_duration(delay)}")
            return None
        self._failures.pop(name, None)
        self._certificates[name] = certificate
        for changed in list(self.on_change):
            changed(name)
        self.log.info("ACME: certificate for {name} {how}, {expiry}", name=name,
                      how="renewed" if renewal else "issued", expiry=certificate.expiry_text())
        await self._record(CERTIFICATE_RENEWED if renewal else CERTIFICATE_ISSUED, name, certificate.expiry_text())
        return certificate

    def _retry(self, name: str) -> None:
        self._retries.pop(name, None)
        if name in self.wanted:
            self._obtain(name, renewal=name in self._certificates)

    async def _record(self, type_: str, name: str, detail: str) -> None:
        try:
            await self.record(type_, address=name, detail=detail)
        except Exception:
            self.log.failure("cannot record {type} for {name}", type=type_, name=name)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def settings_from(config: Any) -> AcmeClientSettings:
    """``AcmeClientSettings`` from a ServerConfig's ``acme`` section."""
    section = config.acme
    # HTTP-01 where the server listens for plain HTTP, else TLS-ALPN-01 on vhostHTTPSPort.
    kinds = tuple(kind for kind, port in ((HTTP_01, config.vhost.http_port), (TLS_ALPN_01, config.https.port)) if port)
    return AcmeClientSettings(directory=section.directory, email=section.email, ca_file=section.ca_file,
                              renew_before=section.renew_before_days * 86400.0, domains=section.domains,
                              challenges=kinds or (HTTP_01,))
