"""Tests of amphora_heartbeat.store.mysql on a real MariaDB server: what only this engine does.

The store's behaviour shared with the other engines is tested in test_store.py,
which runs every test on MariaDB too.  Here: the drivers and their URLs, several
managers at once (claims, deadlocks), lost connections, the session's isolation
and DATETIME's whole seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import _servers
import pytest

from amphora_heartbeat.models import ListenerStats
from amphora_heartbeat.store import MySQLStore, StatsUpsert, StoreError, TickWrite, parse_url
from amphora_heartbeat.store.mysql import connect_args
from amphora_heartbeat.testing import make_fleet

NOW = 1_800_000_000.0  # seconds since the epoch, 2027-01-15


@pytest.fixture
def mstore(mysql_url: str) -> Iterator[MySQLStore]:
    """Yield a MySQLStore on a fresh MariaDB database with the schema created."""
    s = MySQLStore(mysql_url)
    s.create_schema()
    try:
        yield s
    finally:
        s.close()


def _admin(url: str) -> Any:
    return _servers.mysql_connect(url)


def _fleet_with_health(s: MySQLStore, n: int, age: float) -> list[str]:
    fleet = make_fleet(n, seed=11, listeners=1, pools=1, members=1)
    s.add_fleet(fleet)
    ids = [a.amphora_id for a in fleet]
    s.write_tick(TickWrite(now=NOW, health=dict.fromkeys(ids, NOW - age)))
    return ids


# --- URLs and drivers ----------------------------------------------------------------


def test_connect_args_map_url_options_to_the_driver() -> None:
    """charset, ssl_* and connect_timeout from the URL reach connect(); defaults fill the rest."""
    url = parse_url(
        "mysql+pymysql://octavia:pw@127.0.0.1:3307/octavia?charset=utf8"
        "&ssl_ca=/etc/ca.pem&ssl_cert=/etc/c.pem&connect_timeout=7"
    )
    args = connect_args(url, connect_timeout=5, timeout=30)
    assert args["charset"] == "utf8"
    assert args["ssl"] == {"ca": "/etc/ca.pem", "cert": "/etc/c.pem"}
    assert args["connect_timeout"] == 7
    assert (args["host"], args["port"], args["database"]) == ("127.0.0.1", 3307, "octavia")
    assert (args["user"], args["password"], args["autocommit"]) == ("octavia", "pw", True)
    assert (args["read_timeout"], args["write_timeout"]) == (30, 30)
    bare = connect_args(parse_url("mysql://@/octavia"), connect_timeout=0.2, timeout=1)
    assert {"host", "port", "user", "password"} & set(bare) == set()  # the driver's defaults
    assert bare["connect_timeout"] == 1
    with pytest.raises(ValueError, match="whole seconds"):
        connect_args(parse_url("mysql://u@h/o?connect_timeout=soon"), 5, 30)


@pytest.mark.mysql
def test_a_percent_encoded_password_logs_in(mariadb_server: Any, mysql_url: str) -> None:
    """A password with @ / : % in it, percent-encoded in the URL, is the one the server checks."""
    database = parse_url(mysql_url).database
    user = f"u{database[-8:]}"
    with _admin(mariadb_server.url) as admin, admin.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY %s", ("p@ss/w:rd%1",))
        cur.execute(f"GRANT ALL ON {database}.* TO '{user}'@'127.0.0.1'")
    try:
        port = mariadb_server.port
        s = MySQLStore(f"mysql+pymysql://{user}:p%40ss%2Fw%3Ard%251@127.0.0.1:{port}/{database}")
        assert "operating_status" in s.create_schema()
        s.close()
        wrong = MySQLStore(f"mysql+pymysql://{user}:p%40ss@127.0.0.1:{port}/{database}")
        with pytest.raises(StoreError, match="Access denied"):
            wrong.ping()
    finally:
        with _admin(mariadb_server.url) as admin, admin.cursor() as cur:
            cur.execute(f"DROP USER '{user}'@'127.0.0.1'")


@pytest.mark.mysql
def test_mysqlclient_urls_use_mysqlclient(mysql_url: str) -> None:
    """mysql+mysqldb:// (SQLAlchemy's name for mysqlclient) opens the store on that driver."""
    pytest.importorskip("MySQLdb", reason="mysqlclient is not installed (optional)")
    s = MySQLStore(mysql_url.replace("mysql+pymysql://", "mysql+mysqldb://"))
    assert s.driver == "mysqldb"
    s.create_schema()
    s.write_tick(TickWrite(now=NOW, health={"a": NOW}))
    assert s.read_health() == {"a": (NOW, False)}
    s.close()


@pytest.mark.skipif(
    importlib.util.find_spec("MySQLdb") is not None, reason="mysqlclient is installed"
)
def test_a_url_naming_a_missing_driver_says_which_to_install() -> None:
    """mysql+mysqldb:// without mysqlclient installed is an ImportError naming the package."""
    with pytest.raises(ImportError, match="mysqlclient"):
        MySQLStore("mysql+mysqldb://octavia@127.0.0.1/octavia")


