"""Tests of amphora_heartbeat.store, each on SQLite and on real PostgreSQL and MariaDB servers."""

from __future__ import annotations

import copy
import datetime
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _pg
import pytest

from amphora_heartbeat.models import ListenerStats
from amphora_heartbeat.store import (
    OPERATING_STATUSES,
    PROVISIONING_STATUSES,
    TABLES,
    MySQLStore,
    PostgresStore,
    SQLiteStore,
    StaleAmphora,
    StatsUpsert,
    Store,
    StoredView,
    StoreError,
    TickWrite,
    open_store,
    parse_url,
)
from amphora_heartbeat.testing import make_fleet

pg_server = _pg.pg_server
pg_dsn = _pg.pg_dsn
db_url = _pg.db_url
store = _pg.store

AnyStore = SQLiteStore | PostgresStore | MySQLStore
NOW = 1_800_000_000.0  # seconds since the epoch, 2027-01-15


def _utc(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).replace(tzinfo=None)


def _naive(value: Any) -> datetime.datetime:
    """Return a time column's value as a naive datetime, whatever the engine."""
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value)
    assert isinstance(value, datetime.datetime)
    return value


def _count(store: AnyStore, table: str) -> int:
    return int(store.execute(f"SELECT COUNT(*) FROM {table}")[0][0])


# --- schema --------------------------------------------------------------------------


def test_create_schema_makes_every_table_and_lookup_value(store: AnyStore) -> None:
    """A new database gets Octavia's tables and both status lookup tables' values."""
    for table in TABLES:
        _count(store, table)  # raises if the table is missing
    names = {r[0] for r in store.execute("SELECT name FROM operating_status")}
    assert names == set(OPERATING_STATUSES)
    names = {r[0] for r in store.execute("SELECT name FROM provisioning_status")}
    assert names == set(PROVISIONING_STATUSES)
    assert isinstance(store, Store)


def test_create_schema_on_existing_tables_creates_and_inserts_nothing(store: AnyStore) -> None:
    """On a database that has the tables, nothing is created and no lookup value inserted."""
    store.execute("DELETE FROM operating_status WHERE name = 'DRAINING'")
    assert store.create_schema() == []
    assert _count(store, "operating_status") == len(OPERATING_STATUSES) - 1


def test_create_schema_declares_no_server_default(store: AnyStore) -> None:
    """Every INSERT must name every NOT NULL column: one that omits busy fails."""
    with pytest.raises(StoreError):
        store.execute(
            "INSERT INTO amphora_health (amphora_id, last_update) VALUES (?, ?)",
            ["a", "2027-01-01 00:00:00.000000"],
        )


# --- views ---------------------------------------------------------------------------


def test_read_views_returns_the_rules_view_of_each_amphora(store: AnyStore) -> None:
    """One read returns, per amphora, exactly the mapping AmphoraSpec.view() describes."""
    fleet = make_fleet(5, seed=3)
    store.add_fleet(fleet, lb_network_ip=lambda i: f"192.0.2.{i}")
    views = store.read_views([a.amphora_id for a in fleet])
    assert set(views) == {a.amphora_id for a in fleet}
    for i, amp in enumerate(fleet):
        got = views[amp.amphora_id]
        assert got.view == amp.view()
        assert got.load_balancer_id == amp.load_balancer_id
        assert got.amphora_status == "ALLOCATED"
        assert got.udp_listeners_down == frozenset()
        assert got.lb_network_ip == f"192.0.2.{i}"


