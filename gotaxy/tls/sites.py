# -*- test-case-name: tests.test_tls_sites -*-
"""
TLS termination for ``http`` tunnels on the HTTPS front: which certificate
a website's name gets, and handing a connection to TLS.

``SiteCertificates`` knows two sources, in this order:

1. the operator's files in ``vhostHTTPSCertDir``: each ``NAME.pem`` holds a
   private key and its certificate chain, or ``NAME.crt`` the chain and
   ``NAME.key`` the key (certbot's ``fullchain.pem``/``privkey.pem`` copied
   or linked under those names).  The names a file serves are its
   certificate's DNS names, wildcards (``*.example.com``, one label, as RFC
   6125 says) included, so one wildcard for ``subDomainHost`` covers every
   ``subdomain`` tunnel.  The directory is read again every
   ``RELOAD_INTERVAL`` seconds, on a thread, and a file whose size or mtime
   changed is loaded again: renewed certificates need no restart.  A file
   that cannot be used is logged once per change, in one sentence, and
   skipped (the names keep the certificate they had);
2. ACME's (``gotaxy.tls.acme.AcmeManager``), for names no file covers.

Every certificate is served with TLS 1.2 or later and ``MODERN_CIPHERS``
(``gotaxy.tls.credentials``), and ALPN ``http/1.1``: the http front speaks
HTTP/1.1.  A certificate whose issuer names an OCSP responder is served
with its OCSP response stapled (``gotaxy.tls.ocsp``: fetched and renewed
off the handshake, from a cache); Let's Encrypt ended its OCSP service in
2025, so its certificates name none and get no staple.

``Termination`` is what ``gotaxy.proxy.httpsfront.HttpsFront`` calls for a name
it has no passthrough for: ``can_serve(name)``, then ``take_over``, which
moves the connection's transport to a ``TLSMemoryBIOProtocol`` around the
http front's ``protocol_factory("https")`` and feeds it the bytes the front
read (the ClientHello), so the TLS handshake starts from the first byte.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.application.service import Service
from twisted.internet import ssl
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from gotaxy.logs import gotaxy_observer
from gotaxy.tls.credentials import MODERN_CIPHERS
from gotaxy.tls.ocsp import OcspStapler, responder_of, stapling_class

#: Seconds between looks at ``vhostHTTPSCertDir``.
RELOAD_INTERVAL = 10.0
#: Largest certificate or key file read.
MAX_FILE = 256 * 1024
#: Most files read from the directory.
MAX_FILES = 1000


_Stapling = stapling_class(ssl.CertificateOptions)


def tls_options(chain: List[x509.Certificate], key: Any) -> ssl.CertificateOptions:
    """What every website over HTTPS is served with (see the module docstring)."""
    stapled = responder_of(chain[0]) is not None and len(chain) > 1
    options = (_Stapling if stapled else ssl.CertificateOptions)(
        privateKey=key,
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=list(chain[1:]),  # type: ignore[arg-type]
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(MODERN_CIPHERS),
        acceptableProtocols=[b"http/1.1"],
    )
    if stapled:
        options.leaf, options.issuer = chain[0], chain[1]  # (its stapler is given on the reactor thread: _staple)
    return options


def names_of(certificate: x509.Certificate) -> List[str]:
    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower().rstrip(".") for name in alternatives.get_values_for_type(x509.DNSName)]


@attrs.frozen
class _Site:
    """One usable certificate and what it is served with."""

    names: Tuple[str, ...]
    not_after: float
    options: ssl.CertificateOptions = attrs.field(eq=False, repr=False)


def _parse(label: str, chain_pem: bytes, key_pem: bytes) -> _Site:
    """A ``_Site`` from PEM bytes; ValueError with one sentence naming ``label`` if they are unusable."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise ValueError(f"{label} holds no PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ValueError(f"the key of {label} is encrypted; give it unencrypted (openssl pkey -in FILE)") from None
    except Exception:
        raise ValueError(f"{label} holds no PEM private key (-----BEGIN PRIVATE KEY-----)") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            chain[0].public_key().public_bytes(serialization.Encoding.DER, spki):
        raise ValueError(f"the key of {label} does not belong to its certificate; give the matching pair")
    names = names_of(chain[0])
    if not names:
        raise ValueError(f"the certificate of {label} names no host (no DNS subjectAltName)")
    return _Site(tuple(names), chain[0].not_valid_after_utc.timestamp(), tls_options(chain, key))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise ValueError(f"{path} is larger than {MAX_FILE // 1024} KiB")
    return data


def _split_pem(data: bytes) -> Tuple[bytes, bytes]:
    """(chain, key) from one PEM file holding both, in either order."""
    certs, keys = [], []
    for block in data.split(b"-----END "):
        begin = block.find(b"-----BEGIN ")
        if begin < 0:
            continue
        kind = block[begin + len(b"-----BEGIN "):].split(b"-----", 1)[0]
        text = block[begin:] + b"-----END " + kind + b"-----\n"
        (certs if kind == b"CERTIFICATE" else keys).append(text)
    return b"".join(certs), b"".join(keys[:1])


