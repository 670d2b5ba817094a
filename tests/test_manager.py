"""Tests of amphora_heartbeat.manager: ticks, failover, faults, end to end, command line.

Every test that touches a database runs on SQLite and on real PostgreSQL and MariaDB
servers (see tests/_pg.py); the ones about several managers or a server restart need
a server engine.  Time is an argument (``step(now)``) wherever the test allows it;
the end-to-end and process tests use short heartbeat timeouts (seconds) and wait
on readiness with deadlines.
"""

from __future__ import annotations

import json
import math
import os
import random
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import _octavia_mysql
import _pg
import pytest

from amphora_heartbeat.cli.manager import add_arguments, build_config
from amphora_heartbeat.envelope import wrap_envelope
from amphora_heartbeat.getter import UDPStatusGetter
from amphora_heartbeat.manager import DelayHistogram, FailoverCommand, HealthManager
from amphora_heartbeat.models import Heartbeat, ListenerStats
from amphora_heartbeat.rules import LoadBalancerView, derive
from amphora_heartbeat.stats import fold
from amphora_heartbeat.store import (
    MySQLStore,
    PostgresStore,
    SQLiteStore,
    StoredView,
    StoreError,
    TickWrite,
    open_store,
)
from amphora_heartbeat.testing import AmphoraSpec, make_fleet

pg_server = _pg.pg_server
pg_dsn = _pg.pg_dsn
db_url = _pg.db_url
store = _pg.store

AnyStore = SQLiteStore | PostgresStore
T0 = 1_800_000_000.0  # a start time, seconds since the epoch
KEY = "manager-test-key"


# --- helpers -------------------------------------------------------------------------


def _hb(amp: AmphoraSpec, recv: float, **options: Any) -> Heartbeat:
    return Heartbeat.from_dict(amp.message(**options), recv_time=recv)


def _statuses(s: AnyStore) -> dict[str, dict[str, str]]:
    return {
        table: dict(s.execute(f"SELECT id, operating_status FROM {table}"))  # type: ignore[arg-type]
        for table in ("load_balancer", "listener", "pool", "member")
    }


def _snapshot(s: AnyStore) -> dict[str, Any]:
    return {
        "statuses": _statuses(s),
        "health": {a: t for a, (t, _) in s.read_health().items()},
        "stats": s.read_statistics(),
        "amphorae": s.read_amphora_statuses(),
    }


def _predict(
    fleet: Sequence[AmphoraSpec], heartbeats: Sequence[Heartbeat]
) -> tuple[dict[str, dict[str, str]], dict[str, float], dict[tuple[str, str], ListenerStats]]:
    """Apply heartbeats one by one with derive and fold alone: what the database must hold."""
    by_id = {a.amphora_id: a for a in fleet}
    views = {a.load_balancer_id: LoadBalancerView.from_dict(a.view()) for a in fleet}
    health: dict[str, float] = {}
    stats: dict[tuple[str, str], ListenerStats] = {}
    for h in heartbeats:
        amp = by_id.get(h.amphora_id)
        if amp is None:
            continue
        assert h.recv_time is not None
        view = views[amp.load_balancer_id]
        update = derive(h, view, now=h.recv_time)
        views[amp.load_balancer_id] = view.apply(update)
        if update.record_heartbeat:
            health[h.amphora_id] = max(health.get(h.amphora_id, h.recv_time), h.recv_time)
        stats.update(fold(stats, h))
    statuses: dict[str, dict[str, str]] = {
        "load_balancer": {},
        "listener": {},
        "pool": {},
        "member": {},
    }
    for lb_id, view in views.items():
        statuses["load_balancer"][lb_id] = view.operating_status
        for lid, lv in view.listeners.items():
            statuses["listener"][lid] = lv.operating_status
        for pid, pv in view.pools.items():
            statuses["pool"][pid] = pv.operating_status
            for mid, mv in pv.members.items():
                statuses["member"][mid] = mv.operating_status
    return statuses, health, stats


def _random_heartbeats(
    fleet: Sequence[AmphoraSpec], n: int, seed: int, start: float = T0
) -> list[Heartbeat]:
    """Return ``n`` heartbeats of random versions, statuses and counters, in time order."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        amp = rng.choice(fleet)
        version = rng.choice([0, 1, 2, 3, 3])
        message = amp.message(
            seq=i,
            version=version,
            stats={
                lst.listener_id: ListenerStats(
                    rng.randrange(1000), rng.randrange(1000), rng.randrange(50), rng.randrange(99)
                )
                for lst in amp.listeners
            },
            listener_status={
                lst.listener_id: rng.choice(["OPEN", "OPEN", "FULL", "WEIRD"])
                for lst in amp.listeners
            },
            pool_status={p.pool_id: rng.choice(["UP", "UP", "DOWN"]) for p in amp.pools},
            member_status={
                m: rng.choice(["UP", "UP", "DOWN", "DRAIN", "MAINT", "no check", "UP 1/3"])
                for p in amp.pools
                for m in p.members
            },
        )
        if rng.random() < 0.15:  # a listener missing: count mismatch, nothing recorded
            message["listeners"].pop(next(iter(message["listeners"])))
        out.append(Heartbeat.from_dict(message, recv_time=start + i * 0.01))
    return out


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


# --- one tick ------------------------------------------------------------------------


def test_tick_writes_what_derive_and_fold_predict(store: AnyStore) -> None:
    """One coalesced tick leaves the database exactly as derive + fold one by one predict."""
    fleet = make_fleet(4, seed=11, members=3)
    store.add_fleet(fleet)
    heartbeats = _random_heartbeats(fleet, 60, seed=1)
    m = _manager(store)
    for h in heartbeats:
        m.submit(h)
    report = m.step(T0 + 1)
    assert report.heartbeats == 60
    assert not report.failed
    statuses, health, stats = _predict(fleet, heartbeats)
    assert _statuses(store) == statuses
    assert {a: t for a, (t, _) in store.read_health().items()} == pytest.approx(health)
    assert store.read_statistics() == stats
    assert m.counters["ticks"] == 1


def test_one_tick_per_heartbeat_ends_in_the_same_state(store: AnyStore) -> None:
    """Ticking after every heartbeat gives the same end state as coalescing them."""
    fleet = make_fleet(3, seed=12, members=3)
    store.add_fleet(fleet)
    heartbeats = _random_heartbeats(fleet, 40, seed=2)
    m = _manager(store)
    for i, h in enumerate(heartbeats):
        m.submit(h)
        m.step(T0 + i * 0.01)
    statuses, health, stats = _predict(fleet, heartbeats)
    assert _statuses(store) == statuses
    assert {a: t for a, (t, _) in store.read_health().items()} == pytest.approx(health)
    assert store.read_statistics() == stats


def test_a_heartbeat_that_waited_is_judged_at_its_receive_time(store: AnyStore) -> None:
    """Unlike Octavia's too-late rule, a heartbeat judged long after receipt is still recorded."""
    (amp,) = make_fleet(1, seed=13)
    store.add_fleet([amp])
    m = _manager(store, heartbeat_interval=10)
    m.submit(_hb(amp, T0, member_status={amp.pools[0].members[0]: "DOWN"}))
    report = m.step(T0 + 500)  # far beyond heartbeat_interval
    assert report.lag == pytest.approx(500)
    assert store.read_health()[amp.amphora_id][0] == pytest.approx(T0)
    assert _statuses(store)["member"][amp.pools[0].members[0]] == "ERROR"
    assert m.counters["lag_seconds"] == pytest.approx(500)


