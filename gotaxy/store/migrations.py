# -*- test-case-name: tests.test_store_migrations -*-
"""
The store's schema version and the migrations that bring a database to it.

A database records the migrations applied to it in ``schema_migrations``
(one row each: ``version``, ``description``, ``applied_at``); its schema
version is the highest.  ``migrate`` applies the missing ones in order, at
every start of the server and on ``gotaxy migrate``.  A database whose
version is higher than ``LATEST`` was migrated by a newer Gotaxy: it is
refused, never touched.

A database from before versions existed (Gotaxy 0.1.0: tables but no
``schema_migrations``) and a new, empty one are both at version 0.

Writing a migration
    Append a ``Migration`` to ``MIGRATIONS`` with the next number.  Its
    ``apply`` gets a SQLAlchemy connection inside a transaction.
    ``ensure("table", ...)`` gives every named table of ``schema.TABLES``
    its missing columns and indexes (creating the table if it is missing),
    which is all that adding a table or a column needs.  Anything else
    (moving data, renaming) is a function of your own, in portable SQL or
    SQLAlchemy Core.

    Make every step safe to run again and safe on a database created with
    today's ``TABLES``: on SQLite a schema change is not rolled back with
    the rest of a failed migration, and ``ensure`` in an earlier migration
    already creates the newest shape of a table (so a rename checks that the
    old column is still there).

Two servers starting at once on one database may both try a migration;
``version`` is UNIQUE, so one of them records it and the other, finding it
recorded when it retries, goes on.  Every step is retried while the error
is the other's doing (a lock, a CREATE it won), for up to a minute.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, List, Optional, Sequence, Set, Tuple, TypeVar

import attrs
from dataset.util import index_name
from sqlalchemy import Column, Float, Index, Integer, MetaData, Table, UniqueConstraint, inspect, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from gotaxy.store import schema

SCHEMA_TABLE = "schema_migrations"


class SchemaError(Exception):
    """A database this Gotaxy cannot use as it is; the message is for the user."""


@attrs.frozen
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _schema_table(metadata: MetaData) -> Table:
    return Table(
        SCHEMA_TABLE,
        metadata,
        Column("id", Integer, primary_key=True),
        Column("version", Integer, nullable=False),
        Column("description", schema.TEXT),
        Column("applied_at", Float),
        UniqueConstraint("version", name="uq_schema_migrations_version"),
    )


def table_of(name: str, metadata: Optional[MetaData] = None) -> Table:
    """``schema.TABLES[name]`` as a SQLAlchemy table (an ``id`` key first)."""
    spec = schema.TABLES[name]
    items: List[Any] = [Column("id", Integer, primary_key=True)]
    items += [Column(column, type_) for column, type_ in spec.columns]
    items += [Index(index_name(name, list(columns)), *columns) for columns in spec.indexes]
    items += [Index(_unique_name(name, columns), *columns, unique=True) for columns in spec.unique]
    return Table(name, metadata if metadata is not None else MetaData(), *items)


def _unique_name(table: str, columns: Sequence[str]) -> str:
    return "uq_" + index_name(table, list(columns))[3:]


def ensure(*names: str) -> Callable[[Connection], None]:
    """A migration step: the tables ``names`` of ``schema.TABLES``, with all their columns and indexes."""

    def apply(connection: Connection) -> None:
        for name in names:
            table = table_of(name)
            inspector = inspect(connection)
            if not inspector.has_table(name):
                table.create(connection)
                continue
            present = {c["name"] for c in inspector.get_columns(name)}
            for column in table.columns:
                if column.name not in present:
                    _add_column(connection, name, Column(column.name, column.type))
            indexed = {tuple(i["column_names"]) for i in inspector.get_indexes(name)}
            indexed |= {tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)}
            for index in table.indexes:
                if tuple(c.name for c in index.columns) not in indexed:
                    index.create(connection)

    return apply


def _add_column(connection: Connection, table: str, column: Column) -> None:
    """``ALTER TABLE ... ADD COLUMN`` through alembic, imported here: a start with nothing to add needs none of it."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    Operations(MigrationContext.configure(connection)).add_column(table, column)


