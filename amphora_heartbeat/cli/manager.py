"""``manager``: run the health manager until SIGINT or SIGTERM; SIGHUP reloads.

Settings come from ``--config-file`` (an ``octavia.conf``; repeatable, later
files win) with the flags laid over them: a flag given always wins, an option
neither gives has Octavia's default (:class:`~amphora_heartbeat.manager.ManagerConfig`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..getter import UDPStatusGetter
from ..manager import (
    FailoverCommand,
    HealthManager,
    ManagerConfig,
    Reloader,
    TickReport,
    load_config,
    tune_gc,
)
from ..manager.peers import PeerBoard
from ..manager.systemd import Notifier, status_line
from ..options import OptionError, format_address, parse_address, parse_count
from ..store import Store, StoreError
from .common import (
    KEY_ENV,
    CommandError,
    add_options,
    address,
    argtype,
    count,
    database,
    load_key,
    open_database,
    seconds,
    serving_metrics,
)
from .logs import LEVELS, configure_logging
from .status import StatusLine, add_status_options
from .workers import supervise

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "build_config", "run"]

_log = logging.getLogger("amphora_heartbeat.cli.manager")

HELP = "run the health manager"
DESCRIPTION = (
    "Receive heartbeats, write them to the database in batches, fail over stale amphorae. "
    "Reads octavia.conf with --config-file; flags win over the files; SIGHUP re-reads them."
)

# Flags whose value, when not given, comes from the files or Octavia's default:
# argparse must leave them None to tell "not given" from "given the default".
_FROM_FILES = (
    "bind",
    "heartbeat_timeout",
    "heartbeat_interval",
    "health_check_interval",
    "failover_threads",
    "failover_timeout",
    "sock_rlimit",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``manager`` command's options to ``parser``."""
    parser.add_argument(
        "--config-file",
        action="append",
        default=[],
        metavar="PATH",
        help="an octavia.conf to read ([health_manager], [database] connection, "
        "[amphora_heartbeat]); repeat for several, later files win; default none",
    )
    add_options(parser, "key")
    parser.add_argument(
        "--db",
        type=database,
        metavar="URL",
        help="database URL as octavia.conf's [database] connection writes it:"
        " mysql+pymysql://USER:PASS@HOST/DB, postgresql://USER@HOST:PORT/DB or sqlite:///PATH;"
        " default: [database] connection",
    )
    add_options(parser, "bind")
    parser.add_argument(
        "--failover-command",
        metavar="CMD",
        help="run CMD for each stale amphora, {amphora_id} and {load_balancer_id} filled in "
        "(no placeholder: the id appended); exit 0: done, else retried a heartbeat timeout later; "
        "default none (failover only logged)",
    )
    parser.add_argument(
        "--failover-timeout",
        type=seconds,
        default=300.0,
        metavar="S",
        help="kill a failover command still running after S seconds (a failure); a claim"
        " older than the heartbeat timeout + S is taken over; default %(default)s",
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
    _defaults_from_files(parser)


def _defaults_from_files(parser: argparse.ArgumentParser) -> None:
    """Make the defaults of :data:`_FROM_FILES` None, keeping the value their help shows."""
    for action in parser._actions:
        if action.dest in _FROM_FILES:
            if action.help:
                action.help = action.help.replace("%(default)s", str(action.default))
            action.default = None


def _flag_key(args: argparse.Namespace) -> object:
    """Return the key from --key, --key-file or the environment, or None if none gives one."""
    if not args.key and args.key_file is None and os.environ.get(KEY_ENV) is None:
        return None
    try:
        return load_key(args)
    except CommandError as exc:
        raise OptionError(str(exc)) from None


def build_config(args: argparse.Namespace) -> ManagerConfig:
    """Return the configuration the files of ``--config-file`` and the flags give.

    A key from ``--key``, ``--key-file`` or ``$AMPHORA_HEARTBEAT_KEY`` wins over
    ``[health_manager] heartbeat_key``; ``--db`` over ``[database] connection``.

    :raises OptionError: a file or a value is bad, or no key or database is given.
    """
    overrides = {
        "heartbeat_key": _flag_key(args),
        "connection": args.db,
        "failover_command": args.failover_command,
        "failover_timeout": args.failover_timeout,
        "heartbeat_interval": args.heartbeat_interval,
        "heartbeat_timeout": args.heartbeat_timeout,
        "health_check_interval": args.health_check_interval,
        "failover_threshold": args.failover_threshold,
        "failover_threads": args.failover_threads,
        "sock_rlimit": args.sock_rlimit,
    }
    if args.bind is not None:
        try:
            overrides["bind_ip"], overrides["bind_port"] = parse_address(args.bind)
        except ValueError as exc:
            raise OptionError(f"--bind: {exc}") from None
    config = load_config(args.config_file, overrides)
    if config.heartbeat_key is None:
        raise OptionError(
            f"no key: a key is needed: --key-file F, ${KEY_ENV}, --key K,"
            " or [health_manager] heartbeat_key in a --config-file"
        )
    if config.connection is None:
        raise OptionError("no database: --db URL, or [database] connection in a --config-file")
    return config


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
    it notifies readiness, status, the watchdog, reloads and stopping.  SIGHUP re-reads the
    configuration (:class:`~amphora_heartbeat.manager.Reloader`).  A missing key
    or database, or a bad option or file, is exit status 2; an unreachable
    store, 1.
    """
    try:
        config = build_config(args)
        failover = _failover(config)
    except (OptionError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    metrics = parse_address(args.metrics) if args.metrics else None
    if metrics:
        _need_metrics_extra()
    configure_logging(args.log_format, args.log_level)
    if args.workers > 1:
        return supervise(args, config.bind_ip, config.bind_port, metrics)
    try:
        return _run(args, config, failover, metrics)
    except StoreError as exc:
        raise OSError(f"the database is unreachable: {exc}") from None


def _need_metrics_extra() -> None:
    try:
        import prometheus_client  # noqa: F401, PLC0415 - an optional extra
    except ImportError:
        raise CommandError(
            "--metrics needs prometheus_client: pip install 'amphora_heartbeat[metrics]'"
        ) from None


def _failover(config: ManagerConfig) -> FailoverCommand | None:
    if config.failover_command is None:
        return None
    try:
        return FailoverCommand(config.failover_command, timeout=config.failover_timeout)
    except ValueError as exc:
        raise ValueError(f"--failover-command: {exc}") from None


class _Reporting(HealthManager):
    """A manager whose loop also prints the status line (the library prints nothing)."""

    status: StatusLine | None = None
    #: Log the status lines (``--log-format json``: every stderr line is then JSON).
    status_as_log = False

    def step(self, now: float) -> TickReport:
        """Do one tick, then print (or log) the status line when it is due."""
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
            store.create_schema()  # only the tables missing: on Octavia's, our own
            break
        except StoreError:
            if attempt:
                raise  # another manager creating the schema at the same time wins once
    store.ping()
    return store


def _run(
    args: argparse.Namespace,
    config: ManagerConfig,
    failover: FailoverCommand | None,
    metrics: tuple[str, int] | None,
) -> int:
    key, url = config.heartbeat_key, config.connection
    if key is None or url is None:  # pragma: no cover - build_config refuses both
        raise CommandError("no key or no database")
    store = _open(url)
    tune_gc()
    try:
        getter = UDPStatusGetter(
            key,
            config.bind_ip,
            config.bind_port,
            timeout=0.2,
            rcvbuf=config.sock_rlimit or None,
            reuse_port=args.reuse_port,
        )
    except OSError as exc:
        store.close()
        address = format_address((config.bind_ip, config.bind_port))
        raise OSError(f"cannot receive on {address}: {exc}") from None
    manager = _Reporting(
        getter,
        store,
        heartbeat_interval=config.heartbeat_interval,
        heartbeat_timeout=config.heartbeat_timeout,
        health_check_interval=config.health_check_interval,
        failover_threshold=config.failover_threshold,
        failover=failover,
        failover_threads=config.failover_threads,
        failover_timeout=config.failover_timeout,
        tick=args.tick,
        check_source=args.check_source,
        peers=PeerBoard.from_environ(os.environ),
    )
    reloader = Reloader(lambda: build_config(args), config, manager, getter)
    try:
        with (
            serving_metrics(metrics, lambda: _manager_collector(manager)),
            _notifying(manager, reloader.request) as notifier,
        ):
            host, bound = getter.address
            print(f"listening on {host}:{bound}", flush=True)
            notifier.ready(status_line(manager.counters, manager.clock()))
            manager.status = StatusLine(
                args.status_interval, quiet=args.quiet, start=manager.clock()
            )
            manager.status_as_log = args.log_format == "json"
            manager.run(every_tick=_reloading(reloader, notifier))
    finally:
        manager.close(wait=False)
        getter.close()
        store.close()
    print(json.dumps(dict(manager.counters), sort_keys=True), flush=True)
    return 0


def _reloading(reloader: Reloader, notifier: Notifier) -> Callable[[float], None]:
    """Return the loop's per-tick call: a reload asked for runs between RELOADING and READY."""

    def every_tick(now: float) -> None:
        if reloader.requested:
            with notifier.reloading():
                reloader.poll(now)
        else:
            reloader.poll(now)

    return every_tick


def _manager_collector(manager: HealthManager) -> Any:
    from ..manager.metrics import ManagerCollector  # noqa: PLC0415 - an optional extra

    return ManagerCollector(manager)


@contextmanager
def _notifying(manager: HealthManager, on_hup: Callable[[], None]) -> Iterator[Notifier]:
    """Stop on SIGINT/SIGTERM, pass SIGHUP to ``on_hup``, keep systemd told (``$NOTIFY_SOCKET``).

    ``on_hup`` must only ask for a reload (a flag, the wake pipe): it runs in a
    signal handler, and the reload itself in the manager's loop.
    """
    notifier = Notifier(status=lambda: status_line(manager.counters, manager.clock()))

    def observer(now: float) -> None:
        notifier.tick(time.monotonic())  # monotonic, whatever the wall clock does

    manager.observers.append(observer)

    def on_stop(signum: int, frame: object) -> None:
        notifier.stopping()
        manager.stop()

    def on_reload(signum: int, frame: object) -> None:
        on_hup()

    handlers = {signal.SIGINT: on_stop, signal.SIGTERM: on_stop, signal.SIGHUP: on_reload}
    old = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        yield notifier
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        manager.observers.remove(observer)
