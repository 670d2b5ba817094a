"""Tests of ``manager --workers N``: real processes sharing one address with SO_REUSEPORT."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import _pg
import pytest

from amphora_heartbeat.cli.workers import _emit, _mark
from amphora_heartbeat.getter import UDPStatusGetter
from amphora_heartbeat.manager.supervisor import Supervisor, sum_counters
from amphora_heartbeat.models import ListenerStats
from amphora_heartbeat.sender import UDPStatusSender
from amphora_heartbeat.store import TickWrite, open_store
from amphora_heartbeat.testing import AmphoraSpec, make_fleet

pg_server = _pg.pg_server
pg_dsn = _pg.pg_dsn
db_url = _pg.db_url

KEY = "workers-test-key"
DEADLINE = 60.0


def _wait(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Parent:
    """A `manager --workers N` process, its output collected by a thread."""

    def __init__(self, db: str, workers: int, *extra: str) -> None:
        env = dict(os.environ, AMPHORA_HEARTBEAT_KEY=KEY)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "amphora_heartbeat", "manager", "--db", db,
             "--bind", "127.0.0.1:0", "--workers", str(workers), "--tick", "0.05", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("listening on 127.0.0.1:"):
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"no listening line: {line!r} {self.proc.communicate()[1]}")
        self.port = int(line.rsplit(":", 1)[1])
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            into.append(line.rstrip("\n"))

    def workers(self) -> list[int]:
        """Return the pids of the worker processes now running."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        ).stdout
        return sorted(int(p) for p in out.split())

    def stop(self) -> dict[str, float]:
        """SIGTERM the parent; return the summed counters it prints."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(DEADLINE)
        for reader in self._readers:
            reader.join(10)
        assert self.proc.returncode == 0, self.errors
        counters: dict[str, float] = json.loads(self.lines[-1])
        return counters

    def kill(self) -> None:
        """Kill the parent and its workers (the process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def seeded(db_url: str) -> tuple[str, list[AmphoraSpec]]:
    """Return a database URL holding a fleet of 12 amphorae, and the fleet."""
    fleet = make_fleet(12, seed=5, listeners=1, pools=1, members=2)
    store = open_store(db_url)
    store.create_schema()
    store.add_fleet(fleet)
    store.close()
    return db_url, fleet


@pytest.fixture
def senders() -> Iterator[Callable[[int], list[UDPStatusSender]]]:
    """Yield a maker of one sender per amphora (each its own socket, so its own source port)."""
    made: list[UDPStatusSender] = []

    def make(port: int, n: int = 12) -> list[UDPStatusSender]:
        made.extend(UDPStatusSender(KEY, [f"127.0.0.1:{port}"]) for _ in range(n))
        return made[-n:]

    yield make  # type: ignore[misc]
    for sender in made:
        sender.close()


def test_sum_counters_adds_counts_and_keeps_the_largest_delay() -> None:
    """Counts are added over workers; delays and durations are the largest of any worker."""
    total = sum_counters([
        {"accepted": 3, "delay_p99_seconds": 0.2, "tick_seconds": 0.01},
        {"accepted": 4, "delay_p99_seconds": 0.5, "tick_seconds": 0.02},
    ])  # fmt: skip
    assert total == {"accepted": 7, "delay_p99_seconds": 0.5, "tick_seconds": 0.02}


def test_supervisor_refuses_no_workers() -> None:
    """A supervisor of zero workers is a caller's mistake."""
    with pytest.raises(ValueError, match="at least 1"):
        Supervisor(["true"], 0)


def test_supervisor_reports_a_worker_that_exits_before_it_listens() -> None:
    """start() is False at once when a worker dies before saying it listens."""
    supervisor = Supervisor([sys.executable, "-c", "raise SystemExit(1)"], 2)
    try:
        assert supervisor.start(timeout=DEADLINE) is False
    finally:
        supervisor.stop()
        supervisor.run()
        supervisor.close()


def test_closing_a_reuse_port_getter_wakes_it_and_feeds_no_neighbour() -> None:
    """In a SO_REUSEPORT group, close() wakes its own reader and sends nothing to the others."""
    getter = UDPStatusGetter(KEY, "127.0.0.1", 0, timeout=None, reuse_port=True)
    neighbour = UDPStatusGetter(KEY, "127.0.0.1", getter.address[1], timeout=0, reuse_port=True)
    errors: list[OSError] = []

    def receive() -> None:
        try:
            getter.dorecv()
        except OSError as exc:
            errors.append(exc)

    thread = threading.Thread(target=receive)
    thread.start()
    _wait(lambda: getter._receiving, "the reader to block")
    getter.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1
    with pytest.raises(TimeoutError):
        neighbour.dorecv()
    assert neighbour.counters["received"] == 0
    neighbour.close()


def _round(fleet: list[AmphoraSpec], senders: list[UDPStatusSender], seq: int) -> None:
    """Send one v3 heartbeat per amphora: member 0 DOWN on odd rounds, 10 bytes in each."""
    for spec, sender in zip(fleet, senders, strict=True):
        first = spec.pools[0].members[0]
        stats = {lst.listener_id: ListenerStats(bytes_in=10) for lst in spec.listeners}
        status = {first: "DOWN" if seq % 2 else "UP"}
        sender.dosend(spec.message(seq=seq, stats=stats, member_status=status))


def test_each_amphora_stays_on_one_worker_in_order(
    seeded: tuple[str, list[AmphoraSpec]],
    senders: Callable[..., list[UDPStatusSender]],
) -> None:
    """Two workers: every heartbeat is judged once, statuses end as the last round said."""
    db, fleet = seeded
    parent = Parent(db, 2)
    try:
        socks = senders(parent.port)
        rounds = 9
        for seq in range(1, rounds + 1):
            _round(fleet, socks, seq)
            time.sleep(0.02)  # paces the rounds; order within an amphora is the kernel's
        store = open_store(db)
        want = len(fleet) * rounds * 10
        _wait(lambda: sum(s.bytes_in for s in store.read_statistics().values()) == want,
              "every delta committed")  # fmt: skip
        members = store.execute("SELECT id, operating_status FROM member")
        store.close()
    finally:
        counters = parent.stop()
    status = dict(members)
    for spec in fleet:
        # Round 9 (odd) reported member 0 DOWN: an older round judged last would say UP.
        assert status[spec.pools[0].members[0]] == "ERROR"
        assert status[spec.pools[0].members[1]] == "ONLINE"
    assert counters["workers"] == 2
    assert counters["heartbeats_judged"] == len(fleet) * rounds
    assert counters["accepted"] == len(fleet) * rounds


def test_a_killed_worker_is_started_again_and_nothing_committed_is_lost(
    seeded: tuple[str, list[AmphoraSpec]],
    senders: Callable[..., list[UDPStatusSender]],
) -> None:
    """SIGKILL one worker: the parent starts another; committed rows stay, new ones commit."""
    db, fleet = seeded
    parent = Parent(db, 2)
    try:
        socks = senders(parent.port)
        _round(fleet, socks, 1)
        store = open_store(db)
        _wait(lambda: len(store.read_health()) == len(fleet), "first round committed")
        before = store.read_health()
        _wait(lambda: len(parent.workers()) == 2, "two workers")
        victim = parent.workers()[0]
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: victim not in parent.workers() and len(parent.workers()) == 2,
              "a new worker")  # fmt: skip
        time.sleep(0.5)  # the new worker binds after it starts
        for seq in range(2, 5):
            _round(fleet, socks, seq)
        want = len(fleet) * 4 * 10
        _wait(lambda: sum(s.bytes_in for s in store.read_statistics().values()) >= want - 120,
              "later rounds committed")  # fmt: skip
        after = store.read_health()
        store.close()
    finally:
        counters = parent.stop()
    assert set(after) == set(before)
    assert all(after[a][0] >= before[a][0] for a in before)
    assert counters["worker_restarts"] == 1