def test_unknown_amphora_or_deleted_load_balancer_changes_nothing(store: AnyStore) -> None:
    """Heartbeats of unknown amphorae or of a DELETED load balancer write no row at all."""
    fleet = make_fleet(2, seed=14)
    store.add_fleet(fleet)
    store.execute(
        "UPDATE load_balancer SET provisioning_status = 'DELETED' WHERE id = ?",
        [fleet[0].load_balancer_id],
    )
    stranger = make_fleet(1, seed=99)[0]
    before = _snapshot(store)
    m = _manager(store)
    m.submit(_hb(fleet[0], T0, member_status=dict.fromkeys(fleet[0].pools[0].members, "DOWN")))
    m.submit(_hb(stranger, T0))
    m.step(T0 + 1)
    assert _snapshot(store) == before
    assert m.counters["unknown_amphora"] == 2
    assert m.counters["rows_written"] == 0


def test_statistics_of_listeners_not_of_the_load_balancer_are_not_stored(
    store: AnyStore,
) -> None:
    """A known amphora reporting listeners its load balancer lacks: no row for them, counted."""
    (amp,) = make_fleet(1, seed=15, listeners=1, pools=1)
    store.add_fleet([amp])
    message = amp.message(version=2)
    for i in range(20):
        message["listeners"][f"invented-{i}"] = {
            "status": "OPEN",
            "stats": ListenerStats(5).to_wire(),
        }
    m = _manager(store)
    m.submit(Heartbeat.from_dict(message, recv_time=T0))
    m.step(T0)
    assert set(store.read_statistics()) == {(amp.listeners[0].listener_id, amp.amphora_id)}
    assert m.counters["stats_unknown_listener"] == 20


def test_an_unversioned_heartbeat_with_a_dead_udp_listener_is_not_recorded(store: AnyStore) -> None:
    """The pre-versioning rule gets udp_listeners_down from the store."""
    (amp,) = make_fleet(1, seed=16, listeners=1, pools=1, protocol="UDP")
    store.add_fleet([amp])
    store.execute("UPDATE member SET enabled = false")
    m = _manager(store)
    m.submit(_hb(amp, T0, version=0))
    m.step(T0)
    assert store.read_health() == {}
    assert m.counters["not_recorded.listener_count_mismatch"] == 1


def test_a_failover_stopped_amphora_that_reports_returns_to_allocated(store: AnyStore) -> None:
    """When a held-back amphora reports again, it is ALLOCATED again."""
    (amp,) = make_fleet(1, seed=17)
    store.add_fleet([amp], amphora_status="FAILOVER_STOPPED")
    m = _manager(store)
    m.submit(_hb(amp, T0))
    m.step(T0)
    assert store.read_amphora_statuses() == {amp.amphora_id: "ALLOCATED"}


def test_submit_needs_a_receive_time(store: AnyStore) -> None:
    """A heartbeat without recv_time cannot be judged by its receive time."""
    (amp,) = make_fleet(1)
    with pytest.raises(ValueError, match="recv_time"):
        _manager(store).submit(Heartbeat.from_dict(amp.message()))


def test_bad_options_are_refused(store: AnyStore) -> None:
    """Non-positive timings and a threshold below 1 are the caller's mistake."""
    with pytest.raises(ValueError, match="positive"):
        HealthManager(None, store, heartbeat_timeout=0)
    with pytest.raises(ValueError, match="threshold"):
        HealthManager(None, store, failover_threshold=0)
    with pytest.raises(ValueError, match="at least 1"):
        HealthManager(None, store, failover_threads=0)


# --- stale amphorae and failover -----------------------------------------------------


