# -*- test-case-name: tests.test_claims -*-
"""
Claims: who holds a public port, a domain name, a token's name, a tunnel's
name or an operator account.

Several server processes may share one database, so "is port 16000 free?"
followed by "then it is mine" is a race that both can win.  Every such
claim is instead one row in the ``claims`` table, whose UNIQUE(kind, key)
index makes the database the arbiter::

    claim(kind, key, owner)
        INSERT INTO claims (kind, key, owner...)  ──ok──> True: it is ours now
            │ IntegrityError (someone holds it)
            ▼
        SELECT its owner ──same owner──> False: ours already (a re-claim)
            │ another owner                 (released meanwhile: INSERT again)
            ▼
        raise Claimed(kind, key, owner): "port 16000 is reserved by tunnel
        'ssh' of client 'laptop'; choose another remotePort, ..."

The kinds of a public address are ``PublicAddress.claim_keys``'s
(``gotaxy.proxy``): ``tcp-port``, ``udp-port``, ``domain``.

The read after a failed INSERT only words the refusal and makes a
re-claim by the same owner harmless; it never decides who wins.  A claim
commits at once (it is its own transaction: a failed INSERT would spoil
PostgreSQL's enclosing one), so whoever writes the row the claim protects
does it after the claim and gives the claim back if that fails.

Kinds and keys (the key is text, so one table holds them all):

========== ======================== ===========================================
kind       key                      held by
========== ======================== ===========================================
tcp-port   "16000"                  a tunnel: its public TCP port, kept for it
                                    across reconnects and restarts until it is
                                    removed or given another port
udp-port   "16000"                  a tunnel: its public UDP port
tcp-port,  "a/16000"                the same, on node a's own public address
udp-port                            (``cluster.portScope = "node"``)
domain     "wiki.example.com"       a tunnel: an HTTP/HTTPS virtual host
tunnel     "laptop/ssh"             the tunnel itself: one name per client
token      "laptop"                 the client token of that name until revoked
api_token  "backup-script"          the panel's API token of that name
admin      "admin"                  the operator account
========== ======================== ===========================================

The store uses the synchronous functions here on its own thread; the
server's reactor side uses ``Claims`` (through ``ThreadedStore``), which is
what a proxy type's ``expose()`` is handed to claim its public address.
"""

from __future__ import annotations

from typing import Any, Collection, Dict, Optional, Set, Tuple

import attrs
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import Deferred

from gotaxy.proxy.address import address_or_none
from gotaxy.store.schema import CLAIMS

#: Kinds of claim.
PORT = "tcp-port"
UDP_PORT = "udp-port"
DOMAIN = "domain"
TUNNEL = "tunnel"
TOKEN = "token"
API_TOKEN = "api_token"
ADMIN = "admin"
KINDS = (PORT, UDP_PORT, DOMAIN, TUNNEL, TOKEN, API_TOKEN, ADMIN)
PORT_KINDS = (PORT, UDP_PORT)
#: The kinds a tunnel's public address is claimed under (``PublicAddress.claim_keys``).
ADDRESS_KINDS = (PORT, UDP_PORT, DOMAIN)

#: Kinds of owner.
OWNER_TUNNEL = "tunnel"
OWNER_TOKEN = "token"
OWNER_API_TOKEN = "api_token"
OWNER_OPERATOR = "operator"

#: The table (``gotaxy.store.schema``: UNIQUE(kind, key)).
TABLE = CLAIMS


@attrs.frozen
class Owner:
    """Who holds a claim: a tunnel (of a client), a token, an operator account."""

    kind: str
    name: str
    client: Optional[str] = None  #: the client a tunnel belongs to

    @classmethod
    def tunnel(cls, client: str, name: str) -> "Owner":
        return cls(OWNER_TUNNEL, name, client)

    @classmethod
    def token(cls, name: str) -> "Owner":
        return cls(OWNER_TOKEN, name)

    @classmethod
    def api_token(cls, name: str) -> "Owner":
        return cls(OWNER_API_TOKEN, name)

    @classmethod
    def operator(cls, username: str) -> "Owner":
        return cls(OWNER_OPERATOR, username)

    def describe(self) -> str:
        if self.kind == OWNER_TUNNEL:
            return f"tunnel {self.name!r} of client {self.client!r}"
        if self.kind == OWNER_TOKEN:
            return f"the token {self.name!r}"
        if self.kind == OWNER_API_TOKEN:
            return f"the API token {self.name!r}"
        return f"the operator account {self.name!r}"