def test_sigterm_stops_every_worker_after_its_tick(
    seeded: tuple[str, list[AmphoraSpec]],
    senders: Callable[..., list[UDPStatusSender]],
) -> None:
    """SIGTERM to the parent: each worker commits what it received, then all exit.

    The workers' stderr (their status lines) reaches the parent's, each line marked.
    """
    db, fleet = seeded
    parent = Parent(db, 2, "--status-interval", "0.2")
    socks = senders(parent.port)
    _round(fleet, socks, 1)
    _round(fleet, socks, 2)
    _wait(lambda: len(parent.workers()) == 2, "two workers")
    _wait(lambda: any(line.startswith("[worker ") for line in parent.errors), "a status line")
    workers = parent.workers()
    counters = parent.stop()
    assert counters["accepted"] == counters["heartbeats_judged"] == 2 * len(fleet)
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    assert all(line.startswith(("[worker 0] ", "[worker 1] ")) for line in parent.errors)
    store = open_store(db)
    assert sum(s.bytes_in for s in store.read_statistics().values()) == 2 * len(fleet) * 10
    store.close()


def test_two_workers_fail_each_silent_amphora_over_once(
    seeded: tuple[str, list[AmphoraSpec]],
    senders: Callable[..., list[UDPStatusSender]],
    tmp_path: Path,
) -> None:
    """Four amphorae fall silent: each is failed over exactly once, no live one is."""
    db, fleet = seeded
    log = tmp_path / "failovers"
    command = f"sh -c 'echo \"$0\" >> {log}'"
    parent = Parent(db, 2, "--heartbeat-timeout", "2", "--health-check-interval", "0.2",
                    "--failover-command", command)  # fmt: skip
    silent = {spec.amphora_id for spec in fleet[:4]}
    try:
        socks = senders(parent.port)
        _round(fleet, socks, 1)
        for seq in range(2, 22):  # about 6 s: three heartbeat timeouts
            time.sleep(0.3)
            _round(fleet[4:], socks[4:], seq)
        _wait(lambda: log.exists() and len(log.read_text().split()) >= len(silent),
              "the failovers")  # fmt: skip
        time.sleep(1)  # a second failover of one of them would show by now
    finally:
        parent.stop()
    failed = log.read_text().split()
    assert sorted(failed) == sorted(silent)


