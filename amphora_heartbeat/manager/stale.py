"""The stale check: amphorae silent for ``heartbeat_timeout``, through the failover policy.

Every ``health_check_interval`` the manager asks the store for amphorae whose
last heartbeat is older than the timeout and whose failover nobody holds, then
applies :func:`~amphora_heartbeat.tracker.decide` to them: no failover in the
start-up grace, for a timeout after a store error or after heartbeats were lost
(silence proves nothing then), and none at all when ``failover_threshold`` or
more are stale at once (a storm: the fault is more likely the network's).
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Callable, Mapping, Sequence

from ..store import StaleAmphora, Store
from ..tracker import decide
from .backlog import Backlog
from .failover import FailoverRunner
from .losses import GateHolds, LossWatch
from .peers import PeerBoard

__all__ = ["StaleCheck"]

log = logging.getLogger("amphora_heartbeat.manager")


class StaleCheck:
    """Find stale amphorae in the store and start (or hold) their failovers.

    ``started`` is the start of the start-up grace and ``paused_at`` the last
    store error (seconds since the epoch, or None); both gate failovers for a
    ``heartbeat_timeout`` after them.
    """

    def __init__(
        self,
        store: Store,
        failovers: FailoverRunner,
        counts: collections.Counter[str],
        *,
        heartbeat_timeout: float,
        failover_threshold: int | None,
        failover_lease: float,
        clock: Callable[[], float],
        peers: PeerBoard | None = None,
    ) -> None:
        """Check ``store``, run failovers with ``failovers``, count into ``counts``.

        ``peers``: the board shared with the other workers on the address, if any.
        """
        self.store = store
        self.peers = peers
        #: The last time another worker lost heartbeats (see :mod:`.peers`), or None.
        self.peer_lost_at: float | None = None
        self.failovers = failovers
        self.counts = counts
        self.clock = clock
        self.started: float | None = None
        self.paused_at: float | None = None
        #: Stale amphorae found by the last check.
        self.found = 0
        self.losses = LossWatch(heartbeat_timeout, counts)
        self._holds = GateHolds(counts)
        self.retime(heartbeat_timeout, failover_threshold, failover_lease)

    def retime(
        self, heartbeat_timeout: float, failover_threshold: int | None, failover_lease: float
    ) -> None:
        """Use new timings and storm threshold from the next check on."""
        self.heartbeat_timeout = heartbeat_timeout
        self.failover_threshold = failover_threshold
        #: Seconds after which another manager's unfinished claim may be taken over.
        self.failover_lease = failover_lease
        self.losses.heartbeat_timeout = heartbeat_timeout

    def pause(self, now: float) -> None:
        """Hold failovers for a timeout from ``now``: the store failed."""
        self.paused_at = now if self.paused_at is None else max(self.paused_at, now)

    def observe(self, now: float, *, fd: int | None, dropped: int) -> None:
        """Note, before a check, the clock and what was lost (see :class:`.LossWatch`)."""
        self._clock_set_back(now)
        self.losses.note(now, fd=fd, dropped=dropped)

    def _clock_set_back(self, now: float) -> None:
        """Bring times ahead of ``now`` back to it: they were read from a clock since set back.

        So a corrected clock holds failovers a timeout at most, not the size of
        the correction.
        """
        if self.started is not None and self.started > now:
            self.started = now
        if self.paused_at is not None and self.paused_at > now:
            self.paused_at = now
        self.losses.set_back(now)

    def check(self, now: float, backlog: Backlog) -> None:
        """Run the check at ``now``, counting the heartbeats ``backlog`` holds as heard.

        A heartbeat received and not yet written (the manager is behind) counts:
        a slow database must not fail a live amphora over; nor may another
        worker's backlog or losses (:mod:`.peers`).  Raises
        :class:`~amphora_heartbeat.store.StoreError` if the store fails.
        """
        cutoff = now - self.heartbeat_timeout - self._hear_peers(now, backlog.oldest())
        lease_cutoff = now - self.failover_lease
        cleared = self.store.clear_expired_claims(lease_cutoff)
        if cleared:
            self.counts["claims_cleared"] += cleared
            log.warning("cleared %d expired failover claims of amphorae gone", cleared)
        candidates = self.store.stale_amphorae(cutoff, lease_cutoff)
        if candidates:
            waiting = backlog.pending_since(cutoff)
            candidates = {a: s for a, s in candidates.items() if a not in waiting}
        self.found = len(candidates)
        self._judge(candidates, now, cutoff, lease_cutoff)

    def _hear_peers(self, now: float, oldest: float | None) -> float:
        """Tell the other workers how this one is doing; return the slowest one's lag.

        A peer's loss holds failovers here as this worker's own would.
        """
        if self.peers is None:
            return 0.0
        self.peers.publish(now, oldest, self.losses.overloaded_at)
        news = self.peers.read(now, stale_after=self.heartbeat_timeout)
        self.peer_lost_at = news.lost_at
        return news.lag

    def _judge(
        self,
        candidates: Mapping[str, StaleAmphora],
        now: float,
        cutoff: float,
        lease_cutoff: float,
    ) -> None:
        """Apply the failover policy to the stale ``candidates`` (by amphora id)."""
        held = {a for a, c in candidates.items() if c.status == "FAILOVER_STOPPED"}
        order = list(candidates)
        # Managers sharing a database each start somewhere else in the list.
        random.shuffle(order)
        # Lost heartbeats pause failover as a store error does: silence proves
        # nothing for a timeout after the manager last missed something.
        losses = (self.paused_at, self.losses.overloaded_at, self.peer_lost_at)
        pauses = [t for t in losses if t is not None]
        decision = decide(
            order,
            now=now,
            started=self.started if self.started is not None else now,
            paused_at=max(pauses) if pauses else None,
            heartbeat_timeout=self.heartbeat_timeout,
            failover_threshold=self.failover_threshold,
            held=held,
        )
        self.losses.count_held(order, decision.failover, now)
        self._holds.count(order, now=now, timeout=self.heartbeat_timeout,
                          started=self.started, paused_at=self.paused_at)  # fmt: skip
        if decision.stopped and not decision.failover and held != set(decision.stopped):
            self._stop_storm(decision.stopped)
        # Log each stale amphora once per silence (it may report and fall silent again).
        self.failovers.keep_unhandled(decision.failover)
        if decision.failover:
            lbs = {a: candidates[a].load_balancer_id for a in decision.failover}
            self.failovers.start(
                self.store,
                decision.failover,
                cutoff,
                now=now,
                load_balancers=lbs,
                lease_cutoff=lease_cutoff,
            )

    def _stop_storm(self, stopped: Sequence[str]) -> None:
        """Mark ``stopped`` held in the store (once) and say why no failover starts."""
        newly = self.store.stop_failovers(stopped, self.clock())
        if newly:
            self.counts["failovers_held_back"] += newly
            log.error(
                "%d amphorae stale, at or over failover_threshold %s: failing over none",
                len(stopped),
                self.failover_threshold,
                extra={"event": "failovers_held_back", "reason": "storm", "count": len(stopped)},
            )
