"""Benchmark the health manager end to end: fleet → UDP → manager → database.

``python -m amphora_heartbeat.bench manager --db URL`` fills the database with a
fleet (10,000 amphorae by default, the standard packet: 2 listeners, 2 pools, 4
members each), then for each rate in turn runs the fleet generator (in another
process) into a :class:`~amphora_heartbeat.manager.HealthManager` (in this one)
and measures, over a window after a warm-up:

* the rate committed, the packets lost (sent but never accepted), and
* the p99 of the receive-to-commit delay.

A rate is *sustained* when p99 stays under 1 s, at least 97% of the target
rate is committed in the window and under 1% of the packets are lost.  The
highest sustained rate is then run at twice its value with a short heartbeat
timeout (six heartbeat intervals, as Octavia's 60 s / 10 s defaults) and every
failover counted: each one started before the fleet had been silent for a
heartbeat timeout is false, since every amphora keeps sending until the fleet
stops.  The manager keeps running after that to write its backlog; amphorae it
fails over then really were silent for a timeout, and are reported apart
(``failovers_after_fleet_stopped``).

Each run starts from empty ``amphora_health`` and ``listener_statistics`` tables
(the benchmark deletes their rows: use a database of its own).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs

from ..fleet import run_fleet
from ..getter import UDPStatusGetter
from ..manager import DelayHistogram, HealthManager, tune_gc
from ..manager.supervisor import reserve_port, sum_counters
from ..store import StoreError, open_store
from ..testing import make_fleet
from .common import rss_bytes

__all__ = ["main", "measure"]

_KEY = "bench-manager-key"
_RCVBUF = 4 * 1024 * 1024  # bytes; Linux caps it at net.core.rmem_max
# Sockets the fleet sends from: amphora i from socket i % _SOURCES, so that the kernel
# spreads the fleet over the workers' sockets by source port, as it would real amphorae.
_SOURCES = 256


def _send(address: str, options: dict[str, Any], out: Any) -> None:
    """Run the fleet generator (in a child process) and report what it sent."""
    summary = run_fleet([address], _KEY, prebuilt=True, sources=_SOURCES, **options)
    out.put({"sent": summary.sent, "elapsed": summary.elapsed, "errors": summary.send_errors})


def _reset(store: Any) -> None:
    store.execute("DELETE FROM amphora_health")
    store.execute("DELETE FROM listener_statistics")


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


@attrs.frozen
class _Snapshot:
    """A worker's state at one moment, or the workers' added up."""

    counters: dict[str, float]
    delays: DelayHistogram
    cpu: float
    rss: int
    failovers: list[float]


def _worker(settings: _Settings, conn: Any) -> None:
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
    )

    def snapshot() -> _Snapshot:
        return _Snapshot(
            dict(manager.counters),
            manager.delays.snapshot(),
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
    for s in snapshots:
        delays.merge(s.delays)
    return _Snapshot(
        sum_counters([s.counters for s in snapshots]),
        delays,
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
            settings = _Settings(db, self.port, heartbeat_timeout, tick)
            for _ in range(n):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(settings, theirs), daemon=True)
                proc.start()
                self.pipes.append(mine)
                self.procs.append(proc)
            for pipe in self.pipes:
                if not pipe.poll(120) or pipe.recv() != "ready":
                    raise RuntimeError("a manager worker did not start")

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
    and lasts ``duration`` seconds.  Failovers are counted (and succeed at once).
    """
    store = open_store(db)
    _reset(store)
    store.close()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    pool = _Workers(workers, db, heartbeat_timeout, tick)
    options = {"amphorae": amphorae, "rate": rate, "duration": warmup + duration + 1, "seed": seed}
    sender = ctx.Process(target=_send, args=(f"127.0.0.1:{pool.port}", options, out), daemon=True)
    sender.start()
    try:
        if not _wait(lambda: pool.ask("snapshot").counters["received"] > 0, 120):
            raise RuntimeError("the fleet generator sent nothing")
        time.sleep(warmup)
        first = pool.ask("snapshot")
        t0 = time.monotonic()
        time.sleep(duration)
        last = pool.ask("snapshot")
        elapsed = time.monotonic() - t0
        sent = out.get(timeout=warmup + duration + 120)
        fleet_stopped = time.time()  # the fleet's summary comes after its last packet
        sender.join(30)
        pool.drain()
        end = pool.stop()
    finally:
        pool.kill()
        if sender.is_alive():
            sender.terminate()
    return _figures(
        rate,
        elapsed,
        first=first,
        last=last,
        end=end,
        sent=sent,
        fleet_stopped=fleet_stopped,
        heartbeat_timeout=heartbeat_timeout,
    )


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
        "rows_written": counters["rows_written"],
        "manager_cpu_share": round(cpu / elapsed, 2),
        "cpu_s_per_1000": round(1000 * cpu / judged, 3) if judged else None,
        "rss_mib": round(last.rss / 2**20, 1),
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


def _prepare(db: str, amphorae: int, seed: int) -> None:
    store = open_store(db)
    store.create_schema()
    fleet = make_fleet(amphorae, seed=seed)
    known = store.read_views([fleet[0].amphora_id, fleet[-1].amphora_id])
    if len(known) != 2:
        if store.execute("SELECT COUNT(*) FROM amphora")[0][0]:
            raise SystemExit("the database holds another fleet: use an empty one")
        store.add_fleet(fleet)
    store.close()


def _engine(url: str) -> str:
    scheme = url.partition(":")[0]
    if scheme.startswith("postgres"):
        return "PostgreSQL"
    return "MariaDB/MySQL" if scheme.startswith("mysql") else "SQLite"


