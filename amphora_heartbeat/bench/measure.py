"""The manager benchmark's measurement: one fleet rate into one or several managers.

:func:`measure` runs the fleet generator (a child process) at one rate into
``workers`` :class:`~amphora_heartbeat.manager.HealthManager` processes on one
port, waits for the generator's ready signal, then measures over a window after
a warm-up: the rate committed, packets lost, the receive-to-commit delays, the
tick time, CPU and RSS, and every failover started.  :func:`prepare` fills the
database with the fleet.  The command (``bench manager``) is
:mod:`amphora_heartbeat.bench.manager`.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs

from ..fleet import plan_variants, run_fleet
from ..getter import UDPStatusGetter
from ..manager import DelayHistogram, HealthManager, tune_gc
from ..manager.peers import PeerBoard, make_board, remove_board
from ..manager.supervisor import reserve_port, sum_counters
from ..store import open_store
from ..testing import make_fleet
from .common import rss_bytes

__all__ = ["BenchFailure", "measure", "prepare"]

_KEY = "bench-manager-key"
_RCVBUF = 4 * 1024 * 1024  # bytes; Linux caps it at net.core.rmem_max
# Sockets the fleet sends from: amphora i from socket i % _SOURCES, so that the kernel
# spreads the fleet over the workers' sockets by source port, as it would real amphorae.
_SOURCES = 256


def _ready_timeout(amphorae: int, packets: int) -> float:
    """Return how long the fleet generator may take to start sending, in seconds.

    Its child process starts, makes the fleet (about 35 µs an amphora here)
    and builds its packets (50-75 µs each); the margins are for a busy machine.
    """
    return 60.0 + 0.0005 * amphorae + 0.002 * packets


class BenchFailure(RuntimeError):
    """The benchmark cannot go on: a worker or the fleet generator failed (one line)."""


def _send(address: str, options: dict[str, Any], out: Any) -> None:
    """Run the fleet generator (in a child process): say when it is ready, then what it sent.

    Messages on ``out``: ``("ready", None)``, then ``("done", figures)``, or
    ``("error", text)`` if the generator failed.
    """
    try:
        summary = run_fleet(
            [address],
            _KEY,
            prebuilt=True,
            sources=_SOURCES,
            ready=lambda: out.put(("ready", None)),
            **options,
        )
    except Exception as exc:  # whatever it is, the parent reports it as one line
        out.put(("error", f"{type(exc).__name__}: {exc}"))
        return
    out.put(
        (
            "done",
            {
                "sent": summary.sent,
                "elapsed": summary.elapsed,
                "errors": summary.send_errors,
                "variants": summary.variants,
                "build_s": summary.build_seconds,
            },
        )
    )


def _await(sender: Any, out: Any, kind: str, timeout: float, what: str) -> Any:
    """Return the fleet generator's next ``kind`` message; raise :class:`BenchFailure` if none.

    ``what`` says what was awaited, for the error (``"ready"``, ``"done"``).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            tag, value = out.get(timeout=0.5)
        except queue.Empty:
            if not sender.is_alive():
                try:  # what it said just before it ended may arrive only now
                    tag, value = out.get(timeout=1.0)
                except queue.Empty:
                    raise BenchFailure(
                        f"the fleet generator ended (exit status {sender.exitcode})"
                        f" before it was {what}"
                    ) from None
            elif time.monotonic() > deadline:
                raise BenchFailure(
                    f"the fleet generator was not {what} after {timeout:.0f} s"
                ) from None
            else:
                continue
        if tag == "error":
            raise BenchFailure(f"the fleet generator failed: {value}")
        if tag == kind:
            return value


def _reset(store: Any) -> None:
    store.execute("DELETE FROM amphora_health")
    store.execute("DELETE FROM listener_statistics")
    # The replay guard's state: a run's seq values must not be judged against the last run's.
    store.execute("DELETE FROM amphora_heartbeat_seq")