def tunnel_key(client: str, name: str) -> str:
    """The ``tunnel`` claim's key (a client's name never contains '/')."""
    return f"{client}/{name}"


class Claimed(Exception):
    """
    Someone else holds the claim.  The message is one sentence for the user
    that names the thing, its holder and the fix; ``owner`` is the holder.
    """

    def __init__(self, kind: str, key: str, owner: Owner) -> None:
        self.kind = kind
        self.key = key
        self.owner = owner
        super().__init__(_refusal(kind, key, owner))


def _refusal(kind: str, key: str, owner: Owner) -> str:
    held = owner.describe()
    if kind in (PORT, UDP_PORT):
        # "a/16000": a port of node a's own public address (cluster.portScope = "node").
        node, _, port = key.rpartition("/")
        what = ("port " if kind == PORT else "UDP port ") + port + (f" of node {node!r}" if node else "")
        return f"{what} is reserved by {held}; choose another remotePort, or 0 to get a free one"
    if kind == DOMAIN:
        return f"domain {key} is held by {held}; choose another domain, or remove that tunnel first"
    if kind == TUNNEL:
        client, _, name = key.partition("/")
        return f"client {client!r} already has a tunnel named {name!r}; choose another name, or remove that one first"
    if kind == TOKEN:
        return f"a token named {key!r} already exists; revoke it first or choose another name"
    if kind == API_TOKEN:
        return f"an API token named {key!r} exists; revoke it or choose another name"
    if kind == ADMIN:
        return f"an operator account named {key!r} already exists; choose another name"
    return f"{kind} {key} is held by {held}"


def _owner(row: Dict[str, Any]) -> Owner:
    return Owner(row["owner_kind"], row["owner_name"], row["owner_client"])


def holder(db: Any, kind: str, key: str) -> Optional[Owner]:
    row = db[TABLE].find_one(kind=kind, key=key)
    return None if row is None else _owner(row)


def claim(db: Any, kind: str, key: str, owner: Owner, now: float) -> bool:
    """
    Claim ``key`` of ``kind`` for ``owner``: True if it is claimed now,
    False if ``owner`` held it already; raise ``Claimed`` if another does.
    Not inside a transaction of the caller's (see the module docstring).
    """
    if db.in_transaction:
        raise RuntimeError("a claim is its own transaction; make it before opening one")
    row = dict(kind=kind, key=key, owner_kind=owner.kind, owner_client=owner.client, owner_name=owner.name,
               created_at=now)
    for _ in range(3):
        try:
            with db as tx:
                tx[TABLE].insert(row)
            return True
        except IntegrityError:
            pass  # rolled back; someone holds it
        current = holder(db, kind, key)
        if current == owner:
            return False
        if current is not None:
            raise Claimed(kind, key, current)
        # Released between our INSERT and the look-up: try again.
    raise Claimed(kind, key, holder(db, kind, key) or owner)


def release(db: Any, kind: str, key: str, owner: Optional[Owner] = None) -> bool:
    """Give a claim back (only ``owner``'s, if given); True if there was one."""
    filters: Dict[str, Any] = dict(kind=kind, key=key)
    if owner is not None:
        filters.update(owner_kind=owner.kind, owner_client=owner.client, owner_name=owner.name)
    return bool(db[TABLE].delete(**filters))


