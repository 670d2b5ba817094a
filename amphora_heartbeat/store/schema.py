"""Octavia's tables on the heartbeat path: names, lookup values, and DDL for a new database.

Tables and columns carry the names Octavia's own schema gives them, so the
statements of every engine run unchanged against a database made by Octavia.
:meth:`~amphora_heartbeat.store.base.SQLStore.create_schema` makes just these
tables for a new database, and nothing at all where they exist.
"""

from __future__ import annotations

__all__ = [
    "ELIGIBLE_AMPHORA_STATUSES",
    "FAILOVER_LB_STATUSES",
    "LOOKUPS",
    "OPERATING_STATUSES",
    "PROVISIONING_STATUSES",
    "TABLES",
    "ddl",
]

#: Operating statuses (Octavia's ``operating_status`` lookup table).
OPERATING_STATUSES = ("ONLINE", "OFFLINE", "DEGRADED", "ERROR", "NO_MONITOR", "DRAINING")
#: Provisioning statuses (``provisioning_status``), amphora statuses included.
PROVISIONING_STATUSES = (
    "ACTIVE",
    "PENDING_CREATE",
    "PENDING_UPDATE",
    "PENDING_DELETE",
    "DELETED",
    "ERROR",
    "READY",
    "BOOTING",
    "ALLOCATED",
    "FAILOVER_STOPPED",
)
#: Amphora statuses that may be failed over.
ELIGIBLE_AMPHORA_STATUSES = ("ALLOCATED", "FAILOVER_STOPPED")
#: Load-balancer provisioning statuses a failover may start from (Octavia sets the
#: load balancer to PENDING_UPDATE only from these).
FAILOVER_LB_STATUSES = ("ACTIVE", "ERROR")

#: The tables :meth:`Store.create_schema` makes, in creation order: Octavia's,
#: then this project's own ``amphora_heartbeat_seq`` (the replay guard's state,
#: see :mod:`amphora_heartbeat.manager.replay`), made on an Octavia database too.
TABLES = (
    "operating_status",
    "provisioning_status",
    "load_balancer",
    "listener",
    "pool",
    "member",
    "amphora",
    "amphora_health",
    "listener_statistics",
    "amphora_heartbeat_seq",
)

# No column has a server default, as in Octavia's schema: what works here works
# there, where every INSERT must name every NOT NULL column.
DDL: dict[str, tuple[str, ...]] = {
    "operating_status": (
        "CREATE TABLE operating_status (name VARCHAR(255) NOT NULL PRIMARY KEY,"
        " description VARCHAR(255))",
    ),
    "provisioning_status": (
        "CREATE TABLE provisioning_status (name VARCHAR(255) NOT NULL PRIMARY KEY,"
        " description VARCHAR(255))",
    ),
    "load_balancer": (
        "CREATE TABLE load_balancer ("
        " id VARCHAR(36) NOT NULL PRIMARY KEY,"
        " enabled BOOLEAN NOT NULL,"
        " provisioning_status VARCHAR(16) NOT NULL REFERENCES provisioning_status (name),"
        " operating_status VARCHAR(16) NOT NULL REFERENCES operating_status (name),"
        " updated_at TIMESTAMP)",
    ),
    "listener": (
        "CREATE TABLE listener ("
        " id VARCHAR(36) NOT NULL PRIMARY KEY,"
        " load_balancer_id VARCHAR(36) REFERENCES load_balancer (id),"
        " enabled BOOLEAN NOT NULL,"
        " protocol VARCHAR(16) NOT NULL,"
        " operating_status VARCHAR(16) NOT NULL REFERENCES operating_status (name),"
        " default_pool_id VARCHAR(36),"
        " updated_at TIMESTAMP)",
        "CREATE INDEX ix_listener_load_balancer_id ON listener (load_balancer_id)",
    ),
    "pool": (
        "CREATE TABLE pool ("
        " id VARCHAR(36) NOT NULL PRIMARY KEY,"
        " load_balancer_id VARCHAR(36) REFERENCES load_balancer (id),"
        " operating_status VARCHAR(16) NOT NULL REFERENCES operating_status (name),"
        " updated_at TIMESTAMP)",
        "CREATE INDEX ix_pool_load_balancer_id ON pool (load_balancer_id)",
    ),
    "member": (
        "CREATE TABLE member ("
        " id VARCHAR(36) NOT NULL PRIMARY KEY,"
        " pool_id VARCHAR(36) NOT NULL REFERENCES pool (id),"
        " enabled BOOLEAN NOT NULL,"
        " operating_status VARCHAR(16) NOT NULL REFERENCES operating_status (name),"
        " updated_at TIMESTAMP)",
        "CREATE INDEX ix_member_pool_id ON member (pool_id)",
    ),
    "amphora": (
        "CREATE TABLE amphora ("
        " id VARCHAR(36) NOT NULL PRIMARY KEY,"
        " load_balancer_id VARCHAR(36) REFERENCES load_balancer (id),"
        " status VARCHAR(36) REFERENCES provisioning_status (name),"
        " lb_network_ip VARCHAR(64),"
        " updated_at TIMESTAMP)",
        "CREATE INDEX ix_amphora_load_balancer_id ON amphora (load_balancer_id)",
    ),
    "amphora_health": (
        "CREATE TABLE amphora_health ("
        " amphora_id VARCHAR(36) NOT NULL PRIMARY KEY,"
        " last_update TIMESTAMP NOT NULL,"
        " busy BOOLEAN NOT NULL)",
    ),
    "listener_statistics": (
        "CREATE TABLE listener_statistics ("
        " listener_id VARCHAR(36) NOT NULL,"
        " amphora_id VARCHAR(36) NOT NULL,"
        " bytes_in BIGINT NOT NULL,"
        " bytes_out BIGINT NOT NULL,"
        " active_connections INTEGER NOT NULL,"
        " total_connections BIGINT NOT NULL,"
        " request_errors BIGINT NOT NULL,"
        " PRIMARY KEY (listener_id, amphora_id))",
    ),
    # Not Octavia's: per amphora, the agent's boot time (0: unknown), the highest
    # sequence number whose statistics were counted and the mask of the ones below.
    "amphora_heartbeat_seq": (
        "CREATE TABLE amphora_heartbeat_seq ("
        " amphora_id VARCHAR(36) NOT NULL PRIMARY KEY,"
        " boot BIGINT NOT NULL,"
        " seq BIGINT NOT NULL,"
        " seen BIGINT NOT NULL)",
    ),
}

LOOKUPS = {"operating_status": OPERATING_STATUSES, "provisioning_status": PROVISIONING_STATUSES}


def ddl(table: str) -> tuple[str, ...]:
    """Return the statements that create ``table`` (and its indexes) on a new database."""
    return DDL[table]