def test_a_view_read_again_is_current_after_every_kind_of_change(store: AnyStore) -> None:
    """Engines that reuse a parsed view (store.reuse) still return every change at once."""
    (amp,) = make_fleet(1, seed=8)
    store.add_fleet([amp])
    ids = [amp.amphora_id]
    first = store.read_views(ids)[amp.amphora_id].view
    assert store.read_views(ids)[amp.amphora_id].view == first == amp.view()
    member = amp.pools[0].members[1]
    changes = [
        ("UPDATE member SET operating_status = 'ERROR' WHERE id = ?", member),
        ("UPDATE pool SET operating_status = 'DEGRADED' WHERE id = ?", amp.pools[0].pool_id),
        ("UPDATE listener SET enabled = false WHERE id = ?", amp.listeners[0].listener_id),
        ("UPDATE load_balancer SET enabled = false WHERE id = ?", amp.load_balancer_id),
        (
            "UPDATE load_balancer SET provisioning_status = 'PENDING_UPDATE' WHERE id = ?",
            amp.load_balancer_id,
        ),
        ("DELETE FROM member WHERE id = ?", member),
    ]
    expected = copy.deepcopy(amp.view())
    expected["pools"][amp.pools[0].pool_id]["members"][member]["operating_status"] = "ERROR"
    steps = [copy.deepcopy(expected)]
    expected["pools"][amp.pools[0].pool_id]["operating_status"] = "DEGRADED"
    steps.append(copy.deepcopy(expected))
    expected["listeners"][amp.listeners[0].listener_id]["enabled"] = False
    steps.append(copy.deepcopy(expected))
    expected["enabled"] = False
    steps.append(copy.deepcopy(expected))
    expected["provisioning_status"] = "PENDING_UPDATE"
    steps.append(copy.deepcopy(expected))
    del expected["pools"][amp.pools[0].pool_id]["members"][member]
    steps.append(copy.deepcopy(expected))
    for (statement, key), want in zip(changes, steps, strict=True):
        store.execute(statement, [key])
        assert store.read_views(ids)[amp.amphora_id].view == want, statement


def test_read_views_leaves_out_unknown_and_deleted_amphorae(store: AnyStore) -> None:
    """Unknown ids, DELETED amphorae and amphorae of DELETED load balancers have no view."""
    fleet = make_fleet(3, seed=4)
    store.add_fleet(fleet)
    store.execute("UPDATE amphora SET status = 'DELETED' WHERE id = ?", [fleet[0].amphora_id])
    store.execute(
        "UPDATE load_balancer SET provisioning_status = 'DELETED' WHERE id = ?",
        [fleet[1].load_balancer_id],
    )
    views = store.read_views(["no-such-amphora", *(a.amphora_id for a in fleet)])
    assert set(views) == {fleet[2].amphora_id}
    assert store.read_views([]) == {}


def test_read_views_of_a_bare_load_balancer_has_no_listener_or_pool_keys(store: AnyStore) -> None:
    """A load balancer without listeners or pools gives a view without those keys."""
    (amp,) = make_fleet(1, listeners=0, pools=0)
    store.add_fleet([amp])
    assert store.read_views([amp.amphora_id])[amp.amphora_id].view == amp.view()
    assert "listeners" not in amp.view()


def test_read_views_includes_empty_pools_and_pending_load_balancers(store: AnyStore) -> None:
    """A pool without members is in the view; a PENDING_UPDATE load balancer is live."""
    (amp,) = make_fleet(1, members=0)
    store.add_fleet([amp])
    store.execute(
        "UPDATE load_balancer SET provisioning_status = 'PENDING_UPDATE', enabled = false"
        " WHERE id = ?",
        [amp.load_balancer_id],
    )
    view = store.read_views([amp.amphora_id])[amp.amphora_id].view
    assert view == amp.view(enabled=False, provisioning_status="PENDING_UPDATE")
    assert all(p["members"] == {} for p in view["pools"].values())


def test_read_views_finds_udp_listeners_whose_default_pool_is_down(store: AnyStore) -> None:
    """UDP listeners with a missing, empty or all-disabled default pool are listed as down."""
    (amp,) = make_fleet(1, listeners=4, pools=4, members=2, protocol="UDP")
    store.add_fleet([amp])
    l_ok, l_none, l_empty, l_disabled = amp.listeners
    store.execute("UPDATE listener SET default_pool_id = NULL WHERE id = ?", [l_none.listener_id])
    store.execute("DELETE FROM member WHERE pool_id = ?", [l_empty.pools[0].pool_id])
    store.execute(
        "UPDATE member SET enabled = false WHERE pool_id = ?", [l_disabled.pools[0].pool_id]
    )
    got = store.read_views([amp.amphora_id])[amp.amphora_id]
    assert got.udp_listeners_down == {
        l_none.listener_id,
        l_empty.listener_id,
        l_disabled.listener_id,
    }
    assert l_ok.listener_id in got.view["listeners"]


