"""The health manager's database side: batched reads and writes over Octavia's tables.

A :class:`Store` reads the controller's view of every amphora heard in a tick in
one statement, and writes everything the tick decided in one transaction.  The
statements are shared (:mod:`.base`); each engine module supplies what differs:

* :mod:`.sqlite` — :class:`SQLiteStore`, the embedded default for one manager;
* :mod:`.postgres` — :class:`PostgresStore` (psycopg 3, the ``postgres`` extra),
  for several managers sharing one database;
* :mod:`.mysql` — :class:`MySQLStore` (PyMySQL, the ``mysql`` extra), MySQL 8 and
  MariaDB, the database Octavia itself runs on.

:func:`open_store` opens the engine a database URL names (:mod:`.url`: the forms
octavia.conf's ``[database] connection`` takes).  Time columns hold
naive UTC, as Octavia's do; the stores take and return seconds since the epoch.
A store object is not thread-safe: one thread (the manager's loop) uses it.
"""

from __future__ import annotations

from .base import (
    MAX_ID_LENGTH,
    StaleAmphora,
    StatsUpsert,
    Store,
    StoreConflict,
    StoreDataError,
    StoredView,
    StoreError,
    TickWrite,
    storable_id,
)
from .mysql import MySQLStore
from .postgres import PostgresStore
from .schema import (
    ELIGIBLE_AMPHORA_STATUSES,
    FAILOVER_LB_STATUSES,
    OPERATING_STATUSES,
    PROVISIONING_STATUSES,
    TABLES,
)
from .sqlite import SQLiteStore
from .url import DatabaseURL, parse_url

__all__ = [
    "ELIGIBLE_AMPHORA_STATUSES",
    "FAILOVER_LB_STATUSES",
    "MAX_ID_LENGTH",
    "OPERATING_STATUSES",
    "PROVISIONING_STATUSES",
    "TABLES",
    "DatabaseURL",
    "MySQLStore",
    "PostgresStore",
    "SQLiteStore",
    "StaleAmphora",
    "StatsUpsert",
    "Store",
    "StoreConflict",
    "StoreDataError",
    "StoreError",
    "StoredView",
    "TickWrite",
    "open_store",
    "parse_url",
    "storable_id",
]


def open_store(url: str) -> SQLiteStore | PostgresStore | MySQLStore:
    """Open the store a database URL names, as octavia.conf's ``[database] connection`` has it.

    ``sqlite:///RELATIVE/PATH``, ``sqlite:////ABSOLUTE/PATH`` or
    ``sqlite:///:memory:`` opens a :class:`SQLiteStore`;
    ``postgresql[+psycopg2|+psycopg]://...`` a :class:`PostgresStore`;
    ``mysql[+pymysql|+mysqldb]://...`` a :class:`MySQLStore`.  Raise
    :class:`ValueError` (one line naming the supported forms) for anything
    else, a plain file path included.
    """
    parsed = parse_url(url)
    if parsed.engine == "sqlite":
        return SQLiteStore(parsed.database)
    if parsed.engine == "postgresql":
        _check_libpq(parsed.libpq)
        return PostgresStore(parsed.libpq)
    return MySQLStore(url)


def _check_libpq(dsn: str) -> None:
    """Raise ValueError for a PostgreSQL URL libpq cannot parse (an unknown option, say)."""
    try:
        from psycopg import ProgrammingError  # noqa: PLC0415 - an optional extra
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415
    except ImportError:  # pragma: no cover - depends on the installed extras
        return
    try:
        conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        raise ValueError(f"bad PostgreSQL URL: {str(exc).strip().splitlines()[0]}") from None
