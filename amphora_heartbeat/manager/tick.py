"""One tick's write: take a batch from the backlog, write it, back off after a store error.

A tick takes what the backlog holds (up to ``max_batch``), hands it to the
:class:`~amphora_heartbeat.manager.writer.BatchWriter` and settles the backlog
with the outcome: committed heartbeats leave it, the ones a failing database
did not take stay at its front.  After a store error the next write waits, the
wait doubling from 0.1 s up to :data:`MAX_BACKOFF`, and failovers are held for
a timeout (:meth:`~amphora_heartbeat.manager.stale.StaleCheck.pause`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from ..store import StoreError
from .backlog import Backlog
from .stale import StaleCheck
from .tally import Tally
from .writer import BatchWriter

__all__ = ["MAX_BACKOFF", "TickReport", "Ticker", "waiting"]

log = logging.getLogger("amphora_heartbeat.manager")

#: The longest wait before a write is tried again after a store error, in seconds.
MAX_BACKOFF = 5.0


@attrs.frozen
class TickReport:
    """What one tick did (returned by :meth:`HealthManager.step`)."""

    #: Heartbeats judged in this tick.
    heartbeats: int = 0
    #: Rows the tick's transaction wrote.
    rows: int = 0
    #: Seconds from the oldest heartbeat's receipt to the tick's start.
    lag: float = 0.0
    #: Whether the tick's write failed (its heartbeats wait for the next try).
    failed: bool = False


def waiting(now: float, deadline: float, longest: float) -> bool:
    """Tell whether ``now`` is before ``deadline``, set at most ``longest`` seconds ahead.

    A deadline further ahead than that was set by a clock since set back: it is
    due now, or a corrected clock would delay the work by the correction.
    """
    return now < deadline <= now + longest


class Ticker:
    """Write the backlog's batches through a writer, counting into a tally."""

    def __init__(
        self,
        backlog: Backlog,
        writer: BatchWriter,
        tally: Tally,
        stale: StaleCheck,
        clock: Callable[[], float],
    ) -> None:
        """Take from ``backlog``, write with ``writer``; a store error pauses ``stale``."""
        self.backlog = backlog
        self.writer = writer
        self.tally = tally
        self.stale = stale
        self.clock = clock
        self._retry_at = float("-inf")
        self._failures = 0

    def backing_off(self, now: float) -> bool:
        """Tell whether a store error at most :data:`MAX_BACKOFF` seconds ago delays writes."""
        return waiting(now, self._retry_at, MAX_BACKOFF)

    def tick(self, now: float) -> TickReport:
        """Write one batch at ``now`` (nothing while backing off); say what was done."""
        if self.backing_off(now):
            # Backing off after a store error: keep receiving, write later.
            self.backlog.hold()
            return TickReport(failed=True)
        batch = self.backlog.take()
        if not batch:
            return TickReport()
        start = self.clock()
        lag = max(now - min(e[0].recv_time for e in batch if e[0].recv_time is not None), 0.0)
        try:
            written = self.writer.write(batch)
        except Exception:
            # A bug or data the rules refuse: retrying the same batch would fail
            # for ever, so it is dropped (counted), and the manager goes on.
            log.exception(
                "tick of %d heartbeats failed; dropping them",
                len(batch),
                extra={"event": "tick_failed", "count": len(batch)},
            )
            self.tally.counts["tick_errors"] += 1
            self.backlog.drop(batch)
            return TickReport(len(batch), 0, lag, failed=True)
        self.tally.counts.update(written.counts)
        self.backlog.settle(batch, written.remaining)
        if written.committed:
            self._failures = 0
            end = self.clock()
            self.tally.committed(written.committed, written.rows, start=start, end=end, lag=lag)
            for write in written.writes:
                self.tally.count_write(write)
        if written.failed is not None:
            self.store_failed(written.failed, now)
        return TickReport(len(batch), written.rows, lag, failed=written.failed is not None)

    def store_failed(self, exc: StoreError, now: float) -> None:
        """Count a store error, hold failovers after it and back off before the next write."""
        self._failures += 1
        self.tally.counts["store_errors"] += 1
        self.stale.pause(now)
        backoff = min(0.1 * 2 ** (self._failures - 1), MAX_BACKOFF)
        self._retry_at = now + backoff
        log.warning(
            "store error (%s); retrying in %.1fs, no failover for %ss",
            exc,
            backoff,
            self.stale.heartbeat_timeout,
            extra={"event": "store_error", "error": str(exc)},
        )
