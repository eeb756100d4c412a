# -*- test-case-name: tests.test_store -*-
"""
The store's data access: tokens, clients, tunnels with their ports, events,
operator accounts.

``Store`` is plain synchronous code on ``dataset`` (SQLite by default, any
SQLAlchemy URL otherwise).  It is used directly only where no reactor runs
(the ``gotaxy`` command, first-start set-up).  The server talks to it through
``ThreadedStore``, which runs every call on one dedicated thread, so no
database work ever happens on the reactor thread and calls are serialised
(SQLite allows one writer at a time anyway).

Times are UNIX seconds as floats, taken from the ``clock`` the store is
given, so tests can steer expiry.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import json
import time
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar

import attrs
import dataset
from sqlalchemy import and_, delete, insert, or_, select, true, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError, PendingRollbackError
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from gotaxy.store import claims
from gotaxy.store.claims import DOMAIN, OWNER_TUNNEL, Claimed, Owner, tunnel_key
from gotaxy.credentials import dummy_hash, hash_password, new_token, token_hash, tokens_equal, verify_password
from gotaxy.logs import gotaxy_observer
from gotaxy.names import NAME_RULE, is_valid_name, shown
from gotaxy.proxy.address import PublicAddress, address_or_none
from gotaxy.store.migrations import SchemaError, migrate, schema_version
from gotaxy.store.schema import CLAIMS, HISTORY_SESSIONS, NODES

T = TypeVar("T")
_log = Logger(observer=gotaxy_observer)

#: Event types, re-exported from their catalogue (``gotaxy.events``) for
#: the modules that import them from here.
from gotaxy.events import (  # noqa: E402
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    CLIENT_KICKED,
    CLIENT_REPLACED,
    CONFIG_RELOADED,
    LOGIN_FAILED,
    OPERATOR_LOCKED_OUT,
    OPERATOR_LOGIN_FAILED,
    OPERATOR_PASSWORD_CHANGED,
    SERVER_STARTED,
    TOKEN_CHANGED,
    TOKEN_CREATED,
    TOKEN_REVOKED,
    TUNNEL_ADDED,
    TUNNEL_CLOSED,
    TUNNEL_DISABLED,
    TUNNEL_EDITED,
    TUNNEL_ENABLED,
    TUNNEL_ERROR,
    TUNNEL_OPENED,
    TUNNEL_REFUSED,
    TUNNEL_REMOVED,
    TYPES,
    Event,
)

#: Who defined a tunnel: the client's own config, or an operator (panel or
#: console), in which case the server pushes it to the client.
SOURCE_CLIENT = "client"
SOURCE_SERVER = "server"

#: Tunnels a client's refusals may add to the store (a client may ask for at
#: most 256 at a time; names it tried once and gave up stay listed).
MAX_TUNNEL_ROWS_PER_CLIENT = 512


class StoreError(Exception):
    """A request the store refuses; the message is for the user."""


class StoreUnreachable(Exception):
    """
    The database did not answer (it is down, restarting, unreachable, or a
    statement ran over its timeout).  The message is for the user; a call
    made with ``ThreadedStore.keep`` is written when the database is back.
    """


#: Seconds a connection attempt to PostgreSQL may take (psycopg's
#: connect_timeout), and the most one statement may run (PostgreSQL's
#: statement_timeout): a dead database fails a store call in seconds instead of
#: holding the store's one thread for the kernel's TCP timeouts (minutes).
CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT = 30.0
#: TCP keep-alives on the PostgreSQL connection (idle seconds, interval, count):
#: a database host that vanished without closing the connection is noticed
#: within about 25 s even when no statement is running.
KEEPALIVES = (10, 5, 3)


def is_unreachable(error: BaseException) -> bool:
    """
    True if ``error`` says the database is not there (as opposed to a
    request it refused): a lost or refused connection, a server shutting
    down, a statement cancelled by its timeout.  SQLite's "database is
    locked" is not one of them: the file is there.
    """
    if isinstance(error, PendingRollbackError):
        return True  # a connection lost in a transaction (reset by ThreadedStore)
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    orig = error.orig
    return isinstance(error, OperationalError) and type(orig).__module__.split(".")[0] == "psycopg"


def failure_logger(log: Any, text: str, **fields: Any) -> Callable[[Failure], None]:
    """
    An errback for a store call made on a timer: a bug is logged with its
    traceback as ``text``; ``StoreUnreachable`` is dropped, because the
    server says once that the database went away and once that it is back
    (``ServerCore``, ``ThreadedStore.on_reachability``), and the timer tries
    again by itself.
    """

    def errback(failure: Failure) -> None:
        if not failure.check(StoreUnreachable):
            log.failure(text, failure, **fields)

    return errback


def database_options(target: URL) -> Dict[str, Any]:
    """
    SQLAlchemy's ``create_engine`` arguments for ``target``: SQLite's
    thread and lock settings, or, for PostgreSQL, ``pool_pre_ping`` (a
    connection the database dropped is replaced before use) with the
    timeouts and keep-alives above.
    """
    if target.get_backend_name() == "sqlite":
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if target.get_backend_name() != "postgresql":
        return {"pool_pre_ping": True}
    idle, interval, count = KEEPALIVES
    connect_args: Dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT, "keepalives": 1, "keepalives_idle": idle,
        "keepalives_interval": interval, "keepalives_count": count,
    }
    # The URL's own settings win (?connect_timeout=2&options=... in database.url).
    query = dict(target.query)
    for key in list(connect_args):
        if key in query:
            del connect_args[key]
    if "options" not in query:
        connect_args["options"] = f"-c statement_timeout={int(STATEMENT_TIMEOUT * 1000)}"
    return {"pool_pre_ping": True, "connect_args": connect_args}


@attrs.frozen
class TokenRecord:
    name: str
    created_at: float
    expires_at: Optional[float] = None
    revoked_at: Optional[float] = None
    last_used_at: Optional[float] = None
    #: the custom domains its client may claim (``gotaxy.server.domains``); empty: those the server allows
    allow_domains: Tuple[str, ...] = ()
    #: its client's own bandwidth limit (bytes a second each way, ``gotaxy.bandwidth``); 0: maxBandwidthPerClient
    max_bandwidth: int = 0

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@attrs.frozen
class ClientRecord:
    name: str
    online: bool
    address: Optional[str] = None
    version: Optional[str] = None
    connected_at: Optional[float] = None
    last_seen_at: Optional[float] = None
    #: the server process (node) holding it while online; None: none, or the store of one server before nodes
    node: Optional[str] = None


@attrs.frozen
class TunnelRecord:
    client: str
    name: str
    type: str
    #: where the client's side leads, for people (the spec's local description)
    local_addr: str
    #: the public address the tunnel holds (kept while it is down), if any
    address: Optional[PublicAddress]
    status: str
    reason: Optional[str] = None
    updated_at: Optional[float] = None
    source: str = SOURCE_CLIENT
    enabled: bool = True
    #: the spec it was last opened (or, for an operator's, defined) with: frp's keys
    spec: Optional[Dict[str, Any]] = None
    #: the server process (node) that last opened it (it holds the tunnel while the status is ``up``)
    node: Optional[str] = None


#: A row of the events table is an ``Event`` with its ``id`` and ``node``.
EventRecord = Event


#: ``settings`` key: the fingerprint join tokens pin (``gotaxy.jointoken``),
#: written by the server at every start.
JOIN_PIN_SETTING = "tls.join_pin"


def default_url(data_dir: str) -> str:
    import os

    return "sqlite:///" + os.path.abspath(os.path.join(data_dir, "gotaxy.db"))


def driver_url(url: str) -> URL:
    """
    ``url`` as SQLAlchemy will connect to it: a bare ``postgresql://`` (or
    ``postgres://``) uses psycopg (version 3), the driver Gotaxy installs,
    instead of SQLAlchemy's default psycopg2.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"{shown_url(url)} is not a database URL; write one such as sqlite:////var/lib/gotaxy/gotaxy.db "
            "or postgresql://gotaxy:PASSWORD@db.example.com/gotaxy"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def shown_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Not a URL SQLAlchemy understands: show only what precedes a "user:password@".
        return url.split("://", 1)[0] + "://…" if "://" in url else "(an unreadable database URL)"


