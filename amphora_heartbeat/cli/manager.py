"""``manager``: run the health manager until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..envelope import KeyRing
from ..getter import UDPStatusGetter
from ..manager import FailoverCommand, HealthManager, TickReport, tune_gc
from ..manager.systemd import Notifier, status_line
from ..options import OptionError, format_address, parse_address, parse_count
from ..store import Store, StoreError
from .common import (
    CommandError,
    add_options,
    address,
    argtype,
    count,
    database,
    load_key,
    open_database,
)
from .logs import LEVELS, configure_logging
from .status import StatusLine, add_status_options
from .workers import supervise

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

_log = logging.getLogger("amphora_heartbeat.cli.manager")

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
        "--sock-rlimit",
        type=argtype(parse_count, "bytes", minimum=0),  # SO_RCVBUF is a C int
        default=0,
        metavar="BYTES",
        help="SO_RCVBUF in bytes; default 0, the system's",
    )
    add_status_options(parser)
    parser.add_argument(
        "--metrics",
        type=address,
        metavar="IP:PORT",
        help="serve Prometheus metrics at http://IP:PORT/metrics (the metrics extra); default none",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines on stderr as text or one JSON object each; default %(default)s",
    )
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default="WARNING",
        help="least severe level logged; default %(default)s",
    )


def _workers(text: str) -> int:
    if text == "auto":
        return os.cpu_count() or 1
    try:
        return parse_count(text, maximum=256)
    except OptionError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or 'auto')") from None


def run(args: argparse.Namespace) -> int:
    """Run the ``manager`` command until SIGINT or SIGTERM; return the exit status.

    Prints ``listening on IP:PORT`` once bound and the store answers (and
    ``metrics on http://IP:PORT/metrics`` with ``--metrics``), and the counters
    as one JSON line at the end (exit status 0).  Under systemd (``$NOTIFY_SOCKET``)
    it notifies readiness, status, the watchdog, reloads (SIGHUP) and stopping.
    A missing key or a bad option is exit status 2; an unreachable store, 1.
    """
    key = load_key(args)
    ip, port = parse_address(args.bind)  # checked by argparse already
    metrics = parse_address(args.metrics) if args.metrics else None
    if metrics:
        _need_metrics_extra()
    configure_logging(args.log_format, args.log_level)
    try:
        if args.workers > 1:
            return supervise(args, ip, port, metrics)
        return _run(args, key, ip, port, metrics)
    except StoreError as exc:
        raise OSError(f"the database is unreachable: {exc}") from None


def _need_metrics_extra() -> None:
    try:
        import prometheus_client  # noqa: F401, PLC0415 - an optional extra
    except ImportError:
        raise CommandError(
            "--metrics needs prometheus_client: pip install 'amphora_heartbeat[metrics]'"
        ) from None


class _Reporting(HealthManager):
    """A manager whose loop also prints the status line (the library prints nothing)."""

    status: StatusLine | None = None
    #: Log the status lines (``--log-format json``: every stderr line is then JSON).
    status_as_log = False

    def step(self, now: float) -> TickReport:
        report = super().step(now)
        if self.status is not None and self.status.due(now):
            for line in self.status.lines(self.counters, now):
                if self.status_as_log:
                    _log.info("%s", line, extra={"event": "status"})
                else:
                    print(line, file=sys.stderr, flush=True)
        return report


def _open(url: str) -> Store:
    store = open_database(url)
    for attempt in range(2):
        try:
            store.create_schema()  # only the tables missing: nothing on an Octavia database
            break
        except StoreError:
            if attempt:
                raise  # another manager creating the schema at the same time wins once
    store.ping()
    return store


def _run(
    args: argparse.Namespace, key: KeyRing, ip: str, port: int, metrics: tuple[str, int] | None
) -> int:
    store = _open(args.db)
    tune_gc()
    try:
        getter = UDPStatusGetter(
            key, ip, port, timeout=0.2, rcvbuf=args.sock_rlimit or None, reuse_port=args.reuse_port
        )
    except OSError as exc:
        store.close()
        raise OSError(f"cannot receive on {args.bind}: {exc}") from None
    failover = FailoverCommand(args.failover_command) if args.failover_command else None
    manager = _Reporting(
        getter,
        store,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        health_check_interval=args.health_check_interval,
        failover_threshold=args.failover_threshold,
        failover=failover,
        failover_threads=args.failover_threads,
        tick=args.tick,
    )
    try:
        with _serving(manager, metrics), _notifying(manager) as notifier:
            host, bound = getter.address
            print(f"listening on {host}:{bound}", flush=True)
            notifier.ready(status_line(manager.counters, manager.clock()))
            manager.status = StatusLine(
                args.status_interval, quiet=args.quiet, start=manager.clock()
            )
            manager.status_as_log = args.log_format == "json"
            manager.run()
    finally:
        manager.close(wait=False)
        getter.close()
        store.close()
    print(json.dumps(dict(manager.counters), sort_keys=True), flush=True)
    return 0


@contextmanager
def _serving(manager: HealthManager, metrics: tuple[str, int] | None) -> Iterator[None]:
    """Serve ``manager``'s metrics over HTTP while in the block, if asked to."""
    if not metrics:
        yield
        return
    from ..manager.metrics import serve_metrics  # noqa: PLC0415 - an optional extra

    host, port = metrics
    try:
        server, _ = serve_metrics(manager, host, port)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc}") from None
    name = server.server_address
    print(f"metrics on http://{format_address(name)}/metrics", flush=True)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _notifying(manager: HealthManager) -> Iterator[Notifier]:
    """Stop on SIGINT/SIGTERM, acknowledge SIGHUP, and keep systemd told (``$NOTIFY_SOCKET``)."""
    notifier = Notifier(status=lambda: status_line(manager.counters, manager.clock()))

    def observer(now: float) -> None:
        notifier.tick(time.monotonic())  # monotonic, whatever the wall clock does

    manager.observers.append(observer)

    def on_stop(signum: int, frame: object) -> None:
        notifier.stopping()
        manager.stop()

    def on_reload(signum: int, frame: object) -> None:
        # Nothing is reloaded yet: systemd still sees RELOADING=1 then READY=1,
        # and a SIGHUP no longer ends the manager.  A reload goes inside the block.
        with notifier.reloading():
            pass

    handlers = {signal.SIGINT: on_stop, signal.SIGTERM: on_stop, signal.SIGHUP: on_reload}
    old = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        yield notifier
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        manager.observers.remove(observer)