#: path -> (size, mtime) of a file as last read
_Stamp = Tuple[int, float]


def _scan(directory: str, known: Dict[str, _Stamp]) -> Tuple[Dict[str, _Stamp], Dict[str, Any]]:
    """
    On a thread: every certificate file in ``directory`` with its stamp, and
    for those new or changed since ``known``, a ``_Site`` or the ValueError
    that says why not.  A pair ``NAME.crt``/``NAME.key`` is one entry (the
    ``.crt`` path), stamped by both files.
    """
    stamps: Dict[str, _Stamp] = {}
    loaded: Dict[str, Any] = {}
    try:
        entries = sorted(os.listdir(directory))[:MAX_FILES]
    except OSError as e:
        return {}, {directory: ValueError(f"vhostHTTPSCertDir {directory} cannot be read ({e.strerror})")}
    present = set(entries)
    for entry in entries:
        path = os.path.join(directory, entry)
        stem, ext = os.path.splitext(entry)
        if ext not in (".pem", ".crt") or entry.startswith("."):
            continue
        key_path = os.path.join(directory, stem + ".key") if ext == ".crt" else None
        if ext == ".crt" and stem + ".key" not in present:
            loaded[path] = ValueError(f"{path} has no key beside it ({stem}.key)")
            stamps[path] = (-1, 0.0)
            continue
        try:
            info = os.stat(path)
            stamp: _Stamp = (info.st_size, info.st_mtime)
            if key_path is not None:
                key_info = os.stat(key_path)
                stamp = (info.st_size + key_info.st_size, max(info.st_mtime, key_info.st_mtime))
        except OSError:
            continue
        stamps[path] = stamp
        if known.get(path) == stamp:
            continue
        try:
            if key_path is not None:
                loaded[path] = _parse(path, _read(path), _read(key_path))
            else:
                chain_pem, key_pem = _split_pem(_read(path))
                loaded[path] = _parse(path, chain_pem, key_pem)
        except (OSError, ValueError) as e:
            loaded[path] = e if isinstance(e, ValueError) else ValueError(f"{path} cannot be read ({e.strerror})")
    return stamps, loaded


class SiteCertificates(Service):
    """The certificates websites over HTTPS are served with; see the module docstring."""

    log = Logger(observer=gotaxy_observer)

    def __init__(self, reactor: Any, cert_dir: Optional[str], acme: Any = None,
                 thread_reactor: Any = None, interval: float = RELOAD_INTERVAL,
                 stapler: Optional[OcspStapler] = None) -> None:
        self.reactor = reactor
        #: OCSP responses for the certificates whose issuer has a responder (``gotaxy.tls.ocsp``)
        self.stapler = stapler if stapler is not None else OcspStapler(reactor)
        self.cert_dir = cert_dir
        self.acme = acme
        self.interval = interval
        self._thread_reactor = thread_reactor or reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="gotaxy-site-certificates")
        #: file -> its site (the operator's)
        self._files: Dict[str, _Site] = {}
        self._stamps: Dict[str, _Stamp] = {}
        #: name (exact, or "*.example.com") -> site, from the files
        self._names: Dict[str, _Site] = {}
        #: ACME's, built once per certificate: name -> (its chain, the site)
        self._acme_sites: Dict[str, Tuple[bytes, _Site]] = {}
        self._loop: Optional[LoopingCall] = None
        #: called after a reload changed something
        self.on_change: List[Callable[[], None]] = []

    def startService(self) -> None:
        super().startService()
        if self.cert_dir:
            self._loop = LoopingCall(self.reload)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._pool.started:
            self._pool.stop()
        self.stapler.stop()

    def _staple(self, options: Any) -> None:
        """Options with a responder start being stapled (on the reactor thread, once)."""
        if isinstance(options, _Stapling) and options.stapler is None:
            options.stapler = self.stapler
            self.stapler.track(options.leaf, options.issuer)

    async def reload(self) -> None:
        """Read the files that are new or changed since the last look; forget the ones that are gone."""
        if not self.cert_dir:
            return
        if not self._pool.started:
            self._pool.start()
        stamps, loaded = await deferToThreadPool(self._thread_reactor, self._pool, _scan, self.cert_dir,
                                                 dict(self._stamps))
        changed = False
        for path, outcome in loaded.items():
            if isinstance(outcome, ValueError):
                self.log.error("HTTPS certificate {path} not used: {reason}", path=path, reason=str(outcome))
            else:
                self.log.info("HTTPS certificate {path} loaded for {names}", path=path, names=", ".join(outcome.names))
                self._files[path] = outcome
                self._staple(outcome.options)
                changed = True
        for path in [p for p in self._files if p not in stamps]:
            self.log.info("HTTPS certificate {path} is gone: no longer used", path=path)
            del self._files[path]
            changed = True
        self._stamps = stamps
        if changed:
            names: Dict[str, _Site] = {}
            for site in sorted(self._files.values(), key=lambda s: s.not_after):
                for name in site.names:
                    names[name] = site  # the one that lasts longest wins a name two files hold
            self._names = names
            for callback in list(self.on_change):
                callback()

    def covered(self, name: str) -> bool:
        """The operator's files serve ``name`` (so ACME need not)."""
        return self._from_files(name) is not None

    def _from_files(self, name: str) -> Optional[_Site]:
        site = self._names.get(name)
        if site is None and "." in name:
            site = self._names.get("*." + name.split(".", 1)[1])
        return site

    def options_for(self, name: str) -> Optional[ssl.CertificateOptions]:
        """What to serve ``name`` with, or None when no certificate covers it."""
        site = self._from_files(name)
        if site is not None:
            return site.options
        if self.acme is None:
            return None
        issued = self.acme.certificate(name)
        if issued is None:
            return None
        cached = self._acme_sites.get(name)
        if cached is None or cached[0] != issued.chain_pem:
            try:
                site = _parse(f"the ACME certificate for {name}", issued.chain_pem, issued.key_pem)
            except ValueError as e:
                self.log.error("{reason}", reason=str(e))
                return None
            cached = (issued.chain_pem, site)
            self._acme_sites[name] = cached
            self._staple(site.options)
        return cached[1].options