class Failovers:
    """A failover callable that records calls, fails for chosen ids, and can be held."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.calls: list[str] = []
        self.fail = set(fail)
        self.gate = threading.Event()
        self.gate.set()
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, amphora_id: str) -> None:
        with self._lock:
            self.calls.append(amphora_id)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.gate.wait(30)
            if amphora_id in self.fail:
                raise RuntimeError("no compute capacity")
        finally:
            with self._lock:
                self.running -= 1


def _reporting(s: AnyStore, n: int, seed: int, at: float) -> tuple[list[str], HealthManager]:
    fleet = make_fleet(n, seed=seed, listeners=1, pools=1, members=1)
    s.add_fleet(fleet)
    m = _manager(s)
    for amp in fleet:
        m.submit(_hb(amp, at))
    m.step(at)
    return [a.amphora_id for a in fleet], m


def _finish(m: HealthManager, now: float) -> None:
    assert m.wait_failovers(30)
    m.step(now)


def test_a_stale_amphora_is_failed_over_once_and_its_row_deleted(store: AnyStore) -> None:
    """Past the timeout a silent amphora is failed over; success deletes its health row."""
    ids, _ = _reporting(store, 3, 20, T0)
    calls = Failovers()
    m = _manager(store, heartbeat_timeout=10, health_check_interval=1, failover=calls)
    fresh = HealthManager(None, store)
    fresh.submit(Heartbeat.from_dict({"id": ids[2], "listeners": {}}, recv_time=T0 + 15))
    m.step(T0 + 5)  # nobody stale yet
    assert calls.calls == []
    m.step(T0 + 15)
    _finish(m, T0 + 16)
    assert sorted(calls.calls) == sorted(ids)  # ids[2]'s later heartbeat was never committed
    assert store.read_health() == {}
    m.step(T0 + 30)
    assert m.wait_failovers(5)
    assert len(calls.calls) == 3
    assert m.counters["failovers_started"] == 3
    assert m.counters["failovers_succeeded"] == 3
    m.close()


def test_a_failed_failover_clears_busy_and_is_retried_after_heartbeat_timeout(
    store: AnyStore,
) -> None:
    """A failover that raises is counted, its busy flag cleared; it runs again a timeout later."""
    ids, _ = _reporting(store, 1, 21, T0)
    calls = Failovers(fail=ids)
    m = _manager(store, heartbeat_timeout=10, health_check_interval=1, failover=calls)
    m.step(T0 + 11)
    _finish(m, T0 + 11.5)  # the failure is recorded at T0 + 11.5
    assert store.read_health()[ids[0]][1] is False
    assert m.counters["failovers_failed"] == 1
    calls.fail.clear()
    for t in (12, 15, 21.4):  # stale, not busy, but failed less than 10 s ago
        m.step(T0 + t)
        assert m.wait_failovers(5)
        assert calls.calls == ids
    m.step(T0 + 22.4)  # the next stale check, past T0 + 21.5
    _finish(m, T0 + 23)
    assert calls.calls == ids * 2
    assert store.read_health() == {}
    m.close()


def test_nothing_is_failed_over_during_the_start_up_grace(store: AnyStore) -> None:
    """For heartbeat_timeout seconds after start, stale amphorae wait."""
    _reporting(store, 2, 22, T0 - 100)
    calls = Failovers()
    m = _manager(store, heartbeat_timeout=10, health_check_interval=1, failover=calls, started=T0)
    m.step(T0 + 9)
    assert m.wait_failovers(1)
    assert calls.calls == []
    m.step(T0 + 10)
    _finish(m, T0 + 10.5)
    assert len(calls.calls) == 2
    m.close()


def test_the_storm_guard_holds_every_stale_amphora_back(store: AnyStore) -> None:
    """At failover_threshold stale amphorae none is failed over; all become FAILOVER_STOPPED."""
    ids, _ = _reporting(store, 3, 23, T0)
    calls = Failovers()
    m = _manager(
        store, heartbeat_timeout=10, health_check_interval=1, failover=calls, failover_threshold=3
    )
    m.step(T0 + 20)
    assert m.wait_failovers(1)
    assert calls.calls == []
    assert set(store.read_amphora_statuses().values()) == {"FAILOVER_STOPPED"}
    assert m.counters["failovers_held_back"] == 3
    # One reports again: ALLOCATED, and the two left are below the threshold.
    fleet = make_fleet(3, seed=23, listeners=1, pools=1, members=1)
    m.submit(_hb(fleet[0], T0 + 21))
    m.step(T0 + 21)
    _finish(m, T0 + 21.5)
    assert sorted(calls.calls) == sorted(ids[1:])
    assert store.read_amphora_statuses()[ids[0]] == "ALLOCATED"
    m.close()


def test_without_a_failover_stale_amphorae_are_logged_and_counted_only(
    store: AnyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """With no failover configured nothing is marked busy; each stale amphora is logged once."""
    _reporting(store, 2, 24, T0)
    m = _manager(store, heartbeat_timeout=10, health_check_interval=1)
    m.step(T0 + 20)
    m.step(T0 + 22)
    assert m.counters["stale_not_failed_over"] == 2
    assert not any(busy for _, busy in store.read_health().values())
    assert sum("no failover configured" in r.getMessage() for r in caplog.records) == 1


def test_at_most_failover_threads_failovers_run_at_once(store: AnyStore) -> None:
    """Only as many stale amphorae are claimed as there are free failover threads."""
    ids, _ = _reporting(store, 5, 25, T0)
    calls = Failovers()
    calls.gate.clear()
    m = _manager(store, heartbeat_timeout=10, health_check_interval=1, failover=calls,
                 failover_threads=2)  # fmt: skip
    m.step(T0 + 20)
    _wait(lambda: calls.running == 2, what="two failovers running")
    m.step(T0 + 22)
    assert m.counters["failovers_started"] == 2
    assert sum(busy for _, busy in store.read_health().values()) == 2
    calls.gate.set()
    for t in range(23, 30):
        _finish(m, T0 + t)
    assert sorted(calls.calls) == sorted(ids)
    assert calls.most == 2
    m.close()


def test_failover_command_runs_with_the_amphora_id_appended(tmp_path: Path) -> None:
    """--failover-command: exit 0 is done, any other status raises (a failed failover)."""
    out = tmp_path / "out"
    script = f"import sys; open({str(out)!r}, 'a').write(sys.argv[1] + chr(10))"
    ok = FailoverCommand(f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}")
    ok("amp-1")
    assert out.read_text() == "amp-1\n"
    with pytest.raises(subprocess.CalledProcessError):
        FailoverCommand([sys.executable, "-c", "raise SystemExit(3)"])("amp-2")
    with pytest.raises(ValueError, match="empty"):
        FailoverCommand("  ")


# --- store errors --------------------------------------------------------------------


class FlakyStore:
    """A real store that fails every call while ``down`` is set, as a lost database does."""

    def __init__(self, inner: AnyStore) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreError("database unreachable (test)")
            return attr(*args, **kwargs)

        return call


def test_a_store_error_keeps_heartbeats_and_pauses_failover(store: AnyStore) -> None:
    """While the store fails nothing is lost; after it, no failover for a full timeout."""
    fleet = make_fleet(2, seed=30, listeners=1, pools=1, members=1)
    store.add_fleet(fleet)
    flaky = FlakyStore(store)
    calls = Failovers()
    m = HealthManager(
        None, flaky, heartbeat_timeout=10, health_check_interval=1, failover=calls, started=T0
    )  # type: ignore[arg-type]
    m.submit(_hb(fleet[0], T0 + 1))
    m.submit(_hb(fleet[1], T0 + 1))
    m.step(T0 + 1)
    flaky.down = True
    m.submit(_hb(fleet[0], T0 + 16, seq=1))
    first = m.step(T0 + 12)
    assert first.failed
    assert m.counters["store_errors"] >= 1
    assert m.backlog == 1
    m.step(T0 + 12.05)  # backing off: not even tried
    flaky.down = False
    m.step(T0 + 20)  # the backlog is written first...
    assert store.read_health()[fleet[0].amphora_id][0] == pytest.approx(T0 + 16)
    assert m.wait_failovers(1)
    assert calls.calls == []  # ...and fleet[1], silent since T0 + 1, waits out the pause
    m.step(T0 + 22.5)
    _finish(m, T0 + 23)
    assert calls.calls == [fleet[1].amphora_id]
    assert m.paused_at == pytest.approx(T0 + 12)
    m.close()


def test_a_full_backlog_drops_the_oldest_heartbeats(store: AnyStore) -> None:
    """With the store down, at most max_backlog heartbeats are kept (the newest)."""
    (amp,) = make_fleet(1, seed=31)
    store.add_fleet([amp])
    flaky = FlakyStore(store)
    flaky.down = True
    m = HealthManager(None, flaky, max_backlog=5, started=T0)  # type: ignore[arg-type]
    for i in range(8):
        m.submit(_hb(amp, T0 + i, seq=i))
    m.step(T0 + 8)
    m.step(T0 + 8.01)
    assert m.counters["dropped"] == 3
    flaky.down = False
    m.step(T0 + 100)
    assert store.read_health()[amp.amphora_id][0] == pytest.approx(T0 + 7)


# --- end to end, real sockets --------------------------------------------------------


@pytest.fixture
def getter() -> Iterator[UDPStatusGetter]:
    """Yield a getter bound to an ephemeral port on 127.0.0.1."""
    g = UDPStatusGetter(KEY, "127.0.0.1", 0, timeout=0.05)
    yield g
    g.close()


def test_end_to_end_on_real_sockets_matches_the_prediction(
    store: AnyStore, getter: UDPStatusGetter
) -> None:
    """Simulated amphorae → UDP → manager.run() → database equals derive + fold predictions."""
    fleet = make_fleet(6, seed=40, members=3)
    store.add_fleet(fleet)
    heartbeats = _random_heartbeats(fleet, 120, seed=3)
    m = HealthManager(getter, store, tick=0.02)
    runner = threading.Thread(target=m.run)
    runner.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i, h in enumerate(heartbeats):
                sock.sendto(wrap_envelope(h.to_dict(), KEY), getter.address)
                sock.sendto(b"not a heartbeat at all", getter.address)
                if i % 20 == 19:  # stay far below the socket buffer
                    _wait(lambda i=i: m.counters["accepted"] > i, what="heartbeats received")
            _wait(lambda: m.counters["heartbeats_judged"] == len(heartbeats), what="all judged")
    finally:
        m.stop()
        runner.join(10)
    assert not runner.is_alive()
    statuses, health, stats = _predict(fleet, heartbeats)
    assert _statuses(store) == statuses
    assert set(store.read_health()) == set(health)
    assert store.read_statistics() == stats
    counters = m.counters
    assert counters["rejected.invalid_hmac"] + counters["rejected.too_short"] == len(heartbeats)
    assert counters["backlog"] == 0
    assert 0 < counters["delay_p99_seconds"] < 30
    m.close()


# --- the command line, in processes --------------------------------------------------


def _start_manager(db: str, key_file: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "amphora_heartbeat", "manager", "--db", db, "--bind", "127.0.0.1:0",
         "--key-file", str(key_file), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("listening on 127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"manager did not start: {line!r} {proc.communicate()[1]}")
    return proc, int(line.rsplit(":", 1)[1])


def _stop_manager(proc: subprocess.Popen[str]) -> dict[str, float]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    counters: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return counters


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """Return a key file holding KEY."""
    path = tmp_path / "key"
    path.write_text(KEY + "\n", encoding="utf-8")
    return path


def test_manager_command_prints_listening_and_counters(db_url: str, key_file: Path) -> None:
    """`manager` prints its bound address, stores heartbeats, and on SIGTERM prints counters."""
    s = open_store(db_url)
    s.create_schema()
    fleet = make_fleet(3, seed=50)
    s.add_fleet(fleet)
    proc, port = _start_manager(db_url, key_file, "--tick", "0.02")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for amp in fleet:
                sock.sendto(wrap_envelope(amp.message(), KEY), ("127.0.0.1", port))
        _wait(lambda: len(s.read_health()) == 3, what="three health rows")
    finally:
        counters = _stop_manager(proc)
    assert counters["accepted"] == 3
    assert counters["heartbeats_judged"] == 3
    assert counters["failovers_started"] == 0
    s.close()


def test_manager_command_without_a_key_exits_2(tmp_path: Path) -> None:
    """No --key, --key-file or AMPHORA_HEARTBEAT_KEY: a usage error, exit status 2."""
    env = {k: v for k, v in os.environ.items() if k != "AMPHORA_HEARTBEAT_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "amphora_heartbeat", "manager", "--db", str(tmp_path / "x.db")],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no key" in done.stderr


def test_add_arguments_maps_octavia_option_names() -> None:
    """The command's options carry Octavia's [health_manager] names and defaults."""
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--db", "sqlite:///x.db", "--key", "k"])
    config = build_config(args)
    assert config.heartbeat_timeout == 60
    assert config.health_check_interval == 3
    assert config.heartbeat_interval == 10
    assert config.failover_threshold is None
    assert config.failover_threads == 10
    assert (config.bind_ip, config.bind_port) == ("127.0.0.1", 5555)
    assert config.connection == "sqlite:///x.db"


def _stats_heartbeat(amp: AmphoraSpec, k: int) -> bytes:
    """Round k's heartbeat: bytes_in delta 2**k, total_connections delta 1 (detects doubles)."""
    stats = {lst.listener_id: ListenerStats(2**k, 0, 1, 1, 0) for lst in amp.listeners}
    return wrap_envelope(amp.message(seq=k, version=3, stats=stats), KEY)


