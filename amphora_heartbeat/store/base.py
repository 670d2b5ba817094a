"""What every engine shares: the store protocol, the records it passes, and the portable SQL.

:class:`SQLStore` holds the statements (``?`` placeholders, Octavia's table and
column names) and the transaction logic; an engine subclass supplies the hooks
that differ (placeholders, the id-set parameter, row locking, time values,
connection handling) and may override a statement where its SQL allows better.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import attrs

from ..models import ListenerStats
from .claims import ClaimStatements, StaleAmphora
from .engine import epoch, utc
from .schema import LOOKUPS, TABLES

if TYPE_CHECKING:
    from ..testing import AmphoraSpec

__all__ = [
    "CLOCK_TOLERANCE",
    "HEALTH_UPSERT",
    "LIVE",
    "MAX_ID_LENGTH",
    "STATS_ADD",
    "STATS_REPLACE",
    "SQLStore",
    "StaleAmphora",
    "StatsUpsert",
    "Store",
    "StoreConflict",
    "StoreDataError",
    "StoreError",
    "StoredView",
    "TickWrite",
    "epoch",
    "stats_rows",
    "storable_id",
    "utc",
]

log = logging.getLogger("amphora_heartbeat.store")

# The view of every amphora in a set, as one statement: one row for the amphora
# and its load balancer (kind 0), one per listener (kind 1), one per pool and
# member (kind 2). A UNION rather than one wide join, so that listeners and pools
# do not multiply each other. {ids} is the engine's "in this set of ids" test.
LIVE = "a.status <> 'DELETED' AND lb.provisioning_status <> 'DELETED'"
_VIEW_SQL = (
    "SELECT a.id, 0, a.status, lb.id, lb.enabled, lb.provisioning_status,"
    " lb.operating_status, a.lb_network_ip, s.boot, s.seq, s.seen"
    " FROM amphora a JOIN load_balancer lb ON lb.id = a.load_balancer_id"
    " LEFT JOIN amphora_heartbeat_seq s ON s.amphora_id = a.id"
    f" WHERE a.id {{ids}} AND {LIVE}"
    " UNION ALL"
    " SELECT a.id, 1, l.id, l.protocol, l.enabled, l.operating_status, l.default_pool_id, NULL,"
    " NULL, NULL, NULL"
    " FROM amphora a JOIN load_balancer lb ON lb.id = a.load_balancer_id"
    " JOIN listener l ON l.load_balancer_id = lb.id"
    f" WHERE a.id {{ids}} AND {LIVE}"
    " UNION ALL"
    " SELECT a.id, 2, p.id, p.operating_status, m.enabled, m.operating_status, m.id, NULL,"
    " NULL, NULL, NULL"
    " FROM amphora a JOIN load_balancer lb ON lb.id = a.load_balancer_id"
    " JOIN pool p ON p.load_balancer_id = lb.id LEFT JOIN member m ON m.pool_id = p.id"
    f" WHERE a.id {{ids}} AND {LIVE}"
)

#: Seconds a stored ``last_update`` may be ahead of the writing manager's clock
#: before a heartbeat replaces it: managers' clocks may differ this much.
CLOCK_TOLERANCE = 10

# last_update never moves backwards, except from a time more than CLOCK_TOLERANCE
# ahead of the writing manager's clock (the last ?: written by a clock since set
# back, it must not shield the amphora from failover).  A write that moves the
# row also clears busy: an amphora heard after its claim (a claim stamps the row)
# is alive, so a claim left by a manager that died ends there; a running failover
# is not stopped, and the load balancer's PENDING_UPDATE keeps others from a
# second one.  Both CASEs read the row as it was (SQLite and PostgreSQL evaluate
# SET so).
_MOVES = "excluded.last_update > amphora_health.last_update OR amphora_health.last_update > ?"
HEALTH_UPSERT = (
    "INSERT INTO amphora_health (amphora_id, last_update, busy) VALUES (?, ?, ?)"
    f" ON CONFLICT (amphora_id) DO UPDATE SET last_update = CASE WHEN {_MOVES}"
    " THEN excluded.last_update ELSE amphora_health.last_update END,"
    f" busy = CASE WHEN {_MOVES} THEN false ELSE amphora_health.busy END"
)
_STATS_COLUMNS = "bytes_in, bytes_out, active_connections, total_connections, request_errors"
# A sum beyond the BIGINT column is NULL, which its NOT NULL refuses: the same data
# error on every engine (SQLite would otherwise store a REAL without a word).
_MAX_BIGINT = (1 << 63) - 1
_STATS_INSERT = (
    f"INSERT INTO listener_statistics (listener_id, amphora_id, {_STATS_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (listener_id, amphora_id) DO UPDATE SET "
)
STATS_REPLACE = _STATS_INSERT + ", ".join(f"{c} = excluded.{c}" for c in _STATS_COLUMNS.split(", "))
STATS_ADD = _STATS_INSERT + ", ".join(
    f"{c} = excluded.{c}"
    if c == "active_connections"
    else f"{c} = CASE WHEN listener_statistics.{c} > {_MAX_BIGINT} - excluded.{c} THEN NULL"
    f" ELSE listener_statistics.{c} + excluded.{c} END"
    for c in _STATS_COLUMNS.split(", ")
)
_STATUS_UPDATE = {
    table: f"UPDATE {table} SET operating_status = ?, updated_at = ? WHERE id = ?"
    for table in ("load_balancer", "listener", "pool", "member")
}
_SEQ_INSERT = (
    "INSERT INTO amphora_heartbeat_seq (amphora_id, boot, seq, seen) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (amphora_id) DO NOTHING"
)
# Conditional on the state the tick judged against: two managers cannot both
# count the same sequence number (the second matches no row and starts over).
_SEQ_UPDATE = (
    "UPDATE amphora_heartbeat_seq SET boot = ?, seq = ?, seen = ?"
    " WHERE amphora_id = ? AND boot = ? AND seq = ? AND seen = ?"
)
_REALLOCATE = (
    "UPDATE amphora SET status = 'ALLOCATED', updated_at = ?"
    " WHERE id = ? AND status = 'FAILOVER_STOPPED'"
)
#: The longest id Octavia's id columns hold (``VARCHAR(36)``: a UUID's text).
MAX_ID_LENGTH = 36


def storable_id(value: str) -> bool:
    """Tell whether ``value`` can be stored as an id: at most 36 printable characters.

    No control character (PostgreSQL refuses NUL in text), no lone surrogate
    (not encodable), nothing longer than the column.
    """
    return len(value) <= MAX_ID_LENGTH and value.isprintable()


class StoreError(Exception):
    """Report that the database could not be read or written (the operation was undone).

    :attr:`transient` tells a failure that retrying may cure (the database is
    away, busy or lost a deadlock) from one the data itself causes
    (:class:`StoreDataError`): the same write would fail again.
    """

    #: Whether the same operation may succeed later (the database, not the data, failed).
    transient: bool = True


class StoreDataError(StoreError):
    """Report that the database refused the data written (a value it cannot hold, a constraint).

    Retrying the same write fails again; each engine maps its driver's integrity
    and data errors (and values the driver cannot bind) to this class.
    """

    transient = False


class StoreConflict(StoreError):
    """Report that another manager changed a row this write was conditioned on.

    The transaction was undone; reading again and judging again resolves it.
    """


@attrs.frozen
class StoredView:
    """What the database says about one live amphora: its status and its load balancer."""

    amphora_id: str
    #: The amphora's ``status`` (``ALLOCATED``, ``FAILOVER_STOPPED``, ...).
    amphora_status: str
    load_balancer_id: str
    #: The rules' view mapping (rules.md): load balancer, ``listeners``, ``pools``.
    view: Mapping[str, Any]
    #: UDP listeners whose default pool is missing, empty, or has no enabled member.
    udp_listeners_down: frozenset[str] = frozenset()
    #: The address heartbeats of this amphora come from (``lb_network_ip``), if known.
    lb_network_ip: str | None = None
    #: The replay guard's state ``(boot, seq, seen)`` (``amphora_heartbeat_seq``), if any.
    seq: tuple[int, int, int] | None = None


@attrs.frozen
class StatsUpsert:
    """One ``listener_statistics`` row to write: replace it, or add to it."""

    listener_id: str
    amphora_id: str
    stats: ListenerStats
    #: Add the counters to the stored row (deltas; ``active_connections`` is
    #: still replaced) rather than replacing it; without a stored row both insert.
    add: bool


@attrs.frozen(kw_only=True)
class TickWrite:
    """Everything one tick decided, written by :meth:`Store.write_tick` in one transaction."""

    #: Seconds since the epoch, stored as every written row's ``updated_at``.
    now: float
    #: Amphora id to the receive time (seconds since the epoch) of its newest
    #: recorded heartbeat: ``amphora_health.last_update`` (never moved backwards).
    health: Mapping[str, float] = attrs.field(factory=dict)
    #: New operating statuses, by id, per table.
    load_balancers: Mapping[str, str] = attrs.field(factory=dict)
    listeners: Mapping[str, str] = attrs.field(factory=dict)
    pools: Mapping[str, str] = attrs.field(factory=dict)
    members: Mapping[str, str] = attrs.field(factory=dict)
    #: ``listener_statistics`` rows, at most one per (listener id, amphora id).
    stats: Sequence[StatsUpsert] = ()
    #: Amphorae that reported while ``FAILOVER_STOPPED``: back to ``ALLOCATED``.
    reallocated: Collection[str] = ()
    #: Replay-guard states, amphora id to (state judged against or None, new state);
    #: the write fails with :class:`StoreConflict` unless each is still the stored one.
    seqs: Mapping[str, tuple[tuple[int, int, int] | None, tuple[int, int, int]]] = attrs.field(
        factory=dict
    )

    def __len__(self) -> int:
        """Return the number of rows this write touches at most."""
        return (
            len(self.health)
            + len(self.load_balancers)
            + len(self.listeners)
            + len(self.pools)
            + len(self.members)
            + len(self.stats)
            + len(self.reallocated)
            + len(self.seqs)
        )

    def rows_by_table(self) -> dict[str, int]:
        """Return the rows this write touches per table (their sum is ``len(self)``)."""
        return {
            "amphora_health": len(self.health),
            "amphora": len(self.reallocated),
            "load_balancer": len(self.load_balancers),
            "listener": len(self.listeners),
            "pool": len(self.pools),
            "member": len(self.members),
            "listener_statistics": len(self.stats),
            "amphora_heartbeat_seq": len(self.seqs),
        }


@runtime_checkable
class Store(Protocol):
    """The database operations the health manager needs; see :class:`SQLiteStore`."""

    def create_schema(self) -> list[str]:
        """Create the missing tables (and their lookup values); return their names."""
        ...

    def read_views(self, amphora_ids: Collection[str]) -> dict[str, StoredView]:
        """Return the view of each live amphora among ``amphora_ids``, in one statement."""
        ...

    def write_tick(self, write: TickWrite) -> int:
        """Write one tick in one transaction; return the number of rows written."""
        ...

    def stale_amphorae(
        self, cutoff: float, lease_cutoff: float | None = None
    ) -> dict[str, StaleAmphora]:
        """Return eligible amphorae last heard before ``cutoff``, with status and load balancer.

        Not busy, or busy with a claim made before ``lease_cutoff`` (None: none expires).
        """
        ...

    def claim_failovers(
        self,
        amphora_ids: Collection[str],
        cutoff: float,
        *,
        now: float,
        lease_cutoff: float | None = None,
    ) -> list[str]:
        """Mark busy those of ``amphora_ids`` still candidates, stamped ``now``; return them."""
        ...

    def clear_expired_claims(self, lease_cutoff: float) -> int:
        """Delete health rows whose claim expired before ``lease_cutoff`` and whose amphora left."""
        ...

    def stop_failovers(self, amphora_ids: Collection[str], now: float) -> int:
        """Mark ``ALLOCATED`` amphorae among ``amphora_ids`` ``FAILOVER_STOPPED``."""
        ...

    def finish_failover(self, amphora_id: str, *, succeeded: bool) -> None:
        """Delete the amphora's health row (success) or clear its busy flag (failure)."""
        ...

    def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def _build_views(rows: Iterable[Sequence[Any]]) -> dict[str, StoredView]:
    """Fold the view statement's tagged rows into one :class:`StoredView` per amphora."""
    heads: dict[str, tuple[str, str, dict[str, Any], str | None]] = {}
    listeners: dict[str, dict[str, Any]] = {}
    defaults: dict[str, dict[str, str | None]] = {}
    pools: dict[str, dict[str, Any]] = {}
    enabled_members: dict[str, dict[str, int]] = {}
    seqs: dict[str, tuple[int, int, int]] = {}
    for amp, kind, c3, c4, c5, c6, c7, c8, boot, seq, seen in rows:
        if kind == 0:
            view = {
                "id": c4,
                "enabled": bool(c5),
                "provisioning_status": c6,
                "operating_status": c7,
            }
            heads[amp] = (c3, c4, view, c8)
            if seq is not None:
                seqs[amp] = (int(boot), int(seq), int(seen))
        elif kind == 1:
            listeners.setdefault(amp, {})[c3] = {
                "operating_status": c6,
                "protocol": c4,
                "enabled": bool(c5),
            }
            defaults.setdefault(amp, {})[c3] = c7
        else:
            pool = pools.setdefault(amp, {}).setdefault(c3, {"operating_status": c4, "members": {}})
            counts = enabled_members.setdefault(amp, {})
            counts.setdefault(c3, 0)
            if c7 is not None:  # a pool without members has one row, member NULL
                pool["members"][c7] = {"operating_status": c6}
                if c5:
                    counts[c3] += 1
    views = {}
    for amp, (status, lb_id, view, ip) in heads.items():
        down: set[str] = set()
        if amp in listeners:
            view["listeners"] = listeners[amp]
            counts = enabled_members.get(amp, {})
            for lid, entry in listeners[amp].items():
                # The pre-versioning rule: a UDP listener whose default pool is
                # missing, empty or has no enabled member counts as down.
                if entry["protocol"] == "UDP" and not counts.get(defaults[amp][lid] or "", 0):
                    down.add(lid)
        if amp in pools:
            view["pools"] = pools[amp]
        views[amp] = StoredView(amp, status, lb_id, view, frozenset(down), ip, seqs.get(amp))
    return views


