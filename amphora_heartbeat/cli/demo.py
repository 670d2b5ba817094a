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
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TextIO

from ..getter import UDPStatusGetter
from ..manager import HealthManager
from ..models import ListenerStats
from ..sender import UDPStatusSender, format_address
from ..testing import make_fleet
from .common import count, database, open_database, seconds, stop_on_signals

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
        "--amphorae",
        type=count,
        default=3,
        metavar="N",
        help="simulated amphorae; default %(default)s",
    )
    parser.add_argument(
        "--duration",
        type=seconds,
        default=20.0,
        metavar="S",
        help="seconds to run; default %(default)s",
    )
    parser.add_argument(
        "--interval",
        type=seconds,
        default=1.0,
        metavar="S",
        help="heartbeat interval of the simulated amphorae, seconds; default %(default)s",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the ids and the events; default %(default)s"
    )
    parser.add_argument(
        "--db",
        type=database,
        metavar="URL",
        help="database to write: sqlite:///PATH, postgresql://... or mysql+pymysql://...;"
        " default a SQLite file "
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


# Width of the name column: each load balancer's line fits in 80 columns.
_NAME = 28


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
) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Return the demo's status table, every status read back from the database.

    The table is its header lines and one block per load balancer: its
    operating status and its lines.
    """
    ids = [a.amphora_id for a in fleet]
    views = store.read_views(ids)
    health = store.read_health()
    c = manager.counters
    n = len(fleet)
    header = [
        f"amphora_heartbeat demo   t = {now - start:4.1f} s of {duration:g} s   "
        f"{n} {'amphora' if n == 1 else 'amphorae'} -> {where}",
        f"heartbeats received {c['received']}, accepted {c['accepted']}, "
        f"rejected {c['received'] - c['accepted']}; ticks {c['ticks']}, rows written "
        f"{c['rows_written']}; failed over {len(failed_over)}",
        "",
        f"{'NAME':<{_NAME}}{'STATUS':<11}AMPHORA",
    ]
    blocks = []
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
        status = str(view.get("operating_status", "?"))
        lines = [
            f"{'load balancer ' + amphora.load_balancer_id[:8]:<{_NAME}}"
            f"{status:<11}{aid[:8]} seq {traffic.seq[aid]:<4} {state}"
        ]
        lines += _tree_lines(amphora, view)
        blocks.append((status, lines))
    return header, blocks


def _tree_lines(amphora: Any, view: Mapping[str, Any]) -> list[str]:
    """Return the lines of one load balancer's listeners, pools and members."""
    lines = []
    listeners = view.get("listeners", {})
    pools = view.get("pools", {})
    for listener in amphora.listeners:
        status = listeners.get(listener.listener_id, {}).get("operating_status", "?")
        lines.append(f"{'  listener ' + listener.listener_id[:8]:<{_NAME}}{status}")
        for pool in listener.pools:
            pv = pools.get(pool.pool_id, {"members": {}})
            lines.append(f"{'    pool ' + pool.pool_id[:8]:<{_NAME}}{pv.get('operating_status')}")
            for member in pool.members:
                status = pv["members"].get(member, {}).get("operating_status", "?")
                lines.append(f"{'      member ' + member[:8]:<{_NAME}}{status}")
    return lines


def fit_table(header: list[str], blocks: list[tuple[str, list[str]]], rows: int) -> list[str]:
    """Return the table in at most ``rows`` lines: the header, then whole load balancers.

    The load balancers that do not fit are summarised on the last line, counted
    by operating status.
    """
    lines = list(header)
    for shown, (_, block) in enumerate(blocks):
        room = rows - len(lines) - (shown < len(blocks) - 1)  # a line kept for the summary
        if len(block) > room:
            break
        lines += block
    else:
        return lines
    counts = Counter(status for status, _ in blocks[shown:])
    left = len(blocks) - shown
    lines.append(
        f"... {left} more load {'balancer' if left == 1 else 'balancers'} ("
        + ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
        + ") below the screen"
    )
    return lines[:rows]


def _frame(lines: list[str], columns: int | None = None) -> str:
    """Return the escape sequences that redraw the screen in place with ``lines``.

    Cursor home, each line (cut to ``columns``) followed by erase to the end of
    the line, then erase below: no clear, so no flicker and no copy of each frame
    in the terminal's scrollback.
    """
    cut = [line[:columns] for line in lines] if columns else lines
    return "\x1b[H" + "".join(line + "\x1b[K\n" for line in cut) + "\x1b[J"