#: The tables of Gotaxy 0.1.0, the release before schema versions.
RELEASE_0_1 = (
    "tokens", "clients", "tunnels", "events", "admins", "settings",
    schema.HISTORY_SESSIONS, schema.HISTORY_SAMPLES, schema.HISTORY_HOURLY,
    schema.NOTIFICATION_FAILURES, schema.NOTIFY_WEBHOOKS, schema.NOTIFY_MAIL,
    schema.WEB_SESSIONS, schema.WEB_API_TOKENS, schema.WEB_TOTP,
)

def _release_0_1(connection: Connection) -> None:
    if inspect(connection).has_table("settings"):
        # ``ensure`` makes settings.key UNIQUE (the newest TABLES): keep the
        # newest row of a key an older version wrote twice.
        connection.execute(text("DELETE FROM settings WHERE id NOT IN (SELECT MAX(id) FROM settings GROUP BY key)"))
    ensure(*RELEASE_0_1)(connection)


def _claims(connection: Connection) -> None:
    """
    The claims table, and the claims an older database holds implicitly:
    tunnels' reserved ports and names, live tokens' and API tokens' names,
    the operator accounts (``gotaxy.store.claims``).  Where old rows
    conflict (two tunnels that got one port through the old read-then-write
    race), the older row keeps it; a key claimed already is left alone, so
    running it again changes nothing.
    """
    ensure(schema.CLAIMS, schema.AUTH_FAILURES, schema.AUTH_LOCKS)(connection)
    from gotaxy.store import claims  # the kinds and owners

    metadata = MetaData()
    table = table_of(schema.CLAIMS, metadata)
    held = {(row.kind, row.key) for row in connection.execute(select(table.c.kind, table.c.key))}
    inspector = inspect(connection)
    wanted: List[Tuple[str, str, claims.Owner]] = []
    if inspector.has_table("tunnels"):
        # A 0.1.0 database has remote_port (migration 5 turns it into
        # address); a tunnel's address, where it has one, is its claim.
        tunnels = Table("tunnels", MetaData(), autoload_with=connection)
        for row in connection.execute(select(tunnels).order_by(tunnels.c.id)).mappings():
            owner = claims.Owner.tunnel(row["client"], row["name"])
            wanted.append((claims.TUNNEL, claims.tunnel_key(row["client"], row["name"]), owner))
            for kind, key in claims.stored_address_keys(dict(row)):
                wanted.append((kind, key, owner))
    if inspector.has_table("tokens"):
        tokens = table_of("tokens", metadata)
        for row in connection.execute(
            select(tokens.c.name).where(tokens.c.revoked_at.is_(None)).order_by(tokens.c.id)
        ):
            wanted.append((claims.TOKEN, row.name, claims.Owner.token(row.name)))
    if inspector.has_table(schema.WEB_API_TOKENS):
        api = table_of(schema.WEB_API_TOKENS, metadata)
        for row in connection.execute(select(api.c.name).order_by(api.c.id)):
            wanted.append((claims.API_TOKEN, row.name, claims.Owner.api_token(row.name)))
    if inspector.has_table("admins"):
        admins = table_of("admins", metadata)
        for row in connection.execute(select(admins.c.username).order_by(admins.c.id)):
            wanted.append((claims.ADMIN, row.username, claims.Owner.operator(row.username)))
    now = time.time()
    for kind, key, owner in wanted:
        if (kind, key) in held:
            continue
        held.add((kind, key))
        connection.execute(table.insert().values(
            kind=kind, key=key, owner_kind=owner.kind, owner_client=owner.client, owner_name=owner.name,
            created_at=now,
        ))


