"""``listen``: print every heartbeat and rejection arriving on an address."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence

from ..errors import HeartbeatError
from ..getter import UDPStatusGetter
from ..models import Heartbeat
from ..options import format_address, parse_address
from .common import add_options, load_key, stop_on_signals

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "print every heartbeat and rejection arriving on an address"
DESCRIPTION = (
    "Bind, print 'listening on IP:PORT', then one line per heartbeat and "
    "per rejected datagram.  Stops on SIGINT or SIGTERM (exit 0)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``listen`` command's options to ``parser``."""
    add_options(parser, "bind", "json", "key")


def _summary(heartbeat: Heartbeat) -> str:
    def counted(statuses: Sequence[str]) -> str:
        if not statuses:
            return ""
        return " (" + ", ".join(f"{s} {n}" for s, n in Counter(statuses).most_common()) + ")"

    listeners = [lst.status for lst in heartbeat.listeners.values()]
    pools = [p.status or "-" for p in heartbeat.pools.values()]
    members = [m.raw for p in heartbeat.pools.values() for m in p.members.values()]
    return (
        f"{len(listeners)} listeners{counted(listeners)}, {len(pools)} pools{counted(pools)}, "
        f"{len(members)} members{counted(members)}"
    )


class _ListenGetter(UDPStatusGetter):
    """A getter that prints each rejection instead of logging it."""

    as_json = False

    def handle_rejection(self, error: HeartbeatError, srcaddr: str, *, now: float) -> None:
        if self.as_json:
            line = json.dumps(
                {
                    "event": "rejected",
                    "source": srcaddr,
                    "recv_time": now,
                    "reason": error.reason,
                    "detail": error.message,
                }
            )
        else:
            line = f"rejected from {srcaddr}: {error.reason}: {error.message!r}"
        print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run ``listen`` until SIGINT or SIGTERM; return the exit status."""
    key = load_key(args)
    ip, port = parse_address(args.bind)
    with _ListenGetter(key, ip, port, timeout=0.2) as getter, stop_on_signals() as stopped:
        getter.as_json = args.json
        print(f"listening on {format_address(getter.address)}", flush=True)
        while not stopped():
            try:
                heartbeat, srcaddr = getter.dorecv()
            except (TimeoutError, HeartbeatError):
                continue
            if args.json:
                line = json.dumps(
                    {
                        "event": "heartbeat",
                        "source": srcaddr,
                        "recv_time": heartbeat.recv_time,
                        "amphora_id": heartbeat.amphora_id,
                        "seq": heartbeat.seq,
                        "version": heartbeat.version,
                        "message": heartbeat.to_dict(),
                    }
                )
            else:
                line = (
                    f"heartbeat from {srcaddr}: amphora {heartbeat.amphora_id} "
                    f"seq {heartbeat.seq} ver {heartbeat.version}: {_summary(heartbeat)}"
                )
            print(line, flush=True)
    return 0