def _wait(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@attrs.frozen
class _Settings:
    """What one worker runs with."""

    db: str
    port: int
    heartbeat_timeout: float
    tick: float
    #: The workers' shared board (manager.peers) and how many share it.
    board: str
    workers: int


@attrs.frozen
class _Snapshot:
    """A worker's state at one moment, or the workers' added up."""

    counters: dict[str, float]
    delays: DelayHistogram
    #: Durations of the committed ticks, seconds.
    ticks: DelayHistogram
    cpu: float
    rss: int
    failovers: list[float]


def _worker(settings: _Settings, index: int, conn: Any) -> None:
    """Run one manager (a worker process of the benchmark), driven over ``conn``.

    Commands: ``snapshot`` (answered with a :class:`_Snapshot`), ``drain`` (wait
    for the backlog to empty), ``stop`` (answered with the last snapshot).
    """
    tune_gc()  # as the manager command does
    store = open_store(settings.db)
    failovers: list[float] = []  # when each started (time.time())
    getter = UDPStatusGetter(
        _KEY, "127.0.0.1", settings.port, timeout=0.05, rcvbuf=_RCVBUF, reuse_port=True
    )
    manager = HealthManager(
        getter,
        store,
        heartbeat_timeout=settings.heartbeat_timeout,
        health_check_interval=1.0,
        failover=lambda amphora_id: failovers.append(time.time()),
        tick=settings.tick,
        peers=PeerBoard(settings.board, index, settings.workers),
    )

    def snapshot() -> _Snapshot:
        return _Snapshot(
            dict(manager.counters),
            manager.delays.snapshot(),
            manager.tick_durations.snapshot(),
            time.process_time(),
            rss_bytes(),
            list(failovers),
        )

    runner = threading.Thread(target=manager.run, name="bench-manager")
    runner.start()
    conn.send("ready")
    while (command := conn.recv()) != "stop":
        if command == "drain":
            _wait(lambda: manager.backlog == 0, 30)
        conn.send(snapshot() if command == "snapshot" else None)
    manager.stop()
    runner.join(60)
    manager.close(wait=True)
    getter.close()
    store.close()
    conn.send(snapshot())


def _merge(snapshots: Sequence[_Snapshot]) -> _Snapshot:
    delays = DelayHistogram()
    ticks = DelayHistogram()
    for s in snapshots:
        delays.merge(s.delays)
        ticks.merge(s.ticks)
    return _Snapshot(
        sum_counters([s.counters for s in snapshots]),
        delays,
        ticks,
        sum(s.cpu for s in snapshots),
        sum(s.rss for s in snapshots),
        sorted(t for s in snapshots for t in s.failovers),
    )


class _Workers:
    """The benchmark's manager processes, all on one port (``SO_REUSEPORT``)."""

    def __init__(self, n: int, db: str, heartbeat_timeout: float, tick: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        with reserve_port("127.0.0.1", 0) as reserved:
            self.port = reserved.getsockname()[1]
            self._board = make_board(n)
            settings = _Settings(db, self.port, heartbeat_timeout, tick, self._board, n)
            for i in range(n):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(settings, i, theirs), daemon=True)
                proc.start()
                self.pipes.append(mine)
                self.procs.append(proc)
            for pipe in self.pipes:
                if not pipe.poll(120) or pipe.recv() != "ready":
                    self.kill()
                    self.close()
                    raise BenchFailure("a manager worker did not start")

    def ask(self, command: str) -> _Snapshot:
        """Send ``command`` to every worker; return their snapshots added up."""
        for pipe in self.pipes:
            pipe.send(command)
        return _merge([pipe.recv() for pipe in self.pipes])

    def drain(self) -> None:
        """Wait (up to 30 s each) for every worker's backlog to empty."""
        for pipe in self.pipes:
            pipe.send("drain")
        for pipe in self.pipes:
            pipe.recv()

    def stop(self) -> _Snapshot:
        """Stop every worker after its current tick; return the last snapshots added up."""
        last = self.ask("stop")
        for proc in self.procs:
            proc.join(30)
        return last

    def kill(self) -> None:
        """End workers still running (after an error)."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()

    def close(self) -> None:
        """Delete the workers' shared board (after they stopped)."""
        remove_board(self._board)


def measure(
    db: str,
    *,
    rate: float,
    duration: float,
    amphorae: int,
    warmup: float = 5.0,
    heartbeat_timeout: float = 60.0,
    seed: int = 0,
    tick: float = 0.1,
    workers: int = 1,
) -> dict[str, Any]:
    """Run the fleet at ``rate`` packets/s into ``workers`` managers on ``db``; return figures.

    The window measured starts ``warmup`` seconds after the first packet arrives
    and lasts ``duration`` seconds; the fleet generator builds its packets
    first, and the clock waits for it (up to 60 s plus 0.5 ms an amphora and
    2 ms a packet).  Failovers are counted (and succeed at once).

    :raises RuntimeError: a manager worker or the fleet generator failed, or the
        generator was not ready in time (the message says which).
    """
    store = open_store(db)
    _reset(store)
    store.close()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    pool = _Workers(workers, db, heartbeat_timeout, tick)
    sending = warmup + duration + 1
    options = {"amphorae": amphorae, "rate": rate, "duration": sending, "seed": seed}
    packets = amphorae * plan_variants(amphorae, rate=rate, duration=sending)
    sender = ctx.Process(target=_send, args=(f"127.0.0.1:{pool.port}", options, out), daemon=True)
    sender.start()
    try:
        _await(sender, out, "ready", _ready_timeout(amphorae, packets), "ready")
        if not _wait(lambda: pool.ask("snapshot").counters["received"] > 0, 60):
            raise BenchFailure("the manager received nothing from the fleet generator in 60 s")
        time.sleep(warmup)
        first = pool.ask("snapshot")
        t0 = time.monotonic()
        time.sleep(duration)
        last = pool.ask("snapshot")
        elapsed = time.monotonic() - t0
        load = os.getloadavg()[0]
        sent = _await(sender, out, "done", warmup + duration + 120, "done")
        fleet_stopped = time.time()  # the fleet's summary comes after its last packet
        sender.join(30)
        pool.drain()
        end = pool.stop()
    finally:
        pool.kill()
        pool.close()
        if sender.is_alive():
            sender.terminate()
    result = _figures(
        rate,
        elapsed,
        first=first,
        last=last,
        end=end,
        sent=sent,
        fleet_stopped=fleet_stopped,
        heartbeat_timeout=heartbeat_timeout,
    )
    store = open_store(db)
    try:
        heard = store.execute("SELECT COUNT(*) FROM amphora_health")[0][0]
    finally:
        store.close()
    result.update(amphorae=amphorae, amphorae_heard=heard, load_average=round(load, 2))
    return result


def _figures(
    rate: float,
    elapsed: float,
    *,
    first: _Snapshot,
    last: _Snapshot,
    end: _Snapshot,
    sent: dict[str, Any],
    fleet_stopped: float,
    heartbeat_timeout: float,
) -> dict[str, Any]:
    """Return the figures of one run from the workers' snapshots."""
    window = last.delays.since(first.delays)
    judged = last.counters["heartbeats_judged"] - first.counters["heartbeats_judged"]
    committed = judged / elapsed
    counters = end.counters
    lost = max(sent["sent"] - counters["accepted"], 0)
    cpu = last.cpu - first.cpu
    ticks = last.counters["ticks"] - first.counters["ticks"]
    tick_time = last.counters["tick_seconds_total"] - first.counters["tick_seconds_total"]
    tick_window = last.ticks.since(first.ticks)
    p99 = window.quantile(0.99)
    result = {
        "rate": rate,
        "seconds": round(elapsed, 1),
        "committed_per_s": round(committed),
        "sent": sent["sent"],
        "lost": lost,
        "lost_share": lost / sent["sent"] if sent["sent"] else 0.0,
        "p50_s": window.quantile(0.5),
        "p99_s": p99,
        "max_s": window.maximum,
        "ticks": counters["ticks"],
        "tick_mean_s": round(tick_time / ticks, 4) if ticks else 0.0,
        "tick_p50_s": round(tick_window.quantile(0.5), 4),
        "tick_p99_s": round(tick_window.quantile(0.99), 4),
        "heartbeats_per_tick": round(judged / ticks, 1) if ticks else 0.0,
        "rows_written": counters["rows_written"],
        "manager_cpu_share": round(cpu / elapsed, 2),
        "cpu_s_per_1000": round(1000 * cpu / judged, 3) if judged else None,
        "rss_mib": round(last.rss / 2**20, 1),
        "rss_end_mib": round(end.rss / 2**20, 1),
        "rss_end_bytes": end.rss,
        "heartbeat_timeout": heartbeat_timeout,
        "fleet_variants": sent["variants"],
        "fleet_build_s": round(sent["build_s"], 1),
        "store_errors": counters["store_errors"],
        "failovers": sum(t < fleet_stopped + heartbeat_timeout for t in end.failovers),
        "failovers_after_fleet_stopped": sum(
            t >= fleet_stopped + heartbeat_timeout for t in end.failovers
        ),
        "failovers_held_overloaded": counters["failovers_held_overloaded"],
        "socket_drops": counters["socket_drops"],
    }
    result["sustained"] = p99 < 1.0 and committed >= 0.97 * rate and result["lost_share"] < 0.01
    return result


def prepare(db: str, amphorae: int, seed: int) -> None:
    """Make the schema and put the fleet in the database, adding to a smaller one of the seed."""
    store = open_store(db)
    try:
        store.create_schema()
        fleet = make_fleet(amphorae, seed=seed)
        held = store.execute("SELECT COUNT(*) FROM amphora")[0][0]
        # A fleet of the same seed is a prefix of a larger one: the database may
        # hold the first `held` amphorae of this one, or more of them.
        ends = {fleet[0].amphora_id, fleet[min(held, amphorae) - 1].amphora_id}
        if held and len(store.read_views(ends)) != len(ends):
            raise SystemExit("the database holds another fleet: use an empty one")
        if held < amphorae:
            store.add_fleet(fleet[held:])
    finally:
        store.close()
