"""Tests of the manager's promises to a fleet whose key any amphora holds, and to a flaky network.

One heartbeat the database refuses must not stall the rest (bisection); ids no
column can hold never reach the database; a replayed or duplicated v3 datagram
adds its statistics once; with ``check_source`` a heartbeat speaks only for the
amphora at its source address; statistics rows only for the load balancer's own
listeners.  Every test runs on every engine of tests/_pg.py; the ones about
processes run the manager as a real process.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _pg
import pytest

from amphora_heartbeat.envelope import Codec, wrap_envelope
from amphora_heartbeat.manager import HealthManager
from amphora_heartbeat.manager.judge import same_address
from amphora_heartbeat.manager.replay import WINDOW, admit
from amphora_heartbeat.models import Heartbeat, ListenerStats
from amphora_heartbeat.store import (
    PostgresStore,
    SQLiteStore,
    StatsUpsert,
    StoreConflict,
    StoreDataError,
    StoreError,
    TickWrite,
    open_store,
    storable_id,
)
from amphora_heartbeat.testing import AmphoraSpec, make_fleet

pg_server = _pg.pg_server
pg_dsn = _pg.pg_dsn
db_url = _pg.db_url
store = _pg.store

AnyStore = SQLiteStore | PostgresStore
T0 = 1_800_000_000.0
KEY = "manager-security-key"
BIG = (1 << 63) - 1  # the largest counter a heartbeat may carry (and a BIGINT hold)


def _hb(amp: AmphoraSpec, recv: float, **options: Any) -> Heartbeat:
    return Heartbeat.from_dict(amp.message(**options), recv_time=recv)


def _bytes_in(amp: AmphoraSpec, value: int, seq: int) -> Heartbeat:
    """Return a v3 heartbeat of ``amp`` adding ``value`` to its first listener's bytes_in."""
    stats = {amp.listeners[0].listener_id: ListenerStats(value, 0, 0, 1, 0)}
    return Heartbeat.from_dict(amp.message(seq=seq, stats=stats), recv_time=T0 + seq)


def _manager(s: AnyStore, **options: Any) -> HealthManager:
    options.setdefault("started", T0)
    options.setdefault("heartbeat_timeout", 60)
    return HealthManager(None, s, **options)


