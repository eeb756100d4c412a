# -*- test-case-name: tests.test_web_api -*-
"""
Who may use the panel and the API: log-in sessions, API tokens, TOTP.

* **Passwords** are checked by ``OperatorAuth`` (argon2, and the slow-down
  and lock-out shared with the SSH console).  A wrong TOTP code after a right
  password counts too: it is recorded as an ``operator.login_failed`` event
  with the address, and ``TOTP_LOCK_AFTER`` wrong codes within
  ``TOTP_WINDOW`` lock the user out of the panel for that long.

* **Sessions** live in the ``web_sessions`` table.  The browser holds 256
  random bits in an ``HttpOnly; SameSite=Strict`` cookie (``Secure`` under
  HTTPS); only their SHA-256 is stored, so a copy of the database does not
  let anyone in.  A session ends after ``SESSION_IDLE`` seconds without a
  request or ``SESSION_LIFETIME`` after log-in, whichever comes first.  Each
  session has its own CSRF token, which every state-changing request made
  with the cookie must echo in the ``X-CSRF-Token`` header.

* **API tokens** (``gtxapi_`` + 43 URL-safe characters) are for scripts:
  ``Authorization: Bearer ...``.  Shown once when created; only their SHA-256
  is stored (the same reasoning as client tokens in ``gotaxy.credentials``).
  They need no CSRF token (a browser never sends them by itself) and cannot
  change the operator's password or second factor.

* **TOTP** (RFC 6238, 30 s steps, one step of clock drift allowed) secrets
  are kept in ``web_totp``, sealed under the server's key
  (``gotaxy.sealing``, column ``sealed_secret``): the server needs them back
  to compute codes, so they cannot be hashed, and a copy of the database
  must not give anyone the second factor.  Rows that an older version wrote
  in plain text (column ``secret``) are sealed when the server starts
  (``seal_plain_secrets``).  Enrolment is two steps: ``begin_totp`` makes a
  pending secret (shown as a QR code), ``confirm_totp`` turns it on once the
  operator proves their authenticator app has it.  A code is accepted once:
  the last used time step is stored, so a code seen over a shoulder cannot be
  replayed.

Every database call runs on the store's thread (``ThreadedStore.call``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any, Dict, List, Optional, Tuple

import attrs
import pyotp

from gotaxy.names import NAME_RULE, is_valid_name, shown
from gotaxy.sealing import Sealer
from gotaxy.store import claims, lockouts
from gotaxy.store.claims import Claimed, Owner
from gotaxy.server.operators import AuthFailed, LockedOut, OperatorAuth
from gotaxy.store import OPERATOR_LOCKED_OUT, OPERATOR_LOGIN_FAILED

SESSION_IDLE = 2 * 3600.0
SESSION_LIFETIME = 24 * 3600.0
MAX_SESSIONS_PER_USER = 20
MAX_API_TOKENS = 50
API_TOKEN_PREFIX = "gtxapi_"
TOTP_ISSUER = "Gotaxy"
TOTP_STEP = 30
TOTP_LOCK_AFTER = 5
TOTP_WINDOW = 15 * 60.0


class SecondFactorRequired(Exception):
    """The password was right; a TOTP code is needed too."""


class PanelAuthError(Exception):
    """A request the panel refuses; ``kind`` as in ``ManagementError``."""

    def __init__(self, kind: str, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field


@attrs.frozen
class Caller:
    """Who made a request: a logged-in browser, or a script with an API token."""

    username: str
    via: str  #: "session" or "token"
    csrf_token: Optional[str] = None  #: sessions only
    session_key: Optional[str] = None  #: hash of the session id, sessions only
    token_name: Optional[str] = None  #: API tokens only
    expires_at: Optional[float] = None


@attrs.frozen
class ApiTokenRecord:
    name: str
    created_at: float
    last_used_at: Optional[float] = None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def end_sessions(db: Any, username: str) -> int:
    """
    Log ``username`` out of every browser; return how many sessions ended.
    Synchronous, for the ``gotaxy admin`` command (a running server checks
    sessions against the table on every request, so it sees this at once).
    """
    table = db["web_sessions"]
    count = int(table.count(username=username))
    table.delete(username=username)
    return count


def remove_second_factor(db: Any, username: str) -> bool:
    """Turn ``username``'s TOTP off (pending enrolments too); True if there was one on."""
    row = db["web_totp"].find_one(username=username)
    db["web_totp"].delete(username=username)
    return bool(row is not None and row["enabled"])


