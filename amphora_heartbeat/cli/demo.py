"""``demo``: a simulated fleet sending to the health manager, statuses shown live.

A simulated fleet sends to a manager over 127.0.0.1; the manager writes a SQLite
file (in a temporary folder unless --db names a database) and the table shown is
read back from that database.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import secrets
import select
import signal
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from typing import Any

from ..getter import UDPStatusGetter
from ..manager import HealthManager
from ..models import ListenerStats
from ..sender import UDPStatusSender, format_address
from ..store import open_store
from ..testing import make_fleet
from .common import count, seconds

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "run a receiver and a simulated fleet, showing every status live"
DESCRIPTION = (
    "Run the health manager on 127.0.0.1 with a simulated fleet sending to "
    "it, and show each load balancer, listener, pool and member with the operating status "
    "the manager wrote to its database (a SQLite file in a temporary folder, or --db).  "
    "Some members go DOWN and come back; one amphora falls silent, goes stale and is "
    "failed over (simulated).  Live on a terminal, plain snapshots every second otherwise."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` command's options to ``parser``."""
    parser.add_argument(
        "--amphorae", type=count, default=3, metavar="N", help="default %(default)s"
    )
    parser.add_argument(
        "--duration", type=seconds, default=20.0, metavar="S", help="seconds; default %(default)s"
    )
    parser.add_argument(
        "--interval",
        type=seconds,
        default=1.0,
        metavar="S",
        help="heartbeat interval of the simulated amphorae, seconds; default %(default)s",
    )
    parser.add_argument("--seed", type=int, default=1, help="default %(default)s")
    parser.add_argument(
        "--db",
        metavar="URL",
        help="database to write: sqlite:///PATH or postgresql://...; default a SQLite file "
        "in a temporary folder, removed at the end",
    )


class _DemoTraffic:
    """The demo fleet's heartbeats: members go DOWN and come back, one amphora falls silent."""

    def __init__(self, fleet: Sequence[Any], *, seed: int, interval: float, start: float,
                 duration: float) -> None:  # fmt: skip
        self.fleet = fleet
        self.rng = random.Random(seed)
        self.interval = interval
        self.rounds = 0
        self.seq = {a.amphora_id: 0 for a in fleet}
        self.down_until: dict[str, float] = {}
        # The last amphora falls silent early enough to go stale within the run.
        self.silent = fleet[-1].amphora_id if len(fleet) > 1 else None
        self.silent_at = start + min(4 * interval, duration / 4)

    def messages(self, now: float) -> list[dict[str, Any]]:
        """Return this round's heartbeat of every amphora still talking."""
        members = [m for a in self.fleet for p in a.pools for m in p.members]
        first = self.rounds == 0
        self.rounds += 1
        if members and (first or self.rng.random() < 0.4):
            member = members[0] if first else self.rng.choice(members)
            self.down_until[member] = now + self.interval * self.rng.randint(2, 5)
        out = []
        for amphora in self.fleet:
            if amphora.amphora_id == self.silent and now >= self.silent_at:
                continue
            member_status = {
                m: ("DOWN" if self.down_until.get(m, 0) > now else "UP")
                for p in amphora.pools
                for m in p.members
            }
            pool_status = {
                p.pool_id: "DOWN" if all(member_status[m] == "DOWN" for m in p.members) else "UP"
                for p in amphora.pools
            }
            stats = {
                lst.listener_id: ListenerStats(
                    bytes_in=self.rng.randrange(100_000),
                    bytes_out=self.rng.randrange(400_000),
                    active_connections=self.rng.randrange(50),
                    total_connections=self.rng.randrange(100),
                )
                for lst in amphora.listeners
            }
            self.seq[amphora.amphora_id] += 1
            out.append(
                amphora.message(
                    seq=self.seq[amphora.amphora_id],
                    stats=stats,
                    pool_status=pool_status,
                    member_status=member_status,
                )
            )
        return out