def test_sigkill_and_restart_lose_no_committed_row_nor_add_a_delta_twice(
    db_url: str, key_file: Path
) -> None:
    """A manager killed mid-run and restarted keeps every commit and adds each delta once."""
    s = open_store(db_url)
    s.create_schema()
    fleet = make_fleet(5, seed=60, listeners=1, pools=1, members=1)
    s.add_fleet(fleet)
    rounds = 20
    proc, port = _start_manager(db_url, key_file, "--tick", "0.02")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            for k in range(10):
                for amp in fleet:
                    sock.sendto(_stats_heartbeat(amp, k), ("127.0.0.1", port))
                if k == 7:
                    _wait(lambda: len(s.read_statistics()) == 5, what="committed stats")
                    before = s.read_statistics()
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            proc.kill()
        proc, port = _start_manager(db_url, key_file, "--tick", "0.02")
        try:
            for k in range(10, rounds):
                for amp in fleet:
                    sock.sendto(_stats_heartbeat(amp, k), ("127.0.0.1", port))
            last = 2 ** (rounds - 1)
            _wait(
                lambda: all(r.bytes_in & last for r in s.read_statistics().values()),
                what="the last round committed",
            )
        finally:
            _stop_manager(proc)
    after = s.read_statistics()
    for key, row in after.items():
        # Every delta added once at most: as many bits set as deltas counted.
        assert bin(row.bytes_in).count("1") == row.total_connections
        # Nothing committed before the kill was lost.
        assert row.bytes_in & before[key].bytes_in == before[key].bytes_in
        # Every round after the restart arrived.
        assert row.bytes_in >> 10 == 2 ** (rounds - 10) - 1
    s.close()


