"""The ``manager`` command's status line: what the manager did, every few seconds.

The manager library logs and counts but never prints; this module turns its
counters (:attr:`~amphora_heartbeat.manager.HealthManager.counters`) into a short
line for the person watching the terminal, and into one warning when every
heartbeat so far came from an amphora the database does not hold.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from .common import seconds

__all__ = ["SEEDING_HOWTO", "StatusLine", "add_status_options"]

#: Where the documentation explains putting amphorae in the database first.
SEEDING_HOWTO = "docs/how-to/run-managers-on-postgresql.md, 'Try it with the fleet generator'"


def add_status_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--status-interval`` and ``--quiet`` to ``parser``."""
    parser.add_argument(
        "--status-interval",
        type=seconds,
        default=5.0,
        metavar="S",
        help="seconds between status lines on stderr; default %(default)s",
    )
    parser.add_argument("--quiet", action="store_true", help="print no status lines")


# Stale amphorae, whatever became of them: failed over, held, or no failover configured.
_STALE = (
    "failovers_started",
    "failovers_held_back",
    "failovers_held_overloaded",
    "stale_not_failed_over",
)


class StatusLine:
    """Make the status lines of a running manager from its counters.

    :param interval: seconds between two status lines.
    :param quiet: make no status line (the unknown-amphora warning still comes).
    :param start: the time the manager started, in seconds (the clock ``now`` uses).
    """

    def __init__(self, interval: float, *, quiet: bool, start: float) -> None:
        self.interval = interval
        self.quiet = quiet
        self.next_at = start + interval
        self.warned = False
        self.last_received = 0.0

    def due(self, now: float) -> bool:
        """Return whether :meth:`lines` has something to say at ``now`` (seconds)."""
        return now >= self.next_at

    def lines(self, counters: Mapping[str, float], now: float) -> list[str]:
        """Return the lines to print at ``now`` (seconds) for ``counters``; call when due."""
        self.next_at = now + self.interval
        out = [] if self.quiet else [self._status(counters)]
        judged = counters.get("heartbeats_judged", 0)
        if not self.warned and judged and counters.get("unknown_amphora", 0) == judged:
            self.warned = True
            out.append(
                f"warning: all {judged:.0f} heartbeats so far came from amphorae the database "
                "does not hold, so nothing was written: put the amphorae and their load "
                f"balancers in the database first (see {SEEDING_HOWTO})"
            )
        return out

    def _status(self, c: Mapping[str, float]) -> str:
        received = c.get("received", 0)
        new = received - self.last_received
        self.last_received = received
        stale = sum(c.get(k, 0) for k in _STALE)
        return (
            f"received {received:,.0f} (+{new:,.0f}), rejected "
            f"{received - c.get('accepted', 0):,.0f}, written "
            f"{c.get('heartbeats_recorded', 0):,.0f}, unknown {c.get('unknown_amphora', 0):,.0f}, "
            f"stale {stale:,.0f}, failed over {c.get('failovers_succeeded', 0):,.0f}, "
            f"backlog {c.get('backlog', 0):,.0f}"
        )