class Store:
    """
    The store on the database at ``url`` (any SQLAlchemy URL).  Opening it
    applies the migrations the database lacks (``applied`` lists them) and
    refuses, with ``StoreError``, a database a newer Gotaxy migrated.
    """

    #: The server process this store works for (``join_node``); None in the ``gotaxy`` command.
    node: Optional[str] = None

    def __init__(self, url: str, clock: Callable[[], float] = time.time, node: Optional[str] = None) -> None:
        self.url = url
        self.shown_url = shown_url(url)
        self._clock = clock
        # Written into the rows it owns and every event row it records (the
        # outbox's tail skips its own: gotaxy.server.outbox); join_node sets it too.
        self.node = node
        #: this node's node-to-node address (``join_node``; gotaxy.server.forward), kept in its lease row
        self.advertise = ""
        #: ``cluster.portScope = "node"``: this node's id, which scopes TCP and UDP port claims (each node
        #: has its own public address, so port 6000 here and on another node are two tunnels' ports);
        #: None: a port is one claim across every node of the database.
        self.port_scope: Optional[str] = None
        #: While True (``ThreadedStore`` sets it), recorded events are kept
        #: for ``take_recorded``, so that the server publishes each one.
        self.collect_recorded = False
        self._recorded: List[Event] = []
        self._recorded_lock = threading.Lock()  # start-up work may record from the reactor's thread
        target = driver_url(url)
        kwargs = database_options(target)
        try:
            self.db = dataset.connect(
                target.render_as_string(hide_password=False), engine_kwargs=kwargs, sqlite_wal_mode=True
            )
        except (ArgumentError, ImportError) as e:
            raise StoreError(f"cannot use the database {self.shown_url}: {_scrubbed(str(e), url)}") from None
        try:
            self.applied = migrate(self.db.engine, self.shown_url, clock)
        except SchemaError as e:
            self.db.close()
            raise StoreError(str(e)) from None
        except DBAPIError as e:
            self.db.close()
            raise StoreError(
                f"cannot open the database {self.shown_url}: {_scrubbed(_first_line(e), url)}; check database.url "
                "(--database-url), that the database server runs and that its user may connect and create tables"
            ) from None

    @property
    def schema_version(self) -> int:
        return schema_version(self.db.engine)

    def close(self) -> None:
        self.db.close()

    def reset_connection(self) -> None:
        """
        Drop this thread's connection after the database went away: dataset
        keeps one connection per thread for good, and SQLAlchemy refuses
        every statement on a connection lost in a transaction ("Can't
        reconnect until invalid transaction is rolled back") until it is
        closed.  The next statement checks out a fresh one (``pool_pre_ping``
        tests it first).
        """
        db = self.db
        db.local.tx = []
        with db.lock:
            connection = db.connections.pop(threading.get_ident(), None)
        if connection is not None:
            try:
                connection.invalidate()
                connection.close()
            except Exception:  # noqa: BLE001 -- the connection is dead; nothing to tell
                pass
        db._flush_tables()  # table metadata read in the failed transaction

    def now(self) -> float:
        """The store's clock."""
        return self._clock()

    @contextlib.contextmanager
    def as_of(self, when: float) -> Iterator[None]:
        """Within: the store's clock says ``when`` (a write kept during an outage is written with its own time)."""
        clock = self._clock
        self._clock = lambda: when
        try:
            yield
        finally:
            self._clock = clock

    # -- claims (see gotaxy.store.claims) --------------------------------------------

    def claim(self, kind: str, key: str, owner: Owner) -> bool:
        """True if claimed now, False if ``owner`` held it already; raises ``Claimed``."""
        return claims.claim(self.db, kind, key, owner, self._clock())

    def release(self, kind: str, key: str, owner: Optional[Owner] = None) -> bool:
        return claims.release(self.db, kind, key, owner)

    def claim_holder(self, kind: str, key: str) -> Optional[Owner]:
        return claims.holder(self.db, kind, key)

    def claimed_keys(self, kind: str) -> Set[str]:
        return claims.keys(self.db, kind)

    # -- settings ------------------------------------------------------------

    def set_setting(self, key: str, value: str) -> None:
        self.db["settings"].upsert(dict(key=key, value=value), ["key"])

    def claim_setting(self, key: str, value: str) -> str:
        """
        Set ``key`` to ``value`` unless it has a value; return the value it
        has now.  One INSERT that fails if another process set it first.
        """
        try:
            with self.db as tx:
                tx["settings"].insert(dict(key=key, value=value))
            return value
        except IntegrityError:
            stored = self.get_setting(key)
            assert stored is not None
            return stored

    def get_setting(self, key: str) -> Optional[str]:
        row = self.db["settings"].find_one(key=key)
        return None if row is None else row["value"]

    # -- tokens --------------------------------------------------------------

    def create_token(self, name: str, expires_at: Optional[float] = None,
                     allow_domains: Sequence[str] = ()) -> Tuple[TokenRecord, str]:
        """Create a token; return its record and the only copy of its text."""
        if not is_valid_name(name):
            raise StoreError(f"a token's name (its client's name) must be {NAME_RULE} (got {shown(name)})")
        now = self._clock()
        owner = Owner.token(name)
        try:
            fresh = self.claim(claims.TOKEN, name, owner)
        except Claimed as e:
            raise StoreError(str(e)) from None
        if not fresh:  # held by this name's live token
            raise StoreError(str(Claimed(claims.TOKEN, name, owner)))
        token = new_token()
        try:
            self.db["tokens"].insert(dict(name=name, token_hash=token_hash(token), created_at=now, expires_at=expires_at,
                                          allow_domains=json.dumps(list(allow_domains)) if allow_domains else None))
        except BaseException:
            self.release(claims.TOKEN, name, owner)
            raise
        self.record_event(TOKEN_CREATED, client=name)
        return TokenRecord(name=name, created_at=now, expires_at=expires_at, allow_domains=tuple(allow_domains)), token

    def revoke_token(self, name: str) -> bool:
        now = self._clock()
        revoked = False
        with self.db as tx:
            for row in tx["tokens"].find(name=name, revoked_at=None):
                tx["tokens"].update(dict(id=row["id"], revoked_at=now), ["id"])
                revoked = True
        if revoked:
            self.release(claims.TOKEN, name, Owner.token(name))  # the name may be given to a new token
            self.record_event(TOKEN_REVOKED, client=name)
        return revoked

    def set_token_domains(self, name: str, allow_domains: Sequence[str]) -> bool:
        """Set the custom domains the active token of ``name`` may claim (empty: those the server allows)."""
        value = json.dumps(list(allow_domains)) if allow_domains else None
        changed = False
        now = self._clock()
        with self.db as tx:
            for row in tx["tokens"].find(name=name, revoked_at=None):
                if row["expires_at"] is None or row["expires_at"] > now:
                    tx["tokens"].update(dict(id=row["id"], allow_domains=value), ["id"])
                    changed = True
        return changed

    def token_domains(self, name: str) -> Tuple[str, ...]:
        """The custom domains the active token of ``name`` may claim; empty: no list of its own."""
        now = self._clock()
        for row in self.db["tokens"].find(name=name, revoked_at=None):
            if row["expires_at"] is None or row["expires_at"] > now:
                return _domain_list(row.get("allow_domains"))
        return ()
    def set_token_bandwidth(self, name: str, rate: int) -> Optional[TokenRecord]:
        """
        Give ``name``'s active token its client's bandwidth limit (``rate``
        bytes a second each way; 0: none of its own); the record, or None if
        it has no active token.  Records ``token.changed``, which every server
        process applies to the client's open connections.
        """
        now = self._clock()
        changed = None
        with self.db as tx:
            for row in tx["tokens"].find(name=name, revoked_at=None):
                if _token(row).active(now):
                    tx["tokens"].update(dict(id=row["id"], max_bandwidth=rate), ["id"])
                    changed = _token({**row, "max_bandwidth": rate})
        if changed is not None:
            self.record_event(TOKEN_CHANGED, client=name, detail=f"maxBandwidth {rate or 'none of its own'}")
        return changed

    def token_bandwidth(self, name: str) -> int:
        """The bandwidth limit of ``name``'s active token (0: none of its own, or no active token)."""
        now = self._clock()
        for row in self.db["tokens"].find(name=name, revoked_at=None):
            record = _token(row)
            if record.active(now):
                return record.max_bandwidth
        return 0

    def list_tokens(self) -> List[TokenRecord]:
        return [_token(row) for row in self.db["tokens"].find(order_by="id")]

    def authenticate_token(self, token: str) -> Optional[TokenRecord]:
        """The active token record matching ``token``, or None."""
        digest = token_hash(token)
        now = self._clock()
        for row in self.db["tokens"].find(token_hash=digest):
            record = _token(row)
            if tokens_equal(row["token_hash"], digest) and record.active(now):
                self.db["tokens"].update(dict(id=row["id"], last_used_at=now), ["id"])
                return record
        return None

    def inactive_tokens(self, names: Iterable[str]) -> Set[str]:
        """Those of ``names`` that no longer have an active token."""
        now = self._clock()
        wanted = set(names)
        active = {
            row["name"]
            for row in self.db["tokens"].find(name={"in": list(wanted)})
            if _token(row).active(now)
        }
        return wanted - active

    # -- clients -------------------------------------------------------------

    def client_connected(self, name: str, address: str, version: str) -> None:
        """
        The client logged in here.  If the store still has it online on
        another node (it failed over from a node that was killed or is
        stopping and has not written its disconnect yet), this node takes
        the row over and records that disconnect: one conditional UPDATE,
        so that the disconnect is recorded once, here or there
        (``client_disconnected`` records nothing for a row another node
        holds).
        """
        now = self._clock()
        if self.node is not None:
            clients = self.db["clients"].table
            with self.db as tx:
                old = tx.executable.execute(
                    select(clients.c.node, clients.c.address).where(
                        clients.c.name == name, clients.c.online == True, clients.c.node.is_not(None),  # noqa: E712
                        clients.c.node != self.node)
                ).first()
                moved = old is not None and tx.executable.execute(
                    update(clients).where(clients.c.name == name, clients.c.online == True,  # noqa: E712
                                          clients.c.node == old[0]).values(node=self.node)
                ).rowcount
            if moved:
                self.record_event(CLIENT_DISCONNECTED, client=name, address=old[1],
                                  detail=f"its connection to server {old[0]} ended; it logged in again on "
                                         f"server {self.node}")
        self.db["clients"].upsert(
            dict(name=name, online=True, address=address, version=version[:32], connected_at=now, last_seen_at=now,
                 node=self.node),
            ["name"],
        )
        self.record_event(CLIENT_CONNECTED, client=name, address=address, detail=f"version {version}")

    def client_disconnected(self, name: str, address: str, reason: str) -> None:
        """
        The client left this server.  If another server holds it by now (it
        reconnected there before this one noticed), its rows are that
        server's and stay as they are, and that server recorded the
        disconnect when it took them (``client_connected``): nothing is
        recorded here, so the event is there once.
        """
        now = self._clock()
        with self.db as tx:
            clients = tx["clients"].table
            tunnels = tx["tunnels"].table
            mine = self._held_here(clients.c.node)
            changed = tx.executable.execute(
                update(clients).where(clients.c.name == name, mine).values(online=False, last_seen_at=now)
            ).rowcount
            moved = not changed and tx["clients"].find_one(name=name) is not None
            if not moved:
                if not changed:
                    tx["clients"].insert(dict(name=name, online=False, last_seen_at=now))
                tx.executable.execute(
                    update(tunnels).where(tunnels.c.client == name).values(status="down", reason=reason, updated_at=now)
                )
        if not moved:
            self.record_event(CLIENT_DISCONNECTED, client=name, address=address, detail=reason)

    # -- nodes: several server processes on one database ----------------------
    #
    # Each server process is a node: an id of its own (kept in its data
    # directory), and a row in ``nodes`` with a lease it renews every
    # ``NODE_RENEW`` seconds (``gotaxy.server.lease.NodeLease``).  Rows that
    # describe live state (clients online, tunnels up, history sessions
    # open) name the node that holds them.  A node that starts releases its
    # own rows, left from its previous run, and never another's; the rows
    # of a node whose lease ran out (killed, its machine gone) are released
    # by whichever node notices first: deleting the node's expired row is
    # the claim, so exactly one node releases them.  Times come from the
    # store's clock: the nodes' clocks must agree (NTP) to well within the
    # lease.

    def _held_here(self, column: Any) -> Any:
        """Rows this node may change as its own: its own, and those no node holds."""
        if self.node is None:
            return true()
        return or_(column == self.node, column.is_(None))

    def _release(self, tx: Any, held: Callable[[Any], Any], reason: str, now: float) -> None:
        """Clients offline, tunnels down, history sessions ended: those ``held(node column)`` selects."""
        clients = tx["clients"].table
        tunnels = tx["tunnels"].table
        sessions = tx[HISTORY_SESSIONS].table
        tx.executable.execute(update(clients).where(clients.c.online == True, held(clients.c.node))  # noqa: E712
                              .values(online=False))
        tx.executable.execute(update(tunnels).where(tunnels.c.status == "up", held(tunnels.c.node))
                              .values(status="down", reason=reason, updated_at=now))
        tx.executable.execute(update(sessions).where(sessions.c.open == True, held(sessions.c.node))  # noqa: E712
                              .values(open=False, reason="server stopped"))

    def join_node(self, node: str, lease: float, reason: str, host: str = "", pid: int = 0,
                  advertise: str = "") -> List[str]:
        """
        Start as ``node`` with a lease of ``lease`` seconds: release the rows
        this node (or a server before nodes existed) left, and those of
        nodes whose lease ran out; return the ids of those nodes.
        """
        now = self._clock()
        self.node = node
        self.advertise = advertise[:300]
        with self.db as tx:
            nodes = tx[NODES].table
            values = dict(host=host[:255], pid=pid, started_at=now, lease_until=now + lease,
                          advertise_addr=advertise[:300])
            if not tx.executable.execute(update(nodes).where(nodes.c.node_id == node).values(**values)).rowcount:
                tx.executable.execute(insert(nodes).values(node_id=node, **values))
            self._release(tx, self._held_here, reason, now)
        return self.release_expired_nodes()

    def renew_node(self, lease: float, clients: Sequence[str] = (), tunnels: Sequence[Tuple[str, str]] = ()) -> bool:
        """
        Extend this node's lease; False if it had run out and another node
        released this one's rows: then the node takes back ``clients`` (online
        here) and ``tunnels`` (up here) and its lease starts again.
        """
        now = self._clock()
        with self.db as tx:
            nodes = tx[NODES].table
            if tx.executable.execute(
                update(nodes).where(nodes.c.node_id == self.node).values(lease_until=now + lease)
            ).rowcount:
                return True
            tx.executable.execute(insert(nodes).values(
                node_id=self.node, host="", pid=0, started_at=now, lease_until=now + lease,
                advertise_addr=self.advertise,
            ))
            table = tx["clients"].table
            for name in clients:
                tx.executable.execute(update(table).where(table.c.name == name).values(online=True, node=self.node))
            table = tx["tunnels"].table
            for client, name in tunnels:
                tx.executable.execute(update(table).where(table.c.client == client, table.c.name == name)
                                      .values(status="up", reason=None, node=self.node))
        return False

    def release_expired_nodes(self) -> List[str]:
        """Release the rows of every node whose lease ran out; return their ids."""
        now = self._clock()
        nodes = self.db[NODES].table
        with self.db as tx:
            expired = [row[0] for row in tx.executable.execute(
                select(nodes.c.node_id).where(nodes.c.lease_until < now, nodes.c.node_id != (self.node or ""))
            )]
        released = []
        clients = self.db["clients"].table
        for node in expired:
            reason = f"server {node} stopped renewing its lease"
            with self.db as tx:
                # The claim: of the nodes that noticed, the one that deletes the row releases.
                if not tx.executable.execute(
                    delete(nodes).where(nodes.c.node_id == node, nodes.c.lease_until < now)
                ).rowcount:
                    continue
                gone = list(tx.executable.execute(
                    select(clients.c.name, clients.c.address).where(clients.c.online == True,  # noqa: E712
                                                                    clients.c.node == node)))
                self._release(tx, lambda column, node=node: column == node, reason, now)
            # Its clients that did not log in on another node meanwhile: their disconnect, once (this node's claim).
            for name, address in gone:
                self.record_event(CLIENT_DISCONNECTED, client=name, address=address,
                                  detail=f"{reason} (killed, or its machine gone)")
            released.append(node)
        return released

    def leave_node(self) -> None:
        """At a clean stop: this node's lease ends now."""
        if self.node is None:
            return
        nodes = self.db[NODES].table
        with self.db as tx:
            tx.executable.execute(delete(nodes).where(nodes.c.node_id == self.node))

    def close_stale_sessions(self) -> None:
        """History sessions this node left open (it stopped without closing them) ended when last seen."""
        with self.db as tx:
            sessions = tx[HISTORY_SESSIONS].table
            tx.executable.execute(update(sessions).where(sessions.c.open == True, self._held_here(sessions.c.node))  # noqa: E712
                                  .values(open=False, reason="server stopped"))

    def live_nodes(self) -> List[Tuple[str, float]]:
        """The nodes whose lease runs, with the time it runs out, by id."""
        nodes = self.db[NODES].table
        with self.db as tx:
            return [(row[0], row[1]) for row in tx.executable.execute(
                select(nodes.c.node_id, nodes.c.lease_until).where(nodes.c.lease_until >= self._clock())
                .order_by(nodes.c.node_id)
            )]

    def forward_routes(self) -> List[Tuple[str, str, str]]:
        """
        The website names other live nodes serve, for forwarding
        (``gotaxy.server.forward``): (claim key, node, its advertised
        address) for each ``domain`` claim of a tunnel that is up on a node
        whose lease runs and that has a node-to-node listener.
        """
        claims, tunnels, nodes = (self.db[name].table for name in (CLAIMS, "tunnels", NODES))
        query = (
            select(claims.c.key, nodes.c.node_id, nodes.c.advertise_addr)
            .select_from(claims.join(tunnels, and_(tunnels.c.client == claims.c.owner_client,
                                                   tunnels.c.name == claims.c.owner_name))
                         .join(nodes, nodes.c.node_id == tunnels.c.node))
            .where(claims.c.kind == DOMAIN, claims.c.owner_kind == OWNER_TUNNEL, tunnels.c.status == "up",
                   nodes.c.lease_until >= self._clock(), nodes.c.node_id != (self.node or ""),
                   nodes.c.advertise_addr.isnot(None), nodes.c.advertise_addr != "")
        )
        with self.db as tx:
            return [(row[0], row[1], row[2]) for row in tx.executable.execute(query)]

    def list_clients(self) -> List[ClientRecord]:
        return [
            ClientRecord(
                name=row["name"],
                online=bool(row["online"]),
                address=row["address"],
                version=row["version"],
                connected_at=row["connected_at"],
                last_seen_at=row["last_seen_at"],
                node=row.get("node"),
            )
            for row in self.db["clients"].find(order_by="name")
        ]

    # -- tunnels and their ports ---------------------------------------------

    def claim_keys(self, address: PublicAddress) -> Tuple[Tuple[str, str], ...]:
        """``address.claim_keys``, a port's key prefixed with this node's id under ``port_scope``."""
        keys = address.claim_keys
        if self.port_scope is None or not address.by_port:
            return keys
        return tuple((kind, f"{self.port_scope}/{key}") for kind, key in keys)

    def address_owner(self, address: PublicAddress) -> Optional[Tuple[str, str]]:
        """The (client, tunnel) that holds ``address``'s claim, if any."""
        for kind, key in self.claim_keys(address):
            owner = self.claim_holder(kind, key)
            if owner is not None:
                return (owner.client or "", owner.name)
        return None

    def port_owner(self, port: int) -> Optional[Tuple[str, str]]:
        """The (client, tunnel) that holds TCP ``port``'s claim, or None."""
        return self.address_owner(PublicAddress.tcp(port))

    def held_ports(self, scheme: str) -> Set[int]:
        """The ports of ``scheme`` (``tcp``, ``udp``) that tunnels hold a claim on (on this node, under ``port_scope``)."""
        keys = self.claimed_keys(f"{scheme}-port")
        if self.port_scope is None:
            return {int(key) for key in keys if key.isdigit()}
        prefix = f"{self.port_scope}/"
        return {int(key[len(prefix):]) for key in keys if key.startswith(prefix) and key[len(prefix):].isdigit()}

    def reserved_ports(self) -> Set[int]:
        """The TCP ports that tunnels hold a claim on."""
        return self.held_ports("tcp")

    def claim_port(self, client: str, name: str, port: int) -> bool:
        """
        Claim ``port`` for the tunnel (True: now; False: it held it already);
        raises ``Claimed`` naming the tunnel that holds it.
        """
        return self.claim_address(client, name, PublicAddress.tcp(port))

    def release_port(self, client: str, name: str, port: int) -> bool:
        return self.release_address(client, name, PublicAddress.tcp(port))

    def claim_address(self, client: str, name: str, address: PublicAddress) -> bool:
        """
        Claim every key of ``address`` (its port, its host names) for the
        tunnel, each one INSERT (True: a key was claimed now; False: it held
        them all already); raises ``Claimed`` naming the holder, having given
        back what it claimed here.
        """
        owner = Owner.tunnel(client, name)
        fresh = []
        try:
            for kind, key in self.claim_keys(address):
                if self.claim(kind, key, owner):
                    fresh.append((kind, key))
        except Claimed:
            for kind, key in fresh:
                self.release(kind, key, owner)
            raise
        return bool(fresh)

    def release_address(self, client: str, name: str, address: PublicAddress) -> bool:
        owner = Owner.tunnel(client, name)
        released = [self.release(kind, key, owner) for kind, key in self.claim_keys(address)]
        return any(released)

    def _keep_only_address(self, client: str, name: str, address: Optional[PublicAddress]) -> None:
        """Give back the tunnel's claims on public addresses other than ``address``."""
        keep = set(self.claim_keys(address)) if address is not None else set()
        claims.release_owner(self.db, Owner.tunnel(client, name), claims.ADDRESS_KINDS, keep=keep)

    def _claim_tunnel_name(self, client: str, name: str) -> bool:
        return self.claim(claims.TUNNEL, tunnel_key(client, name), Owner.tunnel(client, name))

    def tunnel_up(self, client: str, name: str, type_: str, local_addr: str, address: PublicAddress,
                  spec: Dict[str, Any]) -> None:
        """
        Record the tunnel as up at ``address``; the address stays reserved
        for it (claimed, if the caller has not claimed it already), and an
        address it held before is given back.
        """
        now = self._clock()
        self.claim_address(client, name, address)
        self._claim_tunnel_name(client, name)
        row = dict(client=client, name=name, type=type_, local_addr=local_addr, address=address.text,
                   status="up", reason=None, updated_at=now, node=self.node)
        existing = self.db["tunnels"].find_one(client=client, name=name)
        if existing is None or existing.get("source") != SOURCE_SERVER:
            row["spec"] = json.dumps(spec)  # an operator's tunnel keeps the spec the operator gave
        self.db["tunnels"].upsert(row, ["client", "name"])
        self._keep_only_address(client, name, address)
        self.record_event(TUNNEL_OPENED, client=client, tunnel=name, detail=f"{address.description} -> {local_addr}")

    def tunnel_down(self, client: str, name: str, status: str, reason: str, event: str,
                    asked: Optional[Tuple[str, str, Dict[str, Any]]] = None) -> None:
        """
        Record why a tunnel is not up.  With ``asked`` (its type, local
        description and spec), a tunnel the store does not know yet (refused
        at its first open) is added, so the panel and console list it with
        the reason; at most ``MAX_TUNNEL_ROWS_PER_CLIENT`` per client, and it
        reserves no address.
        """
        now = self._clock()
        if self.db["tunnels"].find_one(client=client, name=name):
            self.db["tunnels"].update(
                dict(client=client, name=name, status=status, reason=reason, updated_at=now), ["client", "name"]
            )
        elif asked is not None and self.db["tunnels"].count(client=client) < MAX_TUNNEL_ROWS_PER_CLIENT:
            type_, local_addr, spec = asked
            row = dict(client=client, name=name, status=status, reason=reason, updated_at=now)
            if self._claim_tunnel_name(client, name):
                self.db["tunnels"].insert(
                    dict(row, type=type_, local_addr=local_addr, address=None, spec=json.dumps(spec),
                         source=SOURCE_CLIENT, enabled=True)
                )
            else:  # another server process added it a moment ago
                self.db["tunnels"].update(row, ["client", "name"])
        self.record_event(event, client=client, tunnel=name, detail=reason)

    def list_tunnels(self, client: Optional[str] = None) -> List[TunnelRecord]:
        filters = {"client": client} if client is not None else {}
        return [_tunnel(row) for row in self.db["tunnels"].find(order_by=["client", "name"], **filters)]

    def get_tunnel(self, client: str, name: str) -> Optional[TunnelRecord]:
        row = self.db["tunnels"].find_one(client=client, name=name)
        return _tunnel(row) if row else None

    def add_server_tunnel(self, client: str, name: str, type_: str, local_addr: str, spec: Dict[str, Any],
                          address: Optional[PublicAddress]) -> TunnelRecord:
        """
        Record a tunnel an operator defined for ``client`` (``address``
        None: pick on open).  Its name and address are claimed; refused with
        ``StoreError`` if the client has a tunnel of that name, ``Claimed``
        if another tunnel holds the address.
        """
        owner = Owner.tunnel(client, name)
        key = tunnel_key(client, name)
        if not self.claim(claims.TUNNEL, key, owner):
            raise StoreError(str(Claimed(claims.TUNNEL, key, owner)))
        try:
            if address is not None:
                self.claim_address(client, name, address)
        except Claimed:
            self.release(claims.TUNNEL, key, owner)
            raise
        now = self._clock()
        row = dict(
            client=client,
            name=name,
            type=type_,
            local_addr=local_addr,
            address=address.text if address is not None else None,
            spec=json.dumps(spec),
            status="down",
            reason="not opened yet",
            updated_at=now,
            source=SOURCE_SERVER,
            enabled=True,
        )
        try:
            self.db["tunnels"].insert(row)
        except BaseException:
            claims.release_owner(self.db, owner)
            raise
        shown_address = address.description if address is not None else "address picked by the server"
        self.record_event(TUNNEL_ADDED, client=client, tunnel=name, detail=f"{shown_address} -> {local_addr}")
        return _tunnel(row)

    def update_tunnel(self, client: str, name: str, event: str, detail: Optional[str] = None, **fields: Any) -> None:
        """
        Change a tunnel's stored settings (local_addr, address, spec,
        enabled).  A new address is claimed first (``Claimed`` if it is
        held) and the old one given back; None gives the address back.
        """
        allowed = {"local_addr", "address", "spec", "enabled"}
        if not set(fields) <= allowed:
            raise ValueError(f"cannot update {set(fields) - allowed}")
        if "address" in fields:
            address = fields["address"]
            if address is not None:
                self.claim_address(client, name, address)  # Claimed if another tunnel holds it
            self._keep_only_address(client, name, address)
            fields["address"] = address.text if address is not None else None
        if "spec" in fields:
            fields["spec"] = json.dumps(fields["spec"])
        self.db["tunnels"].update(dict(client=client, name=name, updated_at=self._clock(), **fields), ["client", "name"])
        self.record_event(event, client=client, tunnel=name, detail=detail)

    def remove_tunnel(self, client: str, name: str) -> None:
        """Forget a tunnel and give back its claims (its name, its port)."""
        self.db["tunnels"].delete(client=client, name=name)
        claims.release_owner(self.db, Owner.tunnel(client, name))
        self.record_event(TUNNEL_REMOVED, client=client, tunnel=name)

    # -- events --------------------------------------------------------------

    def record(self, event: Event) -> Event:
        """
        Write ``event`` to the events table; return it as recorded (with
        its row id and this store's node).  The one way an event is written:
        the state changes above call it too, and ``ThreadedStore`` hands
        what was recorded to the server's event bus.
        """
        if event.type not in TYPES or not TYPES[event.type].recorded:
            raise ValueError(f"{event.type!r} is not an event type of the events table (see gotaxy.events)")
        row_id = self.db["events"].insert(
            dict(at=event.at, type=event.type, client=event.client, tunnel=event.tunnel, address=event.address,
                 detail=event.detail, count=event.count, node=self.node)
        )
        recorded = attrs.evolve(event, id=row_id, node=self.node)
        if self.collect_recorded:
            with self._recorded_lock:
                self._recorded.append(recorded)
        return recorded

    def record_event(
        self,
        type_: str,
        client: Optional[str] = None,
        tunnel: Optional[str] = None,
        address: Optional[str] = None,
        detail: Optional[str] = None,
        count: int = 1,
    ) -> Event:
        """``record`` an event of ``type_`` that happens now."""
        return self.record(Event(type=type_, at=self._clock(), client=client, tunnel=tunnel, address=address,
                                 detail=detail, count=count))

    def take_recorded(self) -> List[Event]:
        """The events recorded since the last call, oldest first."""
        with self._recorded_lock:
            recorded, self._recorded = self._recorded, []
        return recorded

    def newest_event_id(self) -> Optional[int]:
        row = self.db.query("SELECT MAX(id) AS newest FROM events").next()
        return None if row["newest"] is None else int(row["newest"])

    def events_after(self, after: int, limit: int, also: Iterable[int] = ()) -> Tuple[List[Event], Optional[int]]:
        """
        For the outbox's tail: up to ``limit`` events with an id above
        ``after``, and those with an id in ``also`` (at most ``limit`` of
        them), oldest first; and the newest id in the table.
        """
        table = self.db["events"]
        rows = list(table.find(id={">": after}, order_by="id", _limit=limit))
        wanted = list(also)[:limit]
        if wanted:
            rows += list(table.find(id={"in": wanted}))
        rows.sort(key=lambda row: row["id"])
        return [_event(row) for row in rows], self.newest_event_id()

    def expire_events(self, before: float, limit: int = 1000) -> int:
        """
        Delete up to ``limit`` of the oldest events recorded before ``before``;
        return how many were deleted.  Callers repeat it, one store call per
        batch, so a large backlog never holds the store thread for long.
        """
        with self.db as tx:
            table = tx["events"]
            ids = [row["id"] for row in table.find(at={"<": before}, order_by="id", _limit=limit)]
            if ids:
                table.delete(id={"in": ids})
        return len(ids)

    def events(
        self,
        limit: int = 100,
        type_: Optional[str] = None,
        client: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        offset: int = 0,
    ) -> List[EventRecord]:
        """Newest first; ``type_`` ending in "." matches a family ("tunnel.")."""
        filters: Dict[str, Any] = {}
        if type_:
            filters["type"] = {"like": type_ + "%"} if type_.endswith(".") else type_
        if client:
            filters["client"] = client
        if since is not None and until is not None:
            filters["at"] = {"between": [since, until]}
        elif since is not None:
            filters["at"] = {">=": since}
        elif until is not None:
            filters["at"] = {"<=": until}
        rows = self.db["events"].find(
            order_by="-id", _limit=max(1, min(limit, 10000)), _offset=max(0, offset), **filters
        )
        return [_event(row) for row in rows]

    # -- operator accounts ---------------------------------------------------

    def ensure_admin(self, username: str, password: str) -> bool:
        """
        Create the account unless it exists; True if it was created.  Two
        processes starting at once on a new database create it once: the
        name is claimed first.
        """
        owner = Owner.operator(username)
        if not self.claim(claims.ADMIN, username, owner):
            return False
        try:
            self.db["admins"].insert(
                dict(username=username, password_hash=hash_password(password), created_at=self._clock())
            )
        except BaseException:
            self.release(claims.ADMIN, username, owner)
            raise
        return True

    def set_admin_password(self, username: str, password: str) -> None:
        """Hash and set (for the ``gotaxy`` command; the server hashes off this thread)."""
        self.set_admin_password_hash(username, hash_password(password))

    def set_admin_password_hash(self, username: str, password_hash: str) -> None:
        if not self.db["admins"].find_one(username=username):
            raise StoreError(f"no operator account named {username!r}")
        self.db["admins"].update(dict(username=username, password_hash=password_hash), ["username"])

    def rehash_admin_password(self, username: str, old_hash: str, new_hash: str) -> bool:
        """
        Replace ``username``'s hash with ``new_hash`` (the same password with
        today's parameters) if it is still ``old_hash``: one UPDATE, so that a
        password changed meanwhile, here or by another process, is not undone.
        """
        with self.db as tx:
            table = tx["admins"].table
            return bool(tx.executable.execute(
                update(table).where(table.c.username == username, table.c.password_hash == old_hash)
                .values(password_hash=new_hash)
            ).rowcount)

    def admin_password_hash(self, username: str) -> Tuple[bool, str]:
        """
        Whether ``username`` is an operator, and the argon2 hash to verify
        against: its own, or (no such user) a dummy one, so that verifying
        takes the same time and timing does not reveal which names exist.
        The server verifies on a thread pool of its own (``OperatorAuth``),
        never on the store's thread.
        """
        row = self.db["admins"].find_one(username=username)
        if row is None:
            return False, dummy_hash()
        return True, row["password_hash"]

    def verify_admin(self, username: str, password: str) -> bool:
        """Check a password right here (for the ``gotaxy`` command; the server uses ``OperatorAuth``)."""
        exists, stored = self.admin_password_hash(username)
        return verify_password(stored, password) and exists


