"""``listen``: print every heartbeat and rejection arriving on an address."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

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
        f"{_count(listeners, 'listener')}{counted(listeners)}, "
        f"{_count(pools, 'pool')}{counted(pools)}, {_count(members, 'member')}{counted(members)}"
    )


def _count(items: Sequence[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


class _ListenGetter(UDPStatusGetter):
    """A getter that prints each rejection, with its source port, instead of logging it."""

    as_json = False
    #: The datagram's source as ``recvfrom`` gave it (the rejection hook has only the IP).
    source: Any = ("", 0)

    def handle_rejection(self, error: HeartbeatError, srcaddr: str, *, now: float) -> None:
        """Print the rejection (text or JSON) instead of logging it."""
        if self.as_json:
            line = json.dumps(
                {
                    "event": "rejected",
                    "source": srcaddr,
                    "source_port": self.source[1],
                    "recv_time": now,
                    "reason": error.reason,
                    "detail": error.message,
                }
            )
        else:
            where = format_address(self.source[:2])
            line = f"rejected from {where}: {error.reason}: {error.message!r}"
        print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run ``listen`` until SIGINT or SIGTERM; return the exit status."""
    key = load_key(args)
    ip, port = parse_address(args.bind)
    with _ListenGetter(key, ip, port, timeout=0) as getter, stop_on_signals() as stopped:
        getter.as_json = args.json
        print(f"listening on {format_address(getter.address)}", flush=True)
        # Read the getter's socket through a duplicate: recvfrom gives the source
        # port, which dorecv() leaves out; handle_datagram() is the getter's own step.
        with socket.socket(fileno=os.dup(getter.fileno())) as sock:
            sock.settimeout(0.2)
            while not stopped():
                try:
                    data, source = sock.recvfrom(65536)
                except TimeoutError:
                    continue
                getter.source = source
                try:
                    heartbeat = getter.handle_datagram(data, source, now=time.time())
                except HeartbeatError:
                    continue
                print(_line(heartbeat, source, as_json=args.json), flush=True)
    return 0


def _line(heartbeat: Heartbeat, source: Any, *, as_json: bool) -> str:
    if not as_json:
        return (
            f"heartbeat from {format_address(source[:2])}: amphora {heartbeat.amphora_id} "
            f"seq {heartbeat.seq} ver {heartbeat.version}: {_summary(heartbeat)}"
        )
    return json.dumps(
        {
            "event": "heartbeat",
            "source": source[0],
            "source_port": source[1],
            "recv_time": heartbeat.recv_time,
            "amphora_id": heartbeat.amphora_id,
            "seq": heartbeat.seq,
            "version": heartbeat.version,
            "message": heartbeat.to_dict(),
        }
    )