class PanelAuth:
    def __init__(self, core: Any, operators: OperatorAuth, reactor: Any, sealer: Sealer) -> None:
        self.core = core
        self.operators = operators
        self.reactor = reactor
        self.db = core.store.store.db
        self.sealer = sealer

    def seal_plain_secrets(self) -> int:
        """
        At start-up, before the reactor runs: seal every TOTP secret still
        stored in plain text (by a version before sealing); return how many.
        """
        table = self.db["web_totp"]
        sealed = 0
        for row in list(table.find()):
            if row.get("secret"):
                table.update(dict(id=row["id"], sealed_secret=self.sealer.seal(row["secret"]), secret=""), ["id"])
                sealed += 1
        return sealed

    def _secret(self, row: Dict[str, Any]) -> str:
        if row.get("sealed_secret"):
            return self.sealer.open(row["sealed_secret"])
        return row["secret"]  # written by an older version since this server started; sealed at its next start

    def _now(self) -> float:
        return self.reactor.seconds()

    async def _call(self, function: Any, *args: Any) -> Any:
        return await self.core.store.call(function, *args)

    # -- log-in and sessions ---------------------------------------------------

    async def login(self, username: str, password: str, code: Optional[str], address: str) -> Tuple[str, Caller]:
        """
        Check the password (and TOTP code, if enrolled); return the new
        session's id (for the cookie only) and its caller.  Raises
        ``AuthFailed``, ``LockedOut`` or ``SecondFactorRequired``.
        """
        await self._refuse_if_code_locked(username)
        await self.operators.authenticate(username, password, address, "web")
        if await self.totp_enabled(username):
            if not code:
                raise SecondFactorRequired("enter the 6-digit code from your authenticator app")
            await self.check_second_factor(username, code, address, "web")
        session_id = secrets.token_urlsafe(32)
        caller = await self._call(self._create_session, username, session_id, address, self._now())
        return session_id, caller

    async def check_second_factor(self, username: str, code: str, address: str, via: str) -> None:
        """
        Return if ``code`` is the user's current TOTP code (and not used
        before); raise ``AuthFailed`` or ``LockedOut``.  For the panel and
        the SSH console alike, after the password was right.
        """
        await self._refuse_if_code_locked(username)
        if not await self._call(self._use_code, username, code, self._now()):
            await self._totp_failed(username, address, via)

    async def _refuse_if_code_locked(self, username: str) -> None:
        """LockedOut while too many wrong codes lock the name (in the store: every server process sees it)."""
        locked = await self.core.store.call(
            lockouts.locked_for, self.db, lockouts.TOTP, lockouts.user_key(username), self._now()
        )
        if locked > 0:
            raise LockedOut(locked)

    async def _totp_failed(self, username: str, address: str, via: str) -> None:
        locked = await self.core.store.call(
            lockouts.failed_for_user, self.db, lockouts.TOTP, username, address, TOTP_WINDOW, self._now(),
            TOTP_LOCK_AFTER, TOTP_WINDOW,
        )
        detail = f"via {via}, user {username[:64]!r}, wrong second-factor code"
        await self.core.record(OPERATOR_LOGIN_FAILED, address=address, detail=detail)
        if locked:
            await self.core.record(OPERATOR_LOCKED_OUT, address=address, detail=detail)
        raise AuthFailed("wrong second-factor code")

    def _create_session(self, username: str, session_id: str, address: str, now: float) -> Caller:
        table = self.db["web_sessions"]
        table.delete(expires_at={"<": now})
        mine = list(table.find(username=username, order_by="created_at"))
        for row in mine[: max(0, len(mine) - MAX_SESSIONS_PER_USER + 1)]:
            table.delete(id=row["id"])
        csrf = secrets.token_urlsafe(32)
        key = _hash(session_id)
        expires = min(now + SESSION_IDLE, now + SESSION_LIFETIME)
        table.insert(
            dict(session_hash=key, username=username, csrf_token=csrf, created_at=now,
                 last_seen_at=now, expires_at=expires, address=address[:128])
        )
        return Caller(username=username, via="session", csrf_token=csrf, session_key=key, expires_at=expires)

    async def session(self, session_id: str) -> Optional[Caller]:
        """The caller of a live session, extending its idle time; None if there is none."""
        if not session_id or len(session_id) > 128:
            return None
        return await self._call(self._touch_session, _hash(session_id), self._now())

    def _touch_session(self, key: str, now: float) -> Optional[Caller]:
        table = self.db["web_sessions"]
        row = table.find_one(session_hash=key)
        if row is None or not hmac.compare_digest(row["session_hash"], key):
            return None
        if row["expires_at"] <= now:
            table.delete(id=row["id"])
            return None
        expires = min(now + SESSION_IDLE, row["created_at"] + SESSION_LIFETIME)
        table.update(dict(id=row["id"], last_seen_at=now, expires_at=expires), ["id"])
        return Caller(
            username=row["username"], via="session", csrf_token=row["csrf_token"], session_key=key, expires_at=expires
        )

    async def session_exists(self, key: Optional[str]) -> bool:
        now = self._now()
        return await self._call(
            lambda: self.db["web_sessions"].find_one(session_hash=key, expires_at={">": now}) is not None
        )

    async def end_sessions_from(self, under: Any) -> int:
        """End every panel session logged in from an address ``under`` a new ban; how many ended."""
        def end() -> int:
            table = self.db["web_sessions"]
            doomed = [row["id"] for row in table.find() if under(row["address"] or "")]
            for row_id in doomed:
                table.delete(id=row_id)
            return len(doomed)

        return int(await self._call(end))

    async def logout(self, caller: Caller) -> None:
        if caller.session_key is not None:
            await self._call(lambda: self.db["web_sessions"].delete(session_hash=caller.session_key))

    async def end_other_sessions(self, caller: Caller) -> None:
        """After a password change: log out every other browser of this user."""

        def end() -> None:
            for row in list(self.db["web_sessions"].find(username=caller.username)):
                if row["session_hash"] != caller.session_key:
                    self.db["web_sessions"].delete(id=row["id"])

        await self._call(end)

    # -- API tokens -------------------------------------------------------------

    async def bearer(self, token: str) -> Optional[Caller]:
        if not token.startswith(API_TOKEN_PREFIX) or len(token) > 128:
            return None
        return await self._call(self._check_api_token, _hash(token), self._now())

    def _check_api_token(self, key: str, now: float) -> Optional[Caller]:
        table = self.db["web_api_tokens"]
        row = table.find_one(token_hash=key)
        if row is None or not hmac.compare_digest(row["token_hash"], key):
            return None
        table.update(dict(id=row["id"], last_used_at=now), ["id"])
        return Caller(username=row["username"], via="token", token_name=row["name"])

    async def api_tokens(self) -> List[ApiTokenRecord]:
        def rows() -> List[ApiTokenRecord]:
            return [
                ApiTokenRecord(name=r["name"], created_at=r["created_at"], last_used_at=r["last_used_at"])
                for r in self.db["web_api_tokens"].find(order_by="created_at")
            ]

        return await self._call(rows)

    async def create_api_token(self, username: str, name: str) -> Tuple[ApiTokenRecord, str]:
        if not is_valid_name(name):
            raise PanelAuthError("invalid", f"an API token's name must be {NAME_RULE} (got {shown(name)})", "name")
        token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._now()

        def create() -> ApiTokenRecord:
            table = self.db["web_api_tokens"]
            if table.count() >= MAX_API_TOKENS:
                raise PanelAuthError("conflict", f"there are already {MAX_API_TOKENS} API tokens; revoke one you no longer use")
            # The name is claimed first: two requests (or two servers) creating it at once cannot both.
            owner = Owner.api_token(name)
            store = self.core.store.store
            try:
                fresh = store.claim(claims.API_TOKEN, name, owner)
            except Claimed as e:
                raise PanelAuthError("conflict", str(e), "name") from None
            if not fresh:
                raise PanelAuthError("conflict", str(Claimed(claims.API_TOKEN, name, owner)), "name")
            try:
                table.insert(dict(name=name, token_hash=_hash(token), username=username, created_at=now,
                                  last_used_at=None))
            except BaseException:
                store.release(claims.API_TOKEN, name, owner)
                raise
            return ApiTokenRecord(name=name, created_at=now)

        return await self._call(create), token

    async def revoke_api_token(self, name: str) -> None:
        def revoke() -> None:
            if not self.db["web_api_tokens"].delete(name=name):
                raise PanelAuthError("not_found", f"no API token named {name!r}")
            self.core.store.store.release(claims.API_TOKEN, name, Owner.api_token(name))

        await self._call(revoke)

    # -- TOTP ------------------------------------------------------------------

    def _totp_row(self, username: str) -> Optional[Dict[str, Any]]:
        return self.db["web_totp"].find_one(username=username)

    async def totp_enabled(self, username: str) -> bool:
        row = await self._call(self._totp_row, username)
        return bool(row is not None and row["enabled"])

    async def begin_totp(self, username: str) -> Tuple[str, str]:
        """Make a pending secret; return it and its ``otpauth://`` URI."""
        secret = pyotp.random_base32()

        def begin() -> None:
            table = self.db["web_totp"]
            row = table.find_one(username=username)
            if row is not None and row["enabled"]:
                raise PanelAuthError("conflict", "a second factor is already on; turn it off first to enrol a new one")
            table.delete(username=username)
            table.insert(dict(username=username, secret="", sealed_secret=self.sealer.seal(secret), enabled=False,
                              last_step=0))

        await self._call(begin)
        uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)
        return secret, uri

    async def confirm_totp(self, username: str, code: str) -> None:
        now = self._now()

        def confirm() -> None:
            row = self._totp_row(username)
            if row is None or row["enabled"]:
                raise PanelAuthError("conflict", "no enrolment is in progress; start one with 'Set up' first")
            if not self._use_code(username, code, now):
                raise PanelAuthError("invalid", "that code is not right; enter the current code from your app", "code")
            self.db["web_totp"].update(dict(username=username, enabled=True), ["username"])

        await self._call(confirm)

    async def disable_totp(self, username: str, code: str) -> None:
        now = self._now()

        def disable() -> None:
            row = self._totp_row(username)
            if row is None or not row["enabled"]:
                raise PanelAuthError("conflict", "the second factor is not on")
            if not self._use_code(username, code, now):
                raise PanelAuthError("invalid", "that code is not right; enter the current code from your app", "code")
            self.db["web_totp"].delete(username=username)

        await self._call(disable)

    def _use_code(self, username: str, code: str, now: float) -> bool:
        """True if ``code`` is valid now and newer than the last one used; marks it used."""
        row = self._totp_row(username)
        if row is None or not isinstance(code, str):
            return False
        code = code.strip().replace(" ", "")
        if not (len(code) == 6 and code.isdigit()):
            return False
        totp = pyotp.TOTP(self._secret(row))
        step = int(now // TOTP_STEP)
        for candidate in (step - 1, step, step + 1):
            if candidate <= (row["last_step"] or 0):
                continue
            if hmac.compare_digest(totp.at(candidate * TOTP_STEP), code):
                self.db["web_totp"].update(dict(username=username, last_step=candidate), ["username"])
                return True
        return False
