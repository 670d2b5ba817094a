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

from ..fleet import run_fleet
from ..getter import UDPStatusGetter
from ..manager import HealthManager, tune_gc
from ..store import StoreError, open_store
from ..testing import make_fleet

__all__ = ["main", "measure"]

_KEY = "bench-manager-key"
_RCVBUF = 4 * 1024 * 1024  # bytes; Linux caps it at net.core.rmem_max


def _send(address: str, options: dict[str, Any], out: Any) -> None:
    """Run the fleet generator (in a child process) and report what it sent."""
    summary = run_fleet([address], _KEY, prebuilt=True, **options)
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
) -> dict[str, Any]:
    """Run the fleet at ``rate`` packets/s into a manager on ``db``; return the figures.

    The window measured starts ``warmup`` seconds after the first packet arrives
    and lasts ``duration`` seconds.  Failovers are counted (and succeed at once).
    """
    store = open_store(db)
    _reset(store)
    failovers: list[float] = []  # when each started (time.time())

    def failover(amphora_id: str) -> None:
        failovers.append(time.time())

    getter = UDPStatusGetter(_KEY, "127.0.0.1", 0, timeout=0.05, rcvbuf=_RCVBUF)
    manager = HealthManager(
        getter,
        store,
        heartbeat_timeout=heartbeat_timeout,
        health_check_interval=1.0,
        failover=failover,
        tick=tick,
    )
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    host, port = getter.address
    sender = ctx.Process(
        target=_send,
        args=(
            f"{host}:{port}",
            {"amphorae": amphorae, "rate": rate, "duration": warmup + duration + 1, "seed": seed},
            out,
        ),
        daemon=True,
    )
    runner = threading.Thread(target=manager.run, name="bench-manager")
    runner.start()
    sender.start()
    try:
        if not _wait(lambda: manager.counters["received"] > 0, 120):
            raise RuntimeError("the fleet generator sent nothing")
        time.sleep(warmup)
        mark = manager.delays.snapshot()
        first = dict(manager.counters)
        cpu0 = time.process_time()
        t0 = time.monotonic()
        time.sleep(duration)
        window = manager.delays.since(mark)
        last = dict(manager.counters)
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        sent = out.get(timeout=warmup + duration + 120)
        fleet_stopped = time.time()  # the fleet's summary comes after its last packet
        sender.join(30)
        _wait(lambda: manager.backlog == 0, 30)
    finally:
        manager.stop()
        runner.join(60)
        if sender.is_alive():
            sender.terminate()
        manager.close(wait=True)
        getter.close()
    counters = manager.counters
    committed = (last["heartbeats_judged"] - first["heartbeats_judged"]) / elapsed
    lost = max(sent["sent"] - counters["accepted"], 0)
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
        "rows_written": counters["rows_written"],
        "manager_cpu_share": round(cpu / elapsed, 2),
        "store_errors": counters["store_errors"],
        "failovers": sum(t < fleet_stopped + heartbeat_timeout for t in failovers),
        "failovers_after_fleet_stopped": sum(
            t >= fleet_stopped + heartbeat_timeout for t in failovers
        ),
        "failovers_held_overloaded": counters["failovers_held_overloaded"],
        "socket_drops": counters["socket_drops"],
    }
    result["sustained"] = p99 < 1.0 and committed >= 0.97 * rate and result["lost_share"] < 0.01
    store.close()
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amphora_heartbeat.bench manager",
        description="Benchmark the health manager: highest rate sustained with p99"
        " receive-to-commit under 1 s, and false failovers at twice that rate.",
    )
    parser.add_argument("--db", required=True, help="sqlite:///PATH or postgresql://...")
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
        f"lost {r['lost_share']:.2%}  cpu {r['manager_cpu_share']:.2f}  "
        f"false failovers {r['failovers']} (held {r['failovers_held_overloaded']:.0f}; after the "
        f"fleet stopped {r['failovers_after_fleet_stopped']})  "
        f"{'sustained' if r['sustained'] else 'NOT sustained'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the health-manager benchmark; return the exit status."""
    args = _parser().parse_args(argv)
    quick = args.quick
    amphorae = args.amphorae or (2_000 if quick else 10_000)
    rates = [
        float(r)
        for r in (args.rates or ("1000,3000" if quick else "2000,5000,10000,15000,20000")).split(
            ","
        )
    ]
    duration = args.duration or (5.0 if quick else 60.0)
    double = args.double_duration or (5.0 if quick else 30.0)
    warmup = args.warmup if args.warmup is not None else (2.0 if quick else 5.0)
    engine = "PostgreSQL" if args.db.startswith("postgres") else "SQLite"

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    try:
        _prepare(args.db, amphorae, args.seed)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tune_gc()  # as the manager command does
    say(f"health manager on {engine}: {amphorae} amphorae (2 listeners, 2 pools, 4 members)")
    say(f"machine: {os.cpu_count()} cores; {duration:.0f} s per rate after {warmup:.0f} s warm-up")
    runs = []
    best: dict[str, Any] | None = None
    for rate in rates:
        r = measure(
            args.db, rate=rate, duration=duration, amphorae=amphorae, warmup=warmup,
            seed=args.seed, tick=args.tick,
        )  # fmt: skip
        runs.append(r)
        say(_line(r))
        if not r["sustained"]:
            break
        best = r
    storm: dict[str, Any] | None = None
    if best is not None:
        rate2 = 2 * best["rate"]
        timeout = max(args.min_timeout, 6 * amphorae / rate2)
        storm = measure(
            args.db, rate=rate2, duration=double, amphorae=amphorae,
            warmup=timeout + 1.0, heartbeat_timeout=timeout, seed=args.seed, tick=args.tick,
        )  # fmt: skip
        storm["heartbeat_timeout"] = timeout
        say(f"twice the best rate, heartbeat_timeout {timeout:.1f}s:")
        say(_line(storm))
    report = {
        "engine": engine,
        "amphorae": amphorae,
        "runs": runs,
        "best_sustained_rate": best["rate"] if best else None,
        "double_rate": storm,
        "false_failovers_at_double_rate": storm["failovers"] if storm else None,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        say(
            f"highest rate sustained: {report['best_sustained_rate'] or 'none'}/s; "
            f"false failovers at twice it: {report['false_failovers_at_double_rate']}"
        )
    return 0
