"""``fleet``: a simulated fleet sending heartbeats (:func:`~amphora_heartbeat.fleet.run_fleet`)."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading

from ..envelope import Codec, Digest
from ..fleet import DEFAULT_INTERVAL, DEFAULT_VARIANTS, FleetProgress, run_fleet
from .common import add_options, load_key

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "simulate a fleet of amphorae sending heartbeats"
DESCRIPTION = (
    "Simulate a fleet of amphorae sending heartbeats: a load generator for any controller."
)


def _rate(text: str) -> float:
    if text.lower() in ("max", "inf"):
        return math.inf
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("rate must be positive (or 'max')")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("expected a fraction between 0 and 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fleet`` command's options to ``parser``."""
    parser.add_argument(
        "--to",
        required=True,
        metavar="IP:PORT[,IP:PORT...]",
        help="controllers to send to; each amphora round-robins over them",
    )
    add_options(parser, "key")
    parser.add_argument("--amphorae", type=int, required=True, metavar="N")
    parser.add_argument("--listeners", type=int, default=2, metavar="L")
    parser.add_argument("--pools", type=int, default=2, metavar="P")
    parser.add_argument("--members", type=int, default=4, metavar="M", help="members per pool")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--interval",
        type=float,
        metavar="S",
        help=f"seconds between heartbeats of one amphora (default {DEFAULT_INTERVAL:g})",
    )
    pace.add_argument("--rate", type=_rate, metavar="R", help="total packets per second, or 'max'")
    parser.add_argument("--duration", type=float, metavar="S", help="seconds to run")
    parser.add_argument("--count", type=int, metavar="N", help="packets to send in all")
    parser.add_argument("--codec", choices=[c.value for c in Codec], default="zlib")
    parser.add_argument("--digest", choices=[d.value for d in Digest], default="hex")
    parser.add_argument("--message-version", type=int, choices=range(4), default=3)
    parser.add_argument(
        "--silent", type=_fraction, default=0.0, metavar="FRACTION", help="share that goes silent"
    )
    parser.add_argument(
        "--silent-after",
        type=float,
        metavar="S",
        help="seconds before they go silent (default: after one round)",
    )
    parser.add_argument(
        "--flapping", type=_fraction, default=0.1, metavar="FRACTION", help="share with a flapper"
    )
    parser.add_argument("--seed", type=int, default=0)
    build = parser.add_mutually_exclusive_group()
    build.add_argument(
        "--prebuilt", dest="prebuilt", action="store_true", default=None, help="pre-build packets"
    )
    build.add_argument(
        "--fresh", dest="prebuilt", action="store_false", help="build each packet at send time"
    )
    parser.add_argument("--variants", type=int, default=DEFAULT_VARIANTS, metavar="N")
    parser.add_argument("--progress-interval", type=float, default=1.0, metavar="S")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    """Run the ``fleet`` command; return the exit status."""
    key = load_key(args)
    stop = threading.Event()
    tty = sys.stderr.isatty()

    def on_progress(p: FleetProgress) -> None:
        line = (
            f"sent {p.sent}  rate {p.rate:,.0f}/s  send errors {p.send_errors}  "
            f"elapsed {p.elapsed:.1f} s"
        )
        sys.stderr.write(("\r" + line + "\x1b[K") if tty else line + "\n")
        sys.stderr.flush()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run_fleet(
            args.to.split(","),
            key,
            amphorae=args.amphorae,
            listeners=args.listeners,
            pools=args.pools,
            members=args.members,
            interval=args.interval,
            rate=args.rate,
            duration=args.duration,
            count=args.count,
            codec=Codec(args.codec),
            digest=Digest(args.digest),
            message_version=args.message_version,
            silent=args.silent,
            silent_after=args.silent_after,
            flapping=args.flapping,
            seed=args.seed,
            prebuilt=args.prebuilt,
            variants=args.variants,
            progress=on_progress,
            progress_interval=args.progress_interval,
            stop=stop,
        )
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if tty:
        sys.stderr.write("\n")
    if args.json:
        print(json.dumps(summary.to_dict()), flush=True)
    else:
        mode = f"pre-built x{summary.variants}" if summary.prebuilt else "fresh"
        print(
            f"sent {summary.sent} heartbeats from {summary.amphorae} amphorae in "
            f"{summary.elapsed:.2f} s ({summary.rate:,.0f}/s, {mode}); "
            f"send errors {summary.send_errors}; silent {len(summary.silent_ids)}; "
            f"per target {list(summary.per_target)}",
            flush=True,
        )
    return 0