def test_mysql_store_without_server_raises_store_error() -> None:
    """A closed port is a StoreError, on every call, never a crash."""
    s = MySQLStore(
        f"mysql+pymysql://nobody@127.0.0.1:{_servers.free_port()}/none", connect_timeout=1
    )
    for _ in range(2):
        with pytest.raises(StoreError, match="MySQL"):
            s.ping()
        with pytest.raises(StoreError):
            s.write_tick(TickWrite(now=NOW, health={"a": NOW}))
    s.close()


def test_mysql_store_refuses_other_engines_urls() -> None:
    """MySQLStore takes only mysql URLs."""
    with pytest.raises(ValueError, match="mysql://"):
        MySQLStore("postgresql://u@127.0.0.1/db")


# --- the session ---------------------------------------------------------------------


@pytest.mark.mysql
def test_sessions_read_committed_and_see_other_managers_commits(mstore: MySQLStore) -> None:
    """The session runs at READ COMMITTED, and a later read sees another store's commit."""
    assert mstore.execute("SELECT @@tx_isolation")[0][0] == "READ-COMMITTED"
    other = MySQLStore(mstore_url(mstore))
    assert mstore.read_health() == {}
    other.write_tick(TickWrite(now=NOW, health={"a": NOW}))
    assert mstore.read_health() == {"a": (NOW, False)}
    other.close()


def mstore_url(s: MySQLStore) -> str:
    """Return a URL to the same database as ``s`` (root on 127.0.0.1)."""
    args = s._args
    return f"mysql+pymysql://root@127.0.0.1:{args['port']}/{args['database']}"


@pytest.mark.mysql
def test_last_update_is_rounded_up_to_whole_seconds(mstore: MySQLStore) -> None:
    """DATETIME has no fraction: a heartbeat at x.2 s is stored as x+1, never as x."""
    mstore.write_tick(TickWrite(now=NOW, health={"a": NOW + 0.2, "b": NOW}))
    assert mstore.read_health() == {"a": (NOW + 1, False), "b": (NOW, False)}
    mstore.write_tick(TickWrite(now=NOW, health={"a": NOW + 0.9}))  # same second: kept
    assert mstore.read_health()["a"] == (NOW + 1, False)
    column = mstore.execute(
        "SELECT column_type FROM information_schema.columns WHERE table_schema = DATABASE()"
        " AND table_name = 'amphora_health' AND column_name = 'last_update'"
    )
    assert column[0][0] == "datetime"


@pytest.mark.mysql
def test_a_silent_amphora_is_stale_no_sooner_than_the_timeout(mstore: MySQLStore) -> None:
    """Rounding up keeps the silence measured from last_update at most the real one."""
    ids = _fleet_with_health(mstore, 1, age=-0.3)  # heard at NOW + 0.3
    assert mstore.stale_amphorae(NOW + 0.3) == {}  # stored as NOW: stale before its time
    assert mstore.stale_amphorae(NOW + 0.9) == {}
    assert list(mstore.stale_amphorae(NOW + 1.01)) == ids


# --- several managers ----------------------------------------------------------------


@pytest.mark.mysql
def test_concurrent_claims_on_mariadb_split_the_stale_amphorae(mstore: MySQLStore) -> None:
    """Several managers claiming the same stale set at once each get a disjoint share."""
    ids = _fleet_with_health(mstore, 200, age=100)
    url = mstore_url(mstore)
    claimed: list[list[str]] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        s = MySQLStore(url)
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


@pytest.mark.mysql
def test_a_claim_skips_rows_another_manager_holds(mstore: MySQLStore) -> None:
    """A health row locked by another transaction is skipped, not waited for."""
    ids = _fleet_with_health(mstore, 3, age=100)
    with _admin(mstore_url(mstore)) as other, other.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT 1 FROM amphora_health WHERE amphora_id = %s FOR UPDATE", (ids[1],))
        assert mstore.claim_failovers(ids, NOW - 60, now=NOW) == sorted([ids[0], ids[2]])
        cur.execute("ROLLBACK")
    assert mstore.claim_failovers(ids, NOW - 60, now=NOW) == [ids[1]]


@pytest.mark.mysql
def test_concurrent_tick_writes_on_mariadb_add_every_delta(mstore: MySQLStore) -> None:
    """Managers writing the same rows at once neither fail nor lose an addition."""
    keys = [(f"l{i}", f"a{i % 7}") for i in range(40)]
    one = ListenerStats(1, 1, 1, 1, 1)
    url = mstore_url(mstore)

    def write(reverse: bool) -> None:
        s = MySQLStore(url)
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
    assert mstore.read_statistics() == {k: ListenerStats(80, 80, 1, 80, 80) for k in keys}


def _wait_for_lock_wait(cur: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
        )
        if cur.fetchone()[0]:
            return
        assert time.monotonic() < deadline, "the tick never waited for the lock"
        time.sleep(0.01)


