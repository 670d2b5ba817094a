"""Running the receive-path benchmark and reporting it: targets, tables, JSON, the command."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from ..envelope import Codec, Digest
from . import manager as manager_bench
from .common import Result, machine_facts
from .receive import (
    AMPHORAE,
    Packets,
    SocketSettings,
    measure_memory,
    memory_cases,
    profile,
    rings,
    run_rounds,
    socket_cases,
)

__all__ = ["TARGETS", "Target", "main"]


@attrs.frozen
class Target:
    """One of the issue's targets: a ratio of two measured rates and its bound."""

    name: str
    numerator: str
    denominator: str
    minimum: float
    #: How the bound reads, e.g. ">= 0.8x".
    wording: str

    def evaluate(self, results: dict[str, Result]) -> dict[str, Any]:
        """Return the ratios of medians (wall clock, CPU time) and whether each meets the bound."""
        out: dict[str, Any] = {"target": self.name, "wording": self.wording}
        num = results.get(self.numerator)
        den = results.get(self.denominator)
        for kind in ("wall", "cpu"):
            a = b = 0.0
            if num is not None and den is not None:
                a, b = (
                    (num.median, den.median) if kind == "wall" else (num.cpu_median, den.cpu_median)
                )
            ratio = round(a / b, 3) if a and b else None
            out[f"{kind}_ratio"] = ratio
            out[f"{kind}_met"] = None if ratio is None else ratio >= self.minimum
        return out


TARGETS = (
    Target("parse / baseline unwrap, hex/zlib", "parse.hex.zlib", "baseline.hex", 0.8, ">= 0.8x"),
    Target("parse / baseline unwrap, raw/zlib", "parse.raw.zlib", "baseline.raw", 1.3, ">= 1.3x"),
    Target("check() vs floor behind recvfrom", "check.max.zlib", "floor.udp", 0.75, ">= 0.75x"),
    Target("zstd vs zlib end to end (check)", "check.max.zstd", "check.max.zlib", 1.0, "> 1x"),
    Target("zstd vs zlib, unwrap+from_dict", "parse.hex.zstd", "parse.hex.zlib", 1.0, "> 1x"),
    # derive <= 25% of the time of unwrap+from_dict: its rate at least 4x theirs.
    Target("derive time <= 25% of unwrap+from_dict", "derive", "parse.hex.zlib", 4.0, ">= 4x rate"),
)  # fmt: skip


def _format_table(results: dict[str, Result]) -> str:
    head = f"{'case':<19} {'median/s':>9} {'min/s':>9} {'max/s':>9} {'spread':>6} {'cpu/s':>9}"
    lines = [head + "  what"]
    for r in results.values():
        if not r.rates:
            lines.append(
                f"{r.name:<19} {'-':>9} {'-':>9} {'-':>9} {'-':>6} {'-':>9}  {r.description}"
            )
            continue
        lines.append(
            f"{r.name:<19} {r.median:>9,.0f} {min(r.rates):>9,.0f} {max(r.rates):>9,.0f} "
            f"{r.spread:>6.0%} {r.cpu_median:>9,.0f}  {r.description}"
        )
    return "\n".join(lines)