def _move_ports(connection: Connection) -> None:
    """
    Before proxy types a tunnel's public port was ``tunnels.remote_port`` and
    an operator's tunnel was ``local_addr`` plus that port: give those rows
    their ``address`` (``tcp:PORT``) and ``spec`` (frp's keys), so that they
    keep their ports and settings.  Rows that have an address are left alone.
    """
    ensure("tunnels")(connection)
    if "remote_port" not in {c["name"] for c in inspect(connection).get_columns("tunnels")}:
        return
    metadata = MetaData()
    tunnels = Table("tunnels", metadata, autoload_with=connection)
    rows = connection.execute(
        select(tunnels.c.id, tunnels.c.remote_port, tunnels.c.local_addr, tunnels.c.source, tunnels.c.spec)
        .where(tunnels.c.address.is_(None))
    ).fetchall()
    for row_id, port, local_addr, source, spec in rows:
        changes: dict = {}
        if port:
            changes["address"] = f"tcp:{int(port)}"
        host, _, local_port = (local_addr or "").rpartition(":")
        if spec is None and host and local_port.isdigit():
            changes["spec"] = json.dumps({
                "type": "tcp", "localIP": host.strip("[]"), "localPort": int(local_port),
                "remotePort": int(port or 0) if source == "server" else 0,
            })
        if changes:
            connection.execute(tunnels.update().where(tunnels.c.id == row_id).values(**changes))


def _notified(connection: Connection) -> None:
    """
    The events' notification columns; the events recorded before count as
    notified (their servers notified them as they happened), so that no
    server sends them again.
    """
    ensure("events")(connection)
    connection.execute(text("UPDATE events SET notified = at WHERE notified IS NULL"))


MIGRATIONS: Tuple[Migration, ...] = (
    Migration(1, "the tables of Gotaxy 0.1.0, with any column or index an older database lacks", _release_0_1),
    Migration(
        2,
        "several server processes on one database: nodes with leases, the node holding each client, tunnel and "
        "session, one roll-up per history hour, one row per setting",
        ensure(schema.NODES, "clients", "tunnels", "settings", schema.HISTORY_SESSIONS, schema.HISTORY_ROLLUPS),
    ),
    Migration(3, "every event names the server process that recorded it (the events table is an outbox)",
              ensure("events")),
    Migration(
        4,
        "claims: one row per port, name and account, UNIQUE(kind, key), made from the reservations the database "
        "holds; failed log-ins and lock-outs shared by every server process",
        _claims,
    ),
    Migration(
        5,
        "proxy types: a tunnel's public address (tunnels.address, 'tcp:PORT') and settings (tunnels.spec) "
        "instead of remote_port",
        _move_ports,
    ),
    Migration(6, "bans: addresses refused on every listener after repeated failures, shared by every server process",
              ensure(schema.BANS)),
    Migration(7, "history: a udp tunnel's datagrams in and out and its drops, per sample and per hour",
              ensure(schema.HISTORY_SAMPLES, schema.HISTORY_HOURLY)),
    Migration(8, "bans: whether a ban's end was told (the ban.expired event), once across every server process",
              ensure(schema.BANS)),
    Migration(9, "client certificates: those issued from the server's CA and the revoked serials, shared by every "
              "server process", ensure(schema.CLIENT_CERTIFICATES)),
    Migration(10, "tokens: the custom domains a token's client may claim (tokens.allow_domains)", ensure("tokens")),
    Migration(11, "tokens: a client's own bandwidth limit (tokens.max_bandwidth), set live by an operator",
              ensure("tokens")),
    Migration(12, "node commands: operator actions addressed to the server process that holds the client",
              ensure(schema.NODE_COMMANDS)),
    Migration(13, "events: which server process sends an event's notifications and when they were done "
              "(events.notify_node, events.notified), so that each event notifies once across every process",
              _notified),
    Migration(14, "nodes: the address of each node's node-to-node listener (cluster.advertiseAddr), where other "
              "nodes forward website requests for the clients it holds", ensure(schema.NODES)),
    Migration(15, "operators' TOTP secrets sealed under the server's key (web_totp.sealed_secret); a server seals "
              "the plain ones an older version stored when it starts", ensure(schema.WEB_TOTP)),
)

LATEST = MIGRATIONS[-1].version


def _applied_versions(connection: Connection) -> Set[int]:
    if not inspect(connection).has_table(SCHEMA_TABLE):
        return set()
    table = _schema_table(MetaData())
    return {row[0] for row in connection.execute(select(table.c.version))}