@pytest.mark.mysql
def test_a_tick_that_loses_a_deadlock_is_written_again_once(
    mstore: MySQLStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The deadlock victim is rolled back and run again: its delta is added exactly once."""
    mstore.write_tick(
        TickWrite(
            now=NOW,
            health={f"h{i:02}": NOW for i in range(40)},
            stats=[StatsUpsert("l", "a", ListenerStats(1, 1, 1, 1, 1), add=False)],
        )
    )
    write = TickWrite(
        now=NOW + 10,
        health={"h00": NOW + 10, "h39": NOW + 10},
        stats=[StatsUpsert("l", "a", ListenerStats(5, 5, 5, 5, 5), add=True)],
    )
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            mstore.write_tick(write)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with _admin(mstore_url(mstore)) as other, other.cursor() as cur:
        cur.execute("BEGIN")
        # The other transaction holds h39 and many rows (InnoDB picks the
        # transaction that changed fewer rows as the victim: the tick).
        cur.execute(
            "UPDATE amphora_health SET last_update = last_update + INTERVAL 1 SECOND"
            " WHERE amphora_id >= 'h01'"
        )
        caplog.set_level(logging.INFO, "amphora_heartbeat.store")
        writer = threading.Thread(target=tick)
        writer.start()  # locks h00, then waits for h39
        with _admin(mstore_url(mstore)) as watch, watch.cursor() as wcur:
            _wait_for_lock_wait(wcur)
        # A claim stamps last_update; later than the tick's heartbeat, so it stays busy.
        cur.execute(
            "UPDATE amphora_health SET busy = true, last_update = last_update + INTERVAL 15 SECOND"
            " WHERE amphora_id = 'h00'"
        )
        cur.execute("COMMIT")
        writer.join(60)
    assert errors == []
    assert "retrying" in caplog.text
    assert mstore.read_statistics()[("l", "a")] == ListenerStats(6, 6, 5, 6, 6)
    assert mstore.read_health()["h39"] == (NOW + 10, False)
    assert mstore.read_health()["h00"] == (NOW + 15, True)  # the other's write kept too


@pytest.mark.mysql
def test_a_lost_connection_is_a_store_error_then_reopened(mstore: MySQLStore) -> None:
    """The server drops the connection: that call fails, the next one reconnects."""
    mstore.ping()
    thread = mstore.execute("SELECT CONNECTION_ID()")[0][0]
    with _admin(mstore_url(mstore)) as other, other.cursor() as cur:
        cur.execute(f"KILL {int(thread)}")
    with pytest.raises(StoreError):
        mstore.write_tick(TickWrite(now=NOW, health={"a": NOW}))
    mstore.write_tick(TickWrite(now=NOW, health={"a": NOW}))
    assert mstore.read_health() == {"a": (NOW, False)}
    assert mstore.execute("SELECT CONNECTION_ID()")[0][0] != thread


@pytest.mark.mysql
def test_a_failed_statement_rolls_the_transaction_back_and_keeps_the_connection(
    mstore: MySQLStore,
) -> None:
    """A bad statement undoes the transaction's earlier writes; the same connection goes on."""
    thread = mstore.execute("SELECT CONNECTION_ID()")[0][0]
    with pytest.raises(StoreError, match="MySQL"):
        mstore.write_tick(
            TickWrite(
                now=NOW,
                health={"a": NOW},
                stats=[StatsUpsert("l", "a", ListenerStats(2**63), add=True)],
            )
        )
    assert mstore.read_health() == {}
    assert mstore.execute("SELECT CONNECTION_ID()")[0][0] == thread


@pytest.mark.mysql
def test_mariadb_json_views_equal_the_portable_statement(mstore: MySQLStore) -> None:
    """The server-built JSON views equal what the portable UNION statement gives."""
    from amphora_heartbeat.store.base import SQLStore

    fleet = [
        *make_fleet(3, seed=1),
        *make_fleet(2, seed=2, listeners=3, pools=3, members=2, protocol="UDP"),
        *make_fleet(1, seed=3, listeners=0, pools=0),
        *make_fleet(1, seed=4, members=0),
    ]
    mstore.add_fleet(fleet, lb_network_ip=lambda i: f"192.0.2.{i}")
    udp = fleet[3]
    mstore.execute("UPDATE member SET enabled = false WHERE pool_id = ?", [udp.pools[0].pool_id])
    mstore.execute(
        "UPDATE listener SET default_pool_id = NULL WHERE id = ?", [udp.listeners[1].listener_id]
    )
    mstore.execute(
        "UPDATE listener SET enabled = false WHERE id = ?", [udp.listeners[2].listener_id]
    )
    mstore.execute("UPDATE load_balancer SET enabled = false WHERE id = ?", [udp.load_balancer_id])
    mstore.execute("UPDATE amphora SET status = 'DELETED' WHERE id = ?", [fleet[0].amphora_id])
    ids = [a.amphora_id for a in fleet] + ["unknown"]
    got = mstore.read_views(ids)
    assert got == SQLStore.read_views(mstore, ids)
    assert len(got) == len(fleet) - 1
    assert got[udp.amphora_id].udp_listeners_down == {
        udp.listeners[0].listener_id,
        udp.listeners[1].listener_id,
    }
    assert got[udp.amphora_id].view["enabled"] is False
    assert got[fleet[6].amphora_id].view["pools"][fleet[6].pools[0].pool_id]["members"] == {}