@pytest.mark.postgres
def test_two_managers_sharing_postgresql_fail_each_silent_amphora_over_once(
    pg_dsn: str, key_file: Path, tmp_path: Path
) -> None:
    """Round robin halves to two managers: silent amphorae failed over once each, live never."""
    s = PostgresStore(pg_dsn)
    s.create_schema()
    fleet = make_fleet(12, seed=70, listeners=1, pools=1, members=1)
    s.add_fleet(fleet)
    log = tmp_path / "failovers"
    log.touch()
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
    command = shlex.join([sys.executable, "-c", script, str(log)])
    options = ["--heartbeat-timeout", "1.5", "--health-check-interval", "0.1", "--tick", "0.05",
               "--failover-command", command]  # fmt: skip
    managers = [_start_manager(pg_dsn, key_file, *options) for _ in range(2)]
    silent = {a.amphora_id for a in fleet[:4]}
    sent = 0
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

            def send_round(amphorae: Sequence[AmphoraSpec]) -> None:
                nonlocal sent
                for amp in amphorae:
                    # Each amphora alternates between the two managers, as agents do.
                    port = managers[sent % 2][1]
                    sock.sendto(wrap_envelope(amp.message(seq=sent), KEY), ("127.0.0.1", port))
                    sent += 1
                time.sleep(0.1)

            _wait(lambda: (send_round(fleet), len(s.read_health()) == 12)[1], what="all heard")
            deadline = time.monotonic() + 60
            while len(log.read_text().split()) < len(silent):
                assert time.monotonic() < deadline, "silent amphorae were not failed over"
                send_round(fleet[4:])
            for _ in range(15):  # keep the live ones talking through more stale checks
                send_round(fleet[4:])
    finally:
        counters = [_stop_manager(proc) for proc, _ in managers]
    failed_over = log.read_text().split()
    assert sorted(failed_over) == sorted(silent)  # each exactly once, no live one
    assert sum(c["failovers_started"] for c in counters) == len(silent)
    assert all(c["accepted"] > 0 for c in counters)
    assert set(s.read_health()) == {a.amphora_id for a in fleet[4:]}
    s.close()