def _format_targets(evaluated: Iterable[dict[str, Any]]) -> str:
    lines = [f"  {'target':<42} {'wall':>14} {'cpu':>14}  bound"]
    for t in evaluated:
        cells = []
        for kind in ("wall", "cpu"):
            ratio = t[f"{kind}_ratio"]
            if ratio is None:
                cells.append(f"{'-':>14}")
            else:
                cells.append(f"{ratio:>6.2f}x {'met' if t[f'{kind}_met'] else 'MISSED':>6}")
        lines.append(f"  {t['target']:<42} {cells[0]} {cells[1]}  {t['wording']}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amphora_heartbeat.bench",
        description="Benchmark the heartbeat receive path on this machine.",
        epilog="'python -m amphora_heartbeat.bench manager --help' benchmarks the health manager.",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts: finishes in well under a minute"
    )
    parser.add_argument(
        "--rounds", type=int, help="interleaved repetitions (default 5; 3 with --quick)"
    )
    parser.add_argument(
        "--rate", type=float, default=20_000.0, help="paced sender rate for check.paced, packets/s"
    )
    parser.add_argument(
        "--memory-packets",
        type=int,
        help="packets for the memory check (default 1,000,000; 100,000 with --quick)",
    )
    parser.add_argument(
        "--no-sockets", action="store_true", help="skip the cases that need loopback sockets"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile report of unwrap + from_dict"
    )
    parser.add_argument(
        "--amphorae",
        type=int,
        default=AMPHORAE,
        help=f"simulated amphorae, one standard packet each (default {AMPHORAE:,})",
    )
    parser.add_argument(
        "--passes", type=int, help="passes over the packets per in-memory run (20; 4 with --quick)"
    )
    parser.add_argument(
        "--socket-seconds",
        type=float,
        help="seconds the full-speed sender sends per socket run (3; 0.6 with --quick)",
    )
    parser.add_argument(
        "--paced-seconds", type=float, help="seconds of the paced socket run (5; 1 with --quick)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or ``manager ...``: the health manager's); return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "manager":
        return _manager(args_list[1:])
    args = _parser().parse_args(args_list)
    rounds = args.rounds or (3 if args.quick else 5)
    if rounds < 3:
        _parser().error("--rounds must be at least 3 (medians of fewer runs mean little here)")
    passes = args.passes or (4 if args.quick else 20)
    memory_packets = args.memory_packets or (100_000 if args.quick else 1_000_000)
    settings = SocketSettings(
        max_seconds=args.socket_seconds or (0.6 if args.quick else 3.0),
        paced_rate=args.rate,
        paced_seconds=args.paced_seconds or (1.0 if args.quick else 5.0),
    )

    def say(text: str) -> None:
        if not args.json:
            print(f"  .. {text}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    say("building packets")
    packets = Packets.make(args.amphorae)
    cases = memory_cases(packets, passes)
    senders: dict[str, list[dict[str, Any]]] = {}
    if not args.no_sockets:
        variants = 2 if args.quick else 4
        built = {codec: rings(packets.fleet, codec, variants) for codec in (Codec.ZLIB, Codec.ZSTD)}
        on_sockets, senders = socket_cases(packets, built, settings)
        cases += on_sockets
    results = run_rounds(cases, rounds, progress=say)
    say(f"memory: {memory_packets:,} packets")
    memory = measure_memory(packets, memory_packets)
    evaluated = [t.evaluate(results) for t in TARGETS]
    report: dict[str, Any] = {
        "machine": machine_facts(),
        "settings": {
            "quick": args.quick,
            "rounds": rounds,
            "amphorae": args.amphorae,
            "packet": "2 listeners, 2 pools, 4 members; version 3",
            "packet_bytes": len(packets.by_encoding[Codec.ZLIB, Digest.HEX][0]),
            "in_memory_ops_per_run": passes * args.amphorae,
            **attrs.asdict(settings),
        },
        "results": {name: r.to_dict() for name, r in results.items()},
        "senders": senders,
        "targets": evaluated,
        "memory": memory,
        "octavia": _octavia_note(),
    }
    if args.profile:
        report["profile"] = profile(packets, 20_000 if args.quick else 100_000)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report, results, evaluated)
    return 0


def _octavia_note() -> str:
    if importlib.util.find_spec("octavia") is None:
        return "Octavia is not installed here: its own check() loop was not measured."
    return "Octavia is installed, but measuring its check() loop is not implemented yet."


def _print_report(
    report: dict[str, Any], results: dict[str, Result], evaluated: list[dict[str, Any]]
) -> None:
    m = report["machine"]
    s = report["settings"]
    print(
        f"amphora_heartbeat {m['amphora_heartbeat']} bench: {m['nproc']} CPUs ({m['cpu']}), "
        f"Python {m['python']}, load average {m['loadavg']}"
    )
    print(
        f"{s['rounds']} interleaved rounds; {s['amphorae']} amphorae, standard packet "
        f"({s['packet_bytes']} bytes hex/zlib); "
        f"{s['in_memory_ops_per_run']:,} packets per in-memory run"
    )
    print()
    print(_format_table(results))
    print()
    for name, runs in report["senders"].items():
        parts = []
        for run in runs:
            if "sent" not in run:
                parts.append("?")
                continue
            text = f"{run['rate']:,.0f}/s"
            if "lost" in run:
                text += f" lost {run['lost']}"
            parts.append(text)
        print(f"sender {name:<16} {'; '.join(parts)}")
    mem = report["memory"]
    print(
        f"memory: {mem['packets']:,} packets through {mem['path']}: RSS "
        f"{mem['rss_before_bytes'] / 2**20:.1f} -> {mem['rss_after_bytes'] / 2**20:.1f} MiB "
        f"({mem['growth_bytes_per_packet']:.3f} bytes/packet) at {mem['rate_per_s']:,.0f}/s"
    )
    print(report["octavia"])
    print()
    print("targets (ratios of medians):")
    print(_format_targets(evaluated))
    if "profile" in report:
        print()
        print(report["profile"])
    print(f"took {report['seconds']} s")  # fmt: skip


def _manager(argv: list[str]) -> int:
    return manager_bench.main(argv)
