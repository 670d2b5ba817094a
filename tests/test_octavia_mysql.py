"""The MySQL store on a database made as Octavia's own migrations make it on MariaDB.

Octavia's tables have more columns than the store's (several NOT NULL), foreign
keys from listener, pool, member and amphora, and more lookup tables: the store
must create nothing there and read and write only what it owns.
"""

from __future__ import annotations

from collections.abc import Iterator

import _octavia_mysql
import pytest

from amphora_heartbeat.models import ListenerStats
from amphora_heartbeat.store import MySQLStore, StatsUpsert, StoreError, TickWrite
from amphora_heartbeat.testing import make_fleet

pytestmark = pytest.mark.mysql
octavia_mysql_url = _octavia_mysql.octavia_mysql_url

NOW = 1_800_000_000.0  # seconds since the epoch, 2027-01-15


@pytest.fixture
def octavia(octavia_mysql_url: str) -> Iterator[MySQLStore]:
    """Yield a MySQLStore on a database holding Octavia's tables (and nothing else)."""
    s = MySQLStore(octavia_mysql_url)
    try:
        yield s
    finally:
        s.close()


def test_the_fixture_has_octavias_not_null_columns(octavia: MySQLStore) -> None:
    """The fixture is Octavia's schema, not the store's: an INSERT as add_fleet writes fails."""
    (amp,) = make_fleet(1, seed=1)
    with pytest.raises(StoreError, match=r"protocol_port|doesn't have a default"):
        octavia.add_fleet([amp])


def test_create_schema_creates_and_inserts_nothing_on_octavias_tables(octavia: MySQLStore) -> None:
    """On Octavia's database create_schema makes only this project's own table, no lookup value."""
    count = "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()"
    (before,) = octavia.execute(count)
    statuses = octavia.execute("SELECT COUNT(*) FROM provisioning_status")
    assert octavia.create_schema() == ["amphora_heartbeat_seq"]
    assert octavia.execute(count) == [(before[0] + 1,)]
    assert octavia.execute("SELECT COUNT(*) FROM provisioning_status") == statuses


def test_views_on_octavias_tables_are_the_rules_views(
    octavia_mysql_url: str, octavia: MySQLStore
) -> None:
    """read_views over Octavia's tables gives each amphora's view, its address included."""
    fleet = [*make_fleet(3, seed=2), *make_fleet(1, seed=3, protocol="UDP", members=0)]
    _octavia_mysql.add_octavia_fleet(octavia_mysql_url, fleet)
    octavia.create_schema()  # this project's own table, as the manager makes at start
    views = octavia.read_views([a.amphora_id for a in fleet] + ["unknown"])
    assert set(views) == {a.amphora_id for a in fleet}
    for amp in fleet:
        assert views[amp.amphora_id].view == amp.view()
        assert views[amp.amphora_id].lb_network_ip is not None
    udp = fleet[3]
    assert views[udp.amphora_id].udp_listeners_down == {lst.listener_id for lst in udp.listeners}


def test_every_write_runs_on_octavias_tables(octavia_mysql_url: str, octavia: MySQLStore) -> None:
    """Health, statuses, statistics, reallocation, claims and failover ends all run there."""
    fleet = make_fleet(3, seed=4, listeners=1, pools=1, members=1)
    _octavia_mysql.add_octavia_fleet(octavia_mysql_url, fleet)
    octavia.create_schema()  # this project's own table, as the manager makes at start
    a, b, c = (amp.amphora_id for amp in fleet)
    octavia.execute("UPDATE amphora SET status = 'FAILOVER_STOPPED' WHERE id = ?", [c])
    member = fleet[0].pools[0].members[0]
    written = octavia.write_tick(
        TickWrite(
            now=NOW,
            health={a: NOW, b: NOW - 100, c: NOW},
            load_balancers={fleet[0].load_balancer_id: "DEGRADED"},
            listeners={fleet[0].listeners[0].listener_id: "OFFLINE"},
            pools={fleet[0].pools[0].pool_id: "DEGRADED"},
            members={member: "ERROR"},
            stats=[
                StatsUpsert(
                    fleet[0].listeners[0].listener_id, a, ListenerStats(1, 2, 3, 4, 5), add=True
                )
            ],
            reallocated=[c],
        )
    )
    assert written == 9
    assert (
        octavia.execute("SELECT operating_status, updated_at FROM member WHERE id = ?", [member])[
            0
        ][0]
        == "ERROR"
    )
    assert octavia.read_amphora_statuses()[c] == "ALLOCATED"
    assert octavia.read_statistics() == {
        (fleet[0].listeners[0].listener_id, a): ListenerStats(1, 2, 3, 4, 5)
    }
    assert list(octavia.stale_amphorae(NOW - 60)) == [b]
    assert octavia.stop_failovers([b], NOW) == 1
    assert octavia.claim_failovers([a, b], NOW - 60, now=NOW) == [b]
    octavia.finish_failover(b, succeeded=True)
    assert set(octavia.read_health()) == {a, c}