@pytest.mark.postgres
def test_postgresql_stopped_and_started_again_fails_nothing_over(
    pg_server: _pg.PGServer, pg_dsn: str, getter: UDPStatusGetter
) -> None:
    """The server goes away for longer than the timeout: the manager waits, then resumes."""
    s = PostgresStore(pg_dsn, connect_timeout=1)
    s.create_schema()
    fleet = make_fleet(4, seed=80, listeners=1, pools=1, members=1)
    s.add_fleet(fleet)
    calls = Failovers()
    m = HealthManager(
        getter, s, heartbeat_timeout=1.0, health_check_interval=0.1, tick=0.05, failover=calls
    )
    check = PostgresStore(pg_dsn)
    stop_sending = threading.Event()

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            seq = 0
            while not stop_sending.is_set():
                for amp in fleet:
                    sock.sendto(wrap_envelope(amp.message(seq=seq), KEY), getter.address)
                seq += 1
                stop_sending.wait(0.1)

    sender = threading.Thread(target=send)
    runner = threading.Thread(target=m.run)
    sender.start()
    runner.start()
    stopped = False
    try:
        _wait(lambda: len(check.read_health()) == 4, what="health rows")
        time.sleep(1.2)  # past the start-up grace, so a failover could happen
        check.close()
        pg_server.ctl("stop", "-m", "fast")
        stopped = True
        down_at = time.time()
        _wait(lambda: m.counters["store_errors"] > 0, what="a store error")
        time.sleep(2.0)  # longer than heartbeat_timeout
        pg_server.ctl("start")
        stopped = False
        _wait(
            lambda: min(t for t, _ in check.read_health().values()) > down_at + 2.0,
            what="writes resumed",
        )
        time.sleep(1.5)  # the pause after the error, and some more checks
    finally:
        if stopped:
            pg_server.ctl("start")
        stop_sending.set()
        m.stop()
        runner.join(30)
        sender.join(10)
    assert calls.calls == []
    assert m.counters["failovers_started"] == 0
    assert m.counters["store_errors"] > 0
    m.close()
    check.close()
    s.close()


# --- the delay histogram -------------------------------------------------------------


def test_delay_histogram_quantiles_and_windows() -> None:
    """Quantiles are exact to the bucket width; since() measures a window."""
    h = DelayHistogram(limit=10)
    assert h.quantile(0.99) == 0.0
    for i in range(100):
        h.add(i / 1000)
    assert h.quantile(0.5) == pytest.approx(0.050)
    assert h.quantile(0.99) == pytest.approx(0.099)
    mark = h.snapshot()
    h.add(5.0, n=100)
    window = h.since(mark)
    assert window.count == 100
    assert window.quantile(0.5) == pytest.approx(5.001)
    h.add(1e9)
    assert h.maximum == 1e9


def test_stored_view_feeds_the_rules_directly() -> None:
    """A StoredView's mapping builds the rules' LoadBalancerView unchanged."""
    (amp,) = make_fleet(1)
    sv = StoredView(amp.amphora_id, "ALLOCATED", amp.load_balancer_id, amp.view())
    view = LoadBalancerView.from_dict(sv.view, udp_listeners_down=sv.udp_listeners_down)
    assert view.to_dict() == amp.view()
    assert TickWrite(now=T0).health == {}


# --- more edges ----------------------------------------------------------------------


def test_step_takes_what_the_getter_has_ready(store: AnyStore, getter: UDPStatusGetter) -> None:
    """Without run(), step() drains the getter itself, bad datagrams counted and skipped."""
    fleet = make_fleet(3, seed=90)
    store.add_fleet(fleet)
    m = HealthManager(getter, store)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"junk" * 20, getter.address)
        for amp in fleet:
            sock.sendto(wrap_envelope(amp.message(), KEY), getter.address)
    _wait(
        lambda: (m.step(time.time()), m.counters["heartbeats_judged"] == 3)[1],
        what="three heartbeats judged",
    )
    assert len(store.read_health()) == 3
    assert m.counters["received"] == 4