def test_read_views_ignores_default_pools_of_tcp_listeners(store: AnyStore) -> None:
    """Only UDP listeners are checked for a live default pool."""
    (amp,) = make_fleet(1, listeners=1, pools=1, members=1)
    store.add_fleet([amp])
    store.execute("UPDATE listener SET default_pool_id = NULL")
    assert store.read_views([amp.amphora_id])[amp.amphora_id].udp_listeners_down == frozenset()


def test_two_amphorae_of_one_load_balancer_share_its_view(store: AnyStore) -> None:
    """An active/standby pair reads the same load balancer view."""
    (amp,) = make_fleet(1, seed=9)
    store.add_fleet([amp])
    store.execute(
        "INSERT INTO amphora (id, load_balancer_id, status, lb_network_ip, updated_at)"
        " VALUES ('standby', ?, 'ALLOCATED', NULL, NULL)",
        [amp.load_balancer_id],
    )
    views = store.read_views([amp.amphora_id, "standby"])
    assert views["standby"].view == views[amp.amphora_id].view == amp.view()


# --- the tick write ------------------------------------------------------------------


def test_write_tick_upserts_health_without_moving_it_backwards(store: AnyStore) -> None:
    """amphora_health rows are created not busy and only ever move forward in time."""
    store.write_tick(TickWrite(now=NOW, health={"a": NOW - 5, "b": NOW - 1}))
    assert store.read_health() == {"a": (NOW - 5, False), "b": (NOW - 1, False)}
    store.write_tick(TickWrite(now=NOW, health={"a": NOW - 2, "b": NOW - 3}))
    assert store.read_health() == {"a": (NOW - 2, False), "b": (NOW - 1, False)}


def test_write_tick_sets_statuses_and_naive_utc_updated_at(store: AnyStore) -> None:
    """Each status change also sets updated_at to the tick time, naive UTC."""
    (amp,) = make_fleet(1, seed=5)
    store.add_fleet([amp], now=NOW - 1000)
    lst = amp.listeners[0]
    pool = lst.pools[0]
    member = pool.members[0]
    rows = store.write_tick(
        TickWrite(
            now=NOW,
            load_balancers={amp.load_balancer_id: "DEGRADED"},
            listeners={lst.listener_id: "ERROR"},
            pools={pool.pool_id: "DEGRADED"},
            members={member: "ERROR"},
        )
    )
    assert rows == 4
    for table, key, status in (
        ("load_balancer", amp.load_balancer_id, "DEGRADED"),
        ("listener", lst.listener_id, "ERROR"),
        ("pool", pool.pool_id, "DEGRADED"),
        ("member", member, "ERROR"),
    ):
        ((got, stamp),) = store.execute(
            f"SELECT operating_status, updated_at FROM {table} WHERE id = ?", [key]
        )
        assert got == status
        assert _naive(stamp) == _utc(NOW)
    # Untouched rows keep their status and time.
    other = pool.members[1]
    ((got, stamp),) = store.execute(
        "SELECT operating_status, updated_at FROM member WHERE id = ?", [other]
    )
    assert (got, _naive(stamp)) == ("ONLINE", _utc(NOW - 1000))


def test_write_tick_replaces_or_adds_listener_statistics(store: AnyStore) -> None:
    """Absolute counters replace the row; deltas add, except active_connections."""
    first = ListenerStats(10, 20, 3, 40, 5)
    store.write_tick(TickWrite(now=NOW, stats=[StatsUpsert("l1", "a", first, add=True)]))
    assert store.read_statistics() == {("l1", "a"): first}
    store.write_tick(
        TickWrite(now=NOW, stats=[StatsUpsert("l1", "a", ListenerStats(1, 2, 7, 4, 1), add=True)])
    )
    assert store.read_statistics() == {("l1", "a"): ListenerStats(11, 22, 7, 44, 6)}
    absolute = ListenerStats(100, 200, 1, 400, 0)
    store.write_tick(
        TickWrite(
            now=NOW,
            stats=[
                StatsUpsert("l1", "a", absolute, add=False),
                StatsUpsert("l2", "a", absolute, add=False),
            ],
        )
    )
    assert store.read_statistics() == {("l1", "a"): absolute, ("l2", "a"): absolute}


