# -*- test-case-name: tests.test_store -*-
"""
The persistent store: tokens, clients, tunnels with their ports, events,
operator accounts, and the tables of the history, the notifications and the
panel.  Import from here (``from gotaxy.store import Store``); the modules
are:

``schema``
    Every table: its columns and indexes (``TABLES``).  No other module
    creates a table.
``store``
    ``Store``, the synchronous data access on ``dataset``, its records
    (``TokenRecord``, ...) and ``ThreadedStore``, the reactor-side face that
    runs every call on one dedicated thread.

Adding a table
    Add a ``TableSpec`` to ``schema.TABLES`` (and a name constant if another
    module uses it).  ``Store`` creates missing tables, columns and indexes
    when it opens the database.
"""

from gotaxy.store.store import (
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    CLIENT_KICKED,
    CLIENT_REPLACED,
    CONFIG_RELOADED,
    JOIN_PIN_SETTING,
    LOGIN_FAILED,
    MAX_TUNNEL_ROWS_PER_CLIENT,
    OPERATOR_LOCKED_OUT,
    OPERATOR_LOGIN_FAILED,
    OPERATOR_PASSWORD_CHANGED,
    SERVER_STARTED,
    SOURCE_CLIENT,
    SOURCE_SERVER,
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
    ClientRecord,
    EventRecord,
    Store,
    StoreError,
    ThreadedStore,
    TokenRecord,
    TunnelRecord,
    default_url,
)

__all__ = [
    "CLIENT_CONNECTED",
    "CLIENT_DISCONNECTED",
    "CLIENT_KICKED",
    "CLIENT_REPLACED",
    "CONFIG_RELOADED",
    "JOIN_PIN_SETTING",
    "LOGIN_FAILED",
    "MAX_TUNNEL_ROWS_PER_CLIENT",
    "OPERATOR_LOCKED_OUT",
    "OPERATOR_LOGIN_FAILED",
    "OPERATOR_PASSWORD_CHANGED",
    "SERVER_STARTED",
    "SOURCE_CLIENT",
    "SOURCE_SERVER",
    "TOKEN_CREATED",
    "TOKEN_REVOKED",
    "TUNNEL_ADDED",
    "TUNNEL_CLOSED",
    "TUNNEL_DISABLED",
    "TUNNEL_EDITED",
    "TUNNEL_ENABLED",
    "TUNNEL_ERROR",
    "TUNNEL_OPENED",
    "TUNNEL_REFUSED",
    "TUNNEL_REMOVED",
    "ClientRecord",
    "EventRecord",
    "Store",
    "StoreError",
    "ThreadedStore",
    "TokenRecord",
    "TunnelRecord",
    "default_url",
]