def _workers(text: str) -> list[int]:
    counts = [os.cpu_count() or 1 if w == "auto" else int(w) for w in text.split(",")]
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError("worker counts must be at least 1")
    return counts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amphora_heartbeat.bench manager",
        description="Benchmark the health manager: highest rate sustained with p99"
        " receive-to-commit under 1 s, and false failovers at twice that rate.",
    )
    parser.add_argument(
        "--db",
        required=True,
        action="append",
        help="database URL (sqlite:///PATH, postgresql://..., mysql+pymysql://...);"
        " repeat to run each engine in turn",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=[1],
        metavar="N[,N...]",
        help="manager processes on one port (SO_REUSEPORT); a list runs each in turn;"
        " 'auto' is one per core (default 1)",
    )
    parser.add_argument("--amphorae", type=int, help="fleet size (10,000; 2,000 with --quick)")
    parser.add_argument(
        "--rates",
        help="comma-separated rates to try in order, packets/s"
        " (2000,5000,10000,15000,20000; 1000,3000 with --quick)",
    )
    parser.add_argument("--duration", type=float, help="seconds measured per rate (60; 5)")
    parser.add_argument(
        "--double-duration", type=float, help="seconds at twice the best rate (30; 5)"
    )
    parser.add_argument("--warmup", type=float, help="seconds before each window (5; 2)")
    parser.add_argument(
        "--min-timeout",
        type=float,
        default=3.0,
        help="least heartbeat_timeout of the double-rate run, seconds",
    )
    parser.add_argument("--tick", type=float, default=0.1, help="manager tick, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a small run, under a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def _line(r: dict[str, Any]) -> str:
    return (
        f"rate {r['rate']:>8.0f}/s  committed {r['committed_per_s']:>6}/s  "
        f"p50 {r['p50_s']:.3f}s  p99 {r['p99_s']:.3f}s  max {r['max_s']:.3f}s  "
        f"lost {r['lost_share']:.2%}  cpu {r['manager_cpu_share']:.2f} "
        f"({r['cpu_s_per_1000']} s/1000)  tick {r['tick_mean_s']:.3f}s  rss {r['rss_mib']} MiB  "
        f"false failovers {r['failovers']} (held {r['failovers_held_overloaded']:.0f}; after the "
        f"fleet stopped {r['failovers_after_fleet_stopped']})  "
        f"{'sustained' if r['sustained'] else 'NOT sustained'}"
    )


@attrs.frozen
class _Plan:
    """The benchmark's settings, from the command line."""

    amphorae: int
    rates: list[float]
    duration: float
    double: float
    warmup: float
    min_timeout: float
    tick: float
    seed: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Plan:
        """Apply the defaults (the --quick ones with --quick)."""
        quick = args.quick
        rates = args.rates or ("1000,3000" if quick else "2000,5000,10000,15000,20000")
        return cls(
            amphorae=args.amphorae or (2_000 if quick else 10_000),
            rates=[float(r) for r in rates.split(",")],
            duration=args.duration or (5.0 if quick else 60.0),
            double=args.double_duration or (5.0 if quick else 30.0),
            warmup=args.warmup if args.warmup is not None else (2.0 if quick else 5.0),
            min_timeout=args.min_timeout,
            tick=args.tick,
            seed=args.seed,
        )


def _ladder(db: str, workers: int, plan: _Plan, say: Any) -> dict[str, Any]:
    """Climb the rates on one engine with ``workers`` processes, then run twice the best."""
    runs = []
    best: dict[str, Any] | None = None
    common: dict[str, Any] = {
        "amphorae": plan.amphorae,
        "seed": plan.seed,
        "tick": plan.tick,
        "workers": workers,
    }
    for rate in plan.rates:
        r = measure(db, rate=rate, duration=plan.duration, warmup=plan.warmup, **common)
        runs.append(r)
        say(_line(r))
        if not r["sustained"]:
            break
        best = r
    storm: dict[str, Any] | None = None
    if best is not None:
        rate2 = 2 * best["rate"]
        timeout = max(plan.min_timeout, 6 * plan.amphorae / rate2)
        storm = measure(
            db, rate=rate2, duration=plan.double, warmup=timeout + 1.0,
            heartbeat_timeout=timeout, **common,
        )  # fmt: skip
        storm["heartbeat_timeout"] = timeout
        say(f"twice the best rate, heartbeat_timeout {timeout:.1f}s:")
        say(_line(storm))
    say(
        f"highest rate sustained: {best['rate'] if best else 'none'}/s; "
        f"false failovers at twice it: {storm['failovers'] if storm else None}"
    )
    return {
        "engine": _engine(db),
        "workers": workers,
        "amphorae": plan.amphorae,
        "runs": runs,
        "best_sustained_rate": best["rate"] if best else None,
        "double_rate": storm,
        "false_failovers_at_double_rate": storm["failovers"] if storm else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the health-manager benchmark; return the exit status."""
    args = _parser().parse_args(argv)
    plan = _Plan.from_args(args)

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    say(
        f"machine: {os.cpu_count()} cores; {plan.duration:.0f} s per rate after "
        f"{plan.warmup:.0f} s warm-up; {plan.amphorae} amphorae (2 listeners, 2 pools, "
        "4 members)"
    )
    reports = []
    for db in args.db:
        try:
            _prepare(db, plan.amphorae, plan.seed)
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for workers in args.workers:
            say(f"== health manager on {_engine(db)}, {workers} worker(s)")
            reports.append(_ladder(db, workers, plan, say))
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    return 0
