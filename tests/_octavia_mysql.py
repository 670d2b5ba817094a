"""A database made as Octavia's migrations make it on MariaDB, and a fleet filled into it.

``octavia_mysql_url`` gives a fresh database holding tests/octavia_mysql_schema.sql;
:func:`add_octavia_fleet` inserts simulated amphorae with every NOT NULL column
Octavia's tables have (ports, algorithms, addresses, ``backup``, ``cert_busy``),
which :meth:`SQLStore.add_fleet` does not know about.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import _servers
import pytest

from amphora_heartbeat.testing import AmphoraSpec

SCHEMA = Path(__file__).parent / "octavia_mysql_schema.sql"


def schema_statements() -> list[str]:
    """Return the schema file's statements, comments removed."""
    lines = [ln for ln in SCHEMA.read_text().splitlines() if not ln.startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";")]


@pytest.fixture
def octavia_mysql_url(mysql_url: str) -> str:
    """Return the URL of a fresh MariaDB database holding Octavia's tables and lookups."""
    with _servers.mysql_connect(mysql_url) as conn, conn.cursor() as cur:
        for statement in schema_statements():
            cur.execute(statement.rstrip(";"))
    return mysql_url


def add_octavia_fleet(url: str, fleet: Sequence[AmphoraSpec], status: str = "ALLOCATED") -> None:
    """Insert the fleet's load balancers, listeners, pools, members and amphorae.

    Every row gets the NOT NULL columns Octavia's schema has and the store never
    writes; every status is ONLINE and ACTIVE, as :meth:`SQLStore.add_fleet` does.
    """
    now = datetime.datetime(2027, 1, 1)
    with _servers.mysql_connect(url) as conn, conn.cursor() as cur:
        for i, amp in enumerate(fleet):
            lb = amp.load_balancer_id
            cur.execute(
                "INSERT INTO load_balancer (id, provisioning_status, operating_status, enabled,"
                " topology, created_at, updated_at) VALUES (%s, 'ACTIVE', 'ONLINE', 1,"
                " 'SINGLE', %s, %s)",
                (lb, now, now),
            )
            for pool in amp.pools:
                cur.execute(
                    "INSERT INTO pool (id, protocol, lb_algorithm, operating_status, enabled,"
                    " load_balancer_id, provisioning_status, created_at) VALUES (%s, 'HTTP',"
                    " 'ROUND_ROBIN', 'ONLINE', 1, %s, 'ACTIVE', %s)",
                    (pool.pool_id, lb, now),
                )
                for port, member in enumerate(pool.members, start=8000):
                    cur.execute(
                        "INSERT INTO member (id, pool_id, ip_address, protocol_port,"
                        " operating_status, enabled, provisioning_status, backup)"
                        " VALUES (%s, %s, '198.51.100.7', %s, 'ONLINE', 1, 'ACTIVE', 0)",
                        (member, pool.pool_id, port),
                    )
            for port, lst in enumerate(amp.listeners, start=80):
                cur.execute(
                    "INSERT INTO listener (id, protocol, protocol_port, load_balancer_id,"
                    " default_pool_id, provisioning_status, operating_status, enabled)"
                    " VALUES (%s, %s, %s, %s, %s, 'ACTIVE', 'ONLINE', 1)",
                    (
                        lst.listener_id,
                        lst.protocol,
                        port,
                        lb,
                        lst.pools[0].pool_id if lst.pools else None,
                    ),
                )
            cur.execute(
                "INSERT INTO amphora (id, compute_id, status, load_balancer_id, lb_network_ip,"
                " role, cert_busy, created_at) VALUES (%s, %s, %s, %s, %s, 'STANDALONE', 0, %s)",
                (amp.amphora_id, f"compute-{i}", status, lb, f"192.0.2.{i % 250 + 1}", now),
            )