def test_delay_histograms_of_several_workers_merge() -> None:
    """Merged histograms count every delay; different buckets refuse to merge."""
    from amphora_heartbeat.manager import DelayHistogram

    a, b = DelayHistogram(), DelayHistogram()
    a.add(0.010, 99)
    b.add(0.500, 1)
    b.add(0.020, 100)
    a.merge(b)
    assert a.count == 200
    assert a.maximum == 0.5
    assert a.quantile(0.4) == pytest.approx(0.011)
    assert a.quantile(0.6) == pytest.approx(0.021)
    assert a.quantile(0.999) == pytest.approx(0.501)
    with pytest.raises(ValueError, match="same buckets"):
        a.merge(DelayHistogram(width=0.01))


def test_two_workers_hold_the_storm_threshold(
    seeded: tuple[str, list[AmphoraSpec]],
    senders: Callable[..., list[UDPStatusSender]],
    tmp_path: Path,
) -> None:
    """Five amphorae silent since one moment, failover_threshold 3: no worker fails any over."""
    db, fleet = seeded
    log = tmp_path / "failovers"
    silent = {spec.amphora_id for spec in fleet[:5]}
    store = open_store(db)
    # Heard last at one moment, they go stale at one moment: a check sees all five.
    store.write_tick(TickWrite(now=time.time(), health=dict.fromkeys(silent, time.time() - 1)))
    command = f"sh -c 'echo \"$0\" >> {log}'"
    parent = Parent(db, 2, "--heartbeat-timeout", "2", "--health-check-interval", "0.2",
                    "--failover-threshold", "3", "--failover-command", command)  # fmt: skip
    try:
        socks = senders(parent.port)
        for seq in range(1, 21):  # about 6 s: three heartbeat timeouts
            _round(fleet[5:], socks[5:], seq)
            time.sleep(0.3)
        _wait(lambda: set(store.read_amphora_statuses().values()) >= {"FAILOVER_STOPPED"},
              "the storm guard")  # fmt: skip
        statuses = store.read_amphora_statuses()
    finally:
        parent.stop()
        store.close()
    assert not log.exists()
    assert {a for a, s in statuses.items() if s == "FAILOVER_STOPPED"} == silent


def test_lines_of_workers_printed_at_once_never_interleave(tmp_path: Path) -> None:
    """Two workers' reader threads print at once: each line lands whole (a reload's two
    lines once came out as one, and the second worker's newline alone)."""
    path = tmp_path / "out"
    # As sys.stderr writes: each write goes to the file at once (the lock is let go).
    with io.TextIOWrapper(path.open("wb", buffering=0), write_through=True) as stream:

        def writer(index: int) -> None:
            for n in range(3000):
                _emit(_mark(index, f"line {n} of worker {index}"), stream)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            sys.setswitchinterval(interval)
    lines = path.read_text().splitlines()
    assert len(lines) == 4 * 3000
    for line in lines:
        head, _, rest = line.partition("] line ")
        assert rest.endswith(f"of worker {head.removeprefix('[worker ')}"), line
