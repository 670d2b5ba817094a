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

``--amphorae`` takes a list of fleet sizes (``10000,100000``): the database
holds the largest fleet (the fleets of one seed are prefixes of each other) and
each size runs the same rates in turn.  The fleet generator builds its packets
before it sends (at most 400,000: :func:`~amphora_heartbeat.fleet.plan_variants`)
and says when it is ready; the measurement starts only then.

``--scale`` runs each size at each rate once, with a heartbeat timeout of six
heartbeat intervals (amphorae / rate each), and reports per size the committed
rate, p99 receive-to-commit, the tick time (median and p99), the manager's RSS
at the end, its CPU seconds per 1,000 heartbeats and its false failovers; then,
between consecutive sizes, the bytes of RSS per extra amphora and per extra
amphora heard.  Memory per amphora and the cost of a tick should not grow with
the fleet beyond the amphorae heard.

Each run starts from empty ``amphora_health``, ``listener_statistics`` and
``amphora_heartbeat_seq`` tables (the benchmark deletes their rows: use a
database of its own).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import attrs

from ..store import StoreError
from .measure import BenchFailure, measure, prepare

__all__ = ["main", "measure"]


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


def _sizes(text: str) -> list[int]:
    """Parse ``--amphorae``: fleet sizes separated by commas, each at least 1."""
    try:
        sizes = [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected fleet sizes separated by commas (10000,100000), got {text!r}"
        ) from None
    if any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError("fleet sizes must be at least 1")
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amphora_heartbeat.bench manager",
        description="Benchmark the health manager: highest rate sustained with p99"
        " receive-to-commit under 1 s, and false failovers at twice that rate;"
        " or, with --scale, how its memory and tick time grow with the fleet.",
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
    parser.add_argument(
        "--amphorae",
        type=_sizes,
        metavar="N[,N...]",
        help="fleet sizes, each run in turn (10000; 2000 with --quick;"
        " 10000,100000 and 2000,20000 with --scale)",
    )
    parser.add_argument(
        "--rates",
        help="comma-separated rates to try in order, packets/s"
        " (2000,5000,10000,15000,20000; 1000,3000 with --quick; 2000 and 1000 with --scale)",
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
        help="least heartbeat_timeout of the double-rate and --scale runs, seconds",
    )
    parser.add_argument("--tick", type=float, default=0.1, help="manager tick, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scale",
        action="store_true",
        help="run every fleet size at every rate once (no ladder, no double rate) and report"
        " RSS and tick time per size, and RSS per extra amphora between sizes",
    )
    parser.add_argument("--quick", action="store_true", help="a small run, under a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['amphorae']} amphorae  "
        f"rate {r['rate']:>8.0f}/s  committed {r['committed_per_s']:>6}/s  "
        f"p50 {r['p50_s']:.3f}s  p99 {r['p99_s']:.3f}s  max {r['max_s']:.3f}s  "
        f"lost {r['lost_share']:.2%}  cpu {r['manager_cpu_share']:.2f} "
        f"({r['cpu_s_per_1000']} s/1000)  tick {r['tick_mean_s']:.3f}s "
        f"(p50 {r['tick_p50_s']:.3f}s p99 {r['tick_p99_s']:.3f}s)  rss {r['rss_mib']} MiB  "
        f"false failovers {r['failovers']} (held {r['failovers_held_overloaded']:.0f}; after the "
        f"fleet stopped {r['failovers_after_fleet_stopped']})  "
        f"{'sustained' if r['sustained'] else 'NOT sustained'}"
    )


@attrs.frozen
class _Plan:
    """The benchmark's settings, from the command line."""

    sizes: list[int]
    rates: list[float]
    duration: float
    double: float
    warmup: float
    min_timeout: float
    tick: float
    seed: int
    scale: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Plan:
        """Apply the defaults (the --quick ones with --quick, the --scale ones with --scale)."""
        quick, scale = args.quick, args.scale
        if scale:
            rates = args.rates or ("1000" if quick else "2000")
            sizes = [2_000, 20_000] if quick else [10_000, 100_000]
        else:
            rates = args.rates or ("1000,3000" if quick else "2000,5000,10000,15000,20000")
            sizes = [2_000] if quick else [10_000]
        return cls(
            sizes=args.amphorae or sizes,
            rates=[float(r) for r in rates.split(",")],
            duration=args.duration or (5.0 if quick else 60.0),
            double=args.double_duration or (5.0 if quick else 30.0),
            warmup=args.warmup if args.warmup is not None else (2.0 if quick else 5.0),
            min_timeout=args.min_timeout,
            tick=args.tick,
            seed=args.seed,
            scale=scale,
        )