def test_write_tick_holds_64_bit_counters(store: AnyStore) -> None:
    """BIGINT counters and a 32-bit active_connections round-trip at their limits."""
    big = ListenerStats(2**63 - 1, 2**62, 2**31 - 1, 2**63 - 1, 2**40)
    store.write_tick(TickWrite(now=NOW, stats=[StatsUpsert("l", "a", big, add=False)]))
    assert store.read_statistics() == {("l", "a"): big}


def test_write_tick_is_all_or_nothing(store: AnyStore) -> None:
    """A tick that fails part-way writes nothing: no partial tick is ever committed."""
    bad = ListenerStats(None, 0, 0, 0, 0)  # type: ignore[arg-type]  # NOT NULL violation
    with pytest.raises(StoreError):
        store.write_tick(
            TickWrite(
                now=NOW,
                health={"a": NOW},
                stats=[
                    StatsUpsert("l1", "a", ListenerStats(1, 1, 1, 1, 1), add=True),
                    StatsUpsert("l2", "a", bad, add=True),
                ],
            )
        )
    assert store.read_health() == {}
    assert store.read_statistics() == {}
    # The store is still usable after the failure.
    store.write_tick(TickWrite(now=NOW, health={"a": NOW}))
    assert store.read_health() == {"a": (NOW, False)}


def test_write_tick_reallocates_failover_stopped_amphorae(store: AnyStore) -> None:
    """An amphora that reports while FAILOVER_STOPPED returns to ALLOCATED."""
    fleet = make_fleet(2, seed=6)
    store.add_fleet(fleet)
    ids = [a.amphora_id for a in fleet]
    assert store.stop_failovers(ids, NOW) == 2
    assert store.stop_failovers(ids, NOW) == 0
    assert set(store.read_amphora_statuses().values()) == {"FAILOVER_STOPPED"}
    store.write_tick(TickWrite(now=NOW, reallocated=[ids[0]]))
    assert store.read_amphora_statuses() == {ids[0]: "ALLOCATED", ids[1]: "FAILOVER_STOPPED"}


def test_tick_write_len_counts_rows() -> None:
    """len(TickWrite) is the number of rows the write touches at most."""
    write = TickWrite(
        now=NOW,
        health={"a": NOW},
        members={"m": "ERROR"},
        stats=[StatsUpsert("l", "a", ListenerStats(), add=True)],
        reallocated=["a"],
    )
    assert len(write) == 4


# --- stale amphorae and failover -----------------------------------------------------


def _fleet_with_health(store: AnyStore, ages: list[float]) -> list[str]:
    fleet = make_fleet(len(ages), seed=7, listeners=1, pools=1, members=1)
    store.add_fleet(fleet)
    ids = [a.amphora_id for a in fleet]
    health = {a: NOW - age for a, age in zip(ids, ages, strict=True)}
    store.write_tick(TickWrite(now=NOW, health=health))
    return ids


def test_stale_amphorae_lists_eligible_rows_past_the_cutoff(store: AnyStore) -> None:
    """Candidates: before the cutoff, not busy, ALLOCATED or FAILOVER_STOPPED, sorted; their LB."""
    ids = _fleet_with_health(store, [100, 100, 100, 100, 100, 10])
    store.execute("UPDATE amphora_health SET busy = true WHERE amphora_id = ?", [ids[0]])
    store.execute("UPDATE amphora SET status = 'FAILOVER_STOPPED' WHERE id = ?", [ids[1]])
    store.execute("UPDATE amphora SET status = 'READY' WHERE id = ?", [ids[2]])
    store.write_tick(TickWrite(now=NOW, health={"orphan": NOW - 100}))  # no amphora row
    stale = store.stale_amphorae(NOW - 60)
    assert list(stale) == sorted([ids[1], ids[3], ids[4]])
    assert stale[ids[1]].status == "FAILOVER_STOPPED"
    fleet = make_fleet(6, seed=7, listeners=1, pools=1, members=1)
    assert stale[ids[3]] == StaleAmphora("ALLOCATED", fleet[3].load_balancer_id)
    assert store.stale_amphorae(NOW - 101) == {}


