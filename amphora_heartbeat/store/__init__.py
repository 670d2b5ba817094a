"""The health manager's database side: batched reads and writes over Octavia's tables.

A :class:`Store` reads the controller's view of every amphora heard in a tick in
one statement, and writes everything the tick decided in one transaction.  The
statements are shared (:mod:`.base`); each engine module supplies what differs:

* :mod:`.sqlite` — :class:`SQLiteStore`, the embedded default for one manager;
* :mod:`.postgres` — :class:`PostgresStore` (psycopg 3, the ``postgres`` extra),
  for several managers sharing one database.

:func:`open_store` opens the engine a database URL names.  Time columns hold
naive UTC, as Octavia's do; the stores take and return seconds since the epoch.
A store object is not thread-safe: one thread (the manager's loop) uses it.
"""

from __future__ import annotations

from .base import StatsUpsert, Store, StoredView, StoreError, TickWrite
from .postgres import PostgresStore
from .schema import (
    ELIGIBLE_AMPHORA_STATUSES,
    FAILOVER_LB_STATUSES,
    OPERATING_STATUSES,
    PROVISIONING_STATUSES,
    TABLES,
)
from .sqlite import SQLiteStore

__all__ = [
    "ELIGIBLE_AMPHORA_STATUSES",
    "FAILOVER_LB_STATUSES",
    "OPERATING_STATUSES",
    "PROVISIONING_STATUSES",
    "TABLES",
    "PostgresStore",
    "SQLiteStore",
    "StatsUpsert",
    "Store",
    "StoreError",
    "StoredView",
    "TickWrite",
    "open_store",
]


def open_store(url: str) -> SQLiteStore | PostgresStore:
    """Open the store a ``--db`` URL names.

    ``sqlite:///PATH`` (``sqlite:////abs/path`` for an absolute path, as
    SQLAlchemy spells it; ``sqlite:///:memory:`` too) or a plain file path opens
    a :class:`SQLiteStore`; ``postgresql://...`` (or ``postgres://``) a
    :class:`PostgresStore`.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path.startswith("/"):
            raise ValueError(f"expected sqlite:///PATH, got {url!r}")
        path = path[1:] or ":memory:"
        return SQLiteStore(path)
    if "://" in url:
        raise ValueError(f"unsupported database URL scheme: {url.partition('://')[0]!r}")
    return SQLiteStore(url)