class BrokenViews:
    """A store whose views the rules refuse (a bug, or a hand-edited database)."""

    def __init__(self, inner: AnyStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read_views(self, ids: Sequence[str]) -> dict[str, StoredView]:
        return {a: StoredView(a, "ALLOCATED", "lb", {"id": 5}) for a in ids}


def test_a_tick_that_raises_drops_its_batch_and_goes_on(store: AnyStore) -> None:
    """An unexpected error drops that tick's heartbeats (counted) instead of looping on them."""
    (amp,) = make_fleet(1, seed=91)
    m = HealthManager(None, BrokenViews(store), started=T0)  # type: ignore[arg-type]
    m.submit(_hb(amp, T0))
    report = m.step(T0)
    assert report.failed
    assert m.counters["tick_errors"] == 1
    assert m.counters["dropped"] == 1
    assert m.step(T0 + 1).heartbeats == 0


def test_a_failover_that_ends_while_the_store_fails_is_recorded_later(store: AnyStore) -> None:
    """The end of a failover waits for the store to come back, then deletes the row."""
    _reporting(store, 1, 92, T0)
    flaky = FlakyStore(store)
    calls = Failovers()
    calls.gate.clear()
    m = HealthManager(
        None, flaky, heartbeat_timeout=10, health_check_interval=100, failover=calls, started=T0
    )  # type: ignore[arg-type]
    m.step(T0 + 20)
    _wait(lambda: calls.running == 1, what="the failover running")
    assert not m.wait_failovers(0.05)
    calls.gate.set()
    assert m.wait_failovers(30)
    flaky.down = True
    m.step(T0 + 21)
    assert m.counters["failovers_succeeded"] == 0
    flaky.down = False
    m.step(T0 + 30)
    assert m.counters["failovers_succeeded"] == 1
    assert store.read_health() == {}
    m.close()


def _manager_command(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amphora_heartbeat", "manager", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_manager_command_reports_bad_bind_unreachable_store_and_busy_port(
    tmp_path: Path, key_file: Path
) -> None:
    """A bad --bind is exit 2; an unreachable database or a port in use, exit 1."""
    db = f"sqlite:///{tmp_path / 'x.db'}"
    done = _manager_command("--db", db, "--key-file", str(key_file), "--bind", "nowhere")
    assert (done.returncode, "--bind" in done.stderr) == (2, True)
    done = _manager_command(
        "--db", "postgresql://nobody@127.0.0.1:9/none", "--key-file", str(key_file)
    )
    assert (done.returncode, "unreachable" in done.stderr) == (1, True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        env = dict(os.environ, AMPHORA_HEARTBEAT_KEY=KEY)
        done = _manager_command("--db", db, "--bind", f"127.0.0.1:{port}", env=env)
    assert (done.returncode, "cannot receive" in done.stderr) == (1, True)


def test_key_file_lines_make_a_key_ring(tmp_path: Path) -> None:
    """Several lines in --key-file are a key ring; one trailing newline is ignored."""
    import argparse

    from amphora_heartbeat.cli.common import CommandError, load_key

    ring = tmp_path / "ring"
    ring.write_text("new\nold\n", encoding="utf-8")
    assert load_key(argparse.Namespace(key_file=str(ring), key=None)) == ["new", "old"]
    assert load_key(argparse.Namespace(key_file=None, key=["k"])) == "k"
    assert load_key(argparse.Namespace(key_file=None, key=["a", "b"])) == ["a", "b"]
    ring.write_text("a\n\nb\n", encoding="utf-8")
    with pytest.raises(CommandError, match="empty key"):
        load_key(argparse.Namespace(key_file=str(ring), key=None))
    done = _manager_command("--db", str(tmp_path / "x.db"), "--key-file", str(tmp_path / "none"))
    assert (done.returncode, "cannot read the key file" in done.stderr) == (2, True)


def test_demo_runs_on_the_manager_and_reads_statuses_back(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's table comes from the database the manager writes (--db, or a temp file)."""
    import argparse

    from amphora_heartbeat.cli.demo import run as run_demo

    args = argparse.Namespace(amphorae=2, duration=1.5, interval=0.25, seed=1, db=db_url)
    assert run_demo(args) == 0
    out = capsys.readouterr().out
    final = out.rsplit("=== final", 1)[1]
    assert final.count("load balancer ") == 2
    assert "rejected 0" in final
    assert "ONLINE" in final
    s = open_store(db_url)
    assert len(s.read_health()) >= 1
    s.close()
    args = argparse.Namespace(amphorae=1, duration=0.3, interval=0.1, seed=2, db=None)
    assert run_demo(args) == 0
    assert "a SQLite file in a temporary folder" in capsys.readouterr().out


def test_manager_is_a_command_of_the_package_command_line() -> None:
    """`python -m amphora_heartbeat manager` is the same command as the module's."""
    done = subprocess.run(
        [sys.executable, "-m", "amphora_heartbeat", "manager", "--help"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--db URL" in done.stdout
    assert "--failover-command" in done.stdout


def test_a_heartbeat_waiting_to_be_written_keeps_its_amphora_from_failover(
    store: AnyStore,
) -> None:
    """When the manager is behind, a received but uncommitted heartbeat still counts."""
    ids, _ = _reporting(store, 2, 93, T0)
    fleet = make_fleet(2, seed=93, listeners=1, pools=1, members=1)
    calls = Failovers()
    m = _manager(store, heartbeat_timeout=10, health_check_interval=1, failover=calls, max_batch=1)
    m.submit(_hb(fleet[1], T0 + 19))  # committed by the next tick
    m.submit(_hb(fleet[0], T0 + 19))  # still waiting when the check runs
    m.step(T0 + 20)
    assert m.backlog == 1
    assert m.wait_failovers(5)
    assert calls.calls == []
    m.step(T0 + 20.5)
    assert store.read_health()[ids[0]][0] == pytest.approx(T0 + 19)
    m.close()


def _socket_drops(sock: socket.socket) -> int:
    inode = str(os.fstat(sock.fileno()).st_ino)
    with open("/proc/net/udp", encoding="ascii") as f:
        for line in f:
            fields = line.split()
            if fields[9] == inode:
                return int(fields[12])
    raise AssertionError("socket not listed in /proc/net/udp")


@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="Linux's per-socket drop counter")
def test_datagrams_dropped_by_the_kernel_hold_failovers_for_a_timeout(store: AnyStore) -> None:
    """A full receive buffer (real kernel drops) pauses failover for heartbeat_timeout."""
    fleet = make_fleet(2, seed=94, listeners=1, pools=1, members=1)
    store.add_fleet(fleet)
    calls = Failovers()
    with UDPStatusGetter(KEY, "127.0.0.1", 0, timeout=0.05, rcvbuf=1024) as small:
        m = HealthManager(
            small, store, heartbeat_timeout=10, health_check_interval=1, failover=calls, started=T0
        )
        for amp in fleet:
            m.submit(_hb(amp, T0))
        m.step(T0)  # the first check reads the drop counter's baseline
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(200):  # far more than a 1 KiB buffer holds, nobody reading
                sock.sendto(b"x" * 1000, small.address)
        assert _socket_drops(small._binding.sock) > 0
        m.step(T0 + 11)  # both stale, but heartbeats were lost: held
        assert m.wait_failovers(5)
        assert calls.calls == []
        assert m.counters["socket_drops"] > 0
        assert m.counters["failovers_held_overloaded"] == 2
        assert m.overloaded_at == T0 + 11
        m.step(T0 + 20.5)  # still within a timeout of the loss; not counted twice
        assert m.wait_failovers(5)
        assert calls.calls == []
        assert m.counters["failovers_held_overloaded"] == 2
        m.step(T0 + 21.5)  # a full timeout without loss: silence now means silence
        _finish(m, T0 + 22)
        assert sorted(calls.calls) == sorted(a.amphora_id for a in fleet)
        m.close()


def test_heartbeats_dropped_from_a_full_backlog_hold_failovers(store: AnyStore) -> None:
    """Heartbeats the manager itself dropped pause failover as kernel drops do."""
    fleet = make_fleet(2, seed=95, listeners=1, pools=1, members=1)
    store.add_fleet(fleet)
    calls = Failovers()
    m = _manager(
        store, heartbeat_timeout=10, health_check_interval=1, failover=calls, max_backlog=1
    )
    for amp in fleet:
        m.submit(_hb(amp, T0))
        m.step(T0)
    for i in range(3):  # one tick's worth over max_backlog: two dropped
        m.submit(_hb(fleet[0], T0 + 5, seq=i + 1))
    m.step(T0 + 5)
    assert m.counters["dropped"] == 2
    m.step(T0 + 11)  # fleet[1] is stale, but the manager lost heartbeats at T0 + 5
    assert m.wait_failovers(5)
    assert calls.calls == []
    assert m.counters["failovers_held_overloaded"] == 1
    m.submit(_hb(fleet[0], T0 + 15, seq=4))
    m.step(T0 + 15.5)  # a full timeout without loss
    _finish(m, T0 + 16)
    assert calls.calls == [fleet[1].amphora_id]
    m.close()


# --- MariaDB: several managers, a server restart, Octavia's schema --------------------


def _two_managers_fail_each_silent_amphora_over_once(
    url: str, key_file: Path, tmp_path: Path
) -> None:
    """Run two manager processes on ``url``; check each silent amphora failed over once."""
    s = open_store(url)
    s.create_schema()
    fleet = make_fleet(12, seed=70, listeners=1, pools=1, members=1)
    s.add_fleet(fleet)
    log = tmp_path / "failovers"
    log.touch()
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
    command = shlex.join([sys.executable, "-c", script, str(log)])
    options = ["--heartbeat-timeout", "1.5", "--health-check-interval", "0.1", "--tick", "0.05",
               "--failover-command", command]  # fmt: skip
    managers = [_start_manager(url, key_file, *options) for _ in range(2)]
    silent = {a.amphora_id for a in fleet[:4]}
    sent = 0
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

            def send_round(amphorae: Sequence[AmphoraSpec]) -> None:
                nonlocal sent
                for amp in amphorae:
                    port = managers[sent % 2][1]  # each amphora alternates, as agents do
                    sock.sendto(wrap_envelope(amp.message(seq=sent), KEY), ("127.0.0.1", port))
                    sent += 1
                time.sleep(0.1)

            _wait(lambda: (send_round(fleet), len(s.read_health()) == 12)[1], what="all heard")
            deadline = time.monotonic() + 60
            while len(log.read_text().split()) < len(silent):
                assert time.monotonic() < deadline, "silent amphorae were not failed over"
                send_round(fleet[4:])
            for _ in range(15):  # keep the live ones talking through more stale checks
                send_round(fleet[4:])
    finally:
        counters = [_stop_manager(proc) for proc, _ in managers]
    assert sorted(log.read_text().split()) == sorted(silent)  # each exactly once, no live one
    assert sum(c["failovers_started"] for c in counters) == len(silent)
    assert all(c["accepted"] > 0 for c in counters)
    assert set(s.read_health()) == {a.amphora_id for a in fleet[4:]}
    s.close()


@pytest.mark.mysql
def test_two_managers_sharing_mariadb_fail_each_silent_amphora_over_once(
    mysql_url: str, key_file: Path, tmp_path: Path
) -> None:
    """Round robin halves to two managers on MariaDB: silent ones failed over once, live never."""
    _two_managers_fail_each_silent_amphora_over_once(mysql_url, key_file, tmp_path)


@pytest.mark.mysql
def test_mariadb_stopped_and_started_again_fails_nothing_over(
    mariadb_server: Any, mysql_url: str, getter: UDPStatusGetter
) -> None:
    """MariaDB goes away for longer than the timeout: the manager waits, then resumes."""
    s = MySQLStore(mysql_url, connect_timeout=1)
    s.create_schema()
    fleet = make_fleet(4, seed=80, listeners=1, pools=1, members=1)
    s.add_fleet(fleet)
    calls = Failovers()
    m = HealthManager(
        getter, s, heartbeat_timeout=1.0, health_check_interval=0.1, tick=0.05, failover=calls
    )
    check = MySQLStore(mysql_url)
    stop_sending = threading.Event()

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            seq = 0
            while not stop_sending.is_set():
                for amp in fleet:
                    sock.sendto(wrap_envelope(amp.message(seq=seq), KEY), getter.address)
                seq += 1
                stop_sending.wait(0.1)

    sender = threading.Thread(target=send)
    runner = threading.Thread(target=m.run)
    sender.start()
    runner.start()
    stopped = False
    try:
        _wait(lambda: len(check.read_health()) == 4, what="health rows")
        time.sleep(1.2)  # past the start-up grace, so a failover could happen
        check.close()
        mariadb_server.ctl("stop")
        stopped = True
        down_at = time.time()
        _wait(lambda: m.counters["store_errors"] > 0, what="a store error")
        time.sleep(2.0)  # longer than heartbeat_timeout
        mariadb_server.ctl("start")
        stopped = False
        _wait(
            lambda: min(t for t, _ in check.read_health().values()) > down_at + 2.0,
            what="writes resumed",
        )
        time.sleep(1.5)  # the pause after the error, and some more checks
    finally:
        if stopped:
            mariadb_server.ctl("start")
        stop_sending.set()
        m.stop()
        runner.join(30)
        sender.join(10)
    assert calls.calls == []
    assert m.counters["failovers_started"] == 0
    assert m.counters["store_errors"] > 0
    m.close()
    check.close()
    s.close()


octavia_mysql_url = _octavia_mysql.octavia_mysql_url


@pytest.mark.mysql
def test_a_tick_on_octavias_mariadb_schema_writes_what_derive_and_fold_predict(
    octavia_mysql_url: str,
) -> None:
    """On tables made as Octavia's migrations make them, a tick ends as derive + fold predict."""
    s = MySQLStore(octavia_mysql_url)
    assert s.create_schema() == ["amphora_heartbeat_seq"]  # only our own table
    fleet = make_fleet(4, seed=13, members=3)
    _octavia_mysql.add_octavia_fleet(octavia_mysql_url, fleet)
    heartbeats = _random_heartbeats(fleet, 60, seed=3)
    m = _manager(s)
    for h in heartbeats:
        m.submit(h)
    report = m.step(T0 + 1)
    assert (report.heartbeats, report.failed) == (60, False)
    statuses, health, stats = _predict(fleet, heartbeats)
    assert _statuses(s) == statuses
    stored = {a: t for a, (t, _) in s.read_health().items()}
    assert stored == {a: math.ceil(t) for a, t in health.items()}  # DATETIME: whole seconds
    assert s.read_statistics() == stats
    s.close()
