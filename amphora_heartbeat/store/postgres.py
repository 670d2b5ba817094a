"""PostgreSQL through psycopg 3 (the optional ``postgres`` extra, imported on first use).

For several managers sharing one database: candidates are claimed with
``FOR UPDATE SKIP LOCKED``; views are built by the server as JSON; a tick's
statements go in one round trip (pipeline mode).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from .base import (
    HEALTH_UPSERT,
    LIVE,
    STATS_ADD,
    STATS_REPLACE,
    SQLStore,
    StatsUpsert,
    StoreConflict,
    StoreDataError,
    StoredView,
    StoreError,
    TickWrite,
    stats_rows,
)
from .reuse import ParsedViews

__all__ = ["PostgresStore"]

log = logging.getLogger("amphora_heartbeat.store")

# PostgreSQL builds each view as a JSON document itself: one row per amphora,
# parsed by psycopg in C, instead of a row per member folded in Python.  Same
# tables, same rules (live rows only; UDP listeners down as in _build_views).
_PG_VIEW_SQL = (
    "SELECT a.id, a.status, lb.id, a.lb_network_ip, s.boot, s.seq, s.seen,"
    " json_strip_nulls(json_build_object("
    "'id', lb.id, 'enabled', lb.enabled, 'provisioning_status', lb.provisioning_status,"
    " 'operating_status', lb.operating_status,"
    " 'listeners', (SELECT json_object_agg(l.id, json_build_object("
    "'operating_status', l.operating_status, 'protocol', l.protocol, 'enabled', l.enabled))"
    " FROM listener l WHERE l.load_balancer_id = lb.id),"
    " 'pools', (SELECT json_object_agg(p.id, json_build_object("
    "'operating_status', p.operating_status, 'members', (SELECT coalesce(json_object_agg("
    "m.id, json_build_object('operating_status', m.operating_status)), '{}'::json)"
    " FROM member m WHERE m.pool_id = p.id)))"
    " FROM pool p WHERE p.load_balancer_id = lb.id)))::text,"
    " (SELECT json_agg(l.id) FROM listener l WHERE l.load_balancer_id = lb.id"
    " AND l.protocol = 'UDP' AND NOT EXISTS (SELECT 1 FROM pool p JOIN member m"
    " ON m.pool_id = p.id WHERE p.id = l.default_pool_id AND p.load_balancer_id = lb.id"
    " AND m.enabled))"
    # Joining the id array (rather than a.id = ANY(...)) keeps the plan an
    # index lookup per id whatever the planner's statistics say.
    " FROM unnest(%s::varchar[]) AS ids (id) JOIN amphora a ON a.id = ids.id"
    " JOIN load_balancer lb ON lb.id = a.load_balancer_id"
    " LEFT JOIN amphora_heartbeat_seq s ON s.amphora_id = a.id"
    f" WHERE {LIVE}"
)


_PG_SEQ_INSERT = (
    "INSERT INTO amphora_heartbeat_seq (amphora_id, boot, seq, seen)"
    " SELECT r->>0, (r->>1)::bigint, (r->>2)::bigint, (r->>3)::bigint"
    " FROM json_array_elements(%s::json) AS r"
    " ON CONFLICT (amphora_id) DO NOTHING RETURNING amphora_id"
)
_PG_SEQ_UPDATE = (
    "UPDATE amphora_heartbeat_seq s SET boot = (r->>1)::bigint, seq = (r->>2)::bigint,"
    " seen = (r->>3)::bigint FROM json_array_elements(%s::json) AS r"
    " WHERE s.amphora_id = r->>0 AND s.boot = (r->>4)::bigint AND s.seq = (r->>5)::bigint"
    " AND s.seen = (r->>6)::bigint RETURNING s.amphora_id"
)


class PostgresStore(SQLStore):
    """A store in a PostgreSQL database (psycopg 3: ``pip install 'amphora_heartbeat[postgres]'``).

    For several managers sharing one database: failover candidates are claimed
    with ``FOR UPDATE SKIP LOCKED``, so each stale amphora is failed over by
    exactly one manager.  The connection is opened on first use and reopened
    after a failure; every failure raises :class:`StoreError` with the
    operation undone.  ``connect_timeout`` is in seconds.
    """

    _IDS = "IN (SELECT unnest(?::varchar[]))"
    _LOCK = "FOR UPDATE OF h SKIP LOCKED"
    #: How many times a tick that lost a deadlock is retried before giving up.
    deadlock_retries = 3

    def __init__(self, dsn: str, *, connect_timeout: float = 5.0) -> None:
        """Remember ``dsn`` (a ``postgresql://`` URL or key=value string); connect lazily."""
        try:
            import psycopg  # noqa: PLC0415 - an optional extra, imported only when used
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "PostgresStore needs psycopg 3: pip install 'amphora_heartbeat[postgres]'"
            ) from exc
        self._psycopg = psycopg
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._conn: Any = None
        self._statements: dict[str, str] = {}
        self._views = ParsedViews()

    def _sql(self, statement: str) -> str:
        converted = self._statements.get(statement)
        if converted is None:
            converted = self._statements[statement] = statement.replace("?", "%s")
        return converted

    def _id_set(self, ids: Collection[str]) -> Any:
        return list(ids)

    def _table_exists(self, cur: Any, table: str) -> bool:
        cur.execute("SELECT to_regclass(%s)", (table,))
        row = cur.fetchone()
        return row is not None and row[0] is not None

    def _connection(self) -> Any:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            conn = self._psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name="amphora_heartbeat",
                # The view statement's estimated cost (subqueries per row) would
                # trigger JIT compilation, which costs far more than it saves on
                # these small index lookups.
                options="-c jit=off",
            )
            self._conn = conn
        return conn

    def _failed(self, exc: Exception) -> StoreError:
        conn = self._conn
        if conn is not None and (conn.broken or isinstance(exc, self._psycopg.OperationalError)):
            # A lost server: drop the connection, the next call opens a new one.
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None
        if isinstance(exc, (self._psycopg.DataError, self._psycopg.IntegrityError)):
            # The data, not the server: the same write would fail again.
            return StoreDataError(f"PostgreSQL refused the data: {exc}".strip())
        return StoreError(f"PostgreSQL: {exc}".strip())

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        psycopg = self._psycopg
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        psycopg = self._psycopg
        try:
            with self._connection().cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def _write_health(self, cur: Any, health: Sequence[tuple[str, float]], ahead: Any) -> int:
        # One statement over a JSON array rather than a statement per row (psycopg
        # dumps a JSON text far faster than arrays); rows are taken in (sorted)
        # array order.  to_timestamp(...) AT TIME ZONE 'UTC' is naive UTC.
        cur.execute(
            HEALTH_UPSERT.replace(
                "VALUES (?, ?, ?)",
                "SELECT r->>0, to_timestamp((r->>1)::float8) AT TIME ZONE 'UTC', false"
                " FROM json_array_elements(%s::json) AS r",
            ).replace("?", "%s"),
            (json.dumps(health), ahead, ahead),
        )
        return len(health)

    def _write_seqs(
        self,
        cur: Any,
        seqs: Sequence[tuple[str, tuple[tuple[int, int, int] | None, tuple[int, int, int]]]],
    ) -> int:
        # Two statements over JSON arrays, each returning the rows it matched: a
        # row short means another manager moved a state meanwhile.
        new = [[a, *n] for a, (o, n) in seqs if o is None]
        moved = [[a, *n, *o] for a, (o, n) in seqs if o is not None]
        matched = 0
        if new:
            cur.execute(_PG_SEQ_INSERT, (json.dumps(new),))
            matched += len(cur.fetchall())
        if moved:
            cur.execute(_PG_SEQ_UPDATE, (json.dumps(moved),))
            matched += len(cur.fetchall())
        if matched != len(seqs):
            raise StoreConflict("a sequence state changed meanwhile")
        return len(seqs)

    def _write_stats(self, cur: Any, upserts: Sequence[StatsUpsert]) -> int:
        for add, rows in stats_rows(upserts):
            statement = (STATS_ADD if add else STATS_REPLACE).replace(
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                "SELECT r->>0, r->>1, (r->>2)::bigint, (r->>3)::bigint, (r->>4)::integer,"
                " (r->>5)::bigint, (r->>6)::bigint FROM json_array_elements(%s::json) AS r",
            )
            cur.execute(statement, (json.dumps(rows),))
        return len(upserts)

    def read_views(self, amphora_ids: Collection[str]) -> dict[str, StoredView]:
        """Return the view of every live amphora among ``amphora_ids``, in one statement.

        The same result as the portable statement, built by the server as JSON
        text, parsed only when it differs from the last read (:mod:`.reuse`).
        """
        if not amphora_ids:
            return {}
        with self._reading() as cur:
            cur.execute(_PG_VIEW_SQL, (list(dict.fromkeys(amphora_ids)),))
            rows = cur.fetchall()
        views = self._views
        out = {}
        for amp, status, lb_id, ip, boot, seq, seen, text, down in rows:
            view = views.reuse(lb_id, text)
            if view is None:
                view = views.keep(lb_id, text, json.loads(text))
            state = None if seq is None else (boot, seq, seen)
            out[amp] = StoredView(amp, status, lb_id, view, frozenset(down or ()), ip, state)
        return out

    def write_tick(self, write: TickWrite) -> int:
        """Write one tick in one transaction (see :meth:`SQLiteStore.write_tick`).

        A transaction chosen as a deadlock victim is retried (a few times, after
        a short random pause); it was rolled back, so nothing is written twice.
        """
        errors = self._psycopg.errors
        for attempt in range(self.deadlock_retries + 1):
            try:
                with self._pipeline():
                    return super().write_tick(write)
            except StoreError as exc:
                lost = isinstance(
                    exc.__cause__, (errors.DeadlockDetected, errors.SerializationFailure)
                )
                if not lost or attempt == self.deadlock_retries:
                    raise
                log.info("tick write lost a deadlock; retrying")
                time.sleep(random.uniform(0.001, 0.02))
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def _pipeline(self) -> Iterator[None]:
        # Pipeline mode sends BEGIN, every statement and COMMIT in one round
        # trip instead of one each.
        try:
            conn = self._connection()
        except self._psycopg.Error as exc:
            raise self._failed(exc) from exc
        try:
            with conn.pipeline():
                yield
        except self._psycopg.Error as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __repr__(self) -> str:
        return "PostgresStore(<dsn>)"
