# -*- test-case-name: tests.test_client_certificates -*-
"""
Client certificates on the server: the log-in's certificate check and the
cut-off of sessions whose certificate is revoked or expires.

``ServerCore.login`` asks ``ClientCertificates.check`` for the chain the
client presented (``gotaxy.tls.clients`` judges it: CA, validity, usage,
CN) and then the store's revoked list.  A refusal

* is told to the client (``login_failed`` with ``code: "certificate"``,
  the sentence says what is wrong and what to do),
* counts as a failed credential towards the automatic bans, like a wrong
  token (``gotaxy.server.access``, kind ``token``),
* is counted by reason (``refusals``, ``gotaxy_client_certificate_refusals``
  in ``/metrics``),
* is logged and recorded as a ``login.failed`` event naming the reason:
  the first per source and reason at once, then at most one a minute with
  the number of further attempts (``RepeatThrottle``), so a client retrying
  in a loop cannot fill the log or the events table.

Revocation reaches live sessions two ways: a ``clientcert.revoked`` event
(written by ``gotaxy cert revoke``, the panel, the console or the REST API,
in this process or, read from the events table within about a second, in
any other sharing the database) runs ``kick`` at once, and ``kick`` also
runs every few seconds (``gotaxy.server.tap``), which also ends sessions
whose certificate has expired since they logged in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Hashable, Optional, Sequence, Set

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gotaxy.events import CLIENT_CERT_REVOKED, LOGIN_FAILED, Event
from gotaxy.logs import gotaxy_observer
from gotaxy.server.access import TOKEN
from gotaxy.server.throttle import OTHERS, RepeatThrottle
from gotaxy.store import client_certs
from gotaxy.tls.clients import (
    CERTIFICATE_REFUSALS,
    ClientCertificate,
    ClientCertificateRefused,
    ClientCertificateVerifier,
    revoked_refusal,
)

if TYPE_CHECKING:
    from gotaxy.server.core import ServerCore

#: Refusals from one source for one reason within this many seconds are one log line and one event.
REFUSAL_INTERVAL = 60.0


class ClientCertificates:
    """The server's client-certificate policy (``transport.tls.trustedCaFile``) and its refusal counts."""

    log = Logger(observer=gotaxy_observer)

    def __init__(self, core: "ServerCore", verifier: ClientCertificateVerifier) -> None:
        self.core = core
        self.verifier = verifier
        #: Refusals by reason (``CERTIFICATE_REFUSALS``) since start.
        self.refusals: Dict[str, int] = dict.fromkeys(CERTIFICATE_REFUSALS, 0)
        self._reports = RepeatThrottle(core.reactor, REFUSAL_INTERVAL, self._report)
        self._recording: Set[Deferred] = set()
        core.events.subscribe(self._revoked_event)
        #: ``auth.method = "certificate"``: no token is asked for.  Set at start, as the control
        #: port's TLS is: a reload that changes it says it needs a restart (``gotaxy.server.reload``).
        self.alone = core.config.auth_method == "certificate"

    async def check(self, chain: Sequence[Any], address: str) -> ClientCertificate:
        """
        The accepted certificate of a client logging in from ``address``.

        @raise ClientCertificateRefused: after counting, logging and recording it.
        """
        try:
            certificate = self.verifier.judge(chain)
            revoked = await self.core.store.call(client_certs.revoked_serials, self.core.store.store.db,
                                                 [certificate.serial])
            if revoked:
                raise revoked_refusal(certificate)
        except ClientCertificateRefused as refused:
            await self.refused(refused, address)
            raise
        return certificate

    async def refused(self, refused: ClientCertificateRefused, address: str) -> None:
        self.refusals[refused.reason] = self.refusals.get(refused.reason, 0) + 1
        host = address.rsplit(":", 1)[0]
        self.core.access.failure(TOKEN, host, f"client certificate: {refused.reason}")
        recorded = self._reports.add((host, refused.reason), (address, refused.log))
        if recorded is not None:
            await recorded  # the first of a series: in the store before the client hears

    def _report(self, key: Hashable, count: int, context: Any, first: bool) -> Deferred:
        address, why = context
        reason = key[1] if isinstance(key, tuple) else "various"
        if first:
            where, detail = address, f"client certificate refused: {why}"
            self.log.warn("login failed from {address}: client certificate refused: {why}", address=address, why=why)
        else:
            seconds = self._reports.interval
            where = None if key == OTHERS else key[0]
            detail = f"client certificate refused ({reason}); {count} more attempts in the last {seconds:g} s"
            self.log.warn("login failed from {where}: {count} more attempts with a refused client certificate "
                          "({reason}) in the last {seconds:g} s", where=where or "further addresses", count=count,
                          reason=reason, seconds=seconds)
        recording = Deferred.fromCoroutine(self.core.record(LOGIN_FAILED, address=where, detail=detail, count=count))
        self._recording.add(recording)
        recording.addErrback(lambda f: self.log.failure("recording a refused client certificate failed", f))
        recording.addBoth(lambda _: self._recording.discard(recording))
        return recording

    def stop(self) -> None:
        self._reports.flush()

    # -- revocation and expiry of live sessions ------------------------------

    def _revoked_event(self, event: Event) -> None:
        if event.type != CLIENT_CERT_REVOKED:
            return
        if any(getattr(s, "certificate", None) is not None for s in self.core.sessions.values()):
            Deferred.fromCoroutine(self.kick()).addErrback(
                lambda f: self.log.failure("cutting off the client of a revoked certificate failed", f))

    async def kick(self) -> None:
        """Cut off clients whose certificate was revoked or has expired since they logged in."""
        sessions = {name: s for name, s in self.core.sessions.items()
                    if getattr(s, "certificate", None) is not None}
        if not sessions:
            return
        serials = [s.certificate.serial for s in sessions.values()]
        revoked = await self.core.store.call(client_certs.revoked_serials, self.core.store.store.db, serials)
        now = self.core.reactor.seconds()
        for name, session in sessions.items():
            certificate: Optional[ClientCertificate] = getattr(session, "certificate", None)
            if certificate is None or session.dropped or self.core.sessions.get(name) is not session:
                continue
            if certificate.serial in revoked:
                told = revoked_refusal(certificate)
                why = "client certificate revoked"
            elif certificate.not_after <= now:
                told = ClientCertificateRefused(
                    "expired", f"your client certificate (serial {certificate.serial}) has expired; ask the "
                    "server's operator for a new one ('gotaxy cert issue NAME' on the server)", "expired")
                why = "client certificate expired"
            else:
                continue
            self.log.info("client {client}: {why} (serial {serial}); disconnecting", client=name, why=why,
                          serial=certificate.serial)
            session.close_with_error(str(told))
            await self.core.drop_session(session, why)