def test_claim_failovers_marks_each_amphora_busy_once(store: AnyStore) -> None:
    """A claim marks stale amphorae busy; a second claim of the same ids gets none."""
    ids = _fleet_with_health(store, [100, 100, 10])
    assert store.claim_failovers(ids, NOW - 60, now=NOW) == sorted(ids[:2])
    assert store.claim_failovers(ids, NOW - 60, now=NOW) == []
    assert store.claim_failovers([], NOW - 60, now=NOW) == []
    assert {a for a, (_, busy) in store.read_health().items() if busy} == set(ids[:2])
    assert store.stale_amphorae(NOW - 60) == {}


def test_claim_failovers_skips_load_balancers_not_active_or_error(store: AnyStore) -> None:
    """An amphora whose load balancer is being changed is not claimed (tried next time)."""
    fleet = make_fleet(3, seed=8, listeners=0, pools=0)
    store.add_fleet(fleet)
    ids = [a.amphora_id for a in fleet]
    store.write_tick(TickWrite(now=NOW, health=dict.fromkeys(ids, NOW - 100)))
    for amp, status in zip(fleet, ["ACTIVE", "ERROR", "PENDING_UPDATE"], strict=True):
        store.execute(
            "UPDATE load_balancer SET provisioning_status = ? WHERE id = ?",
            [status, amp.load_balancer_id],
        )
    assert store.claim_failovers(ids, NOW - 60, now=NOW) == sorted(ids[:2])
    assert list(store.stale_amphorae(NOW - 60)) == [ids[2]]


def test_finish_failover_deletes_the_row_or_clears_busy(store: AnyStore) -> None:
    """Success deletes amphora_health (as Octavia does); failure clears busy for a retry."""
    ids = _fleet_with_health(store, [100, 100])
    store.claim_failovers(ids, NOW - 60, now=NOW)
    store.finish_failover(ids[0], succeeded=True)
    store.finish_failover(ids[1], succeeded=False)
    assert store.read_health() == {ids[1]: (NOW, False)}
    # Retried once a timeout has passed since the claim.
    assert list(store.stale_amphorae(NOW + 1)) == [ids[1]]


def test_an_expired_claim_is_a_candidate_again_and_may_be_taken_over(store: AnyStore) -> None:
    """A claim stamps last_update; busy and older than the lease: stale again, claimable."""
    ids = _fleet_with_health(store, [200, 200])
    assert store.claim_failovers(ids, NOW - 150, now=NOW - 100) == sorted(ids)
    assert {a: t for a, (t, _) in store.read_health().items()} == dict.fromkeys(ids, NOW - 100)
    assert store.stale_amphorae(NOW - 60) == {}
    assert store.stale_amphorae(NOW - 60, lease_cutoff=NOW - 110) == {}
    assert list(store.stale_amphorae(NOW - 60, lease_cutoff=NOW - 90)) == sorted(ids)
    assert store.claim_failovers(ids[:1], NOW - 60, now=NOW, lease_cutoff=NOW - 110) == []
    assert store.claim_failovers(ids[:1], NOW - 60, now=NOW, lease_cutoff=NOW - 90) == ids[:1]
    assert store.read_health()[ids[0]] == (NOW, True)
    assert list(store.stale_amphorae(NOW - 60, lease_cutoff=NOW - 90)) == [ids[1]]


def test_clear_expired_claims_deletes_only_rows_of_amphorae_gone(store: AnyStore) -> None:
    """An expired claim of a DELETED amphora: row deleted; of an ALLOCATED one, or fresh: kept."""
    ids = _fleet_with_health(store, [200, 200, 200, 200])
    store.claim_failovers(ids[:3], NOW - 150, now=NOW - 100)
    for amphora_id in (ids[0], ids[2], ids[3]):
        store.execute("UPDATE amphora SET status = 'DELETED' WHERE id = ?", [amphora_id])
    assert store.clear_expired_claims(NOW - 110) == 0
    assert store.clear_expired_claims(NOW - 90) == 2
    assert set(store.read_health()) == {ids[1], ids[3]}


