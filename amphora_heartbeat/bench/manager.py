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
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs

from ..fleet import plan_variants, run_fleet
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


def _ready_timeout(amphorae: int, packets: int) -> float:
    """Return how long the fleet generator may take to start sending, in seconds.

    Its child process starts, makes the fleet (about 35 µs an amphora here)
    and builds its packets (50-75 µs each); the margins are for a busy machine.
    """
    return 60.0 + 0.0005 * amphorae + 0.002 * packets


class _Failure(RuntimeError):
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
    """Return the fleet generator's next ``kind`` message; raise :class:`_Failure` if none comes.

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
                    raise _Failure(
                        f"the fleet generator ended (exit status {sender.exitcode})"
                        f" before it was {what}"
                    ) from None
            elif time.monotonic() > deadline:
                raise _Failure(
                    f"the fleet generator was not {what} after {timeout:.0f} s"
                ) from None
            else:
                continue
        if tag == "error":
            raise _Failure(f"the fleet generator failed: {value}")
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
            settings = _Settings(db, self.port, heartbeat_timeout, tick)
            for _ in range(n):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(settings, theirs), daemon=True)
                proc.start()
                self.pipes.append(mine)
                self.procs.append(proc)
            for pipe in self.pipes:
                if not pipe.poll(120) or pipe.recv() != "ready":
                    self.kill()
                    raise _Failure("a manager worker did not start")

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
            raise _Failure("the manager received nothing from the fleet generator in 60 s")
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


def _prepare(db: str, amphorae: int, seed: int) -> None:
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
                _prepare(db, max(plan.sizes), plan.seed)
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
    except _Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    return 0
