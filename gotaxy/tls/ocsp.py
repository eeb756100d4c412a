# -*- test-case-name: tests.test_tls_ocsp -*-
"""
OCSP stapling for the certificates websites are served with
(``gotaxy.tls.sites``): the server fetches its certificate's OCSP response
from the issuer's responder and hands it to every visitor in the TLS
handshake, so that the visitor's browser need not ask the CA itself.

Only certificates whose issuer names an OCSP responder (the Authority
Information Access extension) are stapled.  Let's Encrypt ended its OCSP
service in 2025 and its certificates name none; other CAs (and an
operator's own) still run responders.

* ``OcspStapler.track(leaf, issuer)`` starts keeping a response for one
  certificate: fetched with treq (an HTTP POST of the DER request, at most
  ``MAX_RESPONSE`` bytes, within ``FETCH_TIMEOUT`` seconds), checked (a
  successful response, for this serial, not revoked, not expired), cached
  in memory, and fetched again half-way to its ``nextUpdate`` (or after
  ``REFRESH`` seconds when it has none), or after ``RETRY`` seconds when a
  fetch failed.  Nothing of this runs in a handshake: the handshake's
  callback (``staple``) only reads the cache, so a slow responder never
  delays a visitor.
* At most ``MAX_TRACKED`` certificates are kept (the oldest forgotten).
"""

from __future__ import annotations

import datetime
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID
from twisted.logger import Logger

from gotaxy.logs import gotaxy_observer

#: Seconds one fetch may take.
FETCH_TIMEOUT = 10.0
#: Largest response read from a responder.
MAX_RESPONSE = 64 * 1024
#: Seconds between fetches of a response without nextUpdate, and after a failure.
REFRESH = 12 * 3600.0
RETRY = 300.0
#: Most certificates tracked.
MAX_TRACKED = 4096


def responder_of(leaf: x509.Certificate) -> Optional[str]:
    """The http:// OCSP responder the certificate names, or None."""
    try:
        access = leaf.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_INFORMATION_ACCESS).value
    except x509.ExtensionNotFound:
        return None
    for description in access:
        if description.access_method == AuthorityInformationAccessOID.OCSP:
            location = description.access_location
            if isinstance(location, x509.UniformResourceIdentifier) and location.value.startswith("http://"):
                return str(location.value)
    return None


class _Tracked:
    def __init__(self, leaf: x509.Certificate, issuer: x509.Certificate, url: str) -> None:
        self.leaf = leaf
        self.issuer = issuer
        self.url = url
        self.der: bytes = b""
        self.timer: Any = None


