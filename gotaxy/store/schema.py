# -*- test-case-name: tests.test_store -*-
"""
Every table of the store, in one place.

Each entry of ``TABLES`` is a table as the newest schema version has it:
its columns (name, SQLAlchemy type), its indexes and its UNIQUE column sets.
Every table also has an integer primary key ``id``.  Modules that keep data
in the store (the history, the panel's sessions, the managed webhooks, ...)
use the table names defined here and never create tables themselves: a
change here comes with a migration (``gotaxy.store.migrations``) that makes
it in existing databases.

Keep the types portable: ``String(n)`` is enforced by PostgreSQL (SQLite
ignores the length), so a value that comes from the network must be cut or
refused before it reaches a ``String`` column; use ``Text`` otherwise.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import attrs
from sqlalchemy import BigInteger, Boolean, Float, Integer, Unicode, UnicodeText
from sqlalchemy.types import TypeEngine


def String(length: int) -> TypeEngine:
    """Text of at most ``length`` characters (what dataset's ``types.string`` is)."""
    return Unicode(length)


@attrs.frozen
class TableSpec:
    columns: Tuple[Tuple[str, Any], ...]  #: (name, SQLAlchemy type); an integer key ``id`` comes first
    indexes: Tuple[Tuple[str, ...], ...] = ()  #: column lists to index
    unique: Tuple[Tuple[str, ...], ...] = ()  #: column lists no two rows may share (a UNIQUE index)


# -- table names other modules use -------------------------------------------

HISTORY_SESSIONS = "history_sessions"
HISTORY_SAMPLES = "history_samples"
HISTORY_HOURLY = "history_hourly"
HISTORY_ROLLUPS = "history_rollups"
NODES = "nodes"
NOTIFICATION_FAILURES = "notification_failures"
NOTIFY_WEBHOOKS = "notify_webhooks"
NOTIFY_MAIL = "notify_mail"
WEB_SESSIONS = "web_sessions"
WEB_API_TOKENS = "web_api_tokens"
WEB_TOTP = "web_totp"
CLAIMS = "claims"
AUTH_FAILURES = "auth_failures"
AUTH_LOCKS = "auth_locks"
BANS = "bans"
CLIENT_CERTIFICATES = "client_certificates"
NODE_COMMANDS = "node_commands"

#: Text of any length (what dataset has always used for ``types.text``).
TEXT = UnicodeText

TABLES: Dict[str, TableSpec] = {
    # -- tokens, clients, tunnels, events, operators (gotaxy.store.store) ----
    "tokens": TableSpec(
        columns=(
            ("name", String(64)),
            ("token_hash", String(64)),
            ("created_at", Float),
            ("expires_at", Float),
            ("revoked_at", Float),
            ("last_used_at", Float),
            # the custom domains this token's client may claim (JSON list; NULL: those the server allows)
            ("allow_domains", TEXT),
            #: its client's bandwidth limit, bytes a second each way, instead of maxBandwidthPerClient; 0 or NULL: none
            ("max_bandwidth", BigInteger),
        ),
        indexes=(("token_hash",), ("name",)),
    ),
    "clients": TableSpec(
        columns=(
            ("name", String(64)),
            ("online", Boolean),
            ("address", String(128)),
            ("version", String(32)),
            ("connected_at", Float),
            ("last_seen_at", Float),
            ("node", String(64)),  # the server process holding it while online (``nodes``)
        ),
        indexes=(("name",), ("node",)),
    ),
    "tunnels": TableSpec(
        columns=(
            ("client", String(64)),
            ("name", String(64)),
            ("type", String(16)),
            ("local_addr", String(128)),
            # The public address it holds (PublicAddress.text: "tcp:6000");
            # before proxy types, the port was in remote_port (moved at open
            # by Store._move_ports).
            ("address", String(4200)),
            ("spec", TEXT),  # frp's keys, JSON
            ("status", String(16)),
            ("reason", TEXT),
            ("updated_at", Float),
            ("source", String(8)),
            ("enabled", Boolean),
            ("node", String(64)),  # the server process that last opened it
        ),
        indexes=(("client", "name"), ("address",), ("node",)),
    ),
    "events": TableSpec(
        columns=(
            ("at", Float),
            ("type", String(32)),
            ("client", String(64)),
            ("tunnel", String(64)),
            ("address", String(128)),
            ("detail", TEXT),
            ("count", Integer),
            # The server process that wrote the row (None: the gotaxy
            # command); the outbox's tail skips its own (gotaxy.server.outbox).
            ("node", String(64)),
            # Its notifications (gotaxy.notify.once): sent by the node that
            # recorded it, or by the node in notify_node that took it over
            # from a node that stopped first; notified says when they were
            # done (None: not yet).
            ("notify_node", String(64)),
            ("notified", Float),
        ),
        indexes=(("at",), ("type",), ("client",), ("notified",)),
    ),
    "admins": TableSpec(
        columns=(("username", String(64)), ("password_hash", TEXT), ("created_at", Float)),
        indexes=(("username",),),
    ),
    # Facts about the server that tools reading the store need (``gotaxy
    # token create`` needs the join pin); never secrets.
    "settings": TableSpec(
        columns=(("key", String(64)), ("value", TEXT)),
        indexes=(("key",),),
        unique=(("key",),),
    ),
    # The server processes using this database (see gotaxy.store.store,
    # "Nodes"): each renews its lease; rows of live state name their node.
    NODES: TableSpec(
        columns=(
            ("node_id", String(64)), ("host", String(255)), ("pid", Integer),
            ("started_at", Float), ("lease_until", Float),
            # host:port of its node-to-node listener (cluster.advertiseAddr; "" or None: it has none)
            ("advertise_addr", String(300)),
        ),
        unique=(("node_id",),),
    ),
    # Operator commands addressed to the node that holds a client
    # (gotaxy.store.commands, gotaxy.server.commands): taken once, answered.
    NODE_COMMANDS: TableSpec(
        columns=(
            ("node", String(64)),
            ("kind", String(32)),
            ("args", TEXT),  # JSON, at most gotaxy.store.commands.MAX_ARGS bytes
            ("who", String(128)),
            ("created", Float),
            ("taken", Float),
            ("done", Float),
            ("result", TEXT),  # JSON: {"ok": true} or {"error": {"kind", "message", "field"}}
        ),
        indexes=(("node", "taken"), ("created",)),
    ),
    # -- who holds a port, a name, an account (gotaxy.store.claims) ----------
    CLAIMS: TableSpec(
        columns=(
            ("kind", String(16)),
            ("key", String(255)),
            ("owner_kind", String(16)),
            ("owner_client", String(64)),
            ("owner_name", String(64)),
            ("created_at", Float),
        ),
        indexes=(("owner_kind", "owner_client", "owner_name"),),
        unique=(("kind", "key"),),
    ),
    # -- failed log-ins and lock-outs (gotaxy.store.lockouts) ----------------
    AUTH_FAILURES: TableSpec(
        columns=(
            ("scope", String(16)),
            ("username", String(64)),
            ("address", String(128)),
            ("at", Float),
            ("pending", Boolean),
        ),
        indexes=(("scope", "address"), ("scope", "username"), ("at",)),
    ),
    AUTH_LOCKS: TableSpec(
        columns=(("scope", String(16)), ("key", String(200)), ("until", Float)),
        indexes=(("scope", "key"), ("until",)),
    ),
    # -- addresses banned after repeated failures (gotaxy.store.bans) --------
    BANS: TableSpec(
        columns=(
            ("address", String(64)),
            ("reason", String(200)),
            ("strikes", Integer),
            ("at", Float),
            ("until", Float),
            ("by", String(128)),
            #: its end was told (``ban.expired``), by whichever process saw it first
            ("expired", Boolean),
        ),
        indexes=(("until",),),
        unique=(("address",),),
    ),
    # Client certificates issued from the server's CA, and revoked serials
    # (gotaxy.store.client_certs): one row per serial.
    CLIENT_CERTIFICATES: TableSpec(
        columns=(
            ("serial", String(64)),
            ("name", String(64)),
            ("fingerprint", String(80)),
            ("issued_at", Float),
            ("not_after", Float),
            ("issued_by", String(128)),
            ("revoked_at", Float),
            ("revoked_by", String(128)),
        ),
        indexes=(("name",), ("revoked_at",)),
        unique=(("serial",),),
    ),
    # -- stability history (gotaxy.server.history) ---------------------------
    HISTORY_SESSIONS: TableSpec(
        columns=(
            ("client", String(64)), ("started", Float), ("ended", Float), ("reason", TEXT), ("open", Boolean),
            ("node", String(64)),
        ),
        indexes=(("client", "started"), ("ended",), ("node",)),
    ),
    HISTORY_SAMPLES: TableSpec(
        columns=(
            ("at", Float), ("client", String(64)), ("tunnel", String(64)),
            ("rtt", Float), ("connections", Integer), ("opened", Integer),
            ("bytes_in", BigInteger), ("bytes_out", BigInteger),
            ("rate_in", Float), ("rate_out", Float),
            # udp tunnels: datagrams each way and dropped, during the interval (schema version 7)
            ("datagrams_in", BigInteger), ("datagrams_out", BigInteger), ("dropped", BigInteger),
        ),
        indexes=(("client", "tunnel", "at"), ("at",)),
    ),
    HISTORY_HOURLY: TableSpec(
        columns=(
            ("hour", Float), ("client", String(64)), ("tunnel", String(64)),
            ("samples", Integer), ("rtt_avg", Float), ("rtt_max", Float),
            ("connections_max", Integer), ("opened", BigInteger),
            ("bytes_in", BigInteger), ("bytes_out", BigInteger),
            ("rate_in_max", Float), ("rate_out_max", Float),
            ("datagrams_in", BigInteger), ("datagrams_out", BigInteger), ("dropped", BigInteger),
        ),
        indexes=(("client", "tunnel", "hour"), ("hour",)),
    ),
    # One row per hour rolled up: the claim of the server process that did
    # it, so that two processes never roll up one hour twice.
    HISTORY_ROLLUPS: TableSpec(
        columns=(("hour", Float), ("node", String(64)), ("at", Float)),
        unique=(("hour",),),
    ),
    # -- notifications (gotaxy.notify.failures, gotaxy.notify.managed) -------
    NOTIFICATION_FAILURES: TableSpec(
        columns=(("at", Float), ("target", String(128)), ("event", String(64)), ("reason", TEXT)),
        indexes=(("at",),),
    ),
    NOTIFY_WEBHOOKS: TableSpec(
        columns=(
            ("name", String(64)), ("url", TEXT), ("secret", TEXT),
            ("events", TEXT), ("format", String(16)), ("created_at", Float),
        ),
        indexes=(("name",),),
    ),
    NOTIFY_MAIL: TableSpec(
        columns=(("address", String(254)), ("events", TEXT), ("created_at", Float)),
        indexes=(("address",),),
    ),
    # -- the panel's log-ins (gotaxy.web.auth) -------------------------------
    WEB_SESSIONS: TableSpec(
        columns=(
            ("session_hash", String(64)),
            ("username", String(64)),
            ("csrf_token", String(64)),
            ("created_at", Float),
            ("last_seen_at", Float),
            ("expires_at", Float),
            ("address", String(128)),
        ),
        indexes=(("session_hash",),),
    ),
    WEB_API_TOKENS: TableSpec(
        columns=(
            ("name", String(64)),
            ("token_hash", String(64)),
            ("username", String(64)),
            ("created_at", Float),
            ("last_used_at", Float),
        ),
        indexes=(("token_hash",), ("name",)),
    ),
    WEB_TOTP: TableSpec(
        # ``secret``: empty since schema 15 (plain text before); ``sealed_secret``: it sealed (gotaxy.sealing).
        columns=(("username", String(64)), ("secret", String(64)), ("sealed_secret", TEXT), ("enabled", Boolean),
                 ("last_step", Integer)),
        indexes=(("username",),),
    ),
}