def _scrubbed(text: str, url: str) -> str:
    """``text`` without the password of ``url``, should a driver's message quote it."""
    try:
        password = make_url(url).password
    except ArgumentError:
        return text.replace(url, shown_url(url))
    return text.replace(str(password), "***") if password else text


def _first_line(error: Exception) -> str:
    """A driver error's first line, without SQLAlchemy's "(Background on this error ...)"."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _tunnel(row: Dict[str, Any]) -> TunnelRecord:
    return TunnelRecord(
        client=row["client"],
        name=row["name"],
        type=row.get("type") or "tcp",
        local_addr=row.get("local_addr") or "",
        address=address_or_none(row.get("address")),
        status=row.get("status") or "down",
        reason=row.get("reason"),
        updated_at=row.get("updated_at"),
        source=row.get("source") or SOURCE_CLIENT,
        enabled=row.get("enabled") is not False,
        spec=_spec(row.get("spec")),
        node=row.get("node"),
    )


def _event(row: Dict[str, Any]) -> Event:
    return Event(
        id=row["id"],
        at=row["at"],
        type=row["type"],
        client=row["client"],
        tunnel=row["tunnel"],
        address=row["address"],
        detail=row["detail"],
        count=row.get("count") or 1,
        node=row.get("node"),
    )


def _spec(text: Optional[str]) -> Optional[Dict[str, Any]]:
    if not text:
        return None
    try:
        spec = json.loads(text)
    except ValueError:
        return None
    return spec if isinstance(spec, dict) else None


def _token(row: Dict[str, Any]) -> TokenRecord:
    return TokenRecord(
        name=row["name"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
        allow_domains=_domain_list(row.get("allow_domains")),
        max_bandwidth=int(row.get("max_bandwidth") or 0),
    )


def _domain_list(text: Optional[str]) -> Tuple[str, ...]:
    """A token's stored allowed domains (a JSON list), read defensively: anything else is no list."""
    if not text:
        return ()
    try:
        value = json.loads(text)
    except ValueError:
        return ()
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


