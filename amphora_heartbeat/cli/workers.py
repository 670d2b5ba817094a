"""``manager --workers N``: run N manager processes on one address and supervise them."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys

from ..manager.supervisor import Supervisor, reserve_port
from ..options import format_address

__all__ = ["supervise"]


def supervise(args: argparse.Namespace, ip: str, port: int) -> int:
    """Run ``args.workers`` copies of this ``manager`` command; return the exit status.

    Prints ``listening on IP:PORT`` once every worker listens, each worker's other
    lines prefixed with its number, and the counters of all as one JSON line at
    the end.  SIGTERM or SIGINT stops every worker after its current tick; SIGHUP
    is passed on to each.
    """
    with reserve_port(ip, port) as reserved:
        host, bound = reserved.getsockname()[:2]
        argv = [sys.executable, "-m", "amphora_heartbeat", *args.argv]
        argv += ["--workers", "1", "--reuse-port", "--bind", format_address((host, bound))]
        supervisor = Supervisor(
            argv,
            args.workers,
            on_line=lambda i, line, err: print(
                f"[worker {i}] {line}", file=sys.stderr if err else sys.stdout, flush=True
            ),
        )
        handlers = {
            signal.SIGINT: lambda s, f: supervisor.stop(),
            signal.SIGTERM: lambda s, f: supervisor.stop(),
            signal.SIGHUP: lambda s, f: supervisor.signal_all(signal.SIGHUP),
        }
        old = {s: signal.signal(s, h) for s, h in handlers.items()}
        try:
            if not supervisor.start():
                supervisor.stop()
                supervisor.run()
                raise OSError("the manager workers did not start (see their errors above)")
            # The workers hold the port now; this socket must not take their datagrams.
            reserved.close()
            print(f"listening on {host}:{bound}", flush=True)
            total = supervisor.run()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            with contextlib.suppress(OSError):
                supervisor.close()
    print(json.dumps(total, sort_keys=True), flush=True)
    return 0
