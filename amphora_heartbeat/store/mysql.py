"""MySQL 8 and MariaDB ≥ 10.6 through PyMySQL (the optional ``mysql`` extra) or mysqlclient.

For the database Octavia itself runs on.  What differs from the other engines
lives here: upserts are ``INSERT ... ON DUPLICATE KEY UPDATE`` with ``VALUES()``
(the one spelling both servers run); a claim is a ``SELECT ... FOR UPDATE SKIP
LOCKED`` then an ``UPDATE`` in one transaction (neither server updates a table
through a subquery on itself); booleans are ``TINYINT(1)``; time columns are
``DATETIME`` without fractional seconds, as Octavia's migrations make them; the
session runs at ``READ COMMITTED`` rather than the servers' ``REPEATABLE READ``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, TypeVar

from .base import (
    LIVE,
    SQLStore,
    StatsUpsert,
    StoreDataError,
    StoredView,
    StoreError,
    TickWrite,
    stats_rows,
)
from .reuse import ParsedViews
from .url import DatabaseURL, parse_url

__all__ = ["DRIVERS", "MYSQL_DDL", "MySQLStore", "connect_args"]

log = logging.getLogger("amphora_heartbeat.store")

T = TypeVar("T")

#: Driver name (as a URL's ``mysql+DRIVER://`` names it) to its module, in the
#: order a plain ``mysql://`` URL tries them: PyMySQL first (see the MariaDB how-to
#: for the measurement behind the choice).
DRIVERS = {"pymysql": "pymysql", "mysqldb": "MySQLdb"}

# Server errors after which the transaction was rolled back and may simply run
# again: a deadlock (a Galera certification failure reports the same code) and
# a lock wait timeout.
_RETRIED = frozenset({1213, 1205})
# Client error codes start at 2000 (2006 gone away, 2013 lost, 2003 cannot
# connect, ...): the connection is unusable and is reopened at the next call.
_CLIENT_ERRORS = 2000
# Seconds a statement waits for a row lock before error 1205 (the server's
# default is 50): shorter than the driver's read timeout, so that a long wait
# ends as a retried error rather than a dropped connection.
_LOCK_WAIT = 10

_SESSION = (
    # Each statement sees what other managers committed before it, and locks
    # only the rows it reads (no gap locks between the keys of an upsert).
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    f"SET SESSION innodb_lock_wait_timeout = {_LOCK_WAIT}",
)

_STATS = ("bytes_in", "bytes_out", "active_connections", "total_connections", "request_errors")
_STATS_INSERT = (
    f"INSERT INTO listener_statistics (listener_id, amphora_id, {', '.join(_STATS)})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
)
# VALUES(c) is the row that was to be inserted.  MySQL 8.0.20+ prefers a row
# alias (deprecation warning 1287, still accepted); MariaDB has no row alias.
_STATS_REPLACE = _STATS_INSERT + ", ".join(f"{c} = VALUES({c})" for c in _STATS)
# A sum past the BIGINT column is NULL, which NOT NULL refuses (error 1048, a data
# error), as on the other engines.
_STATS_ADD = _STATS_INSERT + ", ".join(
    f"{c} = VALUES({c})"
    if c == "active_connections"
    else f"{c} = IF({c} > {(1 << 63) - 1} - VALUES({c}), NULL, {c} + VALUES({c}))"
    for c in _STATS
)
# As base.HEALTH_UPSERT.  MySQL assigns left to right, each assignment seeing the
# ones before it, so busy is decided first, from the row as it was.  {ahead} is a
# time literal the store formats itself: the drivers send executemany() as one
# multi-row INSERT only when the clause after VALUES holds no parameter.
_MOVES = "VALUES(last_update) > last_update OR last_update > '{ahead}'"
_HEALTH_UPSERT = (
    "INSERT INTO amphora_health (amphora_id, last_update, busy) VALUES (%s, %s, %s)"
    f" ON DUPLICATE KEY UPDATE busy = IF({_MOVES}, false, busy),"
    f" last_update = IF({_MOVES}, VALUES(last_update), last_update)"
)
# The views, one row per amphora with its listeners and pools as JSON built by
# the server: a tenth of the rows of the portable UNION statement, which the
# driver would otherwise turn into Python values one by one.  The same tables
# and rules (live rows only; UDP listeners down as base._build_views finds them).
_MYSQL_VIEW_SQL = (
    "SELECT a.id, a.status, lb.id, a.lb_network_ip, lb.enabled, lb.provisioning_status,"
    " lb.operating_status,"
    " (SELECT JSON_OBJECTAGG(l.id, JSON_ARRAY(l.operating_status, l.protocol, l.enabled))"
    " FROM listener l WHERE l.load_balancer_id = lb.id),"
    " (SELECT JSON_OBJECTAGG(p.id, JSON_ARRAY(p.operating_status,"
    " (SELECT JSON_ARRAYAGG(JSON_ARRAY(m.id, m.operating_status)) FROM member m"
    " WHERE m.pool_id = p.id))) FROM pool p WHERE p.load_balancer_id = lb.id),"
    " (SELECT JSON_ARRAYAGG(l.id) FROM listener l WHERE l.load_balancer_id = lb.id"
    " AND l.protocol = 'UDP' AND NOT EXISTS (SELECT 1 FROM pool p JOIN member m"
    " ON m.pool_id = p.id WHERE p.id = l.default_pool_id AND p.load_balancer_id = lb.id"
    " AND m.enabled))"
    ", s.boot, s.seq, s.seen"
    " FROM amphora a JOIN load_balancer lb ON lb.id = a.load_balancer_id"
    " LEFT JOIN amphora_heartbeat_seq s ON s.amphora_id = a.id"
    f" WHERE a.id IN %s AND {LIVE}"
)
# The claim: the candidates by a plain read, then their health rows locked
# (others' locked rows skipped) and checked again, then marked busy.
# Not busy and stale, or busy with an expired claim (a lease: see store.claims).
_STALE_OR_EXPIRED = "((busy = false AND last_update < %s) OR (busy = true AND last_update < %s))"
_CANDIDATES = (
    "SELECT h.amphora_id FROM amphora_health h JOIN amphora a ON a.id = h.amphora_id"
    " JOIN load_balancer lb ON lb.id = a.load_balancer_id"
    " WHERE h.amphora_id IN %s AND ((h.busy = false AND h.last_update < %s)"
    " OR (h.busy = true AND h.last_update < %s))"
    " AND a.status IN ('ALLOCATED', 'FAILOVER_STOPPED')"
    " AND lb.provisioning_status IN ('ACTIVE', 'ERROR')"
)
_LOCK_CANDIDATES = (
    f"SELECT amphora_id FROM amphora_health WHERE amphora_id IN %s AND {_STALE_OR_EXPIRED}"
    " ORDER BY amphora_id FOR UPDATE SKIP LOCKED"
)
_MARK_BUSY = "UPDATE amphora_health SET busy = true, last_update = %s WHERE amphora_id IN %s"


def _create(table: str, *columns: str) -> tuple[str]:
    return (f"CREATE TABLE {table} ({', '.join(columns)}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",)


_ID = "id VARCHAR(36) NOT NULL PRIMARY KEY"
_LOOKUP = ("name VARCHAR(255) NOT NULL PRIMARY KEY", "description VARCHAR(255)")
_OPERATING = "FOREIGN KEY (operating_status) REFERENCES operating_status (name)"
_OF_LB = "FOREIGN KEY (load_balancer_id) REFERENCES load_balancer (id)"
#: The tables for a new database, by name, in MySQL's types: as ``schema.DDL``,
#: with ``DATETIME`` (no fractional seconds, as Octavia's), ``BOOLEAN`` (that is
#: ``TINYINT(1)``), InnoDB and utf8mb4, and table-level foreign keys (MySQL 8
#: ignores a ``REFERENCES`` clause written on a column).
MYSQL_DDL: dict[str, tuple[str, ...]] = {
    "operating_status": _create("operating_status", *_LOOKUP),
    "provisioning_status": _create("provisioning_status", *_LOOKUP),
    "load_balancer": _create(
        "load_balancer",
        _ID,
        "enabled BOOLEAN NOT NULL",
        "provisioning_status VARCHAR(16) NOT NULL",
        "operating_status VARCHAR(16) NOT NULL",
        "updated_at DATETIME",
        "FOREIGN KEY (provisioning_status) REFERENCES provisioning_status (name)",
        _OPERATING,
    ),
    "listener": _create(
        "listener",
        _ID,
        "load_balancer_id VARCHAR(36)",
        "enabled BOOLEAN NOT NULL",
        "protocol VARCHAR(16) NOT NULL",
        "operating_status VARCHAR(16) NOT NULL",
        "default_pool_id VARCHAR(36)",
        "updated_at DATETIME",
        _OF_LB,
        _OPERATING,
    ),
    "pool": _create(
        "pool",
        _ID,
        "load_balancer_id VARCHAR(36)",
        "operating_status VARCHAR(16) NOT NULL",
        "updated_at DATETIME",
        _OF_LB,
        _OPERATING,
    ),
    "member": _create(
        "member",
        _ID,
        "pool_id VARCHAR(36) NOT NULL",
        "enabled BOOLEAN NOT NULL",
        "operating_status VARCHAR(16) NOT NULL",
        "updated_at DATETIME",
        "FOREIGN KEY (pool_id) REFERENCES pool (id)",
        _OPERATING,
    ),
    "amphora": _create(
        "amphora",
        _ID,
        "load_balancer_id VARCHAR(36)",
        "status VARCHAR(36)",
        "lb_network_ip VARCHAR(64)",
        "updated_at DATETIME",
        _OF_LB,
        "FOREIGN KEY (status) REFERENCES provisioning_status (name)",
    ),
    "amphora_health": _create(
        "amphora_health",
        "amphora_id VARCHAR(36) NOT NULL PRIMARY KEY",
        "last_update DATETIME NOT NULL",
        "busy BOOLEAN NOT NULL",
    ),
    "listener_statistics": _create(
        "listener_statistics",
        "listener_id VARCHAR(36) NOT NULL",
        "amphora_id VARCHAR(36) NOT NULL",
        "bytes_in BIGINT NOT NULL",
        "bytes_out BIGINT NOT NULL",
        "active_connections INTEGER NOT NULL",
        "total_connections BIGINT NOT NULL",
        "request_errors BIGINT NOT NULL",
        "PRIMARY KEY (listener_id, amphora_id)",
    ),
    "amphora_heartbeat_seq": _create(
        "amphora_heartbeat_seq",
        "amphora_id VARCHAR(36) NOT NULL PRIMARY KEY",
        "boot BIGINT NOT NULL",
        "seq BIGINT NOT NULL",
        "seen BIGINT NOT NULL",
    ),
}


def _view(row: Sequence[Any], views: ParsedViews) -> StoredView:
    """Return the :class:`StoredView` of one row of the JSON view statement."""
    amp, status, lb_id, ip = row[:4]
    down, boot, seq, seen = row[9:]
    # The load balancer's columns and its listeners' and pools' JSON texts.
    texts = tuple(row[4:9])
    view = views.reuse(lb_id, texts)
    if view is None:
        view = views.keep(lb_id, texts, _parse_view(lb_id, texts))
    udp_down = frozenset(json.loads(down)) if down is not None else frozenset()
    state = None if seq is None else (int(boot), int(seq), int(seen))
    return StoredView(amp, status, lb_id, view, udp_down, ip, state)


def _parse_view(lb_id: str, texts: tuple[Any, ...]) -> dict[str, Any]:
    """Return the rules' view mapping of one load balancer from its row's values."""
    enabled, provisioning, operating, listeners, pools = texts
    view: dict[str, Any] = {
        "id": lb_id,
        "enabled": bool(enabled),
        "provisioning_status": provisioning,
        "operating_status": operating,
    }
    if listeners is not None:
        view["listeners"] = {
            lid: {"operating_status": o, "protocol": p, "enabled": bool(e)}
            for lid, (o, p, e) in json.loads(listeners).items()
        }
    if pools is not None:
        view["pools"] = {
            pid: {
                "operating_status": o,
                "members": {m: {"operating_status": s} for m, s in ms or ()},
            }
            for pid, (o, ms) in json.loads(pools).items()
        }
    return view


def _import_driver(name: str | None) -> tuple[str, Any]:
    """Import the driver a URL names, or the first installed one; return (name, module)."""
    for candidate in [name] if name else list(DRIVERS):
        try:
            return candidate, importlib.import_module(DRIVERS[candidate])
        except ImportError:
            continue
    package = {"mysqldb": "mysqlclient"}.get(name or "", "PyMySQL")
    extra = "" if name == "mysqldb" else " (pip install 'amphora_heartbeat[mysql]')"
    raise ImportError(f"MySQLStore needs {package}{extra}")


def connect_args(url: DatabaseURL, connect_timeout: float, timeout: float) -> dict[str, Any]:
    """Return the driver's ``connect()`` arguments for ``url`` (both drivers take the same).

    ``connect_timeout`` and ``timeout`` (each read and write) are in seconds; a
    ``connect_timeout`` in the URL wins.  ``ssl_*`` options become the ``ssl``
    mapping.  Raise :class:`ValueError` for a ``connect_timeout`` that is not a
    whole number.
    """
    args: dict[str, Any] = {
        "database": url.database,
        "charset": "utf8mb4",
        "autocommit": True,
        "connect_timeout": max(1, round(connect_timeout)),
        "read_timeout": max(1, round(timeout)),
        "write_timeout": max(1, round(timeout)),
    }
    # What the URL leaves out stays the driver's default, which an option file
    # (read_default_file) may set.
    for key, value in (
        ("host", url.host),
        ("port", url.port),
        ("user", url.username),
        ("password", url.password),
    ):
        if value is not None:
            args[key] = value
    ssl = {}
    for key, value in url.options:
        if key.startswith("ssl_"):
            ssl[key[len("ssl_") :]] = value
        elif key == "connect_timeout":
            if not value.isdigit():
                raise ValueError(f"connect_timeout in a MySQL URL is whole seconds, not {value!r}")
            args[key] = int(value)
        else:
            args[key] = value
    if ssl:
        args["ssl"] = ssl
    return args


class MySQLStore(SQLStore):
    """A store in a MySQL 8 or MariaDB ≥ 10.6 database (Galera included).

    ``pip install 'amphora_heartbeat[mysql]'`` brings PyMySQL, the driver
    Octavia's deployments use; mysqlclient works too (``mysql+mysqldb://``).
    Several managers may share the database: failover candidates are claimed
    with ``FOR UPDATE SKIP LOCKED``, so each stale amphora is failed over by
    exactly one.  A transaction that loses a deadlock, a lock wait or a Galera
    certification is run again; a lost connection is reopened at the next call;
    every failure raises :class:`StoreError` with the operation undone.
    """

    _IDS = "IN ?"
    # MySQL has no ON CONFLICT: a duplicate key inserts nothing, rowcount 0.
    _SEQ_INSERT_STATEMENT = (
        "INSERT IGNORE INTO amphora_heartbeat_seq (amphora_id, boot, seq, seen) VALUES (?, ?, ?, ?)"
    )
    #: How many times a transaction that lost a deadlock (or a Galera
    #: certification, or a lock wait) is run again before giving up.
    deadlock_retries = 3

    def __init__(self, url: str, *, connect_timeout: float = 5.0, timeout: float = 30.0) -> None:
        """Parse ``url`` (``mysql[+pymysql|+mysqldb]://USER:PASSWORD@HOST:PORT/DB?...``).

        Connect lazily.  ``connect_timeout`` and ``timeout`` (a read or write
        that takes longer fails) are in seconds.  Raise :class:`ValueError` for
        a URL that is not a MySQL one, :class:`ImportError` without the driver.
        """
        parsed = parse_url(url)
        if parsed.engine != "mysql":
            raise ValueError("MySQLStore takes a mysql:// URL")
        self.driver, self._driver = _import_driver(parsed.driver)
        self._args = connect_args(parsed, connect_timeout, timeout)
        self._conn: Any = None
        self._views = ParsedViews()

    # --- engine hooks ------------------------------------------------------------------
    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def _id_set(self, ids: Collection[str]) -> Any:
        # The drivers render a tuple as a parenthesised list of quoted values.
        return tuple(ids)

    def _table_exists(self, cur: Any, table: str) -> bool:
        cur.execute(
            "SELECT 1 FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_name = %s",
            (table,),
        )
        return cur.fetchone() is not None

    def _ddl(self, table: str) -> tuple[str, ...]:
        return MYSQL_DDL[table]

    def _connection(self) -> Any:
        if self._conn is None:
            conn = self._driver.connect(**self._args)
            try:
                with conn.cursor() as cur:
                    for statement in _SESSION:
                        cur.execute(statement)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _failed(self, exc: Exception) -> StoreError:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        if code == 0 or code >= _CLIENT_ERRORS or isinstance(exc, self._driver.InterfaceError):
            self._drop()
        if isinstance(exc, (self._driver.DataError, self._driver.IntegrityError)):
            # The data (1406 too long, 1048 NULL, 1690 out of range...): not retried.
            return StoreDataError(f"MySQL refused the data: {exc}")
        return StoreError(f"MySQL: {exc}")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        error = self._driver.Error
        try:
            conn = self._connection()
            cur = conn.cursor()
            cur.execute("BEGIN")
        except error as exc:
            raise self._failed(exc) from exc
        try:
            yield cur
            conn.commit()
        except BaseException as exc:
            try:
                conn.rollback()
            except error:
                self._drop()
            if isinstance(exc, error):
                raise self._failed(exc) from exc
            raise
        finally:
            with contextlib.suppress(error):
                cur.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        try:
            with self._connection().cursor() as cur:
                yield cur
        except self._driver.Error as exc:
            raise self._failed(exc) from exc

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` (one transaction), again after a deadlock or lock wait timeout."""
        for attempt in range(self.deadlock_retries + 1):
            try:
                return operation()
            except StoreError as exc:
                cause = exc.__cause__
                code = cause.args[0] if cause is not None and cause.args else None
                if code not in _RETRIED or attempt == self.deadlock_retries:
                    raise
                log.info("MySQL transaction lost a deadlock or lock wait (%s); retrying", code)
                time.sleep(random.uniform(0.001, 0.02))
        raise AssertionError("unreachable")  # pragma: no cover

    # --- the statements that differ ----------------------------------------------------
    def read_views(self, amphora_ids: Collection[str]) -> dict[str, StoredView]:
        """Return the view of every live amphora among ``amphora_ids``, in one statement.

        The same result as the portable statement, with each amphora's
        listeners and pools built by the server as JSON, parsed only when the
        load balancer's row differs from the last read (:mod:`.reuse`).
        """
        if not amphora_ids:
            return {}
        with self._reading() as cur:
            cur.execute(_MYSQL_VIEW_SQL, (tuple(dict.fromkeys(amphora_ids)),))
            rows = cur.fetchall()
        views = self._views
        return {row[0]: _view(row, views) for row in rows}

    def _write_health(self, cur: Any, health: Sequence[tuple[str, float]], ahead: Any) -> int:
        # DATETIME keeps whole seconds: round up, so that the stored time is
        # never earlier than the heartbeat and the silence measured from it is
        # never longer than the real one (a failover may come up to 1 s late,
        # never early).  The drivers send executemany() as one multi-row INSERT.
        params = [(a, self._time(math.ceil(t)), False) for a, t in health]
        when = ahead.strftime("%Y-%m-%d %H:%M:%S")
        cur.executemany(_HEALTH_UPSERT.replace("{ahead}", when), params)
        return len(params)

    def _write_stats(self, cur: Any, upserts: Sequence[StatsUpsert]) -> int:
        for add, rows in stats_rows(upserts):
            cur.executemany(_STATS_ADD if add else _STATS_REPLACE, rows)
        return len(upserts)

    def write_tick(self, write: TickWrite) -> int:
        """Write one tick in one transaction (see :meth:`SQLStore.write_tick`).

        A transaction that lost a deadlock, a lock wait or a Galera
        certification is run again (a few times, after a short random pause);
        it was rolled back, so nothing is written twice.
        """
        return self._retrying(lambda: super(MySQLStore, self).write_tick(write))

    def claim_failovers(
        self,
        amphora_ids: Collection[str],
        cutoff: float,
        *,
        now: float,
        lease_cutoff: float | None = None,
    ) -> list[str]:
        """Mark busy each of ``amphora_ids`` that is still a candidate; return those marked.

        As :meth:`SQLStore.claim_failovers` (a lease stamped ``now``), in three
        statements of one transaction: the candidates, their health rows locked
        (rows another manager holds are skipped) and checked again, then marked.
        """
        if not amphora_ids:
            return []
        ids = tuple(sorted(amphora_ids))
        lease = 0.0 if lease_cutoff is None else min(lease_cutoff, cutoff)
        times = (self._time(cutoff), self._time(lease))
        return self._retrying(lambda: self._claim(ids, times, self._time(now)))

    def _claim(self, ids: tuple[str, ...], times: tuple[Any, Any], now: Any) -> list[str]:
        with self._transaction() as cur:
            cur.execute(_CANDIDATES, (ids, *times))
            candidates = tuple(sorted(row[0] for row in cur.fetchall()))
            if not candidates:
                return []
            cur.execute(_LOCK_CANDIDATES, (candidates, *times))
            claimed = [row[0] for row in cur.fetchall()]
            if claimed:
                cur.execute(_MARK_BUSY, (now, tuple(claimed)))
            return sorted(claimed)

    def stop_failovers(self, amphora_ids: Collection[str], now: float) -> int:
        """Mark the ``ALLOCATED`` amphorae among ``amphora_ids`` ``FAILOVER_STOPPED``.

        Return how many were changed; retried as :meth:`write_tick` is.
        """
        return self._retrying(lambda: super(MySQLStore, self).stop_failovers(amphora_ids, now))

    def finish_failover(self, amphora_id: str, *, succeeded: bool) -> None:
        """Delete the amphora's health row (success) or clear its busy flag (failure).

        Retried as :meth:`write_tick` is.
        """
        self._retrying(
            lambda: super(MySQLStore, self).finish_failover(amphora_id, succeeded=succeeded)
        )

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        self._drop()

    def __repr__(self) -> str:
        return f"MySQLStore(<url>, driver={self.driver!r})"
