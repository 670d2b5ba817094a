"""``manager --workers N``: run N manager processes on one address and supervise them."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from ..manager.supervisor import Supervisor, reserve_port
from ..manager.systemd import Notifier, WatchdogRelay
from ..options import format_address
from .common import serving_metrics

__all__ = ["supervise"]

_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def supervise(
    args: argparse.Namespace, ip: str, port: int, metrics: tuple[str, int] | None = None
) -> int:
    """Run ``args.workers`` copies of this ``manager`` command; return the exit status.

    Prints ``listening on IP:PORT`` once every worker listens, each worker's other
    lines prefixed with its number, and the counters of all as one JSON line at
    the end.  SIGTERM or SIGINT stops every worker after its current tick; SIGHUP
    is passed on to each.  With ``metrics`` (``(host, port)``) the parent serves
    the workers' metrics added up; under systemd it notifies for them all and
    pings the watchdog only while every worker's tick loop does.
    """
    notifier = Notifier()
    with reserve_port(ip, port) as reserved:
        host, bound = reserved.getsockname()[:2]
        argv = [sys.executable, "-m", "amphora_heartbeat", *args.argv]
        argv += ["--workers", "1", "--reuse-port", "--bind", format_address((host, bound))]
        if metrics:
            argv += ["--metrics", "127.0.0.1:0"]  # the parent serves them added up
        urls: dict[int, str] = {}

        def on_line(i: int, line: str, err: bool) -> None:
            if line.startswith("metrics on ") and not err:
                urls[i] = line.rsplit(maxsplit=1)[-1]
            _emit(_mark(i, line), sys.stderr if err else sys.stdout)

        supervisor = Supervisor(argv, args.workers, on_line=on_line)
        with (
            _relaying(notifier, supervisor),
            serving_metrics(metrics, lambda: _workers_collector(urls, supervisor)),
        ):
            total = _run(supervisor, notifier, reserved, f"{host}:{bound}")
    print(json.dumps(total, sort_keys=True), flush=True)
    return 0


# The workers' reader threads and the main thread print lines to the same streams.
_OUTPUT = threading.Lock()


def _emit(line: str, stream: TextIO) -> None:
    """Write ``line`` whole: another thread's line never lands inside it."""
    with _OUTPUT:
        stream.write(line + "\n")
        stream.flush()


def _mark(worker: int, line: str) -> str:
    """Return a worker's line marked with its number (a JSON log line: as a field)."""
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            pass
        else:
            return json.dumps({**record, "worker": worker}, ensure_ascii=False)
    return f"[worker {worker}] {line}"


def _run(
    supervisor: Supervisor, notifier: Notifier, reserved: Any, address: str
) -> dict[str, float]:
    def on_stop(signum: int, frame: object) -> None:
        notifier.stopping()
        supervisor.stop()

    def on_reload(signum: int, frame: object) -> None:
        with notifier.reloading():
            supervisor.signal_all(signal.SIGHUP)

    handlers = {signal.SIGINT: on_stop, signal.SIGTERM: on_stop, signal.SIGHUP: on_reload}
    old = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        if not supervisor.start():
            supervisor.stop()
            supervisor.run()
            raise OSError("the manager workers did not start (see their errors above)")
        # The workers hold the port now; this socket must not take their datagrams.
        reserved.close()
        _emit(f"listening on {address}", sys.stdout)
        notifier.ready(f"{len(supervisor.workers)} workers listening on {address}")
        return supervisor.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        with contextlib.suppress(OSError):
            supervisor.close()


@contextlib.contextmanager
def _relaying(notifier: Notifier, supervisor: Supervisor) -> Iterator[None]:
    """Give the workers a watchdog relay as their systemd, if systemd asked for one."""
    if notifier.watchdog_interval is None:
        supervisor.env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
        yield
        return
    relay = WatchdogRelay(notifier, _pids(supervisor))
    supervisor.env = relay.environ(os.environ)
    relay.start()
    try:
        yield
    finally:
        relay.close()


def _pids(supervisor: Supervisor) -> Callable[[], set[int]]:
    def pids() -> set[int]:
        procs = [w.proc for w in supervisor.workers]
        return {p.pid for p in procs if p is not None and p.poll() is None}

    return pids


def _workers_collector(urls: dict[int, str], supervisor: Supervisor) -> Any:
    """Return a collector adding up the workers' metrics (the optional extra)."""
    from ..manager.metrics import WorkersCollector  # noqa: PLC0415 - an optional extra

    return WorkersCollector(
        urls, lambda: {"workers": len(supervisor.workers), "worker_restarts": supervisor.restarts}
    )