def applied_versions(engine: Engine) -> Set[int]:
    """The versions recorded in the database (empty: none yet)."""
    with engine.connect() as connection:
        return _applied_versions(connection)


def schema_version(engine: Engine) -> int:
    """The database's schema version (0: none recorded yet)."""
    return max(applied_versions(engine), default=0)


def _refuse_newer(version: int, shown_url: str) -> None:
    if version > LATEST:
        raise SchemaError(
            f"the database {shown_url} has schema version {version}, newer than this Gotaxy knows "
            f"({LATEST}): a newer Gotaxy migrated it; upgrade Gotaxy here too"
        )


def migrate(engine: Engine, shown_url: str, clock: Callable[[], float] = time.time,
            migrations: Sequence[Migration] = MIGRATIONS) -> List[Migration]:
    """
    Apply the migrations the database lacks, in order; return those this
    call applied (none: it was up to date, or another server applied them
    meanwhile).  ``shown_url`` names the database in errors (no password).
    """
    deadline = time.monotonic() + CONTENTION_SECONDS
    recorded = _retrying(deadline, lambda: applied_versions(engine))
    _refuse_newer(max(recorded, default=0), shown_url)
    applied: List[Migration] = []
    # Every version not recorded, not only those above the highest: a
    # database may lack one below it (made by a build in which a lower
    # version landed after a higher one), and each step is idempotent.
    missing = [m for m in migrations if m.version not in recorded]
    if not missing:
        return applied

    def create_schema_table() -> None:
        with engine.begin() as connection:
            _schema_table(MetaData()).create(connection, checkfirst=True)

    _retrying(deadline, create_schema_table)
    for migration in missing:
        if _apply(engine, migration, clock, deadline):
            applied.append(migration)
    return applied


#: Seconds a start keeps retrying while another server migrates the same
#: database (SQLite answers "database is locked" at once, without waiting,
#: when two writers would deadlock; PostgreSQL reports the loser of a race
#: for one CREATE or one UNIQUE version), and the pause between tries.
#: Only at start-up, before the reactor runs.
CONTENTION_SECONDS = 60.0
RETRY_DELAY = 0.2

T = TypeVar("T")


#: What a database says when another server's migration got in the way
#: (SQLite's lock and "already exists"/"duplicate column" errors; PostgreSQL's
#: deadlock and serialization failures), as against a database that cannot
#: be reached or refuses the user, which is reported at once.
_CONTENTION = ("locked", "busy", "already exists", "duplicate column", "deadlock", "could not serialize")


def _contended(error: DBAPIError) -> bool:
    if isinstance(error, IntegrityError):
        return True  # the loser of a race for one UNIQUE version (or one CREATE's catalog row, on PostgreSQL)
    text = str(error.orig).lower()
    return any(word in text for word in _CONTENTION)


def _retrying(deadline: float, step: Callable[[], T]) -> T:
    """``step()``, tried again after contention until ``deadline``; any other error, or the last, raised."""
    while True:
        try:
            return step()
        except DBAPIError as e:
            if not _contended(e) or time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_DELAY)


def _apply(engine: Engine, migration: Migration, clock: Callable[[], float], deadline: float) -> bool:
    """Apply ``migration`` unless it is recorded; False if another server applied it."""

    def attempt() -> Optional[bool]:
        try:
            with engine.begin() as connection:
                if migration.version in _applied_versions(connection):
                    return False
                migration.apply(connection)
                connection.execute(
                    _schema_table(MetaData()).insert().values(
                        version=migration.version, description=migration.description, applied_at=clock()
                    )
                )
            return True
        except DBAPIError:
            # Another server applying it at the same moment won the CREATE
            # (or the UNIQUE version).  If it is recorded now, go on; if not,
            # the other may still be at work: try again (the steps are
            # idempotent), the error raised if it lasts past the deadline.
            if migration.version in applied_versions(engine):
                return False
            raise

    return _retrying(deadline, attempt)
