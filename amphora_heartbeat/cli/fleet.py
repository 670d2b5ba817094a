"""``fleet``: a simulated fleet sending heartbeats (:func:`~amphora_heartbeat.fleet.run_fleet`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..envelope import Codec, Digest
from ..fleet import (
    DEFAULT_INTERVAL,
    DEFAULT_VARIANTS,
    FRESH_MAX_RATE,
    PREBUILD_BUDGET,
    FleetProgress,
    FleetSummary,
    run_fleet,
)
from ..options import OptionError, parse_count, parse_seconds
from .common import (
    add_options,
    addresses,
    argtype,
    count,
    fraction,
    load_key,
    seconds,
    stop_on_signals,
)

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "simulate a fleet of amphorae sending heartbeats"
DESCRIPTION = (
    "Simulate a fleet of amphorae sending heartbeats: a load generator for any controller."
)


def _parse_rate(text: str) -> float:
    if text.lower() in ("max", "inf"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise OptionError(f"expected packets per second above 0, or 'max', got {text!r}")
    return value


_rate = argtype(_parse_rate, "rate")
_size = argtype(parse_count, "count", minimum=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fleet`` command's options to ``parser``."""
    parser.add_argument(
        "--to",
        type=addresses,
        required=True,
        metavar="IP:PORT[,IP:PORT...]",
        help="controllers to send to; each amphora round-robins over them",
    )
    add_options(parser, "key")
    parser.add_argument(
        "--amphorae", type=count, required=True, metavar="N", help="simulated amphorae"
    )
    for flag, default, what in (
        ("--listeners", 2, "listeners per amphora"),
        ("--pools", 2, "pools per amphora, spread over its listeners"),
        ("--members", 4, "members per pool"),
    ):
        _add(parser, flag, _size, default, what, metavar=flag[2].upper())
    _add_pace(parser)
    _add_packets(parser)
    _add(parser, "--silent", fraction, 0.0, "share of amphorae that fall silent")
    parser.add_argument(
        "--silent-after",
        type=argtype(parse_seconds, "seconds", zero=True),
        metavar="S",
        help="seconds before they fall silent; default after one round",
    )
    _add(parser, "--flapping", fraction, 0.1, "share of amphorae with one member flapping")
    _add(parser, "--seed", int, 0, "seed of the ids, flappers and silent", metavar="SEED")
    _add(parser, "--progress-interval", seconds, 1.0, "seconds between progress lines on stderr")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add(
    parser: argparse.ArgumentParser,
    flag: str,
    kind: Callable[[str], Any],
    default: Any,
    what: str,
    **more: Any,
) -> None:
    """Add an option whose help is ``what`` and its default."""
    metavar = {seconds: "S", fraction: "FRACTION", count: "N"}.get(kind)
    more.setdefault("metavar", metavar)
    parser.add_argument(
        flag, type=kind, default=default, help=f"{what}; default %(default)s", **more
    )


def _add_pace(parser: argparse.ArgumentParser) -> None:
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--interval",
        type=seconds,
        metavar="S",
        help=f"seconds between heartbeats of one amphora; default {DEFAULT_INTERVAL:g}",
    )
    pace.add_argument(
        "--rate", type=_rate, metavar="R", help="total packets per second, or 'max'; default none"
    )
    parser.add_argument(
        "--duration", type=seconds, metavar="S", help="seconds to run; default until stopped"
    )
    parser.add_argument(
        "--count", type=count, metavar="N", help="packets to send in all; default no limit"
    )


def _add_packets(parser: argparse.ArgumentParser) -> None:
    codecs, digests = [c.value for c in Codec], [d.value for d in Digest]
    _add(parser, "--codec", str, "zlib", "compression", choices=codecs, metavar=None)
    _add(parser, "--digest", str, "hex", "HMAC trailer form", choices=digests, metavar=None)
    _add(parser, "--message-version", int, 3, "message version 0-3", choices=range(4))
    build = parser.add_mutually_exclusive_group()
    build.add_argument(
        "--prebuilt",
        dest="prebuilt",
        action="store_true",
        default=None,
        help=f"pre-build packets; default above {FRESH_MAX_RATE:,.0f} packets/s",
    )
    build.add_argument(
        "--fresh", dest="prebuilt", action="store_false", help="build each packet at send time"
    )
    parser.add_argument(
        "--variants",
        type=count,
        metavar="N",
        help=f"pre-built packets per amphora; default at most {DEFAULT_VARIANTS}, at most"
        f" {PREBUILD_BUDGET:,} in all, and no more than the run sends",
    )


def _per_second(rate: float) -> str:
    """Return a rate for people: one decimal below 10/s (a slow fleet is not '0/s')."""
    return f"{rate:.1f}/s" if rate < 10 else f"{rate:,.0f}/s"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def run(args: argparse.Namespace) -> int:
    """Run the ``fleet`` command; return the exit status (1 when no packet went out)."""
    key = load_key(args)
    stop = threading.Event()
    tty = sys.stderr.isatty()
    if args.duration is None and args.count is None:
        sys.stderr.write(
            f"sending from {_plural(args.amphorae, 'amphora', 'amphorae')} to {args.to} "
            "until stopped (Ctrl-C or SIGTERM; --duration or --count to bound it)\n"
        )

    def on_progress(p: FleetProgress) -> None:
        line = (
            f"sent {p.sent}  rate {_per_second(p.rate)}  send errors {p.send_errors}  "
            f"elapsed {p.elapsed:.1f} s"
        )
        sys.stderr.write(("\r" + line + "\x1b[K") if tty else line + "\n")
        sys.stderr.flush()

    shape = ("amphorae", "listeners", "pools", "members", "interval", "rate", "duration")
    more = ("count", "message_version", "silent", "silent_after", "flapping", "seed")
    options = {name: getattr(args, name) for name in (*shape, *more, "prebuilt", "variants")}
    with stop_on_signals(stop.set):
        summary = run_fleet(
            args.to.split(","),
            key,
            codec=Codec(args.codec),
            digest=Digest(args.digest),
            progress=on_progress,
            progress_interval=args.progress_interval,
            stop=stop,
            **options,
        )
    if tty:
        sys.stderr.write("\n")
    _report(summary, as_json=args.json)
    if summary.sent and summary.send_errors == summary.sent:
        raise OSError(f"no heartbeat could be sent to {args.to}: {summary.send_error}")
    return 0


def _report(summary: FleetSummary, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.to_dict()), flush=True)
        return
    mode = f"pre-built x{summary.variants}" if summary.prebuilt else "fresh"
    errors = f"send errors {summary.send_errors}"
    if summary.send_errors:
        errors += f" (last: {summary.send_error})"
    print(
        f"sent {_plural(summary.sent, 'heartbeat', 'heartbeats')} from "
        f"{_plural(summary.amphorae, 'amphora', 'amphorae')} in {summary.elapsed:.2f} s "
        f"({_per_second(summary.rate)}, {mode}); {errors}; "
        f"silent {len(summary.silent_ids)}; per target {list(summary.per_target)}",
        flush=True,
    )