def stats_rows(upserts: Sequence[StatsUpsert]) -> list[tuple[bool, list[tuple[Any, ...]]]]:
    """Split upserts into replace rows and add rows, each sorted by key (lock order)."""
    ordered = sorted(upserts, key=lambda u: (u.listener_id, u.amphora_id))
    out = []
    for add in (False, True):
        rows = [
            (
                u.listener_id,
                u.amphora_id,
                u.stats.bytes_in,
                u.stats.bytes_out,
                u.stats.active_connections,
                u.stats.total_connections,
                u.stats.request_errors,
            )
            for u in ordered
            if u.add is add
        ]
        if rows:
            out.append((add, rows))
    return out


class SQLStore(ClaimStatements):
    """The statements every engine shares; subclasses supply the engine hooks."""

    #: The engine's insert of a new replay-guard state, changing nothing if one exists.
    _SEQ_INSERT_STATEMENT: ClassVar[str] = _SEQ_INSERT

    # --- the store ---------------------------------------------------------------------
    def create_schema(self) -> list[str]:
        """Create the tables that do not exist yet, and the lookup values of new ones.

        On a database that already has them (one made by Octavia included)
        nothing is created and no lookup value is inserted, except this
        project's own ``amphora_heartbeat_seq`` where it is missing.  Return the
        names of the tables created.
        """
        created = []
        with self._transaction() as cur:
            for table in TABLES:
                if self._table_exists(cur, table):
                    continue
                for statement in self._ddl(table):
                    cur.execute(statement)
                if table in LOOKUPS:
                    cur.executemany(
                        self._sql(f"INSERT INTO {table} (name, description) VALUES (?, ?)"),
                        [(name, None) for name in LOOKUPS[table]],
                    )
                created.append(table)
        if created:
            log.info("created tables: %s", ", ".join(created))
        return created

    def read_views(self, amphora_ids: Collection[str]) -> dict[str, StoredView]:
        """Return the view of every live amphora among ``amphora_ids``, in one statement.

        An amphora missing from the result is unknown, or its load balancer or
        itself is ``DELETED``: its view is empty.
        """
        if not amphora_ids:
            return {}
        ids = list(dict.fromkeys(amphora_ids))
        param = self._id_set(ids)
        with self._reading() as cur:
            cur.execute(self._sql(_VIEW_SQL.format(ids=self._IDS)), (param, param, param))
            rows = cur.fetchall()
        return _build_views(rows)

    def write_tick(self, write: TickWrite) -> int:
        """Write everything one tick decided, in one transaction; return the rows written.

        Rows are written in a fixed table order and sorted by key, so that
        managers writing the same rows at once wait for each other instead of
        deadlocking.
        """
        now = self._time(write.now)
        rows = 0
        with self._transaction() as cur:
            if write.seqs:
                rows += self._write_seqs(cur, sorted(write.seqs.items()))
            if write.health:
                ahead = self._time(write.now + CLOCK_TOLERANCE)
                rows += self._write_health(cur, sorted(write.health.items()), ahead)
            if write.reallocated:
                params2 = [(now, a) for a in sorted(write.reallocated)]
                cur.executemany(self._sql(_REALLOCATE), params2)
                rows += len(params2)
            for table, changes in (
                ("load_balancer", write.load_balancers),
                ("listener", write.listeners),
                ("pool", write.pools),
                ("member", write.members),
            ):
                if changes:
                    params3 = [(status, now, i) for i, status in sorted(changes.items())]
                    cur.executemany(self._sql(_STATUS_UPDATE[table]), params3)
                    rows += len(params3)
            rows += self._write_stats(cur, write.stats)
        return rows

    def _write_seqs(
        self,
        cur: Any,
        seqs: Sequence[tuple[str, tuple[tuple[int, int, int] | None, tuple[int, int, int]]]],
    ) -> int:
        """Move each replay-guard state from the one judged against to the new one.

        Raise :class:`StoreConflict` if another manager moved one meanwhile.
        """
        new = [(a, *n) for a, (o, n) in seqs if o is None]
        moved = [(*n, a, *o) for a, (o, n) in seqs if o is not None]
        matched = 0
        # executemany sums the rows each statement changed (sqlite3, psycopg 3).
        for statement, params in ((self._SEQ_INSERT_STATEMENT, new), (_SEQ_UPDATE, moved)):
            if params:
                cur.executemany(self._sql(statement), params)
                matched += max(cur.rowcount, 0)
        if matched != len(seqs):
            raise StoreConflict("a sequence state changed meanwhile")
        return len(seqs)

    def _write_health(self, cur: Any, health: Sequence[tuple[str, float]], ahead: Any) -> int:
        """Upsert ``amphora_health`` rows (sorted by id); return how many.

        A stored time after ``ahead`` (the engine's time value of the tick's
        ``now`` plus :data:`CLOCK_TOLERANCE`) is replaced even by an older one.
        """
        params = [(a, self._time(t), False, ahead, ahead) for a, t in health]
        cur.executemany(self._sql(HEALTH_UPSERT), params)
        return len(params)

    def _write_stats(self, cur: Any, upserts: Sequence[StatsUpsert]) -> int:
        """Upsert ``listener_statistics`` rows in key order; return how many."""
        for add, rows in stats_rows(upserts):
            cur.executemany(self._sql(STATS_ADD if add else STATS_REPLACE), rows)
        return len(upserts)

    def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers a trivial query."""
        with self._reading() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()

    # --- for tests, the demo and the benchmark -----------------------------------------
    def read_health(self) -> dict[str, tuple[float, bool]]:
        """Return every ``amphora_health`` row: amphora id to (last_update, busy)."""
        with self._reading() as cur:
            cur.execute("SELECT amphora_id, last_update, busy FROM amphora_health")
            return {a: (self._from_time(t), bool(b)) for a, t, b in cur.fetchall()}

    def read_statistics(self) -> dict[tuple[str, str], ListenerStats]:
        """Return every ``listener_statistics`` row, keyed by (listener id, amphora id)."""
        with self._reading() as cur:
            cur.execute(
                f"SELECT listener_id, amphora_id, {_STATS_COLUMNS} FROM listener_statistics"
            )
            return {(r[0], r[1]): ListenerStats(*r[2:]) for r in cur.fetchall()}

    def read_amphora_statuses(self) -> dict[str, str]:
        """Return every amphora's ``status``, by amphora id."""
        with self._reading() as cur:
            cur.execute("SELECT id, status FROM amphora")
            return dict(cur.fetchall())

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one portable statement (``?`` placeholders) in its own transaction.

        Return the rows it produced (none for most writes).  For tests and tools.
        """
        with self._transaction() as cur:
            cur.execute(self._sql(statement), tuple(params))
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def add_fleet(
        self,
        fleet: Sequence[AmphoraSpec],
        *,
        now: float | None = None,
        amphora_status: str = "ALLOCATED",
        operating_status: str = "ONLINE",
        lb_network_ip: Callable[[int], str] | None = None,
    ) -> int:
        """Insert a simulated fleet: each amphora and its load balancer's tree.

        Every load balancer is enabled and ``ACTIVE``; every listener, pool and
        member enabled and ``operating_status``; each listener's default pool is
        its first.  ``lb_network_ip(i)`` gives the i-th amphora's address (none
        by default).  Fills a database made by :meth:`create_schema` (one made by
        Octavia has more NOT NULL columns).  Return the number of rows inserted.
        """
        stamp = self._time(time.time() if now is None else now)
        lbs: list[tuple[Any, ...]] = []
        listeners: list[tuple[Any, ...]] = []
        pools: list[tuple[Any, ...]] = []
        members: list[tuple[Any, ...]] = []
        amphorae: list[tuple[Any, ...]] = []
        for i, amp in enumerate(fleet):
            lbs.append((amp.load_balancer_id, True, "ACTIVE", operating_status, stamp))
            for lst in amp.listeners:
                default = lst.pools[0].pool_id if lst.pools else None
                listeners.append(
                    (
                        lst.listener_id,
                        amp.load_balancer_id,
                        True,
                        lst.protocol,
                        operating_status,
                        default,
                        stamp,
                    )
                )
                for pool in lst.pools:
                    pools.append((pool.pool_id, amp.load_balancer_id, operating_status, stamp))
                    members.extend(
                        (m, pool.pool_id, True, operating_status, stamp) for m in pool.members
                    )
            ip = lb_network_ip(i) if lb_network_ip else None
            amphorae.append((amp.amphora_id, amp.load_balancer_id, amphora_status, ip, stamp))
        inserts = (
            ("load_balancer (id, enabled, provisioning_status, operating_status, updated_at)", lbs),
            (
                "listener (id, load_balancer_id, enabled, protocol, operating_status,"
                " default_pool_id, updated_at)",
                listeners,
            ),
            ("pool (id, load_balancer_id, operating_status, updated_at)", pools),
            ("member (id, pool_id, enabled, operating_status, updated_at)", members),
            ("amphora (id, load_balancer_id, status, lb_network_ip, updated_at)", amphorae),
        )
        with self._transaction() as cur:
            for into, params in inserts:
                if params:
                    marks = ", ".join("?" * len(params[0]))
                    cur.executemany(self._sql(f"INSERT INTO {into} VALUES ({marks})"), params)
        return sum(len(p) for _, p in inserts)
