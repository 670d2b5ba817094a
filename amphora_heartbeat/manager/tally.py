"""The manager's counters and gauges, kept apart from the loop that moves them."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

from ..store import TickWrite
from .backlog import Backlog
from .histogram import DelayHistogram
from .judge import Entry

__all__ = ["Tally"]

# Counters with a key after the dot, shown once they happen.
_KEYED = ("not_recorded.", "rows_written.")

# The counters a snapshot always shows, zero or not.
_COUNTERS = (
    "ticks",
    "heartbeats_judged",
    "heartbeats_recorded",
    "rows_written",
    "unknown_amphora",
    "status_changes",
    "store_errors",
    "tick_errors",
    "poison_heartbeats",
    "unstorable_id",
    "source_mismatch",
    "stats_replayed",
    "stats_unknown_listener",
    "dropped",
    "oversized_heartbeats",
    "failovers_started",
    "failovers_succeeded",
    "failovers_failed",
    "failovers_held_back",
    "failovers_waiting",
    "failovers_held_overloaded",
    "claims_cleared",
    "failovers_held_startup",
    "failovers_held_paused",
    "stale_not_failed_over",
    "socket_drops",
    "overloads",
)


class Tally:
    """What the manager counted: committed ticks, rows by table, delays, amphorae heard.

    ``counts`` is shared with the parts that count on their own (the failover
    runner, the loss watch); a snapshot may be read from another thread while
    the manager's thread adds to it.
    """

    def __init__(self) -> None:
        """Start with every counter at zero and no delay recorded."""
        self.counts: collections.Counter[str] = collections.Counter()
        self.gauges: dict[str, float] = {
            "tick_seconds": 0.0,
            "tick_seconds_total": 0.0,
            "lag_seconds": 0.0,
        }
        #: Receive-to-commit delays of every committed heartbeat.
        self.delays = DelayHistogram()
        #: Durations of committed ticks (read, judge, write), seconds.
        self.tick_durations = DelayHistogram()
        self._heard: set[str] = set()

    def committed(
        self, batch: Sequence[Entry], rows: int, *, start: float, end: float, lag: float
    ) -> None:
        """Count a tick that began at ``start`` and committed ``batch`` at ``end``."""
        counts, gauges = self.counts, self.gauges
        counts["ticks"] += 1
        counts["heartbeats_judged"] += len(batch)
        counts["rows_written"] += rows
        delays = self.delays
        for h, _, _ in batch:
            delays.add(end - h.recv_time)  # type: ignore[operator]
        self.tick_durations.add(end - start)
        gauges["tick_seconds"] = end - start
        gauges["tick_seconds_total"] += end - start
        gauges["last_commit_seconds"] = end
        gauges["lag_seconds"] = lag
        gauges["max_lag_seconds"] = max(gauges.get("max_lag_seconds", 0.0), lag)

    def count_write(self, write: TickWrite) -> None:
        """Count the rows of a committed write by table, and the amphorae it recorded."""
        counts = self.counts
        for table, n in write.rows_by_table().items():
            counts["rows_written." + table] += n
        self._heard.update(write.health)

    def snapshot(self, received: Mapping[str, float], backlog: Backlog) -> dict[str, float]:
        """Return the getter's counters ``received``, then this tally's, then the backlog's."""
        out = dict(received)
        # Copies first: a scrape reads this from another thread while ticks add keys.
        counts = dict(self.counts)
        counts["dropped"] = backlog.dropped
        counts["oversized_heartbeats"] = backlog.oversized
        out.update((name, counts.get(name, 0)) for name in _COUNTERS)
        out.update(sorted((k, v) for k, v in counts.items() if k.startswith(_KEYED)))
        out.update(dict(self.gauges))
        out["backlog"] = len(backlog)
        out["backlog_items"] = backlog.items
        out["amphorae_heard"] = len(self._heard)
        out["delay_p99_seconds"] = self.delays.quantile(0.99)
        out["delay_max_seconds"] = self.delays.maximum
        return out