def release_owner(db: Any, owner: Owner, kinds: Optional[Tuple[str, ...]] = None,
                  keep: Collection[Tuple[str, str]] = ()) -> int:
    """Give back every claim ``owner`` holds (of ``kinds``), except those in ``keep`` (kind, key); return how many."""
    released = 0
    for row in list(db[TABLE].find(owner_kind=owner.kind, owner_client=owner.client, owner_name=owner.name)):
        if kinds is not None and row["kind"] not in kinds:
            continue
        if (row["kind"], row["key"]) in keep:
            continue
        db[TABLE].delete(id=row["id"])
        released += 1
    return released


def keys(db: Any, kind: str) -> Set[str]:
    """Every key of ``kind`` that is held."""
    return {row["key"] for row in db[TABLE].find(kind=kind)}


def held_by(db: Any, owner: Owner, kind: str) -> Set[str]:
    return {row["key"] for row in db[TABLE].find(kind=kind, owner_kind=owner.kind, owner_client=owner.client,
                                                 owner_name=owner.name)}


def migrate_existing(db: Any, now: float) -> int:
    """
    Make the claims that a database from before the claims table holds
    implicitly: tunnels' reserved ports and names, live tokens' names, the
    operator accounts.  Where old rows conflict (two tunnels that both got
    one port through the old read-then-write race), the older row keeps it.
    Idempotent; returns how many claims it made.
    """
    made = 0

    def add(kind: str, key: str, owner: Owner) -> None:
        nonlocal made
        try:
            if claim(db, kind, key, owner, now):
                made += 1
        except Claimed:
            pass

    if "tunnels" in db:
        for row in list(db["tunnels"].find(order_by="id")):
            owner = Owner.tunnel(row["client"], row["name"])
            add(TUNNEL, tunnel_key(row["client"], row["name"]), owner)
            for kind, key in stored_address_keys(row):
                add(kind, key, owner)
    if "tokens" in db:
        for row in list(db["tokens"].find(revoked_at=None, order_by="id")):
            add(TOKEN, row["name"], Owner.token(row["name"]))
    if "web_api_tokens" in db:
        for row in list(db["web_api_tokens"].find(order_by="id")):
            add(API_TOKEN, row["name"], Owner.api_token(row["name"]))
    if "admins" in db:
        for row in list(db["admins"].find(order_by="id")):
            add(ADMIN, row["username"], Owner.operator(row["username"]))
    return made


def stored_address_keys(row: Dict[str, Any]) -> Tuple[Tuple[str, str], ...]:
    """
    The claim keys of a stored tunnel's public address: its ``address``
    (``tcp:16000``) since proxy types, else the ``remote_port`` of a
    database from before them.
    """
    address = address_or_none(row.get("address"))
    if address is not None:
        return address.claim_keys if address.port or address.hosts else ()
    if row.get("remote_port"):
        return ((PORT, str(int(row["remote_port"]))),)
    return ()


class Claims:
    """
    The reactor side of the claims table: each call runs on the store's
    thread (``ThreadedStore``) and returns a Deferred.  This is what a proxy
    type's ``expose()`` gets to claim its public address::

        try:
            fresh = await claims.claim(PORT, "16000", Owner.tunnel("laptop", "ssh"))
        except Claimed as e:
            refuse(str(e))   # names the holder and the fix; e.owner is the holder
    """

    def __init__(self, store: Any) -> None:
        self._store = store  #: a ThreadedStore

    def claim(self, kind: str, key: str, owner: Owner) -> "Deferred[bool]":
        """True: claimed now; False: ``owner`` held it already; fails with ``Claimed``."""
        return self._store.call(self._store.store.claim, kind, key, owner)

    def release(self, kind: str, key: str, owner: Optional[Owner] = None) -> "Deferred[bool]":
        return self._store.call(self._store.store.release, kind, key, owner)

    def holder(self, kind: str, key: str) -> "Deferred[Optional[Owner]]":
        return self._store.call(self._store.store.claim_holder, kind, key)

    def keys(self, kind: str) -> "Deferred[Set[str]]":
        return self._store.call(self._store.store.claimed_keys, kind)
