# -*- test-case-name: tests.test_client_certificates -*-
"""
Client certificates in the store: the ones ``gotaxy cert issue`` made from
the server's CA, and the revoked serials every server process checks at
log-in and on live sessions (``gotaxy.server.certificates``).

One row per serial in ``client_certificates`` (UNIQUE serial): ``name``
(the CN), ``fingerprint``, ``issued_at``, ``not_after``, ``issued_by``,
and, once revoked, ``revoked_at`` and ``revoked_by``.  A certificate made
elsewhere (with ``openssl``, say) can be revoked by its serial: it gets a
row with only the serial and the revocation.  Never the private key: the
store holds nothing that lets anyone log in.

Issuing and revoking record their event (``clientcert.issued``,
``clientcert.revoked``) in the same store call, so other server processes
read the revocation from the events table and cut the client off.  The
functions are synchronous and run on the store's thread
(``ThreadedStore.call``) or in the ``gotaxy`` command; times come from the
caller's clock.
"""

from __future__ import annotations

import datetime
from typing import Any, Iterable, List, Optional, Set

import attrs
from sqlalchemy.exc import IntegrityError

from gotaxy.events import CLIENT_CERT_ISSUED, CLIENT_CERT_REVOKED
from gotaxy.store.schema import CLIENT_CERTIFICATES
from gotaxy.tls.clients import IssuedCertificate, normalise_serial


class CertificateNotFound(LookupError):
    """No certificate has that serial or name; the message says so."""


@attrs.frozen
class CertificateRecord:
    """One row: a certificate issued here, or a revoked serial of one made elsewhere (``name`` empty)."""

    serial: str
    name: str
    fingerprint: str
    issued_at: Optional[float]
    not_after: Optional[float]
    issued_by: str
    revoked_at: Optional[float]
    revoked_by: str

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.not_after is not None and self.not_after <= now:
            return "expired"
        return "valid"

    def to_json(self, now: float) -> dict:
        return {"serial": self.serial, "name": self.name, "fingerprint": self.fingerprint,
                "issuedAt": self.issued_at, "notAfter": self.not_after, "issuedBy": self.issued_by,
                "revokedAt": self.revoked_at, "revokedBy": self.revoked_by or None, "status": self.status(now)}


def _record(row: Any) -> CertificateRecord:
    return CertificateRecord(
        serial=row["serial"], name=row["name"] or "", fingerprint=row["fingerprint"] or "",
        issued_at=row["issued_at"], not_after=row["not_after"], issued_by=row["issued_by"] or "",
        revoked_at=row["revoked_at"], revoked_by=row["revoked_by"] or "",
    )


def _until(at: Optional[float]) -> str:
    if at is None:
        return "?"
    return f"{datetime.datetime.fromtimestamp(at, datetime.timezone.utc):%Y-%m-%d}"


def record_issued(store: Any, issued: IssuedCertificate, by: str, now: float) -> CertificateRecord:
    """Keep a certificate just issued (not its key) at ``now``; records ``clientcert.issued``."""
    store.db[CLIENT_CERTIFICATES].insert(dict(
        serial=issued.serial, name=issued.name, fingerprint=issued.fingerprint, issued_at=now,
        not_after=issued.not_after, issued_by=by[:128],
    ))
    store.record_event(CLIENT_CERT_ISSUED, client=issued.name,
                       detail=f"serial {issued.serial}, valid until {_until(issued.not_after)}, by {by[:128]}")
    return _record(store.db[CLIENT_CERTIFICATES].find_one(serial=issued.serial))


def list_certificates(db: Any) -> List[CertificateRecord]:
    """Every row, the newest first."""
    return [_record(row) for row in db[CLIENT_CERTIFICATES].find(order_by=["-id"])]


def revoked_serials(db: Any, serials: Iterable[str]) -> Set[str]:
    """Those of ``serials`` that are revoked."""
    wanted = list(dict.fromkeys(serials))
    if not wanted:
        return set()
    rows = db[CLIENT_CERTIFICATES].find(serial={"in": wanted}, revoked_at={"not": None})
    return {row["serial"] for row in rows}


def revoke(store: Any, what: str, by: str, now: float) -> List[CertificateRecord]:
    """
    Revoke by serial (any spelling ``normalise_serial`` takes) or by client
    name (every certificate issued here for it that is not revoked yet).  A
    serial the store does not know (a certificate made elsewhere) is
    recorded as revoked.  Records one ``clientcert.revoked`` per certificate.

    @return: the certificates revoked now (empty if they already were).
    @raise CertificateNotFound: if ``what`` is neither a known name nor a serial.
    """
    table = store.db[CLIENT_CERTIFICATES]
    serial = normalise_serial(what)
    rows: List[Any] = []
    if serial is not None:
        rows = list(table.find(serial=serial))
    if not rows:
        rows = list(table.find(name=what))
    if not rows:
        if serial is None or len(serial) < 8:
            raise CertificateNotFound(
                f"no client certificate is named {what[:64]!r} or has that serial; 'gotaxy cert list' shows them "
                "(a certificate made elsewhere is revoked by its serial: openssl x509 -serial -noout -in FILE)")
        try:
            table.insert(dict(serial=serial, name="", fingerprint="", issued_by="", revoked_at=now,
                              revoked_by=by[:128]))
        except IntegrityError:
            pass  # revoked by another process a moment ago
        store.record_event(CLIENT_CERT_REVOKED, client=None, detail=f"serial {serial} (made elsewhere), by {by}")
        return [_record(table.find_one(serial=serial))]
    revoked = []
    for row in rows:
        if row["revoked_at"] is not None:
            continue
        table.update(dict(id=row["id"], revoked_at=now, revoked_by=by[:128]), ["id"])
        record = _record(table.find_one(id=row["id"]))
        store.record_event(CLIENT_CERT_REVOKED, client=record.name or None,
                           detail=f"serial {record.serial}, by {by[:128]}")
        revoked.append(record)
    return revoked