class ThreadedStore:
    """
    The reactor-side face of ``Store``: every call runs on one dedicated
    thread and returns a Deferred.  ``start``/``stop`` are tied to the
    server's service lifetime.

    When the database is unreachable
        A call that fails because the database is not there fails with
        ``StoreUnreachable`` (one clear sentence), and the thread's
        connection is dropped, so that the first call after the database
        is back opens a new one.  ``keep`` is ``call`` for the writes that
        record what happened here and must not be lost (events, a client
        going offline, a tunnel closing): during an outage it queues the
        call, with the time it was made, up to ``MAX_KEPT`` of them, and
        its Deferred fires with None.  Every later call first writes what
        is queued, in order, on the same thread, so nothing written after
        the outage overtakes a write from during it.  The server calls the
        store every half second (the event tail), so the queue is written
        within about a second of the database's return.  ``unreachable``
        says whether the last call found the database gone;
        ``on_reachability`` hears every change (the server logs it).
    """

    #: The most writes ``keep`` queues during an outage; further ones are counted and dropped.
    MAX_KEPT = 10_000

    def __init__(self, store: Store, reactor: Any) -> None:
        self.store = store
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="gotaxy-store")
        #: Called on the reactor thread with each event a call recorded, in
        #: order, before that call's Deferred fires (the core publishes them).
        self.on_recorded: Optional[Callable[[Event], None]] = None
        #: Called on the reactor thread with (unreachable, message) when that changes.
        self.on_reachability: Optional[Callable[[bool, str], None]] = None
        store.collect_recorded = True
        #: Writes kept during an outage: (when, function, args, kwargs); touched on the store's thread only.
        self._kept: Deque[Tuple[float, Callable[..., Any], Any, Any]] = collections.deque()
        self.dropped = 0  #: writes ``keep`` could not queue (``MAX_KEPT`` reached)
        self._kept_failures: List[Tuple[Failure, str]] = []  # kept writes refused when written (store thread)
        self.unreachable = False
        self._told: Optional[bool] = False  # what on_reachability last heard (reactor thread)

    @property
    def kept(self) -> int:
        """Writes waiting for the database."""
        return len(self._kept)

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        self._pool.stop()
        self.store.close()

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> "Deferred[T]":
        d = deferToThreadPool(self._reactor, self._pool, self._run, function, args, kwargs)
        d.addCallback(self._deliver)
        return d

    def keep(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """``call``, but during an outage the write is queued (see the class) and the Deferred fires with None."""
        return self.call(self._write_or_keep, self.store.now(), function, args, kwargs)

    def _run(self, function: Callable[..., Any], args: Any, kwargs: Any) -> Tuple[Any, List[Event], bool, List[Any]]:
        """On the store's thread: the call's result (or its Failure), the events it recorded, reachability."""
        try:
            if function == self._write_or_keep:
                result = function(*args, **kwargs)  # says itself whether the database answered
            else:
                self._write_kept()
                result = function(*args, **kwargs)
                self.unreachable = False
        except BaseException as error:
            if is_unreachable(error):
                self._lost()
                result = Failure(StoreUnreachable(self.unreachable_message(error)))
            else:
                result = Failure()
        failures, self._kept_failures = self._kept_failures, []
        return result, self.store.take_recorded(), self.unreachable, failures

    def _lost(self) -> None:
        self.store.reset_connection()
        self.unreachable = True

    def _write_or_keep(self, when: float, function: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """On the store's thread: the queue, then ``function``; queued instead if the database is gone."""
        try:
            self._write_kept()
            result = function(*args, **kwargs)
        except BaseException as error:
            if not is_unreachable(error):
                self.unreachable = False  # it answered, with a refusal
                raise
            if len(self._kept) >= self.MAX_KEPT:
                self.dropped += 1
                raise
            self._lost()
            self._kept.append((when, function, args, kwargs))
            return None
        self.unreachable = False
        return result

    def _write_kept(self) -> None:
        """Write the queued writes, oldest first; raises (and keeps the rest) if the database is still gone."""
        while self._kept:
            when, function, args, kwargs = self._kept[0]
            try:
                with self.store.as_of(when):
                    function(*args, **kwargs)
            except BaseException as error:
                if is_unreachable(error):
                    raise
                # Refused for a reason of its own: retrying cannot help (logged by _deliver).
                self._kept_failures.append((Failure(), getattr(function, "__name__", "?")))
            self._kept.popleft()

    def unreachable_message(self, error: BaseException) -> str:
        return (f"the server's database ({self.store.shown_url}) is unreachable: "
                f"{_scrubbed(_first_line(error), self.store.url)}")

    def _deliver(self, outcome: Tuple[Any, List[Event], bool, List[Any]]) -> Any:
        result, recorded, unreachable, failures = outcome
        for failure, what in failures:
            _log.failure("a write kept while the database was unreachable ({what}) failed when it was back",
                         failure, what=what)
        if self.on_recorded is not None:
            for event in recorded:
                self.on_recorded(event)
        if unreachable != self._told:
            self._told = unreachable
            if self.on_reachability is not None:
                message = str(result.value) if unreachable and isinstance(result, Failure) else ""
                self.on_reachability(unreachable, message)
        return result  # a Failure fails the Deferred
