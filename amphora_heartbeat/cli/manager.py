"""``manager``: run the health manager until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from ..envelope import KeyRing
from ..getter import UDPStatusGetter
from ..manager import FailoverCommand, HealthManager, TickReport, tune_gc
from ..options import OptionError, parse_address, parse_count
from ..store import Store, StoreError
from .common import add_options, argtype, count, database, load_key, open_database, seconds
from .status import StatusLine, add_status_options
from .workers import supervise

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "run the health manager"
DESCRIPTION = "Receive heartbeats, write them to the database in batches, fail over stale amphorae."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``manager`` command's options to ``parser``."""
    add_options(parser, "key")
    parser.add_argument(
        "--db",
        type=database,
        required=True,
        metavar="URL",
        help="database URL as octavia.conf's [database] connection writes it:"
        " mysql+pymysql://USER:PASS@HOST/DB, postgresql://USER@HOST:PORT/DB or sqlite:///PATH",
    )
    add_options(parser, "bind")
    parser.add_argument(
        "--failover-command",
        metavar="CMD",
        help="run CMD AMPHORA_ID for each stale amphora (exit 0: done; else retried); "
        "default none (failover only logged)",
    )
    parser.add_argument(
        "--failover-timeout",
        type=seconds,
        default=600.0,
        metavar="S",
        help="kill a failover command after S seconds; a claim older than"
        " heartbeat timeout + S is taken over; default %(default)s",
    )
    add_options(parser, "heartbeat-timeout", "heartbeat-interval", "health-check-interval", "tick")
    parser.add_argument(
        "--failover-threshold",
        type=count,
        metavar="N",
        help="fail none over when N amphorae are stale at once (storm guard); default none",
    )
    parser.add_argument(
        "--failover-threads",
        type=count,
        default=10,
        metavar="N",
        help="most failovers at once; default %(default)s",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="manager processes sharing the address (SO_REUSEPORT), or 'auto' for one per"
        " core; default %(default)s",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT (what each of several --workers does); default off",
    )
    parser.add_argument(
        "--check-source",
        action="store_true",
        help="ignore heartbeats not sent from their amphora's lb_network_ip; default off"
        " (on is recommended)",
    )
    parser.add_argument(
        "--sock-rlimit",
        type=argtype(parse_count, "bytes", minimum=0),  # SO_RCVBUF is a C int
        default=0,
        metavar="BYTES",
        help="SO_RCVBUF in bytes; default 0, the system's",
    )
    add_status_options(parser)


def _workers(text: str) -> int:
    if text == "auto":
        return os.cpu_count() or 1
    try:
        return parse_count(text, maximum=256)
    except OptionError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or 'auto')") from None


def run(args: argparse.Namespace) -> int:
    """Run the ``manager`` command until SIGINT or SIGTERM; return the exit status.

    Prints ``listening on IP:PORT`` once bound and the store answers, and the
    counters as one JSON line at the end (exit status 0).  A missing key or a
    bad option is exit status 2; an unreachable store, 1.
    """
    key = load_key(args)
    ip, port = parse_address(args.bind)  # checked by argparse already
    if args.workers > 1:
        return supervise(args, ip, port)
    try:
        return _run(args, key, ip, port)
    except StoreError as exc:
        raise OSError(f"the database is unreachable: {exc}") from None
    except OSError as exc:
        raise OSError(f"cannot receive on {args.bind}: {exc}") from None


class _Reporting(HealthManager):
    """A manager whose loop also prints the status line (the library prints nothing)."""

    status: StatusLine | None = None

    def step(self, now: float) -> TickReport:
        report = super().step(now)
        if self.status is not None and self.status.due(now):
            for line in self.status.lines(self.counters, now):
                print(line, file=sys.stderr, flush=True)
        return report


def _open(url: str) -> Store:
    store = open_database(url)
    for attempt in range(2):
        try:
            store.create_schema()  # only the tables missing: on Octavia's, our own
            break
        except StoreError:
            if attempt:
                raise  # another manager creating the schema at the same time wins once
    store.ping()
    return store


def _run(args: argparse.Namespace, key: KeyRing, ip: str, port: int) -> int:
    store = _open(args.db)
    tune_gc()
    getter = UDPStatusGetter(
        key, ip, port, timeout=0.2, rcvbuf=args.sock_rlimit or None, reuse_port=args.reuse_port
    )
    failover = (
        FailoverCommand(args.failover_command, timeout=args.failover_timeout)
        if args.failover_command
        else None
    )
    manager = _Reporting(
        getter,
        store,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        health_check_interval=args.health_check_interval,
        failover_threshold=args.failover_threshold,
        failover=failover,
        failover_threads=args.failover_threads,
        failover_timeout=args.failover_timeout,
        tick=args.tick,
        check_source=args.check_source,
    )

    def on_signal(signum: int, frame: object) -> None:
        manager.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    host, bound = getter.address
    print(f"listening on {host}:{bound}", flush=True)
    manager.status = StatusLine(args.status_interval, quiet=args.quiet, start=manager.clock())
    try:
        manager.run()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        manager.close(wait=False)
        getter.close()
        store.close()
    print(json.dumps(dict(manager.counters), sort_keys=True), flush=True)
    return 0