class _Screen:
    """Where the demo draws: in place on a terminal, plain snapshots otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        #: Seconds between two frames.
        self.every = 0.25 if self.live else 1.0
        if self.live:
            out.write("\x1b[H\x1b[2J")  # one clear at the start, none per frame

    def draw(self, table: tuple[list[str], list[tuple[str, list[str]]]], elapsed: float) -> None:
        """Show one frame: redrawn in place and cut to the terminal's height, if live."""
        header, blocks = table
        if self.live:
            size = shutil.get_terminal_size()
            rows = size.lines - 1  # the cursor's line stays free
            self.out.write(_frame(fit_table(header, blocks, rows), size.columns))
        else:
            lines = header + [line for _, block in blocks for line in block]
            self.out.write(f"--- snapshot at {elapsed:.1f} s\n" + "\n".join(lines) + "\n")
        self.out.flush()

    def final(self, table: tuple[list[str], list[tuple[str, list[str]]]], elapsed: float) -> None:
        """Print the last frame whole, over the live one: it stays in the scrollback."""
        header, blocks = table
        lines = [f"=== final, after {elapsed:.1f} s", *header]
        lines += [line for _, block in blocks for line in block]
        self.out.write(_frame(lines) if self.live else "\n".join(lines) + "\n")
        self.out.flush()


def run(args: argparse.Namespace) -> int:
    """Run ``demo``: a simulated fleet → a manager → a database, shown live from the database.

    ``args`` has ``amphorae``, ``duration`` and ``interval`` (seconds), ``seed`` and
    ``db`` (None: a SQLite file in a temporary folder, removed at the end).
    """
    with contextlib.ExitStack() as stack, stop_on_signals() as stopped:
        url = args.db
        if not url:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="amphora-demo-"))
            url = f"sqlite:///{folder}/demo.db"
        store = stack.enter_context(contextlib.closing(open_database(url)))
        store.create_schema()
        fleet = make_fleet(args.amphorae, seed=args.seed, members=3)
        if len(store.read_views([a.amphora_id for a in fleet])) < len(fleet):
            store.add_fleet(fleet)
        key = secrets.token_hex(16)  # the demo's own, never shown
        getter = stack.enter_context(UDPStatusGetter(key, "127.0.0.1", 0, timeout=0.05))
        sender = stack.enter_context(UDPStatusSender(key, [format_address(getter.address)]))
        failed_over: list[str] = []
        manager = _manager(getter, store, args.interval, failed_over)
        stack.callback(manager.close)
        start = time.time()
        traffic = _DemoTraffic(
            fleet, seed=args.seed, interval=args.interval, start=start, duration=args.duration
        )
        where = url if args.db else "a SQLite file in a temporary folder"

        def table(now: float) -> tuple[list[str], list[tuple[str, list[str]]]]:
            return _demo_table(
                fleet, store, manager, traffic, failed_over,
                now=now, start=start, duration=args.duration, where=where,
            )  # fmt: skip

        screen = _Screen(sys.stdout)
        next_round, next_draw, now = start, start + screen.every, start
        while now < start + args.duration and not stopped():
            if now >= next_round:
                for message in traffic.messages(now):
                    sender.dosend(message)
                next_round += args.interval
            manager.step(now)
            select.select([getter.fileno()], [], [], 0.05)
            now = time.time()
            if now >= next_draw:
                screen.draw(table(now), now - start)
                next_draw += screen.every
        _finish(manager)
        now = time.time()
        screen.final(table(now), now - start)
    return 0


def _manager(
    getter: UDPStatusGetter, store: Any, interval: float, failed_over: list[str]
) -> HealthManager:
    """Return the demo's manager: stale after three missed heartbeats, failover recorded."""
    return HealthManager(
        getter,
        store,
        heartbeat_interval=10 * interval,
        # Stale after three missed heartbeats (Octavia: 60 s at a 10 s interval).
        heartbeat_timeout=3 * interval,
        health_check_interval=interval / 2,
        failover=failed_over.append,
        tick=0.05,
    )


def _finish(manager: HealthManager) -> None:
    """Commit what arrived, let the simulated failovers end, and record them."""
    manager.step(time.time())
    manager.wait_failovers(5)
    manager.step(time.time())