def _wait(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


# --- the store boundary and data errors -------------------------------------------------


def test_storable_id_takes_uuids_and_refuses_long_or_control_characters() -> None:
    """An id fits the columns: at most 36 printable characters, no NUL, no lone surrogate."""
    assert storable_id("85750621-02fb-4d4f-b57f-bc5af71a1bfc")
    assert not storable_id("x" * 37)
    assert not storable_id("evil\x00id")
    assert not storable_id("evil\nid")
    assert not storable_id("bad\ud800")


def test_a_counter_sum_beyond_bigint_is_a_data_error_on_every_engine(store: AnyStore) -> None:
    """Adding a delta that overflows the stored BIGINT fails as data (not transient), undone."""
    (amp,) = make_fleet(1, seed=1, listeners=1)
    lid = amp.listeners[0].listener_id
    row = StatsUpsert(lid, amp.amphora_id, ListenerStats(1, 0, 0, 0, 0), add=True)
    store.write_tick(TickWrite(now=T0, stats=[row]))
    big = StatsUpsert(lid, amp.amphora_id, ListenerStats(BIG, 0, 0, 0, 0), add=True)
    with pytest.raises(StoreDataError) as caught:
        store.write_tick(TickWrite(now=T0, health={amp.amphora_id: T0}, stats=[big]))
    assert caught.value.transient is False
    assert store.read_statistics()[(lid, amp.amphora_id)].bytes_in == 1
    assert store.read_health() == {}


def test_a_heartbeat_the_database_refuses_is_isolated_and_the_rest_committed(
    store: AnyStore,
) -> None:
    """One poison heartbeat in a batch: dropped and counted, every other one committed."""
    fleet = make_fleet(9, seed=2, listeners=1, pools=1, members=1)
    store.add_fleet(fleet)
    poison = fleet[4]
    m = _manager(store)
    m.submit(_bytes_in(poison, 1, 0))
    m.step(T0)
    for i, amp in enumerate(fleet):
        m.submit(_bytes_in(amp, BIG, 1) if amp is poison else _bytes_in(amp, 7, 1))
        if i == 6:
            m.submit(_bytes_in(poison, 5, 2))  # behind the poison, same amphora: judged alone
    m.step(T0 + 2)
    health = store.read_health()
    assert {a for a, (t, _) in health.items() if t == T0 + 1} == {
        a.amphora_id for a in fleet if a is not poison
    }
    assert health[poison.amphora_id][0] == T0 + 2
    stats = store.read_statistics()
    assert stats[(poison.listeners[0].listener_id, poison.amphora_id)].bytes_in == 1 + 5
    counters = m.counters
    assert counters["poison_heartbeats"] == 1
    assert counters["backlog"] == 0
    assert counters["store_errors"] == 0


def test_ids_no_column_can_hold_never_reach_the_database(store: AnyStore) -> None:
    """A hand-built heartbeat with a NUL or a 40-character id is dropped before the store."""
    (amp,) = make_fleet(1, seed=3, listeners=1, pools=1, members=1)
    store.add_fleet([amp])
    m = _manager(store)
    for bad in ("evil\x00id", "a" * 40):
        m.submit(Heartbeat(amphora_id=bad, recv_time=T0))
    m.submit(_hb(amp, T0))
    m.step(T0 + 1)
    assert set(store.read_health()) == {amp.amphora_id}
    assert m.counters["unstorable_id"] == 2
    assert m.counters["poison_heartbeats"] == 0


def test_a_database_that_is_away_keeps_the_batch_and_retries(tmp_path: Path) -> None:
    """A locked SQLite file is not data: nothing dropped, the batch waits, then commits."""
    path = tmp_path / "h.db"
    s = SQLiteStore(str(path), timeout=0.05)
    s.create_schema()
    (amp,) = make_fleet(1, seed=4, listeners=1)
    s.add_fleet([amp])
    m = _manager(s)
    locker = SQLiteStore(str(path))
    locker._conn.execute("BEGIN EXCLUSIVE")
    m.submit(_hb(amp, T0))
    assert m.step(T0 + 1).failed
    assert m.counters["poison_heartbeats"] == 0
    assert m.backlog == 1
    locker._conn.execute("ROLLBACK")
    locker.close()
    assert not m.step(T0 + 30).failed
    assert set(s.read_health()) == {amp.amphora_id}
    s.close()


# --- the replay guard ---------------------------------------------------------------


def test_admit_counts_each_seq_once_within_the_window() -> None:
    """Duplicates and counted older seqs are refused; a late one within the window counts once."""
    ok, state = admit(None, 10)
    assert ok
    assert admit(state, 10) == (False, state)
    ok, state = admit(state, 12)
    assert ok
    ok, state = admit(state, 11)  # late, not counted yet
    assert ok
    assert admit(state, 11)[0] is False
    assert admit(state, 10)[0] is False
    assert admit(state, 12)[0] is False


def test_admit_takes_a_restart_without_boot_time_and_a_newer_boot() -> None:
    """Far below the newest without boot time: a restart; a newer boot always is, an older never."""
    _, state = admit(None, 500)
    ok, restarted = admit(state, 0)
    assert ok
    assert restarted == (0, 0, 0)
    _, state = admit(None, 10, boot=100)
    assert admit(state, 0, boot=200) == (True, (200, 0, 0))
    assert admit(state, 11, boot=50)[0] is False
    _, far = admit(None, 10 + WINDOW + 1, boot=100)
    assert admit(far, 0, boot=100)[0] is False


def test_the_same_v3_heartbeat_five_times_counts_its_statistics_once(store: AnyStore) -> None:
    """Duplicated datagrams (same seq) add their deltas once, over ticks and in one tick."""
    (amp,) = make_fleet(1, seed=5, listeners=1, pools=1, members=1)
    store.add_fleet([amp])
    m = _manager(store)
    key = (amp.listeners[0].listener_id, amp.amphora_id)
    for i in range(5):
        m.submit(_bytes_in(amp, 1000, 3))
        if i % 2:
            m.step(T0 + 10 + i)
    m.step(T0 + 20)
    assert store.read_statistics()[key].bytes_in == 1000
    assert m.counters["stats_replayed"] == 4


def test_an_older_seq_adds_nothing_and_a_restart_is_counted(store: AnyStore) -> None:
    """After seq 100, seq 99 (counted) and 100 add nothing; an agent restarted at seq 0 counts."""
    (amp,) = make_fleet(1, seed=6, listeners=1, pools=1, members=1)
    store.add_fleet([amp])
    m = _manager(store)
    key = (amp.listeners[0].listener_id, amp.amphora_id)
    for seq, value in ((99, 1), (100, 10), (99, 100), (100, 1000)):
        m.submit(_bytes_in(amp, value, seq))
        m.step(T0 + 200)
    assert store.read_statistics()[key].bytes_in == 11
    m.submit(_bytes_in(amp, 10_000, 0))
    m.step(T0 + 200)
    assert store.read_statistics()[key].bytes_in == 10_011


def test_the_guard_holds_across_a_manager_restart_and_two_managers(store: AnyStore) -> None:
    """The state is in the database: a new manager (or a second one) refuses what was counted."""
    (amp,) = make_fleet(1, seed=7, listeners=1, pools=1, members=1)
    store.add_fleet([amp])
    key = (amp.listeners[0].listener_id, amp.amphora_id)
    first = _manager(store)
    first.submit(_bytes_in(amp, 5, 1))
    first.step(T0 + 5)
    for other in (_manager(store), _manager(store)):
        other.submit(_bytes_in(amp, 5, 1))
        other.step(T0 + 5)
        assert other.counters["stats_replayed"] == 1
    assert store.read_statistics()[key].bytes_in == 5


def test_a_write_on_a_state_another_manager_moved_is_judged_again(store: AnyStore) -> None:
    """Two managers judge one seq against one state: the second write conflicts and re-reads."""
    (amp,) = make_fleet(1, seed=8, listeners=1, pools=1, members=1)
    store.add_fleet([amp])
    key = (amp.listeners[0].listener_id, amp.amphora_id)
    a, b = _manager(store), _manager(store)
    a.submit(_bytes_in(amp, 3, 1))
    a.step(T0 + 5)
    # b read its views before a's next write: make its read stale by writing between.
    views = store.read_views([amp.amphora_id])
    a.submit(_bytes_in(amp, 3, 2))
    a.step(T0 + 5)
    stale_read = {amp.amphora_id: views[amp.amphora_id]}
    b._ticker.writer.store = _StaleOnce(store, stale_read)  # type: ignore[assignment]
    b.submit(_bytes_in(amp, 3, 2))
    b.step(T0 + 5)
    assert store.read_statistics()[key].bytes_in == 6
    assert b.counters["stats_replayed"] == 1


class _StaleOnce:
    """A store whose first read_views answers an old result (a read before another write)."""

    def __init__(self, store: AnyStore, first: Any) -> None:
        self._store = store
        self._first = first

    def read_views(self, ids: Any) -> Any:
        first, self._first = self._first, None
        return first if first is not None else self._store.read_views(ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


# --- the source address -------------------------------------------------------------


def test_same_address_takes_ipv4_mapped_ipv6_as_ipv4() -> None:
    """::ffff:10.0.0.1 is 10.0.0.1; another address, or text that is no address, is not."""
    assert same_address("::ffff:10.0.0.1", "10.0.0.1")
    assert same_address("10.0.0.1", "::ffff:10.0.0.1")
    assert same_address("fd00::1", "fd00:0::1")
    assert not same_address("10.0.0.2", "10.0.0.1")
    assert not same_address("not-an-ip", "10.0.0.1")


def test_check_source_writes_nothing_for_a_heartbeat_from_another_address(
    store: AnyStore,
) -> None:
    """A heartbeat for amphora B from A's address changes nothing and is counted."""
    fleet = make_fleet(2, seed=9, listeners=1, pools=1, members=1)
    store.add_fleet(fleet, lb_network_ip=lambda i: f"10.0.0.{i + 1}")
    amp_a, amp_b = fleet
    before = store.execute("SELECT id, operating_status FROM member ORDER BY id")
    m = _manager(store, check_source=True)
    forged = _hb(amp_b, T0, member_status=dict.fromkeys(amp_b.pools[0].members, "DOWN"))
    m.submit(forged, "10.0.0.1")
    m.submit(_hb(amp_a, T0), "::ffff:10.0.0.1")
    m.submit(_hb(amp_a, T0 + 1))  # no source known: cannot be checked
    m.step(T0 + 2)
    assert set(store.read_health()) == {amp_a.amphora_id}
    assert store.execute("SELECT id, operating_status FROM member ORDER BY id") == before
    assert m.counters["source_mismatch"] == 2
    unchecked = _manager(store)
    unchecked.submit(forged, "10.0.0.1")
    unchecked.step(T0 + 3)
    assert amp_b.amphora_id in store.read_health()


def test_check_source_accepts_any_address_where_lb_network_ip_is_unset(store: AnyStore) -> None:
    """No lb_network_ip stored: nothing to compare, the heartbeat is judged."""
    (amp,) = make_fleet(1, seed=10, listeners=1, pools=1, members=1)
    store.add_fleet([amp])
    m = _manager(store, check_source=True)
    m.submit(_hb(amp, T0), "10.9.9.9")
    m.step(T0 + 1)
    assert set(store.read_health()) == {amp.amphora_id}
    assert m.counters["source_mismatch"] == 0


# --- real manager processes ------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """Return a key file holding KEY."""
    path = tmp_path / "key"
    path.write_text(KEY + "\n", encoding="utf-8")
    return path


def _start(
    db: str,
    key_file: Path,
    *extra: str,
    waiting: Callable[[], object] = lambda: None,
    **popen: Any,
) -> tuple[subprocess.Popen[str], int]:
    """Start a manager process; call ``waiting()`` until it says it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "amphora_heartbeat", "manager", "--db", db, "--bind", "127.0.0.1:0",
         "--key-file", str(key_file), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while not select.select([proc.stdout], [], [], 0)[0] and time.monotonic() < deadline:
        waiting()
        select.select([proc.stdout], [], [], 0.05)
    line = proc.stdout.readline() if select.select([proc.stdout], [], [], 0)[0] else ""
    if not line.startswith("listening on 127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"manager did not start: {line!r} {proc.communicate()[1]}")
    return proc, int(line.rsplit(":", 1)[1])


def _stop(proc: subprocess.Popen[str]) -> dict[str, float]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    counters: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return counters


def _failover_command(log: Path) -> list[str]:
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
    return ["--failover-command", f"{sys.executable} -c {script!r} {log}"]


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    """Yield a UDP socket to send heartbeats from 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        yield sock


def test_a_poison_heartbeat_stalls_neither_writes_nor_failover_in_a_manager_process(
    db_url: str, key_file: Path, tmp_path: Path, sender: socket.socket
) -> None:
    """Signed heartbeats the database refuses each round: live rows advance, the dead fail over."""
    s = open_store(db_url)
    s.create_schema()
    fleet = make_fleet(6, seed=11, listeners=1, pools=1, members=1)
    s.add_fleet(fleet)
    poison, dead, live = fleet[0], fleet[1], fleet[2:]
    lid = poison.listeners[0].listener_id
    s.execute(
        "INSERT INTO listener_statistics (listener_id, amphora_id, bytes_in, bytes_out,"
        " active_connections, total_connections, request_errors) VALUES (?, ?, 1, 0, 0, 0, 0)",
        (lid, poison.amphora_id),
    )
    log = tmp_path / "failovers"
    log.touch()
    options = ["--heartbeat-timeout", "1.5", "--health-check-interval", "0.1", "--tick", "0.05"]
    proc, port = _start(db_url, key_file, *options, *_failover_command(log))
    stats = {lid: ListenerStats(BIG, 0, 0, 0, 0)}
    seq = 0
    try:

        def send_round(amphorae: list[AmphoraSpec]) -> None:
            nonlocal seq
            seq += 1
            sender.sendto(
                wrap_envelope(poison.message(seq=seq, stats=stats), KEY), ("127.0.0.1", port)
            )
            for amp in amphorae:
                sender.sendto(wrap_envelope(amp.message(seq=seq), KEY), ("127.0.0.1", port))
            time.sleep(0.1)

        _wait(lambda: (send_round([dead, *live]), dead.amphora_id in s.read_health())[1])
        heard = time.time()
        _wait(
            lambda: (send_round(live), log.read_text().split() == [dead.amphora_id])[1],
            what="the dead amphora failed over",
        )
        _wait(
            lambda: (
                send_round(live),
                all(s.read_health()[a.amphora_id][0] > heard + 1 for a in live),
            )[1],
            what="live rows moving on",
        )
    finally:
        counters = _stop(proc)
    assert log.read_text().split() == [dead.amphora_id]
    assert counters["poison_heartbeats"] >= 2
    assert s.read_statistics()[(lid, poison.amphora_id)].bytes_in == 1
    s.close()


def test_duplicates_sent_to_two_manager_processes_add_once(
    db_url: str, key_file: Path, sender: socket.socket
) -> None:
    """The same v3 datagram 5 times to each of two managers on one database: bytes_in once."""
    s = open_store(db_url)
    s.create_schema()
    (amp,) = make_fleet(1, seed=12, listeners=1, pools=1, members=1)
    s.add_fleet([amp])
    key = (amp.listeners[0].listener_id, amp.amphora_id)
    managers = [_start(db_url, key_file, "--tick", "0.02") for _ in range(2)]
    try:
        for seq in (1, 2):
            datagram = wrap_envelope(
                amp.message(seq=seq, stats={key[0]: ListenerStats(1000, 0, 0, 1, 0)}), KEY
            )
            for _ in range(5):
                for _, port in managers:
                    sender.sendto(datagram, ("127.0.0.1", port))
            _wait(lambda seq=seq: _total_connections(s, key) == seq, what=f"seq {seq} counted")
    finally:
        counters = [_stop(proc) for proc, _ in managers]
    assert sum(c["accepted"] for c in counters) == 20
    assert sum(c["heartbeats_judged"] for c in counters) == 20
    assert s.read_statistics()[key].bytes_in == 2000
    assert sum(c["stats_replayed"] for c in counters) == 18
    s.close()


def _total_connections(s: AnyStore, key: tuple[str, str]) -> int:
    row = s.read_statistics().get(key)
    return -1 if row is None else row.total_connections


def test_store_error_subclasses_say_whether_retrying_may_help() -> None:
    """A plain StoreError is transient; a StoreDataError is not."""
    assert StoreError("away").transient is True
    assert StoreDataError("bad").transient is False


def test_check_source_option_of_the_manager_process(
    db_url: str, key_file: Path, sender: socket.socket
) -> None:
    """`manager --check-source`: from 127.0.0.1 for the amphora at 127.0.0.2, nothing written."""
    s = open_store(db_url)
    s.create_schema()
    fleet = make_fleet(2, seed=13, listeners=1, pools=1, members=1)
    s.add_fleet(fleet, lb_network_ip=lambda i: f"127.0.0.{i + 1}")
    proc, port = _start(db_url, key_file, "--tick", "0.02", "--check-source")
    try:
        for amp in reversed(fleet):
            sender.sendto(wrap_envelope(amp.message(), KEY), ("127.0.0.1", port))
        _wait(lambda: fleet[0].amphora_id in s.read_health(), what="the true one recorded")
    finally:
        counters = _stop(proc)
    assert set(s.read_health()) == {fleet[0].amphora_id}
    assert counters["source_mismatch"] == 1
    s.close()


# A failover command standing in for Octavia's: it marks the amphora DELETED when
# done.  Under a manager started with SLOW_BEFORE it hangs before finishing for the
# ids listed there, and after finishing for the others (killed either way).
_FAILOVER_SCRIPT = """
import os, sys, time
from amphora_heartbeat.store import open_store
log, db, amphora_id = sys.argv[1:4]
def note(what):
    with open(log, "a") as f:
        f.write(f"{what} {amphora_id} {os.getppid()}\\n")
note("start")
slow = os.environ.get("SLOW_BEFORE")
if slow is not None and amphora_id in slow.split(","):
    time.sleep(600)
s = open_store(db)
s.execute("UPDATE amphora SET status = 'DELETED' WHERE id = ?", [amphora_id])
s.close()
note("done")
if slow is not None:
    time.sleep(600)
"""


def test_a_manager_killed_mid_failover_leaves_no_amphora_busy_nor_failed_over_twice(
    db_url: str, key_file: Path, tmp_path: Path, sender: socket.socket
) -> None:
    """A manager group SIGKILLed mid-failover: claims expire; each failed over once, none busy."""
    s = open_store(db_url)
    s.create_schema()
    fleet = make_fleet(8, seed=14, listeners=1, pools=1, members=1)
    s.add_fleet(fleet)
    silent, live = fleet[:4], fleet[4:]
    hanging = sorted(a.amphora_id for a in silent)[:2]
    script = tmp_path / "failover.py"
    script.write_text(_FAILOVER_SCRIPT, encoding="utf-8")
    log = tmp_path / "failovers"
    log.touch()
    options = ["--heartbeat-timeout", "1.5", "--health-check-interval", "0.1", "--tick", "0.05",
               "--failover-timeout", "8",
               "--failover-command", f"{sys.executable} {script} {log} {db_url}"]  # fmt: skip
    env = {**os.environ, "SLOW_BEFORE": ",".join(hanging)}
    # The first one's own timeout is long: it must still be running them when killed,
    # however slowly the others start on a loaded machine.
    first, port = _start(
        db_url, key_file, *options, "--failover-timeout", "600", start_new_session=True, env=env
    )
    ports = [port]
    seq = 0

    def send_round(amphorae: list[AmphoraSpec]) -> None:
        nonlocal seq
        for amp in amphorae:
            seq += 1
            sender.sendto(
                wrap_envelope(amp.message(seq=seq), KEY), ("127.0.0.1", ports[seq % len(ports)])
            )
        time.sleep(0.1)

    def lines(what: str) -> list[str]:
        return sorted(w[1] for w in map(str.split, log.read_text().splitlines()) if w[0] == what)

    others: list[subprocess.Popen[str]] = []
    try:
        _wait(lambda: (send_round(fleet), len(s.read_health()) == 8)[1], what="all heard")
        silent_ids = sorted(a.amphora_id for a in silent)
        _wait(
            lambda: (send_round(live), lines("start") == silent_ids and len(lines("done")) == 2)[1],
            what="every silent amphora claimed by the first manager",
        )
        for _ in range(2):  # the live ones keep talking while the others start
            proc, other_port = _start(db_url, key_file, *options, waiting=lambda: send_round(live))
            others.append(proc)
            ports.append(other_port)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        ports.remove(port)
        _wait(
            lambda: (send_round(live), lines("done") == silent_ids)[1],
            timeout=60,
            what="the hanging failovers taken over",
        )
        _wait(
            lambda: (send_round(live), set(s.read_health()) == {a.amphora_id for a in live})[1],
            what="the rows of the amphorae failed over cleared",
        )
        for _ in range(10):
            send_round(live)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        counters = [_stop(proc) for proc in others]
    assert lines("done") == silent_ids  # each exactly once
    assert lines("start") == sorted(silent_ids + hanging)
    assert not any(busy for _, busy in s.read_health().values())
    assert sum(c["failovers_succeeded"] for c in counters) == 2
    assert sum(c["claims_cleared"] for c in counters) == 2
    s.close()


# --- memory ---------------------------------------------------------------------------


def _big_heartbeat(amp: AmphoraSpec, seq: int, members: int) -> bytes:
    """Return a signed zstd heartbeat of ``amp`` with ``members`` members, 8,000 per pool."""
    message = amp.message(seq=seq)
    listener = amp.listeners[0].listener_id
    for p in range(0, members, 8000):
        names = {f"m{seq}-{i}": "UP" for i in range(p, min(p + 8000, members))}
        message["pools"][f"p{p}:{listener}"] = {"status": "UP", "members": names}
    return wrap_envelope(message, KEY, codec=Codec.ZSTD)


def _rx_queue(port: int) -> int:
    """Return the bytes waiting in the receive queue of the UDP socket bound to ``port``."""
    with open("/proc/net/udp", encoding="ascii") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no UDP socket on port {port}")


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_manager_process_holds_its_backlog_in_bounded_memory(
    tmp_path: Path, key_file: Path, sender: socket.socket
) -> None:
    """Store locked, 150 signed 40,000-member heartbeats: the manager's peak RSS stays bounded."""
    import sqlite3

    db = tmp_path / "h.db"
    s = SQLiteStore(str(db))
    s.create_schema()
    (amp,) = make_fleet(1, seed=15, listeners=1, pools=1, members=1)
    s.add_fleet([amp])
    proc, port = _start(f"sqlite:///{db}", key_file, "--tick", "0.05")
    lock = sqlite3.connect(str(db), isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        sender.sendto(_big_heartbeat(amp, 0, 40_000), ("127.0.0.1", port))
        _wait(lambda: _rx_queue(port) == 0, what="the first big heartbeat read")
        baseline = _status_kib(proc.pid, "VmRSS")
        for seq in range(1, 151):
            sender.sendto(_big_heartbeat(amp, seq, 40_000), ("127.0.0.1", port))
            if seq % 5 == 0:
                _wait(lambda: _rx_queue(port) == 0, what="the socket drained")
        peak = _status_kib(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGTERM)
        lock.execute("ROLLBACK")
        lock.close()
        out, _ = proc.communicate(timeout=60)
    counters = json.loads(out.strip().splitlines()[-1])
    growth_mib = (peak - baseline) / 1024
    print(f"RSS growth {growth_mib:.0f} MiB from {baseline / 1024:.0f} MiB")
    assert counters["accepted"] > 140
    assert counters["dropped"] > 50
    # 2,000,000 items of about 95 bytes each: 190 MiB, and a margin.
    assert growth_mib < 300
    s.close()


def test_the_backlog_refuses_what_exceeds_its_items_and_oversized_heartbeats(
    store: AnyStore,
) -> None:
    """Past max_backlog_items a heartbeat is refused (dropped); past its own bound, oversized."""
    fleet = make_fleet(4, seed=16, listeners=1, pools=1, members=2)
    store.add_fleet(fleet)
    one = 2 + 4 * 2 + 8  # two members, one pool, one listener
    m = _manager(store, max_backlog_items=3 * one, max_heartbeat_items=one)
    for amp in fleet:
        m.submit(_hb(amp, T0))
    big = fleet[0].message()
    big["pools"][next(iter(big["pools"]))]["members"]["extra"] = "UP"
    m.submit(Heartbeat.from_dict(big, recv_time=T0))
    assert m.counters["backlog_items"] == 3 * one
    assert m.counters["dropped"] == 1
    assert m.counters["oversized_heartbeats"] == 1
    m.step(T0 + 1)
    assert m.counters["backlog_items"] == 0
    assert len(store.read_health()) == 3


# --- clocks ---------------------------------------------------------------------------


class _Calls:
    """A failover that records the amphora ids it is called with."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, amphora_id: str) -> None:
        self.calls.append(amphora_id)


def test_a_clock_set_back_does_not_delay_the_failover_of_an_amphora_dying_after(
    store: AnyStore,
) -> None:
    """Rows written an hour ahead, the clock corrected: a death after it fails over on time."""
    fleet = make_fleet(2, seed=17, listeners=1, pools=1, members=1)
    store.add_fleet(fleet)
    calls = _Calls()
    m = _manager(store, heartbeat_timeout=10, health_check_interval=1, failover=calls)
    for amp in fleet:
        m.submit(_hb(amp, T0 + 3600))  # the clock an hour ahead
    m.step(T0 + 3600)
    for amp in fleet:
        m.submit(_hb(amp, T0 + 5))  # corrected
    m.step(T0 + 5)
    m.submit(_hb(fleet[1], T0 + 14))  # fleet[0] died after its heartbeat at T0 + 5
    m.step(T0 + 16)
    assert m.wait_failovers(30)
    assert calls.calls == [fleet[0].amphora_id]
    m.close()


def test_a_forward_clock_step_is_caught_by_the_storm_threshold(store: AnyStore) -> None:
    """A clock jumping an hour ahead makes every amphora stale: the storm guard fails none over."""
    fleet = make_fleet(5, seed=18, listeners=1, pools=1, members=1)
    store.add_fleet(fleet)
    calls = _Calls()
    m = _manager(
        store, heartbeat_timeout=10, health_check_interval=1, failover=calls, failover_threshold=3
    )
    for amp in fleet:
        m.submit(_hb(amp, T0 + 20))
    m.step(T0 + 20)
    m.step(T0 + 3600)
    assert calls.calls == []
    assert set(store.read_amphora_statuses().values()) == {"FAILOVER_STOPPED"}
    assert m.counters["failovers_held_back"] == 5
    m.close()


def test_a_start_while_the_clock_ran_ahead_holds_failovers_a_timeout_not_an_hour(
    store: AnyStore,
) -> None:
    """Started (and checked) an hour ahead, then corrected: the grace ends a timeout later."""
    fleet = make_fleet(2, seed=19, listeners=1, pools=1, members=1)
    store.add_fleet(fleet)
    calls = _Calls()
    m = HealthManager(None, store, heartbeat_timeout=10, health_check_interval=1, failover=calls)
    for amp in fleet:
        m.submit(_hb(amp, T0 + 3600))
    m.step(T0 + 3600)  # started an hour ahead
    for amp in fleet:
        m.submit(_hb(amp, T0))
    m.step(T0)  # corrected
    m.submit(_hb(fleet[1], T0 + 15))
    m.step(T0 + 16)
    assert m.wait_failovers(30)
    assert calls.calls == [fleet[0].amphora_id]
    m.close()


class _Failing:
    """A real store whose writes raise ``error`` while it is set (the rest passes through)."""

    def __init__(self, inner: AnyStore) -> None:
        self.inner = inner
        self.error: StoreError | None = None

    def write_tick(self, write: TickWrite) -> int:
        if self.error is not None:
            raise self.error
        return self.inner.write_tick(write)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_write_that_keeps_conflicting_is_retried_later_like_a_store_error(
    store: AnyStore,
) -> None:
    """Conflicts every time (judged again three times): kept, backed off, then committed."""
    (amp,) = make_fleet(1, seed=20, listeners=1, pools=1, members=1)
    store.add_fleet([amp])
    failing = _Failing(store)
    failing.error = StoreConflict("moved meanwhile (test)")
    m = _manager(failing)  # type: ignore[arg-type]
    m.submit(_hb(amp, T0))
    assert m.step(T0 + 1).failed
    assert (m.backlog, m.counters["store_errors"]) == (1, 1)
    failing.error = None
    assert not m.step(T0 + 2).failed
    assert set(store.read_health()) == {amp.amphora_id}


def test_a_pause_set_by_a_clock_since_set_back_ends_a_timeout_after_the_correction(
    store: AnyStore,
) -> None:
    """A store error an hour ahead, the clock corrected: failovers wait a timeout, not an hour."""
    fleet = make_fleet(2, seed=21, listeners=1, pools=1, members=1)
    store.add_fleet(fleet)
    failing = _Failing(store)
    calls = _Calls()
    m = _manager(failing, heartbeat_timeout=10, health_check_interval=1, failover=calls)  # type: ignore[arg-type]
    for amp in fleet:
        m.submit(_hb(amp, T0))
    m.step(T0)
    failing.error = StoreError("away (test)")
    m.submit(_hb(fleet[1], T0 + 3600))
    m.step(T0 + 3600)  # fails an hour ahead: paused until then and a timeout
    failing.error = None
    m.step(T0 + 12)  # corrected: the pause counts from now
    m.submit(_hb(fleet[1], T0 + 22))
    m.step(T0 + 23)
    assert m.wait_failovers(30)
    assert calls.calls == [fleet[0].amphora_id]
    m.close()


def test_refused_heartbeats_are_logged_once_per_amphora_and_all_counted(
    store: AnyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A sender repeating a poison heartbeat: one warning line, every one counted."""
    (amp,) = make_fleet(1, seed=22, listeners=1, pools=1, members=1)
    store.add_fleet([amp])
    m = _manager(store)
    m.submit(_bytes_in(amp, 1, 0))
    m.step(T0)
    with caplog.at_level("WARNING", logger="amphora_heartbeat.manager"):
        for seq in (1, 2, 3):
            m.submit(_bytes_in(amp, BIG, seq))
            m.step(T0 + 5)
    assert m.counters["poison_heartbeats"] == 3
    assert sum("refused the heartbeat" in r.getMessage() for r in caplog.records) == 1