class OcspStapler:
    """See the module docstring.  ``post(url, body, headers)`` is treq's (tests may give another)."""

    log = Logger(observer=gotaxy_observer)

    def __init__(self, reactor: Any, post: Optional[Callable[..., Any]] = None) -> None:
        self.reactor = reactor
        self._post = post
        self._tracked: "OrderedDict[Tuple[int, bytes], _Tracked]" = OrderedDict()

    @staticmethod
    def _key(leaf: x509.Certificate) -> Tuple[int, bytes]:
        return (leaf.serial_number, leaf.fingerprint(hashes.SHA256()))

    def track(self, leaf: x509.Certificate, issuer: Optional[x509.Certificate]) -> bool:
        """Keep a response for ``leaf`` from now on; False: it names no responder (or has no issuer here)."""
        url = responder_of(leaf)
        if url is None or issuer is None:
            return False
        key = self._key(leaf)
        if key in self._tracked:
            return True
        if len(self._tracked) >= MAX_TRACKED:
            _, oldest = self._tracked.popitem(last=False)
            self._cancel(oldest)
        tracked = self._tracked[key] = _Tracked(leaf, issuer, url)
        self._fetch(tracked)
        return True

    def staple(self, leaf: x509.Certificate) -> bytes:
        """The response to staple for ``leaf`` (DER), or b"": none (yet)."""
        tracked = self._tracked.get(self._key(leaf))
        return tracked.der if tracked is not None else b""

    def stop(self) -> None:
        for tracked in self._tracked.values():
            self._cancel(tracked)

    def _cancel(self, tracked: _Tracked) -> None:
        if tracked.timer is not None and tracked.timer.active():
            tracked.timer.cancel()
        tracked.timer = None

    def _schedule(self, tracked: _Tracked, seconds: float) -> None:
        self._cancel(tracked)
        tracked.timer = self.reactor.callLater(max(60.0, seconds), self._fetch, tracked)

    def _fetch(self, tracked: _Tracked) -> None:
        tracked.timer = None
        request = ocsp.OCSPRequestBuilder().add_certificate(tracked.leaf, tracked.issuer, hashes.SHA1()).build()
        body = request.public_bytes(serialization.Encoding.DER)
        post = self._post
        extra: Dict[str, Any] = {}
        if post is None:
            import treq
            from twisted.web.client import HTTPConnectionPool

            post = treq.post
            # A fetch or two a day: no connection kept open between them.
            extra["pool"] = HTTPConnectionPool(self.reactor, persistent=False)
            extra["reactor"] = self.reactor
        try:
            sent = post(tracked.url, body, headers={b"Content-Type": [b"application/ocsp-request"]},
                        timeout=FETCH_TIMEOUT, **extra)
        except Exception as e:  # a URL treq cannot use
            self._failed(tracked, str(e))
            return
        sent.addCallback(self._read)
        sent.addCallback(self._check, tracked)
        sent.addErrback(lambda failure: self._failed(tracked, failure.getErrorMessage()))

    def _read(self, response: Any) -> Any:
        import treq

        if response.code != 200:
            raise ValueError(f"the responder answered HTTP {response.code}")
        length = response.length
        if isinstance(length, int) and length > MAX_RESPONSE:
            raise ValueError(f"the responder's answer is larger than {MAX_RESPONSE} bytes")
        parts: list = []
        size = [0]

        def collect(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > MAX_RESPONSE:
                raise ValueError(f"the responder's answer is larger than {MAX_RESPONSE} bytes")
            parts.append(data)

        return treq.collect(response, collect).addCallback(lambda _: b"".join(parts))

    def _check(self, der: bytes, tracked: _Tracked) -> None:
        response = ocsp.load_der_ocsp_response(der)
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise ValueError(f"the responder said {response.response_status.name}")
        if response.serial_number != tracked.leaf.serial_number:
            raise ValueError("the responder answered for another certificate")
        if response.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            raise ValueError("the certificate is revoked")
        if response.certificate_status != ocsp.OCSPCertStatus.GOOD:
            raise ValueError("the responder does not know the certificate")
        now = datetime.datetime.now(datetime.timezone.utc)
        next_update = response.next_update_utc
        if next_update is not None and next_update <= now:
            raise ValueError("the response has expired")
        tracked.der = der
        wait = (next_update - now).total_seconds() / 2 if next_update is not None else REFRESH
        self._schedule(tracked, min(wait, REFRESH))

    def _failed(self, tracked: _Tracked, why: str) -> None:
        self.log.warn("no OCSP response for the certificate of {names} from {url}: {why}; trying again in "
                      "{retry:.0f} s", names=_names(tracked.leaf), url=tracked.url, why=why[:200], retry=RETRY)
        if tracked.der:
            # Keep the last good one while it is valid (a staple that expired is dropped by the check above).
            pass
        self._schedule(tracked, RETRY)


def _names(leaf: x509.Certificate) -> str:
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return ", ".join(names.get_values_for_type(x509.DNSName)[:3]) or "?"
    except x509.ExtensionNotFound:
        return "?"


def stapling_class(options_class: Any) -> Any:
    """
    ``options_class`` (Twisted's ``CertificateOptions``) whose OpenSSL
    context staples the response ``stapler`` keeps for ``leaf`` (both set
    on the reactor thread once the options are in use; until then, and
    while there is none, nothing is stapled): pyOpenSSL's
    ``Context.set_ocsp_server_callback``, whose callback reads the cache only.
    """

    class StaplingOptions(options_class):  # type: ignore[misc, valid-type]
        stapler: Optional[OcspStapler] = None
        leaf: Optional[x509.Certificate] = None
        issuer: Optional[x509.Certificate] = None

        def getContext(self) -> Any:
            context = super().getContext()
            if not getattr(self, "_stapling", False):
                context.set_ocsp_server_callback(self._staple)
                self._stapling = True
            return context

        def _staple(self, connection: Any, data: Any) -> bytes:
            stapler, leaf = self.stapler, self.leaf
            return stapler.staple(leaf) if stapler is not None and leaf is not None else b""

    return StaplingOptions
