# -*- test-case-name: tests.test_store -*-
"""
The persistent store: tokens, clients, tunnels with their ports, events,
operator accounts, and the tables of the history, the notifications and the
panel, on any SQLAlchemy database (SQLite in the data directory by default,
PostgreSQL for several servers on one database).  Import from here
(``from gotaxy.store import Store``); the modules are:

``schema``
    Every table as the newest schema has it: columns, indexes, UNIQUE
    column sets (``TABLES``).  No other module creates a table.
``migrations``
    The schema version and ``MIGRATIONS``, applied in order when a
    ``Store`` opens a database (at every server start, and by ``gotaxy
    migrate``); a database a newer Gotaxy migrated is refused.
``store``
    ``Store``, the synchronous data access on ``dataset`` (nodes and their
    leases among it), its records (``TokenRecord``, ...) and
    ``ThreadedStore``, the reactor-side face that runs every call on one
    dedicated thread.
``claims``
    Who holds a public port, a domain, a token's or tunnel's name, an
    account: one row each under UNIQUE(kind, key), so a claim is one INSERT
    that can fail, never a read followed by a write (``Claims`` is the
    reactor-side face a proxy type claims its address through).
``lockouts``
    Failed log-ins and lock-outs, counted here so that every server process
    sharing the store enforces them.

Adding a table
    1. Add a ``TableSpec`` to ``schema.TABLES`` (and a name constant next to
       the others if another module uses it).
    2. Append ``Migration(N, "what it is for", ensure("your_table"))`` to
       ``migrations.MIGRATIONS``, N being the last version plus one.

Adding a column or an index
    Add it to its table's ``TableSpec``, and append a migration
    ``ensure("that_table")``: it adds whatever the table lacks.

Anything else (moving data, renaming a column, a UNIQUE on data that may
hold duplicates)
    A migration with a function of your own: portable SQL only (it runs on
    SQLite and PostgreSQL), safe to run twice, and safe on a database that
    earlier migrations created with today's ``TABLES`` (see the docstring of
    ``gotaxy.store.migrations``).  Test it with a database of the older
    schema, as tests/test_store_migrations.py does with the 0.1.0 store in
    tests/data/.

Every store test that takes the ``store_url`` fixture runs on SQLite and on
a PostgreSQL the test run starts itself (tests/postgres.py).
"""

from gotaxy.store.dataset_import import import_dataset

import_dataset()  # before any module of the store imports dataset: see dataset_import

from gotaxy.store.store import (  # noqa: E402
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
    StoreUnreachable,
    ThreadedStore,
    TokenRecord,
    TunnelRecord,
    default_url,
    failure_logger,
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
    "StoreUnreachable",
    "ThreadedStore",
    "TokenRecord",
    "TunnelRecord",
    "default_url",
    "failure_logger",
]