@pytest.mark.postgres
def test_concurrent_claims_on_postgresql_split_the_stale_amphorae(pg_dsn: str) -> None:
    """Several managers claiming the same stale set at once each get a disjoint share."""
    setup = PostgresStore(pg_dsn)
    setup.create_schema()
    ids = _fleet_with_health(setup, [100] * 200)
    setup.close()
    claimed: list[list[str]] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        s = PostgresStore(pg_dsn)
        s.ping()
        barrier.wait()
        got: list[str] = []
        for i in range(0, len(ids), 10):
            got += s.claim_failovers(ids[i : i + 10] + ids[::-7], NOW - 60, now=NOW)
        claimed.append(got)
        s.close()

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [a for got in claimed for a in got]
    assert sorted(everything) == sorted(ids)  # each exactly once


@pytest.mark.postgres
def test_concurrent_tick_writes_on_postgresql_add_every_delta(pg_dsn: str) -> None:
    """Managers writing the same rows at once neither deadlock nor lose an addition."""
    setup = PostgresStore(pg_dsn)
    setup.create_schema()
    setup.close()
    keys = [(f"l{i}", f"a{i % 7}") for i in range(40)]
    one = ListenerStats(1, 1, 1, 1, 1)

    def write(reverse: bool) -> None:
        s = PostgresStore(pg_dsn)
        order = keys[::-1] if reverse else keys
        for _ in range(20):
            s.write_tick(
                TickWrite(
                    now=NOW,
                    health={a: NOW for _, a in order},
                    stats=[StatsUpsert(lid, a, one, add=True) for lid, a in order],
                )
            )
        s.close()

    threads = [threading.Thread(target=write, args=(i % 2 == 1,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check = PostgresStore(pg_dsn)
    assert check.read_statistics() == {k: ListenerStats(80, 80, 1, 80, 80) for k in keys}
    check.close()


# --- opening and failing -------------------------------------------------------------


def test_open_store_reads_sqlite_urls_relative_absolute_and_in_memory(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite:///x.db is relative, sqlite:////abs/x.db absolute, sqlite:///:memory: in memory."""
    monkeypatch.chdir(tmp_path)
    s = open_store("sqlite:///x.db")
    assert isinstance(s, SQLiteStore)
    assert s.path == "x.db"
    s.create_schema()
    s.close()
    assert (tmp_path / "x.db").exists()
    s = open_store(f"sqlite:///{tmp_path}/y.db")  # tmp_path is absolute: four slashes
    assert s.path == f"{tmp_path}/y.db"
    s.close()
    s = open_store("sqlite:///:memory:")
    assert s.path == ":memory:"
    s.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("health.db", "for a SQLite file write sqlite:///health.db"),
        ("/var/lib/x.db", "write sqlite:////var/lib/x.db"),
        ("sqlite:///", "sqlite:///PATH"),
        ("sqlite://", "sqlite:///PATH"),
        ("sqlite://host/x.db", "sqlite:///PATH"),
        ("sqlite:///x.db?mode=ro", "without host or options"),
        ("oracle://scott:tiger@127.0.0.1/orcl", "unsupported database URL scheme"),
        ("mysql+asyncmy://u@127.0.0.1/octavia", "unsupported database URL scheme"),
        ("mysql+pymysql://u@127.0.0.1/", "names one database"),
        ("mysql+pymysql://u@127.0.0.1:99999/octavia", "port"),
        ("mysql+pymysql://u@127.0.0.1/octavia?charset=utf8mb4&pool_size=5", "pool_size"),
        ("postgresql://u@127.0.0.1/octavia?no_such_option=1", "no_such_option"),
    ],
)
def test_open_store_refuses_other_urls_in_one_line(url: str, message: str) -> None:
    """A plain path, sqlite:/// alone, other schemes, drivers and options: one-line ValueError."""
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        open_store(url)
    text = str(caught.value)
    assert "\n" not in text


def test_refusals_name_the_supported_forms_and_never_the_password() -> None:
    """The error for an unsupported URL lists every supported form, without its password."""
    with pytest.raises(ValueError, match="expected one of") as caught:
        open_store("mssql+pyodbc://octavia:s3cret@127.0.0.1/octavia")
    text = str(caught.value)
    assert "s3cret" not in text
    for form in ("sqlite:///", "postgresql[+psycopg2|+psycopg]://", "mysql[+pymysql|+mysqldb]://"):
        assert form in text


@pytest.mark.parametrize(
    "scheme", ["postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"]
)
def test_open_store_reads_postgresql_urls_with_or_without_a_driver(scheme: str) -> None:
    """postgresql://, postgresql+psycopg2:// and +psycopg:// all open a PostgresStore."""
    p = open_store(f"{scheme}://octavia:s3cret@127.0.0.1:1/octavia?connect_timeout=1")
    assert isinstance(p, PostgresStore)
    assert "s3cret" not in repr(p)
    with pytest.raises(StoreError):  # connects to libpq's form of the URL: a closed port
        p.ping()
    p.close()


@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql", "mariadb+pymysql"])
def test_open_store_reads_mysql_urls_as_octavia_conf_has_them(scheme: str) -> None:
    """mysql+pymysql://USER:PASS@HOST:PORT/DB?charset=utf8mb4 opens a MySQLStore, verbatim."""
    s = open_store(f"{scheme}://octavia:s3cret@127.0.0.1:1/octavia?charset=utf8mb4")
    assert isinstance(s, MySQLStore)
    assert s.driver == "pymysql" or scheme == "mysql"
    assert "s3cret" not in repr(s)
    s.close()


def test_parse_url_decodes_percent_encoded_credentials_and_keeps_options() -> None:
    """Percent-encoded user, password and database decode; query options are kept in order."""
    url = parse_url(
        "mysql+pymysql://oct%40via:p%40ss%2Fw%3Ard@db.example:3307/oct%2Dtavia?charset=utf8"
    )
    assert (url.engine, url.driver) == ("mysql", "pymysql")
    assert (url.username, url.password) == ("oct@via", "p@ss/w:rd")
    assert (url.host, url.port, url.database) == ("db.example", 3307, "oct-tavia")
    assert url.options == (("charset", "utf8"),)
    assert "p@ss" not in repr(url)
    assert parse_url("postgresql+psycopg2://u:p@h/db").libpq == "postgresql://u:p@h/db"


def test_sqlite_store_in_a_missing_folder_raises_store_error(tmp_path: Any) -> None:
    """A database file that cannot be opened is a StoreError naming the path."""
    with pytest.raises(StoreError, match="no-such-folder"):
        SQLiteStore(str(tmp_path / "no-such-folder" / "x.db"))


def test_postgres_store_without_server_raises_store_error() -> None:
    """An unreachable PostgreSQL server is a StoreError, on every call, never a crash."""
    s = PostgresStore("postgresql://nobody@127.0.0.1:9/none", connect_timeout=1)
    for _ in range(2):
        with pytest.raises(StoreError):
            s.ping()
        with pytest.raises(StoreError):
            s.write_tick(TickWrite(now=NOW, health={"a": NOW}))
    s.close()


def test_sqlite_store_waits_for_another_writer_then_commits(tmp_path: Any) -> None:
    """Two processes' stores on one SQLite file serialise their ticks (WAL, busy timeout)."""
    path = str(tmp_path / "shared.db")
    a, b = SQLiteStore(path), SQLiteStore(path)
    a.create_schema()
    assert b.create_schema() == []
    a.write_tick(TickWrite(now=NOW, health={"a": NOW}))
    b.write_tick(TickWrite(now=NOW, health={"b": NOW}))
    assert set(a.read_health()) == {"a", "b"}
    assert a.execute("PRAGMA journal_mode")[0][0] == "wal"
    a.close()
    b.close()


def test_stored_view_is_plain_data() -> None:
    """StoredView is a frozen value: equal when its fields are."""
    v = StoredView("a", "ALLOCATED", "lb", {"id": "lb"})
    assert v == StoredView("a", "ALLOCATED", "lb", {"id": "lb"})
    assert v.udp_listeners_down == frozenset()


@pytest.mark.postgres
def test_postgresql_json_views_equal_the_portable_statement(pg_dsn: str) -> None:
    """PostgreSQL's server-built JSON views equal what the portable UNION statement gives."""
    from amphora_heartbeat.store.base import SQLStore

    s = PostgresStore(pg_dsn)
    s.create_schema()
    fleet = [
        *make_fleet(3, seed=1),
        *make_fleet(2, seed=2, listeners=3, pools=3, members=2, protocol="UDP"),
        *make_fleet(1, seed=3, listeners=0, pools=0),
        *make_fleet(1, seed=4, members=0),
    ]
    s.add_fleet(fleet)
    udp = fleet[3]
    s.execute("UPDATE member SET enabled = false WHERE pool_id = ?", [udp.pools[0].pool_id])
    s.execute(
        "UPDATE listener SET default_pool_id = NULL WHERE id = ?", [udp.listeners[1].listener_id]
    )
    s.execute("UPDATE amphora SET status = 'DELETED' WHERE id = ?", [fleet[0].amphora_id])
    ids = [a.amphora_id for a in fleet] + ["unknown"]
    got = s.read_views(ids)
    assert got == SQLStore.read_views(s, ids)
    assert len(got) == len(fleet) - 1
    assert got[udp.amphora_id].udp_listeners_down == {
        udp.listeners[0].listener_id,
        udp.listeners[1].listener_id,
    }
    s.close()


def test_a_heartbeat_after_a_claim_clears_busy_and_an_older_one_does_not(store: AnyStore) -> None:
    """An amphora heard after its claim is alive: busy cleared; a heartbeat from before: kept."""
    ids = _fleet_with_health(store, [200, 200])
    store.claim_failovers(ids, NOW - 150, now=NOW - 100)
    store.write_tick(TickWrite(now=NOW, health={ids[0]: NOW - 99, ids[1]: NOW - 101}))
    assert store.read_health() == {ids[0]: (NOW - 99, False), ids[1]: (NOW - 100, True)}


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Yield a function making a file read-only even for root (chattr +i); undone afterwards."""
    made: list[Path] = []

    def make(path: Path) -> None:
        path.chmod(0o444)
        if os.geteuid() == 0:
            try:
                subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                pytest.skip(f"cannot make a file read-only as root here: {exc}")
            made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)


def test_sqlite_ping_fails_on_a_database_that_cannot_be_written(
    tmp_path: Path, immutable: Callable[[Path], None]
) -> None:
    """A read-only database file fails the start-up check, not every tick after it."""
    path = tmp_path / "h.db"
    s = SQLiteStore(str(path))
    s.create_schema()
    s.ping()
    s.close()
    immutable(path)
    s = SQLiteStore(str(path))
    with pytest.raises(StoreError, match="cannot be written"):
        s.ping()
    s.close()


def test_sqlite_writes_to_a_deleted_database_file_fail_clearly(tmp_path: Path) -> None:
    """The file deleted (or replaced) while open: every write raises, nothing goes nowhere."""
    path = tmp_path / "h.db"
    s = SQLiteStore(str(path))
    s.create_schema()
    path.unlink()
    with pytest.raises(StoreError, match="deleted or replaced"):
        s.write_tick(TickWrite(now=NOW, health={"a": NOW}))
    with pytest.raises(StoreError, match="deleted or replaced"):
        s.ping()
    SQLiteStore(str(path)).close()  # a new file at the same path: still not ours
    with pytest.raises(StoreError, match="deleted or replaced"):
        s.write_tick(TickWrite(now=NOW, health={"a": NOW}))
    s.close()


def test_manager_command_on_a_read_only_sqlite_database_exits_1_at_start(
    tmp_path: Path, immutable: Callable[[Path], None]
) -> None:
    """`manager` on a database it cannot write: one clear line and exit status 1, at start-up."""
    import sys

    path = tmp_path / "h.db"
    s = SQLiteStore(str(path))
    s.create_schema()
    s.close()
    immutable(path)
    done = subprocess.run(
        [sys.executable, "-m", "amphora_heartbeat", "manager", "--db", f"sqlite:///{path}",
         "--key", "k", "--bind", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "cannot be written" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_last_update_ahead_beyond_the_tolerance_is_replaced_by_an_older_heartbeat(
    store: AnyStore,
) -> None:
    """Over 10 s ahead of the writer's clock (set back since): replaced; a lagging write: not."""
    store.write_tick(TickWrite(now=NOW, health={"a": NOW + 3600, "b": NOW + 9, "c": NOW + 50}))
    store.write_tick(TickWrite(now=NOW, health={"a": NOW, "b": NOW}))
    # A manager behind on its backlog writes an old heartbeat: its clock is right.
    store.write_tick(TickWrite(now=NOW + 100, health={"c": NOW}))
    assert store.read_health() == {
        "a": (NOW, False),
        "b": (NOW + 9, False),
        "c": (NOW + 50, False),
    }