class Termination:
    """TLS terminated at the server, then the http front (see the module docstring)."""

    def __init__(self, certificates: SiteCertificates, http_factory: Any, reactor: Any) -> None:
        self.certificates = certificates
        self.http_factory = http_factory
        self.reactor = reactor  #: the TLS layer's clock (it gathers small writes until the next turn)
        #: per CertificateOptions: its TLS factory (the options hold the OpenSSL context)
        self._factories: Dict[int, Tuple[ssl.CertificateOptions, TLSMemoryBIOFactory]] = {}

    def can_serve(self, name: str) -> bool:
        return self.certificates.options_for(name) is not None

    def _factory(self, options: ssl.CertificateOptions) -> TLSMemoryBIOFactory:
        found = self._factories.get(id(options))
        if found is not None and found[0] is options:
            return found[1]
        if len(self._factories) > 4 * MAX_FILES:
            self._factories.clear()
        factory = TLSMemoryBIOFactory(options, False, self.http_factory, clock=self.reactor)
        factory.noisy = False
        self._factories[id(options)] = (options, factory)
        return factory

    def take_over(self, connection: Any, name: str, buffered: bytes) -> None:
        options = self.certificates.options_for(name)
        transport = connection.transport
        if options is None or getattr(transport, "protocol", None) is not connection:
            # No certificate any more (cannot happen on one thread), or a transport whose protocol
            # cannot be handed over (a wrapping factory in front of the HTTPS front): refuse.
            transport.abortConnection()
            return
        protocol = self._factory(options).buildProtocol(transport.getPeer())
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(buffered)


class CertificatesForTunnels:
    """
    ACME's "issuance on the first claim of a name": hears ``tunnel.opened``
    (this process's, so each name is asked for once per server that serves
    it) and asks ACME for each name of an ``http`` tunnel that no file
    covers; ``tunnel.removed`` stops the retries for its names.  Wildcards
    are left out: HTTP-01 cannot prove them (a file must cover those), and
    so are names outside ``acme.domains`` when it is set (so that a client
    cannot spend the server's ACME account on names of its choosing).
    """

    log = Logger(observer=gotaxy_observer)

    def __init__(self, core: Any, acme: Any, certificates: SiteCertificates) -> None:
        self.core = core
        self.acme = acme
        self.certificates = certificates
        #: (client, tunnel) -> the names asked for
        self._names: Dict[Tuple[str, str], Tuple[str, ...]] = {}

    def __call__(self, event: Any) -> None:
        from gotaxy.events import TUNNEL_OPENED, TUNNEL_REMOVED

        key = (event.client, event.tunnel)
        if event.type == TUNNEL_REMOVED:
            for name in self._names.pop(key, ()):
                if name not in {n for names in self._names.values() for n in names}:
                    self.acme.unwant(name)
            return
        if event.type != TUNNEL_OPENED:
            return
        tunnel = self.core.tunnels.get(key)
        address = getattr(tunnel, "address", None)
        if address is None or address.scheme != "http":
            return
        allows = self.acme.settings.allows
        names = tuple(h for h in address.hosts
                      if not h.startswith("*.") and not self.certificates.covered(h) and allows(h))
        self._names[key] = names
        for name in names:
            self.acme.want(name).addErrback(
                lambda failure, name=name: self.log.failure("ACME for {name} failed", failure, name=name))