def _ladder(db: str, workers: int, amphorae: int, plan: _Plan, say: Any) -> dict[str, Any]:
    """Climb the rates on one engine with ``workers`` processes, then run twice the best."""
    runs = []
    best: dict[str, Any] | None = None
    common: dict[str, Any] = {
        "amphorae": amphorae,
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
        timeout = max(plan.min_timeout, 6 * amphorae / rate2)
        storm = measure(
            db, rate=rate2, duration=plan.double, warmup=timeout + 1.0,
            heartbeat_timeout=timeout, **common,
        )  # fmt: skip
        say(f"twice the best rate, heartbeat_timeout {timeout:.1f}s:")
        say(_line(storm))
    say(
        f"highest rate sustained: {best['rate'] if best else 'none'}/s; "
        f"false failovers at twice it: {storm['failovers'] if storm else None}"
    )
    return {
        "engine": _engine(db),
        "workers": workers,
        "amphorae": amphorae,
        "runs": runs,
        "best_sustained_rate": best["rate"] if best else None,
        "double_rate": storm,
        "false_failovers_at_double_rate": storm["failovers"] if storm else None,
    }


def _growth(smaller: dict[str, Any], larger: dict[str, Any]) -> dict[str, Any]:
    """Return the RSS per extra amphora (and per extra amphora heard) between two runs."""
    extra = larger["rss_end_bytes"] - smaller["rss_end_bytes"]
    amphorae = larger["amphorae"] - smaller["amphorae"]
    heard = larger["amphorae_heard"] - smaller["amphorae_heard"]
    return {
        "rate": larger["rate"],
        "from_amphorae": smaller["amphorae"],
        "to_amphorae": larger["amphorae"],
        "rss_extra_bytes": extra,
        "rss_bytes_per_extra_amphora": round(extra / amphorae) if amphorae else None,
        "rss_bytes_per_extra_amphora_heard": round(extra / heard) if heard > 0 else None,
    }


_SCALE_HEAD = (
    f"{'amphorae':>9} {'heard':>8} {'rate/s':>7} {'committed/s':>11} {'p99 s':>7} "
    f"{'tick p50 s':>10} {'tick p99 s':>10} {'beats/tick':>10} {'RSS MiB':>8} "
    f"{'cpu s/1000':>10} {'false fo':>8} {'load':>5}"
)


def _scale_row(r: dict[str, Any]) -> str:
    cpu = "-" if r["cpu_s_per_1000"] is None else f"{r['cpu_s_per_1000']:.3f}"
    return (
        f"{r['amphorae']:>9,} {r['amphorae_heard']:>8,} {r['rate']:>7,.0f} "
        f"{r['committed_per_s']:>11,} {r['p99_s']:>7.3f} {r['tick_p50_s']:>10.3f} "
        f"{r['tick_p99_s']:>10.3f} {r['heartbeats_per_tick']:>10.1f} {r['rss_end_mib']:>8.1f} "
        f"{cpu:>10} {r['failovers']:>8} {r['load_average']:>5.2f}"
    )


def _growth_line(g: dict[str, Any]) -> str:
    def per(value: int | None) -> str:
        return "-" if value is None else f"{value:,} bytes"

    return (
        f"RSS {g['from_amphorae']:,} -> {g['to_amphorae']:,} amphorae at {g['rate']:,.0f}/s: "
        f"{g['rss_extra_bytes'] / 2**20:+.1f} MiB, "
        f"{per(g['rss_bytes_per_extra_amphora'])} per extra amphora, "
        f"{per(g['rss_bytes_per_extra_amphora_heard'])} per extra amphora heard"
    )


def _scale(db: str, workers: int, plan: _Plan, say: Any) -> dict[str, Any]:
    """Run every fleet size at every rate once on one engine; report how the manager scales."""
    runs = []
    growth = []
    for rate in plan.rates:
        by_size = []
        for amphorae in plan.sizes:
            timeout = max(plan.min_timeout, 6 * amphorae / rate)
            r = measure(
                db, rate=rate, duration=plan.duration, warmup=plan.warmup, amphorae=amphorae,
                heartbeat_timeout=timeout, seed=plan.seed, tick=plan.tick, workers=workers,
            )  # fmt: skip
            say(_line(r))
            by_size.append(r)
        growth += [_growth(a, b) for a, b in itertools.pairwise(by_size)]
        runs += by_size
    say(f"scale on {_engine(db)}, {workers} worker(s); RSS at the end of each run:")
    say(_SCALE_HEAD)
    for r in runs:
        say(_scale_row(r))
    for g in growth:
        say(_growth_line(g))
    return {
        "engine": _engine(db),
        "workers": workers,
        "scale": True,
        "runs": runs,
        "growth": growth,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the health-manager benchmark; return the exit status."""
    args = _parser().parse_args(argv)
    plan = _Plan.from_args(args)

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    sizes = ", ".join(f"{n:,}" for n in plan.sizes)
    say(
        f"machine: {os.cpu_count()} cores, load average {load}; {plan.duration:g} s per rate "
        f"after {plan.warmup:g} s warm-up; {sizes} amphorae (2 listeners, 2 pools, 4 members)"
    )
    reports = []
    try:
        for db in args.db:
            try:
                prepare(db, max(plan.sizes), plan.seed)
            except StoreError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            for workers in args.workers:
                if plan.scale:
                    say(f"== health manager on {_engine(db)}, {workers} worker(s), by fleet size")
                    reports.append(_scale(db, workers, plan, say))
                    continue
                for amphorae in plan.sizes:
                    say(
                        f"== health manager on {_engine(db)}, {workers} worker(s), "
                        f"{amphorae:,} amphorae"
                    )
                    reports.append(_ladder(db, workers, amphorae, plan, say))
    except BenchFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    return 0