def _demo_table(
    fleet: Sequence[Any],
    store: Any,
    manager: HealthManager,
    traffic: _DemoTraffic,
    failed_over: Collection[str],
    *,
    now: float,
    start: float,
    duration: float,
    where: str,
) -> str:
    """Return the demo's status table, every status read back from the database."""
    ids = [a.amphora_id for a in fleet]
    views = store.read_views(ids)
    health = store.read_health()
    c = manager.counters
    lines = [
        f"amphora_heartbeat demo: {len(fleet)} amphorae -> {where}   "
        f"t = {now - start:4.1f} s of {duration:g} s",
        f"heartbeats received {c['received']}, accepted {c['accepted']}, "
        f"rejected {c['received'] - c['accepted']}; ticks {c['ticks']}, rows written "
        f"{c['rows_written']}; failed over {len(failed_over)}",
        "",
        f"{'LOAD BALANCER / LISTENER / POOL / MEMBER':<44}{'STATUS':<11}AMPHORA",
    ]
    for amphora in fleet:
        aid = amphora.amphora_id
        view = views[aid].view if aid in views else {}
        row = health.get(aid)
        if aid in failed_over:
            state = "STALE: failed over (simulated)"
        elif row is None:
            state = "no health row yet"
        else:
            state = f"last_update {now - row[0]:4.1f} s ago"
            if aid == traffic.silent and now >= traffic.silent_at:
                state = "silent, " + state
        lines.append(
            f"{'load balancer ' + amphora.load_balancer_id[:8]:<44}"
            f"{view.get('operating_status', '?'):<11}{aid[:8]} seq {traffic.seq[aid]:<4} {state}"
        )
        listeners = view.get("listeners", {})
        pools = view.get("pools", {})
        for listener in amphora.listeners:
            status = listeners.get(listener.listener_id, {}).get("operating_status", "?")
            lines.append(f"{'  listener ' + listener.listener_id[:8]:<44}{status}")
            for pool in listener.pools:
                pv = pools.get(pool.pool_id, {"members": {}})
                lines.append(f"{'    pool ' + pool.pool_id[:8]:<44}{pv.get('operating_status')}")
                for member in pool.members:
                    status = pv["members"].get(member, {}).get("operating_status", "?")
                    lines.append(f"{'      member ' + member[:8]:<44}{status}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``demo``: a simulated fleet → a manager → a database, shown live from the database.

    ``args`` has ``amphorae``, ``duration`` and ``interval`` (seconds), ``seed`` and
    ``db`` (None: a SQLite file in a temporary folder, removed at the end).
    """
    if args.amphorae < 1 or args.duration <= 0 or args.interval <= 0:
        print(
            "amphora-heartbeat demo: error: --amphorae, --duration and --interval must be positive",
            file=sys.stderr,
        )
        return 2
    out = sys.stdout
    live = out.isatty()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    with contextlib.ExitStack() as stack:
        url = getattr(args, "db", None)
        if not url:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="amphora-demo-"))
            url = f"sqlite:///{folder}/demo.db"
        store = open_store(url)
        stack.callback(store.close)
        store.create_schema()
        fleet = make_fleet(args.amphorae, seed=args.seed, members=3)
        if len(store.read_views([a.amphora_id for a in fleet])) < len(fleet):
            store.add_fleet(fleet)
        key = secrets.token_hex(16)  # the demo's own, never shown
        getter = stack.enter_context(UDPStatusGetter(key, "127.0.0.1", 0, timeout=0.05))
        sender = stack.enter_context(UDPStatusSender(key, [format_address(getter.address)]))
        failed_over: list[str] = []
        interval = args.interval
        manager = HealthManager(
            getter,
            store,
            heartbeat_interval=10 * interval,
            # Stale after three missed heartbeats (Octavia: 60 s at a 10 s interval).
            heartbeat_timeout=3 * interval,
            health_check_interval=interval / 2,
            failover=failed_over.append,
            tick=0.05,
        )
        stack.callback(manager.close)
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        stack.callback(lambda: [signal.signal(s, h) for s, h in old.items()])
        start = time.time()
        end = start + args.duration
        traffic = _DemoTraffic(
            fleet, seed=args.seed, interval=interval, start=start, duration=args.duration
        )
        where = f"{url if getattr(args, 'db', None) else 'a SQLite file in a temporary folder'}"
        next_round = start
        next_draw = start + (0.25 if live else 1.0)
        now = start
        while now < end and not stopping:
            if now >= next_round:
                for message in traffic.messages(now):
                    sender.dosend(message)
                next_round += interval
            manager.step(now)
            select.select([getter.fileno()], [], [], 0.05)
            now = time.time()
            if now >= next_draw:
                table = _demo_table(
                    fleet, store, manager, traffic, failed_over,
                    now=now, start=start, duration=args.duration, where=where,
                )  # fmt: skip
                if live:
                    out.write("\x1b[H\x1b[2J" + table + "\n")
                else:
                    out.write(f"--- snapshot at {now - start:.1f} s\n{table}\n")
                out.flush()
                next_draw += 0.25 if live else 1.0
        manager.step(time.time())
        manager.wait_failovers(5)
        manager.step(time.time())
        now = time.time()
        table = _demo_table(
            fleet, store, manager, traffic, failed_over,
            now=now, start=start, duration=args.duration, where=where,
        )  # fmt: skip
        out.write(("\x1b[H\x1b[2J" if live else "") + f"=== final, after {now - start:.1f} s\n")
        out.write(table + "\n")
        out.flush()
    return 0
